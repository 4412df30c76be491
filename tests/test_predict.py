"""`ramer predict` and the Python API on a tiny trained run."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_recipe import TINY, one_error_line, tiny_cfg

import ramer
from ramer.api import load_data_for
from ramer.cli import main
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.train.recipe import Recipe


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_predict_writes_one_line_per_sample(run, tmp_path):
    out, cfg = run
    path = tmp_path / "preds.jsonl"
    assert main(["predict", str(out), "--out", str(path)]) == 0
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    bundle = generate(cfg.data.synthetic)
    test = bundle.splits["test"]
    assert [x["id"] for x in lines] == test.ids  # every sample, in order
    predictor = ramer.load(out)
    probs = predictor.predict(bundle)
    for i, line in enumerate(lines):
        assert list(line["probs"]) == list(bundle.label_names)
        assert np.allclose(list(line["probs"].values()), probs[i], atol=1e-6)
        assert line["labels"] == [n for n, p in zip(bundle.label_names, probs[i]) if p > predictor.threshold]
        p, s = test.target[i]
        assert line["target"] == {"person": int(p), "segment": int(s)}
        assert line["role"] == ("speaker" if test.role[i] == 1 else "nonspeaker")


def test_the_files_probabilities_give_its_decisions():
    """``probs > threshold`` on a predictions line's own numbers gives its ``labels``, also for a
    probability within 1e-6 of the threshold (rounded to 6 decimals, 0.43000001 read 0.43, not above
    0.43, though the decision, in float64 of the float32 score, was)."""
    from ramer.infer import prediction_records
    from ramer.metrics import decide

    test = generate(tiny_cfg().data.synthetic).splits["test"]
    probs = np.full((len(test), len(test.label_names)), 0.43000001, dtype=np.float32)
    probs[:, 0] = 0.42999999
    records = prediction_records(test, probs, decide(probs, 0.43), 0.43)
    for line in json.loads(json.dumps(records)):  # as a reader of the file gets them
        assert line["labels"] == [n for n, p in line["probs"].items() if p > line["threshold"]]
        assert line["labels"] == list(test.label_names)[1:]


def test_api_predicts_a_batch_like_the_split(run):
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]
    whole = predictor.predict(test)
    part = predictor.predict(test.collate([4, 2, 9]))
    np.testing.assert_allclose(part, whole[[4, 2, 9]], atol=1e-5)
    assert predictor.decide(whole).shape == whole.shape


def test_the_readmes_python_example_runs(run):
    """The README's Python block, on this run: the run's own data, scores row by row in the split's
    order, decisions, metrics."""
    out, cfg = run
    readme = Path(__file__).parents[1] / "README.md"
    code = readme.read_text().split("## Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert '"runs/demo/ramer"' in code
    names: dict = {}
    exec(code.replace('"runs/demo/ramer"', repr(str(out))), names)
    test = generate(cfg.data.synthetic).splits["test"]
    assert names["test"].ids == test.ids
    np.testing.assert_allclose(names["probs"], ramer.load(out).predict(test), atol=1e-6)
    assert set(names["multilabel_metrics"](test.labels, names["labels"])) >= {"micro_f1", "macro_f1"}


def test_api_refuses_other_labels(run):
    out, _ = run
    other = generate(tiny_cfg(extra=["data.synthetic.n_labels=5"]).data.synthetic)
    with pytest.raises(RamerError, match="differ from the model"):
        ramer.load(out).predict(other)


def test_predict_output_path_is_checked_before_the_work(run, tmp_path, capsys):
    """--out: an empty name, a folder, or a path under a file are one clear error each; a missing
    folder is made."""
    out, _ = run
    (tmp_path / "file").write_text("")
    for bad, message in (
        ("", "the output file name is empty"),
        (str(tmp_path), "is a folder; give a file name"),
        (str(tmp_path / "file" / "p.jsonl"), "file: exists and is not a folder"),
        (  # a name of another format: JSON lines under a .csv name would be read wrong by its name
            str(tmp_path / "preds.csv"),
            "ramer predict writes JSON lines (one object per prediction), not a '.csv' file; give a name ending "
            ".jsonl or .ndjson",
        ),
        (str(tmp_path / "preds.json"), "not a '.json' file"),  # one JSON document to a tool, not one a line
    ):
        assert main(["predict", str(out), "--out", bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "preds.csv").exists()
    for name in ("preds.seed1", "preds.2026.12.07", "PREDS.JSONL"):  # endings that name no other format
        assert main(["predict", str(out), "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_text().count("\n") == 50
    assert main(["predict", str(out), "--out", str(tmp_path / "new" / "sub" / "p.jsonl")]) == 0
    assert (tmp_path / "new" / "sub" / "p.jsonl").read_text().count("\n") == 50


def test_api_refuses_other_feature_sizes(run, tmp_path, capsys):
    """Data whose features are not the size the model was trained on: one clear error (a store, a
    batch, the CLI), not a shape error from inside the model."""
    out, _ = run
    other = generate(tiny_cfg(extra=["data.synthetic.text_dim=32"]).data.synthetic)
    predictor = ramer.load(out)
    with pytest.raises(RamerError, match="text features have size 32, the model expects 64"):
        predictor.predict(other)
    with pytest.raises(RamerError, match="^batch: text features have size 32"):
        predictor.predict(other.splits["test"].collate([0, 1]))
    other.save(tmp_path / "other")
    assert main(["eval", str(out), "--data", str(tmp_path / "other")]) == 2
    assert "text features have size 32, the model expects 64" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_cuda_run_is_scored_on_cpu_with_device(run, tmp_path, capsys):
    """A run trained with train.device=cuda, on a machine without CUDA: the error says how to go
    on (--device cpu / device='cpu'), and that works."""
    from ramer import checkpoint as ckpt

    out, _ = run
    state, cfg, spec, threshold, epoch = ckpt.read_model_file(out / "model.safetensors")
    cfg.train.device = "cuda"
    (tmp_path / "cuda").mkdir()
    model = ramer.load(out).model
    ckpt.save_model(tmp_path / "cuda" / "model.safetensors", model, cfg, spec, threshold, epoch)
    with pytest.raises(
        RamerError,
        match=r"the run's train.device is 'cuda' but CUDA is not available here; load it with device='cpu' "
        r"\(ramer eval / predict --device cpu\)",
    ):
        ramer.load(tmp_path / "cuda")
    with pytest.raises(RamerError, match=r"the device asked for \(device=, or --device\) is 'cuda' but CUDA"):
        ramer.load(out, device="cuda")
    assert main(["eval", str(tmp_path / "cuda"), "--device", "cpu"]) == 0
    assert main(["predict", str(tmp_path / "cuda"), "--out", str(tmp_path / "p.jsonl"), "--device", "cpu"]) == 0
    for device, message in (
        ("mps", "ramer runs on cpu or cuda"),
        ("tpu", "unknown device 'tpu'"),
        ("cpu:1", r"unknown device 'cpu:1' \(cpu, cuda or cuda:N; the CPU is one device, cpu\)"),  # it ran
    ):
        with pytest.raises(RamerError, match=message):
            ramer.load(out, device=device)


def test_api_refuses_what_it_cannot_score(run):
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]
    with pytest.raises(RamerError, match="predict takes a SceneStore, a DataBundle or a Batch, not str"):
        predictor.predict("data/test")
    for workers in (0, 2.5, True):
        with pytest.raises(RamerError, match="workers must be an integer of at least 1"):
            predictor.predict(test, workers=workers)
    with pytest.raises(RamerError, match=r"probabilities of shape \(3, 2\), expected \(n, 9\)"):
        predictor.decide(np.zeros((3, 2)))
    with pytest.raises(RamerError, match="unknown precision 'fp16'"):
        ramer.load(out, precision="fp16")


def nan_in_present(store, modality="text"):
    """A copy of ``store`` whose ``modality`` features are NaN in every present row, edited after the
    store was built (as a loaded store edited in a notebook would be)."""
    import dataclasses

    k = ("text", "audio", "visual").index(modality)
    out = dataclasses.replace(store, **{modality: np.array(getattr(store, modality))})
    getattr(out, modality)[np.asarray(store.present)[:, k]] = np.nan
    return out


def test_nonfinite_present_features_name_the_data_not_the_model(run):
    """A batch with NaN under a True presence bit is refused (it was scored to NaN without a word); a
    store or bundle whose NaN features make NaN scores is named with its modality, where the error
    blamed the model. NaN under a False presence bit is no error."""
    out, cfg = run
    predictor = ramer.load(out)
    bundle = generate(cfg.data.synthetic)
    test = bundle.splits["test"]
    bad = nan_in_present(test, "audio")
    with pytest.raises(RamerError, match=r"^batch: \d+ non-finite values \(NaN or inf\) in present audio features "):
        predictor.predict(bad.collate([0, 1, 2]))
    with pytest.raises(
        RamerError, match=r"^synthetic:test: audio holds \d+ non-finite values \(NaN or inf\) in present rows"
    ):
        predictor.predict(bad)  # the store's source, as every store error names it
    bundle.splits["valid"] = nan_in_present(bundle.splits["valid"])
    with pytest.raises(RamerError, match=r"^synthetic\(seed=\d+\): split 'valid': text holds \d+ non-finite"):
        predictor.predict(bundle, split="valid", workers=2)
    hidden = test.collate([0, 1, 2])
    hidden.features["audio"][~hidden.present["audio"]] = float("nan")  # what lies under False is ignored
    np.testing.assert_allclose(predictor.predict(hidden), predictor.predict(test)[:3], atol=1e-5)


def test_decide_refuses_what_are_not_probabilities(run):
    """NaN scores decided all 0 and logits all 1, with no error."""
    out, _ = run
    predictor = ramer.load(out)
    with pytest.raises(RamerError, match=r"probabilities: 18 of 18 are NaN or infinite"):
        predictor.decide(np.full((2, 9), np.nan))
    with pytest.raises(RamerError, match=r"probabilities: 18 of 18 lie outside \[0, 1\] \(e.g. 5\).*not logits"):
        predictor.decide(np.full((2, 9), 5.0))
    assert predictor.decide(np.full((2, 9), 0.99)).tolist() == [[1] * 9] * 2
    # a bf16 tensor (what a bf16 model's scores are) was torch's 'unsupported ScalarType BFloat16'
    assert predictor.decide(torch.full((2, 9), 0.99, dtype=torch.bfloat16)).tolist() == [[1] * 9] * 2
    with pytest.raises(RamerError, match=r"probabilities are not an \(n, 9\) array: .*inhomogeneous"):
        predictor.decide([[0.5] * 9, [0.5] * 8])


def test_predict_refuses_arguments_that_cannot_apply(run):
    """split picks a bundle's split, workers shares a store's batches out: each was ignored silently
    where it cannot apply."""
    out, cfg = run
    predictor = ramer.load(out)
    bundle = generate(cfg.data.synthetic)
    test = bundle.splits["test"]
    for data in (test, test.collate([0, 1])):
        with pytest.raises(RamerError, match=r"split='valid' picks a split of a DataBundle; a \w+ is one split"):
            predictor.predict(data, split="valid")
    with pytest.raises(RamerError, match=r"workers=2 shares the batches .* a Batch is scored in one pass"):
        predictor.predict(test.collate([0, 1]), workers=2)
    with pytest.raises(RamerError, match=r"split is a split's name \(a str such as 'test'\), not list"):
        predictor.predict(bundle, split=["test"])  # was TypeError: unhashable type: 'list'
    np.testing.assert_array_equal(predictor.predict(bundle), predictor.predict(bundle, split="test"))
    np.testing.assert_array_equal(predictor.predict(bundle, split="valid"), predictor.predict(bundle.splits["valid"]))


def test_load_and_load_data_for_check_their_arguments(run, tmp_path, monkeypatch):
    """A run path that is not a path, data given as a Path, and a missing run data path explained
    the Python way too."""
    out, cfg = run
    for bad in (123, None):
        with pytest.raises(RamerError, match=rf"ramer.load takes the path .* not {type(bad).__name__}$"):
            ramer.load(bad)
    predictor = ramer.load(out)
    generate(cfg.data.synthetic).save(tmp_path / "d")
    assert (
        load_data_for(predictor, tmp_path / "d").splits["test"].ids == generate(cfg.data.synthetic).splits["test"].ids
    )
    with pytest.raises(RamerError, match=r"data must be a path \(a str or Path\), not int"):
        load_data_for(predictor, 5)
    with pytest.raises(RamerError, match=r"load_data_for takes a Predictor .* not PosixPath"):
        load_data_for(out)
    predictor.cfg.data.path = "d"  # relative, as trained from tmp_path
    monkeypatch.chdir(out)
    with pytest.raises(RamerError, match=r"d: data path not found .*in Python: load_data_for\(predictor, data=PATH\)"):
        load_data_for(predictor)


def test_bf16_predictor_agrees_with_fp32(run, tmp_path):
    """The bf16 model (cast whole, inputs cast to match) scores like fp32 to a few thousandths; the
    CLI flag reaches it. Every sample is scored, in order."""
    import torch

    out, cfg = run
    test = generate(cfg.data.synthetic).splits["test"]
    fp32, bf16 = ramer.load(out), ramer.load(out, precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    a, b = fp32.predict(test), bf16.predict(test)
    assert a.shape == b.shape == (len(test), len(test.label_names))
    assert b.dtype == np.float32 and np.isfinite(b).all()
    assert 0 < np.abs(a - b).max() < 0.02  # different arithmetic, close scores
    assert (fp32.decide(a) == bf16.decide(b)).mean() > 0.97
    np.testing.assert_allclose(bf16.predict(test.collate([3, 1])), b[[3, 1]], atol=1e-6)
    path = tmp_path / "p.jsonl"
    assert main(["predict", str(out), "--out", str(path), "--precision", "bf16"]) == 0
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    np.testing.assert_allclose([list(x["probs"].values()) for x in lines], b, atol=1e-5)


def test_forked_workers_score_like_one_process(run, tmp_path, capsys):
    """--workers N: blocks of whole batches scored by N forked processes, gathered in order; the
    same scores as one process, on the API and the CLI; a bad count or device is refused."""
    import torch

    from ramer.infer import predict

    out, cfg = run
    test = generate(cfg.data.synthetic).splits["test"]
    predictor = ramer.load(out)
    predictor.cfg.train.eval_batch_size = 8  # 50 samples: 7 batches over 3 workers (2, 2, 3 batches)
    one = predictor.predict(test)
    for workers in (2, 3, 7, 12):  # 12 > the number of batches: no empty block
        np.testing.assert_allclose(predictor.predict(test, workers=workers), one, atol=1e-6)
    path, path2 = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main(["predict", str(out), "--out", str(path)]) == 0
    assert main(["predict", str(out), "--out", str(path2), "--workers", "2"]) == 0
    a, b = ([json.loads(x) for x in p.read_text().splitlines()] for p in (path, path2))
    assert [x["id"] for x in a] == [x["id"] for x in b] == test.ids
    np.testing.assert_allclose(
        [list(x["probs"].values()) for x in b], [list(x["probs"].values()) for x in a], atol=2e-6
    )
    assert main(["eval", str(out), "--workers", "2"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(out), "--out", str(path), "--workers", "0"])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    with pytest.raises(RamerError, match="for CPU"):
        predict(predictor.model, test, 8, torch.device("cuda"), workers=2)


def test_forked_workers_score_on_one_thread_each(run, monkeypatch):
    """Each forked process scores on one thread, however many this process has."""
    from ramer import infer

    out, cfg = run
    test = generate(cfg.data.synthetic).splits["test"]
    model = ramer.load(out).model

    def thread_count(model, store, start, stop, *rest):  # a block's rows: its worker's thread count
        return np.full((stop - start, 1), torch.get_num_threads())

    monkeypatch.setattr(infer, "_score_range", thread_count)  # the forked workers inherit it
    threads = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        scores = infer.predict(model, test, 32, torch.device("cpu"), workers=4).scores  # 2 batches: 2 blocks
    finally:
        torch.set_num_threads(threads)
    assert scores[:, 0].tolist() == [1] * 50


SCORE_AFTER_THREADS = """
import sys, numpy as np, torch, ramer
from ramer.api import load_data_for
torch.set_num_threads(4)  # as on a machine of 4 cores or more
predictor = ramer.load(sys.argv[1])
data = load_data_for(predictor)
alone = predictor.predict(data, batch_size=8)  # this process's threads at work
forked = predictor.predict(data, batch_size=8, workers=2)
print("largest difference", np.abs(alone - forked).max())
"""


def test_forked_workers_score_after_this_process_used_several_threads(run, tmp_path):
    """Forked workers that each took two of this process's four threads waited for ever in their
    first parallel region (OpenMP's pool of threads does not survive a fork); on one thread each
    they score, as one process does."""
    import subprocess
    import sys

    out, _ = run
    (tmp_path / "score.py").write_text(SCORE_AFTER_THREADS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "score.py", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail("scoring in forked workers did not end within 120 s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) < 1e-6, proc.stdout


def test_more_workers_than_batches_score_as_one_worker_per_batch(run, tmp_path):
    """A huge --workers (10**30) is no list, process or thread share per worker: it scores as
    one worker per batch, here 2 (it used to build a list over range(workers): a hang, memory
    growing); the CLI's eval and predict take it too."""
    import tracemalloc

    import torch

    from ramer.infer import _batch_blocks, predict

    out, cfg = run
    test = generate(cfg.data.synthetic).splits["test"]
    model = ramer.load(out).model
    tracemalloc.start()  # a million workers for 7 batches: nothing the size of a million
    try:
        blocks = _batch_blocks(slice(0, 50), 8, 10**6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(blocks) == 7 and peak < 100_000, peak
    huge = 10**30
    assert _batch_blocks(slice(0, 50), 8, huge) == _batch_blocks(slice(0, 50), 8, 7)  # 7 batches: 7 blocks
    assert _batch_blocks(slice(0, 0), 8, huge) == []
    two = predict(model, test, 25, torch.device("cpu"), workers=2).scores  # 50 samples: 2 batches
    np.testing.assert_array_equal(predict(model, test, 25, torch.device("cpu"), workers=huge).scores, two)
    path, path2 = tmp_path / "two.jsonl", tmp_path / "huge.jsonl"
    assert main(["predict", str(out), "--out", str(path), "--workers", "2", "--batch-size", "25"]) == 0
    assert main(["predict", str(out), "--out", str(path2), "--workers", str(huge), "--batch-size", "25"]) == 0
    assert path2.read_text() == path.read_text()
    assert main(["eval", str(out), "--workers", str(huge)]) == 0


def test_metrics_table_shows_no_score_for_an_empty_part():
    """A split without non-speaker targets prints a dash there, not a score of 0."""
    from rich.console import Console

    from ramer.cli import metrics_table

    full = {k: 0.5 for k in ("micro_f1", "macro_f1", "acc", "hamming_loss")}
    rows = {"m": {"overall": {**full, "n": 3}, "speaker": {**full, "n": 3}, "nonspeaker": {**full, "n": 0}}}
    console = Console(width=200, record=True)
    console.print(metrics_table("t", rows))
    lines = console.export_text().splitlines()
    assert [ln for ln in lines if "nonspeaker" in ln][0].count("–") == 4
    assert [ln for ln in lines if "speaker" in ln and "non" not in ln][0].count("0.5000") == 4


def test_a_model_file_from_before_a_config_key_loads_as_it_was_trained(tmp_path):
    """A RAMer model file whose stored config predates model.stand_in, model.target_prior and
    loss.detach_targets was trained with the prototype stand-in, no target prior and attached
    reconstruction targets: it loads as that model (not today's defaults, which its weights do not
    fit) and scores as it did."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = tiny_cfg(
        "ramer",
        extra=["train.epochs=1", "model.stand_in=prototype", "model.target_prior=null", "loss.detach_targets=false"],
    )
    bundle = generate(cfg.data.synthetic)
    Recipe(cfg, tmp_path / "run", bundle=bundle).run()
    with safe_open(str(tmp_path / "run" / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    stored = json.loads(metadata["config"])
    for section, key in (("model", "stand_in"), ("model", "target_prior"), ("loss", "detach_targets")):
        del stored[section][key]
    (tmp_path / "old").mkdir()
    save_file(state, str(tmp_path / "old" / "model.safetensors"), metadata={**metadata, "config": json.dumps(stored)})
    old, new = ramer.load(tmp_path / "old"), ramer.load(tmp_path / "run")
    assert (old.cfg.model.stand_in, old.cfg.model.target_prior, old.cfg.loss.detach_targets) == (
        "prototype",
        None,
        False,
    )
    np.testing.assert_array_equal(old.predict(bundle), new.predict(bundle))
    # today's defaults would not fit those weights, and the error says what to do
    stored["model"]["stand_in"] = "gate"
    save_file(state, str(tmp_path / "old" / "model.safetensors"), metadata={**metadata, "config": json.dumps(stored)})
    with pytest.raises(RamerError, match=r"weights do not fit the model \(missing \w+\.[\w.]+.*must be trained again"):
        ramer.load(tmp_path / "old")


# ------------------------------------------------------------------ bad model files and data: one clear line
def model_file_with(run_dir, dst, meta=None, nan_weights=False):
    """A copy of a run's model.safetensors at ``dst`` with metadata entries replaced (JSON-encoded)
    and, with ``nan_weights``, every floating weight NaN (a diverged model)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    if nan_weights:
        state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    metadata = {**metadata, **{k: json.dumps(v) for k, v in (meta or {}).items()}}
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / "model.safetensors"), metadata=metadata)
    return dst


