"""The allow-list loader: what it reads, and that hostile files are refused before any side effect."""

from __future__ import annotations

import argparse
import math
import pickle
import re
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import fixtures_writers as fw
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ramer.checkpoint import read_model_file
from ramer.data.conversations import read_table
from ramer.data.formats import detect_format, load_dataset
from ramer.data.m3ed import read_m3ed_annotation
from ramer.data.safe_load import safe_load, safe_pickle_loads
from ramer.errors import RamerError
from ramer.infer import read_predictions
from ramer.paths import read_json
from ramer.train.recipe import read_log

ROUTES = ("os.system", "builtins.open", "builtins.eval", "builtins.exec")


def _content() -> dict:
    return {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.linspace(0, 1, 5),
        "i64": np.array([[1, 2], [3, 4]], dtype=np.int64),
        "str": np.array(["a", "bcd"]),
        "obj": np.array([np.zeros(2), np.ones(3)] + [None], dtype=object)[:2],
        "scalar": np.float64(2.5),
        "ns": argparse.Namespace(max_text_seq_len=60, name="x"),
        "od": OrderedDict([("b", 1), ("a", [1, 2])]),
        "builtins": [1, 2.0, "s", b"by", (1, 2), {3, 4}, frozenset({5}), 1 + 2j, True, None, bytearray(b"z")],
    }


def _check_content(got: dict) -> None:
    want = _content()
    for key in ("f32", "f64", "i64", "str"):
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key])
    assert [list(x) for x in got["obj"]] == [list(x) for x in want["obj"]]
    assert got["scalar"] == 2.5 and isinstance(got["scalar"], np.float64)
    assert vars(got["ns"]) == vars(want["ns"]) and isinstance(got["ns"], argparse.Namespace)
    assert got["od"] == want["od"] and isinstance(got["od"], OrderedDict)
    assert got["builtins"] == want["builtins"]


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_raw_pickle_of_allowed_types(tmp_path: Path, protocol: int) -> None:
    p = tmp_path / "ok.pkl"
    p.write_bytes(pickle.dumps(_content(), protocol=protocol))
    _check_content(safe_load(p))


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_save_of_allowed_types(tmp_path: Path, legacy: bool) -> None:
    p = tmp_path / "ok.pt"
    torch.save(_content(), p, _use_new_zipfile_serialization=not legacy)
    _check_content(safe_load(p))


def test_torch_save_with_tensors(tmp_path: Path) -> None:
    p = tmp_path / "t.pt"
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"t": t, "a": np.ones(2)}, p)
    got = safe_load(p)
    assert torch.equal(got["t"], t) and np.array_equal(got["a"], np.ones(2))
    torch.save(t, p)
    assert torch.equal(safe_load(p), t)


def _numpy1_bytes(data: bytes) -> bytes:
    """The same pickle as numpy 1.x writes it (module numpy.core instead of numpy._core)."""
    return data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def test_numpy1_module_paths(tmp_path: Path) -> None:
    obj = {"a": np.arange(4.0), "s": np.int64(3)}
    data = _numpy1_bytes(pickle.dumps(obj, protocol=2))
    assert b"numpy.core.multiarray" in data
    got = safe_pickle_loads(data)
    assert np.array_equal(got["a"], obj["a"]) and got["s"] == 3
    # inside a torch.save archive: both the streamed path and torch's own loader (with a tensor)
    for extra in ({}, {"t": torch.ones(2)}):
        src, dst = tmp_path / "src.pt", tmp_path / f"np1_{len(extra)}.pt"
        torch.save({**obj, **extra}, src)
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
            for item in zin.infolist():
                body = zin.read(item)
                if item.filename.endswith("data.pkl"):
                    body = _numpy1_bytes(body)
                    assert b"numpy.core.multiarray" in body
                zout.writestr(item, body)
        got = safe_load(dst)
        assert np.array_equal(got["a"], obj["a"])


