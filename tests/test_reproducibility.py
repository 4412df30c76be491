"""What a user who runs the same thing twice gets: identical files from identical runs, a run stopped
and resumed (at any epoch, between any two of its files) equal to the run never stopped, and
``ramer eval`` giving the run's own test line. Resume of late fusion (with and without the weight
average): ``test_recipe.py::test_resume_equals_uninterrupted_run``; steps repeated with two threads:
``test_ramer_train.py::test_training_steps_repeat_bit_for_bit_with_two_threads``."""

import json

import numpy as np
import pytest
import torch
from conftest import fake_vector
from safetensors.torch import load_file
from test_conversations import base_rows, write_table
from test_recipe import Stop, stop_after, tiny_cfg

import ramer
from ramer import checkpoint as ckpt
from ramer.cli import main
from ramer.data import features as F
from ramer.data.conversations import import_conversations
from ramer.data.store import load_native
from ramer.data.synthetic import generate
from ramer.infer import apply_missing
from ramer.models import build_model
from ramer.models.base import DataSpec
from ramer.train import recipe as recipe_mod
from ramer.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [
    "data.synthetic.n_train=48",
    "data.synthetic.n_valid=24",
    "data.synthetic.n_test=24",
    "train.batch_size=16",
    "train.threads=1",
]
TIMING = ("seconds", "train_samples_per_s")  # of the machine, not of the run


def small_cfg(model, extra=()):
    return tiny_cfg(model, extra=SMALL + list(extra))


@pytest.fixture(scope="module")
def small():
    return generate(small_cfg("ramer").data.synthetic)


