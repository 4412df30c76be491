"""ramer: multi-party, multi-modal, multi-label emotion recognition (RAMer, arXiv 2502.10435)."""

from __future__ import annotations

import importlib
import random as _random
from typing import TYPE_CHECKING

from ramer.version import __version__

# rich, which every command prints through, draws from Python's global random generator when it is
# first imported (rich.style's id counter): imported here, with the generator's state put back, so
# that importing any part of ramer leaves a program's random draws as they were
_state = _random.getstate()
importlib.import_module("rich.style")
_random.setstate(_state)
del _state

__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from ramer.api import load


def __getattr__(name: str):
    """``ramer.load`` is ``ramer.api.load`` (its signature and docstring, for ``help`` and a
    notebook's ``ramer.load?``), imported when first used so that ``import ramer`` stays light; so
    is a submodule named as an attribute (``ramer.infer.apply_missing`` after ``import ramer``)."""
    if name == "load":
        from ramer.api import load

        return load
    if name.isidentifier() and not name.startswith("_"):
        try:
            return importlib.import_module(f"ramer.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"ramer.{name}":  # a module of ramer's that failed to import: say so
                raise
    raise AttributeError(f"module 'ramer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
