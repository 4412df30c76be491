"""``ramer train`` for the classical baselines and ``ramer bench`` end to end, on tiny data: the run
directory contract, results.json / report.md / plots, the run cache, resuming an interrupted bench,
and the missing-modality protocol."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import for_data
from test_recipe import one_error_line

from ramer import bench as bench_mod
from ramer import checkpoint as ckpt
from ramer.cli import main
from ramer.config import build_config, dump_config, resolve_config, with_values
from ramer.data.synthetic import generate
from ramer.errors import LossNotFinite, RamerError
from ramer.infer import apply_missing, predict
from ramer.metrics import METRIC_KEYS, report
from ramer.models import build_model, set_model
from ramer.models.classical import ClassicalModule
from ramer.models.spaces import Param
from ramer.train.classical import ClassicalRecipe
from ramer.train.recipe import Recipe
from ramer.tune import tune_config

TINY = [
    "data.synthetic.n_train=80",
    "data.synthetic.n_valid=40",
    "data.synthetic.n_test=50",
    "train.epochs=2",
    "train.batch_size=32",
    "model.hidden=16",
    "model.ffn=32",
    "model.heads=2",
]
SETS = [x for s in TINY for x in ("--set", s)]
BENCH = [
    "bench",
    "--models",
    "br,late_fusion",
    "--seeds",
    "1",
    "--missing-rates",
    "0,0.5",
    "--complete",
    "late_fusion",
    "--jobs",
    "2",
    *SETS,
]
PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning")


def lines(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


# ---------------------------------------------------------------------- ramer train --model br|cc|lp
@pytest.mark.parametrize("kind", ["br", "cc", "lp"])
def test_train_classical_writes_the_run_directory(tmp_path, kind):
    run = tmp_path / kind
    assert main(["train", "--model", kind, "--out", str(run), *SETS]) == 0
    for name in ("config.yaml", "model.safetensors", "metrics.jsonl", "test_metrics.json"):
        assert (run / name).is_file(), name
    epoch, final = lines(run)
    assert epoch["epoch"] == 1 and np.isfinite(epoch["train"]["loss"])
    # The deep recipe's log keys; a fit takes no optimiser steps.
    assert epoch["step"] is None and epoch["best_step"] is None and epoch["best_epoch"] == 1
    assert (final["best_epoch"], final["best_step"], final["epochs_run"], final["stopped_early"]) == (1, None, 1, False)
    assert 0 <= epoch["valid"]["overall"]["micro_f1"] <= 1
    test = json.loads((run / "test_metrics.json").read_text())
    assert final["final"] == "test" and final["test"] == test and set(test) == {"overall", "speaker", "nonspeaker"}
    assert set(METRIC_KEYS) <= set(test["overall"]) and len(final["per_label"]) == 9

    # The saved file alone reproduces the test metrics (what `ramer eval` computes).
    state, cfg, spec, threshold, _ = ckpt.read_model_file(run / "model.safetensors")
    assert cfg.model.name == kind and threshold == epoch["threshold"]
    store = generate(cfg.data.synthetic).splits["test"]
    pred = predict(ClassicalModule.from_state(kind, spec, state), store, 64, torch.device("cpu"))
    rep = report(pred.labels, pred.scores, threshold, pred.role)
    assert rep["overall"] == pytest.approx(test["overall"])


def test_eval_reads_a_classical_run(tmp_path, capsys):
    run = tmp_path / "br"
    assert main(["train", "--model", "br", "--out", str(run), *SETS]) == 0
    test = json.loads((run / "test_metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["overall"]["micro_f1"] == pytest.approx(test["overall"]["micro_f1"])


# ---------------------------------------------------------------------- ramer bench
@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    assert main([*BENCH, "--out", str(out)]) == 0
    return out


def test_bench_writes_results_report_and_plots(benched):
    results = json.loads((benched / "results.json").read_text())
    assert [(r["model"], r["inputs"], r["missing_rate"], r["seed"]) for r in results] == [
        ("br", "observed", 0.0, 1),
        ("br", "observed", 0.5, 1),
        ("late_fusion", "observed", 0.0, 1),
        ("late_fusion", "observed", 0.5, 1),
        ("late_fusion", "complete", 0.0, 1),
    ]
    for r in results:
        assert (
            set(r)
            == {
                "model",
                "inputs",
                "seed",
                "missing_rate",
                "metrics",
                "seconds",
                "best_epoch",
                "best_step",
                "epochs_run",
                "stopped_early",
                "params",
            }
            and r["seconds"] > 0
        )
        assert set(r["metrics"]) == {"overall", "speaker", "nonspeaker"}
        assert set(METRIC_KEYS) <= set(r["metrics"]["overall"])
        run = bench_mod.run_dir(benched, bench_mod.run_name(r), r["missing_rate"], r["seed"])
        assert json.loads((run / "test_metrics.json").read_text()) == r["metrics"]
        final = lines(run)[-1]
        assert [r[k] for k in ("best_epoch", "best_step", "epochs_run", "stopped_early")] == [
            final["best_epoch"],
            final["best_step"],
            final["epochs_run"],
            final["stopped_early"],
        ]
        if r["model"] == "late_fusion":  # 80 scenes in batches of 32: 3 steps an epoch, 2 epochs
            assert r["best_step"] == 3 * r["best_epoch"] and r["epochs_run"] == 2 and not r["stopped_early"]

    # The complete-input run: the same scenes with every modality present, at missing rate 0.
    cfg = build_config(bench_mod.run_dir(benched, "late_fusion@complete", 0.0, 1) / "config.yaml")
    assert cfg.data.synthetic.complete and cfg.data.missing_rate == 0.0 and cfg.model.name == "late_fusion"

    text = (benched / "report.md").read_text()
    assert text.startswith("# Benchmark: br, late_fusion\n")  # no RAMer among them: not 'RAMer and its baselines'
    assert "Every test target speaks" not in text  # the embedded benchmark has non-speaker targets
    assert (
        "Command: `ramer bench --models br,late_fusion --seeds 1 --missing-rates 0,0.5 --missing-at all "
        "--complete late_fusion --jobs 2"
    ) in text
    assert "## Missing rate 0" in text and "## Missing rate 0.5" in text
    assert "| oracle (sees the latent state) |" in text and "**" in text
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert f"- Machine: {cores} of {os.cpu_count()} CPUs for this process, torch threads" in text  # not the machine's
    assert "speaker micro-F1" in text and "non-speaker micro-F1" in text
    complete = next(r for r in results if r["inputs"] == "complete")
    for rate in ("0", "0.5"):
        table = text.split(f"## Missing rate {rate}\n")[1].split("##")[0]
        header, rows = table.strip().splitlines()[0], table.strip().splitlines()[2:]
        assert header.split(" | ")[-2] == "steps to best"
        cells = {row.split(" | ")[0].lstrip("| "): row.strip("| ").split(" | ") for row in rows}
        assert list(cells) == [
            "br",
            "late_fusion",
            "late_fusion, complete inputs (reference)",
            "oracle (sees the latent state)",
        ]
        lf = next(
            r
            for r in results
            if r["model"] == "late_fusion" and r["inputs"] == "observed" and f"{r['missing_rate']:g}" == rate
        )
        assert cells["late_fusion"][-2] == str(lf["best_step"]) and cells["br"][-2] == "–"
        br = next(r for r in results if r["model"] == "br" and f"{r['missing_rate']:g}" == rate)
        assert header.split(" | ")[-3] == "params"
        assert (cells["late_fusion"][-3], cells["br"][-3]) == (f"{lf['params']:,}", f"{br['params']:,}")
        ref = cells["late_fusion, complete inputs (reference)"]
        assert ref[1] == f"{complete['metrics']['overall']['micro_f1']:.3f}" and "**" not in "".join(ref)
    # params: a deep model's trainable parameters, a classical model's fitted weights and intercepts
    lf_run = bench_mod.run_dir(benched, "late_fusion", 0.0, 1)
    state, cfg, spec, _, _ = ckpt.read_model_file(lf_run / "model.safetensors")
    assert results[2]["params"] == sum(p.numel() for p in build_model(cfg, spec).parameters()) > 0
    state, _, spec, _, _ = ckpt.read_model_file(bench_mod.run_dir(benched, "br", 0.0, 1) / "model.safetensors")
    assert results[0]["params"] == spec.n_labels * (state["coef"].shape[1] + 1)
    for name in ("micro_f1_vs_missing", "per_label_f1", "speaker_vs_nonspeaker", "training_curves"):
        png = benched / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000, name
        assert f"plots/{name}.png" in text


def test_the_cores_a_bench_counts_are_those_it_may_run_on(monkeypatch):
    """The report's machine line said os.cpu_count() (the machine's) while --jobs took the affinity's
    share (a container's, taskset's): both read usable_cores."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert bench_mod.usable_cores() == 1 and bench_mod.default_jobs() == 1