def log_lines(run):
    """The run's metrics.jsonl records without their timings."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def assert_same_run(a, b):
    """Two run folders hold the same log (but for timings), test metrics and best weights."""
    assert log_lines(a) == log_lines(b)
    assert (a / "test_metrics.json").read_bytes() == (b / "test_metrics.json").read_bytes()
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


# ------------------------------------------------------------------ resume
EVERYTHING = ["data.missing_rate=0.3", "model.modality_dropout=0.5", "train.ema_decay=0.8"]


@pytest.mark.parametrize("model", ["ramer", "ramer-authors", "hhmpn", "mult"])
def test_a_run_stopped_twice_and_resumed_equals_the_run_never_stopped(tmp_path, small, model):
    """What a deep model carries from step to step comes back on resume (the contrastive queue and the
    prototypes of RAMer and of the authors' design), and so do the modality dropout's draws, the extra
    missing rate's masks and the weight average: a run stopped after epoch 1, resumed, stopped after
    epoch 2 and resumed again ends as the run never stopped, line for line and weight for weight."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    Recipe(small_cfg(model, EVERYTHING), full, bundle=small).run()
    with pytest.raises(Stop):
        Recipe(small_cfg(model, EVERYTHING), cut, bundle=small, hooks=(stop_after(1),)).run()
    with pytest.raises(Stop):
        Recipe(small_cfg(model, EVERYTHING), cut, resume=True, bundle=small, hooks=(stop_after(2),)).run()
    Recipe(small_cfg(model, EVERYTHING), cut, resume=True, bundle=small).run()
    assert [line.get("epoch") for line in log_lines(cut)] == [1, 2, 3, None]
    assert_same_run(full, cut)


def test_a_run_killed_between_its_model_file_and_its_state_resumes_as_never_stopped(tmp_path, small, monkeypatch):
    """Killed after an epoch's better model file and its log line were written, before its training
    state: the model file is an epoch ahead of the state. The resumed run trains that epoch again
    (its log line once) and ends as the run never stopped."""
    extra = ["train.epochs=4", "train.lr=0.005"]
    full = tmp_path / "full"
    Recipe(small_cfg("late_fusion", extra), full, bundle=small).run()
    improved = [line["epoch"] for line in log_lines(full)[:-1] if line["best_epoch"] == line["epoch"]]
    killed_at = max(improved)
    assert killed_at >= 2, improved  # an epoch after the first whose model file is written

    real = ckpt.save_train_state

    def killed(path, state):
        if state["epoch"] == killed_at:
            raise KeyboardInterrupt
        real(path, state)

    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        m.setattr(ckpt, "save_train_state", killed)
        with pytest.raises(KeyboardInterrupt):
            Recipe(small_cfg("late_fusion", extra), cut, bundle=small).run()
    assert ckpt.read_model_file(cut / "model.safetensors")[4] == killed_at  # the file is ahead of the state
    Recipe(small_cfg("late_fusion", extra), cut, resume=True, bundle=small).run()
    assert_same_run(full, cut)


# ------------------------------------------------------------------ eval = the run's test line
def trained_with_test_scores(tmp_path, small, monkeypatch, extra):
    """A late-fusion run trained on ``small`` with ``extra`` settings: its folder and the scores its
    test line was computed from."""
    tested = {}
    real = recipe_mod.write_test_result

    def keep_scores(out, pred, *args, **kwargs):
        tested["scores"] = pred.scores
        return real(out, pred, *args, **kwargs)

    monkeypatch.setattr(recipe_mod, "write_test_result", keep_scores)
    out = tmp_path / "run"
    Recipe(small_cfg("late_fusion", extra), out, bundle=small).run()
    return out, tested["scores"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eval_gives_the_runs_own_test_line(tmp_path, small, monkeypatch, capsys, precision):
    """``ramer eval RUN`` scores the test split as the run's test did (its extra missingness, its
    threshold, its precision): the same scores, so the same figures as test_metrics.json."""
    extra = ["train.epochs=2", "data.missing_rate=0.3", f"train.precision={precision}"]
    out, tested = trained_with_test_scores(tmp_path, small, monkeypatch, extra)
    predictor = ramer.load(out)
    scores = predictor.predict(apply_missing(small, predictor.cfg)["test"])
    assert np.array_equal(scores, tested), f"max difference {np.abs(scores - tested).max():.2g}"
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {k: report[k] for k in ("overall", "speaker", "nonspeaker")} == json.loads(
        (out / "test_metrics.json").read_text()
    )


# ------------------------------------------------------------------ identical runs, identical files
def test_a_model_file_written_again_is_byte_identical(tmp_path):
    """The same model, config, threshold and fingerprints saved three times: three identical files
    (``sha256sum`` of two identical runs' model.safetensors agrees)."""
    cfg = small_cfg("late_fusion")
    spec = DataSpec(dims={"text": 4, "audio": 3, "visual": 2}, n_labels=2, label_names=("a", "b"))
    torch.manual_seed(0)
    model = build_model(cfg, spec)
    files = []
    for i in range(3):
        path = tmp_path / f"model{i}.safetensors"
        ckpt.save_model(path, model, cfg, spec, 0.5, 1, {"train": "x", "valid": "y", "test": "z"})
        files.append(path.read_bytes())
    assert files[0] == files[1] == files[2]


def test_two_identical_runs_write_byte_identical_files(tmp_path, tiny_run):
    """The same ``ramer train`` twice: every file of the run folder has the same bytes (the log but for
    its timings)."""
    first, cfg = tiny_run
    again = tmp_path / "again"
    Recipe(cfg, again, bundle=generate(cfg.data.synthetic)).run()
    assert log_lines(first) == log_lines(again)
    for name in ("config.yaml", "test_metrics.json", "train_state.pt", "model.safetensors"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


# ------------------------------------------------------------------ ramer data import
class PaddedTextModel:
    """A stand-in for the text model whose embeddings, as the real one's, depend in their last digits
    on the batch they are computed in: a batch is padded to its longest text, and the sums run over
    that length (measured on all-MiniLM-L6-v2: up to 2.6e-7 between a text embedded alone and beside
    a longer one)."""

    max_seq_length = 256

    def encode(self, texts, **kwargs):
        padded = max(len(t) for t in texts)
        return np.stack([fake_vector(t) * np.float32(1 + 1e-6 * padded) for t in texts])


def test_a_table_imported_over_an_earlier_import_equals_it_imported_afresh(tmp_path, monkeypatch):
    """The feature cache is keyed by a conversation's own texts, so a conversation's features must be a
    function of them alone: the same table gives the same dataset (the same split fingerprints, so
    its runs can be resumed and evaluated on it), whatever the folder's cache held before."""
    monkeypatch.setattr(F, "load_text_model", PaddedTextModel)
    rows = base_rows()
    more = [
        {"conversation": "c4", "index": 0, "speaker": "kim", "text": "A much longer turn than any other. " * 2},
        {"conversation": "c4", "index": 1, "speaker": "lee", "text": "Fine."},
    ]
    first = write_table(tmp_path / "first.csv", rows)
    final = write_table(tmp_path / "final.csv", rows + [{**r, "present": "", "labels": "joy"} for r in more])
    import_conversations(first, tmp_path / "grown")
    import_conversations(final, tmp_path / "grown")  # c1-c3 from the cache, c4 computed
    import_conversations(final, tmp_path / "fresh")
    grown, fresh = load_native(tmp_path / "grown"), load_native(tmp_path / "fresh")
    assert grown.fingerprints() == fresh.fingerprints()


def test_a_batch_of_a_bf16_run_is_scored_as_its_test(tmp_path, small, monkeypatch):
    """``Predictor.predict(Batch)`` takes the run's autocast too (the store path above goes through
    ``infer.predict``): the test split as one batch gives the run's own test scores."""
    out, tested = trained_with_test_scores(tmp_path, small, monkeypatch, ["train.epochs=1", "train.precision=bf16"])
    predictor = ramer.load(out)
    test = apply_missing(small, predictor.cfg)["test"]
    assert len(test) <= predictor.cfg.train.eval_batch_size  # one batch, as the run's test scored it
    got = predictor.predict(test.collate(np.arange(len(test))))
    assert np.array_equal(got, tested), np.abs(got - tested).max()


def test_sorting_metadata_leaves_a_file_without_metadata_as_it_was(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    before = path.read_bytes()
    ckpt.sort_metadata(path)
    assert path.read_bytes() == before
