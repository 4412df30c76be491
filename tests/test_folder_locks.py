"""A folder a command writes is held by it (``paths.hold``): a second command there is refused in
one line and leaves the folder as it was, instead of mixing its files in or deleting the first's."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest
from conftest import for_data
from test_recipe import tiny_cfg

from ramer.cli import build_parser, check_new_run, main, train_config
from ramer.config import dump_config
from ramer.errors import RamerError
from ramer.paths import LOCK_NAME, remove_if_empty

fcntl = pytest.importorskip("fcntl")

TINY = [
    *("data.synthetic.n_train=40", "data.synthetic.n_valid=20", "data.synthetic.n_test=20", "train.epochs=1"),
    *("model.hidden=16", "model.ffn=32", "model.heads=2", "model.queue_size=64"),
]
SETS = [x for s in TINY for x in ("--set", s)]
pytestmark = pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning")


@contextlib.contextmanager
def held_elsewhere(folder: Path, command: str = "ramer train"):
    """Hold ``folder``'s lock as another process would (its own open file, its own record); yields
    the line a command refused there prints."""
    folder.mkdir(parents=True, exist_ok=True)
    since = time.time()
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": 4242, "host": "elsewhere", "command": command, "since": since}).encode())
        yield (
            f"error: {folder}: in use by another ramer command ({command}, pid 4242 on elsewhere, since "
            f"{time.strftime('%H:%M', time.localtime(since))}); wait for it to end or give another --out"
        )
    finally:
        os.close(fd)


def contents(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], folder: Path, capsys, line: str) -> None:
    """``argv`` exits 2 with ``line`` as its last line and leaves ``folder`` as it was."""
    before = contents(folder)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == line
    assert contents(folder) == before


def test_train_is_refused_in_a_run_folder_another_command_holds(tmp_path, capsys):
    out = tmp_path / "run"
    with held_elsewhere(out) as line:
        refused(["train", "--out", str(out), *SETS], out, capsys, line)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # no config, no log beside the other's


def test_a_new_run_where_another_command_trains_says_in_use_not_resume(tmp_path, capsys):
    """A run still training there: not 'already holds a run; use --resume', which is refused as in
    use (a new user followed it)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_state.pt").write_bytes(b"state")
    with held_elsewhere(out) as line:
        refused(["train", "--out", str(out), *SETS], out, capsys, line)


def test_only_rank_0_looks_at_the_lock_before_training(tmp_path, monkeypatch):
    """Under torchrun rank 0 alone holds the run folder: the other ranks' first check found its
    lock, 'in use by another ramer command', and ramer train --nproc 2 failed about half the time."""
    out = tmp_path / "run"
    with held_elsewhere(out):
        monkeypatch.setenv("RANK", "1")
        check_new_run(tiny_cfg(), out)
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RamerError, match="in use by another ramer command"):
            check_new_run(tiny_cfg(), out)


def test_resume_is_refused_in_a_run_folder_another_command_holds(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "train.epochs=2", *SETS]) == 0
    assert LOCK_NAME not in {p.name for p in out.iterdir()}  # removed at the end of the run
    with held_elsewhere(out, "ramer train --resume") as line:  # a resume takes no --out to give another of
        refused(["train", "--resume", str(out)], out, capsys, line.replace(" or give another --out", ""))


def test_bench_neither_removes_nor_reuses_a_run_folder_another_command_holds(tmp_path, capsys):
    """A cached run another ``ramer train`` is writing (here: not finished yet) would be removed as
    partial and trained again into the same folder; held, the bench stops there instead."""
    bench = ["bench", "--models", "br", "--seeds", "1", "--missing-rates", "0", "--jobs", "1", *SETS[:6]]
    out = tmp_path / "b"
    assert main([*bench, "--out", str(out)]) == 0
    run = out / "runs" / "br" / "missing-0" / "seed-1"
    (run / "test_metrics.json").unlink()
    with held_elsewhere(run) as line:
        refused([*bench, "--out", str(out)], run, capsys, line)
    with held_elsewhere(out, "ramer bench") as line:  # its own --out too
        refused([*bench, "--out", str(out)], out, capsys, line)


def test_reproduce_neither_clears_nor_trains_in_a_seed_folder_another_command_holds(tmp_path, capsys):
    """A ``ramer train --out OUT/seed1`` under way (no training state yet) was cleared by ``ramer
    reproduce --out OUT`` as a seed stopped early, and both trained into it; held, reproduce stops."""
    from fixtures_writers import write_mosei_aligned

    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    seed = tmp_path / "rep" / "seed1"
    seed.mkdir(parents=True)
    (seed / "metrics.jsonl").write_text("")
    (seed / "config.yaml").write_text("train:\n  lr: 0.01\n")  # what the other command has written so far
    argv = ["reproduce", "mosei", "--data", str(data), "--seeds", "1", "--out", str(tmp_path / "rep"), *SETS[6:]]
    with held_elsewhere(seed) as line:
        refused(argv, seed, capsys, line)
    assert not (tmp_path / "rep" / "results.md").exists()


def test_data_synth_is_refused_in_a_dataset_folder_another_command_holds(tmp_path, capsys):
    out = tmp_path / "data"
    sizes = ["--set", "n_train=20", "--set", "n_valid=10", "--set", "n_test=10"]
    with held_elsewhere(out, "ramer data synth") as line:
        refused(["data", "synth", "--out", str(out), *sizes], out, capsys, line)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]


