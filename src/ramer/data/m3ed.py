"""M3ED (dyadic Chinese TV dialogue): the original feature pickle and CARAT's ``m3ed_data_60.pt``.

*Dialogue protocol* (the default; CARAT's and the RAMer paper's reading): one scene per dialogue;
labels = the set of emotions over **all** utterances of the dialogue (Happy, Neutral, Sad,
Disgust, Anger, Fear, Surprise); target = the whole dialogue (target ``(-1, -1)``, role -1); no
personality; character -1 (speakers A/B are not identities across dialogues).

*Original pickle* (DATA_FORMATS section 3): ``P = 2`` rows (speaker A, speaker B) x ``S`` = the
first ``max_utterances`` utterances; an utterance's text, audio and visual are present only in
its speaker's row. Labels of utterances beyond the cut still count; how many labels come *only*
from beyond the cut is reported (``labels_only_beyond_cut``). Splits: ``trainVid`` / ``valVid`` /
``testVid``; a dialogue of ``videoIDs`` in none of them is counted (``dialogues_in_no_split``).

*Utterance protocol* (``protocol="utterance"``, the pickle plus the release's ``annotation.json``):
one scene per utterance, labelled with its ``final_mul_emo``; the same two rows over a window of
at most ``max_utterances`` utterances that holds the target (``window_start``); target = (speaker
row, the utterance's segment), role 1 (speaker).

*CARAT's file* (section 4): no speakers are stored, so ``P = 1`` x ``S = len_list[i]``
utterances, at most the rows stored for that sample (the zero padding up to 60 is not stored).
CARAT swapped the names of audio and visual; they are read by dimension (the 342-d features are
visual) and the swap is reported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ramer.batch import MODALITIES, ROLE_NONE, ROLE_SPEAKER
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
    whole_number,
)
from ramer.data.store import SceneStore
from ramer.errors import RamerError
from ramer.paths import loads_json, read_text

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
PROTOCOLS = ("dialogue", "utterance")
CARAT_VISUAL_DIM = 342  # DenseFace; CARAT stores it under 'src-audio'


def _speaker(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()


# ---------------------------------------------------------------------------------- original pickle
def _check_split_lists(obj: list, source: str) -> int:
    """Items 7-9 (trainVid, valVid, testVid): hashable dialogue ids, each listed once (the splits
    are disjoint, a dialogue is one sample). Returns how many dialogues of videoIDs are in none of
    the lists (read by no split)."""
    listed: dict[Any, tuple[int, int]] = {}  # dialogue -> (item, entry) where it is first listed
    for k in SPLIT_ITEM.values():
        for j, d in enumerate(obj[k]):
            try:
                first, at = listed.setdefault(d, (k, j))
            except TypeError:
                raise RamerError(
                    f"{source}: item {k} ({ITEMS[k]}) entry {j} is a {type(d).__name__}, expected a dialogue id"
                ) from None
            if first != k:
                raise RamerError(
                    f"{source}: dialogue '{d}' is listed in {ITEMS[first]} and {ITEMS[k]}; the splits must be disjoint"
                )
            if at != j:
                raise RamerError(f"{source}: dialogue '{d}' is listed twice in {ITEMS[k]} (entries {at} and {j})")
    return sum(d not in listed for d in obj[0].keys())


def _per_utterance(obj: list, k: int, d: Any, where: str) -> list:
    """Item ``k`` (videoIDs, videoSpeakers, videoLabels) of dialogue ``d`` as a list."""
    value = obj[k][d]
    try:
        return list(value)
    except TypeError:  # None, a number, a 0-d array
        raise RamerError(
            f"{where}: {ITEMS[k]} is a {type(value).__name__}, expected a list with one entry per utterance"
        ) from None


def _read_dialogue(obj: list, source: str, split: str, d: Any, dims: dict) -> tuple[list[int], list[int], dict]:
    """One dialogue of the pickle, checked: speaker rows (0 = A, 1 = B), videoLabels, features by modality."""
    n_labels = len(M3ED_LABELS)
    where = f"{source}: split '{split}' dialogue '{d}'"
    for k in range(6):
        if d not in obj[k]:
            raise RamerError(
                f"{source}: split '{split}': dialogue '{d}' (listed in {ITEMS[SPLIT_ITEM[split]]}) "
                f"is missing from {ITEMS[k]}"
            )
    n = len(_per_utterance(obj, 0, d, where))
    spk = [_speaker(x) for x in _per_utterance(obj, 1, d, where)]
    lab = _per_utterance(obj, 2, d, where)
    if len(spk) != n or len(lab) != n:
        raise RamerError(
            f"{where}: {n} utterance ids, {len(spk)} speakers (videoSpeakers), {len(lab)} labels (videoLabels)"
        )
    bad = [x for x in spk if x not in SPEAKERS]
    if bad:
        raise RamerError(f"{where}: videoSpeakers holds {bad[0]!r}; expected 'A' or 'B'")
    whole = [whole_number(x) for x in lab]
    if None in whole:  # 1.5 and True are not label 1
        raise RamerError(f"{where}: videoLabels holds a non-integer label ({list(lab)[:5]})")
    lab = whole
    out = [x for x in lab if not 0 <= x < n_labels]
    if out:
        raise RamerError(
            f"{where}: videoLabels holds {out[0]}; labels must be 0..{n_labels - 1} ({', '.join(M3ED_LABELS)})"
        )
    feats = {}
    for m, k in FEATURE_ITEM.items():
        try:
            arr = as_array(obj[k][d], f"{where}: {ITEMS[k]}")
        except (TypeError, ValueError):  # rows of different lengths
            raise RamerError(f"{where}: {ITEMS[k]} is not a numeric (utterances, dim) array") from None
        check_numeric(arr, f"{where}: {ITEMS[k]}")
        if arr.ndim != 2 or arr.shape[0] != n:
            raise RamerError(f"{where}: {ITEMS[k]} has shape {arr.shape}, expected ({n}, dim) for {n} utterances")
        want = dims.setdefault(m, arr.shape[1])
        if arr.shape[1] != want:
            raise RamerError(
                f"{where}: {ITEMS[k]} has shape {arr.shape}; feature dim {arr.shape[1]} differs from {want} elsewhere"
            )
        feats[m] = arr
    return [SPEAKERS.index(x) for x in spk], lab, feats


def _first_dims(obj: list, source: str) -> dict[str, int]:
    """Feature sizes of the first dialogue of any split, so that an empty split has the same widths."""
    dims: dict[str, int] = {}
    for split in SPLITS:
        vids = obj[SPLIT_ITEM[split]]
        if len(vids):
            _read_dialogue(obj, source, split, vids[0], dims)
            break
    return dims


def iter_m3ed_pickle(
    obj: Any,
    source: str,
    max_utterances: int = 60,
    protocol: str = "dialogue",
    annotation: str | Path | None = None,
) -> SplitStream:
    """Read a loaded M3ED feature pickle (a list of 10, see DATA_FORMATS section 3). ``protocol``:
    ``dialogue`` (one sample per dialogue) or ``utterance`` (one sample per utterance, labelled from
    the release's ``annotation`` file; default ``annotation.json`` beside the pickle)."""
    if protocol not in PROTOCOLS:
        raise RamerError(f"m3ed_protocol is '{protocol}', expected {' or '.join(PROTOCOLS)}")
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
    in_no_split = _check_split_lists(obj, source)
    if protocol == "utterance":
        return _iter_m3ed_utterances(obj, source, max_utterances, annotation, in_no_split)
    info = new_info([source])
    info["m3ed"] = {
        "layout": "pickle",
        "protocol": "dialogue",
        "max_utterances": int(max_utterances),
        "dialogues_in_no_split": in_no_split,
    }
    counts = info["nonfinite_replaced"]
    n_labels = len(M3ED_LABELS)

    dims = _first_dims(obj, source)
    checked = {  # every split before the first is converted (convert writes as it goes)
        split: [_read_dialogue(obj, source, split, d, dims) for d in obj[SPLIT_ITEM[split]]] for split in SPLITS
    }

    def splits():
        for split in SPLITS:
            vids = list(obj[SPLIT_ITEM[split]])
            parsed = checked.pop(split)
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
                for m in MODALITIES:  # the whole dialogue converted: its values beyond the cut counted too
                    out[m][rows] = as_float32(
                        np.array(feats[m]),
                        counts,
                        m,
                        f"{source}: split '{split}' dialogue '{vids[i]}' {ITEMS[FEATURE_ITEM[m]]}",
                    )[:kept]
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


# ---------------------------------------------------------------------------------- utterance protocol
# ``final_mul_emo`` in the release is the English names joined by ',' ("Neutral", "Anger,Sad"), as
# the authors' annotation tools write it. Also accepted, in case a copy of the file differs: other
# separators, a JSON list, the field directly on the utterance, any capitalisation, a few other
# spellings and common Chinese names of the seven emotions; info records which forms were found.
LABEL_FIELD = "final_mul_emo"
_SEPARATORS = re.compile(r"[,，;；、|/+\s]+")
_SPELLINGS = {
    **{name.lower(): name for name in M3ED_LABELS},
    "happiness": "Happy",
    "sadness": "Sad",
    "disgusted": "Disgust",
    "angry": "Anger",
    "fearful": "Fear",
    "surprised": "Surprise",
    "高兴": "Happy",
    "开心": "Happy",
    "快乐": "Happy",
    "中性": "Neutral",
    "平静": "Neutral",
    "悲伤": "Sad",
    "伤心": "Sad",
    "难过": "Sad",
    "厌恶": "Disgust",
    "愤怒": "Anger",
    "生气": "Anger",
    "恐惧": "Fear",
    "害怕": "Fear",
    "惊讶": "Surprise",
    "惊奇": "Surprise",
}
WINDOW = (
    "min(n, max_utterances) utterances of the dialogue starting at max(0, t - max_utterances + 1): the target "
    "t with as many preceding utterances as fit, then following ones when fewer precede it"
)


def window_start(t: int, max_utterances: int) -> int:
    """First utterance of the window of target ``t``; the window holds ``min(n, max_utterances)``
    utterances of a dialogue of ``n``, so it ends at ``t`` once ``t >= max_utterances - 1``."""
    return max(0, t - max_utterances + 1)


def _key_number(key: str) -> int | None:
    tail = key.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _annotation_utterances(dialog: Any, path: Path, d: str) -> tuple[list[tuple[str | None, dict]], str]:
    """A dialogue's ``Dialog``: [(utterance key, entry)] in utterance order, and how that order was read."""
    if isinstance(dialog, list):
        items, order = [(None, u) for u in dialog], "list order"
    elif isinstance(dialog, dict):
        items, order = [(str(k), u) for k, u in dialog.items()], "file order"
        numbers = [_key_number(k) for k, _ in items]
        if items and all(x is not None for x in numbers):  # 'anjia_1_10' after 'anjia_1_9' whatever the file order
            items, order = [it for _, it in sorted(zip(numbers, items), key=lambda x: x[0])], "key number"
    else:
        raise RamerError(f"{path}: dialogue '{d}': 'Dialog' is a {type(dialog).__name__}, expected an object")
    for j, (key, u) in enumerate(items):
        if not isinstance(u, dict):
            raise RamerError(
                f"{path}: dialogue '{d}' utterance {key or j!r}: a {type(u).__name__}, expected an object with "
                "Speaker, StartTime, EndTime, Text, EmoAnnotation"
            )
    return items, order


def read_m3ed_annotation(path: str | Path) -> tuple[dict[str, list[tuple[str | None, dict]]], dict]:
    """The dialogues of M3ED's ``annotation.json`` (series -> dialogue -> ``Dialog`` -> utterance key
    -> entry; a file without the series level is read too): dialogue id -> [(utterance key, entry)]
    in utterance order, and what was found (nesting, utterance order). Parsed with ``json`` only."""
    path = Path(path)
    if not path.is_file():
        raise RamerError(
            f"{path}: annotation file not found; the M3ED utterance protocol reads its labels from the release's "
            "annotation.json (set data.m3ed_annotation=FILE; default: annotation.json beside the pickle)"
        )
    try:
        obj = loads_json(read_text(path).removeprefix("\ufeff"))  # read_text: a file not UTF-8 or unreadable is named
    except json.JSONDecodeError as e:
        raise RamerError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RamerError(f"{path}: top level is a {type(obj).__name__}, expected an object of series -> dialogues")
    dialogues: dict[str, list[tuple[str | None, dict]]] = {}
    nesting: set[str] = set()
    orders: dict[str, int] = {}

    def add(d: str, entry: dict, how: str) -> None:
        if d in dialogues:
            raise RamerError(f"{path}: dialogue '{d}' appears twice")
        dialogues[d], order = _annotation_utterances(entry["Dialog"], path, d)
        orders[order] = orders.get(order, 0) + 1
        nesting.add(how)

    for key, value in obj.items():
        if isinstance(value, dict) and "Dialog" in value:
            add(str(key), value, "dialogue -> Dialog")
        elif isinstance(value, dict):
            for d, entry in value.items():
                if isinstance(entry, dict) and "Dialog" in entry:
                    add(str(d), entry, "series -> dialogue -> Dialog")
    if not dialogues:
        raise RamerError(
            f"{path}: no dialogue found; expected series -> dialogue -> {{'Dialog': {{utterance id: "
            "{'Speaker', 'Text', 'EmoAnnotation': {'final_mul_emo': ...}}}}"
        )
    return dialogues, {"nesting": " and ".join(sorted(nesting)), "utterance_order": orders}


def _utterance_id(u: Any) -> str:
    return u.decode("utf-8", "replace") if isinstance(u, bytes) else str(u)


def _match_dialogue(
    d: str, pickle_ids: list, anno: list[tuple[str | None, dict]], path: Path, source: str
) -> tuple[list[tuple[str | None, dict]], str]:
    """The annotation entries of dialogue ``d`` in the pickle's ``videoIDs`` order: by utterance id
    when every one is found (the pickle writes ``{speaker}_{utterance key}``), else by position."""
    if len(anno) != len(pickle_ids):
        raise RamerError(
            f"{path}: dialogue '{d}' has {len(anno)} utterances, but {len(pickle_ids)} in the feature pickle "
            f"{source} (videoIDs); the utterance protocol pairs them one to one"
        )
    by_key = {key: (key, entry) for key, entry in anno if key is not None}
    keys = []
    for u in map(_utterance_id, pickle_ids):
        bare = u[2:] if u[:2] in ("A_", "B_") else u
        keys.append(u if u in by_key else bare if bare in by_key else None)
    if None not in keys and len(set(keys)) == len(keys):
        return [by_key[k] for k in keys], "utterance id"
    return anno, "order"


def _labels_of(entry: dict, where: str, found: dict) -> list[int]:
    """Label indices (into ``M3ED_LABELS``) of one utterance's ``final_mul_emo``."""
    emo = entry.get("EmoAnnotation")
    if isinstance(emo, dict) and LABEL_FIELD in emo:
        value, place = emo[LABEL_FIELD], ""
    elif LABEL_FIELD in entry:
        value, place = entry[LABEL_FIELD], " on the utterance"
    else:
        raise RamerError(f"{where}: no EmoAnnotation.{LABEL_FIELD}")
    if isinstance(value, str):
        names = [x for x in _SEPARATORS.split(value.strip()) if x]
        kind = "string"
        for sep in _SEPARATORS.findall(value.strip()):
            sep = sep.strip() or " "  # ', ' counts as ','
            found["separators"][sep] = found["separators"].get(sep, 0) + 1
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        names, kind = [x.strip() for x in value if x.strip()], "list"
    else:
        raise RamerError(f"{where}: {LABEL_FIELD} is {value!r}, expected emotion names (e.g. 'Anger,Sad')")
    kind += place
    found["values"][kind] = found["values"].get(kind, 0) + 1
    out = []
    for name in names:
        label = _SPELLINGS.get(name.lower())
        if label is None:
            raise RamerError(
                f"{where}: {LABEL_FIELD} holds {name!r}, not one of the M3ED emotions ({', '.join(M3ED_LABELS)})"
            )
        if name != label:
            found["spellings"][name] = label
        out.append(M3ED_LABELS.index(label))
    return out


def _iter_m3ed_utterances(
    obj: list, source: str, max_utterances: int, annotation: str | Path | None, in_no_split: int
) -> SplitStream:
    """One sample per utterance: persons A and B, segments = a window of the dialogue's utterances
    (``WINDOW``), target = (speaker row, the utterance's place in the window), role speaker, labels =
    the utterance's ``final_mul_emo``. Samples in split order, dialogue by dialogue, utterance by utterance."""
    path = Path(annotation) if annotation is not None else Path(source).with_name("annotation.json")
    dialogues, found_layout = read_m3ed_annotation(path)
    info = new_info([source, str(path)])
    found = {"values": {}, "separators": {}, "spellings": {}}
    matched = {"utterance id": 0, "order": 0}
    used: set[str] = set()
    info["m3ed"] = {
        "layout": "pickle",
        "protocol": "utterance",
        "max_utterances": int(max_utterances),
        "dialogues_in_no_split": in_no_split,
        "window": WINDOW,
        "annotation": str(path),
        "annotation_nesting": found_layout["nesting"],
        "annotation_utterance_order": found_layout["utterance_order"],
        "label_field": f"EmoAnnotation.{LABEL_FIELD}",
        "final_mul_emo_values": found["values"],
        "final_mul_emo_separators": found["separators"],
        "final_mul_emo_spellings": found["spellings"],
        "dialogues_matched_by": matched,
    }
    counts = info["nonfinite_replaced"]
    n_labels = len(M3ED_LABELS)

    def labelled(split: str, d: Any, spk: list[int]) -> tuple[list[list[int]], int]:
        """Label indices per utterance of dialogue ``d`` in pickle order, and how many speakers disagree."""
        key = str(d)
        if key not in dialogues:
            raise RamerError(
                f"{path}: dialogue '{key}' of the feature pickle {source} ({len(spk)} utterances, split "
                f"'{split}') is missing from the annotation (0 utterances)"
            )
        entries, how = _match_dialogue(key, list(obj[0][d]), dialogues[key], path, source)
        matched[how] += 1
        used.add(key)
        out, disagree = [], 0
        for t, (ukey, entry) in enumerate(entries):
            where = f"{path}: dialogue '{key}' utterance " + (f"'{ukey}' (index {t})" if ukey else f"index {t}")
            out.append(_labels_of(entry, where, found))
            said = str(entry.get("Speaker", "")).replace(" ", "")
            if said in SPEAKERS and SPEAKERS.index(said) != spk[t]:
                disagree += 1
        return out, disagree

    dims = _first_dims(obj, source)
    checked = {}  # every split before the first is converted (convert writes as it goes)
    for split in SPLITS:
        vids = list(obj[SPLIT_ITEM[split]])
        parsed = [_read_dialogue(obj, source, split, d, dims) for d in vids]
        checked[split] = parsed, [labelled(split, d, spk) for d, (spk, _, _) in zip(vids, parsed)]

    def splits():
        for split in SPLITS:
            vids = list(obj[SPLIT_ITEM[split]])
            parsed, annos = checked.pop(split)
            steps = np.concatenate(
                [np.full(len(spk), min(len(spk), max_utterances), dtype=np.int64) for spk, _, _ in parsed]
                + [np.zeros(0, dtype=np.int64)]
            )
            N = len(steps)
            offsets = np.concatenate([[0], np.cumsum(2 * steps)]).astype(np.int64)
            T = int(offsets[-1])
            out = {m: np.zeros((T, dims.get(m, 0)), dtype=np.float32) for m in MODALITIES}
            present = np.zeros((T, 3), dtype=bool)
            labels = np.zeros((N, n_labels), dtype=np.uint8)
            target = np.zeros((N, 2), dtype=np.int32)
            ids: list[str] = []
            before = dict(counts)
            k = cut = not_in_mul = disagree = 0
            for (spk, lab, feats), (names, dis), d in zip(parsed, annos, vids):
                n = len(spk)
                S = min(n, max_utterances)
                where = f"{source}: split '{split}' dialogue '{d}'"
                x = {
                    m: as_float32(np.array(feats[m]), counts, m, f"{where} {ITEMS[FEATURE_ITEM[m]]}")
                    for m in MODALITIES
                }
                rows_of = np.asarray(spk, dtype=np.int64) * S  # the first token of each utterance's speaker row
                for t in range(n):
                    a = window_start(t, max_utterances)
                    rows = offsets[k] + rows_of[a : a + S] + np.arange(S)
                    for m in MODALITIES:
                        out[m][rows] = x[m][a : a + S]
                    present[rows] = True
                    labels[k, names[t]] = 1
                    target[k] = (spk[t], t - a)
                    ids.append(f"{d}/{t}")
                    not_in_mul += lab[t] not in names[t]
                    k += 1
                cut += n * (n > S)
                disagree += dis
            extra = {
                "nonfinite_replaced": {m: counts[m] - before[m] for m in MODALITIES},
                "empty_label_samples": int((labels.sum(1) == 0).sum()),
                "multi_label_samples": int((labels.sum(1) > 1).sum()),
                "dialogues": len(vids),
                "empty_dialogues": sum(len(p[0]) == 0 for p in parsed),
                "samples_in_cut_dialogues": int(cut),
                "videoLabels_not_in_final_mul_emo": int(not_in_mul),
                "speaker_disagreements": int(disagree),
            }
            store = SceneStore(
                text=out["text"],
                audio=out["audio"],
                visual=out["visual"],
                present=present,
                token_offsets=offsets,
                grid=np.stack([np.full(N, 2), steps], 1).astype(np.int32).reshape(N, 2),
                labels=labels,
                target=target,
                role=np.full(N, ROLE_SPEAKER, dtype=np.int8),
                person_offsets=(2 * np.arange(N + 1)).astype(np.int64),
                character=np.full(2 * N, -1, dtype=np.int32),
                label_names=M3ED_LABELS,
                ids=ids,
                source=f"{source}[{split}]",
                extra=extra,
            )
            info.setdefault("splits", {})[split] = extra
            del parsed, annos, out
            yield split, store
        info["m3ed"]["annotation_dialogues_not_in_pickle"] = len(set(dialogues) - used)

    return SplitStream("m3ed_pickle", source, M3ED_LABELS, splits(), info)


# ---------------------------------------------------------------------------------- CARAT's file
def _first_dim(seq: Any, key: str, split: str, source: str) -> int:
    if len(seq) == 0:
        raise RamerError(f"{source}: split '{split}' key '{key}' is empty")
    shape = tuple(np.shape(seq[0]))
    if len(shape) != 2:
        raise RamerError(f"{source}: split '{split}' key '{key}'[0] has shape {shape}, expected (utterances, dim)")
    return shape[1]


def _stored_rows(seqs: dict, keys: dict, dims: dict, i: int, where: str) -> int:
    """Utterance rows stored for sample ``i``, each modality (rows, dim) with the same rows (one row
    per utterance: modalities that disagree are an error, not a cut)."""
    rows = []
    for m in MODALITIES:
        try:
            shape = tuple(np.shape(seqs[m][i]))
        except (TypeError, ValueError):  # rows of different lengths
            shape = None
        if shape is None or len(shape) != 2 or shape[1] != dims[m]:
            got = "not a numeric array" if shape is None else f"has shape {shape}"
            raise RamerError(f"{where} key '{keys[m]}'[{i}] {got}, expected (utterances, {dims[m]})")
        check_numeric(seqs[m][i], f"{where} key '{keys[m]}'[{i}]")
        rows.append(shape[0])
    if len(set(rows)) > 1:
        shapes = ", ".join(f"'{keys[m]}' {r}" for m, r in zip(MODALITIES, rows))
        raise RamerError(
            f"{where}: sample {i} stores different numbers of utterance rows ({shapes}); one per utterance"
        )
    return rows[0]


def _check_carat_split(
    part: dict, split: str, keys: dict[str, str], names: tuple[str, ...], dims: dict, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One split of CARAT's file checked without converting it (every split is, before the first is
    converted: convert writes as it goes): per modality a list of (utterances, dim) arrays of
    numbers, dims as in earlier splits, ``len_list`` whole counts, ``tgt`` id lists, one of each per
    sample. Returns ``len_list``, the rows stored per sample and the multi-hot labels."""
    where = f"{source}: split '{split}'"
    seqs = {m: part[k] for m, k in keys.items()}
    labels = labels_from_tgt(part["tgt"], len(names), where)  # first: it names a 'tgt' that is not a list
    lens = np.asarray(part["len_list"]).reshape(-1)
    n = len(seqs["text"])
    sizes = {keys[m]: len(s) for m, s in seqs.items()}
    if len(set(sizes.values())) != 1 or len(lens) != n or len(labels) != n:
        raise RamerError(f"{where}: sample counts disagree: {sizes}, len_list {len(lens)}, tgt {len(labels)}")
    whole = lens.dtype.kind in "iu" or (
        lens.dtype.kind == "f" and bool(np.isfinite(lens).all() and (np.floor(lens) == lens).all())
    )
    if not whole or (lens < 0).any():  # NaN, inf and 2.5 are not counts
        raise RamerError(f"{where}: 'len_list' must hold whole utterance counts >= 0 (dtype {lens.dtype})")
    for m, k in keys.items():
        if n == 0 and m in dims:  # an empty split keeps the feature sizes of the train split
            continue
        dim = _first_dim(seqs[m], k, split, source)
        want = dims.setdefault(m, dim)
        if dim != want:
            raise RamerError(f"{where} key '{k}': feature dim {dim} differs from {want} in an earlier split")
    stored = np.array([_stored_rows(seqs, keys, dims, i, where) for i in range(n)], dtype=np.int64)
    return lens.astype(np.int64), stored, labels


def iter_m3ed_carat(obj: Any, source: str) -> SplitStream:
    """Read a loaded ``m3ed_data_60.pt`` (CARAT), fixing its audio/visual naming by dimension."""
    for split in SPLITS:
        part = split_dict(obj, split, source)
        for key in ("src-text", "src-audio", "src-visual", "len_list", "tgt"):
            value = need_key(part, key, split, source)
            if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
                raise RamerError(
                    f"{source}: split '{split}' key '{key}' is a {type(value).__name__}, expected a list with "
                    "one entry per sample"
                )
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

    dims: dict[str, int] = {}
    checked = {split: _check_carat_split(obj[split], split, keys, names, dims, source) for split in SPLITS}

    def splits():
        for split in SPLITS:
            part = obj[split]
            where = f"{source}: split '{split}'"
            seqs = {m: part[k] for m, k in keys.items()}
            lens, stored, labels = checked.pop(split)
            n = len(lens)
            steps = np.maximum(1, np.minimum(lens, stored))  # each sample's own rows: none cut to another's
            offsets = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
            T = int(offsets[-1])
            feats = {m: np.zeros((T, dims[m]), dtype=np.float32) for m in MODALITIES}
            present = np.zeros((T, 3), dtype=bool)
            before = dict(counts)
            for i in range(n):
                kept = int(min(lens[i], stored[i]))
                for m in MODALITIES:  # every stored row converted: values beyond len_list counted too
                    x = as_array(seqs[m][i], f"{where} key '{keys[m]}'[{i}]")
                    feats[m][offsets[i] : offsets[i] + kept] = as_float32(
                        np.array(x), counts, m, f"{where} key '{keys[m]}'[{i}]"
                    )[:kept]
                present[offsets[i] : offsets[i] + kept] = True
            extra = {
                "nonfinite_replaced": {m: counts[m] - before[m] for m in MODALITIES},
                "empty_label_samples": int((labels.sum(1) == 0).sum()),
                "empty_dialogues": int((lens == 0).sum()),
                "len_list_beyond_stored_steps": int((lens > stored).sum()),
            }
            ids = [f"{split}/{i}" for i in range(n)]
            store = sequence_store(feats, present, steps, labels, names, ids, f"{source}[{split}]", extra)
            info.setdefault("splits", {})[split] = extra
            obj[split] = None
            del seqs, part, feats
            yield split, store

    return SplitStream("m3ed_carat", source, names, splits(), info)
