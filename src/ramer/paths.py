"""Output paths: folders and files a command writes, checked before the work with clear errors, and
written atomically (to a temporary name in the same folder, then renamed over the old file, so a
kill during a write never leaves a half-written file as the latest)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from ramer.errors import RamerError, first_line, unreadable, unwritable


def check_out_folder(path: str | Path) -> Path:
    """An output folder must be a folder or not exist yet; nor may it lie under a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise RamerError(
                    f"{path}: exists and is not a folder" if p == path else f"{path}: {p} exists and is not a folder"
                )
            break
    return path


def remove_if_empty(path: Path, parent_too: bool = False) -> None:
    """Remove ``path`` when it is an empty folder (made for work that wrote nothing into it); with
    ``parent_too``, its parent as well when that is left empty (a ``runs/`` made for it)."""
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if parent_too and not any(path.parent.iterdir()):
            path.parent.rmdir()


def make_folder(path: str | Path) -> Path:
    """``mkdir -p path`` after ``check_out_folder``; other failures (permissions) as a RamerError."""
    path = check_out_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RamerError(f"{path}: cannot create the folder ({e.strerror})") from None
    return path


# What a run folder holds (``ramer train``) and what a dataset folder holds (``ramer data synth``,
# ``convert`` and ``import``: the split folders, ``meta.json`` written last, the import's cache).
RUN_FILES = ("config.yaml", "model.safetensors", "train_state.pt", "metrics.jsonl", "test_metrics.json")
SPLITS = ("train", "valid", "test")
DATASET_ENTRIES = ("meta.json", "meta.json.tmp", "cache", *SPLITS, *(f"{s}.tmp" for s in SPLITS))


# What marks a folder as another command's work (its top level): any one group of names, all there.
# A command that makes a folder of one kind refuses one that holds another kind's, so their files
# never mix; a user's own report.md or meta.json alone marks nothing.
WORK_MARKERS = {
    "dataset": (("meta.json", "train"), ("meta.json", "test")),
    "run": (("model.safetensors",), ("train_state.pt",), ("test_metrics.json",)),
    "study": (("study.db",), ("tune.json",)),
    "bench": (("report.md", "results.json"),),
    "reproduction": (("results.md", "results.json"),),
    "demo": (("demo.json",),),
}


def other_work(path: str | Path, kind: str) -> str | None:
    """Why ``path`` may not be the ``--out`` of a command whose work is of ``kind`` (a
    ``WORK_MARKERS`` key): it holds another kind's work. ``None`` when it may (or does not exist)."""
    path = Path(path)
    if not path.is_dir():
        return None
    for other, groups in WORK_MARKERS.items():
        found = next((g for g in groups if all((path / name).exists() for name in g)), None)
        if found and other != kind:
            article = "an" if other[0] in "aeiou" else "a"
            return f"{path}: holds {article} {other} ({', '.join(found)}), not {kind} work; give another --out"
    return None


def work_folder(path: str | Path, kind: str) -> Path:
    """``make_folder`` for the ``--out`` of a command whose work is of ``kind``, after refusing a
    folder that holds another kind's work (``other_work``)."""
    path = check_out_folder(path)
    why = other_work(path, kind)
    if why:
        raise RamerError(why)
    return make_folder(path)


def output_file(path: str | Path, reads: tuple = (), data_from: tuple = ()) -> Path:
    """A file path to write: not empty, not a folder, not one of the files the command reads
    (``reads``) or its data was read or imported from (``data_from``), nor a file of a run or a
    dataset (writing there would destroy what the output is made from); its folder is made
    (``make_folder``)."""
    if not str(path):
        raise RamerError("the output file name is empty")
    path = Path(path)
    if path.is_dir():
        raise RamerError(f"{path}: is a folder; give a file name")
    target = path.resolve()
    named = [("a file this command reads", r) for r in reads] + [("the file the data comes from", r) for r in data_from]
    whose = next((f"{what} ({r})" for what, r in named if r and Path(r).resolve() == target), None)
    if whose is None and target.name in RUN_FILES and (target.parent / "config.yaml").is_file():
        whose = f"a file of the run in {path.parent}"
    if whose is None and target.exists():  # meta.json, or a file of a split folder
        home = target.parent.parent if target.parent.name in SPLITS else target.parent
        if (home / "meta.json").is_file() and (target.name == "meta.json" or home != target.parent):
            whose = f"a file of the dataset in {home}"
    if whose:
        raise RamerError(f"{path}: is {whose}; writing there would destroy it, give another file name")
    make_folder(path.parent)
    return path


def dataset_folder(path: str | Path) -> Path:
    """The ``--out`` folder of a command that writes a dataset: new, empty, or holding only what
    such a command writes (a dataset written before, perhaps cut off, which is written over).
    Anything else there (a run, a corpus, other files) is refused before the work, unless the
    folder is a dataset already (``meta.json``): files of the user's there are left as they are."""
    path = check_out_folder(path)
    if path.is_dir():
        other = sorted(p.name for p in path.iterdir() if p.name not in DATASET_ENTRIES)
        if (path / "meta.json").is_file():
            other = [name for name in other if name in RUN_FILES]
        if other:
            shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
            raise RamerError(
                f"{path}: holds {shown}, which a dataset folder does not; give a new or empty folder "
                "(a dataset folder written before is written over)"
            )
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync it, then rename it to ``path``; on failure remove the temp.

    A symbolic link is followed (its target is written, the link kept); a path that is not a regular
    file (a FIFO, ``/dev/stdout``) is written to directly, as a shell redirection would, not replaced.
    What the system refuses (permissions, a full disk) is a RamerError naming ``path``; the file
    there before is left as it was."""
    path = Path(path)
    try:
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            write(str(path))
            return
        if path.is_symlink():
            path = Path(os.path.realpath(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise unwritable(path, e) from None
    os.close(fd)
    try:
        mode = 0o666 & ~_umask()  # as a plain open() would create it (mkstemp makes it private)
        os.chmod(tmp, mode)
        write(tmp)
        os.chmod(tmp, mode)  # again: a writer may make the file anew (safetensors' save_file does, private)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise unwritable(path, e) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(path, write)


def read_text(path: str | Path) -> str:
    """The UTF-8 text of a file; a RamerError naming it when it is missing, a folder, unreadable or
    not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise RamerError(f"{path}: is a folder, expected a file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RamerError(f"{path}: not found") from None
    except OSError as e:
        raise unreadable(path, e) from None
    except UnicodeDecodeError as e:
        raise RamerError(f"{path}: not UTF-8 text ({first_line(e)})") from None


def read_json(path: str | Path):
    """The value of a JSON file; a RamerError naming the file when it is missing, unreadable or not JSON."""
    path = Path(path)
    text = read_text(path)
    try:
        return loads_json(text)
    except json.JSONDecodeError as e:
        raise RamerError(f"{path}: not valid JSON ({e})") from None


class NestedTooDeeply(json.JSONDecodeError):
    """JSON nested deeper than the parser recurses; it has no position worth naming."""

    def __str__(self) -> str:
        return self.msg


def loads_json(text: str | bytes):
    """``json.loads``, with a document nested deeper than the parser's recursion (``[[[[...]]]]``)
    reported as a ``json.JSONDecodeError`` ("nested too deeply"), as any other malformed text is."""
    try:
        return json.loads(text)
    except RecursionError:
        raise NestedTooDeeply("nested too deeply", text if isinstance(text, str) else "", 0) from None