def test_bench_rerun_reuses_every_run(benched, monkeypatch):
    before = (benched / "results.json").read_text()
    stamps = sorted((p, p.stat().st_mtime_ns) for p in (benched / "runs").rglob("test_metrics.json"))

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(bench_mod, "run_training", no_training)
    assert main([*BENCH, "--out", str(benched)]) == 0
    assert json.loads((benched / "results.json").read_text()) == json.loads(before)
    assert sorted((p, p.stat().st_mtime_ns) for p in (benched / "runs").rglob("test_metrics.json")) == stamps


def spy_training(monkeypatch) -> list[Path]:
    """The run directories ``ramer bench`` trains from now on (in this process)."""
    calls = []
    real_run = bench_mod.run_training

    def spy(cfg, run, **kw):
        calls.append(Path(run))
        return real_run(cfg, run, **kw)

    monkeypatch.setattr(bench_mod, "run_training", spy)
    return calls


CORRUPT = {  # file of a finished run -> what is left of it, and whether the run trains again
    "metrics.jsonl cut mid-line": ("metrics.jsonl", lambda text: text[:-30], True),
    "metrics.jsonl garbage line": ("metrics.jsonl", lambda text: text.replace("\n", "\n{oops\n", 1), True),
    "test_metrics.json": ("test_metrics.json", lambda text: '{"overall": ', True),
    "bench.json": ("bench.json", lambda text: "{", False),  # only the timing: the log's seconds stand in
}


