"""What differs on a laptop that is not Linux, simulated here: no fork (Windows; macOS, where a fork
is not safe), no ``fcntl`` (Windows), no MPS support, torchrun on Windows, and a run folder whose
name has a space and a letter outside ASCII."""

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_store
from test_recipe import one_error_line, tiny_cfg

import ramer
from ramer import dist, infer, paths
from ramer.cli import main
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained where ``fcntl`` does not exist (Windows: ``paths.hold`` locks nothing), in a
    folder named with a space and a letter outside ASCII."""
    out = tmp_path_factory.mktemp("port") / "rün dir"
    cfg = tiny_cfg(extra=["train.epochs=1", "train.eval_batch_size=8"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "fcntl", None)
        Recipe(cfg, out, bundle=generate(cfg.data.synthetic)).run()
    return out, cfg


@pytest.fixture
def no_fork(monkeypatch):
    """A system whose multiprocessing has no fork start method (Windows)."""
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])


@pytest.mark.parametrize("n", [6, 40])  # one batch (no process would be forked) and several
def test_workers_without_fork_are_refused_naming_the_option(no_fork, monkeypatch, n):
    """Without fork, workers > 1 is one error naming --workers and the way out, whether or not the
    split has enough batches to fork for (it used to pass on small data and fail on large), and the
    model is left in the mode it was in."""
    monkeypatch.setattr(infer, "_score_range", lambda model, store, start, stop, *rest: np.zeros((stop - start, 5)))
    model = torch.nn.Linear(2, 2).train()
    with pytest.raises(RamerError, match=r"^--workers 3 \(workers=3\) .*only Linux.*use --workers 1"):
        infer.predict(model, random_store(n=n), 8, torch.device("cpu"), workers=3)
    assert model.training
    assert len(infer.predict(model, random_store(n=n), 8, torch.device("cpu")).scores) == n  # one process: scored


def test_workers_are_refused_on_macos(monkeypatch):
    """macOS lists fork, but a process forked there without exec may crash in the system's frameworks."""
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "fork" in multiprocessing.get_all_start_methods()
    with pytest.raises(RamerError, match=r"only Linux gives \(this is darwin\); use --workers 1"):
        infer.predict(torch.nn.Linear(2, 2), random_store(n=40), 8, torch.device("cpu"), workers=2)


def test_cli_workers_without_fork_is_one_error_line(run, no_fork, capsys, tmp_path):
    out, _ = run
    for argv in (["eval", str(out)], ["predict", str(out), "--out", str(tmp_path / "p.jsonl")]):
        assert main([*argv, "--workers", "2"]) == 2
        err = capsys.readouterr().err
        assert one_error_line(err) and "use --workers 1" in err, err
    assert not (tmp_path / "p.jsonl").exists()
    assert main(["eval", str(out)]) == 0  # one process needs no fork


def test_mps_is_refused_with_the_way_out(run):
    """Apple's GPU: refused at once (the models are not checked there), saying what to use instead."""
    out, _ = run
    with pytest.raises(RamerError, match=r"^train.device is 'mps': ramer runs on cpu or cuda, not mps; use --set"):
        infer.resolve_device("mps")
    with pytest.raises(RamerError, match=r"is 'mps': ramer runs on cpu or cuda, not mps; load it with device='cpu'"):
        ramer.load(out, device="mps")


def test_torchrun_on_windows_does_not_ask_for_libuv(monkeypatch):
    """torch's Windows builds lack libuv, which torchrun's store asks for unless USE_LIBUV=0."""
    import torch.distributed.run as torchrun

    seen = []
    monkeypatch.setattr(torchrun, "run", lambda args: seen.append(os.environ.get("USE_LIBUV")))
    monkeypatch.setattr(os, "environ", dict(os.environ))  # what launch sets stays in this test
    os.environ.pop("USE_LIBUV", None)
    argv = ["--standalone", "--nproc_per_node=2", "-m", "ramer", "train"]
    assert dist.launch(argv) == 0
    monkeypatch.setattr(sys, "platform", "win32")
    assert dist.launch(argv) == 0
    os.environ["USE_LIBUV"] = "1"  # the user's choice is kept
    assert dist.launch(argv) == 0
    assert seen == [None, "0", "1"]


