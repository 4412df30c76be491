"""Output paths: folders and files a command writes, checked before the work with clear errors, and
written atomically (to a temporary name in the same folder, then renamed over the old file, so a
kill during a write never leaves a half-written file as the latest)."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import glob
import io
import json
import os
import re
import select
import shlex
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no folder locks (``hold``)
    fcntl = None

from ramer.errors import InterruptedAfter, RamerError, first_line, first_of, too_many_digits, unreadable, unwritable


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
    for folder in (path, path.parent) if parent_too else (path,):
        if not folder.is_dir() or any(p.name != LOCK_NAME for p in folder.iterdir()):
            return
        if (folder / LOCK_NAME).exists() and not _remove_stale_lock(folder):
            return  # another command holds the folder now
        try:
            folder.rmdir()
        except OSError:  # a lock file made a moment ago: another command holds the folder now
            return


def _remove_stale_lock(folder: Path) -> bool:
    """Remove the lock file of ``folder`` when nothing holds it (left by a command that was killed);
    whether it is gone. The protocol of ``_unlock``: removed while locked, so a command that opened it
    a moment before finds another file under the name and locks that one."""
    if fcntl is None or os.path.realpath(folder) in _HELD:
        return False
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _unlock(path, fd)
    return not path.exists()


def clear_folder(path: Path) -> None:
    """Remove everything in the folder ``path`` but its lock file (``hold``): work to do again."""
    for p in path.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


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
# The lock file of the command that holds a folder (``hold``): no check of what a folder holds counts it.
LOCK_NAME = ".ramer.lock"


def is_temporary(name: str) -> bool:
    """A name a write in progress (or cut off) uses beside its target: ``.NAME.XXXX.tmp``."""
    return name.startswith(".") and name.endswith(".tmp")


@dataclass
class Held:
    """What ``hold`` yields: ``made``, whether this call made the folder (it did not exist)."""

    made: bool


USE_ANOTHER = "wait for it to end or give another --out"  # what to do about a folder another command holds
# the folders this process holds, each with the thread that holds it (``hold`` again there in that thread
# is a no-op; in another thread, the lock refuses it as it would another process: a second open of the
# lock file is locked apart from the first)
_HELD: dict[str, int] = {}


def _mine(key: str) -> bool:
    """Whether this thread holds the folder of realpath ``key``."""
    return _HELD.get(key) == threading.get_ident()


@contextlib.contextmanager
def hold(folder: str | Path, command: str, make: bool = False, remedy: str = USE_ANOTHER) -> Iterator[Held]:
    """Hold ``folder`` for ``command`` (``ramer train``, ``bench``, ``data synth``...) while the
    context lasts: an exclusive ``flock`` on ``folder/.ramer.lock`` (``LOCK_NAME``), which records the
    pid, host, command and start time, and is removed at the end. Another process holding it is a
    RamerError naming that command and ``remedy``, at once (no waiting). ``make``: make the folder (and its
    parents) first; ``Held.made`` says whether this call made it (``mkdir`` succeeded, so of two
    commands started together only one), and those it made are removed again if left empty.
    Held again in the same process, nothing more happens. Where ``fcntl`` does not exist (Windows)
    nothing is locked: the folder is only made."""
    folder = Path(folder)
    made = make_folders(folder) if make else []
    key = os.path.realpath(folder)
    fd = None
    try:
        if fcntl is not None and not _mine(key):
            fd = _lock(folder, command, remedy)
            _HELD[key] = threading.get_ident()
        yield Held(made=folder in made)
    finally:
        if fd is not None:
            _HELD.pop(key, None)
            _unlock(folder / LOCK_NAME, fd)
        remove_made(made)


def holding(folder: str | Path) -> bool:
    """Whether this thread holds ``folder`` (``hold``): no other ramer command writes there now."""
    return _mine(os.path.realpath(folder))


def on_disk(f) -> None:
    """Flush the open file ``f`` to the disk (fsync) before a later file counts on it: a power cut
    keeps what was synced, not what was written."""
    f.flush()
    os.fsync(f.fileno())


# `ramer ... >&-`: Python's sys.stdout is None (rich prints to nothing then). A command whose output
# is a file names its flag itself (``ramer predict --out -``), before the work.
STDOUT_CLOSED = "stdout: closed; the output has nowhere to go (redirect it to a file)"


def write_stdout(text: str) -> None:
    """``text`` to stdout as it is (JSON, JSON lines: no console between), flushed now, so that a
    stdout the system will not write (a full disk, a closed descriptor), or a character its encoding
    lacks, is a one-line error here. On POSIX the bytes go to the descriptor in a loop of ``os.write``
    (waiting where a parent made it non-blocking): a reader that goes away partway (``| head``) is a
    BrokenPipeError (main: 141), where ``sys.stdout.flush`` drops what a partial write left and the
    command ended 0, its output cut short without a word. ``cli.OUT`` prints through it too."""
    if sys.stdout is None:
        raise RamerError(STDOUT_CLOSED)
    _write_stream("stdout", text)


def write_stderr(text: str) -> None:
    """``text`` to stderr as ``write_stdout`` writes stdout (``cli.ERR`` prints through it): a reader
    that leaves partway (``ramer ... 2>&1 | head``) is a BrokenPipeError (main: 141), not a last print
    cut short without a word. A closed stderr (``2>&-``) takes nothing, as rich's own printing did."""
    if sys.stderr is not None:
        _write_stream("stderr", text)


