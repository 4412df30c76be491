"""Read pickles and ``torch.save`` files without running code from them.

The public benchmark releases are pickles (MulT's MOSEI, M3ED) or ``torch.save`` files (the
aligned MOSEI file, CARAT's M3ED file, MEmoR's per-clip visual features). Unpickling calls any
function a file names, so both kinds go through one allow-list:

- numpy arrays, dtypes and scalars (numpy's reconstruct helpers under both the numpy 1.x
  ``numpy.core`` and the numpy 2.x ``numpy._core`` module paths),
- ``collections.OrderedDict``, ``argparse.Namespace``,
- plain builtins: list, dict, tuple, set, frozenset, str, bytes, bytearray, int, float, complex,
  bool (never ``eval``, ``exec``, ``open``, ``getattr``, ``__import__``, ...),
- and no constructor that takes a bare size: ``bytes(n)``, ``bytearray(n)``, ``numpy.ndarray(shape)``
  and a non-empty ``_reconstruct`` shape are refused (a few bytes of pickle could ask for 100 GB:
  ``numpy.ndarray`` resolves to a stand-in that ``_reconstruct`` takes as the class); an array's
  state (BUILD) must hold exactly its shape's content, as numpy's own pickles do, and a numpy
  scalar its item's bytes (``_PendingArray``, ``_checked_scalar``); a pickle that still asks for
  more memory than there is (a huge length field) is a ``RamerError`` too,
- inside ``torch.save`` files, additionally torch's own tensor types (torch's ``weights_only``
  allow-list).

Anything else is refused with a ``RamerError`` naming the class and the file, before it is called.

- raw pickles: a ``pickle.Unpickler`` whose ``find_class`` resolves only the allow-list;
- ``torch.save`` files that hold tensors (and legacy, non-zip ones): ``torch.load(weights_only=True)``
  with the numpy/argparse entries above added as torch "safe globals"
  (``torch.serialization.safe_globals``);
- ``torch.save`` zip files without tensors (the MOSEI and CARAT files: numpy only): their
  ``data.pkl`` is streamed out of the archive through the same restricted unpickler, which peaks
  at about 1.4x the file size where ``torch.load`` peaks at about 2.4x (it reads the whole pickle
  into memory and unpickles it in Python). The first torch class or tensor storage met sends the
  file to ``torch.load(weights_only=True)`` instead.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import copyreg
import io
import math
import pickle
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ramer.errors import RamerError, first_line, unreadable

__all__ = ["safe_load", "safe_pickle_loads", "is_torch_file", "refuse_compressed", "ALLOWED_GLOBALS", "ZIP_ERRORS"]

# The first object of a legacy (pre-1.6, non-zip) torch.save file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy.(_)core.multiarray._reconstruct
_scalar = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
_frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (protocol 5)


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as numpy's protocol-2 pickles use it: str -> bytes, latin-1 only."""
    try:
        latin1 = isinstance(obj, str) and codecs.lookup(encoding).name in ("latin-1", "iso8859-1")
    except (LookupError, TypeError):  # no such encoding (a damaged name), or not a string
        latin1 = False
    if not latin1:
        raise pickle.UnpicklingError(f"_codecs.encode called with {type(obj).__name__}, {str(encoding)[:40]!r}")
    return obj.encode(encoding, errors)


def _refuse_non_empty(what: str, shape: Any) -> None:
    """A pickled array is made empty and then filled from its state; a non-empty ``shape`` would
    allocate memory the file does not hold (a few bytes could ask for 100 GB), so it is refused."""
    try:
        size = math.prod(int(d) for d in (shape if isinstance(shape, tuple) else (shape,)))
    except (TypeError, ValueError):
        raise pickle.UnpicklingError(f"{what} with shape {str(shape)[:60]}") from None
    if size != 0:
        raise pickle.UnpicklingError(f"{what} asks for a non-empty array of shape {str(shape)[:60]}")


# Bytes per element of a dtype that holds objects (8 for dtype=object; a record of a few fields):
# numpy allocates the shape times this before it reads the one-item-per-element list, so a record
# dtype ``[("a", "O", (10**7,))]`` would make a pickle of about 300 bytes allocate 80 MB
OBJECT_ITEM_BYTES = 256