def test_a_run_folder_named_with_a_space_and_non_ascii(run, tmp_path):
    """eval, predict and view of a run in 'rün dir', writing into another such folder."""
    out, cfg = run
    dest = tmp_path / "ausgabe ü"
    dest.mkdir()
    assert main(["eval", str(out)]) == 0
    assert main(["predict", str(out), "--out", str(dest / "vorhersage ö.jsonl")]) == 0
    assert main(["view", str(out), "--out", str(dest / "ansicht ä.html")]) == 0
    assert len((dest / "vorhersage ö.jsonl").read_text(encoding="utf-8").splitlines()) == cfg.data.synthetic.n_test
    assert (dest / "ansicht ä.html").stat().st_size > 0


def test_text_files_are_utf8_whatever_the_locale(tmp_path):
    """Under a locale whose encoding is not UTF-8 (Windows' cp1252; ASCII here), the bench report's '±'
    and '↓' and the view page's '≠' are written, and as UTF-8, which every reader here and the page
    (``<meta charset="utf-8">``) assume."""
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env["PYTHONPATH"] = str(Path(ramer.__file__).parents[1])
    code = (
        r"import sys; from ramer.paths import atomic_write_text; atomic_write_text(sys.argv[1], '\u00b1 \u2193 \u2260')"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "report.md")], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace").strip().splitlines()[-1:]
    assert (tmp_path / "report.md").read_bytes() == "± ↓ ≠".encode()


def test_bench_runs_where_the_system_has_no_load_average(tmp_path, monkeypatch):
    """Windows has no os.getloadavg: the bench ran every model, then stopped with an AttributeError."""
    monkeypatch.delattr(os, "getloadavg")
    sets = ["data.synthetic.n_train=48", "data.synthetic.n_valid=24", "data.synthetic.n_test=24"]
    argv = ["bench", "--models", "br", "--seeds", "1", "--missing-rates", "0", "--complete", "", "--jobs", "1"]
    assert main([*argv, "--out", str(tmp_path / "b"), *(x for s in sets for x in ("--set", s))]) == 0
    machine = next(
        ln for ln in (tmp_path / "b" / "report.md").read_text(encoding="utf-8").splitlines() if "Machine" in ln
    )
    assert "load average" not in machine


def test_no_signal_is_sent_to_learn_whether_a_trial_process_lives_on_windows(monkeypatch):
    """os.kill(pid, 0) is Ctrl-C (CTRL_C_EVENT) on Windows, not a question."""
    from ramer import tune

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(sys, "platform", "win32")
    assert tune._alive(12345) and sent == []


@pytest.mark.parametrize("name", ["q?x", "a%41b"])
def test_the_study_database_lies_in_a_tune_folder_named_with_url_characters(tmp_path, name):
    """The SQLite URL was the path as it is: '?' began its options (the study went to a file 'q'
    beside the folder) and '%41' read as 'A' (the study could not be opened)."""
    pytest.importorskip("optuna")
    sets = ["data.synthetic.n_train=48", "data.synthetic.n_valid=24", "data.synthetic.n_test=24", "train.epochs=1"]
    argv = ["tune", "--model", "late_fusion", "--trials", "1", "--out", str(tmp_path / name)]
    assert main([*argv, *(x for s in sets for x in ("--set", s))]) == 0
    assert (tmp_path / name / "study.db").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_a_loaded_classical_model_keeps_no_map_of_its_file(tmp_path):
    """A classical model's float64 arrays were views of the file's memory map: the predictor held
    model.safetensors open, which Windows does not let another command replace or delete."""
    import gc

    sets = ["data.synthetic.n_train=48", "data.synthetic.n_valid=24", "data.synthetic.n_test=24"]
    out = tmp_path / "br"
    assert main(["train", "--model", "br", "--out", str(out), *(x for s in sets for x in ("--set", s))]) == 0
    gc.collect()
    predictor = ramer.load(out)
    maps = Path("/proc/self/maps").read_text()
    assert predictor.cfg.model.name == "br" and str(out / "model.safetensors") not in maps