def test_reproduce_is_refused_in_a_folder_another_command_holds(tmp_path, capsys):
    """Two ``ramer reproduce`` into one --out: the second took the seed folder the first was still
    training (no state saved yet) for one to start again, removed it, and both trained into it, each
    exiting 0 with the other's epochs in its log. Now the whole --out is held; a seed done earlier
    is not even read."""
    from fixtures_writers import write_mosei_aligned

    data = tmp_path / "mosei.pt"
    write_mosei_aligned(data)
    out = tmp_path / "rep"
    (out / "seed1").mkdir(parents=True)
    (out / "seed1" / "metrics.jsonl").write_text('{"epoch": 1}\n', encoding="utf-8")  # being trained
    with held_elsewhere(out, "ramer reproduce") as line:
        argv = ["reproduce", "mosei", "--data", str(data), "--seeds", "1", "--out", str(out)]
        refused([*argv, "--set", "train.epochs=1", "--set", "model.hidden=16"], out, capsys, line)


def test_training_on_a_dataset_still_being_written_says_so(tmp_path, capsys):
    """``ramer train --data D`` while ``ramer data synth --out D`` writes it (its splits still in the
    staging folder, no meta.json yet): "unknown dataset folder", as if D were no dataset at all."""
    data = tmp_path / "data"
    with held_elsewhere(data, "ramer data synth") as line:
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *for_data(SETS)]) == 2
        said = capsys.readouterr().err.strip().splitlines()[-1]
        assert said == line.replace(
            "wait for it to end or give another --out", "its dataset is being written: wait for it to end"
        )
    assert not (tmp_path / "run").exists()


def test_a_run_folder_made_by_another_process_is_not_removed_as_this_ones(tmp_path, capsys, monkeypatch):
    """Two ``ramer train --out X`` started together both see no X; only the one whose ``mkdir``
    made it may remove it (stopped before an epoch ended). Here the other made X and started its
    run there (config and empty log) while this one looked; this one is stopped at once."""
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *SETS]
    out.mkdir()
    (out / "config.yaml").write_text(dump_config(train_config(build_parser().parse_args(argv))))
    (out / "metrics.jsonl").write_text("")
    before = contents(out)
    exists, is_dir = Path.exists, Path.is_dir

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # what this process saw: no X yet
        m.setattr(Path, "exists", lambda self, *a, **k: False if self == out else exists(self, *a, **k))
        m.setattr(Path, "is_dir", lambda self, *a, **k: False if self == out else is_dir(self, *a, **k))
        m.setattr("ramer.train.run_training", stopped)
        assert main(argv) == 130
    assert contents(out) == before


def test_a_lock_file_left_by_a_killed_command_is_no_ones_work(tmp_path):
    """A command killed while it held a folder leaves its (unlocked) lock file: the folder holds no
    work, so the demo takes it, and train takes the lock again."""
    for folder in ("demo/ramer", "run"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / LOCK_NAME).write_text('{"pid": 1, "host": "gone", "command": "ramer train", "since": 0}')
    demo_sets = [*SETS, "--set", "train.batch_size=32", "--set", "model.queue_size=64"]
    assert main(["demo", "--out", str(tmp_path / "demo"), *demo_sets]) == 0
    assert main(["train", "--model", "br", "--out", str(tmp_path / "run"), *SETS]) == 0


def test_a_folder_holding_only_a_stale_lock_file_is_removed_as_empty(tmp_path):
    """``remove_if_empty`` takes a lock file nothing holds (a killed command's) for no work and removes
    the folder; one another command holds keeps it, lock file and all."""
    stale, live = tmp_path / "stale", tmp_path / "live"
    stale.mkdir()
    (stale / LOCK_NAME).write_text('{"pid": 1, "host": "gone", "command": "ramer train", "since": 0}')
    remove_if_empty(stale)
    assert not stale.exists()
    with held_elsewhere(live):
        remove_if_empty(live)
        assert (live / LOCK_NAME).is_file()


def test_a_file_system_without_locks_holds_the_folder_unlocked(tmp_path, monkeypatch, capsys):
    """flock refused by the file system (ENOLCK, some network mounts) was read as another command's
    hold: 'in use by another ramer command (just starting)', for every command there, for ever."""
    import errno

    from ramer import paths

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(paths.fcntl, "flock", no_locks)
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), "--set", "n_train=20", "--set", "n_valid=10"]) == 0, (
        capsys.readouterr().err
    )
    assert (out / "meta.json").is_file() and paths.held_elsewhere(out) is None


def test_loading_a_run_that_has_begun_and_written_nothing_says_it_is_in_use(tmp_path):
    """A run loading its data holds its folder and has written nothing yet: ramer.load said
    'model file not found'; now that a command holds it, and to wait."""
    import ramer

    out = tmp_path / "run"
    with held_elsewhere(out), pytest.raises(RamerError) as e:
        ramer.load(out)
    assert str(e.value).startswith(f"{out}: in use by another ramer command (ramer train, pid 4242 on elsewhere")
    assert str(e.value).endswith("; no model.safetensors in it yet (a run saves one after its first epoch)")