def _check_array_state(state: Any) -> None:
    """Refuse an array state (``ndarray.__setstate__``, the BUILD after ``_reconstruct``) that does
    not hold its whole content. numpy's own pickles give ``(version, shape, dtype, is_fortran,
    data)`` with ``data`` a list of exactly ``prod(shape)`` items for a dtype holding objects, else
    ``prod(shape) * itemsize`` bytes. numpy checks the bytes, but for a list it allocates the shape
    first and reads the list without a bound: a short list crashes the process (a 208-byte pickle),
    and a large shape allocates (8 GB for ``(10**5, 10**4)``) before it fails."""
    if type(state) is not tuple or len(state) not in (4, 5):
        raise pickle.UnpicklingError(f"numpy array state is a {type(state).__name__}, not numpy's 5-tuple")
    shape, dtype, data = state[-4], state[-3], state[-1]
    try:
        size = math.prod(shape)  # an int only when each dimension is one (not a float, not np.int64)
    except TypeError:
        size = None
    if type(shape) is not tuple or type(size) is not int or min(shape, default=0) < 0:
        raise pickle.UnpicklingError(f"numpy array state with shape {str(shape)[:60]}")
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"numpy array state with dtype {str(dtype)[:40]}")
    if dtype.hasobject:  # numpy's tolist(): one item per element
        if dtype.itemsize > OBJECT_ITEM_BYTES:  # allocated per item before the list is read
            raise pickle.UnpicklingError(
                f"numpy array of dtype {str(dtype)[:60]}: {dtype.itemsize} bytes per element holding objects "
                f"(at most {OBJECT_ITEM_BYTES}: a record of a few fields)"
            )
        if type(data) is not list or len(data) != size:
            held = f"{len(data)} items" if type(data) is list else f"a {type(data).__name__}"
            raise pickle.UnpicklingError(
                f"numpy array of shape {str(shape)[:60]} and dtype {dtype} with {held} (it needs {size} items)"
            )
        for i, x in enumerate(data):  # arrays among the items reach numpy as arrays, as before
            if type(x) is _PendingArray:
                data[i] = x.array
            elif type(x) not in _LEAVES:
                _resolve(data)
                break
        return
    if isinstance(data, (bytes, str)):  # str: a Python 2 pickle read as latin-1
        held = len(data)
    else:
        try:
            held = memoryview(data).nbytes
        except TypeError:
            raise pickle.UnpicklingError(f"numpy array state with data of type {type(data).__name__}") from None
    if held != size * dtype.itemsize:
        raise pickle.UnpicklingError(
            f"numpy array of shape {str(shape)[:60]} and dtype {dtype} with {held} bytes "
            f"(it needs {size * dtype.itemsize})"
        )


class _PendingArray:
    """What a pickle gets where numpy gives an array (``_reconstruct``, ``_frombuffer``,
    ``ndarray(())``): the array, held until the load ends. A BUILD calls ``__setstate__`` on the
    object a pickle made, from C (``pickle.Unpickler`` offers no hook there) or from torch's
    weights-only unpickler (for the types among its safe globals, where this class is listed in
    place of ``numpy.ndarray``); here the state is checked (``_check_array_state``) before numpy
    sees it. Once loaded, each one is replaced by its array (``_resolve``): the loaders get the very
    arrays numpy made, plain ``np.ndarray``."""

    __slots__ = ("array",)
    __hash__ = None  # type: ignore[assignment]  # like an array: no dict key or set member

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __setstate__(self, state: Any) -> None:
        _check_array_state(state)
        self.array.__setstate__(state)


def _ndarray(*args: Any, **kwargs: Any) -> Any:
    """What a pickle gets for ``numpy.ndarray``: the class is only ever passed to ``_reconstruct``
    (translated back there), never called by numpy's own pickles; called, ``ndarray(shape)``
    allocates that shape, so only an empty one is allowed."""
    _refuse_non_empty("numpy.ndarray", args[0] if args else kwargs.get("shape"))
    return _PendingArray(np.ndarray(*args, **kwargs))


