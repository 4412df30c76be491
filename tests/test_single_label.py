"""Single-label data: the task recorded by `ramer data import`, softmax cross-entropy in every model,
softmax scores, the arg-max decision, selection by weighted F1, and multi-label left as it was.

The CLI tests import small CSVs with the stand-in text model of conftest.py (``fake_text``).
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_store
from safetensors import safe_open
from safetensors.torch import save_file
from test_conversations import base_rows, write_table
from test_view import browser  # noqa: F401 (a fixture: Chromium through Playwright, skipped without it)

import ramer
from ramer import checkpoint as ckpt
from ramer import models as models_mod
from ramer.batch import MODALITIES
from ramer.cli import main
from ramer.config import build_config
from ramer.data.store import DataBundle, load_native, resolve_task
from ramer.errors import RamerError
from ramer.metrics import ARGMAX, decide, report
from ramer.models import BUILDERS, build_model, losses
from ramer.models.base import DataSpec
from ramer.models.classical import ClassicalModel, ClassicalModule
from ramer.models.parts import fuse_max

EMOTIONS = ("anger", "joy", "sadness")
TINY = [
    "train.epochs=3",
    "train.batch_size=4",
    "model.hidden=16",
    "model.ffn=32",
    "model.heads=2",
    "model.queue_size=16",
    "train.lr=0.005",
]
SETS = sum((["--set", s] for s in TINY), [])


def single_rows() -> list[dict]:
    """Nine conversations (5 train, 2 valid, 2 test) of five turns, exactly one emotion per turn."""
    rows = []
    for c, split in enumerate(["train"] * 5 + ["valid"] * 2 + ["test"] * 2):
        for i in range(5):
            emotion = EMOTIONS[(c + i) % 3]
            rows.append(
                {
                    "conversation": f"k{c}",
                    "index": i,
                    "speaker": f"p{i % 2}",
                    "present": "p2",
                    "text": f"{emotion} words {c}-{i}",
                    "labels": emotion,
                    "split": split,
                }
            )
    return rows


def import_single(tmp_path: Path) -> Path:
    """``single_rows`` through ``ramer data import`` into ``tmp_path/ds`` (the table beside it)."""
    src = write_table(tmp_path / "single.csv", single_rows())
    assert main(["data", "import", str(src), "--out", str(tmp_path / "ds")]) == 0
    return tmp_path / "ds"


def one_hot_store(n: int, seed: int, n_labels: int = 5):
    store = random_store(n=n, n_labels=n_labels, seed=seed)
    y = np.zeros_like(store.labels)
    y[np.arange(n), np.random.default_rng(seed).integers(0, n_labels, n)] = 1
    store.labels = y
    return store


def spec_of(store, task: str) -> DataSpec:
    dims = store.dims
    return DataSpec(
        {m: dims[m] for m in MODALITIES}, len(store.label_names), store.label_names, dims["personality"], task
    )


def epoch_lines(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]


def final_line(run) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


# ------------------------------------------------------------------------------------ the loss
def test_single_label_classification_is_softmax_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 3, 1, 1, 2, 0])
    targets = F.one_hot(y, 4).float()
    torch.testing.assert_close(losses.classification(logits, targets, single_label=True), F.cross_entropy(logits, y))
    # a row mask leaves rows out
    rows = torch.tensor([True, False, True, True, False, True]).unsqueeze(-1)
    torch.testing.assert_close(
        losses.classification(logits, targets, rows, single_label=True),
        F.cross_entropy(logits[rows[:, 0]], y[rows[:, 0]]),
    )
    # multi-label: BCE, as before
    torch.testing.assert_close(
        losses.classification(logits, targets), F.binary_cross_entropy_with_logits(logits, targets)
    )


def test_shuffle_targets_are_normalised_and_unlabelled_rows_left_out():
    """Virtual samples: the target is y / sum y over the label slots the mask keeps (the others leave
    the softmax too); a row with no positive slot left counts for nothing."""
    torch.manual_seed(1)
    logits = torch.randn(3, 4, requires_grad=True)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, False, True, True], [True, True, False, True]])
    got = losses.classification(logits, targets, mask, single_label=True)
    row0 = -(0.5 * logits[0].log_softmax(-1)[[0, 1]]).sum()
    row1 = -logits[1, [0, 2, 3]].log_softmax(-1)[2]  # slot 1 left out: label 3 alone, over slots 0, 2, 3
    torch.testing.assert_close(got, (row0 + row1) / 2)  # row 2: its one label is masked, left out
    got.backward()
    assert logits.grad[2].abs().max() == 0 and logits.grad[1, 1] == 0  # nothing learnt from left-out parts
    empty = losses.classification(logits, torch.zeros(3, 4), mask, single_label=True)
    assert empty.item() == 0.0 and torch.isfinite(empty)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_deep_model_single_label_softmax_and_cross_entropy(name):
    """probs sum to 1 per sample; the classification term is F.cross_entropy of the model's logits
    (for RAMer every classification term, checked against its own fields)."""
    store = one_hot_store(10, seed=2)
    cfg = build_config(
        overrides=[f"model.name={name}", "model.hidden=16", "model.ffn=32", "model.heads=2", "model.queue_size=16"]
    )
    torch.manual_seed(0)
    model = build_model(cfg, spec_of(store, "single_label"))
    if hasattr(model, "prepare"):
        model.prepare(store)
    batch = store.collate(np.arange(len(store)))
    present = {m: batch.present[m].clone() for m in MODALITIES}
    present["text"][::2] &= ~batch.scope[::2]  # every other target has no text in its scope
    batch = batch.with_present(present)
    model.eval()
    with torch.no_grad():
        probs = model(batch).probs
    torch.testing.assert_close(probs.sum(1), torch.ones(len(store)), atol=1e-5, rtol=0)
    model.train()
    torch.manual_seed(1)
    out = model(batch)
    terms = model.loss(out, batch).terms
    y = batch.labels.argmax(1)
    main_term = "beta_clf" if name == "ramer-authors" else "cls"  # the authors' name of the same term
    torch.testing.assert_close(terms[main_term], F.cross_entropy(out.logits.float(), y).detach())
    if name != "ramer":
        return
    assert (out.trusted != out.available).any()  # r_text built from context, where text is not available
    lsr_rows = out.trusted.any(1)
    lsr = F.cross_entropy(fuse_max(out.label_logits, out.trusted)[lsr_rows], y[lsr_rows])
    torch.testing.assert_close(terms["lsr"], lsr.detach())
    torch.testing.assert_close(terms["aug"], F.cross_entropy(out.reconstructed_logits.amax(1), y).detach())
    torch.testing.assert_close(terms["cml"], F.cross_entropy(out.cml_logits, y).detach())
    K = out.agg_logits.shape[1]
    agg = F.cross_entropy(out.agg_logits.flatten(0, 1), y.repeat_interleave(K), reduction="none")
    keep = out.stack_mask.flatten()
    torch.testing.assert_close(terms["agg"], (agg[keep].sum() / keep.sum()).detach())
    # stack shuffle: each virtual sample against its normalised target, over its usable slots
    rows = []
    for z, t, m in zip(
        out.shuffle_logits.flatten(0, 1), out.shuffle_targets.flatten(0, 1), out.shuffle_mask.flatten(0, 1)
    ):
        t = t * m
        if t.sum() > 0:
            rows.append(-(t[m] / t.sum() * z[m].log_softmax(-1)).sum())
    torch.testing.assert_close(terms["shuffle"], torch.stack(rows).mean().detach())


def test_a_model_giving_sigmoids_on_single_label_data_is_named(tmp_path, fake_text, monkeypatch, capsys):
    """A model of another package that keeps per-label sigmoids on single-label data trained, and
    its predict lines showed probabilities summing to 2.89 beside threshold 'argmax'; the first
    validation now stops it, naming the model and what to use. Its softmax form trains."""
    from ramer.models import register_model
    from ramer.models.base import LossResult, label_probs

    class Sigmoids(torch.nn.Module):
        def __init__(self, cfg, spec, softmax=False):
            super().__init__()
            self.head, self.softmax = torch.nn.Linear(spec.dims["text"], spec.n_labels), softmax

        def forward(self, batch):
            logits = self.head(batch.features["text"].mean(1))
            return types.SimpleNamespace(logits=logits, probs=label_probs(logits, self.softmax))

        def loss(self, out, batch):
            total = F.binary_cross_entropy_with_logits(out.logits, batch.labels)
            return LossResult(total=total, terms={"cls": total.detach()})

    monkeypatch.setattr(models_mod, "BUILDERS", dict(models_mod.BUILDERS))
    monkeypatch.setattr(models_mod, "KNOWN", set(models_mod.KNOWN))
    register_model("sigmoids", Sigmoids)
    register_model("softmaxed", lambda cfg, spec: Sigmoids(cfg, spec, softmax=True))
    ds = import_single(tmp_path)
    capsys.readouterr()
    argv = ["train", "--data", str(ds), *SETS, "--model"]
    assert main([*argv, "sigmoids", "--out", str(tmp_path / "sig")]) == 2
    err = capsys.readouterr().err
    assert "model Sigmoids: on single-label data probs are a softmax over the labels, summing to 1" in err, err
    assert re.search(r"\d+ of 10 rows do not \(row \d+ sums to [\d.]+\)", err), err
    assert main([*argv, "softmaxed", "--out", str(tmp_path / "soft")]) == 0


def test_multi_label_models_keep_sigmoids():
    store = random_store(n=8, seed=3)
    for name in sorted(BUILDERS):
        cfg = build_config(overrides=[f"model.name={name}", "model.hidden=16", "model.ffn=32", "model.heads=2"])
        model = build_model(cfg, spec_of(store, "multi_label")).eval()
        with torch.no_grad():
            out = model(store.collate(np.arange(8)))
        if name not in ("ramer", "ramer-authors"):  # the two RAMers average in the aggregator's scores
            torch.testing.assert_close(out.probs, out.logits.sigmoid())
        assert not torch.allclose(out.probs.sum(1), torch.ones(8), atol=1e-3), name


@pytest.mark.parametrize("kind", ("br", "cc", "lp"))
def test_classical_single_label_probabilities_sum_to_one(kind):
    store = one_hot_store(60, seed=4, n_labels=3)
    fitted = ClassicalModel(kind, store.label_names).fit(store)
    batch = store.collate(np.arange(60))
    single = ClassicalModule(kind, spec_of(store, "single_label"), fitted.to_arrays())(batch).probs.numpy()
    multi = ClassicalModule(kind, spec_of(store, "multi_label"), fitted.to_arrays())(batch).probs.numpy()
    np.testing.assert_allclose(single.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(single, multi / multi.sum(1, keepdims=True))  # the same fit, normalised
    if kind == "br":
        assert not np.allclose(multi.sum(1), 1.0, atol=1e-3)


# ------------------------------------------------------------------------------------ decision
def test_argmax_decision_gives_one_label_and_accuracy():
    scores = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    truth = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(decide(scores, ARGMAX), [[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    overall = report(truth, scores, ARGMAX)["overall"]
    assert overall["subset_acc"] == overall["top1_acc"] == overall["micro_f1"] == 0.5
    assert decide(scores, 0.35).sum(1).tolist() == [1, 1, 1, 1] and decide(scores, 0.25).sum(1).tolist() == [2, 2, 1, 3]
    with pytest.raises(RamerError, match="unknown decision rule"):
        decide(scores, "top")


def test_argmax_decision_breaks_a_tie_to_the_first_label():
    """Two labels with the same top score: the decision is the first of them, as documented, so
    predict and eval of a single-label model give the same one label on any machine."""
    assert decide(np.array([[0.9, 0.9, 0.1], [0.2, 0.7, 0.7]]), ARGMAX).tolist() == [[1, 0, 0], [0, 1, 0]]


def test_the_task_counts_the_distinct_labels_of_the_samples_only(tmp_path, fake_text):
    """``--task auto`` counts the labels of the samples (target rows) only, each name once: a context
    row without an emotion and a label written twice in one cell leave a file of one emotion per
    sample single-label. (Every row counted in import_task, or a repeated name kept by _names.)"""
    from ramer.data.conversations import import_conversations

    rows = single_rows()
    rows[0].update(target=0, labels="")
    rows[1]["labels"] = f"{rows[1]['labels']};{rows[1]['labels']}"
    meta = import_conversations(write_table(tmp_path / "single.csv", rows), tmp_path / "ds")
    assert meta["task"] == "single_label"


# ------------------------------------------------------------------------------------ the CLI
def test_cli_single_label_import_train_predict_eval(tmp_path, fake_text, capsys):
    import_single(tmp_path)
    assert "task: single_label" in capsys.readouterr().out
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["task"] == "single_label"
    assert load_native(tmp_path / "ds").task == "single_label"

    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "ds"), "--model", "late_fusion", "--out", str(run), *SETS]) == 0
    table = capsys.readouterr().out
    assert "weighted-F1" in table and "micro-F1" not in table and "HL" not in table
    lines = epoch_lines(run)
    assert [x["threshold"] for x in lines] == [ARGMAX] * 3  # nothing tuned
    weighted = [x["valid"]["overall"]["weighted_f1"] for x in lines]
    best = 1 + int(np.argmax(weighted))
    assert lines[-1]["best_epoch"] == best and final_line(run)["best_epoch"] == best
    test = final_line(run)["test"]["overall"]
    assert test["top1_acc"] == test["subset_acc"] and test["n"] == 10
    _, _, spec, threshold, epoch = ckpt.read_model_file(run / "model.safetensors")
    assert spec.task == "single_label" and threshold == ARGMAX and epoch == best

    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(run), "--out", str(preds)]) == 0
    legend = capsys.readouterr().out.splitlines()[1]  # the timeline of the import: one label a cell, never none
    assert legend.endswith(
        "(a cell: the one label decided (arg-max: the most probable; a single-label run), . not a target)"
    )
    got = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(got) == 10
    for g in got:
        assert sum(g["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert g["labels"] == [max(g["probs"], key=g["probs"].get)]  # exactly one: the top label
    assert main(["eval", str(run), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["overall"] == pytest.approx(test)
    # the confusion counts: a row per gold label, summing to its support; the diagonal is the hits
    matrix = np.array(rep["confusion"]["gold_by_decided"])
    assert rep["confusion"]["labels"] == list(rep["per_label"])
    assert matrix.sum(1).tolist() == [m["support"] for m in rep["per_label"].values()]
    assert np.trace(matrix) == round(test["top1_acc"] * test["n"])
    decided = {}
    for g in got:
        decided[g["labels"][0]] = decided.get(g["labels"][0], 0) + 1
    assert dict(zip(rep["confusion"]["labels"], matrix.sum(0).tolist())) == {n: decided.get(n, 0) for n in EMOTIONS}
    assert main(["eval", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "arg-max" in printed and "weighted-F1" in printed and "gold (rows)" not in printed
    assert main(["eval", str(run), "--per-label"]) == 0
    printed = capsys.readouterr().out
    assert "test, per label (late_fusion)" in printed and "test, gold (rows) by decided (columns)" in printed
    for label, counts in zip(rep["confusion"]["labels"], matrix.tolist()):
        assert re.search(rf"{label}\W+" + r"\W+".join(map(str, counts)) + r"\W*$", printed, re.M)
    # data with two labels on a sample: a single-label run's accuracy of it would not be accuracy
    rows = single_rows()
    rows[0]["labels"] = f"{EMOTIONS[0]};{EMOTIONS[1]}"
    assert main(["data", "import", str(write_table(tmp_path / "two.csv", rows)), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(tmp_path / "m"), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "the run is single-label (it predicts one label per sample), but split 'train' does not give one" in err
    assert main(["eval", str(run), "--data", str(tmp_path / "m"), "--split", "test"]) == 0  # one label each there
    # data of other label names: that is said first (ramer predict, which the count's error sends to, says it)
    for row in rows:
        row["labels"] = row["labels"].replace("anger", "rage")
    assert main(["data", "import", str(write_table(tmp_path / "other.csv", rows)), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(tmp_path / "o"), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'o'}") and "differ from the model's ['anger', 'joy', 'sadness']" in err


def test_cli_multi_label_import_keeps_thresholds(tmp_path, fake_text, capsys):
    src = write_table(tmp_path / "multi.csv", base_rows())  # two rows carry two labels
    assert main(["data", "import", str(src), "--out", str(tmp_path / "ds")]) == 0
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["task"] == "multi_label"
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "ds"), "--model", "late_fusion", "--out", str(run), *SETS]) == 0
    assert "micro-F1" in capsys.readouterr().out
    lines = epoch_lines(run)
    assert all(isinstance(x["threshold"], float) for x in lines)
    micro = [x["valid"]["overall"]["micro_f1"] for x in lines]
    assert final_line(run)["best_epoch"] == 1 + int(np.argmax(micro))
    predictor = ramer.load(run)
    assert predictor.spec.task == "multi_label" and isinstance(predictor.threshold, float)
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(run), "--out", str(preds)]) == 0
    for g in (json.loads(x) for x in preds.read_text().splitlines()):
        assert g["labels"] == [n for n, p in g["probs"].items() if p > predictor.threshold]
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    assert "confusion" not in json.loads(capsys.readouterr().out)  # several labels a row: no one cell
    assert main(["eval", str(run), "--per-label"]) == 0
    printed = capsys.readouterr().out
    assert "test, per label (late_fusion)" in printed and "gold (rows)" not in printed
    assert "F1 speaker" not in printed  # every target of an import speaks: that column would be F1 again


def test_confusion_counts_gold_by_decided_and_refuses_a_row_of_other_than_one_label():
    from sklearn.metrics import confusion_matrix

    from ramer.metrics import MetricInputError, confusion

    rng = np.random.default_rng(0)
    gold, decided = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    eye = np.eye(5, dtype=np.int64)  # a fifth label nobody has: a row and a column of zeros
    got = confusion(eye[gold], eye[decided])
    np.testing.assert_array_equal(got, confusion_matrix(gold, decided, labels=range(5)))
    assert got[2, 1] == ((gold == 2) & (decided == 1)).sum()  # [gold, decided], not the other way
    two = eye[gold].copy()
    two[3, (gold[3] + 1) % 5] = 1
    with pytest.raises(MetricInputError, match="y_true: 1 row"):
        confusion(two, eye[decided])
    with pytest.raises(MetricInputError, match="y_pred: 1 row"):
        confusion(eye[gold], np.vstack([eye[decided][:-1], np.zeros((1, 5), np.int64)]))


def test_selection_follows_the_task(tmp_path, fake_text, monkeypatch):
    """Validation reports where micro-F1 peaks at epoch 1 and weighted F1 at epoch 2: a single-label
    run keeps epoch 2, a multi-label run (the same data, data.task=multi_label) epoch 1."""
    import ramer.train.recipe as recipe

    real = recipe.report

    def scripted(y_true, scores, threshold, role=None, label_names=None, per_label=True):
        rep = real(y_true, scores, threshold, role, label_names, per_label)
        if not per_label:  # validation (the test report holds the per-label figures)
            scripted.calls += 1
            k = (scripted.calls - 1) % 3
            rep["overall"]["micro_f1"] = (0.9, 0.1, 0.3)[k]
            rep["overall"]["weighted_f1"] = (0.2, 0.8, 0.5)[k]
        return rep

    scripted.calls = 0
    monkeypatch.setattr(recipe, "report", scripted)
    import_path = write_table(tmp_path / "single.csv", single_rows())
    assert main(["data", "import", str(import_path), "--out", str(tmp_path / "ds")]) == 0
    for task, best in (("auto", 2), ("multi_label", 1)):
        run = tmp_path / task
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(tmp_path / "ds"),
                    "--model",
                    "late_fusion",
                    "--out",
                    str(run),
                    *SETS,
                    "--set",
                    f"data.task={task}",
                ]
            )
            == 0
        )
        assert final_line(run)["best_epoch"] == best, task
        assert ckpt.read_model_file(run / "model.safetensors")[4] == best


def test_task_overrides_and_their_errors(tmp_path, fake_text, capsys):
    multi = write_table(tmp_path / "multi.csv", base_rows())
    single = write_table(tmp_path / "single.csv", single_rows())
    # forcing single_label on data with two labels in a row: one line naming the file and the count
    assert main(["data", "import", str(multi), "--out", str(tmp_path / "bad"), "--task", "single_label"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(multi) in err
    assert "2 of 11 samples break it: 2 have 2 or more" in err and "row 3" in err
    assert not (tmp_path / "bad" / "meta.json").exists()
    # an empty label is 0 labels
    rows = single_rows()
    rows[0]["labels"] = ""
    with pytest.raises(RamerError, match="1 of 45 samples break it: 1 has no label"):
        from ramer.data.conversations import import_conversations

        import_conversations(write_table(tmp_path / "gap.csv", rows), tmp_path / "gap", task="single_label")
    # forcing multi_label on single-label data is allowed; data.task=single_label switches it back
    assert main(["data", "import", str(single), "--out", str(tmp_path / "as_multi"), "--task", "multi_label"]) == 0
    assert load_native(tmp_path / "as_multi").task == "multi_label"
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "as_multi"),
                "--model",
                "br",
                "--out",
                str(run),
                "--set",
                "data.task=single_label",
            ]
        )
        == 0
    )
    assert final_line(run)["threshold"] == ARGMAX and ramer.load(run).spec.task == "single_label"
    # data.task=single_label on multi-label data: the same check at train time
    assert main(["data", "import", str(multi), "--out", str(tmp_path / "multi")]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "multi"),
                "--model",
                "br",
                "--out",
                str(tmp_path / "r2"),
                "--set",
                "data.task=single_label",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "multi") in err
    assert "data.task=single_label" in err and "2 of 11 samples break it" in err
    assert (
        main(["train", "--data", str(tmp_path / "multi"), "--out", str(tmp_path / "r3"), "--set", "data.task=maybe"])
        == 2
    )
    assert "data.task" in capsys.readouterr().err


def test_other_loaders_stay_multi_label(tmp_path):
    from ramer.data.synthetic import generate

    bundle = generate(
        build_config(
            overrides=["data.synthetic.n_train=20", "data.synthetic.n_valid=5", "data.synthetic.n_test=5"]
        ).data.synthetic
    )
    assert bundle.task == "multi_label" and resolve_task(bundle) == "multi_label"
    with pytest.raises(RamerError, match="samples break it"):  # the benchmark has samples of 0 or 2+ labels
        resolve_task(bundle, "single_label")
    bundle.save(tmp_path / "native")
    assert json.loads((tmp_path / "native" / "meta.json").read_text())["task"] == "multi_label"


def test_old_meta_and_a_checkpoint_spec_without_the_task_key_read_as_multi_label(tmp_path, fake_text):
    import_single(tmp_path)
    meta_path = tmp_path / "ds" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "task"}))
    assert load_native(tmp_path / "ds").task == "multi_label"
    meta_path.write_text(json.dumps({**meta, "task": "several"}))
    with pytest.raises(RamerError, match="'task' is a string"):
        load_native(tmp_path / "ds")
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "task"}))

    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "ds"), "--model", "late_fusion", "--out", str(run), *SETS]) == 0
    # a checkpoint whose spec has no task (written before the key)
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    spec = json.loads(metadata["spec"])
    assert spec.pop("task") == "multi_label"
    old = tmp_path / "old" / "model.safetensors"
    old.parent.mkdir()
    save_file(state, str(old), metadata={**metadata, "spec": json.dumps(spec)})
    predictor = ramer.load(old)
    assert predictor.spec.task == "multi_label" and isinstance(predictor.threshold, float)
    assert predictor.decide(np.array([[0.0, 0.999, 0.0]])).tolist() == [[0, 1, 0]]  # a threshold, not arg-max
    assert predictor.decide(np.array([[0.0, 0.01, 0.0]])).tolist() == [[0, 0, 0]]
    # a stored threshold that does not fit the task is refused
    save_file(state, str(old), metadata={**metadata, "threshold": json.dumps(ARGMAX)})
    with pytest.raises(RamerError, match="does not fit a multi_label model"):
        ramer.load(old)


def test_resolve_task_checks_single_label_counts():
    splits = {s: one_hot_store(6, seed=k) for k, s in enumerate(("train", "valid", "test"))}
    bundle = DataBundle(splits, splits["train"].label_names, "mem", "<mem>", {}, "single_label")
    assert resolve_task(bundle) == "single_label" and resolve_task(bundle, "multi_label") == "multi_label"
    splits["test"].labels[2] = 1  # every label on
    splits["valid"].labels[0] = 0
    with pytest.raises(
        RamerError,
        match=r"<mem>: it is recorded as single_label.*2 of 18 samples break it: "
        r"1 has no label and 1 has 2 or more",
    ):
        resolve_task(bundle)


def test_a_single_label_bundle_is_checked_on_save(tmp_path):
    """A bundle made with task single_label whose rows do not each hold one label was saved without
    a word, the error coming only when a run trained on it. ``save`` refuses it before anything is
    written, with training's count of the samples; the same bundle saves as multi_label, and an
    unlabelled import (every label 0) keeps the task it was given."""
    splits = {s: one_hot_store(6, seed=k) for k, s in enumerate(("train", "valid", "test"))}
    splits["valid"].labels[4] = 0
    splits["test"].labels[1] = 1
    names = splits["train"].label_names
    with pytest.raises(RamerError) as e:
        DataBundle(splits, names, "mem", "<mem>", task="single_label").save(tmp_path / "d")
    assert str(e.value) == (
        "<mem>: task is single_label, which needs exactly one label per sample; 2 of 18 samples break it: "
        "1 has no label and 1 has 2 or more (the first: split 'valid', row 4, 0 labels); give each sample one "
        "label, or save with task='multi_label'"
    )
    assert not (tmp_path / "d").exists()
    DataBundle(splits, names, "mem", "<mem>", task="multi_label").save(tmp_path / "d")
    unlabelled = {s: one_hot_store(6, seed=k) for k, s in enumerate(("train", "valid", "test"))}
    for store in unlabelled.values():
        store.labels[:] = 0
    info = {"conversations": {"labelled": False}}
    DataBundle(unlabelled, names, "conversations", "talk.csv", info, "single_label").save(tmp_path / "u")
    assert load_native(tmp_path / "u").task == "single_label"


PER_LABEL_NOTE = (
    "train.per_label_threshold has no effect on single-label data: the arg-max decides, no threshold is tuned "
    "(data.task=multi_label for per-label sigmoids and thresholds)"
)


@pytest.mark.parametrize("model", ["br", "late_fusion"])
def test_per_label_threshold_on_single_label_data_is_said_to_do_nothing(tmp_path, fake_text, capsys, model):
    """train.per_label_threshold=true on single-label data: the arg-max decides whatever it says, so
    the run says so in a note (it was silent), and with data.task=multi_label it tunes one per label."""
    import_single(tmp_path)
    capsys.readouterr()
    args = ["train", "--data", str(tmp_path / "ds"), "--model", model, *SETS, "--set", "train.per_label_threshold=true"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    assert f"note: {PER_LABEL_NOTE}" in capsys.readouterr().err
    assert final_line(tmp_path / "single")["threshold"] == ARGMAX
    assert main([*args, "--out", str(tmp_path / "multi"), "--set", "data.task=multi_label"]) == 0
    assert "has no effect on single-label data" not in capsys.readouterr().err
    assert len(final_line(tmp_path / "multi")["threshold"]) == len(EMOTIONS)


def test_bench_report_leads_with_accuracy_and_weighted_f1(tmp_path, fake_text, capsys):
    import_single(tmp_path)
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--data",
                str(tmp_path / "ds"),
                "--models",
                "br",
                "--seeds",
                "1",
                "--missing-rates",
                "0",
                "--jobs",
                "1",
                "--out",
                str(out),
                "--set",
                "train.per_label_threshold=true",
            ]
        )
        == 0
    )
    assert capsys.readouterr().err.count(f"note: {PER_LABEL_NOTE}") == 1  # the bench's notes, said once for its runs
    text = (out / "report.md").read_text()
    header = next(ln for ln in text.splitlines() if ln.startswith("| model"))
    assert header.split(" | ")[1:3] == ["Acc", "weighted-F1"] and "micro-F1" not in header
    assert "**Bold**: best model per column. `params`" in text  # no HL column to be lowest in
    assert "arg-max decision, best epoch chosen on validation weighted F1" in text
    record = json.loads((out / "results.json").read_text())[0]["metrics"]["overall"]
    assert f"{record['top1_acc']:.3f}" in text.split(header)[1].splitlines()[2]
    # text only (an import without media): a missing rate hides the target's own words, said where it is one
    assert "has text only" not in text
    argv = ["bench", "--data", str(tmp_path / "ds"), "--models", "br", "--seeds", "1", "--jobs", "1"]
    assert main([*argv, "--missing-rates", "0,0.5", "--out", str(tmp_path / "rated")]) == 0
    said = (
        "the data has text only: a missing rate hides text itself, at a rate r the target's own text in about r of "
        "the samples, so those columns measure a model without the text asked about, not without another modality"
    )
    assert f"note: {tmp_path / 'ds'}: {said}" in capsys.readouterr().err
    assert "The data has text only: a missing rate hides text itself" in (tmp_path / "rated" / "report.md").read_text()
    assert "No test sample has" not in text
    assert "Every test target speaks: there is no non-speaker column." in text  # an import's targets all speak
    # a test split without a label: said by the table's legend (F1 0 in every run, counted by macro-F1)
    rows = [{**r, "labels": "anger"} if r["split"] == "test" and r["labels"] == "joy" else r for r in single_rows()]
    assert main(["data", "import", str(write_table(tmp_path / "nojoy.csv", rows)), "--out", str(tmp_path / "nj")]) == 0
    argv[2] = str(tmp_path / "nj")
    assert main([*argv, "--missing-rates", "0", "--out", str(tmp_path / "nojoy")]) == 0
    said = "No test sample has the label joy (test: 10 samples): its F1 is 0 in every run, and macro-F1 counts it."
    assert said in (tmp_path / "nojoy" / "report.md").read_text()


def test_a_single_label_bench_links_its_weighted_f1_plot_and_no_other(tmp_path, fake_text):
    """The report gives make_plots the data's task, so a single-label bench links
    plots/weighted_f1_vs_missing.png; run again into a folder holding an earlier run's
    micro_f1_vs_missing.png (a ramer that plotted micro-F1 there), that plot is removed, not left
    beside it linked from nothing."""
    import_single(tmp_path)
    out = tmp_path / "bench"
    argv = ["bench", "--data", str(tmp_path / "ds"), "--models", "br", "--seeds", "1", "--missing-rates", "0"]
    assert main([*argv, "--jobs", "1", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "](plots/weighted_f1_vs_missing.png)" in text and "micro_f1_vs_missing" not in text
    (out / "plots" / "micro_f1_vs_missing.png").write_bytes(b"an earlier ramer's plot")
    assert main([*argv, "--jobs", "1", "--out", str(out)]) == 0
    # an import's labelled targets are all speakers: no speaker vs non-speaker plot
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["weighted_f1_vs_missing.png"]


def test_long_label_names_are_printed_whole_in_the_eval_tables():
    """Twelve labels that begin alike, at a log's width of 160: each name was cut to "label-nu…" in
    every row and column of the confusion table, which then named no label; they fold, whole."""
    import io

    from rich.console import Console

    from ramer.cli import confusion_table, per_label_table
    from ramer.console import PLAIN

    labels = [f"label-number-{i}-with-a-rather-long-name" for i in range(12)]
    matrix = {"labels": labels, "gold_by_decided": [[1234 * (i == j) + 7 for j in range(12)] for i in range(12)]}
    per_label = {name: {"support": 1241, "p": 0.5, "r": 0.5, "f1": 0.5} for name in [labels[0] * 5]}
    for table in (confusion_table("t", matrix), per_label_table("t", per_label)):
        out = io.StringIO()
        Console(file=out, width=160, **PLAIN).print(table, soft_wrap=False)
        assert "…" not in out.getvalue() and "1241" in out.getvalue(), out.getvalue()


def test_view_figures_lead_with_accuracy_and_weighted_f1_on_single_label_runs(tmp_path, fake_text, browser):  # noqa: F811
    """ramer view's figures table follows the decision as eval's does: a single-label run's (threshold
    "argmax") leads with Acc and weighted-F1, then macro-F1 (its micro-F1 is its accuracy); a
    multi-label run's keeps micro-F1 first. The page showed micro-F1 first for both."""
    from test_view import open_page, records_for

    from ramer.view import page_data, render_page

    import_single(tmp_path)
    bundle = load_native(tmp_path / "ds")
    store = bundle.splits["test"]
    heads = {}
    for rule in (ARGMAX, 0.5):
        data = page_data(bundle, "test", records_for(store, threshold=rule), rule)
        page = tmp_path / f"{rule}.html"
        page.write_text(render_page(data))
        view, errors = open_page(browser, page)
        heads[rule] = view.locator("#parts thead th").all_inner_texts()
        assert not errors
    assert heads[ARGMAX] == ["targets", "n", "Acc", "weighted-F1", "macro-F1"]
    assert heads[0.5] == ["targets", "n", "micro-F1", "macro-F1", "weighted-F1", "Acc"]


