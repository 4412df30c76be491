"""How ramer prints for people: text as it is given, its control characters but the line break
written out (``PlainConsole``). No markup (a path or name holding "[v2]" or
"[/]" is neither eaten nor an error), no emoji codes (":100:"), no highlighting, and a line is
never broken at the width (a path in a log stays on one line; print a table with
``soft_wrap=False`` to keep its layout). In a log, long work says how far it is every ``LOG_EVERY``
seconds."""

from __future__ import annotations

import os

from rich.console import Console

from ramer.errors import first_of, shown

PLAIN = dict(markup=False, emoji=False, highlight=False, soft_wrap=True)

# Seconds between the plain lines that say how far long work is (an import's stage, an epoch's steps)
# where the console is not a terminal (a log file, CI), which shows no progress bar.
LOG_EVERY = 30.0


class PlainConsole(Console):
    """rich's ``Console``, printing each string, a table's cells included, with its control characters
    but the line break written out (``errors.shown``: ``\\x1b``): a line names paths given on the
    command line and names read from files, whose ESC would otherwise reach the terminal as a command
    (a colour that stays, a window title)."""

    def render_str(self, text: str, **kwargs):  # rich's: every string printed or in a table's cell
        return super().render_str(printable(text), **kwargs)


def printable(text: str) -> str:
    """``text`` as ``PlainConsole`` prints it, for what goes to stdout without it (``data info``'s
    table): its control characters but the line break written out."""
    return shown(text, keep="\n")


def live(console: Console) -> bool:
    """Whether long work shows live progress bars on ``console`` (a terminal) rather than a plain line
    every ``LOG_EVERY`` seconds (a log file, CI). rich draws bars only where it writes terminal codes
    (``is_terminal``, not a dumb terminal); there, ``TTY_INTERACTIVE`` decides where it is set (``1``
    bars, ``0`` plain lines; read here, as rich before 14 does not), and otherwise the stream must be
    a terminal itself: ``FORCE_COLOR``, which many CI templates set, asks rich for colour and filled a
    log with the bars' redraws."""
    setting = os.environ.get("TTY_INTERACTIVE")
    if setting == "0" or not console.is_terminal or console.is_dumb_terminal:
        return False
    if setting == "1":
        return True
    isatty = getattr(console.file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def plain_console(stderr: bool = True) -> Console:
    """The console for messages and progress where the caller gives none (the Python API)."""
    return PlainConsole(stderr=stderr, **PLAIN)


def plural(n: int, noun: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {noun}{'s' * (n != 1)}"


def names_line(names, shown: int = 6) -> str:
    """Label names for a one-line repr: their count and the first ``shown`` of them."""
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return f"({len(names)}): " + ", ".join(names[:shown]) + more


def labels_phrase(named: list[str], limit: int = 5) -> tuple[str, str]:
    """``("label 'a' (test 3) has", "it")`` or ``("labels 'a', 'b' and 4 more have", "them")``: the
    subject of a note about the labels ``named`` (each as it is to be shown; the first ``limit``)."""
    shown = first_of(named, limit)
    return (f"label {shown} has", "it") if len(named) == 1 else (f"labels {shown} have", "them")
