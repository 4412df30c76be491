"""What the loaders of the public layouts (``mosei.py``, ``m3ed.py``, ``memor.py``) share: the
split-by-split stream they return, float32 casts with non-finite replacement (of arrays and of
tensors, bfloat16 ones too), the dtype check each loader makes on every split before it converts
the first (``ramer data convert`` writes each split as it is built), ``tgt`` label lists, the split
dictionaries of the pickled layouts, and scene stores of single-person sequences.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramer.batch import MODALITIES, ROLE_NONE
from ramer.data.store import DataBundle, SceneStore
from ramer.errors import RamerError

SPLITS = ("train", "valid", "test")
SPECIAL_TGT = {"<blank>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
FIRST_LABEL_ID = 4  # emotion ids in 'tgt' lists start after the four specials


# ---------------------------------------------------------------------------------------- streams
@dataclass
class SplitStream:
    """A dataset read split by split: ``splits`` yields ``(name, SceneStore)`` and frees the source
    arrays of a split once it is built, so a converter can write each split and drop it.
    ``info`` (JSON-safe) is complete once ``splits`` is exhausted. ``close`` frees what the reader
    holds open (``closing``: the MEmoR feature files) when the splits are not read to the end."""

    format: str
    source: str
    label_names: tuple[str, ...]
    splits: Iterator[tuple[str, SceneStore]]
    info: dict = field(default_factory=dict)
    closing: Callable[[], object] | None = None

    def close(self) -> None:
        close = getattr(self.splits, "close", None)
        if close is not None:
            close()  # a generator started: its own clean-up runs
        if self.closing is not None:
            self.closing()

    def to_bundle(self) -> DataBundle:
        splits = dict(self.splits)
        for store in splits.values():
            store.mark_checked()  # the loaders replace non-finite values as they read (and count them)
        return DataBundle(splits, tuple(self.label_names), self.format, self.source, self.info)


def new_info(sources: list[str]) -> dict:
    """``source_files``: the files read, absolute where they exist (a converted folder's meta.json
    keeps them; read elsewhere, a relative one would name another file)."""
    files = [os.path.abspath(s) if Path(s).exists() else str(s) for s in sources]
    return {"source_files": files, "nonfinite_replaced": {m: 0 for m in MODALITIES}}


# ---------------------------------------------------------------------------------------- helpers
_CHUNK = 1 << 22  # elements per non-finite scan chunk (16 MiB of float32)


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "numpy")


def _refused_tensor(x: Any, where: str) -> RamerError | None:
    """The error for a tensor numpy cannot take as an array of real numbers: sparse (densifying it
    would allocate its declared size, not what the file holds), quantized, complex."""
    import torch  # a tensor was loaded: torch is imported already

    if x.layout is not torch.strided:
        what = f"sparse tensor ({x.layout})"
    elif x.is_quantized:
        what = "quantized tensor"
    elif x.is_complex():
        what = f"tensor of dtype {x.dtype}"
    else:
        return None
    return RamerError(f"{where}: a {what} of shape {tuple(x.shape)}; expected a dense array of numbers")


def check_numeric(a: Any, where: str) -> None:
    """A RamerError naming ``where`` unless ``a`` (an array or a tensor) holds real numbers or bools;
    the loaders check every split this way before they convert the first."""
    if _is_tensor(a):
        if (error := _refused_tensor(a, where)) is not None:
            raise error
    elif isinstance(getattr(a, "dtype", None), np.dtype) and a.dtype.kind not in "fiub":
        raise RamerError(f"{where}: dtype {a.dtype} (shape {a.shape}), expected numbers")


def as_array(x: Any, where: str) -> np.ndarray:
    """``x`` (a numpy array, a torch tensor, a list) as a numpy array. A tensor of a float type
    numpy lacks (bfloat16, float8) is widened to float32; one that ``check_numeric`` refuses is an
    error naming ``where``."""
    if not _is_tensor(x):
        return np.asarray(x)
    import torch

    check_numeric(x, where)
    x = x.detach().cpu()
    if x.is_floating_point() and x.dtype not in (torch.float16, torch.float32, torch.float64):
        x = x.float()
    try:
        return x.numpy()
    except (TypeError, RuntimeError):  # another type numpy has no counterpart for
        raise RamerError(f"{where}: a tensor of dtype {x.dtype}; expected numbers numpy can hold") from None


def as_float32(arr: Any, counts: dict[str, int], modality: str, where: str) -> np.ndarray:
    """``arr`` as a C-contiguous float32 array with +-inf/NaN replaced by 0, counted in
    ``counts[modality]``. Works in place when ``arr`` already is a writable float32 array (the
    loaders own what they read), so a large split is never copied twice."""
    try:
        a = as_array(arr, where)
    except (TypeError, ValueError):  # rows of different lengths
        raise RamerError(f"{where}: not a numeric array (rows of different lengths?)") from None
    check_numeric(a, where)
    if a.dtype != np.float32:
        with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32's range become inf: counted below
            a = a.astype(np.float32)
    elif not (a.flags.writeable and a.flags.c_contiguous):
        a = np.array(a, dtype=np.float32, order="C")
    flat = a.reshape(-1)
    replaced = 0
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        bad = ~np.isfinite(chunk)
        k = int(np.count_nonzero(bad))
        if k:
            chunk[bad] = 0.0
            replaced += k
    counts[modality] = counts.get(modality, 0) + replaced
    return a


def label_names_from_dict(obj: dict, default: tuple[str, ...], source: str) -> tuple[tuple[str, ...], str]:
    """Class names ordered by id from ``obj['dict']['tgt']`` (name -> id, ids 4.. for emotions);
    ``default`` when the file has no ``dict``. Returns (names, where they came from)."""
    d = obj.get("dict") if isinstance(obj, dict) else None
    tgt = d.get("tgt") if isinstance(d, dict) else None
    if tgt is None:
        return tuple(default), "default"
    if not isinstance(tgt, dict):
        raise RamerError(f"{source}: key 'dict' -> 'tgt' is a {type(tgt).__name__}, expected a dict name -> id")
    by_id: dict[int, str] = {}
    for name, idx in tgt.items():
        if name in SPECIAL_TGT:
            continue
        try:
            i = int(idx)
        except (TypeError, ValueError):
            raise RamerError(f"{source}: dict['tgt'][{name!r}] = {idx!r} is not an integer id") from None
        if i < FIRST_LABEL_ID or i in by_id:
            raise RamerError(
                f"{source}: dict['tgt'][{name!r}] = {i}: emotion ids must be distinct and >= {FIRST_LABEL_ID}"
            )
        by_id[i] = str(name)
    ids = sorted(by_id)
    if not ids or ids != list(range(FIRST_LABEL_ID, FIRST_LABEL_ID + len(ids))):
        raise RamerError(
            f"{source}: dict['tgt'] emotion ids {ids} are not {FIRST_LABEL_ID}..{FIRST_LABEL_ID + len(ids) - 1}"
        )
    return tuple(by_id[i] for i in ids), "dict['tgt']"


def whole_number(x: Any, text: bool = False) -> int | None:
    """``x`` as an int when it is a whole number (with ``text``, a string of one too, as ``int`` reads
    it); None for a bool, a fraction (0.7 is not id 0), NaN, inf or anything else."""
    if isinstance(x, (bool, np.bool_)) or (isinstance(x, str) and not text):
        return None
    try:
        n = int(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if isinstance(x, str) or n == x else None


def labels_from_tgt(tgt: Any, n_labels: int, where: str) -> np.ndarray:
    """Multi-hot (N, C) uint8 from ``tgt`` lists ``[2, e_1, .., e_k, 3]`` (index = id - 4). The
    specials ``<s>``/``</s>`` and ``<blank>`` padding are skipped; ``[2, 3]`` gives an empty row."""
    if hasattr(tgt, "tolist") and not isinstance(tgt, list):
        tgt = tgt.tolist() if getattr(getattr(tgt, "dtype", None), "kind", None) != "O" else list(tgt)
    if not isinstance(tgt, (list, tuple)):
        raise RamerError(f"{where}: 'tgt' is a {type(tgt).__name__}, expected a list of id lists")
    out = np.zeros((len(tgt), n_labels), dtype=np.uint8)
    for i, seq in enumerate(tgt):
        try:
            ids = np.asarray(seq).reshape(-1)
        except (ValueError, TypeError):  # a ragged or nested list
            raise RamerError(f"{where}: tgt[{i}] = {seq!r:.80} is not a list of integer ids") from None
        if ids.dtype.kind not in "iu" and not (ids.dtype.kind == "f" and np.all(ids == np.round(ids))) and ids.size:
            raise RamerError(f"{where}: tgt[{i}] = {seq!r} is not a list of integer ids")
        for v in ids.astype(np.int64).tolist():
            if v in (0, 2, 3):
                continue
            j = v - FIRST_LABEL_ID
            if not 0 <= j < n_labels:
                raise RamerError(
                    f"{where}: tgt[{i}] holds id {v}; emotion ids must be "
                    f"{FIRST_LABEL_ID}..{FIRST_LABEL_ID + n_labels - 1}"
                )
            out[i, j] = 1
    return out


def sequence_store(
    feats: dict[str, np.ndarray],
    present: np.ndarray,
    steps: np.ndarray,
    labels: np.ndarray,
    label_names: tuple[str, ...],
    ids: list[str],
    source: str,
    extra: dict,
) -> SceneStore:
    """A store of single-person scenes (P = 1, S = ``steps[i]``): MOSEI and CARAT's M3ED."""
    n = len(steps)
    steps = np.asarray(steps, dtype=np.int64)
    return SceneStore(
        text=feats["text"],
        audio=feats["audio"],
        visual=feats["visual"],
        present=present,
        token_offsets=np.concatenate([[0], np.cumsum(steps)]).astype(np.int64),
        grid=np.stack([np.ones(n, dtype=np.int64), steps], 1).astype(np.int32).reshape(n, 2),
        labels=labels,
        target=np.full((n, 2), -1, dtype=np.int32),
        role=np.full(n, ROLE_NONE, dtype=np.int8),
        person_offsets=np.arange(n + 1, dtype=np.int64),
        character=np.full(n, -1, dtype=np.int32),
        label_names=label_names,
        ids=ids,
        source=source,
        extra=extra,
    )


def split_dict(obj: Any, split: str, source: str) -> dict:
    if not isinstance(obj, dict):
        raise RamerError(f"{source}: top level is a {type(obj).__name__}, expected a dict with keys {list(SPLITS)}")
    if split not in obj:
        raise RamerError(f"{source}: missing split '{split}' (keys: {sorted(map(str, obj))})")
    part = obj[split]
    if not isinstance(part, dict):
        raise RamerError(f"{source}: split '{split}' is a {type(part).__name__}, expected a dict")
    return part


def need_key(part: dict, key: str, split: str, source: str) -> Any:
    if key not in part:
        raise RamerError(f"{source}: split '{split}' has no key '{key}' (keys: {sorted(map(str, part))})")
    return part[key]


# ---------------------------------------------------------------------------------------- detection
