"""Output paths: folders and files a command writes, checked before the work with clear errors."""

from __future__ import annotations

from pathlib import Path

from ramer.errors import RamerError


def check_out_folder(path: str | Path) -> Path:
    """An output folder must be a folder or not exist yet; nor may it lie under a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise RamerError(f"{path}: exists and is not a folder" if p == path else
                                 f"{path}: {p} exists and is not a folder")
            break
    return path


def make_folder(path: str | Path) -> Path:
    """``mkdir -p path`` after ``check_out_folder``; other failures (permissions) as a RamerError."""
    path = check_out_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RamerError(f"{path}: cannot create the folder ({e.strerror})") from None
    return path


def output_file(path: str | Path) -> Path:
    """A file path to write: not empty, not a folder; its folder is made (``make_folder``)."""
    if not str(path):
        raise RamerError("the output file name is empty")
    path = Path(path)
    if path.is_dir():
        raise RamerError(f"{path}: is a folder; give a file name")
    make_folder(path.parent)
    return path
