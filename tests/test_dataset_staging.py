"""A dataset write (``data synth``, ``data convert`` of a native folder or of a public file,
``DataBundle.save``) cut off by Ctrl-C or an error at any moment leaves the dataset already in
--out whole: every split and ``meta.json`` are staged first and swapped in by renames at the end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import random_store

from ramer.cli import main
from ramer.data import store as S
from ramer.data.store import DataBundle, load_native
from ramer.errors import RamerError

SYNTH = ["--set", "n_train=24", "--set", "n_valid=12", "--set", "n_test=12"]


def _state(folder: Path) -> tuple[dict, bytes]:
    """What a dataset folder holds: each split's fingerprint and meta.json."""
    return load_native(folder).fingerprints(), (folder / "meta.json").read_bytes()


def _interrupt_on(monkeypatch, name: str, call: int) -> None:
    """Ctrl-C at the ``call``-th call of ``store.NAME`` (``_write``: a split; ``write_meta``)."""
    owner = S.SceneStore if name == "_write" else S
    real, calls = getattr(owner, name), []

    def cut(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, cut)


def _interrupt_rename_into(monkeypatch, out: Path, name: str) -> None:
    """Ctrl-C at the rename that moves the new ``name`` into ``out`` (in the swap itself)."""
    real = os.replace

    def cut(src, dst):
        if Path(dst) == out / name and Path(src).parent.name.startswith(".dataset."):  # not an undo
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", cut)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


def _command(kind: str, tmp_path: Path) -> list[str]:
    """The argv of a write into --out of ``kind``: synth, or convert of another native folder."""
    if kind == "synth":
        return ["data", "synth", *SYNTH, "--set", "seed=7", "--out"]
    source = tmp_path / "source"
    assert main(["data", "synth", *SYNTH, "--set", "seed=7", "--out", str(source)]) == 0
    return ["data", "convert", str(source), "--out"]


@pytest.mark.parametrize("kind", ["synth", "convert"])
@pytest.mark.parametrize(
    "where", [("_write", 2), ("_write", 3), ("write_meta", 1), ("swap", "valid"), ("swap", "meta.json")]
)
def test_an_interrupted_dataset_write_leaves_the_dataset_in_out_as_it_was(tmp_path, monkeypatch, capsys, kind, where):
    out = tmp_path / "data"
    assert main(["data", "synth", *SYNTH, "--out", str(out)]) == 0
    before = _state(out)
    argv = [*_command(kind, tmp_path), str(out)]
    if where[0] == "swap":
        _interrupt_rename_into(monkeypatch, out, where[1])
    else:
        _interrupt_on(monkeypatch, *where)
    capsys.readouterr()
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.undo()
    assert _state(out) == before
    assert main(["data", "info", str(out)]) == 0
    assert _leftovers(out) == []
    assert main(argv) == 0  # done again, it is written over
    assert _state(out)[0] != before[0] and _leftovers(out) == []


