"""The allow-list loader: what it reads, and that hostile files are refused before any side effect."""

from __future__ import annotations

import argparse
import pickle
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
