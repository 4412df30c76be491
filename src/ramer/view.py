"""``ramer view``: a split's predictions as one self-contained HTML page.

The page (``view_template.html``: HTML, CSS and a small vanilla-JS script, no library, no network)
renders one conversation at a time from a single JSON blob that ``page_data`` builds here: per
conversation the persons x segments grid (which modalities each cell has, who speaks), the samples
with their probabilities, decisions and annotations, and the utterance texts when the data came
from an imported table; plus the split's figures (per-label F1, speaker / non-speaker).

How samples become conversations (``conversations``), by what each data source gives:

- imported conversations (``ramer data import``): ``meta.json`` lists each conversation (its
  persons, its utterances' ``index`` values and its samples); the grid is every person x every
  utterance, and each sample's window of context lands on its own utterances. The texts are read
  back from the imported table (``info.source_files``) when it is still there;
- M3ED, utterance protocol: samples ``"{dialogue}/{t}"`` grouped by dialogue, rows A and B;
- MEmoR, target protocol: samples ``"{anno}:{clip}:{character}"`` grouped by clip, one row per
  character seen in any of them;
- everything else (the embedded benchmark, MOSEI's one-person sequences, M3ED's dialogue protocol
  and CARAT's file, MEmoR's clip protocol, a native folder of unknown origin): each sample is its
  own conversation, the grid its scene.

A sample targets one cell (person, segment), several cells (``SceneStore.target_tokens``: the page
outlines them and shows the prediction once for the scene), or the whole scene (target -1).
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ramer.data import DataBundle, SceneStore
from ramer.data.store import not_one_label
from ramer.errors import RamerError, first_line
from ramer.infer import check_record_matches
from ramer.metrics import ARGMAX, multilabel_metrics, per_label_metrics

TEXT, AUDIO, FACE, SPEAKS = 1, 2, 4, 8  # bits of a cell code; -1: no sample shows the cell
ROLES = {1: "speaker", 0: "listener"}
FIGURES = ("micro_f1", "macro_f1", "weighted_f1", "acc")
# the figures table's columns (README "Looking at predictions"): a single-label run (decision "argmax")
# leads with accuracy and weighted F1, as ramer eval's table (cli.METRIC_COLUMNS) does; its micro-F1 and
# its accuracy (every sample with one label, data.store.not_one_label) equal eval's top-1 accuracy
COLUMNS = {
    "multi_label": (("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"), ("acc", "Acc")),
    "single_label": (("acc", "Acc"), ("weighted_f1", "weighted-F1"), ("macro_f1", "macro-F1")),
}


@dataclass
class Conversation:
    """A group of samples on one grid: ``members`` are (sample, the grid row of each scene row,
    the grid segment of the scene's first segment)."""

    name: str
    persons: list[str]
    segments: list[str]
    members: list[tuple[int, list[int], int]] = field(default_factory=list)
    texts: list[list[str] | None] | None = None  # per segment: [speaker, text] (imported tables)
    speakers: list[int | None] | None = None  # per segment: the speaking row (imported tables)


# ---------------------------------------------------------------------------- conversations
def conversations(bundle: DataBundle, split: str, notes: list[str] | None = None) -> list[Conversation]:
    """The split's samples grouped into conversations (module docstring), in sample order; ``notes``
    gets what the page lacks and why (an imported table's texts)."""
    store = bundle.splits[split]
    info = bundle.info or {}
    if bundle.format == "conversations" and "items" in info.get("conversations", {}):
        return _imported(bundle, split, notes)
    ids, target = store.ids, np.asarray(store.target)
    if bundle.format == "m3ed_pickle" and info.get("m3ed", {}).get("protocol") == "utterance":
        keys = [i.rsplit("/", 1) for i in ids]
        if all(len(k) == 2 and k[1].isdigit() for k in keys) and (target[:, 0] >= 0).all():
            return _windows(store, [(k[0], int(k[1])) for k in keys], ["A", "B"])
    if bundle.format == "memor" and info.get("memor", {}).get("protocol", "target") == "target" and len(store):
        if all(i.count(":") >= 2 for i in ids) and (target[:, 0] >= 0).all():
            return _by_clip(store, [i.split(":", 1)[1].rsplit(":", 1)[0] for i in ids], _character_names(bundle))
    return [_single(bundle, store, i) for i in range(len(store))]


def _character_names(bundle: DataBundle) -> list[str]:
    from ramer.data.memor import CHARACTERS

    return list(bundle.info.get("memor", {}).get("character_order") or CHARACTERS)


def _single(bundle: DataBundle, store: SceneStore, i: int) -> Conversation:
    P, S = (int(v) for v in store.grid[i])
    chars = _characters(store, i)
    if bundle.format == "memor":
        names = _character_names(bundle)
        persons = [names[c] if 0 <= c < len(names) else f"person {p}" for p, c in enumerate(chars)]
    elif bundle.format == "m3ed_pickle" and P == 2:
        persons = ["A", "B"]
    else:
        persons = [f"person {p}" + (f" (character {c})" if c >= 0 else "") for p, c in enumerate(chars)]
    return Conversation(store.ids[i], persons, [str(s) for s in range(S)], [(i, list(range(P)), 0)])


def _characters(store: SceneStore, i: int) -> list[int]:
    """The character id of each person of scene ``i`` (-1 unknown)."""
    return [int(c) for c in store.character[store.person_offsets[i] : store.person_offsets[i + 1]]]


def _windows(store: SceneStore, keys: list[tuple[str, int]], persons: list[str]) -> list[Conversation]:
    """Samples ``(dialogue, t)`` whose scene is a window of the dialogue holding utterance ``t`` at
    the target's segment (M3ED's utterance protocol)."""
    out: dict[str, Conversation] = {}
    for i, (name, t) in enumerate(keys):
        c = out.setdefault(name, Conversation(name, list(persons), []))
        c.members.append((i, list(range(int(store.grid[i][0]))), t - int(store.target[i][1])))
    for c in out.values():
        S = max(first + int(store.grid[i][1]) for i, _, first in c.members)
        c.segments = [str(s) for s in range(S)]
    return list(out.values())


def _by_clip(store: SceneStore, clips: list[str], names: list[str]) -> list[Conversation]:
    """MEmoR's target protocol: a sample's persons are the clip's characters on screen plus its
    target, so the clip's grid has a row for every character of any of its samples."""
    groups: dict[str, list[int]] = {}
    for i, clip in enumerate(clips):
        groups.setdefault(clip, []).append(i)
    out = []
    for clip, samples in groups.items():
        chars_of = {i: _characters(store, i) for i in samples}
        chars = sorted({c for cs in chars_of.values() for c in cs})
        S = max(int(store.grid[i][1]) for i in samples)
        persons = [names[c] if 0 <= c < len(names) else f"character {c}" for c in chars]
        members = [(i, [chars.index(c) for c in chars_of[i]], 0) for i in samples]
        out.append(Conversation(clip, persons, [str(s) for s in range(S)], members))
    return out


def _imported(bundle: DataBundle, split: str, notes: list[str] | None = None) -> list[Conversation]:
    store = bundle.splits[split]
    info = bundle.info["conversations"]
    table, why = _table(bundle)
    if why and notes is not None:
        notes.append(why)
    out = []
    for item in info["items"]:
        if item["split"] != split:
            continue
        c = Conversation(item["name"], list(item["persons"]), [str(x) for x in item["index"]])
        for j, s in enumerate(item["targets"]):
            i = item["first"] + j
            c.members.append((i, list(range(int(store.grid[i][0]))), s - int(store.target[i][1])))
        if table is not None:
            rows = [table.get((c.name, x)) for x in item["index"]]
            c.texts = [[u.speaker, u.text] if u is not None else None for u in rows]
            c.speakers = [
                c.persons.index(u.speaker) if u is not None and u.speaker in c.persons else None for u in rows
            ]
        out.append(c)
    return out


def _table(bundle: DataBundle) -> tuple[dict | None, str | None]:
    """The imported table's utterances by (conversation, index), or ``None`` and why when the file
    that ``meta.json`` names is gone, no longer reads, or has changed since the import (its texts
    would not be those the model read): the page then shows no texts. Nor without the table's
    digest in ``meta.json``: the page would hold the text of any file the folder names."""
    from ramer.data.conversations import read_table, table_digest

    files = bundle.info.get("source_files") or []
    path = Path(files[0]) if files else None
    if path is None:
        return None, None
    recorded = bundle.info.get("source_sha256")
    if not isinstance(recorded, str):
        return None, (
            f"{path}: meta.json records no digest of the imported table (an edited file, or an import "
            "by an earlier ramer), so the page shows no utterance texts; import the table again to show them"
        )
    try:
        os.fsencode(path)
    except UnicodeEncodeError:  # pathlib would call it gone
        return None, (
            f"{path}: this system's file names ({sys.getfilesystemencoding()}) cannot name the imported table, so "
            "the page shows no utterance texts (run ramer view under a UTF-8 locale, e.g. LC_ALL=C.UTF-8)"
        )
    why = f"{path}: the imported table %s; the page shows no utterance texts"
    why += " (put the table as imported back at this path to show them)"
    if not path.is_file():
        return None, why % "is gone"
    try:
        if table_digest(path) != recorded:
            return None, why % "has changed since the import"
        utterances, _ = read_table(path)
    except (RamerError, OSError) as e:
        return None, why % f"no longer reads ({first_line(e)})"
    return {(u.conversation, u.index): u for u in utterances}, None


def load_data(path: str, sets: list[str]) -> DataBundle:
    """The dataset at ``path`` read with the loader options ``sets`` (``data.KEY=VALUE``, and
    ``data.format``, where detection should not decide): what
    ``ramer view --preds FILE --data PATH`` shows the predictions on."""
    from ramer.data import load_bundle
    from ramer.data.commands import data_config

    cfg = data_config(None, sets, takes=("format",))
    cfg.path = path
    return load_bundle(cfg)


# ---------------------------------------------------------------------------- the JSON blob
def page_data(
    bundle: DataBundle,
    split: str,
    records: list[dict],
    threshold=None,
    title: str = "",
    preds_source: str = "",
    notes: list[str] | None = None,
) -> dict:
    """Everything the page shows, as one JSON-ready dict. ``records``: the lines of a predictions
    file (``infer.prediction_records`` / ``read_predictions``), matched to the split's samples by
    id; ``threshold``: the run's decision rule (``None`` when unknown: the file's own is used);
    ``notes`` gets what the page lacks and why (``conversations``)."""
    store = bundle.splits[split]
    names = list(store.label_names)
    index = {sample_id: i for i, sample_id in enumerate(store.ids)}
    by_sample: dict[int, dict] = {}
    for rec in records:
        if rec["id"] not in index:
            raise RamerError(
                f"{preds_source or 'predictions'}: sample id '{rec['id']}' is not in split '{split}' of "
                f"{bundle.source}; were these predictions made on this data and split?"
            )
        check_record_matches(store, index[rec["id"]], rec, preds_source or "predictions")
        by_sample[index[rec["id"]]] = rec
    labelled = bundle.labelled
    bits = np.asarray(store.present, dtype=np.int64) @ np.array([TEXT, AUDIO, FACE])  # (T,) cell codes
    marks = store.marks_targets()
    out = []
    for conv in conversations(bundle, split, notes):
        samples = [
            _sample(store, i, rows, first, by_sample[i], names, labelled, bool(marks[i]))
            for i, rows, first in conv.members
            if i in by_sample
        ]
        out.append(
            {
                "name": conv.name,
                "persons": conv.persons,
                "segments": conv.segments,
                "cells": _cells(store, conv, bits, samples).tolist(),
                "texts": conv.texts,
                "samples": samples,
            }
        )
    rule = _threshold(threshold, records, names)
    task = "single_label" if rule == ARGMAX else "multi_label"
    unfit = None  # why the figures are left out, as ramer eval refuses them
    if task == "single_label" and labelled and by_sample:
        if problem := not_one_label(np.asarray(store.labels)[sorted(by_sample)], split):
            unfit = (
                f"the predictions are single-label (one label per sample), but {problem}: the page shows no "
                "figures (ramer eval gives none either)"
            )
            if notes is not None:
                notes.append(unfit)
    return {
        "title": title,
        "source": bundle.source,
        "format": bundle.format,
        "split": split,
        "labels": names,
        "threshold": rule,
        "labelled": labelled,
        "n_samples": len(store),
        "n_predicted": len(by_sample),
        "summary": summary(store, by_sample, names, task) if labelled and by_sample and not unfit else None,
        "figures_note": unfit,
        "figures_aside": None,  # what the figures are not (cli's view: a run's extra missing rate)
        "conversations": out,
    }


def _sample(
    store: SceneStore, i: int, rows: list[int], first: int, rec: dict, names: list[str], labelled: bool, marked: bool
) -> dict:
    """Sample ``i`` on its conversation's grid: its target cell (``at``), or its target tokens
    (``scope``), or neither (the whole scene); its role, probabilities, decision and annotation."""
    P, S = (int(v) for v in store.grid[i])
    p, s = (int(v) for v in store.target[i])
    scope = None
    if marked:
        a, b = int(store.token_offsets[i]), int(store.token_offsets[i + 1])
        tokens = np.asarray(store.target_tokens[a:b]).reshape(P, S)
        scope = [[rows[q], first + t] for q, t in np.argwhere(tokens).tolist()]
    return {
        "id": store.ids[i],
        "at": [rows[p], first + s] if p >= 0 and not marked else None,
        "scope": scope,
        "role": ROLES.get(int(store.role[i])),
        "probs": [float(rec["probs"][n]) for n in names],
        "pred": [names.index(n) for n in rec["labels"]],
        "gold": np.flatnonzero(store.labels[i]).tolist() if labelled else None,
    }


def _cells(store: SceneStore, conv: Conversation, bits: np.ndarray, samples: list[dict]) -> np.ndarray:
    """(P, S) cell codes of a conversation: the modality bits its samples' scenes give each cell
    (-1 where none shows it) plus ``SPEAKS`` where the person speaks: the target's role where the
    data gives one, else who the imported table names, else who has words or voice."""
    cells = np.full((len(conv.persons), len(conv.segments)), -1, dtype=np.int64)
    for i, rows, first in conv.members:
        P, S = (int(v) for v in store.grid[i])
        a, b = int(store.token_offsets[i]), int(store.token_offsets[i + 1])
        cells[np.ix_(rows, range(first, first + S))] = bits[a:b].reshape(P, S)
    speaks = (cells >= 0) & (cells & (TEXT | AUDIO) > 0)
    for s, q in enumerate(conv.speakers or []):
        if q is not None:
            speaks[:, s] = False
            speaks[q, s] = True
    for x in samples:
        if x["at"] is not None and x["role"] is not None:
            speaks[tuple(x["at"])] = x["role"] == "speaker"
    return np.where(cells >= 0, cells | np.where(speaks, SPEAKS, 0), -1)


def _threshold(threshold, records: list[dict], names: list[str]):
    """The decision rule as the page shows it: a number, ``"argmax"``, a list per label, or ``None``."""
    if threshold is None:
        given = {json.dumps(r.get("threshold"), sort_keys=True) for r in records}
        threshold = json.loads(given.pop()) if len(given) == 1 else None
    if isinstance(threshold, dict):
        return [threshold.get(n) for n in names]
    if isinstance(threshold, str) or threshold is None:
        return threshold
    values = np.asarray(threshold, dtype=np.float64)
    return float(values) if values.ndim == 0 else values.tolist()


def summary(store: SceneStore, by_sample: dict[int, dict], names: list[str], task: str = "multi_label") -> dict:
    """The split's figures over the predicted samples: all, speaker and non-speaker targets, and
    each label's F1 and support; ``columns``: the figures the page shows, in its order, by ``task``
    (``COLUMNS``)."""
    rows = np.array(sorted(by_sample))
    y_true = np.asarray(store.labels)[rows].astype(np.int64)
    y_pred = np.zeros_like(y_true)
    for k, i in enumerate(rows):
        y_pred[k, [names.index(n) for n in by_sample[i]["labels"]]] = 1
    role = np.asarray(store.role)[rows]
    parts = {"all": np.ones(len(rows), dtype=bool)}
    if (role >= 0).any():
        parts.update({"speaker": role == 1, "non-speaker": role == 0})
    figures = {}
    for part, mask in parts.items():
        if not mask.any():  # a role none of the samples has: no figures (the page shows "–")
            figures[part] = {"n": 0}
            continue
        m = multilabel_metrics(y_true[mask], y_pred[mask])
        figures[part] = {"n": int(mask.sum()), **{k: m[k] for k in FIGURES}}
    per_label = per_label_metrics(y_true, y_pred, names)
    return {
        "columns": [list(c) for c in COLUMNS[task]],
        "parts": figures,
        "per_label": {n: {"f1": v["f1"], "support": v["support"]} for n, v in per_label.items()},
    }


# ---------------------------------------------------------------------------- the page
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def render_page(data: dict) -> str:
    """The page: the template with ``data`` inlined as JSON (``<``, ``>`` and ``&`` escaped, so no
    text in it can close the script element) and the title escaped. A lone surrogate (a file name
    of bytes that are not UTF-8, a ``\\udc80`` escape in a meta.json) has no UTF-8 form: JSON-escaped
    in the data, written as ``\\udcff`` in the title, so the page is written all the same."""
    template = resources.files("ramer").joinpath("view_template.html").read_text(encoding="utf-8")
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    blob = blob.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    blob = LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", blob)
    title = (data["title"] or "ramer view").encode("utf-8", "backslashreplace").decode("utf-8")
    head, tail = template.split("__DATA__")  # the title goes into the head only, whatever it holds
    return head.replace("__TITLE__", html.escape(title)) + blob + tail
