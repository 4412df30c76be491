"""M3ED (dyadic Chinese TV dialogue): the original feature pickle and CARAT's ``m3ed_data_60.pt``.

One scene per dialogue; labels = the set of emotions over **all** utterances of the dialogue
(Happy, Neutral, Sad, Disgust, Anger, Fear, Surprise); target = the whole dialogue (target
``(-1, -1)``, role -1); no personality; character -1 (speakers A/B are not identities across
dialogues).

*Original pickle* (DATA_FORMATS section 3): ``P = 2`` rows (speaker A, speaker B) x ``S`` = the
first ``max_utterances`` utterances; an utterance's text, audio and visual are present only in
its speaker's row. Labels of utterances beyond the cut still count; how many labels come *only*
from beyond the cut is reported (``labels_only_beyond_cut``).

*CARAT's file* (section 4): no speakers are stored, so ``P = 1`` x ``S = len_list[i]``
utterances (the zero padding up to 60 is not stored). CARAT swapped the names of audio and
visual; they are read by dimension (the 342-d features are visual) and the swap is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ramer.batch import MODALITIES, ROLE_NONE
from ramer.data.readers import (
    SPLITS,
    SplitStream,
    as_float32,
    label_names_from_dict,
    labels_from_tgt,
    need_key,
    new_info,
    sequence_store,
    split_dict,
)
from ramer.data.safe_load import safe_load
from ramer.data.store import DataBundle, SceneStore
from ramer.errors import RamerError

M3ED_LABELS = ("Happy", "Neutral", "Sad", "Disgust", "Anger", "Fear", "Surprise")
ITEMS = (
    "videoIDs",
    "videoSpeakers",
    "videoLabels",
    "videoText",
    "videoAudio",
    "videoVisual",
    "videoSentence",
    "trainVid",
    "valVid",
    "testVid",
)
SPLIT_ITEM = {"train": 7, "valid": 8, "test": 9}
FEATURE_ITEM = {"text": 3, "audio": 4, "visual": 5}
SPEAKERS = ("A", "B")
CARAT_VISUAL_DIM = 342  # DenseFace; CARAT stores it under 'src-audio'


def _speaker(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()


# ---------------------------------------------------------------------------------- original pickle
def iter_m3ed_pickle(obj: Any, source: str, max_utterances: int = 60) -> SplitStream:
    """Read a loaded M3ED feature pickle (a list of 10, see DATA_FORMATS section 3)."""
    if not isinstance(obj, (list, tuple)) or len(obj) != 10:
        got = f"a {type(obj).__name__}" + (f" of {len(obj)} items" if isinstance(obj, (list, tuple)) else "")
        raise RamerError(f"{source}: expected a list of 10 items ({', '.join(ITEMS)}), got {got}")
    if max_utterances < 1:
        raise RamerError(f"max_utterances must be >= 1, got {max_utterances}")
    for k in range(7):
        if not hasattr(obj[k], "keys"):
            raise RamerError(f"{source}: item {k} ({ITEMS[k]}) is a {type(obj[k]).__name__}, expected a dict")
    for k in range(7, 10):
        if not isinstance(obj[k], (list, tuple, np.ndarray)):
            raise RamerError(
                f"{source}: item {k} ({ITEMS[k]}) is a {type(obj[k]).__name__}, expected a list of dialogue ids"
            )
    info = new_info([source])
    info["m3ed"] = {"layout": "pickle", "max_utterances": int(max_utterances)}
    counts = info["nonfinite_replaced"]
    n_labels = len(M3ED_LABELS)

    def dialogue(split: str, d: Any, dims: dict) -> tuple[list[int], list[int], dict]:
        where = f"{source}: split '{split}' dialogue '{d}'"
        for k in range(6):
            if d not in obj[k]:
                raise RamerError(
                    f"{source}: split '{split}': dialogue '{d}' (listed in {ITEMS[SPLIT_ITEM[split]]}) "
                    f"is missing from {ITEMS[k]}"
                )
        n = len(obj[0][d])
        spk = [_speaker(x) for x in obj[1][d]]
        lab = list(obj[2][d])
        if len(spk) != n or len(lab) != n:
            raise RamerError(
                f"{where}: {n} utterance ids, {len(spk)} speakers (videoSpeakers), {len(lab)} labels (videoLabels)"
            )
        bad = [x for x in spk if x not in SPEAKERS]
        if bad:
            raise RamerError(f"{where}: videoSpeakers holds {bad[0]!r}; expected 'A' or 'B'")
        try:
            lab = [int(x) for x in lab]
        except (TypeError, ValueError):
            raise RamerError(f"{where}: videoLabels holds a non-integer label ({lab[:5]})") from None
        out = [x for x in lab if not 0 <= x < n_labels]
        if out:
            raise RamerError(
                f"{where}: videoLabels holds {out[0]}; labels must be 0..{n_labels - 1} ({', '.join(M3ED_LABELS)})"
            )
        feats = {}
        for m, k in FEATURE_ITEM.items():
            arr = obj[k][d]
            arr = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise RamerError(f"{where}: {ITEMS[k]} has shape {arr.shape}, expected ({n}, dim) for {n} utterances")
            want = dims.setdefault(m, arr.shape[1])
            if arr.shape[1] != want:
                raise RamerError(
                    f"{where}: {ITEMS[k]} has shape {arr.shape}; feature dim {arr.shape[1]} differs from {want} "
                    "elsewhere"
                )
            feats[m] = arr
        return [SPEAKERS.index(x) for x in spk], lab, feats

    def splits():
        dims: dict[str, int] = {}
        for split in SPLITS:
            vids = list(obj[SPLIT_ITEM[split]])
            parsed = [dialogue(split, d, dims) for d in vids]  # validate the whole split first
            steps = np.array([max(1, min(len(spk), max_utterances)) for spk, _, _ in parsed], dtype=np.int64)
            sizes = 2 * steps
            T = int(sizes.sum())
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            text = np.zeros((T, dims.get("text", 0)), dtype=np.float32)
            audio = np.zeros((T, dims.get("audio", 0)), dtype=np.float32)
            visual = np.zeros((T, dims.get("visual", 0)), dtype=np.float32)
            out = {"text": text, "audio": audio, "visual": visual}
            present = np.zeros((T, 3), dtype=bool)
            labels = np.zeros((len(vids), n_labels), dtype=np.uint8)
            before = dict(counts)
            truncated = beyond = beyond_samples = empty = 0
            for i, (spk, lab, feats) in enumerate(parsed):
                n, S = len(spk), int(steps[i])
                kept = min(n, S)
                if n == 0:
                    empty += 1
                rows = offsets[i] + np.asarray(spk[:kept], dtype=np.int64) * S + np.arange(kept)
                for m in MODALITIES:
                    out[m][rows] = as_float32(
                        np.array(feats[m][:kept]),
                        counts,
                        m,
                        f"{source}: split '{split}' dialogue '{vids[i]}' {ITEMS[FEATURE_ITEM[m]]}",
                    )
                present[rows] = True
                labels[i, lab] = 1
                if n > S:
                    truncated += 1
                    only_beyond = set(lab[S:]) - set(lab[:S])
                    beyond += len(only_beyond)
                    beyond_samples += bool(only_beyond)
            n_d = len(vids)
            extra = {
                "nonfinite_replaced": {m: counts[m] - before[m] for m in MODALITIES},
                "empty_label_samples": int((labels.sum(1) == 0).sum()),
                "dialogues_truncated": truncated,
                "labels_only_beyond_cut": beyond,
                "samples_with_labels_only_beyond_cut": beyond_samples,
                "empty_dialogues": empty,
                "utterances": int(sum(len(p[0]) for p in parsed)),
                "utterances_kept": int(present.any(1).sum()),
            }
            store = SceneStore(
                text=text,
                audio=audio,
                visual=visual,
                present=present,
                token_offsets=offsets,
                grid=np.stack([np.full(n_d, 2), steps], 1).astype(np.int32).reshape(n_d, 2),
                labels=labels,
                target=np.full((n_d, 2), -1, dtype=np.int32),
                role=np.full(n_d, ROLE_NONE, dtype=np.int8),
                person_offsets=(2 * np.arange(n_d + 1)).astype(np.int64),
                character=np.full(2 * n_d, -1, dtype=np.int32),
                label_names=M3ED_LABELS,
                ids=[str(d) for d in vids],
                source=f"{source}[{split}]",
                extra=extra,
            )
            info.setdefault("splits", {})[split] = extra
            del parsed
            yield split, store

    return SplitStream("m3ed_pickle", source, M3ED_LABELS, splits(), info)


def load_m3ed_pickle(path: str | Path, max_utterances: int = 60) -> DataBundle:
    return iter_m3ed_pickle(safe_load(path), str(path), max_utterances=max_utterances).to_bundle()


# ---------------------------------------------------------------------------------- CARAT's file
def _first_dim(seq: Any, key: str, split: str, source: str) -> int:
    if len(seq) == 0:
        raise RamerError(f"{source}: split '{split}' key '{key}' is empty")
    shape = tuple(np.shape(seq[0]))
    if len(shape) != 2:
        raise RamerError(f"{source}: split '{split}' key '{key}'[0] has shape {shape}, expected (utterances, dim)")
    return shape[1]


def iter_m3ed_carat(obj: Any, source: str) -> SplitStream:
    """Read a loaded ``m3ed_data_60.pt`` (CARAT), fixing its audio/visual naming by dimension."""
    for split in SPLITS:
        part = split_dict(obj, split, source)
        for key in ("src-text", "src-audio", "src-visual", "len_list", "tgt"):
            need_key(part, key, split, source)
    names, names_from = label_names_from_dict(obj, M3ED_LABELS, source)
    d_vis = _first_dim(obj["train"]["src-visual"], "src-visual", "train", source)
    d_aud = _first_dim(obj["train"]["src-audio"], "src-audio", "train", source)
    swapped = d_aud == CARAT_VISUAL_DIM and d_vis != CARAT_VISUAL_DIM
    keys = {
        "text": "src-text",
        "audio": "src-visual" if swapped else "src-audio",
        "visual": "src-audio" if swapped else "src-visual",
    }
    info = new_info([source])
    info["m3ed"] = {
        "layout": "carat",
        "audio_visual_swapped": bool(swapped),
        "read_as": keys,
        "label_names_from": names_from,
    }
    counts = info["nonfinite_replaced"]

    def splits():
        dims: dict[str, int] = {}
        for split in SPLITS:
            part = obj[split]
            where = f"{source}: split '{split}'"
            seqs = {m: part[k] for m, k in keys.items()}
            lens = np.asarray(part["len_list"]).reshape(-1)
            n = len(seqs["text"])
            sizes = {keys[m]: len(s) for m, s in seqs.items()}
            if len(set(sizes.values())) != 1 or len(lens) != n or len(part["tgt"]) != n:
                raise RamerError(
                    f"{where}: sample counts disagree: {sizes}, len_list {len(lens)}, tgt {len(part['tgt'])}"
                )
            if lens.dtype.kind not in "iuf" or (lens < 0).any():
                raise RamerError(f"{where}: 'len_list' must hold utterance counts >= 0 (dtype {lens.dtype})")
            lens = lens.astype(np.int64)
            for m, k in keys.items():
                dim = _first_dim(seqs[m], k, split, source)
                want = dims.setdefault(m, dim)
                if dim != want:
                    raise RamerError(f"{where} key '{k}': feature dim {dim} differs from {want} in an earlier split")
            n_steps = {m: np.shape(seqs[m][0])[0] for m in MODALITIES}
            labels = labels_from_tgt(part["tgt"], len(names), where)
            steps = np.maximum(1, np.minimum(lens, min(n_steps.values())))
            offsets = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
            T = int(offsets[-1])
            feats = {m: np.zeros((T, dims[m]), dtype=np.float32) for m in MODALITIES}
            present = np.zeros((T, 3), dtype=bool)
            before = dict(counts)
            for i in range(n):
                kept = int(min(lens[i], steps[i]))
                for m in MODALITIES:
                    x = seqs[m][i]
                    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
                    if x.ndim != 2 or x.shape[1] != dims[m]:
                        raise RamerError(
                            f"{where} key '{keys[m]}'[{i}] has shape {x.shape}, expected (utterances, {dims[m]})"
                        )
                    if x.shape[0] < kept:
                        raise RamerError(
                            f"{where} key '{keys[m]}'[{i}] has shape {x.shape} but len_list[{i}] = {lens[i]}"
                        )
                    feats[m][offsets[i] : offsets[i] + kept] = as_float32(
                        np.array(x[:kept]), counts, m, f"{where} key '{keys[m]}'[{i}]"
                    )
                present[offsets[i] : offsets[i] + kept] = True
            extra = {
                "nonfinite_replaced": {m: counts[m] - before[m] for m in MODALITIES},
                "empty_label_samples": int((labels.sum(1) == 0).sum()),
                "empty_dialogues": int((lens == 0).sum()),
                "len_list_beyond_stored_steps": int((lens > min(n_steps.values())).sum()),
            }
            ids = [f"{split}/{i}" for i in range(n)]
            store = sequence_store(feats, present, steps, labels, names, ids, f"{source}[{split}]", extra)
            info.setdefault("splits", {})[split] = extra
            obj[split] = None
            del seqs, part, feats
            yield split, store

    return SplitStream("m3ed_carat", source, names, splits(), info)


def load_m3ed_carat(path: str | Path) -> DataBundle:
    return iter_m3ed_carat(safe_load(path), str(path)).to_bundle()
