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

__all__ = ["__version__", "load", "load_data_for", "Predictor", "RunNotFinished"]
API = tuple(__all__[1:])  # ramer.api's, imported when first used

if TYPE_CHECKING:
    from ramer.api import Predictor, RunNotFinished, load, load_data_for


def __getattr__(name: str):
    """``ramer.load`` is ``ramer.api.load`` (its signature and docstring, for ``help`` and a
    notebook's ``ramer.load?``), as are ``load_data_for``, ``Predictor`` and ``RunNotFinished``,
    imported when first used so that ``import ramer`` stays light; so is a submodule named as an
    attribute (``ramer.infer.apply_missing`` after ``import ramer``)."""
    if name in API:
        from ramer import api

        return getattr(api, name)
    if name.isidentifier() and not name.startswith("_"):
        try:
            return importlib.import_module(f"ramer.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"ramer.{name}":  # a module of ramer's that failed to import: say so
                raise
    raise AttributeError(f"module 'ramer' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The package's names (not the modules this file imports for itself)."""
    return sorted({*(n for n in globals() if n.startswith("__")), *__all__})
