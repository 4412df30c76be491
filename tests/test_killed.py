"""A command killed hard (SIGKILL, a power cut) has no chance to clean up: the next command in that
folder removes what the kill left (``atomic_write``'s ``.NAME.XXXX.tmp``: a training state's is the
size of the model and its optimiser), says what to do when nothing can be resumed, and a run's log
is on disk before the training state that counts its lines."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_recipe import tiny_cfg

from ramer.bench import worker_pool
from ramer.cli import main
from ramer.config import dump_config
from ramer.data import features as F
from ramer.data.synthetic import generate
from ramer.dist import PARENT_ENV
from ramer.errors import RamerError
from ramer.paths import hold
from ramer.train.recipe import Recipe, start_run_folder

pytest.importorskip("fcntl")  # the clean-up is done only by the command that holds the folder (paths.hold)
pytestmark = pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning")

SYNTH = ["--set", "n_train=24", "--set", "n_valid=12", "--set", "n_test=12"]


def left_by_a_kill(folder: Path, name: str) -> Path:
    """The temporary ``atomic_write`` makes beside ``folder/name``, as a kill in the write leaves it."""
    tmp = folder / f".{name}.k1lled0x.tmp"
    tmp.write_bytes(b"PK\x03\x04 half a file")
    return tmp


def test_a_resume_removes_the_temporaries_a_kill_in_a_save_left(stopped_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    cut = [left_by_a_kill(run, name) for name in ("train_state.pt", "model.safetensors", "metrics.jsonl")]
    others = left_by_a_kill(run, "preds.jsonl"), run / "notes.txt"  # another command's write; the user's file
    others[1].write_text("mine")
    assert main(["train", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert not [p.name for p in cut if p.exists()]
    assert all(p.exists() for p in others)
    assert (run / "test_metrics.json").is_file()


def test_a_run_started_again_removes_the_temporaries_a_kill_left(tmp_path):
    cfg = tiny_cfg()
    run = tmp_path / "run"
    run.mkdir()
    cut = left_by_a_kill(run, "config.yaml")
    with hold(run, "ramer train"):
        start_run_folder(run, cfg)
    assert not cut.exists()
    assert (run / "config.yaml").read_text() == dump_config(cfg)


def killed_before_its_first_state(run: Path) -> Path:
    """A run folder as a kill in epoch 1 leaves it: its config and an empty log, no training state."""
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    (run / "config.yaml").write_text(dump_config(tiny_cfg()))
    return run


def test_resuming_a_run_killed_before_its_first_state_says_how_to_train_it_again(tmp_path, capsys):
    """Killed in epoch 1: a config and an empty log, nothing to resume; the error names the command
    that trains it again there."""
    run = killed_before_its_first_state(tmp_path / "run")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "the run stopped before its first training state was saved" in err
    assert f"ramer train --config {run / 'config.yaml'} --out {run}" in err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.jsonl"]  # nothing lost
    (run / "config.yaml").unlink()  # killed before start_run_folder wrote it, after the empty log
    assert main(["train", "--resume", str(run)]) == 2
    assert "the run stopped as it began, so nothing of it is kept; run the command that" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an open file through /proc")
def test_each_log_line_is_on_disk_before_the_state_that_counts_it(tmp_path, monkeypatch):
    """A power cut keeps what was fsync'ed: a state on disk whose epoch's log line was not would
    leave the log a line short for good (a resume keeps the lines before the state's epoch), and
    test_metrics.json on disk without the test line would mark a run finished that has none."""
    synced = []
    fsync = os.fsync

    def recording(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    cfg = tiny_cfg(extra=["train.epochs=2"])
    Recipe(cfg, tmp_path / "run", bundle=generate(cfg.data.synthetic)).run()
    kinds = {"metrics.jsonl": "log", ".train_state.pt.": "state", ".test_metrics.json.": "finished"}
    order = [kind for name in synced for start, kind in kinds.items() if name.startswith(start)]
    assert order == ["log", "state"] * 2 + ["log", "finished"]  # each epoch's line, then its state; the test line


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an open file through /proc")
def test_a_datasets_arrays_are_on_disk_before_its_meta(tmp_path, monkeypatch, capsys):
    """``meta.json`` marks a dataset complete: after a power cut it must not name arrays that never
    reached the disk (empty, or zeros read back as features)."""
    synced = []
    fsync = os.fsync

    def recording(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append((path.parent.name.split(".")[1] if path.parent.name.endswith(".tmp") else "", path.name))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), *SYNTH]) == 0, capsys.readouterr().err
    meta = next(i for i, (_, name) in enumerate(synced) if name.startswith(".meta.json."))
    for split in ("train", "valid", "test"):
        assert {name for folder, name in synced[:meta] if folder == split} == {p.name for p in (out / split).iterdir()}


def test_a_dataset_written_again_removes_the_meta_temporary_a_kill_left(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), *SYNTH]) == 0
    (out / "meta.json").unlink()  # a write killed while meta.json was written, the last step
    cut = left_by_a_kill(out, "meta.json")
    assert main(["data", "synth", "--out", str(out), *SYNTH]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test", "train", "valid"]
    assert not cut.exists()


def test_the_import_cache_drops_the_temporaries_of_entries_a_kill_cut_off(tmp_path):
    out = tmp_path / "data"
    cache = F.FeatureCache(out / "cache")
    arrays = {"features": np.zeros((2, F.TEXT_DIM), np.float32), "present": np.ones(2, bool)}
    cache.put("text", "conv-1", "k", arrays)
    cut = left_by_a_kill(out / "cache" / "text", cache._path("text", "conv-2").name)
    with hold(out, "ramer data import"):
        assert cache.prune() == 0  # the entry this import wrote stays
    assert not cut.exists()
    assert cache.get("text", "conv-1", "k") is not None


def test_a_bench_worker_that_ends_abruptly_is_one_line_saying_what_to_do():
    """A worker killed (by the out-of-memory killer, say) broke the pool: a traceback ending in
    BrokenProcessPool, and a 'failed:' line naming a run that may not have been the worker's."""
    with pytest.raises(RamerError, match="a worker process of the bench ended abruptly .* run the same command"):
        with worker_pool(1) as pool:
            pool.submit(os._exit, 9).result()


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended and not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def ended_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


def parent_of(script: str) -> tuple[subprocess.Popen, list[int]]:
    """``python -c script``, which prints the pids it wants watched on its first line."""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    return parent, [int(x) for x in parent.stdout.readline().split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_bench_workers_and_the_nproc_launcher_end_with_a_command_killed_hard(tmp_path):
    """SIGKILL gives the bench (or ``ramer train --nproc``) no chance to stop what it started: its
    workers trained on, holding their runs' locks, and a rerun was refused as 'in use'. Also a
    ``ramer train --nproc`` killed while its launcher was still starting (the launcher learns its
    parent's pid from it, ``dist.PARENT_ENV``), and a launcher run by hand is left alone."""
    bench, (worker,) = parent_of(
        "import os, time\nfrom ramer.bench import worker_pool\n"
        "with worker_pool(1) as pool:\n    print(pool.submit(os.getpid).result(), flush=True)\n    time.sleep(120)"
    )
    launch = [sys.executable, "-m", "ramer.dist", "--standalone", "--nproc_per_node=1", "--no-python", "sleep", "120"]
    env = f"{{**os.environ, {PARENT_ENV!r}: str(os.getpid())}}"  # as ramer train --nproc starts it
    start = f"import os, subprocess, time\np = subprocess.Popen({launch!r}, env={env}, stderr=subprocess.DEVNULL)\n"
    train, (launcher,) = parent_of(start + "print(p.pid, flush=True)\ntime.sleep(120)")
    early, (started,) = parent_of(start + "print(p.pid, flush=True)\nos.kill(os.getpid(), 9)")  # before prctl
    by_hand, (own,) = parent_of(
        f"import subprocess\nprint(subprocess.Popen({launch!r}, stderr=subprocess.DEVNULL).pid, flush=True)"
    )
    deadline = time.monotonic() + 60
    while not (workers := Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()):
        assert time.monotonic() < deadline, "torchrun started no worker"
        time.sleep(0.2)
    watched = [worker, launcher, *map(int, workers), started]
    for parent in (bench, train, early, by_hand):
        parent.kill()
        parent.wait()
    try:
        assert ended_within(watched, 30)
        assert alive(own)  # its parent ended, yet no --nproc started it: it runs on
    finally:  # none left running
        for pid in filter(alive, [*watched, own]):
            os.kill(pid, signal.SIGTERM if pid == own else signal.SIGKILL)  # SIGTERM: torchrun stops its worker


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_scoring_processes_end_with_a_command_killed_hard():
    """``ramer predict``, ``eval`` or ``view --workers N`` killed hard (SIGKILL, the out-of-memory
    killer, a SIGTERM to its own pid): its forked scoring processes scored on, then waited for ever
    in a send no one would read, each holding its memory and the caller's output pipes."""
    script = (
        "import os, time\nfrom ramer import infer\n"  # one write of the pid and its line break: the two workers'
        "def block(*args):\n    os.write(1, f'{os.getpid()}\\n'.encode())\n    time.sleep(120)\n"  # do not interleave
        "infer._score_range = block\ninfer._score_forked(None, None, [(0, 1), (1, 2)], 1, 'cpu', 'fp32')"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(parent.stdout.readline()) for _ in range(2)]
    parent.kill()
    parent.wait()
    try:
        assert ended_within(workers, 30)
    finally:
        for pid in filter(alive, workers):
            os.kill(pid, signal.SIGKILL)
        parent.stdout.close()


def test_a_bench_run_again_removes_the_temporaries_a_kill_left(tmp_path, monkeypatch, capsys):
    """Its report, results and plots in --out, and a cached run's bench.json."""
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "--models", "br", "--seeds", "1", "--missing-rates", "0", "--complete", "", "--jobs", "1"]
    argv += ["--set", "data.synthetic.n_train=40", "--set", "data.synthetic.n_valid=20"]
    argv += ["--set", "data.synthetic.n_test=20", "--out", "b"]
    assert main(argv) == 0, capsys.readouterr().err
    run = next(Path("b/runs").glob("*/*/*"))
    cut = [left_by_a_kill(Path("b"), name) for name in ("results.json", "report.md")]
    cut += [left_by_a_kill(Path("b/plots"), "micro_f1.png"), left_by_a_kill(run, "bench.json")]
    assert main(argv) == 0, capsys.readouterr().err
    assert not [str(p) for p in cut if p.exists()]


def test_a_dataset_whose_write_was_cut_off_says_so_and_how_to_write_it_again(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), *SYNTH]) == 0
    (out / "meta.json").unlink()  # written last: a kill before it leaves the splits alone
    for argv in (["data", "info", str(out)], ["train", "--data", str(out), "--out", str(tmp_path / "run")]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "a dataset whose write was cut off" in err and f"ramer data synth|convert|import --out {out}" in err
    assert main(["data", "synth", "--out", str(out), *SYNTH]) == 0  # as it says: written again, it loads
    assert main(["data", "info", str(out)]) == 0


def test_temporaries_stay_where_the_command_does_not_hold_the_folder(tmp_path):
    """Another command may be writing them: a folder not held, or one a link leads to from the held
    folder (an import cache shared by several datasets)."""
    out = tmp_path / "data"
    cache = F.FeatureCache(out / "cache")
    cache.put("text", "conv-1", "k", {"features": np.zeros((1, F.TEXT_DIM), np.float32), "present": np.ones(1, bool)})
    cut = left_by_a_kill(out / "cache" / "text", cache._path("text", "conv-2").name)
    cache.prune()  # not held
    assert cut.exists()
    shared = tmp_path / "shared"
    (out / "cache" / "text").rename(shared)
    (out / "cache" / "text").symlink_to(shared, target_is_directory=True)
    with hold(out, "ramer data import"):
        cache.prune()
    assert (shared / cut.name).exists()


def test_ctrl_c_in_the_write_of_a_state_is_ctrl_c(tmp_path, monkeypatch, capsys):
    """Ctrl-C while torch.save writes the training state: its zip writer fails on the way out
    ('unexpected pos'), a RuntimeError whose context is the KeyboardInterrupt. That ended in a
    traceback, exit 1, where Ctrl-C says how to resume, 130. The state before stays, and the line
    names its epoch (the last epoch line printed need not be it); no temporary."""
    import ramer.checkpoint as ckpt

    save, saves = ckpt.torch.save, []

    def cut_off(obj, f):
        saves.append(obj["epoch"])
        if len(saves) == 1:
            return save(obj, f)
        f.write(b"PK\x03\x04 half a zip")
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 769600 vs 769488")

    monkeypatch.setattr(ckpt.torch, "save", cut_off)
    run, config = tmp_path / "run", tmp_path / "tiny.yaml"
    config.write_text(dump_config(tiny_cfg()))
    assert main(["train", "--config", str(config), "--out", str(run)]) == 130
    assert f"interrupted; epoch 1 is saved; resume with: ramer train --resume {run}" in capsys.readouterr().err
    assert saves == [1, 2] and ckpt.load_train_state(run / "train_state.pt")["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM sent to a process: POSIX")
def test_sigterm_stops_a_training_as_ctrl_c_does(tmp_path):
    """SIGTERM (how Slurm, Docker and systemd stop a job) ended ramer train at once, with no word and
    exit -15; it is read as Ctrl-C: the hint that names the saved epoch and the resume, exit 143."""
    sets = ["data.synthetic.n_train=60", "data.synthetic.n_valid=20", "data.synthetic.n_test=20", "train.epochs=300"]
    sets += ["model.hidden=16", "model.ffn=32", "model.heads=2", "train.threads=1"]
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "ramer", "train", "--model", "late_fusion", "--out", str(out)]
    proc = subprocess.Popen([*argv, *(x for s in sets for x in ("--set", s))], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "train_state.pt").exists():  # an epoch is saved
        assert proc.poll() is None and time.monotonic() < deadline, "no epoch saved"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-1500:]
    assert f"is saved; resume with: ramer train --resume {out}" in err and "Traceback" not in err, err[-1500:]
    assert (out / "train_state.pt").exists() and not (out / "test_metrics.json").exists()