def test_reproduce_table_of_a_single_label_task_leads_with_accuracy_and_weighted_f1(tmp_path, capsys):
    """ramer reproduce with data.task=single_label (M3ED's utterance protocol, one emotion an
    utterance): the runs choose by weighted F1 and the arg-max decides, and results.md says so and
    gives accuracy, weighted F1 and macro-F1. It gave the multi-label layout (Acc, HL, miP, miR,
    miF1, maF1: three columns equal to Acc, no weighted F1) after a sentence naming micro-F1."""
    from fixtures_writers import write_m3ed_annotation, write_m3ed_pickle

    data = tmp_path / "A-V-L.pkl"
    fx = write_m3ed_pickle(data)
    write_m3ed_annotation(tmp_path / "annotation.json", fx)
    tree = json.loads((tmp_path / "annotation.json").read_text(encoding="utf-8"))
    for series in tree.values():  # one emotion an utterance: the main one
        for dialogue in series.values():
            for entry in dialogue["Dialog"].values():
                entry["EmoAnnotation"]["final_mul_emo"] = entry["EmoAnnotation"]["final_main_emo"]
    (tmp_path / "annotation.json").write_text(json.dumps(tree, ensure_ascii=False), encoding="utf-8")
    sets = ["data.m3ed_protocol=utterance", "data.task=single_label", *TINY[:2]]
    argv = ["reproduce", "m3ed", "--data", str(data), "--seeds", "2", "--out", str(tmp_path / "out")]
    assert main(argv + sum((["--set", s] for s in sets), [])) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    assert "single-label (data.task): best checkpoint by validation weighted F1, the arg-max label decides" in text
    header = next(ln for ln in text.splitlines() if ln.startswith("| targets"))
    assert header == "| targets | n | Acc | wF1 | maF1 |"
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    mean = np.mean([r["overall"]["weighted_f1"] for r in runs])
    assert f"| overall | {runs[0]['overall']['n']} | " in text and f"{mean:.4f} ± " in text.split("| overall |")[1]
    assert main(argv + sum((["--set", s] for s in sets), [])) == 0  # read back: the same table
    assert (tmp_path / "out" / "results.md").read_text() == text


