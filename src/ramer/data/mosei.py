"""CMU-MOSEI, multi-label emotion: the aligned ``train_valid_test.pt`` and MulT's unaligned pickle.

Layout (spec MODEL.md section 1): one scene per utterance, ``P = 1`` person, ``S`` = time steps,
target = the whole sample (target ``(-1, -1)``, role -1), no personality, character -1.

*Aligned* (DATA_FORMATS section 1): ``S = 60``; every step holds all three modalities (the file
stores no masks). Labels: ``tgt`` lists ``[2, e.., 3]``, multi-hot index = id - 4, names from
``dict['tgt']`` (else happy, sad, anger, surprise, disgust, fear). Samples with ``[2, 3]`` (no
emotion) are kept.

*Unaligned* (section 2): text (N, 50, 300), vision (N, 500, 35), audio (N, 500, 74). The emotion
labels come by position from the aligned file's ``tgt`` (``aligned_path``; default
``train_valid_test.pt`` next to the pickle); a split-size mismatch is an error. A step whose
feature row is all zeros is MulT's padding, so that modality is absent there. Two token layouts:

- ``pool`` (default): ``S`` = the text length (50). Audio and visual are averaged over equal
  windows of their own steps (500 / 50 = 10 frames per token, padding rows left out), present
  where a window holds a real frame. A fixed stand-in for RAMer's learned CTC aligner that keeps
  the data at the aligned file's size.
- ``pad``: ``S`` = the longest modality (500); modality ``m`` sits on its own steps 0..L_m-1 and
  is present only on its real ones. Faithful to the raw sequences, but the flat text array is
  10x larger (about 10 GB for the training split alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ramer.batch import MODALITIES
from ramer.data.readers import (
    SPLITS,
    SplitStream,
    as_array,
    as_float32,
    check_numeric,
    label_names_from_dict,
    labels_from_tgt,
    need_key,
    new_info,
    sequence_store,
    split_dict,
)
from ramer.data.safe_load import safe_load
from ramer.errors import RamerError

MOSEI_LABELS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
ALIGNED_KEYS = {"text": "src-text", "audio": "src-audio", "visual": "src-visual"}
UNALIGNED_KEYS = {"text": "text", "audio": "audio", "visual": "vision"}
SETTINGS_KEYS = {"text": "max_text_seq_len", "audio": "max_audio_seq_len", "visual": "max_visual_seq_len"}
UNALIGNED_LAYOUTS = ("pool", "pad")


def _array3(part: dict, key: str, split: str, source: str) -> Any:
    arr = need_key(part, key, split, source)
    shape = tuple(getattr(arr, "shape", ()))
    if len(shape) != 3:
        raise RamerError(f"{source}: split '{split}' key '{key}' has shape {shape}, expected (N, steps, dim)")
    return arr


def _check_dims(dims: dict, modality: str, key: str, shape: tuple, split: str, source: str) -> None:
    want = dims.setdefault(modality, shape[-1])
    if shape[-1] != want:
        raise RamerError(
            f"{source}: split '{split}' key '{key}' has shape {shape}; feature dim {shape[-1]} differs from {want} "
            "in an earlier split"
        )


def _settings_dict(obj: dict) -> dict:
    st = obj.get("settings")
    if st is None:
        return {}
    src = vars(st) if hasattr(st, "__dict__") else (st if isinstance(st, dict) else {})
    return {k: v for k, v in src.items() if isinstance(v, (int, float, str, bool)) or v is None}


# ------------------------------------------------------------------------------------- aligned
def _check_aligned_split(
    part: dict, split: str, names: tuple[str, ...], settings: dict, source: str, dims: dict
) -> tuple[dict[str, tuple], np.ndarray]:
    """One split of the aligned file checked without converting it: three (N, steps, dim) arrays
    of numbers agreeing on (N, steps), on the feature dims of earlier splits and on ``settings``,
    and a 'tgt' of N id lists. Returns the shapes by key and the multi-hot labels."""
    arrays = {m: _array3(part, k, split, source) for m, k in ALIGNED_KEYS.items()}
    tgt = need_key(part, "tgt", split, source)
    shapes = {ALIGNED_KEYS[m]: tuple(a.shape) for m, a in arrays.items()}
    n, steps = shapes["src-text"][0], shapes["src-text"][1]
    if len({s[:2] for s in shapes.values()}) != 1:
        raise RamerError(f"{source}: split '{split}': shapes {shapes} disagree on (N, steps)")
    where = f"{source}: split '{split}'"
    labels = labels_from_tgt(tgt, len(names), where)  # first: it names a 'tgt' that is not a list
    if len(tgt) != n:
        raise RamerError(f"{source}: split '{split}': 'tgt' has {len(tgt)} entries, features have N = {n} ({shapes})")
    for m, key in ALIGNED_KEYS.items():
        _check_dims(dims, m, key, shapes[key], split, source)
        check_numeric(arrays[m], f"{where} key '{key}'")
        want = settings.get(SETTINGS_KEYS[m])
        if isinstance(want, int) and want != steps:
            raise RamerError(
                f"{source}: split '{split}' key '{key}' has shape {shapes[key]}, "
                f"but settings.{SETTINGS_KEYS[m]} = {want}"
            )
    return shapes, labels


def iter_mosei_aligned(obj: Any, source: str) -> SplitStream:
    """Read a loaded ``train_valid_test.pt`` split by split (its arrays are consumed)."""
    for split in SPLITS:
        split_dict(obj, split, source)
    names, names_from = label_names_from_dict(obj, MOSEI_LABELS, source)
    settings = _settings_dict(obj)
    info = new_info([source])
    info["mosei"] = {"label_names_from": names_from, "settings": settings}
    counts = info["nonfinite_replaced"]
    dims: dict[str, int] = {}  # every split is checked before the first is converted (convert writes as it goes)
    checked = {split: _check_aligned_split(obj[split], split, names, settings, source, dims) for split in SPLITS}

    def splits():
        for split in SPLITS:
            part = obj[split]
            where = f"{source}: split '{split}'"
            shapes, labels = checked.pop(split)
            arrays = {m: part[k] for m, k in ALIGNED_KEYS.items()}
            n, steps = shapes["src-text"][:2]
            before = dict(counts)
            feats = {}
            for m, key in ALIGNED_KEYS.items():
                dim = shapes[key][-1]  # explicit: an empty split (N = 0) has no -1 to infer
                feats[m] = as_float32(arrays.pop(m), counts, m, f"{where} key '{key}'").reshape(n * steps, dim)
                part.pop(key, None)  # free the source array once converted
            extra = {
                "nonfinite_replaced": {m: counts[m] - before[m] for m in MODALITIES},
                "empty_label_samples": int((labels.sum(1) == 0).sum()),
            }
            store = sequence_store(
                feats,
                np.ones((n * steps, 3), dtype=bool),
                np.full(n, steps),
                labels,
                names,
                [f"{split}/{i}" for i in range(n)],
                f"{source}[{split}]",
                extra,
            )
            info.setdefault("splits", {})[split] = extra
            del feats, part
            obj[split] = None
            yield split, store

    return SplitStream("mosei_aligned", source, names, splits(), info)


# ------------------------------------------------------------------------------------- unaligned
def _aligned_labels(aligned_path: Path) -> tuple[dict[str, Any], tuple[str, ...], str]:
    """``tgt`` per split and the label names of the aligned file (its features are dropped)."""
    obj = safe_load(aligned_path)
    src = str(aligned_path)
    tgts = {s: need_key(split_dict(obj, s, src), "tgt", s, src) for s in SPLITS}
    names, names_from = label_names_from_dict(obj, MOSEI_LABELS, src)
    del obj
    return tgts, names, names_from


def _real_rows(x: np.ndarray) -> np.ndarray:
    """(N, L) True where a step's feature row is not all zeros (MulT pads with zero rows). Read
    before non-finite values are replaced, so a row of -inf counts as real."""
    n = x.shape[0]
    out = np.empty(x.shape[:2], dtype=bool)
    per = max(1, (1 << 24) // max(1, x.shape[1] * x.shape[2]))
    for i in range(0, n, per):
        out[i : i + per] = (x[i : i + per] != 0).any(-1)
    return out


def _pool(x: np.ndarray, real: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Average ``x`` (N, L, d) over ``steps`` equal windows of its L steps, real rows only."""
    n, length, _ = x.shape
    if length == steps:
        return x, real
    j = np.arange(steps)
    starts = (j * length) // steps
    if length < steps:  # fewer frames than tokens: each token takes the frame under it
        return x[:, starts], real[:, starts]
    # padding rows are all zeros already and non-finite values were zeroed: plain sums suffice
    sums = np.add.reduceat(x, starts, axis=1)
    cnt = np.add.reduceat(real.astype(np.int32), starts, axis=1)
    return (sums / np.maximum(cnt, 1)[..., None]).astype(np.float32), cnt > 0