@pytest.fixture
def sigint_as_in_a_terminal():
    """SIGINT as Python sets it in a process started from a terminal (KeyboardInterrupt): a suite run
    as a background job of a shell (`./.ci/run &`) starts with it ignored, which a write leaves so."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _ctrl_c_in_the_clean_up(monkeypatch) -> None:
    """A real SIGINT to this process as the staging folder that holds the old dataset is removed (the
    clean-up after the swap)."""
    import shutil
    import signal

    real = shutil.rmtree

    def ctrl_c_then_remove(path, *args, **kwargs):
        if Path(path).name.startswith(".dataset.") and (Path(path) / "old.tmp").exists():
            os.kill(os.getpid(), signal.SIGINT)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", ctrl_c_then_remove)


@pytest.mark.skipif(os.name != "posix", reason="a SIGINT sent to itself: POSIX")
@pytest.mark.parametrize("kind", ["synth", "convert"])
@pytest.mark.usefixtures("sigint_as_in_a_terminal")
def test_ctrl_c_after_the_swap_says_the_write_was_done(tmp_path, monkeypatch, capsys, kind):
    """A real Ctrl-C while the old dataset, swapped out into the staging folder, is removed: the new
    dataset was in place, yet the command said only "interrupted", as if nothing were written, and
    left part of the old one in a staging folder. The swap is the write's commit: the clean-up ends,
    then the command stops (130), saying the dataset is written."""
    out = tmp_path / "data"
    assert main(["data", "synth", *SYNTH, "--out", str(out)]) == 0
    before = _state(out)
    argv = [*_command(kind, tmp_path), str(out)]
    _ctrl_c_in_the_clean_up(monkeypatch)
    capsys.readouterr()
    assert main(argv) == 130
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == f"interrupted once the write was done: {out} holds the dataset just written, whole"
    monkeypatch.undo()
    assert _state(out)[0] != before[0] and _leftovers(out) == []


@pytest.mark.skipif(os.name != "posix", reason="a SIGINT sent to itself: POSIX")
@pytest.mark.usefixtures("sigint_as_in_a_terminal")
def test_ctrl_c_in_a_save_reaches_the_script_once_the_save_is_done(tmp_path, monkeypatch):
    """DataBundle.save in a script's loop: a Ctrl-C held off during the swap's clean-up is raised
    when it ends (KeyboardInterrupt), so the loop stops, the dataset whole; the script's own handler
    is put back."""
    import signal

    from ramer.data.synthetic import SynthConfig, generate
    from ramer.errors import InterruptedAfter

    out = tmp_path / "data"
    bundle = generate(SynthConfig(n_train=8, n_valid=4, n_test=4))
    bundle.save(out)
    _ctrl_c_in_the_clean_up(monkeypatch)
    with pytest.raises(InterruptedAfter):
        generate(SynthConfig(n_train=8, n_valid=4, n_test=4, seed=3)).save(out)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert load_native(out).info == generate(SynthConfig(n_train=8, n_valid=4, n_test=4, seed=3)).info
    assert _leftovers(out) == []


def test_an_interrupted_convert_of_a_public_file_leaves_the_dataset_in_out_as_it_was(tmp_path, monkeypatch, capsys):
    from fixtures_writers import write_m3ed_carat

    public = tmp_path / "m3ed_data_60.pt"
    write_m3ed_carat(public)
    out = tmp_path / "data"
    assert main(["data", "synth", *SYNTH, "--out", str(out)]) == 0
    before = _state(out)
    _interrupt_rename_into(monkeypatch, out, "test")
    assert main(["data", "convert", str(public), "--out", str(out)]) == 130
    monkeypatch.undo()
    assert _state(out) == before and _leftovers(out) == []


def test_a_complete_write_leaves_no_temporaries_and_removes_what_a_kill_left(tmp_path, capsys):
    out = tmp_path / "data"
    (out / "preds.jsonl").parent.mkdir()
    assert main(["data", "synth", *SYNTH, "--out", str(out)]) == 0
    (out / "preds.jsonl").write_text("mine\n")  # a file of the user's beside the dataset stays
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "preds.jsonl", "test", "train", "valid"]
    for stale in (".dataset.k1ll3d.tmp", ".convert.k1ll3d.tmp"):  # a staged write killed (SIGKILL)
        (out / stale / "train").mkdir(parents=True)
        (out / stale / "train" / "text.npy").write_bytes(bytes(64))
    (out / "train.tmp").mkdir()  # what an earlier version's split save left when killed
    for argv in (["data", "synth", *SYNTH, "--out", str(out)], ["data", "convert", str(out), "--out", str(out)]):
        if argv[1] == "convert":  # the same folder is refused; convert a copy of it into --out
            copy = tmp_path / "copy"
            assert main(["data", "synth", *SYNTH, "--out", str(copy)]) == 0
            argv[2] = str(copy)
            (out / ".dataset.k2ll3d.tmp").mkdir()
        assert main(argv) == 0, capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == ["meta.json", "preds.jsonl", "test", "train", "valid"]
    assert (out / "preds.jsonl").read_text() == "mine\n"


def test_a_save_in_python_stages_too_and_leaves_others_temporaries_where_it_holds_nothing(tmp_path):
    """``DataBundle.save`` outside a command (no ``hold``): another process may be writing there, so
    a staging folder it did not make stays; its own is gone."""
    from ramer.config import SynthConfig
    from ramer.data.synthetic import generate

    bundle = generate(SynthConfig(n_train=24, n_valid=12, n_test=12))
    out = tmp_path / "data"
    bundle.save(out)
    other = out / ".dataset.0th3r000.tmp"
    other.mkdir()
    bundle.save(out)
    assert _leftovers(out) == [other.name]
    assert load_native(out).fingerprints() == bundle.fingerprints()


def test_a_folder_of_the_users_holding_ids_json_among_other_files_is_not_a_save_cut_off(tmp_path):
    """Without meta.json, a folder counts as a dataset whose save was cut off only if a sub-folder
    holds what a split save writes and nothing else: a folder of the user's with an ``ids.json``
    beside other files is refused by ``DataBundle.save``, and nothing is written into it."""
    store = random_store(n=4)
    bundle = DataBundle({"train": store, "valid": store, "test": store}, store.label_names, "test", "mem")
    out = tmp_path / "project"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "ids.json").write_text('["a"]')
    (out / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(RamerError, match=rf"{out}: holds mine, which a dataset folder does not"):
        bundle.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["mine"]
