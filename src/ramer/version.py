"""The package's version, which a run's files record (``checkpoint.versions``): one module below
every other, so that recording it imports nothing above (``pyproject.toml`` states it too; a test
holds the two equal); and how a file's recorded version is told apart from this one.
Imports nothing of the package."""

import re

__version__ = "0.1.0"


def _release(version: str) -> tuple[int, ...] | None:
    """The leading numbers of a version ("0.2.0rc1" -> (0, 2, 0)); None where it starts with none."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(x) for x in found.group().split(".")) if found else None


def newer_writer(written: str | None) -> bool:
    """Whether ramer version ``written`` is later than this one."""
    mine, theirs = _release(__version__), _release(written) if written else None
    return mine is not None and theirs is not None and theirs > mine


def version_note(written: str | None) -> str:
    """Which ramer wrote a file and which reads it: "written by ramer 0.2.0, newer than this ramer
    0.1.0: read it with ramer 0.2.0 or later". A file that records none is of a ramer from before
    versions were recorded (or not of ramer)."""
    if not written:
        return f"the file records no ramer version; this is ramer {__version__}"
    if written == __version__:
        return f"written by this ramer version, {__version__}"
    if newer_writer(written):
        return f"written by ramer {written}, newer than this ramer {__version__}: read it with ramer {written} or later"
    return f"written by ramer {written}; this is ramer {__version__}"