def _sample_ids(part: dict, n: int, split: str, source: str) -> tuple[list[str], dict[str, int]]:
    """The split's sample ids from its ``'id'`` rows (video id, start, end joined by ``_``), or
    ``split/i`` without an ``'id'`` key; a repeated id gets ``#i`` (its position) after it. Returns
    the ids and the counts of both (``ids_from_position``, ``duplicate_ids_renamed``)."""
    raw = part.get("id")
    ids = []
    if raw is not None:
        if not hasattr(raw, "__len__") or len(raw) != n:
            size = len(raw) if hasattr(raw, "__len__") else type(raw).__name__
            raise RamerError(
                f"{source}: split '{split}': 'id' has {size} rows for {n} samples; it must have one per sample"
            )
        for i, row in enumerate(raw):
            fields = np.asarray(row, dtype=object).reshape(-1).tolist()
            ids.append("_".join(f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f) for f in fields))
    else:
        ids = [f"{split}/{i}" for i in range(n)]
    seen: set[str] = set()
    out = []
    for i, s in enumerate(ids):
        name = s
        while name in seen:  # again if the renamed id is one of the file's ('a', 'a#2', 'a')
            name = f"{name}#{i}"
        out.append(name)
        seen.add(name)
    renamed = sum(a != b for a, b in zip(ids, out))
    return out, {"ids_from_position": n if raw is None else 0, "duplicate_ids_renamed": renamed}