_ndarray.__name__ = _ndarray.__qualname__ = "ndarray"
_CLASS_OF = {_ndarray: np.ndarray}  # the allow-list's stand-in -> the class it stands for


def _checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """numpy's ``_reconstruct``: a pickled array is made empty (shape ``(0,)``) and then filled from
    its state; a non-empty shape is refused (``_refuse_non_empty``), the state is checked
    (``_PendingArray``)."""
    _refuse_non_empty("_reconstruct", shape)
    return _PendingArray(_reconstruct(_CLASS_OF.get(subtype, subtype), shape, dtype))


def _checked_frombuffer(*args: Any) -> Any:
    """numpy's ``_frombuffer`` (protocol 5): the array views the pickle's bytes; held like the
    others so that a BUILD on it is checked too."""
    return _PendingArray(_frombuffer(*args))


def _checked_scalar(dtype: Any, *data: Any) -> Any:
    """numpy's ``scalar(dtype, data)``: numpy's own pickles pass the item's bytes, exactly
    ``dtype.itemsize`` of them; without them numpy allocates a zeroed item of ``dtype.itemsize``
    bytes (``V2000000000``: 2 GB from nothing in the file), so only that call is allowed (a str:
    a Python 2 pickle read as latin-1)."""
    item = data[0] if len(data) == 1 else None
    if not isinstance(dtype, np.dtype) or not isinstance(item, (bytes, str)) or len(item) != dtype.itemsize:
        given = (
            "without data"
            if not data
            else f"with {len(data)} data arguments"
            if len(data) > 1
            else f"with {len(item)} bytes"
            if isinstance(item, (bytes, str))
            else f"with data of type {type(item).__name__}"
        )
        need = f"{dtype.itemsize} bytes" if isinstance(dtype, np.dtype) else "a dtype"
        raise pickle.UnpicklingError(f"numpy scalar of dtype {str(dtype)[:40]} {given} (it needs {need})")
    return _scalar(dtype, item)


_LEAVES = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray, set, frozenset})


def _children(obj: Any) -> Any:
    """What ``_resolve`` looks into (set members and dict keys are hashable: never an array)."""
    if isinstance(obj, (list, tuple)):
        return obj
    if isinstance(obj, np.ndarray):  # holding objects
        if obj.dtype.names:  # a record: each field holding objects, as an array view
            return [obj[name] for name in obj.dtype.names if obj.dtype[name].hasobject]
        return list(obj.flat)
    kids = list(obj.values()) if isinstance(obj, dict) else []
    attrs = getattr(obj, "__dict__", None)  # argparse.Namespace, a tensor's attributes
    if type(attrs) is dict and not isinstance(obj, type):
        kids += attrs.values()
    return kids


def _patch(obj: Any, new: dict[int, Any]) -> None:
    """Put each replacement (``new``: id -> object) in place inside ``obj``; a tuple is rebuilt."""
    if type(obj) is tuple:
        if any(id(x) in new for x in obj):
            new[id(obj)] = tuple(new.get(id(x), x) for x in obj)
    elif isinstance(obj, list):
        for i, x in enumerate(obj):
            if id(x) in new:
                obj[i] = new[id(x)]
    elif isinstance(obj, np.ndarray):
        if not obj.dtype.names:
            for i, x in enumerate(obj.flat):
                if id(x) in new:
                    obj.flat[i] = new[id(x)]
    else:
        attrs = getattr(obj, "__dict__", None)
        for d in (
            obj if isinstance(obj, dict) else {},
            attrs if type(attrs) is dict and not isinstance(obj, type) else {},
        ):
            for k in [k for k, v in d.items() if id(v) in new]:  # keys only: no tuple per item
                d[k] = new[id(d[k])]


_PATCH = object()  # on _resolve's stack: the object below it has had its items visited


