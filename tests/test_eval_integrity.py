"""Evaluation integrity: every sample scored, in order; nothing a run chooses reads the test labels;
every figure ``ramer eval`` reports is the one scikit-learn computes from ``ramer predict``'s file."""

import dataclasses
import json
import re
import types
import warnings

import numpy as np
import pytest
import torch
from conftest import random_store
from sklearn import metrics as skm
from test_ddp import DIMS, C, run_ranks, tiny_model
from test_recipe import tiny_cfg

import ramer
from ramer import checkpoint as ckpt
from ramer.cli import main
from ramer.data import DataBundle
from ramer.data.synthetic import generate
from ramer.infer import predict
from ramer.metrics import report
from ramer.train import classical as classical_mod
from ramer.train import recipe as recipe_mod
from ramer.train import run_training

PARTS = {"overall": None, "speaker": 1, "nonspeaker": 0}


def sklearn_figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """scikit-learn's figures of 0/1 truth ``y`` and decisions ``p``, as ``metrics`` defines them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "acc": skm.jaccard_score(y, p, average="samples", zero_division=0),
            "subset_acc": skm.accuracy_score(y, p),
            "hamming_loss": skm.hamming_loss(y, p),
            "micro_f1": skm.f1_score(y, p, average="micro", zero_division=0),
            "macro_f1": skm.f1_score(y, p, average="macro", zero_division=0),
            "weighted_f1": skm.f1_score(y, p, average="weighted", zero_division=0),
        }


def with_test_labels_flipped(bundle: DataBundle) -> DataBundle:
    """``bundle`` with every 0/1 of its test labels flipped; train and valid unchanged."""
    test = bundle.splits["test"]
    flipped = dataclasses.replace(test, labels=(1 - np.asarray(test.labels)).astype(np.uint8))
    return dataclasses.replace(bundle, splits={**bundle.splits, "test": flipped})


def run_record(out) -> tuple[list[dict], dict, object, int]:
    """What a run chose: its epoch lines (less the timings), the model file's weights, threshold and epoch."""
    timings = ("seconds", "train_samples_per_s")
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [{k: v for k, v in ln.items() if k not in timings} for ln in lines if "epoch" in ln]
    state, _, _, threshold, epoch = ckpt.read_model_file(out / "model.safetensors")
    return epochs, state, threshold, epoch


def spy_on_scoring(monkeypatch) -> list[str]:
    """The split of each scoring the recipes make, in order (the synthetic ids name it: synth-test-00000)."""
    scored: list[str] = []
    for module in (recipe_mod, classical_mod):

        def spy(model, store, *args, _real=module.predict, **kwargs):
            scored.append(store.ids[0].split("-")[1])
            return _real(model, store, *args, **kwargs)

        monkeypatch.setattr(module, "predict", spy)
    return scored


@pytest.mark.parametrize(
    "model, extra",
    [
        ("late_fusion", ["train.epochs=3", "train.patience=1", "train.per_label_threshold=true"]),
        ("br", []),
    ],
)
def test_nothing_a_run_chooses_reads_the_test_labels(tmp_path, monkeypatch, model, extra):
    """The same run on data whose test labels are flipped: every epoch line, the best epoch, the
    threshold and the saved weights are bit-identical, while the test figures move (so the flip is
    seen). A threshold, best epoch or early stop chosen on test would differ; and the test split is
    scored once, last, after everything is chosen (a choice by test scores that happens to pick
    the same epoch on both runs is caught there)."""
    scored = spy_on_scoring(monkeypatch)
    cfg = tiny_cfg(model, extra)
    bundle = generate(cfg.data.synthetic)
    a = run_training(cfg, tmp_path / "a", bundle=bundle)
    assert "test" not in scored[:-1] and scored[-1] == "test"
    b = run_training(cfg, tmp_path / "b", bundle=with_test_labels_flipped(bundle))
    (lines_a, state_a, thr_a, epoch_a), (lines_b, state_b, thr_b, epoch_b) = (
        run_record(tmp_path / "a"),
        run_record(tmp_path / "b"),
    )
    assert lines_a == lines_b and (thr_a, epoch_a) == (thr_b, epoch_b)
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a["overall"]["micro_f1"] != b["overall"]["micro_f1"]


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_every_sample_is_scored_in_order_across_a_partial_last_batch(run):
    """50 test scenes in batches of 7 (the last holds one): row i is scene i scored alone, with one
    worker or several."""
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]
    assert len(test) % 7 == 1
    alone = np.concatenate([predictor.predict(test.collate([i])) for i in range(len(test))])
    for workers in (1, 3):
        pred = predict(predictor.model, test, 7, torch.device("cpu"), workers=workers)
        assert pred.ids == test.ids and len(pred.scores) == len(test)
        np.testing.assert_allclose(pred.scores, alone, atol=1e-5)


def test_a_scoring_that_loses_a_row_is_an_error_naming_the_model(run, monkeypatch):
    """The count of scores against the split's was an assert, which ``python -O`` removes: a pass that
    lost or added a row (a model of another package, say) would have been reported on the wrong samples."""
    from ramer import infer
    from ramer.errors import RamerError

    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]
    score_range = infer._score_range
    monkeypatch.setattr(infer, "_score_range", lambda *a, **k: score_range(*a, **k)[1:])  # a row lost
    with pytest.raises(RamerError, match=r"scoring gave 49 rows of scores for 50 samples"):
        predictor.predict(test)