def _check_unaligned_split(
    part: dict, split: str, tgt: Any, names: tuple[str, ...], source: str, aligned_path: Path, dims: dict
) -> tuple[dict[str, tuple], np.ndarray, tuple[list[str], dict[str, int]]]:
    """One split of MulT's pickle checked without converting it: three (N, steps, dim) arrays of
    numbers agreeing on N and on the feature dims of earlier splits, the aligned file's 'tgt' of N
    id lists, the ids. Returns the shapes by key, the multi-hot labels and ``_sample_ids``."""
    where = f"{source}: split '{split}'"
    arrays = {m: _array3(part, k, split, source) for m, k in UNALIGNED_KEYS.items()}
    shapes = {UNALIGNED_KEYS[m]: tuple(a.shape) for m, a in arrays.items()}
    n = shapes["text"][0]
    if len({s[0] for s in shapes.values()}) != 1:
        raise RamerError(f"{where}: shapes {shapes} disagree on N")
    for m, key in UNALIGNED_KEYS.items():
        _check_dims(dims, m, key, shapes[key], split, source)
        check_numeric(arrays[m], f"{where} key '{key}'")
    labels = labels_from_tgt(tgt, len(names), f"{aligned_path}: split '{split}'")
    if len(labels) != n:
        raise RamerError(
            f"{source}: split '{split}' has {n} samples but the aligned file {aligned_path} has "
            f"{len(labels)} 'tgt' entries: labels are taken by position, sizes must match"
        )
    return shapes, labels, _sample_ids(part, n, split, source)


def iter_mosei_unaligned(
    obj: Any, source: str, aligned_path: str | Path | None = None, layout: str = "pool"
) -> SplitStream:
    """Read a loaded MulT ``mosei_senti_data_noalign.pkl``; labels from the aligned file."""
    if layout not in UNALIGNED_LAYOUTS:
        raise RamerError(f"unaligned MOSEI layout '{layout}' unknown; choose one of {UNALIGNED_LAYOUTS}")
    for split in SPLITS:
        split_dict(obj, split, source)
    if aligned_path is None:
        aligned_path = Path(source).with_name("train_valid_test.pt")
        if not aligned_path.is_file():
            raise RamerError(
                f"{source}: the unaligned MOSEI pickle has no emotion labels; they come from the aligned file "
                f"train_valid_test.pt, not found at {aligned_path} (pass aligned_path / data.aligned_path)"
            )
    aligned_path = Path(aligned_path)
    tgts, names, names_from = _aligned_labels(aligned_path)
    dims: dict[str, int] = {}
    checked = {
        split: _check_unaligned_split(obj[split], split, tgts[split], names, source, aligned_path, dims)
        for split in SPLITS
    }  # every split before the first is converted (convert writes as it goes)
    info = new_info([source, str(aligned_path)])
    info["mosei"] = {"label_names_from": names_from, "labels_from": str(aligned_path), "unaligned_layout": layout}
    counts = info["nonfinite_replaced"]

    def splits():
        for split in SPLITS:
            part = obj[split]
            where = f"{source}: split '{split}'"
            shapes, labels, (ids, id_counts) = checked.pop(split)
            arrays = {m: part[k] for m, k in UNALIGNED_KEYS.items()}
            n = shapes["text"][0]
            before = dict(counts)
            lengths = {m: shapes[UNALIGNED_KEYS[m]][1] for m in MODALITIES}
            steps = lengths["text"] if layout == "pool" else max(lengths.values())
            feats, present = {}, np.zeros((n * steps, 3), dtype=bool)
            for k, (m, key) in enumerate(UNALIGNED_KEYS.items()):
                raw = as_array(arrays.pop(m), f"{where} key '{key}'")
                real = _real_rows(raw)
                x = as_float32(raw, counts, m, f"{where} key '{key}'")
                del raw
                part.pop(key, None)
                if layout == "pool":
                    x, real = _pool(x, real, steps)
                else:
                    padded = np.zeros((n, steps, x.shape[2]), dtype=np.float32)
                    padded[:, : x.shape[1]] = x
                    full = np.zeros((n, steps), dtype=bool)
                    full[:, : real.shape[1]] = real
                    x, real = padded, full
                feats[m] = np.ascontiguousarray(x).reshape(n * steps, x.shape[2])  # explicit: N may be 0
                present[:, k] = real.reshape(-1)
                del x
            extra = {
                "nonfinite_replaced": {m: counts[m] - before[m] for m in MODALITIES},
                "empty_label_samples": int((labels.sum(1) == 0).sum()),
                "steps": int(steps),
                "source_steps": {m: int(v) for m, v in lengths.items()},
                **id_counts,
            }
            store = sequence_store(feats, present, np.full(n, steps), labels, names, ids, f"{source}[{split}]", extra)
            info.setdefault("splits", {})[split] = extra
            obj[split] = None
            del feats, present, part
            yield split, store

    return SplitStream("mosei_unaligned", source, names, splits(), info)