def spec_of(run_dir, **changes):
    from ramer.checkpoint import read_spec

    return {**read_spec(run_dir / "model.safetensors").to_dict(), **changes}


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"threshold": [0.5, 0.5]}, "stored threshold [0.5, 0.5] is malformed"),
        ({"threshold": float("nan")}, "stored threshold nan is malformed"),
        ({"threshold": float("inf")}, "stored threshold inf is malformed"),
        ({"spec": ["text"]}, "metadata 'spec' is malformed (an object expected, not list)"),
        ({"config": []}, "metadata 'config' is malformed (an object expected, not list)"),
        ({"spec": {"dims": ["text"]}}, "metadata 'spec' is malformed ('dims' must map each modality"),
        ("dims", "metadata 'spec' is malformed ('dims' must map each modality"),
    ],
)
def test_malformed_model_metadata_is_one_clear_line(run, tmp_path, capsys, meta, message):
    out, _ = run
    if meta == "dims":
        spec = spec_of(out)
        meta = {"spec": {**spec, "dims": {**spec["dims"], "text": -5}}}
    bad = model_file_with(out, tmp_path / "bad", meta)
    capsys.readouterr()
    assert main(["eval", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad / 'model.safetensors'}: " in err and message in err and one_error_line(err), err


def test_a_classical_model_file_short_of_a_weight_is_named(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ramer.train import run_training

    cfg = tiny_cfg("br", extra=["train.epochs=1"])
    run_training(cfg, tmp_path / "br", bundle=generate(cfg.data.synthetic))
    with safe_open(str(tmp_path / "br" / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys() if k != "coef"}
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=metadata)
    capsys.readouterr()
    assert main(["eval", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: classical 'br' weights lack ['coef']" in err and one_error_line(err), err
    # bf16 casts a deep model's weights; a classical model's numpy fit has none to cast
    with pytest.raises(RamerError, match=r"br/model.safetensors: precision bf16 applies to the deep models, not 'br'"):
        ramer.load(tmp_path / "br", precision="bf16")
    # NaN features: the error names the data, with no numpy RuntimeWarning from the sigmoid before it
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RamerError, match=r"^synthetic:test: audio holds \d+ non-finite values"):
            ramer.load(tmp_path / "br").predict(nan_in_present(generate(cfg.data.synthetic).splits["test"], "audio"))


def test_a_model_file_that_is_a_folder_says_so(run, tmp_path, capsys):
    (tmp_path / "run" / "model.safetensors").mkdir(parents=True)
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert ": is a folder, not a model file" in capsys.readouterr().err


def test_nan_scores_are_refused_before_predict_writes(run, tmp_path, capsys):
    out, _ = run
    bad = model_file_with(out, tmp_path / "diverged", nan_weights=True)
    path = tmp_path / "preds.jsonl"
    for argv in (["predict", str(bad), "--out", str(path)], ["eval", str(bad)]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "scores are NaN or infinite (did the model diverge?)" in err and "Traceback" not in err, err
    assert not path.exists()


def test_a_diverged_model_is_refused_on_a_batch_too(run, tmp_path):
    """A Batch of finite features scored NaN by a diverged model: the store path's error, naming the
    model (a batch returned the NaN scores without a word)."""
    out, cfg = run
    predictor = ramer.load(model_file_with(out, tmp_path / "diverged", nan_weights=True))
    batch = generate(cfg.data.synthetic).splits["test"].collate([0, 1, 2])
    with pytest.raises(
        RamerError, match=r"^model \w+: 27 of 27 scores are NaN or infinite \(did the model diverge\?\)"
    ):
        predictor.predict(batch)


def unlabelled_import(cfg, directory):
    """The synthetic data saved as an unlabelled import with a split column would be: every label 0,
    ``labelled: false`` in its info."""
    import dataclasses

    from ramer.data import DataBundle

    bundle = generate(cfg.data.synthetic)
    splits = {n: dataclasses.replace(s, labels=np.zeros_like(s.labels)) for n, s in bundle.splits.items()}
    info = {"conversations": {"labelled": False}}
    DataBundle(splits, bundle.label_names, "conversations", str(directory), info).save(directory)
    return directory


def test_unlabelled_data_is_neither_evaluated_nor_trained_on(run, tmp_path, capsys):
    out, cfg = run
    data = unlabelled_import(cfg, tmp_path / "unlabelled")
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "the data has no annotations" in err and "ramer predict" in err and one_error_line(err)
    for model in ("late_fusion", "br"):
        assert main(["train", "--model", model, "--data", str(data), "--out", str(tmp_path / model)]) == 2
        err = capsys.readouterr().err
        assert "the data has no annotations" in err and one_error_line(err), err
    assert main(["predict", str(out), "--data", str(data), "--out", str(tmp_path / "p.jsonl")]) == 0


def test_load_data_for_says_when_the_runs_own_data_is_not_what_it_was_trained_on(tmp_path, run):
    """A run trained on a bundle made otherwise than its ``cfg.data`` (here another seed) records
    that data's fingerprints; ``load_data_for`` reads ``cfg.data`` and warns; the run trained on
    its config's own data gives no warning."""
    import warnings

    cfg = tiny_cfg(extra=["train.epochs=1"])
    other = generate(cfg.data.synthetic.model_copy(update={"seed": 5}))
    Recipe(cfg, tmp_path / "r", bundle=other).run()
    with pytest.warns(UserWarning, match=r"split 'test' of the embedded benchmark differs from the data"):
        load_data_for(ramer.load(tmp_path / "r"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_data_for(ramer.load(run[0]))


def test_per_label_thresholds_are_titled_as_their_range_not_one_number(tmp_path, capsys):
    """A run with ``train.per_label_threshold``: eval's title said ``threshold 0.49``, the mean of nine
    thresholds, as if it were the run's one; it gives their range."""
    from ramer.metrics import describe_threshold

    assert describe_threshold(0.43) == "thr 0.43" and describe_threshold("argmax") == "arg-max"
    assert describe_threshold(np.array([0.54, 0.46, 0.5]), "threshold") == "threshold per label 0.46 to 0.54"
    assert describe_threshold([0.5, 0.5]) == "thr per label 0.50"
    out = tmp_path / "run"
    cfg = tiny_cfg(extra=["train.epochs=1", "train.per_label_threshold=true"])
    Recipe(cfg, out, bundle=generate(cfg.data.synthetic)).run()
    thresholds = ramer.load(out).threshold
    low, high = (f"{f(thresholds):.2f}" for f in (np.min, np.max))
    assert low != high
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert f"test metrics (late_fusion, best epoch 1, threshold per label {low} to {high})" in capsys.readouterr().out
    argv = ["train", "--model", "late_fusion", "--out", str(tmp_path / "again")]  # train's own table says the same
    sets = [*TINY, "train.epochs=1", "train.per_label_threshold=true"]
    assert main(argv + [x for kv in sets for x in ("--set", kv)]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # the title, wrapped to the table's width
    assert f"test metrics (late_fusion, {tmp_path / 'again'}, best epoch 1, threshold per label " in printed


def test_a_model_that_is_not_bfloat16_safe_says_so_in_one_line():
    """A model of another package that makes float32 inside (``float()``) met the bfloat16 weights of
    ``--precision bf16`` with a traceback of torch's 'mat1 and mat2 must have the same dtype', exit 1
    (a researcher's walk, a helper's)."""
    from types import SimpleNamespace

    from conftest import random_store

    from ramer.infer import predict, to_inference_precision

    class FloatInside(torch.nn.Module):
        def __init__(self, dim: int, labels: int):
            super().__init__()
            self.head = torch.nn.Linear(dim, labels)

        def forward(self, batch):
            return SimpleNamespace(probs=torch.sigmoid(self.head(batch.features["text"].float().mean(1))))

    store = random_store(n=4)
    model = FloatInside(store.dims["text"], len(store.label_names))
    assert predict(model, store, 2, torch.device("cpu")).scores.shape == (4, len(store.label_names))  # fp32: fine
    with pytest.raises(RamerError, match=r"^model FloatInside: failed with its weights and features in bfloat16 "):
        predict(to_inference_precision(model, "bf16"), store, 2, torch.device("cpu"))
    FloatInside.__module__ = "ramer.models.fake"  # a bug of ramer's own keeps its traceback
    with pytest.raises(RuntimeError, match="must have the same dtype"):
        predict(model, store, 2, torch.device("cpu"))


def test_a_recurrent_model_that_is_not_bfloat16_safe_says_so_in_one_line():
    """An RNN given float32 input under bfloat16 weights raises torch's ValueError ('RNN input dtype
    (torch.float32) does not match weight dtype'), not a RuntimeError: a plugin with a GRU ended
    ``ramer eval --precision bf16`` in a traceback, exit 1."""
    from types import SimpleNamespace

    from conftest import random_store

    from ramer.api import Predictor
    from ramer.config import build_config
    from ramer.infer import predict, to_inference_precision
    from ramer.models import DataSpec

    class FloatGRU(torch.nn.Module):
        def __init__(self, dim: int, labels: int):
            super().__init__()
            self.gru = torch.nn.GRU(dim, 8, batch_first=True)
            self.head = torch.nn.Linear(8, labels)

        def forward(self, batch):
            x = batch.features["text"].float()  # float32 in, whatever the weights
            return SimpleNamespace(probs=torch.sigmoid(self.head(self.gru(x)[1][-1])))

    store = random_store(n=4)
    model = FloatGRU(store.dims["text"], len(store.label_names))
    assert predict(model, store, 2, torch.device("cpu")).scores.shape == (4, len(store.label_names))  # fp32: fine
    said = r"^model FloatGRU: failed with its weights and features in bfloat16 .*does not match weight dtype"
    cast = to_inference_precision(model, "bf16")
    with pytest.raises(RamerError, match=said):
        predict(cast, store, 2, torch.device("cpu"))
    # ramer.load(run).predict(batch) of the Python API says it too (it let torch's ValueError through)
    spec = DataSpec(dict(store.dims), len(store.label_names), tuple(store.label_names))
    predictor = Predictor(cast, build_config(), spec, 0.5, torch.device("cpu"), 1)
    with pytest.raises(RamerError, match=said):
        predictor.predict(store.collate(np.arange(2)))


@pytest.mark.parametrize("model", ["late_fusion", "br"])
def test_the_tables_name_the_labels_no_test_sample_has(tmp_path, capsys, model):
    """A small test split lacks some labels: their F1 is 0 and macro-F1 counts them, which the bench
    report's legend said and the tables of train and eval did not (the oracle scored micro-F1 1.0 and
    macro-F1 0.44 without a word). Both name them now, in the label order."""
    from ramer.config import build_config, resolve_config

    sets = [s for s in TINY if not s.startswith("data.synthetic.n_test")] + ["data.synthetic.n_test=1"]
    sets += ["train.epochs=1"]
    bundle = generate(build_config(resolve_config(None), sets).data.synthetic)
    test = bundle.splits["test"]
    absent = [n for n, k in zip(bundle.label_names, np.asarray(test.labels).sum(0)) if k == 0]
    assert absent  # one sample has a few of the nine labels
    run = tmp_path / "run"
    assert main(["train", "--model", model, "--out", str(run), *sum((["--set", s] for s in sets), [])]) == 0
    train_out = " ".join(capsys.readouterr().out.split())  # the caption wraps to the table's width
    assert main(["eval", str(run)]) == 0
    eval_out = " ".join(capsys.readouterr().out.split())
    said = f"no sample of the split has the label{'s' * (len(absent) > 1)} {', '.join(absent)}: "
    assert said in train_out and said in eval_out, (train_out, eval_out)
