"""ramer: multi-party, multi-modal, multi-label emotion recognition (RAMer, arXiv 2502.10435)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ramer.version import __version__

__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from ramer.api import load


def __getattr__(name: str):
    """``ramer.load`` is ``ramer.api.load`` (its signature and docstring, for ``help`` and a
    notebook's ``ramer.load?``), imported when first used so that ``import ramer`` stays light."""
    if name == "load":
        from ramer.api import load

        return load
    raise AttributeError(f"module 'ramer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
