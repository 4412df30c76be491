"""A full disk (or another refusal of the system) when a run writes its log: one line naming the
file, not a traceback, and the run resumes from what it had saved."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from test_recipe import TINY

from ramer.cli import main

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
