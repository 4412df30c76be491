"""Which dataset layout a path holds, and one entry point that loads any of them.

``detect_format(path)`` recognises a layout without running anything from the file: a folder is
the native format (``meta.json``) or a MEmoR release (``anno.json`` + ``data.json``); a file is
sniffed through the first opcodes of its pickle (``pickletools``, nothing is called) and, when
that is not conclusive, read with the allow-list loader (``safe_load``) and recognised by shape.

``load_dataset(path, fmt, data_cfg)`` returns a ``DataBundle`` with splits train / valid / test.
The loaders themselves live in ``mosei.py``, ``m3ed.py`` and ``memor.py``; this module also holds
the helpers they share (float32 cast with non-finite replacement, ``tgt`` label lists, scene
stores of single-person sequences).
"""

from __future__ import annotations

import pickletools
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramer.batch import MODALITIES, ROLE_NONE
from ramer.config import DataConfig
from ramer.data.safe_load import is_torch_file, safe_load
from ramer.data.store import DataBundle, SceneStore, is_native, load_native
from ramer.errors import RamerError

FORMATS = ("mosei_aligned", "mosei_unaligned", "m3ed_pickle", "m3ed_carat", "memor", "native", "synthetic")
SPLITS = ("train", "valid", "test")
SPECIAL_TGT = {"<blank>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
FIRST_LABEL_ID = 4  # emotion ids in 'tgt' lists start after the four specials


# ---------------------------------------------------------------------------------------- streams
@dataclass
class SplitStream:
    """A dataset read split by split: ``splits`` yields ``(name, SceneStore)`` and frees the source
    arrays of a split once it is built, so a converter can write each split and drop it.
    ``info`` (JSON-safe) is complete once ``splits`` is exhausted."""

    format: str
    source: str
    label_names: tuple[str, ...]
    splits: Iterator[tuple[str, SceneStore]]
    info: dict = field(default_factory=dict)

    def to_bundle(self) -> DataBundle:
        splits = dict(self.splits)
        return DataBundle(splits, tuple(self.label_names), self.format, self.source, self.info)


def new_info(sources: list[str]) -> dict:
    return {"source_files": [str(s) for s in sources], "nonfinite_replaced": {m: 0 for m in MODALITIES}}


# ---------------------------------------------------------------------------------------- helpers
_CHUNK = 1 << 22  # elements per non-finite scan chunk (16 MiB of float32)


def as_float32(arr: Any, counts: dict[str, int], modality: str, where: str) -> np.ndarray:
    """``arr`` as a C-contiguous float32 array with +-inf/NaN replaced by 0, counted in
    ``counts[modality]``. Works in place when ``arr`` already is a writable float32 array (the
    loaders own what they read), so a large split is never copied twice."""
    if hasattr(arr, "detach") and hasattr(arr, "numpy"):  # a torch tensor
        arr = arr.detach().cpu().numpy()
    a = np.asarray(arr)
    if a.dtype.kind not in "fiub":
        raise RamerError(f"{where}: dtype {a.dtype} (shape {a.shape}), expected numbers")
    if a.dtype != np.float32:
        a = a.astype(np.float32)  # float64 values beyond float32's range become inf: counted below
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
            raise RamerError(f"{source}: dict['tgt'][{name!r}] = {i}: emotion ids must be distinct and >= {FIRST_LABEL_ID}")
        by_id[i] = str(name)
    ids = sorted(by_id)
    if not ids or ids != list(range(FIRST_LABEL_ID, FIRST_LABEL_ID + len(ids))):
        raise RamerError(f"{source}: dict['tgt'] emotion ids {ids} are not {FIRST_LABEL_ID}..{FIRST_LABEL_ID + len(ids) - 1}")
    return tuple(by_id[i] for i in ids), "dict['tgt']"


def labels_from_tgt(tgt: Any, n_labels: int, where: str) -> np.ndarray:
    """Multi-hot (N, C) uint8 from ``tgt`` lists ``[2, e_1, .., e_k, 3]`` (index = id - 4). The
    specials ``<s>``/``</s>`` and ``<blank>`` padding are skipped; ``[2, 3]`` gives an empty row."""
    if hasattr(tgt, "tolist") and not isinstance(tgt, list):
        tgt = tgt.tolist() if getattr(tgt, "dtype", None) != object else list(tgt)
    if not isinstance(tgt, (list, tuple)):
        raise RamerError(f"{where}: 'tgt' is a {type(tgt).__name__}, expected a list of id lists")
    out = np.zeros((len(tgt), n_labels), dtype=np.uint8)
    for i, seq in enumerate(tgt):
        ids = np.asarray(seq).reshape(-1)
        if ids.dtype.kind not in "iu" and not (ids.dtype.kind == "f" and np.all(ids == np.round(ids))) and ids.size:
            raise RamerError(f"{where}: tgt[{i}] = {seq!r} is not a list of integer ids")
        for v in ids.astype(np.int64).tolist():
            if v in (0, 2, 3):
                continue
            j = v - FIRST_LABEL_ID
            if not 0 <= j < n_labels:
                raise RamerError(
                    f"{where}: tgt[{i}] holds id {v}; emotion ids must be {FIRST_LABEL_ID}..{FIRST_LABEL_ID + n_labels - 1}"
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
_MEMO_OPS = {"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT", "FRAME", "PROTO"}


def _sniff_pickle(fh, max_ops: int = 400) -> str | None:
    """Guess a layout from the first opcodes of a pickle stream. Nothing is executed, and the guess
    is made before the first feature array's bytes are read; ``None`` when not conclusive."""
    top = None  # the first container opcode: a dict or a list at the top level
    after_src = False  # the previous opcode was a 'src-*' key of a split
    try:
        for n, (op, arg, _pos) in enumerate(pickletools.genops(fh)):
            name = op.name
            if n >= max_ops or name == "STOP":
                return None
            if name in _MEMO_OPS:
                continue
            if top is None:
                if name in ("EMPTY_LIST", "LIST"):
                    return "m3ed_pickle"  # a top-level list: only M3ED's 10-item pickle is one
                if name in ("EMPTY_DICT", "DICT"):
                    top = "dict"
                    continue
                return None
            is_str = isinstance(arg, str) and "UNICODE" in name
            if after_src:
                after_src = False
                if name in ("EMPTY_LIST", "LIST", "MARK"):
                    return "m3ed_carat"  # a list of per-dialogue arrays
                if name in ("GLOBAL", "BINGET", "LONG_BINGET", "GET") or (is_str and arg.startswith(("numpy", "torch"))):
                    return "mosei_aligned"  # one (N, L, d) array (or tensor)
                return None
            if is_str:
                if arg == "len_list":
                    return "m3ed_carat"
                if arg in ("vision", "text"):
                    return "mosei_unaligned"
                after_src = arg in ("src-text", "src-audio", "src-visual")
    except Exception:
        return None
    return None


def _sniff_file(path: Path) -> str | None:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if len(names) != 1:
                    return None
                with zf.open(names[0]) as fh:
                    return _sniff_pickle(fh)
        if is_torch_file(path):
            return None  # legacy torch layout: decided after loading
        with open(path, "rb") as fh:
            return _sniff_pickle(fh)
    except OSError:
        return None


def classify_object(obj: Any, source: str) -> str:
    """The layout of an already (safely) loaded pickle / torch.save object."""
    if isinstance(obj, (list, tuple)):
        if len(obj) == 10:
            return "m3ed_pickle"
        raise RamerError(
            f"{source}: a {type(obj).__name__} of {len(obj)} items; an M3ED feature pickle is a list of 10 "
            "(videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence, trainVid, valVid, testVid)"
        )
    if isinstance(obj, dict) and all(s in obj for s in SPLITS):
        part = obj["train"]
        if isinstance(part, dict):
            if "len_list" in part:
                return "m3ed_carat"
            if "src-text" in part:
                return "mosei_aligned"
            if "vision" in part or ("text" in part and "audio" in part):
                return "mosei_unaligned"
    keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    raise RamerError(
        f"{source}: unknown layout ({keys}); expected MOSEI train_valid_test.pt, MulT's mosei_senti_data_noalign.pkl, "
        "an M3ED feature pickle or CARAT's m3ed_data_60.pt (see docs/DATA.md)"
    )


def _detect(path: str | Path | None) -> tuple[str, Any]:
    """(format, the loaded object when detection had to load the file, else None)."""
    if path is None or str(path) == "synthetic":
        return "synthetic", None
    p = Path(path)
    if not p.exists():
        raise RamerError(f"{p}: no such file or directory")
    if p.is_dir():
        if is_native(p):
            return "native", None
        if (p / "anno.json").is_file() and (p / "data.json").is_file():
            return "memor", None
        raise RamerError(
            f"{p}: unknown dataset folder: expected a native folder (meta.json) or a MEmoR release "
            "(anno.json, data.json, train_id.txt, test_id.txt, features/)"
        )
    guess = _sniff_file(p)
    if guess is not None:
        return guess, None
    obj = safe_load(p)
    return classify_object(obj, str(p)), obj


def detect_format(path: str | Path | None) -> str:
    """The layout at ``path`` (one of ``FORMATS``); ``None`` means the synthetic benchmark.
    Nothing in the file is executed; most files are recognised from their first bytes."""
    return _detect(path)[0]


# ---------------------------------------------------------------------------------------- loading
def open_dataset(
    path: str | Path | None,
    fmt: str = "auto",
    data_cfg: DataConfig | None = None,
    *,
    aligned_path: str | Path | None = None,
    unaligned_layout: str = "pool",
    memor_character_order: tuple[str, ...] | list[str] | None = None,
    valid_fraction: float = 0.1,
    valid_seed: int = 2020,
) -> SplitStream | DataBundle:
    """A ``SplitStream`` for the public layouts (read split by split), a ``DataBundle`` for the
    native and synthetic ones. See ``load_dataset`` for the arguments."""
    cfg = data_cfg or DataConfig()
    if fmt not in ("auto",) + FORMATS:
        raise RamerError(f"unknown data format '{fmt}'; known: auto, {', '.join(FORMATS)}")
    if fmt == "synthetic" or (fmt == "auto" and path is None):
        from ramer.data import synthetic

        return synthetic.generate(cfg.synthetic)
    if path is None:
        raise RamerError(f"data format '{fmt}' needs a path")
    p = Path(path)
    if not p.exists():
        raise RamerError(f"{p}: no such file or directory")
    explicit = fmt != "auto"
    obj = None
    if not explicit:
        fmt, obj = _detect(p)
    if fmt == "native":
        return load_native(p)
    if fmt == "memor":
        from ramer.data.memor import iter_memor

        return iter_memor(p, labels=cfg.labels, character_order=memor_character_order,
                          valid_fraction=valid_fraction, valid_seed=valid_seed)
    if p.is_dir():
        raise RamerError(f"{p}: is a folder; format '{fmt}' expects a file")
    guessed = explicit or obj is None  # fmt was named, or sniffed from the first opcodes
    if obj is None:
        obj = safe_load(p)
    try:
        actual = classify_object(obj, str(p))
    except RamerError:
        if not guessed:
            raise
        actual = fmt  # malformed: the named (or sniffed) format's loader says precisely what is wrong
    if not explicit:
        fmt = actual  # the loaded object's structure overrides the sniffed guess
    elif actual != fmt:
        raise RamerError(f"{p}: holds the '{actual}' layout, not '{fmt}'")
    return _stream_from_object(fmt, obj, p, cfg, aligned_path, unaligned_layout)


def _stream_from_object(fmt: str, obj: Any, p: Path, cfg: DataConfig, aligned_path, unaligned_layout) -> SplitStream:
    if fmt == "mosei_aligned":
        from ramer.data.mosei import iter_mosei_aligned

        return iter_mosei_aligned(obj, str(p))
    if fmt == "mosei_unaligned":
        from ramer.data.mosei import iter_mosei_unaligned

        return iter_mosei_unaligned(obj, str(p), aligned_path=aligned_path, layout=unaligned_layout)
    if fmt == "m3ed_pickle":
        from ramer.data.m3ed import iter_m3ed_pickle

        return iter_m3ed_pickle(obj, str(p), max_utterances=cfg.max_utterances)
    if fmt == "m3ed_carat":
        from ramer.data.m3ed import iter_m3ed_carat

        return iter_m3ed_carat(obj, str(p))
    raise RamerError(f"data format '{fmt}' cannot be read from a single file")


def load_dataset(
    path: str | Path | None,
    fmt: str = "auto",
    data_cfg: DataConfig | None = None,
    *,
    aligned_path: str | Path | None = None,
    unaligned_layout: str = "pool",
    memor_character_order: tuple[str, ...] | list[str] | None = None,
    valid_fraction: float = 0.1,
    valid_seed: int = 2020,
) -> DataBundle:
    """Load a dataset in any supported layout as a ``DataBundle`` (splits train / valid / test).

    ``fmt``: ``auto`` or one of ``FORMATS``. ``data_cfg`` gives ``labels`` (MEmoR primary /
    fine_grained), ``max_utterances`` (M3ED) and the synthetic settings. Keyword options:
    ``aligned_path`` (unaligned MOSEI: the aligned ``train_valid_test.pt`` whose ``tgt`` gives the
    emotion labels; default: that file name next to the pickle), ``unaligned_layout`` (``pool`` or
    ``pad``, see docs/DATA.md), ``memor_character_order`` (8 names, default the MEmoR code's
    order), ``valid_fraction`` / ``valid_seed`` (MEmoR's validation split of train).
    """
    opened = open_dataset(
        path, fmt, data_cfg, aligned_path=aligned_path, unaligned_layout=unaligned_layout,
        memor_character_order=memor_character_order, valid_fraction=valid_fraction, valid_seed=valid_seed,
    )
    return opened if isinstance(opened, DataBundle) else opened.to_bundle()