@pytest.mark.parametrize("route", ROUTES)
def test_hostile_raw_pickle_refused(tmp_path: Path, route: str) -> None:
    marker = tmp_path / "pwned"
    p = fw.write_hostile_pickle(tmp_path / "evil.pkl", marker, route)
    with pytest.raises(RamerError) as e:
        safe_load(p)
    assert str(p) in str(e.value) and "refusing" in str(e.value)
    assert route.split(".")[1] in str(e.value)  # the class/function is named
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("with_tensor", [False, True])
@pytest.mark.parametrize("route", ROUTES)
def test_hostile_torch_save_refused(tmp_path: Path, route: str, legacy: bool, with_tensor: bool) -> None:
    marker = tmp_path / "pwned"
    p = fw.write_hostile_torch(tmp_path / "evil.pt", marker, route, legacy=legacy, with_tensor=with_tensor)
    with pytest.raises(RamerError) as e:
        safe_load(p)
    assert str(p) in str(e.value)
    assert route.split(".")[1] in str(e.value) or "system" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x04\x8c\x05numpy\x8c\x0endarray.tofile\x93.",  # attribute path through an allowed class
        b"cbuiltins\ngetattr\n.",
        b"cbuiltins\n__import__\n.",
        b"c__builtin__\neval\n.",
        b"cnumpy\nload\n.",
        b"ccopyreg\n_reconstructor\n(cos\n_wrap_close\ncbuiltins\nobject\nNtR.",
    ],
)
def test_other_globals_refused(payload: bytes) -> None:
    with pytest.raises(RamerError, match="refusing|not a readable"):
        safe_pickle_loads(payload, "payload")


def test_reconstructor_with_a_state_is_refused() -> None:
    """``copyreg._reconstructor`` is allowed only as protocols 0 and 1 write it for a plain object:
    an allowed class, ``object`` as the base and no state. One with a state (which a base other
    than ``object`` would be called with) is no pickle Python writes: refused, naming the call."""
    head = b"ccopyreg\n_reconstructor\n(cargparse\nNamespace\ncbuiltins\nobject\n"
    assert safe_pickle_loads(head + b"NtR.", "payload") == argparse.Namespace()
    with pytest.raises(RamerError) as e:
        safe_pickle_loads(head + b"I5\ntR.", "payload")
    assert str(e.value).startswith("payload: not a readable pickle (UnpicklingError: copyreg._reconstructor(")
    assert "argparse.Namespace" in str(e.value)


def test_not_a_pickle(tmp_path: Path) -> None:
    p = tmp_path / "junk.bin"
    p.write_bytes(b"this is not a pickle")
    with pytest.raises(RamerError, match="junk.bin"):
        safe_load(p)
    with pytest.raises(RamerError, match="not found"):
        safe_load(tmp_path / "missing.pkl")


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02cbuiltins\nbytearray\nM\xe8\x03\x85R.",  # bytearray(1000)
        b"\x80\x02c__builtin__\nbytes\nM\xe8\x03\x85R.",  # bytes(1000)
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nM\xe8\x03\x85C\x01b\x87R.",
        b"\x80\x02cnumpy\nndarray\nM\xe8\x03\x85R.",  # numpy.ndarray(1000)
    ],
)
def test_constructors_taking_a_size_refused(payload: bytes) -> None:
    """Allow-listed constructors take content, never a bare size: ``bytearray(10**11)`` is 32 bytes
    of pickle. The sizes here are small so that the test is harmless when the check is missing."""
    with pytest.raises(RamerError, match="payload: not a readable pickle.*(not a size|non-empty)"):
        safe_pickle_loads(payload, "payload")