def test_bench_tuned_table_names_the_metric_of_a_study_of_the_other_task(tmp_path, fake_text):
    """bench --tuned DIR whose study ran on the single-label task (its value a validation weighted F1)
    in a bench of data.task=multi_label: the tuned table's column is 'best valid micro-F1', and the
    study's value says it is a weighted F1 (it stood there as a micro-F1)."""
    pytest.importorskip("optuna")
    import_single(tmp_path)
    sets = sum((["--set", s] for s in TINY), [])
    tuned = tmp_path / "tuned"
    argv = ["tune", "--model", "late_fusion", "--data", str(tmp_path / "ds"), "--trials", "1"]
    assert main([*argv, "--out", str(tuned / "late_fusion"), *sets]) == 0
    assert json.loads((tuned / "late_fusion" / "tune.json").read_text())["metric"] == "weighted_f1"
    out = tmp_path / "bench"
    bench = ["bench", "--data", str(tmp_path / "ds"), "--models", "late_fusion", "--seeds", "1"]
    bench += ["--missing-rates", "0", "--jobs", "1", "--tuned", str(tuned), *sets]
    for task, header, cell in (
        ("multi_label", "best valid micro-F1", " (weighted-F1: its study's metric) |"),
        ("single_label", "best valid weighted-F1", " |"),
    ):
        assert main([*bench, "--out", str(out / task), "--set", f"data.task={task}"]) == 0
        lines = (out / task / "report.md").read_text().split("## Tuned settings")[1].splitlines()
        assert header in lines[2]
        assert re.search(r"^\| late_fusion \| 1 \(0 pruned\) \| \d\.\d{4}" + re.escape(cell), lines[4]), lines[4]