def _sharded_scores(rank: int, world: int, tmp) -> None:
    """One rank of a 2-process evaluation (``test_ddp.run_ranks``): the gathered scores it gets."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo")
    store = random_store(n=13, dims=DIMS, n_labels=C, seed=3)
    np.save(tmp / f"rank{rank}.npy", predict(tiny_model(), store, 4, torch.device("cpu"), shard=True).scores)
    tdist.destroy_process_group()


class ReadsLabels(torch.nn.Module):
    """Scores that are its batch's labels: a model of another package that feeds the labels forward
    while training (a classifier chain's teacher forcing) and forgets to stop when scored."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        return types.SimpleNamespace(probs=0.9 * batch.labels + 0.05 + 0 * self.w)


def test_scores_never_see_the_labels():
    """Validation, test and predict score a batch whose labels are zeroed, as the exported graph is:
    given them, such a model scored above the oracle and won a bench, and its ONNX file disagreed
    with ramer predict by 0.9999."""
    store = random_store(n=9, dims=DIMS, n_labels=C, seed=1)
    assert np.asarray(store.labels).any()
    scores = predict(ReadsLabels(), store, 4, torch.device("cpu")).scores
    assert np.all(scores == np.float32(0.05))


def test_two_processes_score_every_sample_once_in_order(tmp_path):
    """``--nproc 2`` evaluation: 13 scenes (blocks of 7 and 6, each ending in a partial batch of 4)
    scored by 2 gloo processes give every rank the rows one process scores, in the split's order."""
    run_ranks(_sharded_scores, tmp_path)
    store = random_store(n=13, dims=DIMS, n_labels=C, seed=3)
    one = predict(tiny_model(), store, 4, torch.device("cpu")).scores
    for rank in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), one, atol=1e-6)


def test_eval_reports_what_sklearn_computes_from_the_predictions_file(run, tmp_path, capsys):
    """``ramer eval --json`` (one process and ``--workers 2``) against scikit-learn on the labels of
    ``ramer predict``'s lines and the split's annotations: every sample (those without any label
    too), the speaker and non-speaker parts adding up to the whole."""
    out, cfg = run
    test = generate(cfg.data.synthetic).splits["test"]
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out), "--out", str(preds)]) == 0
    capsys.readouterr()
    lines = [json.loads(ln) for ln in preds.read_text().splitlines()]
    assert [ln["id"] for ln in lines] == test.ids
    names = list(test.label_names)
    y = np.asarray(test.labels).astype(int)
    p = np.array([[int(n in ln["labels"]) for n in names] for ln in lines])
    role = np.asarray(test.role)
    assert (y.sum(1) == 0).any() and set(role.tolist()) == {0, 1}  # what this test is about is in the split
    for argv in ([], ["--workers", "2"]):
        assert main(["eval", str(out), "--json", *argv]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["speaker"]["n"] + rep["nonspeaker"]["n"] == rep["overall"]["n"] == len(test)
        for part, want in PARTS.items():
            rows = np.ones(len(y), dtype=bool) if want is None else role == want
            assert rep[part]["n"] == int(rows.sum())
            for key, value in sklearn_figures(y[rows], p[rows]).items():
                assert rep[part][key] == pytest.approx(value, abs=1e-12), (part, key)
        f1 = skm.f1_score(y, p, average=None, zero_division=0)
        assert [rep["per_label"][n]["f1"] for n in names] == pytest.approx(f1.tolist(), abs=1e-12)
        assert [rep["per_label"][n]["support"] for n in names] == y.sum(0).tolist()
        assert list(rep["per_label_by_role"]) == ["speaker", "nonspeaker"]
        for part, by_label in rep["per_label_by_role"].items():
            rows = role == PARTS[part]
            f1 = skm.f1_score(y[rows], p[rows], average=None, zero_division=0)
            assert [by_label[n]["f1"] for n in names] == pytest.approx(f1.tolist(), abs=1e-12), part
            assert [by_label[n]["support"] for n in names] == y[rows].sum(0).tolist(), part
    # the run's test line holds the same figures; eval --per-label shows each role's F1 and support
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["per_label_by_role"] == rep["per_label_by_role"]
    assert main(["eval", str(out), "--per-label"]) == 0
    printed = capsys.readouterr().out
    assert "F1 speaker (support)" in printed and "F1 nonspeaker (support)" in printed
    for n in names:
        m, by_role = rep["per_label"][n], rep["per_label_by_role"]
        cells = [n, str(m["support"]), *(f"{m[k]:.4f}" for k in ("p", "r", "f1"))]
        cells += [f"{by_role[part][n]['f1']:.4f} ({by_role[part][n]['support']})" for part in ("speaker", "nonspeaker")]
        assert re.search(r"^\W*" + r"\W+".join(map(re.escape, cells)) + r"\W*$", printed, re.M), n


def test_report_counts_samples_without_a_label():
    """``metrics.report`` on truth with empty rows (no emotion annotated) and whole-scene samples
    (role -1): every row is in ``overall``, each part equals scikit-learn on its rows."""
    rng = np.random.default_rng(5)
    y = (rng.random((23, 4)) < 0.35).astype(int)
    y[:6] = 0
    scores = rng.random((23, 4))
    role = np.array([1, 0, -1] * 7 + [1, 0])
    rep = report(y, scores, 0.5, role)
    p = (scores > 0.5).astype(int)
    for part, want in PARTS.items():
        rows = np.ones(len(y), dtype=bool) if want is None else role == want
        assert rep[part]["n"] == int(rows.sum())
        for key, value in sklearn_figures(y[rows], p[rows]).items():
            assert rep[part][key] == pytest.approx(value, abs=1e-12), (part, key)