def test_bench_retrains_a_cached_run_made_on_other_data(tmp_path, benched, monkeypatch, capsys):
    """A run whose recorded split fingerprints differ from the data's (the files at data.path were
    made again since) is stale, as one of another config is; the others are read back."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "b"
    shutil.copytree(benched, out)
    run = bench_mod.run_dir(out, "late_fusion", 0.5, 1)
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    recorded = json.loads(meta["data"])
    assert set(recorded) == {"train", "valid", "test"}
    save_file(
        state, str(run / "model.safetensors"), metadata={**meta, "data": json.dumps({**recorded, "valid": "0" * 32})}
    )
    calls = spy_training(monkeypatch)
    capsys.readouterr()
    assert main([*BENCH, "--out", str(out)]) == 0
    assert calls == [run]
    said = f"note: 1 run under {out} was made with other settings or data (the data): it was removed and is trained"
    assert said in capsys.readouterr().err


def test_bench_says_which_finished_runs_another_set_trains_again(tmp_path, capsys):
    """A bench of another --set into the same --out replaced its finished runs without a word (the
    cache is the command's: BENCH.md); one line says how many and what differed."""
    out = tmp_path / "b"
    argv = ["bench", "--models", "br", "--seeds", "1", "--missing-rates", "0", "--complete", "", "--out", str(out)]
    assert main([*argv, *SETS]) == 0
    capsys.readouterr()
    assert main([*argv, *SETS]) == 0
    assert "trained again" not in capsys.readouterr().err  # the same command: read back
    assert main([*argv, *SETS, "--set", "train.epochs=3"]) == 0
    said = f"note: 1 run under {out} was made with other settings or data (train.epochs): it was removed and is"
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("case", ["other settings", "unreadable", "cannot resume"])
def test_bench_keeps_a_users_file_in_a_run_folder_it_would_train_again(tmp_path, benched, monkeypatch, capsys, case):
    """A cached run that the bench trains again (of other settings, one whose files do not read back,
    one that cannot resume) was cleared whole, with a user's own file in its folder (notes, a plot);
    the bench now stops naming the file, and removes nothing."""
    out = tmp_path / "b"
    shutil.copytree(benched, out)
    run = bench_mod.run_dir(out, "late_fusion", 0.5, 1)
    (run / "notes.txt").write_text("mine")
    argv = [*BENCH, "--out", str(out)]
    if case == "other settings":
        argv += ["--set", "train.epochs=3"]
    elif case == "unreadable":
        (run / "test_metrics.json").write_text('{"overall": ')
    else:  # unfinished, with a training state that does not read back
        (run / "test_metrics.json").unlink()
        (run / "train_state.pt").write_bytes(b"not a state")
    before = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    why = {
        "other settings": "a run this bench trains again (unfinished, or of other settings or data)",
        "unreadable": "a cached run that does not read back",
        "cannot resume": "a run that cannot resume",
    }[case]
    assert f"{run}: {why}, and files a run does not write (notes.txt); move them, or give another --out" in err, err
    assert sorted(p.name for p in run.iterdir()) == before and (run / "notes.txt").read_text() == "mine"


def test_bench_cache_knows_data_by_its_fingerprints_not_by_how_its_path_is_spelled(tmp_path, monkeypatch, capsys):
    """``--data ds``, then ``./ds``, the absolute path and ``ds/``: one dataset, every run reused.
    Other data made at the same path: its fingerprints differ, every run trains again."""
    monkeypatch.chdir(tmp_path)
    sizes = ["--set", "n_train=40", "--set", "n_valid=20", "--set", "n_test=20"]
    assert main(["data", "synth", "--out", "ds", *sizes]) == 0
    argv = ["bench", "--models", "br,late_fusion", "--seeds", "1", "--missing-rates", "0", "--complete", ""]
    argv += ["--jobs", "1", *for_data(SETS), "--out", "b"]
    assert main([*argv, "--data", "ds"]) == 0
    calls = spy_training(monkeypatch)
    capsys.readouterr()
    for spelling in ("./ds", str(tmp_path / "ds"), "ds/"):
        assert main([*argv, "--data", spelling]) == 0
        assert "(0 trained, 0 resumed, 2 cached" in capsys.readouterr().err, spelling
    assert calls == []
    assert main(["data", "synth", "--out", "ds", *sizes, "--set", "seed=7"]) == 0
    capsys.readouterr()
    assert main([*argv, "--data", "./ds"]) == 0
    assert "(2 trained, 0 resumed, 0 cached" in capsys.readouterr().err
    assert sorted(calls) == sorted(bench_mod.run_dir(Path("b"), m, 0.0, 1) for m in ("br", "late_fusion"))


def test_an_oracle_the_tables_cannot_show_is_left_out_not_a_crash_after_the_runs(tmp_path, monkeypatch, capsys):
    """The oracle ceiling of a native folder's meta.json is a reference row: in a form no table can
    show (edited by hand) the bench still writes its report and eval its table, without that row.
    Before: a traceback after every run had trained, and again on each rerun."""
    monkeypatch.chdir(tmp_path)
    sizes = ["--set", "n_train=40", "--set", "n_valid=20", "--set", "n_test=20"]
    assert main(["data", "synth", "--out", "ds", *sizes]) == 0
    meta_path = tmp_path / "ds" / "meta.json"
    meta = json.loads(meta_path.read_text())
    argv = ["bench", "--data", "ds", "--models", "br", "--seeds", "1", "--missing-rates", "0", "--complete", ""]
    argv += ["--jobs", "1", *for_data(SETS), "--out", "b"]
    run = bench_mod.run_dir(Path("b"), "br", 0.0, 1)
    good = meta["info"]["oracle"]["test"]
    for oracle, shown in [
        (meta["info"]["oracle"], True),
        ("n/a", False),
        ({"test": "n/a"}, False),
        ({"test": {**good, "overall": "n/a"}}, False),
        ({"test": {**good, "speaker": {**good["speaker"], "micro_f1": None}}}, False),
    ]:
        meta_path.write_text(json.dumps({**meta, "info": {**meta["info"], "oracle": oracle}}))
        capsys.readouterr()
        assert main(argv) == 0, oracle
        assert (bench_mod.ORACLE_ROW in (tmp_path / "b" / "report.md").read_text()) is shown, oracle
        assert main(["eval", str(run)]) == 0, oracle
        assert (bench_mod.ORACLE_ROW in capsys.readouterr().out) is shown, oracle


@pytest.mark.parametrize("case", CORRUPT)
def test_bench_retrains_a_cached_run_with_a_corrupt_file(tmp_path, benched, monkeypatch, capsys, case):
    out = tmp_path / "b"
    shutil.copytree(benched, out)
    before = json.loads((out / "results.json").read_text())
    name, corrupt, retrained = CORRUPT[case]
    run = bench_mod.run_dir(out, "br", 0.5, 1)
    (run / name).write_text(corrupt((run / name).read_text()))
    calls = spy_training(monkeypatch)
    capsys.readouterr()
    assert main([*BENCH, "--out", str(out)]) == 0
    assert calls == ([run] if retrained else [])  # that run alone, trained again, or none
    said = f"cached run unusable, training it again: {run / name}:" in capsys.readouterr().err
    assert said == retrained
    after = json.loads((out / "results.json").read_text())
    keys = [(r["model"], r["inputs"], r["missing_rate"], r["seed"]) for r in after]
    assert keys == [(r["model"], r["inputs"], r["missing_rate"], r["seed"]) for r in before]
    assert [r["metrics"] for r in after] == [r["metrics"] for r in before]  # the fit is deterministic


def refuse_to_open(monkeypatch, path: Path) -> None:
    """Opening ``path`` raises PermissionError, as for a file without read permission (the tests may
    run as root, whom file modes do not stop)."""
    import builtins
    import io

    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


@pytest.mark.parametrize(
    "name", ["config.yaml", "test_metrics.json", "metrics.jsonl", "model.safetensors", "train_state.pt", "results.json"]
)
def test_bench_stops_on_a_file_it_may_not_read_and_removes_nothing(tmp_path, benched, monkeypatch, capsys, name):
    """A run file the system will not read says nothing of the run: the bench stops with one line
    naming it, and neither that run nor results.json is removed or redone (``train_state.pt``: a
    stopped run's, read on resume)."""
    out = tmp_path / "b"
    shutil.copytree(benched, out)
    run = bench_mod.run_dir(out, "late_fusion", 0.5, 1)
    if name == "train_state.pt":
        (run / "test_metrics.json").unlink()  # as if stopped before its test
    path = out / name if name == "results.json" else run / name
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = spy_training(monkeypatch)
    refuse_to_open(monkeypatch, path)
    capsys.readouterr()
    assert main([*BENCH, "--out", str(out)]) == 2
    assert f"{path}: unreadable" in capsys.readouterr().err
    assert calls == ([run] if name == "train_state.pt" else [])  # the resume that met the file
    monkeypatch.undo()
    if name == "train_state.pt":  # the record of the unfinished run is stale, and dropped
        del files[out / "results.json"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p in files} == files


def test_bench_says_why_a_stopped_run_cannot_resume(tmp_path, benched, monkeypatch, capsys):
    """A run stopped mid-training whose train_state.pt no longer reads back: the bench says so, with
    the reason, and trains it again from the start."""
    out = tmp_path / "b"
    shutil.copytree(benched, out)
    run = bench_mod.run_dir(out, "late_fusion", 0.5, 1)
    (run / "test_metrics.json").unlink()  # as if stopped before its test
    (run / "train_state.pt").write_bytes(b"junk")
    calls = spy_training(monkeypatch)
    capsys.readouterr()
    assert main([*BENCH, "--out", str(out)]) == 0
    assert calls == [run, run]  # the resume, then the fresh start
    err = capsys.readouterr().err
    assert f"cannot resume {run} ({run / 'train_state.pt'}: not a readable training state" in err
    assert "starting it again" in err


def test_results_json_keeps_its_records_when_a_run_fails(tmp_path, benched, monkeypatch):
    """A bench of br alone over a folder whose results.json also holds late_fusion's runs; one br run
    must train again and fails. The records of the runs this bench does not plan, and of the br run
    it read, stay; the failing run's record, of a folder that is gone, does not."""
    out = tmp_path / "b"
    shutil.copytree(benched, out)
    before = json.loads((out / "results.json").read_text())
    shutil.rmtree(bench_mod.run_dir(out, "br", 0.5, 1))

    def diverges(cfg, run, **kw):
        raise LossNotFinite(f"{run}: the loss became NaN in epoch 1")

    monkeypatch.setattr(bench_mod, "run_training", diverges)
    argv = [*BENCH, "--out", str(out)]
    argv[argv.index("br,late_fusion")] = "br"
    argv[argv.index("late_fusion")] = ""  # --complete ''
    assert main(argv) == 2
    after = json.loads((out / "results.json").read_text())
    gone = ("br", "observed", 0.5, 1)
    key = lambda r: (r["model"], r["inputs"], r["missing_rate"], r["seed"])  # noqa: E731
    assert sorted(map(key, after)) == sorted(key(r) for r in before if key(r) != gone)
    assert len(after) == len(before) - 1 == 4


def test_interrupted_bench_resumes_where_it_stopped(tmp_path, benched, monkeypatch):
    out = tmp_path / "b"
    argv = [
        "bench",
        "--models",
        "br,late_fusion",
        "--seeds",
        "1",
        "--missing-rates",
        "0",
        "--complete",
        "late_fusion",
        "--jobs",
        "1",
        *SETS,
        "--out",
        str(out),
    ]
    # A partial classical run (no test metrics) must be started again, not trusted.
    stale = bench_mod.run_dir(out, "br", 0.0, 1)
    stale.mkdir(parents=True)
    (stale / "config.yaml").write_text("stale: true\n")

    real_epoch = Recipe.train_epoch

    def killed_in_epoch_2(only_complete):
        def train_epoch(self, epoch, bar):
            if epoch == 2 and (self.cfg.data.synthetic.complete or not only_complete):
                raise KeyboardInterrupt
            return real_epoch(self, epoch, bar)

        return train_epoch

    monkeypatch.setattr(Recipe, "train_epoch", killed_in_epoch_2(only_complete=False))
    assert main(argv) == 130
    lf = bench_mod.run_dir(out, "late_fusion", 0.0, 1)
    assert (lf / "train_state.pt").exists() and not (lf / "test_metrics.json").exists()
    assert (bench_mod.run_dir(out, "br", 0.0, 1) / "test_metrics.json").exists()

    calls = []
    real_run = bench_mod.run_training

    def spy(cfg, run, **kw):
        calls.append((cfg.model.name, cfg.data.synthetic.complete, kw.get("resume")))
        return real_run(cfg, run, **kw)

    monkeypatch.setattr(bench_mod, "run_training", spy)
    # Now the complete-input run is killed in its epoch 2 (the other run resumes and ends).
    monkeypatch.setattr(Recipe, "train_epoch", killed_in_epoch_2(only_complete=True))
    assert main(argv) == 130
    assert calls == [("late_fusion", False, True), ("late_fusion", True, False)]
    lf_complete = bench_mod.run_dir(out, "late_fusion@complete", 0.0, 1)
    assert (lf_complete / "train_state.pt").exists() and not (lf_complete / "test_metrics.json").exists()

    monkeypatch.setattr(Recipe, "train_epoch", real_epoch)
    calls.clear()
    assert main(argv) == 0
    assert calls == [("late_fusion", True, True)]
    # The resumed runs reproduce the uninterrupted ones (the same runs of the first bench, which ran
    # in worker processes: parallel and sequential benches agree too).
    for name, run in (("late_fusion", lf), ("late_fusion@complete", lf_complete)):
        whole = bench_mod.run_dir(benched, name, 0.0, 1)
        test = [json.loads((r / "test_metrics.json").read_text()) for r in (run, whole)]
        assert test[0] == test[1], name
        losses = [[ln["train"]["loss"] for ln in lines(r) if "epoch" in ln] for r in (run, whole)]
        assert len(losses[0]) == 2 and losses[0] == losses[1], name
    results = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["inputs"]) for r in results] == [
        ("br", "observed"),
        ("late_fusion", "observed"),
        ("late_fusion", "complete"),
    ]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while listed
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_sigterm_to_the_bench_stops_its_workers(tmp_path):
    # `kill PID` reaches the bench process alone (not its process group, as Ctrl-C does); its
    # worker processes must not go on training without it.
    out = tmp_path / "b"
    argv = ["bench", "--models", "late_fusion", "--seeds", "2", "--missing-rates", "0", "--complete", ""]
    argv += ["--jobs", "2", *SETS, "--set", "train.epochs=1000", "--set", "train.patience=1000", "--out", str(out)]
    err = tmp_path / "stderr.txt"
    with err.open("wb") as sink:
        bench = subprocess.Popen([sys.executable, "-m", "ramer", *argv], stdout=subprocess.DEVNULL, stderr=sink)
    workers = []
    try:
        logs = [bench_mod.run_dir(out, "late_fusion", 0.0, seed) / "metrics.jsonl" for seed in (1, 2)]
        deadline = time.monotonic() + 240
        while not all(log.is_file() and log.stat().st_size for log in logs):  # both workers are training
            assert bench.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the workers did not start training"
            time.sleep(0.5)
        workers += [pid for pid in _children(bench.pid) if _alive(pid)]
        assert len(workers) >= 2
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=120) == 130
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the bench"
    finally:
        if bench.poll() is None:
            bench.kill()
        for pid in {*workers, *_children(bench.pid)}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_config_files_own_values_are_kept_over_the_bench_and_tune_defaults(tmp_path):
    """A user's --config file that sets a key of the bench's defaults (the data's size, the epochs,
    the patience) keeps its value: the bench trained 2000 scenes for 40 epochs at patience 5 over a
    file asking for 200 scenes, 2 epochs and patience 1, and tune trained at patience 5, where the
    docs name only the keys --models, --seeds and --missing-rates decide. A key the file does not
    set, and a bundled config, get the bench's defaults; --quick's smoke settings apply over a file."""
    mine = tmp_path / "my.yaml"
    mine.write_text("data:\n  synthetic:\n    n_train: 200\ntrain:\n  epochs: 2\n  patience: 1\n", encoding="utf-8")
    base = bench_mod.base_config(bench_mod.resolve_settings(config=mine))
    assert (base.data.synthetic.n_train, base.train.epochs, base.train.patience) == (200, 2, 1)
    assert (base.data.synthetic.n_valid, base.train.threads) == (300, 1)  # not in the file: the bench's
    settings = bench_mod.resolve_settings(config=mine)
    assert "train.epochs=40" not in settings.base_sets and "data.synthetic.n_valid=300" in settings.base_sets
    bundled = bench_mod.base_config(bench_mod.resolve_settings(config=resolve_config("synthetic")))
    assert (bundled.data.synthetic.n_train, bundled.train.epochs, bundled.train.patience) == (2000, 40, 5)
    quick = bench_mod.base_config(bench_mod.resolve_settings(config=mine, quick=True))
    assert (quick.data.synthetic.n_train, quick.train.epochs) == (500, 3)
    assert tune_config("late_fusion", mine).train.patience == 1
    assert tune_config("late_fusion", resolve_config("synthetic")).train.patience == 5