def test_the_same_table_imported_again_with_the_other_task_is_other_data(tmp_path, fake_text, capsys):
    """The arrays of a re-import with ``--task multi_label`` are the same, and so are their
    fingerprints: a bench took its single-label runs as cached (arg-max decisions reported as
    micro-F1), a study went on with weighted-F1 trials under a micro-F1 heading, and a resumed run
    changed its losses and decision midway. Each now sees the other task: the bench trains again,
    the study and the resume are refused."""
    from test_recipe import Stop, stop_after

    from ramer.train.recipe import Recipe

    data = import_single(tmp_path)
    table = tmp_path / "single.csv"
    bench = ["bench", "--data", str(data), "--models", "br", "--seeds", "1", "--missing-rates", "0"]
    bench += ["--jobs", "1", "--out", str(tmp_path / "bench"), *SETS]
    tune = ["tune", "--model", "late_fusion", "--data", str(data), "--out", str(tmp_path / "study"), *SETS]
    cfg = build_config(overrides=[f"data.path={data}", "model.name=late_fusion", *TINY])
    with pytest.raises(Stop):
        Recipe(cfg, tmp_path / "run", hooks=(stop_after(1),)).run()
    assert main(bench) == 0
    pytest.importorskip("optuna")
    assert main([*tune, "--trials", "1"]) == 0
    capsys.readouterr()

    assert main(["data", "import", str(table), "--out", str(data), "--task", "multi_label"]) == 0
    assert main(bench) == 0
    assert "(1 trained, 0 resumed, 0 cached;" in capsys.readouterr().err
    assert json.loads((tmp_path / "bench" / "results.json").read_text())[0]["metrics"]["overall"]["n"] > 0
    assert main([*tune, "--trials", "2"]) == 2
    assert "on single_label data, and " in capsys.readouterr().err
    with pytest.raises(
        RamerError, match=r"the run started as single_label, and the data at data.path .* is multi_label"
    ):
        Recipe(cfg, tmp_path / "run", resume=True).run()