def test_pickle_asking_for_too_much_memory(tmp_path: Path) -> None:
    """A length field of 100 GB under a 4 GiB address-space limit: a named error, not MemoryError."""
    p = tmp_path / "big.pkl"
    p.write_bytes(b"\x80\x04\x8e" + (100 * 10**9).to_bytes(8, "little") + b".")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from ramer.data.safe_load import safe_load\n"
        "from ramer.errors import RamerError\n"
        "try:\n    safe_load(sys.argv[1])\nexcept RamerError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    assert "big.pkl: not a readable pickle (it asks for more memory" in out.stdout, out.stderr[-400:]


DEEP = "[" * 100_000  # deeper than the JSON parser's recursion


def _deep_model_file(path: Path) -> Path:
    save_file({"w": torch.zeros(1)}, str(path), metadata={"config": DEEP, "spec": "{}", "threshold": "0.5"})
    return path


@pytest.mark.parametrize("reader", ["model file", "predictions", "jsonl import", "run log", "m3ed annotation", "json"])
def test_json_nested_too_deeply_is_an_error_naming_the_file(reader, tmp_path):
    """A hostile ``[[[[...`` is malformed JSON like any other, not a RecursionError traceback."""
    path = tmp_path / {"model file": "model.safetensors", "jsonl import": "talk.jsonl"}.get(reader, "file.json")
    if reader != "model file":
        path.write_text(DEEP + "\n")
    read = {
        "model file": lambda: read_model_file(_deep_model_file(path)),
        "predictions": lambda: read_predictions(path, ("a", "b")),
        "jsonl import": lambda: read_table(path),
        "run log": lambda: read_log(path),
        "m3ed annotation": lambda: read_m3ed_annotation(path),
        "json": lambda: read_json(path),
    }[reader]
    with pytest.raises(RamerError, match=rf"{path}.*nested too deeply"):
        read()


def test_a_torch_save_file_cut_short_is_said_to_be(tmp_path):
    path = tmp_path / "data.pt"
    torch.save({"a": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(RamerError, match=rf"{path}: a zip archive \(as torch.save writes\) cut short or damaged"):
        safe_load(path)


# ------------------------------------------------------------------------ numpy.ndarray(shape)
BOMB_SHAPE = (10**6, 10**6)  # 7.3 TiB of float64: numpy could not allocate it even without the check


def _bomb() -> fw._Reduce:
    """What unpickles as ``numpy.ndarray(BOMB_SHAPE)``: 68 bytes of pickle asking for an array."""
    return fw._Reduce(np.ndarray, (BOMB_SHAPE,))


def _rewrite_data_pkl(path: Path, edit) -> None:
    """``path`` (a torch.save zip) with its ``data.pkl`` replaced by ``edit(data.pkl)``."""
    members = {}
    with zipfile.ZipFile(path) as zin:
        for item in zin.infolist():
            body = zin.read(item)
            members[item] = edit(body) if item.filename.endswith("data.pkl") else body
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for item, body in members.items():
            zout.writestr(item, body)


def _as_newobj(data: bytes) -> bytes:
    """The pickle with the REDUCE of ``numpy.ndarray(shape)`` made a NEWOBJ (``ndarray.__new__``)."""
    call = re.compile(rb"(\x86q.\x85q.)R", re.DOTALL)  # TUPLE2 BINPUT TUPLE1 BINPUT REDUCE after the sizes
    assert len(call.findall(data)) == 1
    return call.sub(lambda m: m.group(1) + b"\x81", data)


@pytest.mark.parametrize(
    "route", ["pickle", "pickle newobj", "torch zip", "torch zip with a tensor", "torch newobj", "torch legacy"]
)
def test_a_bare_ndarray_with_a_size_is_refused_before_it_is_allocated(tmp_path: Path, route: str) -> None:
    """``numpy.ndarray`` is on the allow-list as the class ``_reconstruct`` is given; called, it
    allocates its shape. Each route that resolves it (the restricted unpickler, the zip streamed
    through it, torch's weights-only unpickler) refuses a non-empty shape before numpy sees it:
    without the check numpy says it cannot allocate 7.3 TiB ('more memory than is available')."""
    if route.startswith("pickle"):
        p = tmp_path / "bomb.pkl"
        data = pickle.dumps({"x": _bomb()}, protocol=2)
        p.write_bytes(_as_newobj(data) if route.endswith("newobj") else data)
    else:
        p = tmp_path / "bomb.pt"
        first = {"t": torch.ones(2)} if route != "torch zip" else {}  # a tensor first: read by torch.load
        torch.save({**first, "x": _bomb()}, p, _use_new_zipfile_serialization=route != "torch legacy")
        if route == "torch newobj":
            _rewrite_data_pkl(p, _as_newobj)
    with pytest.raises(RamerError) as e:
        safe_load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "more memory" not in msg, msg
    if route.endswith("newobj"):  # ndarray.__new__(shape) on a stand-in that is no class
        assert "(UnpicklingError: NEWOBJ" in msg or "(TypeError: function.__new__" in msg, msg
    else:
        assert "numpy.ndarray asks for a non-empty array of shape (1000000, 1000000)" in msg, msg


def _arrays() -> dict:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    return {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "fortran": np.asfortranarray(base),
        "strided": base[::2, 1::2],  # neither C- nor Fortran-contiguous
        "i64": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "u8": np.array([0, 1, 255], dtype=np.uint8),
        "bool": np.array([True, False]),
        "c128": np.array([1 + 2j]),
        "str": np.array(["a", "bcd"]),
        "record": np.array([(1, 2.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "zero_d": np.array(3.5),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def _check_arrays(got: dict) -> None:
    for key, want in _arrays().items():
        assert type(got[key]) is np.ndarray and got[key].dtype == want.dtype, key
        assert got[key].shape == want.shape and np.array_equal(got[key], want), key


@pytest.mark.parametrize("how", ["pickle 2", "pickle 5", "torch zip", "torch zip with a tensor", "torch legacy"])
def test_numpy_arrays_as_numpy_and_torch_write_them_still_load(tmp_path: Path, how: str) -> None:
    """The stand-in for ``numpy.ndarray`` must not change what a real array file gives: protocol 2
    (``_reconstruct`` + state) and 5 (``_frombuffer``), contiguous or not, 0-d, empty, and inside
    ``torch.save`` files read by the streamed unpickler and by torch.load (which fills an array
    only when its class is among the safe globals)."""
    obj = _arrays()
    p = tmp_path / "arrays.bin"
    if how.startswith("pickle"):
        p.write_bytes(pickle.dumps(obj, protocol=int(how[-1])))
    else:
        tensor = torch.arange(6, dtype=torch.float32)
        first = {"t": tensor} if how != "torch zip" else {}
        torch.save({**first, **obj}, p, _use_new_zipfile_serialization=how != "torch legacy")
    got = safe_load(p)
    _check_arrays(got)
    if "t" in got:
        assert torch.equal(got["t"], torch.arange(6, dtype=torch.float32))


# ---------------------------------------------------------------------------- damaged files
def _cd(data: bytes) -> int:
    """Offset of the zip's first central-directory entry (torch.save: data.pkl's)."""
    return data.index(b"PK\x01\x02")


# Each damage is one byte of a torch.save zip (data.pkl is its first member, at offset 0).
ZIP_DAMAGE = {
    # total number of disks in the zip64 end locator: is_zipfile itself raises BadZipFile
    "multi-disk end record": lambda d: d.rindex(b"PK\x06\x07") + 16,
    # first byte of data.pkl's name in the central directory (UTF-8 flagged): UnicodeDecodeError
    "name in the directory": lambda d: _cd(d) + 46,
    # the local header's signature: BadZipFile('Bad magic number for file header') when opened
    "local header magic": lambda d: 3,
    # first byte of data.pkl's name in its local header: UnicodeDecodeError when opened
    "name in the local header": lambda d: 30,
}


@pytest.mark.parametrize("damage", list(ZIP_DAMAGE))
@pytest.mark.parametrize("read", ["safe_load", "auto", "mosei_aligned"])
def test_a_damaged_torch_save_zip_is_a_one_line_error_naming_it(tmp_path: Path, damage: str, read: str) -> None:
    p = tmp_path / "train_valid_test.pt"
    fw.write_mosei_aligned(p)
    data = bytearray(p.read_bytes())
    at = ZIP_DAMAGE[damage](bytes(data))
    data[at] = 0x02 if damage == "multi-disk end record" else 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(RamerError) as e:
        safe_load(p) if read == "safe_load" else load_dataset(p, read)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: "), msg
    assert "not a readable torch.save file" in msg or "cut short or damaged" in msg, msg
    if read == "auto":
        with pytest.raises(RamerError, match="not a readable torch.save file|cut short or damaged"):
            detect_format(p)


def test_a_damaged_memor_face_feature_file_is_named(tmp_path: Path) -> None:
    fw.write_memor(tmp_path / "memor")
    p = tmp_path / "memor" / "features" / "visual_features" / "face_features" / "c1.pt"
    data = bytearray(p.read_bytes())
    data[_cd(bytes(data)) + 46] = 0xFF  # a member's name, UTF-8 flagged, that is not UTF-8
    p.write_bytes(bytes(data))
    with pytest.raises(RamerError, match=rf"^{p}: not a readable torch.save file \(UnicodeDecodeError: "):
        load_dataset(tmp_path / "memor")


def test_a_native_array_with_a_damaged_header_is_named(tmp_path: Path) -> None:
    """numpy reads a .npy header (a dict literal) with tokenize: an unclosed bracket is a
    tokenize.TokenError, which is neither ValueError nor OSError."""
    fw.write_m3ed_pickle(tmp_path / "m3ed.pkl")
    load_dataset(tmp_path / "m3ed.pkl").save(tmp_path / "native")
    p = tmp_path / "native" / "train" / "labels.npy"
    data = bytearray(p.read_bytes())
    data[data.index(b"), }")] = ord(" ")  # 'shape': (1, 7), }  ->  'shape': (1, 7 , }
    p.write_bytes(bytes(data))
    with pytest.raises(RamerError, match=rf"^{p}: not a readable \.npy array \(its header is damaged\)$"):
        load_dataset(tmp_path / "native")


def test_a_damaged_encoding_name_in_a_numpy_pickle_is_an_error(tmp_path: Path) -> None:
    """numpy's protocol-2 pickles store array bytes as ``_codecs.encode(text, 'latin1')``; a damaged
    encoding name is no encoding at all (LookupError), in our unpickler and in torch's."""
    obj = {"t": torch.ones(2), "a": np.arange(3.0)}
    for name, write in {
        "raw.pkl": lambda p: p.write_bytes(pickle.dumps({"a": obj["a"]}, protocol=2)),
        "zip.pt": lambda p: torch.save({"a": obj["a"]}, p),
        "legacy.pt": lambda p: torch.save(obj, p, _use_new_zipfile_serialization=False),
    }.items():
        p = tmp_path / name
        write(p)
        if name == "zip.pt":
            _rewrite_data_pkl(p, lambda b: b.replace(b"latin1", b"latZn1"))
        else:
            p.write_bytes(p.read_bytes().replace(b"latin1", b"latZn1"))
        with pytest.raises(RamerError, match=rf"^{p}: (not a readable|refused by).*latZn1"):
            safe_load(p)


def test_an_allowed_class_called_with_no_such_encoding_is_an_error() -> None:
    """``str(b"abc", "nosuch")`` by REDUCE: a LookupError came out as a traceback."""
    payload = b"\x80\x02cbuiltins\nstr\nC\x03abcX\x06\x00\x00\x00nosuch\x86R."
    with pytest.raises(RamerError, match=r"^payload: not a readable pickle \(LookupError: unknown encoding: nosuch\)"):
        safe_pickle_loads(payload, "payload")


def test_a_damaged_legacy_torch_file_is_an_error(tmp_path: Path) -> None:
    """torch's legacy reader checks a file with struct.unpack and assert: a file cut inside its
    second pickle (struct.error) and a storage key changed in the list at its end (AssertionError)."""
    p = tmp_path / "legacy.pt"
    torch.save({"t": torch.ones(2)}, p, _use_new_zipfile_serialization=False)
    data = p.read_bytes()
    magic_end = len(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
    assert pickle.loads(data[:magic_end]) == 0x1950A86A20F9469CFC6C
    keys = data.rindex(b"\x80\x02]q\x00X") + 10  # the first character of the first storage key
    changed = data[:keys] + b"x" + data[keys + 1 :]
    for damaged, why in ((data[: magic_end + 3], "error: unpack"), (changed, "AssertionError: storage key")):
        p.write_bytes(damaged)
        with pytest.raises(RamerError, match=rf"^{p}: not a readable torch.save file \({why}"):
            safe_load(p)


def test_a_refused_name_with_a_newline_is_one_line(tmp_path: Path) -> None:
    """A protocol-4 pickle names its globals by strings, which may hold a damaged byte ('\\n')."""
    data = pickle.dumps(np.arange(3.0), protocol=4)
    assert data.count(b"multiarray") == 1
    p = tmp_path / "bad.pkl"
    p.write_bytes(data.replace(b"multiarray", b"multiarra\n"))
    with pytest.raises(RamerError) as e:
        safe_load(p)
    assert "\n" not in str(e.value) and "refusing to load 'numpy.core.multiarra\\n._reconstruct'" in str(e.value)


# ------------------------------------------------------------------ an array's state (BUILD)
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy.(_)core.multiarray._reconstruct
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer
_SCALAR = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar


class _Build(fw._Reduce):
    """An object whose unpickling calls ``func(*args)`` and then BUILDs the result with ``state``."""

    def __init__(self, func, args, state):
        super().__init__(func, args)
        self.state = state

    def __reduce__(self):
        return (self.func, self.args, self.state)


def _object_state(shape) -> tuple:
    """An object array's state whose list holds no items at all (numpy's hold prod(shape))."""
    return (1, shape, np.dtype("O"), False, [])


HOSTILE_STATES = {
    # 208 bytes of pickle: numpy reads past the list's end (exit 139 without the check)
    "short object list": (_Build(_RECONSTRUCT, (np.ndarray, (0,), b"b"), _object_state((3,))), (3,)),
    # numpy allocates the shape first (7.3 TiB: it cannot; 8 GB for (10**5, 10**4) it would)
    "huge object shape": (_Build(_RECONSTRUCT, (np.ndarray, (0,), b"b"), _object_state(BOMB_SHAPE)), BOMB_SHAPE),
    # the other ways a pickle gets an array to BUILD: _frombuffer (protocol 5), numpy.ndarray((0,))
    "frombuffer built again": (_Build(_FROMBUFFER, (b"", np.dtype("f8"), (0,), "C"), _object_state((3,))), (3,)),
    "empty ndarray built": (_Build(np.ndarray, ((0,),), _object_state((3,))), (3,)),
}

_CHECK_FILES = (
    "import resource, sys\n"
    "import torch\n"  # imported before the address-space limit: 1 GiB beyond what the process holds now
    "vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024\n"
    "resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))\n"
    "from ramer.data.safe_load import safe_load\n"
    "from ramer.errors import RamerError\n"
    "for p in sys.argv[1:]:\n"
    "    try:\n        safe_load(p)\n        print('LOADED', p)\n"
    "    except RamerError as e:\n        print(str(e).replace('\\n', '\\\\n'))\n"
    "    sys.stdout.flush()\n"
)


def _check_in_a_subprocess(paths: list[Path]) -> list[str]:
    """``safe_load`` each file in a child process (a crash fails the test instead of pytest), under
    an address-space limit of 1 GiB beyond what the process holds: one message line per file."""
    out = subprocess.run(
        [sys.executable, "-c", _CHECK_FILES, *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"exit {out.returncode}: {out.stdout[-600:]} {out.stderr[-600:]}"
    lines = out.stdout.splitlines()
    assert len(lines) == len(paths), out.stdout
    return lines


def _write_hostile(path: Path, evil, route: str) -> Path:
    if route == "pickle":
        path.write_bytes(pickle.dumps({"x": evil}, protocol=2))
    else:
        first = {"t": torch.ones(2)} if route != "torch zip" else {}  # a tensor first: read by torch.load
        torch.save({**first, "x": evil}, path, _use_new_zipfile_serialization=route != "torch legacy")
    return path


@pytest.mark.parametrize("route", ["pickle", "torch zip", "torch zip with a tensor", "torch legacy"])
def test_an_array_state_that_does_not_hold_its_shape_is_refused(tmp_path: Path, route: str) -> None:
    """numpy fills a pickled array from its state (BUILD, from C): for a dtype holding objects it
    allocates the state's shape and reads that many items from its list without checking the
    list's length. Each route (the restricted unpickler, the zip streamed through it, torch's
    weights-only unpickler) checks the state first: one line naming the file, nothing allocated."""
    paths = [_write_hostile(tmp_path / f"{i}.bin", evil, route) for i, (evil, _) in enumerate(HOSTILE_STATES.values())]
    for p, line, (case, (_, shape)) in zip(paths, _check_in_a_subprocess(paths), HOSTILE_STATES.items()):
        assert line.startswith(f"{p}: ") and "more memory" not in line, (case, line)
        assert f"numpy array of shape {shape} and dtype object with 0 items (it needs {math.prod(shape)} items)" in line


@pytest.mark.parametrize("route", ["pickle", "torch zip", "torch zip with a tensor", "torch legacy"])
def test_a_numpy_scalar_without_its_bytes_is_refused_before_it_is_allocated(tmp_path: Path, route: str) -> None:
    """``scalar(dtype('V2000000000'))``: numpy zero-fills a 2 GB item when no data is given (its own
    pickles always give the item's bytes); under the child's limit that would be 'more memory'."""
    evil = fw._Reduce(_SCALAR, (np.dtype("V2000000000"),))
    p = _write_hostile(tmp_path / "scalar.bin", evil, route)
    (line,) = _check_in_a_subprocess([p])
    assert line.startswith(f"{p}: ") and "more memory" not in line, line
    assert "numpy scalar of dtype |V2000000000 without data (it needs 2000000000 bytes)" in line, line


@pytest.mark.parametrize(
    "args, given",
    [
        ((np.dtype("V8"),), "without data"),
        ((np.dtype("f4"), b"\x00\x00\xc0?!"), "with 5 bytes"),
        ((np.dtype("f4"), b"\x00\x00"), "with 2 bytes"),
        ((np.dtype("O"), [1]), "with data of type list"),  # numpy: deprecated, 'should never be created'
    ],
)
def test_a_numpy_scalar_takes_exactly_its_item_bytes(args: tuple, given: str) -> None:
    data = pickle.dumps(fw._Reduce(_SCALAR, args), protocol=2)
    with pytest.raises(
        RamerError, match=rf"^payload: not a readable pickle \(UnpicklingError: numpy scalar .* {given}"
    ):
        safe_pickle_loads(data, "payload")


def _legit_numpy() -> dict:
    """numpy objects as numpy pickles them: object arrays (strings, lists, arrays, a record with
    object fields), arrays shared and inside tuples / OrderedDict / Namespace, and scalars."""
    shared = np.arange(5.0)
    objects = np.empty(3, dtype=object)
    objects[:] = [np.zeros(2), [1, np.ones(3)], "s"]
    record = np.zeros(2, dtype=[("a", "O", (3,)), ("b", "<i4"), ("c", "<f8", (2,)), ("d", "O")])
    record[0] = (np.array([1, 2, 3], dtype=object), 7, [1.5, 2.5], np.arange(2))
    return {
        "strings": np.array(["a", "bb", None], dtype=object),
        "lists": np.array([[1, 2], [3]] + [None], dtype=object)[:2],
        "objects": objects,
        "fortran objects": np.asfortranarray(np.array([[np.ones(1), "x"], [None, 2]], dtype=object)),
        "nested": np.array([objects, None], dtype=object),
        "record": record,
        "zero_d object": np.array(None, dtype=object),
        "tuple": (np.ones(2), 3, (np.zeros(1), "x")),
        "shared": [shared, shared, {"again": shared}],
        "od": OrderedDict([("a", np.ones(2)), ("b", [np.zeros(1)])]),
        "ns": argparse.Namespace(x=np.ones(3), y=[np.zeros(2)]),
        "scalars": [
            np.float32(1.5),
            np.int64(-3),
            np.str_("héllo"),
            np.bool_(True),
            np.complex64(1j),
            np.array([(1, 2.5)], dtype=[("a", "<i4"), ("b", "<f8")])[0],
            np.void(b"xyz"),
            np.datetime64("2020-01-02"),
        ],
    }


def _assert_same(got, want, where: str = "") -> None:
    """Equal values of exactly the same types (plain ``np.ndarray``, never a stand-in)."""
    assert type(got) is type(want), (where, type(got), type(want))
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert got.flags.c_contiguous == want.flags.c_contiguous and got.flags.f_contiguous == want.flags.f_contiguous
        if want.dtype.names:
            for name in want.dtype.names:
                _assert_same(got[name], want[name], f"{where}.{name}")
        elif want.dtype.hasobject:
            for i, (g, w) in enumerate(zip(got.flat, want.flat)):
                _assert_same(g, w, f"{where}[{i}]")
        else:
            assert got.tobytes() == want.tobytes(), where
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, argparse.Namespace):
        _assert_same(vars(got), vars(want), where)
    elif isinstance(want, np.generic):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), where
    else:
        assert got == want, where


@pytest.mark.parametrize("how", ["pickle 2", "pickle 5", "torch zip", "torch zip with a tensor", "torch legacy"])
def test_object_arrays_and_scalars_as_numpy_writes_them_still_load(tmp_path: Path, how: str) -> None:
    """Every array a pickle makes is held until the load ends (its BUILD checked); the loaders then
    get the arrays numpy made, in place in dicts, lists, tuples, Namespaces and object arrays, an
    array stored twice still one object."""
    obj = _legit_numpy()
    p = tmp_path / "numpy.bin"
    if how.startswith("pickle"):
        p.write_bytes(pickle.dumps(obj, protocol=int(how[-1])))
    else:
        first = {"t": torch.arange(3.0)} if how != "torch zip" else {}
        torch.save({**first, **obj}, p, _use_new_zipfile_serialization=how != "torch legacy")
    got = safe_load(p)
    got.pop("t", None)
    _assert_same(got, obj)
    assert got["shared"][0] is got["shared"][1] is got["shared"][2]["again"]


def test_a_pickle_cannot_change_an_allowed_class_for_the_process():
    """BUILD on the class a pickle names (argparse.Namespace, state ``(None, {'__repr__': list})``)
    changes a class of that load's own, never ``argparse.Namespace``; Namespaces still load as
    ``argparse.Namespace`` at every protocol."""
    hostile = b"\x80\x02cargparse\nNamespace\nN}X\x08\x00\x00\x00__repr__c__builtin__\nlist\ns\x86b."
    try:
        safe_pickle_loads(hostile, "x.pkl")
        assert "__repr__" not in vars(argparse.Namespace)
    finally:  # without the protection, undo the damage for the other tests
        if vars(argparse.Namespace).get("__repr__") is list:
            del argparse.Namespace.__repr__
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        got = safe_pickle_loads(pickle.dumps({"s": argparse.Namespace(a=1, b=[argparse.Namespace(c=2)])}, protocol))
        assert type(got["s"]) is argparse.Namespace and type(got["s"].b[0]) is argparse.Namespace
        assert got["s"] == argparse.Namespace(a=1, b=[argparse.Namespace(c=2)])


def test_a_namespace_of_a_pickle_comes_back_as_argparse_namespace_whatever_its_class_was_given():
    """A pickle that sets ``_one_load`` (and ``__repr__``) on the class it names still gets
    ``argparse.Namespace`` objects back: the load knows its own class by identity."""
    rebuild = b"N}(X\x09\x00\x00\x00_one_loadI00\nX\x08\x00\x00\x00__repr__c__builtin__\nlist\nu\x86b"
    hostile = b"\x80\x02cargparse\nNamespace\n" + rebuild + b"0cargparse\nNamespace\n)\x81}X\x01\x00\x00\x00aK\x01sb."
    got = safe_pickle_loads(hostile, "x.pkl")
    assert type(got) is argparse.Namespace and repr(got) == "Namespace(a=1)"


def test_a_record_of_many_objects_is_refused_before_it_is_allocated():
    """A record dtype holding 10**7 objects per element, with a one-item list: numpy allocated 80 MB
    from a pickle of about 300 bytes before reading the list; object arrays and small records of
    objects still load."""
    big = np.dtype([("a", "O", (10**7,))])
    evil = _Build(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), big, False, [(None,)]))
    hostile = pickle.dumps(evil, protocol=2)
    assert len(hostile) < 400
    with pytest.raises(RamerError, match="80000000 bytes per element holding objects"):
        safe_pickle_loads(hostile)
    small = np.array([(1, "x"), (2, [3])], dtype=[("n", "i8"), ("o", "O")])
    got = safe_pickle_loads(pickle.dumps(small, protocol=2))
    assert got.dtype == small.dtype and got["o"].tolist() == ["x", [3]]


def test_a_torch_file_with_a_compressed_entry_is_refused_before_it_is_inflated(tmp_path):
    """torch.save stores its entries as they are; torch.load reads a compressed one whole into
    memory, so a data file of a few kilobytes could ask for gigabytes: refused, naming the entry."""
    import zipfile

    path = tmp_path / "feats.pt"
    torch.save({"train": {"x": torch.zeros(4, 3)}}, path)
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in entries:
            if "/data/" in info.filename:
                z.writestr(info.filename, data + bytes(1 << 20), compress_type=zipfile.ZIP_DEFLATED)
            else:
                z.writestr(info, data)
    with pytest.raises(RamerError, match=r"feats.pt: its entry .*/data/0 is compressed, which torch.save never writes"):
        safe_load(path)