# ramer's own typographic characters (an empty cell, mean ± std, a folded label), and what a stream
# whose encoding lacks them gets instead: a command whose work is done does not fail on its own dash
ASCII_FALLBACK = str.maketrans({"–": "-", "±": "+/-", "…": "..."})


# A byte of a file name that is not UTF-8 (Latin-1 "été" on Linux), as Python decodes it (os.fsdecode)
NAME_BYTES = re.compile("[\udc80-\udcff]")


def _byte_escape(match: re.Match) -> str:
    return f"\\x{ord(match.group()) - 0xDC00:02x}"


def _first_encodable(tries: list[Callable[[], Any]]) -> Any:
    """The value of the first of ``tries`` that raises no UnicodeEncodeError; the last one's error
    where each does."""
    for attempt in tries[:-1]:
        with contextlib.suppress(UnicodeEncodeError):
            return attempt()
    return tries[-1]()


def _write_stream(name: str, text: str) -> None:
    """``text`` to ``sys.stdout`` or ``sys.stderr`` (``name``); see ``write_stdout``. Where the
    stream's encoding lacks one of ramer's own characters (``ASCII_FALLBACK``), they are written as ASCII;
    a byte of a file name that is not UTF-8 (``NAME_BYTES``) as that byte (to a stream without a
    descriptor: as ``\\xff``); another character it lacks (a label's, a person's) is the error."""
    stream = getattr(sys, name)
    try:
        stream.flush()  # what was printed before goes first
        # the process's own stream (another stream's descriptor, Jupyter's, is the kernel's terminal), on
        # POSIX: on Windows the bytes would bypass the newline translation and a console's own encoding
        own = stream is getattr(sys, f"__{name}__") and os.name == "posix"
        try:
            fd = stream.fileno() if own else None
        except (AttributeError, ValueError, io.UnsupportedOperation):  # a stream without one
            fd = None
        texts = (text, text.translate(ASCII_FALLBACK))
        if fd is None:  # a text stream encodes the whole text before it writes any
            _first_encodable(
                [functools.partial(stream.write, v) for t in texts for v in (t, NAME_BYTES.sub(_byte_escape, t))]
            )
            stream.flush()
        else:
            encoding = getattr(stream, "encoding", None) or "utf-8"
            errors = getattr(stream, "errors", None) or "strict"
            # a file name's bytes that are not text are written back as they are (surrogateescape), as ls does
            encoded = _first_encodable(
                [functools.partial(t.encode, encoding, how) for t in texts for how in (errors, "surrogateescape")]
            )
            view = memoryview(encoded)
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:  # a stream its parent made non-blocking: wait until it takes more
                    select.select([], [fd], [])
    except BrokenPipeError:
        raise  # main: the reader has gone, 141
    except UnicodeEncodeError as e:
        raise RamerError(
            f"{name}: its encoding ({e.encoding}) cannot write {ascii(e.object[e.start : e.end])}; "
            "run the command with PYTHONIOENCODING=utf-8"
        ) from None
    except OSError as e:
        raise unwritable(name, e) from None


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to the file ``path`` (a run's ``metrics.jsonl``) and flush it to
    the disk (``on_disk``). What the system refuses (a full disk, permissions) is a RamerError naming
    ``path``; a line it cut off is the file's last, without its newline, as a kill leaves one, which
    a resumed run drops (``train.recipe.read_log``)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            on_disk(f)
    except OSError as e:
        raise unwritable(path, e) from None


# what ``tempfile.mkstemp`` puts between its prefix and suffix (8 of a-z, 0-9, _): a temporary of
# ``atomic_write``'s own, not any file a user named .NAME.something.tmp (if it ever changed, nothing matches)
_ATOMIC_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def temporary_target(name: str) -> str | None:
    """The file name an ``atomic_write`` temporary named ``name`` (``.NAME.XXXXXXXX.tmp``, mkstemp's
    shape) was written for; None for any other name (a user's own ``.NAME.draft.tmp`` among them)."""
    m = _ATOMIC_TEMPORARY.fullmatch(name)
    return m.group(1) if m else None


def temporary_stem(path: Path) -> str:
    """The part of ``path``'s name that its temporaries carry (``.STEM.XXXXXXXX.tmp``): the whole
    name, or where that would pass the file system's limit on a name (255 bytes, which ``path`` may
    come within 14 of), its first bytes: a long output name is legal, and its temporary is too."""
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such folder yet, or no pathconf (Windows)
        limit = 255
    room = limit - len(".") - len(".XXXXXXXX.tmp")
    raw = os.fsencode(path.name)  # the name's bytes, also where they are not UTF-8
    if len(raw) <= room:
        return path.name
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:  # a name of bytes that are not UTF-8: cut as bytes
        return os.fsdecode(raw[:room])
    return raw[:room].decode("utf-8", errors="ignore")  # whole characters


def remove_temporaries(folder: str | Path, names, holder: str | Path | None = None) -> int:
    """Remove from ``folder`` what writes of ``names`` (file names or glob patterns) cut off by a kill
    left behind (``atomic_write``'s ``.NAME.XXXX.tmp``), when this process holds the folder (``hold``;
    ``holder``: the folder whose lock covers it, such as a dataset's for its cache): no other command
    is writing them now. A command calls it for the files it writes there, so the
    temporaries of a kill do not pile up (a training state's is the size of the model and its
    optimiser); returns how many it removed."""
    holder = folder if holder is None else holder
    if not holding(holder) or not Path(os.path.realpath(folder)).is_relative_to(os.path.realpath(holder)):
        return 0  # not held, or a link out of the held folder (a cache shared with other datasets)
    removed = 0
    for name in names:
        for p in Path(folder).glob(f".{name}.*.tmp"):
            target = temporary_target(p.name)
            if target is not None and fnmatch.fnmatchcase(target, name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def _remove_cut_off(path: Path) -> None:
    """Remove what killed writes of ``path`` left beside it (``atomic_write``'s ``.NAME.XXXX.tmp``)
    and no process is writing now: those whose lock it takes (``_locked_temporary``). For a folder no
    command of this process holds (``ramer demo``'s --out; ``ramer tune``'s, which a study's processes
    share), where ``remove_temporaries`` removes nothing; without locks (Windows) nothing either. A
    temporary is removed while locked: a write that made it a moment before, and locks it after,
    finds it gone and makes another."""
    if fcntl is None:
        return
    stem = temporary_stem(path)
    try:
        left = list(path.parent.glob(f".{glob.escape(stem)}.*.tmp"))
    except OSError:  # a folder that can be written, not listed
        return
    for p in left:
        if temporary_target(p.name) != stem or not p.is_file() or p.is_symlink():
            continue  # a user's own .NAME.draft.tmp in their --out folder is theirs: only mkstemp's names
        try:
            fd = os.open(p, os.O_RDWR | os.O_NOFOLLOW)  # for writing: NFS locks a file so opened
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(p).st_ino == os.fstat(fd).st_ino:  # not another file under the name since
                os.unlink(p)
        except OSError:  # locked: being written; or gone
            pass
        finally:
            os.close(fd)


def _locked_temporary(path: Path) -> tuple[int | None, str]:
    """A new temporary beside ``path`` (``.NAME.XXXX.tmp``), locked (``flock``) where the system has
    locks: its open descriptor (to close once it is renamed) and its name. ``_remove_cut_off`` leaves
    a locked temporary alone; one it removed between its making here and its lock is made again."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{temporary_stem(path)}.", suffix=".tmp", dir=path.parent)
        if fcntl is None:
            os.close(fd)
            return None, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        except OSError:  # a file system without locks: written unlocked, as before, and none is removed there
            return fd, tmp
        os.close(fd)


def _under_held(folder: Path) -> bool:
    """Whether ``folder`` is one this thread holds (``hold``), or lies in one."""
    real = Path(os.path.realpath(folder))
    return any(real.is_relative_to(held) for held in list(_HELD) if _mine(held))


@contextlib.contextmanager
def signal_answered_by(signum: int, handler: Callable) -> Iterator[None]:
    """``handler(signum, frame)`` answers the signal ``signum`` while the block runs; the handler found
    is put back after (the default where it was not set from Python). Outside the main thread signals
    are not ours to handle: nothing changes."""
    import signal

    try:
        previous = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        installed = False
    else:
        installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def interrupts_held(done: str) -> Iterator[None]:
    """Ctrl-C held off while the block runs: for the last steps of work that is done once they begin
    (a dataset's swap into its folder, and the clean-up after it). A Ctrl-C that came is raised when
    the block has ended, as ``InterruptedAfter`` saying what was ``done``: the caller (a command, a
    script's loop of saves) stops all the same, the work whole. Where SIGINT is ignored (a background
    job's), nothing changes."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    came = []
    with signal_answered_by(signal.SIGINT, lambda signum, frame: came.append(signum)):
        yield
    if came:
        raise InterruptedAfter(done)


def remove_made(made: list[Path]) -> None:
    """Remove the folders ``make_folders`` made (``made``) that are left empty, deepest first; one
    not empty stops it (a ``runs/`` made for a refused command does not stay behind)."""
    for p in reversed(made):
        try:
            p.rmdir()
        except OSError:
            break


def make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; the ones this call made (``mkdir`` succeeded)."""
    check_out_folder(folder)
    made = []
    for p in reversed((folder, *folder.parents)):
        if p.is_dir():
            continue
        try:
            p.mkdir()
            made.append(p)
        except FileExistsError:
            continue  # made by another process just now: not ours
        except OSError as e:
            raise RamerError(f"{folder}: cannot create the folder ({e.strerror})") from None
    return made


def _lock(folder: Path, command: str, remedy: str = USE_ANOTHER) -> int:
    """Take the lock of ``folder`` (``hold``); returns the open lock file."""
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RamerError(f"{folder}: cannot create its lock file {LOCK_NAME} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another holds it
            os.close(fd)
            raise RamerError(in_use(folder, remedy)) from None
        except OSError:  # a file system without locks (some network mounts): held unlocked, as without fcntl
            pass
        try:  # the file may have been removed by its holder between our open and our lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
    except OSError as e:  # a full disk: a full one is often met at the next command, here
        _unlock(path, fd)
        raise RamerError(f"{folder}: cannot write its lock file {LOCK_NAME} ({e.strerror or first_line(e)})") from None
    return fd


def _unlock(path: Path, fd: int) -> None:
    """Remove the lock file ``path`` (if it is still ours), then let go of it."""
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def held_elsewhere(folder: str | Path, remedy: str = USE_ANOTHER) -> str | None:
    """``in_use``'s message (ending in ``remedy``) where another command holds ``folder`` now, else
    None; a look, nothing kept, before checks whose advice a held folder makes wrong (``use
    --resume`` of a run that is still training there; "unknown dataset folder" of a dataset that
    is being written)."""
    folder = Path(folder)
    if fcntl is None or _mine(os.path.realpath(folder)):
        return None
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:  # none: nothing holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return in_use(folder, remedy)
    except OSError:  # a file system without locks: nothing to look at
        return None
    finally:
        os.close(fd)  # which lets go of the lock it took
    return None


def in_use(folder: Path, remedy: str = USE_ANOTHER) -> str:
    """The message for a ``folder`` another command holds, from what its lock file says, and what to
    do (``remedy``)."""
    try:
        holder = json.loads((folder / LOCK_NAME).read_text())
        who = (
            f"{holder['command']}, pid {holder['pid']} on {holder['host']}, "
            f"since {time.strftime('%H:%M', time.localtime(holder['since']))}"
        )
    except (OSError, ValueError, KeyError, TypeError):  # written a moment later
        who = "just starting"
    return f"{folder}: in use by another ramer command ({who}); {remedy}"


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
    ``WORK_MARKERS`` key): it holds another kind's work, or is a part of one, a split (or the cache)
    folder of a dataset or a trial folder of a study (for other than a run). ``None`` when it may."""
    path = Path(path)
    parent = path.parent
    if path.name in ("train", "valid", "test", "cache") and (parent / "meta.json").is_file():
        return f"{path}: a folder of the dataset {parent} (its meta.json), not {kind} work; give another --out"
    if kind != "run" and re.fullmatch(r"trial-\d+", path.name) and (parent / "study.db").exists():
        return f"{path}: a trial folder of the study in {parent}, not {kind} work; give another --out"
    if not path.is_dir():
        return None
    for other, groups in WORK_MARKERS.items():
        found = next((g for g in groups if all((path / name).exists() for name in g)), None)
        if found and other != kind:
            article = "an" if other[0] in "aeiou" else "a"
            return f"{path}: holds {article} {other} ({', '.join(found)}), not {kind} work; give another --out"
    return None


def work_folder(path: str | Path, kind: str, make: bool = True) -> Path:
    """``make_folder`` for the ``--out`` of a command whose work is of ``kind``, after refusing a
    folder that holds another kind's work (``other_work``); ``make=False``: the check only (the
    caller makes it with ``make_folders`` or ``hold``, to remove what it made if nothing is written)."""
    path = check_out_folder(path)
    why = other_work(path, kind)
    if why:
        raise RamerError(why)
    return make_folder(path) if make else path


def resolved(path: str | Path) -> Path:
    """``Path(path).resolve()``, where a loop of symbolic links is a RamerError naming the path
    (Python 3.11 raises RuntimeError for it, later ones OSError)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        if isinstance(e, OSError) and e.errno != errno.ELOOP:
            raise
        raise RamerError(f"{path}: a loop of symbolic links") from None


def _names(path: str | Path, target: Path) -> bool:
    """Whether ``path`` is the file ``target`` (resolved); a name this system's file names cannot
    hold (a table path meta.json records, under LC_ALL=C) is no file here, so not it."""
    try:
        return resolved(path) == target
    except UnicodeEncodeError:
        return False


def output_file(path: str | Path, reads: tuple = (), data_from: tuple = (), make: bool = True) -> Path:
    """A file path to write: not empty, not a folder (nor a name ending in ``/`` or ``/.``, which names one),
    not one of the files the command reads
    (``reads``) or its data was read or imported from (``data_from``), nor a file of a run or a
    dataset (writing there would destroy what the output is made from); its folder is made
    (``make_folder``), or with ``make=False`` only checked (``check_out_folder``: the caller makes it
    with ``file_folder``, which removes what it made when the command fails)."""
    if not str(path):
        raise RamerError("the output file name is empty")
    if os.path.basename(str(path)) in ("", ".", ".."):  # DIR/, DIR/.: Path() drops the end, not the folder it names
        raise RamerError(f"{path}: names a folder, not a file; give a file name")
    path = Path(path)
    if path.is_dir():
        raise RamerError(f"{path}: is a folder; give a file name")
    target = resolved(path)
    named = [("a file this command reads", r) for r in reads] + [("the file the data comes from", r) for r in data_from]
    whose = next((f"{what} ({r})" for what, r in named if r and _names(r, target)), None)
    if whose is None and target.name in RUN_FILES and (target.parent / "config.yaml").is_file():
        whose = f"a file of the run in {path.parent}"
    if whose is None and target.exists():  # meta.json, or a file of a split folder
        home = target.parent.parent if target.parent.name in SPLITS else target.parent
        if (home / "meta.json").is_file() and (target.name == "meta.json" or home != target.parent):
            whose = f"a file of the dataset in {home}"
    if whose:
        raise RamerError(f"{path}: is {whose}; writing there would destroy it, give another file name")
    if make:
        make_folder(path.parent)
    else:
        check_out_folder(path.parent)
    return path


@contextlib.contextmanager
def file_folder(path: str | Path) -> Iterator[None]:
    """The folder of the output file ``path`` and its missing parents, made for the work of the
    context (``make_folders``); those it made are removed again where left empty (``remove_made``): a
    command that fails before it writes the file (``ramer predict nothere --out new/p.jsonl``)
    leaves no folder behind."""
    made = make_folders(Path(path).parent)
    try:
        yield
    finally:
        remove_made(made)


def dataset_folder(path: str | Path) -> Path:
    """The ``--out`` folder of a command that writes a dataset: new, empty, or holding only what
    such a command writes (a dataset written before, perhaps cut off, which is written over).
    Anything else there (a run, a corpus, other files) is refused before the work, unless the
    folder is a dataset already (``meta.json``): files of the user's there are left as they are."""
    path = check_out_folder(path)
    if path.is_dir():
        other = sorted(
            p.name
            for p in path.iterdir()
            if p.name not in DATASET_ENTRIES and p.name != LOCK_NAME and not is_temporary(p.name)
        )
        if (path / "meta.json").is_file():
            other = [name for name in other if name in RUN_FILES]
        if other:
            raise RamerError(
                f"{path}: holds {first_of(other, 3)}, which a dataset folder does not; give a new or empty folder "
                "(a dataset folder written before is written over)"
            )
    return path


def umask() -> int:
    """The process's umask (what a new file's or folder's mode leaves out)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync it, then rename it to ``path``; on failure remove the temp.

    A new file gets the permissions the umask gives, a file written over keeps its own (a private
    ``chmod 600`` export stays private; a read-only one is replaced all the same, as the rename
    needs only the folder's permission). A symbolic link is followed (its target is written, the
    link kept); a path that is not a regular file (a FIFO, ``/dev/stdout``) is written to directly,
    as a shell redirection would, not replaced.
    What the system refuses (permissions, a full disk) is a RamerError naming ``path``; the file
    there before is left as it was; a Ctrl-C is a KeyboardInterrupt, also where the writer failed on
    its way out of it (raising an error of its own). The temporary is locked while it is written; what
    killed writes of ``path`` left, unlocked, is removed first where no command of this process holds
    the folder (``_remove_cut_off``)."""
    path = Path(path)
    try:
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            write(str(path))
            return
        if path.is_symlink():
            path = Path(os.path.realpath(path))
        if not _under_held(path.parent):  # a held folder's command removes them (remove_temporaries)
            _remove_cut_off(path)
        # as a plain open() would leave it: a file there keeps its permissions, a new one gets the
        # umask's (mkstemp makes the temporary private)
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~umask()
        fd, tmp = _locked_temporary(path)
    except OSError as e:
        raise unwritable(path, e) from None
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # last: a read-only mode (0444) would stop the writer and the fsync; a writer may also have made
        # the file anew, private (safetensors' save_file does)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e.__context__, KeyboardInterrupt) and not isinstance(e, KeyboardInterrupt):
            # a writer that failed on its way out of a Ctrl-C (torch.save's zip writer: 'unexpected pos')
            raise e.__context__ from None
        if (refused := _refusal(e)) is not None:
            raise unwritable(path, refused) from None
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _refusal(e: BaseException) -> OSError | None:
    """The system's refusal (permissions, a full disk, a file-size limit) behind a writer's error
    ``e``: ``e`` itself, the OSError that torch.save's zip writer fails on its way out of ('unexpected
    pos', raised while handling it), or the one safetensors' writer names ('I/O error: ... (os error
    28)'); None for any other error."""
    if isinstance(e, OSError):
        return e
    if type(e).__name__ == "SafetensorError" and (code := re.search(r"\(os error (\d+)\)", str(e))):
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
    if isinstance(e, RuntimeError) and "unexpected pos" in str(e) and isinstance(e.__context__, OSError):
        return e.__context__
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")  # not the locale's (cp1252 on Windows)

    atomic_write(path, write)


def is_plain_name(name) -> bool:
    """Whether ``name`` (a split's folder, a MEmoR clip's files) names one entry inside a folder, on
    any system: text, not empty, ``.`` or ``..``, and without ``/``, ``\\``, NUL or ``:`` (on Windows
    ``D:x`` is a path on another drive, ``x:y`` a file's alternate stream)."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0:")


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


def not_a_regular_file(path: Path) -> str | None:
    """What ``path`` is when something other than a regular file is there (``None``: a regular file,
    or nothing): a pipe would make a read wait for ever and a device such as ``/dev/zero`` never end."""
    if path.is_file() or not (path.exists() or path.is_symlink()):
        return None
    if path.is_dir():
        return "is a folder, expected a file"
    if not path.exists():
        return "is a symbolic link that leads to no file (a loop, or its target is gone)"
    return "is not a regular file (a pipe, socket or device), expected a file"


def shell_quote(text: str) -> str:
    """``text`` as one argument of a shell line to paste (``shlex.quote``). A text no quotes carry as
    it is (a control character, a byte of a file name that is not UTF-8, ``NAME_BYTES``) in the
    ``$'...'`` form of bash and zsh, such characters as the ``\\xNN`` of their bytes."""
    if text.isprintable():
        return shlex.quote(text)
    body = "".join(_shell_escaped(c) for c in text)
    return f"$'{body}'"


def _shell_escaped(c: str) -> str:
    """``c`` inside ``$'...'``: a quote or backslash after a backslash, printable ASCII as it is,
    anything else as the ``\\xNN`` of its bytes."""
    if c in "'\\":
        return "\\" + c
    if c.isascii() and c.isprintable():
        return c
    return "".join(f"\\x{b:02x}" for b in os.fsencode(c))


def shell_join(parts: list[str]) -> str:
    """``parts`` as a shell line to paste, each quoted by ``shell_quote``."""
    return " ".join(shell_quote(p) for p in parts)


def argument(path: str | Path) -> str:
    """``path`` as a command's argument in a line to paste: a relative path that starts with ``-``
    (``--out=-run``) as ``./-run``, which no parser takes for an option. Quote it (``shell_quote``)."""
    text = str(path)
    return f"./{text}" if text.startswith("-") else text


def need_regular_file(path: Path) -> None:
    """A RamerError naming ``path`` when something other than a regular file is there
    (``not_a_regular_file``); nothing there is the reader's affair."""
    if (what := not_a_regular_file(path)) is not None:
        raise RamerError(f"{path}: {what}")


def read_json(path: str | Path):
    """The value of a JSON file; a RamerError naming the file when it is missing, unreadable or not JSON."""
    path = Path(path)
    text = read_text(path)
    try:
        return loads_json(text)
    except json.JSONDecodeError as e:
        raise RamerError(f"{path}: not valid JSON ({e})") from None


class UnreadableJson(json.JSONDecodeError):
    """JSON that is well formed but that the parser cannot hold (nested deeper than it recurses, an
    integer of more digits than Python converts); it has no position worth naming."""

    def __str__(self) -> str:
        return self.msg


def loads_json(text: str | bytes):
    """``json.loads``, with a document nested deeper than the parser's recursion (``[[[[...]]]]``),
    or an integer of more digits than Python converts (4300), reported as a ``json.JSONDecodeError``
    ("nested too deeply", "an integer of more than 4300 digits"), as any other malformed text is."""
    doc = text if isinstance(text, str) else ""
    try:
        return json.loads(text)
    except RecursionError:
        raise UnreadableJson("nested too deeply", doc, 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:
        if not too_many_digits(e):
            raise
        raise UnreadableJson(f"an integer of more than {sys.get_int_max_str_digits()} digits", doc, 0) from None