def test_a_classical_runs_seconds_leave_out_importing_scikit_learn(tmp_path, monkeypatch):
    """The first classical run of a bench process imports scikit-learn (``ramer.train`` imports it
    for those runs only), most of a second that its s/run counted (br 0.9 s against 0.1 s in one
    bench): the recipe is imported before the clock starts."""
    monkeypatch.delitem(sys.modules, "ramer.train.classical")
    seen = []

    def run_training(cfg, run, **kwargs):
        seen.append("ramer.train.classical" in sys.modules)
        raise RamerError("stop here")

    monkeypatch.setattr(bench_mod, "run_training", run_training)
    cfg = bench_mod.run_config(bench_mod.resolve_settings(overrides=TINY).base, "br", 1, 0.0)
    with pytest.raises(RamerError, match="stop here"):
        bench_mod.execute(cfg, tmp_path / "run", None, None, "fresh")
    assert seen == [True]


def test_tune_trials_without_a_deep_model_is_refused():
    """``--models br --complete '' --tune-trials 2``: 'tuning 0 models', then a report on tuning that never ran
    ('lr tuned per model', an empty table of tuned settings); refused as --tuned is."""
    with pytest.raises(RamerError, match=r"--tune-trials: --models br,cc has no deep model to tune"):
        bench_mod.resolve_settings(models="br,cc", overrides=TINY, tune_trials=2, complete="")
    assert bench_mod.resolve_settings(models="br,late_fusion", overrides=TINY, tune_trials=2).tune_trials == 2


def test_missing_at_is_all_or_test_in_the_python_api_too():
    """The CLI's --missing-at takes all or test; resolve_settings took any text, and base_config then
    failed with pydantic's ValidationError traceback."""
    assert bench_mod.resolve_settings(overrides=TINY, missing_at="test").missing_at == "test"
    with pytest.raises(RamerError, match="--missing-at must be all or test, got 'tests'"):
        bench_mod.base_config(bench_mod.resolve_settings(overrides=TINY, missing_at="tests"))