def test_view_of_a_single_label_run_on_data_of_two_labels_a_sample_shows_no_figures(tmp_path, fake_text, capsys):
    """ramer eval refuses a single-label run's figures on a split that does not give one label per
    sample; ramer view showed them (its Acc then the Jaccard accuracy, not the top-1 accuracy eval's
    Acc is). The page now shows why it has none, and the command says it in a note."""
    data = import_single(tmp_path)
    rows = single_rows()
    for row in rows:
        if row["split"] == "test" and row["index"] == 0:
            row["labels"] = "anger;joy" if row["labels"] != "anger" else "anger;sadness"
    two = tmp_path / "two"
    assert main(["data", "import", str(write_table(tmp_path / "two.csv", rows)), "--out", str(two)]) == 0
    assert main(["train", "--model", "br", "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(two)]) == 2
    assert "does not give one label per sample" in capsys.readouterr().err
    page = tmp_path / "page.html"
    assert main(["view", str(tmp_path / "run"), "--data", str(two), "--out", str(page)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "note: the predictions are single-label (one label per sample), but split 'test' does not give" in err
    text = page.read_text()
    assert '"summary":null' in text and '"figures_note":"the predictions are single-label' in text
    assert main(["view", str(tmp_path / "run"), "--data", str(data), "--out", str(page)]) == 0
    assert '"figures_note":null' in page.read_text() and '"summary":null' not in page.read_text()