def _resolve(root: Any, namespace: type | None = None) -> Any:
    """``root`` with every ``_PendingArray`` in it replaced by its array: in place inside lists,
    dicts, object arrays and attribute dicts, a tuple holding one rebuilt; an instance of the load's
    own Namespace class (``namespace``) made an ``argparse.Namespace``. A loop, not recursion: a
    pickle nested deeper than Python's recursion limit loads as before."""
    new: dict[int, Any] = {}  # id(proxy or tuple) -> its replacement
    seen: dict[int, Any] = {}  # id -> object: each one met is kept alive, so that ids stay unique
    stack = [root]
    while stack:
        obj = stack.pop()
        if obj is _PATCH:
            _patch(stack.pop(), new)
            continue
        if type(obj) is _PendingArray:
            seen[id(obj)] = obj
            new[id(obj)] = obj = obj.array
        if type(obj) in _LEAVES or id(obj) in seen or type(obj) is np.ndarray and not obj.dtype.hasobject:
            continue
        if namespace is not None and type(obj) is namespace:  # of this load's own Namespace class
            obj.__class__ = argparse.Namespace
        seen[id(obj)] = obj
        stack += (obj, _PATCH)
        for x in _children(obj):
            if type(x) is _PendingArray:  # its array, at once: a container is patched after its items
                seen[id(x)] = x
                new[id(x)] = x = x.array
            if type(x) not in _LEAVES and id(x) not in seen:
                stack.append(x)
    return new.get(id(root), root)


def _no_size(cls: type) -> Any:
    """``bytes`` / ``bytearray`` for the content a pickle gives them (a string and its encoding, or
    bytes); a bare size (``bytearray(10**11)``) would allocate memory the file does not hold."""

    def make(*args: Any) -> Any:
        if args and not isinstance(args[0], (str, bytes, bytearray, list, tuple)):
            raise pickle.UnpicklingError(f"{cls.__name__}({type(args[0]).__name__}): only content, not a size")
        return cls(*args)

    make.__name__ = make.__qualname__ = cls.__name__
    return make


_SAFE_CLASSES: tuple[type, ...] = (collections.OrderedDict, argparse.Namespace, np.ndarray, np.dtype)