def test_settings_of_ramers_own_or_of_no_model_are_refused_before_any_run(tmp_path, capsys):
    """``--set model.options.NAME`` for one of ramer's models (or a name no model has) was refused only
    when the bench reached that model's run, after the others were reused or trained."""
    for name, said in (("late_fusion", "'late_fusion' is ramer's own model"), ("nope", "no model 'nope'")):
        argv = ["bench", "--models", "br,late_fusion", "--seeds", "1", "--missing-rates", "0", "--complete", ""]
        argv += ["--set", f"model.options.{name}.x=1", "--out", str(tmp_path / "b")]
        assert main(argv) == 2
        assert f"model.options.{name}: {said}" in capsys.readouterr().err
        assert not (tmp_path / "b").exists()


def test_complete_option(tmp_path):
    """--complete: ramer by default on the embedded benchmark, none on other data, '' for none;
    a list on other data is an error."""
    assert bench_mod.resolve_settings(overrides=TINY).complete == ["ramer"]
    assert bench_mod.resolve_settings(overrides=TINY, complete="").complete == []
    assert bench_mod.resolve_settings(overrides=TINY, complete="br,ramer").complete == ["br", "ramer"]
    assert bench_mod.resolve_settings(overrides=for_data(TINY), data=str(tmp_path)).complete == []
    with pytest.raises(RamerError, match="--complete: complete inputs exist only for the embedded benchmark"):
        bench_mod.resolve_settings(overrides=for_data(TINY), data=str(tmp_path), complete="ramer")
    with pytest.raises(RamerError, match="--complete: unknown nope"):
        bench_mod.resolve_settings(overrides=TINY, complete="nope")
    assert main(["bench", "--data", str(tmp_path), "--complete", "ramer", "--out", str(tmp_path / "b")]) == 2
    # A complete run: the model's run at missing rate 0 on complete inputs, whatever the rate table.
    settings = bench_mod.resolve_settings(overrides=TINY)
    cfg = bench_mod.plan_config(settings.base, "ramer-no_shuffle@complete", 3, 0.0)
    assert (cfg.model.name, cfg.model.ablations, cfg.train.seed) == ("ramer", ["no_shuffle"], 3)
    assert cfg.data.synthetic.complete and cfg.data.missing_rate == 0.0
    assert not bench_mod.plan_config(settings.base, "ramer", 3, 0.3).data.synthetic.complete


def test_bench_defaults_stop_early():
    """The default bench trains to convergence (patience under a cap); --quick keeps a small cap."""
    base = bench_mod.resolve_settings().base
    assert (base.train.epochs, base.train.patience) == (40, 5)
    quick = bench_mod.resolve_settings(quick=True).base
    assert (quick.train.epochs, quick.train.patience) == (3, 1)
    mine = bench_mod.resolve_settings(overrides=["train.patience=null", "train.epochs=7"]).base
    assert (mine.train.epochs, mine.train.patience) == (7, None)  # --set overrides the defaults


@pytest.mark.parametrize("missing_at", ["all", "test"])
def test_missing_rate_hides_modalities(tmp_path, missing_at):
    settings = bench_mod.resolve_settings(
        out=str(tmp_path), models="br,late_fusion", seeds=1, rates="0,0.5", missing_at=missing_at, overrides=TINY
    )
    bundle = generate(settings.base.data.synthetic)
    for model in settings.models:
        cfg = bench_mod.run_config(settings.base, model, 1, 0.5)
        assert (cfg.data.missing_rate, cfg.data.missing_at) == (0.5, missing_at)
        recipe = (ClassicalRecipe if model == "br" else Recipe)(cfg, tmp_path / model, bundle=bundle)
        recipe.setup()
        for split, store in bundle.splits.items():
            kept = recipe.splits[split].present.sum() / store.present.sum()
            if missing_at == "all" or split == "test":
                assert 0.4 < kept < 0.6, (model, split, kept)
            else:
                assert kept == 1.0, (model, split)
    clean = apply_missing(bundle, bench_mod.run_config(settings.base, "br", 1, 0.0))
    assert all(clean[k] is bundle.splits[k] for k in bundle.splits)


def test_bench_rejects_unknown_models_and_rates():
    assert main(["bench", "--models", "br,nope"]) == 2
    assert main(["bench", "--models", "ramer-no_such_thing"]) == 2
    assert main(["bench", "--missing-rates", "0,1.5"]) == 2


def test_a_setting_no_run_trains_with_is_refused_before_any_run(tmp_path, capsys):
    """br fitted first, then late_fusion stopped at its setup: the check is made for every deep model
    before the bench loads its data."""
    out = tmp_path / "b"
    argv = ["bench", "--models", "br,late_fusion", "--seeds", "1", "--missing-rates", "0", "--complete", ""]
    assert main([*argv, *SETS, "--set", "train.weight_decay=1000", "--out", str(out)]) == 2
    assert "x train.weight_decay 1000 is" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_rates_that_would_share_a_run_folder_are_refused(capsys):
    """0.3 and 0.3000001 are two rates but one folder name (missing-0.3) and one report heading: their
    runs would delete each other. An exact duplicate (0,0; 0,-0) is refused too: a typo, taken once
    without a word it ran fewer rates than the command names."""
    with pytest.raises(RamerError, match=r"0\.3 and 0\.3000001 would share the run folders missing-0\.3"):
        bench_mod.parse_rates("0.3,0.3000001")
    assert main(["bench", "--missing-rates", "0,0.3000001,0.3", "--out", "never"]) == 2
    assert "would share the run folders missing-0.3" in capsys.readouterr().err
    for text, twice in (("0,0", "0"), ("0.3,0,0.3", "0.3"), ("0,-0", "0"), ("0.5,0.50", "0.5")):
        with pytest.raises(RamerError) as refused:
            bench_mod.parse_rates(text)
        assert str(refused.value) == f"--missing-rates: {twice} given twice in '{text}'; give each rate once"
    assert bench_mod.parse_rates("0.3,0,0.6") == [0.0, 0.3, 0.6]
    assert bench_mod.parse_rates("0.3,0.30001") == [0.3, 0.30001]


