"""The one exception type the CLI turns into a one-line message and a non-zero exit, and the checks
that say what is wrong with a value read from a file."""

import math
import os
import unicodedata


class RamerError(Exception):
    """A user-facing error: bad input, a bad flag, a missing or corrupt file."""


class InterruptedAfter(KeyboardInterrupt):
    """A Ctrl-C held off until work that could not stop half-way was done (``paths.interrupts_held``):
    raised after it, saying what was done (``done``), so that the caller stops all the same."""

    def __init__(self, done: str):
        super().__init__(done)
        self.done = done


class FileUnreadable(RamerError):
    """A file that exists but the system would not read (no permission, an I/O error): nothing is
    known of its content, so it is no reason to remove or redo anything."""


def unreadable(path, e: OSError) -> FileUnreadable:
    """The error for ``path``, which the system would not read (``e``)."""
    return FileUnreadable(f"{path}: unreadable ({first_line(e)})")


def unwritable(path, e: OSError) -> RamerError:
    """The error for ``path``, which the system would not write (``e``: permissions, a full disk)."""
    return RamerError(f"{path}: cannot write ({e.strerror or first_line(e)})")


def readable(path) -> None:
    """A FileUnreadable naming ``path`` when it exists but cannot be opened for reading (a missing
    file is left to the caller)."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        pass
    except OSError as e:
        raise unreadable(path, e) from None


class ScoresNotFinite(RamerError):
    """A model's scores hold NaN or infinite values (a diverged or damaged model): nothing is computed
    or written from them (``metrics.finite_scores``)."""


class LossNotFinite(RamerError):
    """Training stopped: the loss became NaN or infinite (``ramer tune`` counts such a trial as
    pruned, a bad setting, not as a failure). ``cause`` is the line without ``kept``, what the run
    folder keeps and what to do with it (which a search's note of its trial leaves out)."""

    def __init__(self, cause: str, kept: str = ""):
        super().__init__(cause + kept)
        self.cause = cause


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none (torch's
    ``EOFError`` for an empty file has no message)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def too_many_digits(e: ValueError) -> bool:
    """``e`` is Python's refusal to convert an integer literal of more digits than
    ``sys.get_int_max_str_digits()`` (4300), which the JSON and YAML readers raise as a plain ValueError."""
    return "Exceeds the limit" in str(e) and "digits" in str(e)


# Unicode's bidirectional embeddings, overrides and isolates (category Cf): in a terminal that lays
# out right-to-left text, one in a name shows the rest of its line in another order (a row's names
# and figures swapped). The marks (U+200E, U+200F, U+061C), which names in right-to-left scripts
# may hold, reorder nothing beyond themselves and are no control here.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _is_control(c: str) -> bool:
    return unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS


def control_character(name: str) -> str | None:
    """The first control character of ``name`` (Unicode's category Cc: ESC, a line break, a tab,
    DEL...; and the bidirectional controls, ``BIDI_CONTROLS``) as Python escapes it (``\\x1b``,
    ``\\u202e``), or ``None``. A name is printed to the terminal (tables, timelines, errors): ESC there
    starts a colour, a cursor move or a window title that the file chose, a line break splits a row,
    and a right-to-left override reverses what follows it."""
    for c in name:
        if _is_control(c):
            return repr(c)[1:-1]
    return None


def shown(text: str, keep: str = "") -> str:
    """``text`` with each control character but those in ``keep`` written as ``control_character``
    writes it (``\\x1b``, ``\\n``, ``\\u202e``): an error line names paths and values from files, whose
    ESC would otherwise reach the terminal as a command, and whose line break would split the line."""
    return "".join(repr(c)[1:-1] if c not in keep and _is_control(c) else c for c in text)


def env_count(name: str, default: int) -> int:
    """The whole number in the environment variable ``name`` (``default`` where it is unset or
    empty: ``RANK``, ``WORLD_SIZE``, which torchrun sets for each process it starts); anything else
    is a RamerError naming it, not int()'s traceback."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()):
        raise RamerError(
            f"{name}={value[:40]!r} in the environment: not a whole number (torchrun sets it for each process "
            "it starts; unset it to run one process)"
        )
    return int(value)


def first_of(items, limit: int, total: int | None = None) -> str:
    """``a, b, c and 4 more``: the first ``limit`` of ``items`` (strings as they are to be shown),
    then how many more of ``total`` (default: all of ``items``) there are."""
    shown = list(items[:limit])
    more = (len(items) if total is None else total) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def unprintable_name(names) -> str | None:
    """What makes one of ``names`` unprintable, for errors: an empty name (a legend entry or table
    row of nothing) or one with a control character (``control_character``); ``None`` when each
    prints as itself."""
    for name in names:
        if not name:
            return "holds an empty name (names are printed to the terminal)"
        if (c := control_character(name)) is not None:
            return f"holds {name!r:.60}, a name with the control character {c} (names are printed to the terminal)"
    return None


def is_int(value) -> bool:
    """``value`` is an int, not a bool (JSON's ``true`` reads as Python's True, which is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_whole(value, least: int = 0) -> bool:
    """``value`` is an int (not a bool) of at least ``least``."""
    return is_int(value) and value >= least


def is_number(value) -> bool:
    """``value`` is an int or a float, not a bool (NaN and infinities included)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value) -> bool:
    """``value`` is a finite number (``is_number``)."""
    return is_number(value) and math.isfinite(value)


def is_probability(value) -> bool:
    """``value`` is a number from 0 to 1 (``is_number``)."""
    return is_number(value) and 0 <= value <= 1