def _one_load_namespace() -> type:
    """A class of its own for one load to give for ``argparse.Namespace``: a pickle can BUILD on a
    class it names (set attributes of it, e.g. ``__repr__``), which on ``argparse.Namespace`` itself
    would change it for the whole process; its instances become ``argparse.Namespace`` ones when
    the load ends (``_resolve``). The other allow-listed classes are immutable (C types)."""
    return type("Namespace", (argparse.Namespace,), {"__module__": "argparse", "_one_load": True})


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 pickles of plain objects) for allowed classes only."""
    cls = _CLASS_OF.get(cls, cls)
    if isinstance(cls, type) and cls.__dict__.get("_one_load") is True and cls.__bases__ == (argparse.Namespace,):
        cls = argparse.Namespace
    if cls not in _SAFE_CLASSES or base is not object or state is not None:
        raise pickle.UnpicklingError(f"copyreg._reconstructor({cls!r}, {base!r})")
    return copyreg._reconstructor(cls, base, state)


def _build_allow_list() -> dict[str, Any]:
    allowed: dict[str, Any] = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[f"{core}.multiarray._reconstruct"] = _checked_reconstruct
        allowed[f"{core}.multiarray.scalar"] = _checked_scalar
        allowed[f"{core}.numeric._frombuffer"] = _checked_frombuffer
    allowed["numpy.ndarray"] = _ndarray  # not the class itself: ndarray(shape) allocates
    allowed["numpy.dtype"] = np.dtype
    for name in dir(np.dtypes):
        obj = getattr(np.dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            allowed[f"numpy.dtypes.{name}"] = obj
    allowed["collections.OrderedDict"] = collections.OrderedDict
    allowed["argparse.Namespace"] = argparse.Namespace
    for t in (list, dict, tuple, set, frozenset, str, int, float, complex, bool, object):
        allowed[f"builtins.{t.__name__}"] = t
    allowed["builtins.bytes"] = _no_size(bytes)
    allowed["builtins.bytearray"] = _no_size(bytearray)
    allowed["_codecs.encode"] = _latin1_encode
    allowed["copyreg._reconstructor"] = _reconstructor
    return allowed


ALLOWED_GLOBALS: dict[str, Any] = _build_allow_list()

# Python 2 module names in old pickles (the MulT release was written from Python 3, but be kind).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _NeedsTorch(Exception):
    """A torch.save pickle that holds tensors: hand it to torch's own weights-only loader."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, torch_aware: bool = False) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._torch_aware = torch_aware
        self.namespace: type | None = None  # made when a pickle names argparse.Namespace

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        if (module, name) == ("argparse", "Namespace"):  # not the class itself: BUILD could change it
            self.namespace = self.namespace or _one_load_namespace()
            return self.namespace
        try:
            return ALLOWED_GLOBALS[f"{module}.{name}"]
        except KeyError:
            if self._torch_aware and (module == "torch" or module.startswith("torch.")):
                raise _NeedsTorch() from None
            shown = f"{module}.{name}".encode("unicode_escape").decode()[:120]  # a damaged name: one line
            raise RamerError(
                f"{self._source}: refusing to load '{shown}': not on the allow-list of safe "
                "types (numpy arrays, OrderedDict, argparse.Namespace, plain builtins)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._torch_aware:
            raise _NeedsTorch()
        raise RamerError(f"{self._source}: pickle refers to external data ({str(pid)[:60]}); not a plain pickle")


def safe_pickle_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle bytes with the allow-list (``source`` names the data in errors)."""
    return _unpickle(io.BytesIO(data), source)


def _unpickle(fh, source: str, torch_aware: bool = False) -> Any:
    try:
        unpickler = _RestrictedUnpickler(fh, source, torch_aware)
        return _resolve(unpickler.load(), unpickler.namespace)
    except (RamerError, _NeedsTorch):
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
        LookupError,  # IndexError, KeyError, and str(b, encoding) of an allowed class with no such encoding
    ) as e:
        raise RamerError(f"{source}: not a readable pickle ({type(e).__name__}: {str(e)[:200]})") from None
    except MemoryError:
        raise RamerError(f"{source}: not a readable pickle (it asks for more memory than is available)") from None


def is_torch_file(path: str | Path) -> bool:
    """True for ``torch.save`` files: a zip archive holding ``data.pkl``, or the legacy layout."""
    path = Path(path)
    if _is_zip(path):
        return True
    try:
        with open(path, "rb") as fh:
            return _legacy_magic(fh)
    except OSError:
        return False


def _is_zip(path: Path) -> bool:
    """``zipfile.is_zipfile``, which raises instead of answering for some damaged end records
    ("zipfiles that span multiple disks"): such a file is no readable zip (``safe_load`` tells a
    damaged ``torch.save`` file by its first bytes)."""
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:
        return False


# What a damaged zip archive raises while its directory is read or a member opened: a file name
# that is not UTF-8 (UnicodeDecodeError), an unknown compression method (NotImplementedError), an
# "encrypted" flag (RuntimeError), a bad deflate stream (zlib.error), a bad header (BadZipFile).
ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, zlib.error)


def _legacy_magic(fh) -> bool:
    """The legacy torch layout starts with a tiny pickle of a magic number: parse only a short head."""
    head = fh.read(64)
    try:
        first = _RestrictedUnpickler(io.BytesIO(head), "").load()
    except Exception:  # a longer pickle (EOF in the head), a refused class, garbage: not legacy torch
        return False
    return type(first) is int and first == _TORCH_LEGACY_MAGIC


def _torch_safe_globals() -> list:
    """The numpy/argparse entries of the allow-list in torch's (object, "module.name") form.

    torch's unpickler fills an object (BUILD) only when its type is among these objects, so the
    class of what the pickle gets for an array (``_PendingArray``, whose BUILD checks the state;
    never ``numpy.ndarray`` itself) is added too, under a name with a newline: a GLOBAL opcode reads
    module and name up to a newline, so no pickle can name it."""
    out = []
    for full, obj in ALLOWED_GLOBALS.items():
        if full in ("_codecs.encode", "collections.OrderedDict"):
            continue  # torch's weights-only unpickler handles these itself
        out.append((obj, full))
    out.append((_PendingArray, f"{__name__}._PendingArray\n(instances only)"))
    return out


_GLOBAL_RE = re.compile(r"GLOBAL\s+([\w.]+)")


def refused_global(message: str) -> str | None:
    """The global (``module.name``) that torch's weights-only unpickler names in ``message`` as refused."""
    m = _GLOBAL_RE.search(message)
    return m.group(1) if m else None


# What torch.load raises for a damaged or hostile file besides the zip errors: its readers check a
# file with struct.unpack and assert (a legacy file's storage keys), and a call the pickle makes
# can fail (NEWOBJ on the stand-in for numpy.ndarray: TypeError).
_TORCH_LOAD_ERRORS = (
    *ZIP_ERRORS,
    TypeError,
    AttributeError,
    LookupError,  # KeyError, IndexError, and an encoding name that is no encoding
    OverflowError,
    struct.error,
    AssertionError,
)


def _torch_load(path: Path) -> Any:
    import torch
    from torch.serialization import safe_globals

    try:
        with safe_globals(_torch_safe_globals()):
            return _resolve(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as e:
        msg = str(e)
        refused = refused_global(msg)
        if refused:
            raise RamerError(
                f"{path}: refusing to load '{refused}': not on the allow-list of safe types (numpy arrays, "
                "OrderedDict, argparse.Namespace, plain builtins, torch tensors)"
            ) from None
        lines = [
            ln.strip()
            for ln in msg.splitlines()
            if ln.strip() and "weights_only" not in ln and "Weights only" not in ln
        ]
        raise RamerError(f"{path}: refused by the safe loader ({(lines[0] if lines else msg)[:200]})") from None
    except MemoryError:
        raise RamerError(
            f"{path}: not a readable torch.save file (it asks for more memory than is available)"
        ) from None
    except _TORCH_LOAD_ERRORS as e:
        raise RamerError(
            f"{path}: not a readable torch.save file "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None


def refuse_compressed(path: str | Path, what: str = "a torch.save file") -> None:
    """A RamerError naming ``path`` when one of its zip entries is compressed (not a zip file, a
    legacy torch file, passes). torch.save stores every entry as it is; a compressed one is
    inflated whole into memory by ``torch.load``, a few megabytes becoming gigabytes. ``what``: what
    the file is not, then."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    inflated = next((i.filename[:80] for i in infos if i.compress_type != zipfile.ZIP_STORED), None)
    if inflated:
        raise RamerError(
            f"{path}: its entry {inflated} is compressed, which torch.save never writes (it would be read whole "
            f"into memory); not {what}"
        )


def _load_torch_zip(path: Path) -> Any:
    """A torch.save zip archive. When its pickle holds only numpy / builtin objects (the MOSEI and
    CARAT files), it is streamed out of the archive through the allow-list unpickler: this keeps
    peak memory near the size of the arrays (torch.load first reads the whole pickle into memory
    and unpickles it in Python: about 2.4x the file size and slower on the full MOSEI file).
    As soon as the pickle names a torch class or a tensor storage, the file is read again with
    ``torch.load(weights_only=True)`` plus the same allow-list."""
    refuse_compressed(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
            if len(names) != 1:
                return _torch_load(path)
            with zf.open(names[0]) as fh:
                return _unpickle(fh, str(path), torch_aware=True)
    except _NeedsTorch:
        return _torch_load(path)
    except ZIP_ERRORS as e:
        raise RamerError(
            f"{path}: not a readable torch.save file ({type(e).__name__}: {first_line(e)[:200]})"
        ) from None


def safe_load(path: str | Path) -> Any:
    """Load a pickle or a ``torch.save`` file with the allow-list; refuse anything else.

    Nothing outside the allow-list is ever imported or called: a hostile file raises a
    ``RamerError`` naming the refused class and the file, before any side effect.
    """
    path = Path(path)
    if not path.is_file():
        raise RamerError(f"{path}: file not found")
    if _is_zip(path):
        return _load_torch_zip(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":  # a zip's first entry, without a readable directory at its end
                raise RamerError(
                    f"{path}: a zip archive (as torch.save writes) cut short or damaged; "
                    "its end (the zip's directory) is missing or unreadable"
                )
            fh.seek(0)
            if _legacy_magic(fh):
                fh.close()
                return _torch_load(path)
            fh.seek(0)
            return _unpickle(fh, str(path))
    except OSError as e:  # the system would not read it (no permission, an I/O error)
        raise unreadable(path, e) from None