def test_a_model_named_twice_is_refused(tmp_path, capsys):
    """--models br,br (and --complete ramer,ramer) named a model twice: it ran once without a word.
    Groups may overlap (all and ablations both hold ramer; all,ramer): taken once."""
    out = tmp_path / "b"
    assert main(["bench", "--models", "br,br", "--seeds", "1", "--missing-rates", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and "--models: br named twice; name each once" in err and not out.exists()
    for text in ("br, late_fusion,br", "all,all"):
        with pytest.raises(RamerError, match=r"^--models: (br|all) named twice; name each once$"):
            bench_mod.parse_models(text)
    with pytest.raises(RamerError, match=r"^--complete: ramer named twice"):
        bench_mod.parse_models("ramer,ramer", "--complete")
    assert bench_mod.parse_models("all,ablations") == [*bench_mod.GROUPS["all"], *bench_mod.GROUPS["ablations"][1:]]
    assert bench_mod.parse_models("br,,late_fusion") == ["br", "late_fusion"]


def test_seeds_have_an_upper_bound(tmp_path, capsys):
    """--seeds N makes a list of N seeds and of the planned runs before any run: 10**30 filled memory
    and wrote nothing. At most MAX_SEEDS, said in one line; MAX_SEEDS itself is taken."""
    bound = bench_mod.MAX_SEEDS
    message = rf"^--seeds must be at most {bound} \(each seed trains every model at every missing rate\), got "
    with pytest.raises(RamerError, match=message + str(bound + 1)):
        bench_mod.resolve_settings(models="br", seeds=bound + 1, rates="0", overrides=TINY)
    assert len(bench_mod.resolve_settings(models="br", seeds=bound, rates="0", overrides=TINY).seeds) == bound
    out = tmp_path / "b"
    huge = str(10**30)
    assert main(["bench", "--models", "br", "--seeds", huge, "--missing-rates", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and f"got {huge}" in err and not out.exists()


@pytest.mark.parametrize(
    "assignment, option",
    [
        ("data.missing_at=test", "--missing-at"),
        ("model.name=br", "--models"),
        ("train.seed=7", "--seeds"),
        ("data.missing_rate=0.3", "--missing-rates"),
        ("model.ablations=[no_shuffle]", "--models"),
    ],
)
def test_a_set_of_what_the_bench_sets_is_refused(assignment, option):
    """The bench sets these for every run from its own options: a --set of one would be replaced
    silently, or (model.ablations) added to every RAMer run: ``--models ramer,ramer-no_shuffle`` ran
    one model twice under two names, and the report's ablation table compared it with itself."""
    key = assignment.split("=")[0]
    with pytest.raises(RamerError, match=f"--set {key}: the bench sets it for every run; give {option}"):
        bench_mod.resolve_settings(overrides=[*TINY, assignment])
    assert bench_mod.resolve_settings(overrides=TINY, missing_at="test").base.data.missing_at == "test"


def test_quick_report_states_the_seeds_and_rates_it_ran(tmp_path):
    out = tmp_path / "b"
    argv = ["bench", "--quick", "--models", "br", "--seeds", "2", "--missing-rates", "0,0.2,0.4", "--complete", ""]
    assert main([*argv, "--jobs", "1", *SETS, "--out", str(out)]) == 0
    mode = next(ln for ln in (out / "report.md").read_text().splitlines() if ln.startswith("- Mode: **quick**"))
    assert "; 2 seeds; missing rates 0, 0.2 and 0.4)" in mode


def test_presets_set_ablations():
    settings = bench_mod.resolve_settings(models="ablations", overrides=TINY)
    assert settings.models[0] == "ramer" and "ramer-no_shuffle" in settings.models
    cfg = bench_mod.run_config(settings.base, "ramer-no_shuffle", 2, 0.3)
    assert (cfg.model.name, cfg.model.ablations, cfg.train.seed, cfg.data.missing_rate) == (
        "ramer",
        ["no_shuffle"],
        2,
        0.3,
    )
    set_model(cfg, "ramer-no_stack")  # what `ramer train --model ramer-no_stack` does
    assert cfg.model.ablations == ["no_shuffle", "no_stack"]
    set_model(cfg, "mult")
    assert cfg.model.name == "mult"


def test_ablation_table_pairs_each_preset_with_full_ramer_by_seed():
    """The report's paired differences: preset minus full RAMer on the same seed, mean ± std over the
    seeds both finished; a seed only one of them finished is left out."""

    def record(model: str, seed: int, f1: float) -> dict:
        part = {"micro_f1": f1, "macro_f1": f1 - 0.01, "acc": f1, "hamming_loss": 0.2, "n": 10}
        return {"model": model, "inputs": "observed", "seed": seed, "missing_rate": 0.6,
                "metrics": {"overall": part, "speaker": part, "nonspeaker": part}}  # fmt: skip

    results = [record("ramer", s, 0.50 + 0.01 * s) for s in (1, 2)]
    results += [record("ramer-no_stack", 1, 0.52), record("ramer-no_stack", 2, 0.55), record("ramer-no_stack", 3, 0.9)]
    lines = bench_mod.ablation_table(results, 0.6)
    assert lines[0].startswith("| preset − ramer | seeds | Δ micro-F1 |")
    row = lines[2].split(" | ")
    assert row[0] == "| ramer-no_stack" and row[1] == "2"  # seed 3 has no full RAMer to pair with
    assert row[2] == "+0.020 ± 0.014"  # differences 0.01 and 0.03
    assert bench_mod.ablation_table(results, 0.0) == [] and bench_mod.ablation_table(results[:2], 0.6) == []


def test_cache_reads_a_stored_config_with_todays_defaults(tmp_path):
    """A run made before an option existed is still the same run while the option is at its default;
    a different value of any option makes it stale (and it is trained again)."""
    cfg = build_config(overrides=["train.epochs=1"])
    run = tmp_path / "run"
    run.mkdir()
    stored = cfg.model_dump(mode="json")
    del stored["model"]["shuffle"], stored["loss"]["w_diff"]  # keys added after the run was made
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    (run / "test_metrics.json").write_text("{}")
    assert bench_mod.cache_state(run, cfg) == "done"
    other = build_config(overrides=["train.epochs=1", "model.shuffle=pile"])
    assert bench_mod.cache_state(run, other) == "fresh" and not run.exists()


def test_a_cached_run_is_the_same_run_with_recompute_turned_on(tmp_path):
    """train.recompute trains the same to the bit: a bench run again with it on (after running out of
    memory) keeps its finished runs, where it removed and trained every one again."""
    cfg = build_config(overrides=["train.epochs=1"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (run / "test_metrics.json").write_text("{}")
    assert bench_mod.cache_state(run, with_values(cfg, {"train.recompute": True})) == "done"
    assert bench_mod.cache_state(run, with_values(cfg, {"train.recompute": True, "train.epochs": 2})) == "fresh"


def test_cache_reads_a_stored_config_as_config_files_are_read(tmp_path):
    """A cached run's config.yaml is read without YAML aliases (ramer never writes them; nested ones
    expand a few hundred bytes into billions of values): one is a config that does not read back,
    so the run is trained again, where yaml.safe_load expanded it and took the run as done."""
    cfg = build_config(overrides=["train.epochs=1"])
    run = tmp_path / "run"
    run.mkdir()
    text = yaml.safe_dump(cfg.model_dump(mode="json"))
    assert "  epochs: 1\n" in text and "  seed: 1\n" in text
    (run / "config.yaml").write_text(
        text.replace("  epochs: 1\n", "  epochs: &one 1\n").replace("  seed: 1\n", "  seed: *one\n")
    )
    (run / "test_metrics.json").write_text("{}")
    assert bench_mod.cache_state(run, cfg) == "fresh" and not run.exists()


# ---------------------------------------------------------------------- tuned settings
def test_bench_tuned_runs_each_deep_model_with_its_tuned_values(tmp_path, capsys):
    """--tuned DIR: late_fusion's run takes the searched keys of DIR/late_fusion/best.yaml; every other
    setting is the bench's; a key the user --sets keeps the user's value; the report lists the values.
    A deep model without a tuned config is an error naming the missing file; br needs none."""
    tuned = build_config(
        overrides=[*TINY, "model.name=late_fusion", "train.lr=0.00042", "model.dropout=0.25"]
        + ["train.weight_decay=0.003", "train.epochs=7", "data.synthetic.n_train=99", "data.synthetic.n_test=77"]
    )
    (tmp_path / "tuned" / "late_fusion").mkdir(parents=True)
    (tmp_path / "tuned" / "late_fusion" / "best.yaml").write_text(dump_config(tuned))
    out = tmp_path / "b"
    argv = ["bench", "--models", "br,late_fusion", "--seeds", "1", "--missing-rates", "0", "--complete", ""]
    argv += ["--jobs", "1", "--tuned", str(tmp_path / "tuned"), *SETS, "--set", "train.weight_decay=0.02"]
    assert main([*argv, "--out", str(out)]) == 0
    cfg = build_config(bench_mod.run_dir(out, "late_fusion", 0.0, 1) / "config.yaml")
    assert (cfg.train.lr, cfg.model.dropout) == (0.00042, 0.25)  # tuned
    assert (cfg.train.weight_decay, cfg.model.hidden) == (0.02, 16)  # --set wins
    assert (cfg.train.epochs, cfg.data.synthetic.n_train, cfg.train.patience) == (2, 80, 5)  # the bench's
    assert build_config(bench_mod.run_dir(out, "br", 0.0, 1) / "config.yaml").train.lr == 0.002  # untouched
    text = (out / "report.md").read_text()
    assert f"--tuned {tmp_path / 'tuned'}" in text and "## Tuned settings" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| late_fusion | ?"))
    # weight_decay and hidden: fixed by --set; the layers: searched for late fusion, the tuned file's values
    assert row.endswith("| lr=0.00042, dropout=0.25, layers.text=2, layers.audio=1, layers.visual=1 |")
    # no tune.json: its trial count is unknown, not a different one (the report said 'tuned with
    # different numbers of trials (late_fusion ?)' of its one model)
    assert "different numbers of trials" not in text
    assert "The trials of late_fusion are not known (no `tune.json` beside `best.yaml`)." in text
    # a study of other data and another budget was taken without a word (BENCH.md's own example does it)
    otherwise = (
        f"late_fusion's study ({tmp_path / 'tuned' / 'late_fusion'}) ran with other settings than this bench's: "
        "data.synthetic.n_train 99 (here 80), train.epochs 7 (here 2), train.patience null (here 5); its values "
        "were chosen for those"
    )
    assert f"note: --tuned: {otherwise}" in capsys.readouterr().err
    assert f"**--tuned:** {otherwise}" in text
    # a key its tune kept at a --set value is in best.yaml, but the search did not choose it: the
    # report called it chosen, and the lr 'tuned per model'
    summary = {"finished": 3, "pruned": 0, "best": {"value": 0.5, "trial": 1, "best_step": 4}, "fixed": ["train.lr"]}
    summary["budget"] = 5  # a study killed (or timed out) after 3 of its 5 trials was taken as finished
    (tmp_path / "tuned" / "late_fusion" / "tune.json").write_text(json.dumps(summary))
    assert main([*argv, "--out", str(out)]) == 0  # the runs are kept; the report is written again
    text = (out / "report.md").read_text()
    assert "late_fusion's study" in text and "stopped at 3 of its 5 trials (killed or timed out" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| late_fusion | 3 (0 pruned)"))
    assert row.endswith(
        "| dropout=0.25, layers.text=2, layers.audio=1, layers.visual=1; kept at its tune's --set: lr=0.00042 |"
    )
    assert "(lr of each model's tuned config)" in text and "lr tuned per model" not in text
    assert "or that its tune kept at a `--set` value (train.lr)" in text and "not known" not in text

    with pytest.raises(RamerError, match=r"no tuned config for mult: .*tuned/mult/best.yaml not found"):
        bench_mod.resolve_settings(models="late_fusion,mult", tuned=str(tmp_path / "tuned"), overrides=TINY)
    with pytest.raises(RamerError, match="give one of them"):
        bench_mod.resolve_settings(tuned=str(tmp_path / "tuned"), tune_trials=2, overrides=TINY)
    # A tune.json beside best.yaml is read before any run trains; one ramer tune did not write is an error.
    for text in ("{", "[]", '{"finished": 2}'):
        (tmp_path / "tuned" / "late_fusion" / "tune.json").write_text(text)
        with pytest.raises(RamerError, match=r"tuned/late_fusion/tune.json: not"):
            bench_mod.resolve_settings(models="late_fusion", tuned=str(tmp_path / "tuned"), overrides=TINY)


@pytest.mark.slow
def test_bench_tune_trials_tunes_every_deep_model_first(tmp_path):
    """--tune-trials 2: late_fusion (not br, which fits once) is tuned with 2 trials into OUT/tune,
    then benched with the best trial's values; the report states the budget and the values."""
    optuna = pytest.importorskip("optuna")
    out = tmp_path / "b"
    argv = ["bench", "--models", "br,late_fusion", "--seeds", "1", "--missing-rates", "0", "--complete", ""]
    assert main([*argv, "--jobs", "1", "--tune-trials", "2", *SETS, "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "tune").iterdir()) == ["late_fusion"]
    db = out / "tune" / "late_fusion" / "study.db"
    study = optuna.load_study(study_name="late_fusion", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    cfg = build_config(bench_mod.run_dir(out, "late_fusion", 0.0, 1) / "config.yaml")
    assert {key: Param(key).value(cfg) for key in study.best_params} == study.best_params  # nested keys too
    text = (out / "report.md").read_text()
    assert "every deep model tuned first with the same budget, 2 trials" in text
    assert "| late_fusion | 2 (0 pruned) |" in text and "**The studies hold" not in text
    # Again with --tune-trials 1: the studies of 2 trials are reused; the report says what they hold.
    assert main([*argv, "--jobs", "1", "--tune-trials", "1", *SETS, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "every deep model tuned first with the same budget, 2 trials" in text
    assert "**The studies hold 2 trials each, not the 1 of --tune-trials 1**" in text


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"], ids=["in-process", "worker-processes"])
def test_bench_trial_seeds_scores_each_trial_by_the_mean_of_its_seeds(tmp_path, capsys, jobs):
    """--tune-trials 1 --trial-seeds 2, two models tuned one after the other or at once: each trial trains
    seeds 1 and 2 and its value is their mean; the report and its command say so. The cached study
    keeps its seed count: the same bench without --trial-seeds is an error naming it. --trial-seeds
    without --tune-trials is an error."""
    optuna = pytest.importorskip("optuna")
    out = tmp_path / "b"
    argv = ["bench", "--models", "late_fusion,mult", "--seeds", "1", "--missing-rates", "0", "--complete", ""]
    argv += ["--jobs", jobs, "--tune-trials", "1", *SETS, "--out", str(out)]
    assert main([*argv, "--trial-seeds", "2"]) == 0
    for model in ("late_fusion", "mult"):
        folder = out / "tune" / model
        study = optuna.load_study(study_name=model, storage=f"sqlite:///{folder / 'study.db'}")
        (trial,) = study.trials
        assert study.user_attrs["trial_seeds"] == 2 and len(trial.user_attrs["seed_values"]) == 2
        assert trial.value == pytest.approx(sum(trial.user_attrs["seed_values"]) / 2, abs=1e-12)
        runs = [folder / "trial-0000" / f"seed-{k}" / "config.yaml" for k in (1, 2)]
        assert [build_config(run).train.seed for run in runs] == [1, 2]
    text = (out / "report.md").read_text()
    assert "each trial 2 training runs under the budget above, seeds 1 to 2" in text
    assert "--tune-trials 1 --trial-seeds 2" in text
    assert "| mult | 1 (0 pruned), 2 seeds each (value and steps: their mean) |" in text
    capsys.readouterr()
    assert main(argv) == 2
    assert "trials train 2 seed(s) each; continue it with --trial-seeds 2" in capsys.readouterr().err
    with pytest.raises(RamerError, match="give --tune-trials too"):
        bench_mod.resolve_settings(trial_seeds=2, overrides=TINY)


def test_a_role_no_target_has_is_no_score(tmp_path):
    """M3ED's utterance protocol makes every target a speaker: the test reports non-speakers with
    n = 0 alone, no metric, and the bench leaves the part out (no column, no record)."""
    from fixtures_writers import write_m3ed_annotation, write_m3ed_pickle

    write_m3ed_annotation(tmp_path / "annotation.json", write_m3ed_pickle(tmp_path / "m3.pkl"))
    out = tmp_path / "b"
    argv = ["bench", "--data", str(tmp_path / "m3.pkl"), "--models", "br", "--seeds", "1", "--missing-rates", "0"]
    argv += ["--complete", "", "--jobs", "1", "--set", "data.m3ed_protocol=utterance", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "runs/br/missing-0/seed-1/test_metrics.json").read_text())["nonspeaker"] == {"n": 0}
    (record,) = json.loads((out / "results.json").read_text())
    assert set(record["metrics"]) == {"overall", "speaker"}
    header = next(ln for ln in (out / "report.md").read_text().splitlines() if ln.startswith("| model |"))
    assert "| speaker micro-F1 |" in header and "non-speaker" not in header
    mode = next(ln for ln in (out / "report.md").read_text().splitlines() if ln.startswith("- Mode: "))
    assert "default (train.threads=1, train.epochs=40, train.patience=5)" in mode  # no data.synthetic.* for a file


@pytest.mark.parametrize(
    "ranked, pair",
    [
        (["late_fusion", "ramer", "ramer-no_shuffle", "br"], ("ramer", "late_fusion", "best baseline")),
        (["ramer-no_shuffle", "ramer-authors", "ramer", "hhmpn"], ("ramer", "hhmpn", "best baseline")),
        (["ramer-no_shuffle", "ramer", "ramer-no_stack"], ("ramer", "ramer-no_shuffle", "runner-up")),
        (["ramer-no_shuffle", "ramer-no_stack"], ("ramer-no_shuffle", "ramer-no_stack", "runner-up")),
        (["ramerlite", "late_fusion"], ("ramerlite", "late_fusion", "runner-up")),
        (["late_fusion", "ramerlite"], ("late_fusion", "ramerlite", "runner-up")),
        (["late_fusion"], ("late_fusion", None, "runner-up")),
    ],
)
def test_the_per_label_plot_pairs_ramer_with_a_baseline_else_the_two_best(ranked, pair):
    """A rival whose name began with 'ramer' was dropped, so a bench of RAMer's ablations, or of a
    model named ramerlite, wrote no per-label plot and said nothing (a researcher's walk)."""
    assert bench_mod.per_label_pair(ranked) == pair


@pytest.mark.parametrize("task", ["multi_label", "single_label"])
def test_the_plots_show_the_metric_the_report_leads_with(tmp_path, monkeypatch, task):
    """On single-label data the report leads with weighted F1 (the selection metric); its plots showed
    micro-F1 (accuracy there), ranked the per-label pair by it and read it from the valid lines. Two
    models that the two metrics rank the other way round: each plot follows the task's metric."""
    from ramer.metrics import SELECTION

    key = SELECTION[task]
    other = "weighted_f1" if key == "micro_f1" else "micro_f1"
    score = {"late_fusion": {key: 0.6, other: 0.4}, "hhmpn": {key: 0.5, other: 0.7}}
    results = [
        {
            "model": m,
            "inputs": "observed",
            "seed": 1,
            "missing_rate": 0.0,
            "metrics": {p: v for p in ("overall", "speaker", "nonspeaker")},
        }
        for m, v in score.items()
    ]
    epochs = {
        m: [{"epoch": e, "train": {"loss": 1.0 / e}, "valid": {"overall": {key: v[key]}}} for e in (1, 2)]
        for m, v in score.items()
    }
    monkeypatch.setattr(bench_mod, "_read_jsonl", lambda run, cut_ok=False: epochs[run.parts[-3]])
    monkeypatch.setattr(bench_mod, "per_label_f1", lambda out, m, rate, seeds: {"a": score[m][key]})
    drawn, save = {}, bench_mod._save

    def keep(fig, path):  # the values each figure draws: its lines' and its bars'
        ax = fig.axes[0]
        lines = [
            float(y)
            for c in ax.containers
            if hasattr(c, "lines") and c.get_label() in score
            for y in c.lines[0].get_ydata()
        ]
        drawn[path.name] = (sorted(lines), sorted(round(float(b.get_height()), 3) for b in ax.patches))
        save(fig, path)

    monkeypatch.setattr(bench_mod, "_save", keep)
    s = bench_mod.BenchSettings(out=tmp_path, models=["hhmpn", "late_fusion"], seeds=[1], rates=[0.0])
    written = dict(bench_mod.make_plots(s, results, None, task))
    assert drawn[f"{key}_vs_missing.png"][0] == [0.5, 0.6]
    assert drawn["speaker_vs_nonspeaker.png"][1] == [0.5, 0.5, 0.6, 0.6]
    name = "micro-F1" if key == "micro_f1" else "weighted-F1"
    assert written == {
        f"{key}_vs_missing.png": f"test {name} vs missing rate, per model",
        "per_label_f1.png": "per-label F1, late_fusion vs hhmpn",
        "speaker_vs_nonspeaker.png": f"speaker vs non-speaker {name}",
        "training_curves.png": f"training loss and validation {name} per epoch",
    }
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(written)


@pytest.mark.parametrize("parts", [("overall", "speaker"), ("overall", "speaker", "nonspeaker")])
def test_the_role_plot_needs_both_roles_and_its_legend_names_them_by_hatch(tmp_path, monkeypatch, parts):
    """The speaker vs non-speaker plot was drawn for a test split with no non-speaker target (M3ED, an
    import of --targets rows), its legend naming bars that were not there; and its legend's swatches
    took the first model's colour, which the bars of the second model do not have. Now the plot needs
    both roles, and the legend's keys are white, told apart by hatch, as the bars of every model are."""
    from matplotlib.colors import to_rgba

    results = [
        {
            "model": m,
            "inputs": "observed",
            "seed": 1,
            "missing_rate": 0.0,
            "metrics": {p: {"micro_f1": v} for p in parts},
        }
        for m, v in (("hhmpn", 0.5), ("late_fusion", 0.6))
    ]
    monkeypatch.setattr(bench_mod, "_read_jsonl", lambda run, cut_ok=False: [])
    monkeypatch.setattr(bench_mod, "per_label_f1", lambda out, m, rate, seeds: {"a": 0.5})
    legends, save = {}, bench_mod._save

    def keep(fig, path):
        legend = fig.axes[0].get_legend()
        legends[path.name] = [(h.get_label(), h.get_hatch(), h.get_facecolor()) for h in legend.legend_handles]
        save(fig, path)

    monkeypatch.setattr(bench_mod, "_save", keep)
    s = bench_mod.BenchSettings(out=tmp_path, models=["hhmpn", "late_fusion"], seeds=[1], rates=[0.0])
    written = dict(bench_mod.make_plots(s, results, None))
    if "nonspeaker" not in parts:
        assert "speaker_vs_nonspeaker.png" not in written and "speaker_vs_nonspeaker.png" not in legends
        return
    assert legends["speaker_vs_nonspeaker.png"] == [
        ("speaker targets", "", to_rgba("white")),
        ("non-speaker targets", "//", to_rgba("white")),
    ]
