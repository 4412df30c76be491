"""A full disk (or another refusal of the system) when a run writes its log: one line naming the
file, not a traceback, and the run resumes from what it had saved."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
from test_recipe import TINY

import ramer
from ramer.cli import main
from ramer.errors import RamerError

pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an open file through /proc/self/fd"),
    pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning"),
]

SETS = [x for s in TINY for x in ("--set", s)]
FULL = os.strerror(errno.ENOSPC)


def full_disk_at(monkeypatch, name: str, nth: int) -> None:
    """The ``nth`` flush of a file named ``name`` to the disk (``os.fsync``) fails: the disk is full."""
    real, seen = os.fsync, []

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(os.sep + name):
            seen.append(fd)
            if len(seen) == nth:
                raise OSError(errno.ENOSPC, FULL)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def log_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("nth", [2, 4], ids=["epoch-line", "test-line"])
def test_a_full_disk_when_the_log_is_written_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys, nth):
    """The log's line of epoch 2, or the test line after epoch 3 (before test_metrics.json): an OSError
    traceback ended the command; the run resumes from the state saved before it."""
    run = tmp_path / "run"
    full_disk_at(monkeypatch, "metrics.jsonl", nth)
    assert main(["train", "--model", "late_fusion", "--out", str(run), *SETS]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / 'metrics.jsonl'}: cannot write ({FULL})" in err and "Traceback" not in err, err
    assert not (run / "test_metrics.json").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0, capsys.readouterr().err
    log = log_of(run)
    assert [x["epoch"] for x in log if "epoch" in x] == [1, 2, 3]
    assert [x.get("final") for x in log if "epoch" not in x] == ["test"]
    assert (run / "test_metrics.json").is_file()


def test_a_full_disk_when_a_fit_writes_its_log_is_one_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "br"
    full_disk_at(monkeypatch, "metrics.jsonl", 1)
    assert main(["train", "--model", "br", "--out", str(run), *SETS]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / 'metrics.jsonl'}: cannot write ({FULL})" in err and "Traceback" not in err, err


def test_a_full_disk_when_torch_writes_the_training_state_is_one_line(tmp_path, monkeypatch, capsys):
    """torch.save's zip writer, refused a write, fails on its way out with its own RuntimeError
    ('unexpected pos'), the OSError only its context: that was a traceback, exit 1."""
    import torch

    real = torch.save

    class Filling:  # the disk fills 1,000 bytes into the file
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 1000:
                raise OSError(errno.ENOSPC, FULL)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f: real(obj, Filling(f)))
    run = tmp_path / "run"
    assert main(["train", "--model", "late_fusion", "--out", str(run), *SETS]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / 'train_state.pt'}: cannot write ({FULL})" in err and "Traceback" not in err, err


def test_a_file_size_limit_when_safetensors_writes_the_model_is_one_line(tmp_path):
    """safetensors' writer names the system's refusal only in its message ('I/O error: File too large
    (os error 27)'): that was a traceback, exit 1. A real limit (``ulimit -f``), in a process of its own."""
    resource = pytest.importorskip("resource")
    import subprocess
    import sys

    limit = 16 * 1024  # below the model file (42 kB), which is written first, above config.yaml and the log

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    run = tmp_path / "run"
    args = [sys.executable, "-m", "ramer", "train", "--model", "late_fusion", "--out", str(run), *SETS]
    env = {**os.environ, "PYTHONPATH": str(Path(ramer.__file__).parents[1])}  # this checkout's package
    done = subprocess.run(args, capture_output=True, text=True, preexec_fn=limited, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    big = os.strerror(errno.EFBIG)
    assert f"error: {run / 'model.safetensors'}: cannot write ({big})" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_full_disk_when_a_command_writes_its_folders_lock_is_one_line(tmp_path, monkeypatch, capsys):
    """The lock file's record of its holder (``paths.hold``), the first write of most commands, where
    a disk that filled up is met: that was an OSError traceback, and the folder made for the run, with
    an empty lock file in it, stayed behind."""
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(os.sep + ".ramer.lock"):
            raise OSError(errno.ENOSPC, FULL)
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    run = tmp_path / "runs" / "run"
    assert main(["train", "--model", "late_fusion", "--out", str(run), *SETS]) == 2
    err = capsys.readouterr().err
    assert f"error: {run}: cannot write its lock file .ramer.lock ({FULL})" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # runs/ and runs/run, made for it, removed


def files_of(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


SYNTH = ["--set", "n_train=32", "--set", "n_valid=8", "--set", "n_test=8"]


def test_a_full_disk_when_a_dataset_is_written_over_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    """A split's array refused by the disk as ``ramer data synth`` writes a dataset over one: an
    OSError traceback without a file name; the old dataset was kept, and is."""
    data = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(data), *SYNTH]) == 0
    before = files_of(data)
    full_disk_at(monkeypatch, "visual.npy", 2)  # the valid split's
    assert main(["data", "synth", "--out", str(data), *SYNTH, "--set", "seed=5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    assert f"error: {data / 'valid' / 'visual.npy'}: cannot write ({FULL}); the dataset there is as it was" in err, err
    assert files_of(data) == before


def test_a_split_that_cannot_be_moved_out_is_one_line_and_the_old_dataset_is_whole(tmp_path, monkeypatch, capsys):
    """The swap of a new dataset in, refused part-way (a read-only old split folder, which cannot be
    moved): the renames made are undone, as before, and the error is one line, not a traceback."""
    data = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(data), *SYNTH]) == 0
    before = files_of(data)
    real = os.replace

    def replace(source, target):
        if Path(source) == data / "valid":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(source))
        return real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["data", "synth", "--out", str(data), *SYNTH, "--set", "seed=5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    said = f"error: {data}: cannot move the new dataset in ({os.strerror(errno.EACCES)}: {data / 'valid'}); "
    assert said + "the one there is as it was" in err, err
    assert files_of(data) == before


def test_a_cache_entry_the_disk_refuses_is_one_error_and_nothing_fails_later(tmp_path, monkeypatch):
    """An import's feature cache entry cut off by the disk (here a file-size limit): the error names the
    entry; np.savez's zip writer, left half-written on the file, failed again when it was collected
    ('Exception ignored ... seek of closed file' after the error line)."""
    import gc
    import sys

    import numpy as np

    resource = pytest.importorskip("resource")
    from ramer.data.features import FeatureCache

    unraised = []
    monkeypatch.setattr(sys, "unraisablehook", unraised.append)
    cache = FeatureCache(tmp_path / "cache")
    arrays = {"features": np.zeros((64, 384), np.float32), "present": np.ones(64, bool)}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))  # below the entry's 98 kB
    try:
        with pytest.raises(RamerError, match=r"\.npz: cannot write \(" + os.strerror(errno.EFBIG)):
            cache.put("text", "c1", "k", arrays)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    gc.collect()
    assert unraised == []
    assert [p.name for p in (tmp_path / "cache" / "text").iterdir()] == []  # no temporary left


def test_a_split_refused_as_it_takes_its_folders_place_is_kept_in_its_temporary_folder(tmp_path, monkeypatch):
    """``SceneStore.save`` over a split folder: the rename of the new one into place refused (here a
    cross-device link) after the old one was removed is one error naming the folder, and the new
    split is kept whole in its temporary folder beside it, not removed with the old one."""
    from conftest import random_store

    store, split = random_store(n=8), tmp_path / "train"
    store.save(split)
    real = os.replace

    def replace(source, target):
        if Path(target) == split:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(RamerError, match=rf"^{re.escape(str(split))}: cannot write \({os.strerror(errno.EXDEV)}\)$"):
        store.save(split)
    (kept,) = tmp_path.glob(".train.*.tmp")
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in store_files(store, tmp_path))


def store_files(store, tmp_path) -> list[Path]:
    """The files a save of ``store`` writes."""
    other = tmp_path / "other" / "train"
    store.save(other)
    return list(other.iterdir())
