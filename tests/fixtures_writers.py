"""Small files in the exact layouts of the public benchmark releases (spec DATA_FORMATS.md).

Each writer writes one layout and returns what it wrote, so a test can compare a loader's output
value by value. Hostile writers make pickles whose unpickling would create a marker file.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

MOSEI_DEFAULT = ("happy", "sad", "anger", "surprise", "disgust", "fear")
SPECIALS = {"<blank>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
M3ED_NAMES = ("Happy", "Neutral", "Sad", "Disgust", "Anger", "Fear", "Surprise")


# ------------------------------------------------------------------------------------------ hostile
class _Reduce:
    """An object whose unpickling calls ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def hostile_objects(marker: Path) -> dict[str, object]:
    """Objects whose unpickling would create ``marker`` (by different routes)."""
    m = str(marker)
    return {
        "os.system": _Reduce(os.system, (f"touch {m}",)),
        "builtins.open": _Reduce(builtins.open, (m, "w")),
        "builtins.eval": _Reduce(builtins.eval, (f"open({m!r}, 'w')",)),
        "builtins.exec": _Reduce(builtins.exec, (f"open({m!r}, 'w')",)),
    }


def write_hostile_pickle(path: Path, marker: Path, route: str = "os.system", wrap: str = "dict") -> Path:
    """A raw pickle: the hostile object inside a dict shaped like a release (or bare)."""
    evil = hostile_objects(marker)[route]
    obj = (
        {"train": {"text": evil}, "valid": {}, "test": {}}
        if wrap == "dict"
        else [evil] * 10
        if wrap == "list"
        else evil
    )
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)
    return path


def write_hostile_torch(
    path: Path, marker: Path, route: str = "os.system", legacy: bool = False, with_tensor: bool = False
) -> Path:
    """A ``torch.save`` file (zip, or the legacy layout) whose 'settings' is hostile."""
    evil = hostile_objects(marker)[route]
    obj = {"train": {"src-text": np.zeros((1, 2, 3), np.float32)}, "valid": {}, "test": {}, "settings": evil}
    if with_tensor:
        obj["weights"] = torch.zeros(3)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


# ------------------------------------------------------------------------------------------ MOSEI
def _mosei_tgt(rng: np.random.Generator, n: int, n_labels: int) -> list[list[int]]:
    out = []
    for i in range(n):
        if i % 4 == 1:
            out.append([2, 3])  # no emotion
        else:
            k = int(rng.integers(1, 3))
            ids = rng.choice(n_labels, size=k, replace=False) + 4
            out.append([2, *[int(x) for x in ids[::-1]], 3])  # order inside a list is not meaningful
    return out


def write_mosei_aligned(
    path: Path,
    sizes: tuple[int, int, int] = (6, 3, 4),
    steps: int = 4,
    dims: tuple[int, int, int] = (6, 5, 3),  # text, audio, visual
    dtype=np.float32,
    with_dict: bool = True,
    with_settings: bool = True,
    label_order: tuple[str, ...] | None = None,
    tgt_as_array: bool = False,
    seed: int = 0,
) -> dict:
    """``train_valid_test.pt``: -inf in audio, a NaN in visual, empty label sets, optional
    ``dict`` (with ``label_order``) and ``settings``."""
    rng = np.random.default_rng(seed)
    names = tuple(label_order or MOSEI_DEFAULT)
    obj: dict = {}
    for split, n in zip(("train", "valid", "test"), sizes):
        text = rng.normal(size=(n, steps, dims[0])).astype(dtype)
        audio = rng.normal(size=(n, steps, dims[1])).astype(dtype)
        visual = rng.normal(size=(n, steps, dims[2])).astype(dtype)
        if n:  # an empty split has no sample to hold them
            audio[0, 0, :2] = -np.inf
            audio[n - 1, steps - 1, 0] = -np.inf
            visual[0, 1, 0] = np.nan
        tgt = _mosei_tgt(rng, n, len(names))
        obj[split] = {
            "src-text": text,
            "src-visual": visual,
            "src-audio": audio,
            "tgt": np.array([np.array(t) for t in tgt] + [None], dtype=object)[:-1] if tgt_as_array else tgt,
        }
    if with_dict:
        obj["dict"] = {"src": None, "tgt": {**SPECIALS, **{name: 4 + j for j, name in enumerate(names)}}}
    if with_settings:
        obj["settings"] = argparse.Namespace(
            max_text_seq_len=steps, max_visual_seq_len=steps, max_audio_seq_len=steps, seed=1
        )
    torch.save(obj, path)
    expected = {
        split: {
            "text": obj[split]["src-text"].copy(),
            "audio": obj[split]["src-audio"].copy(),
            "visual": obj[split]["src-visual"].copy(),
            "tgt": [list(map(int, t)) for t in obj[split]["tgt"]],
        }
        for split in ("train", "valid", "test")
    }
    return {"splits": expected, "label_names": names if with_dict else MOSEI_DEFAULT}


def write_mosei_unaligned(
    path: Path,
    sizes: tuple[int, int, int] = (6, 3, 4),
    steps_text: int = 5,
    steps_av: int = 10,
    dims: tuple[int, int, int] = (6, 5, 3),  # text, audio, visual
    seed: int = 1,
) -> dict:
    """MulT's ``mosei_senti_data_noalign.pkl``: zero padding rows at the front, -inf in audio."""
    rng = np.random.default_rng(seed)
    obj: dict = {}
    for split, n in zip(("train", "valid", "test"), sizes):
        text = rng.normal(size=(n, steps_text, dims[0])).astype(np.float32)
        audio = rng.normal(size=(n, steps_av, dims[1])).astype(np.float32)
        vision = rng.normal(size=(n, steps_av, dims[2])).astype(np.float32)
        for i in range(n):
            pad_t, pad_av = i % 3, (i % 3) * 3  # MulT pads short utterances with zero rows
            text[i, :pad_t] = 0
            audio[i, :pad_av] = 0
            vision[i, :pad_av] = 0
        audio[0, -1, :] = -np.inf  # a real row that is all -inf
        audio[1, 4, 0] = -np.inf
        ids = np.array([[f"vid{split}{i}", f"{i}.0", f"{i + 1}.5"] for i in range(n)], dtype=object)
        obj[split] = {
            "text": text,
            "audio": audio,
            "vision": vision,
            "labels": rng.uniform(-3, 3, size=(n, 1, 1)).astype(np.float32),
            "id": ids,
        }
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)
    return {split: {k: v.copy() for k, v in obj[split].items()} for split in obj}


# ------------------------------------------------------------------------------------------ M3ED
def write_m3ed_pickle(
    path: Path,
    lengths: dict[str, list[int]] | None = None,
    dims: tuple[int, int, int] = (8, 5, 4),  # text, audio (1582 / 1024 in the release), visual
    seed: int = 2,
) -> dict:
    """The original 10-item M3ED pickle; float64 features, -inf in audio; the train dialogue of
    9 utterances has labels only after utterance 4 (for ``max_utterances = 4``)."""
    rng = np.random.default_rng(seed)
    lengths = lengths or {"train": [3, 9, 2], "valid": [5, 1], "test": [4, 6]}
    ids, spk, lab, txt, aud, vis, sent = (OrderedDict() for _ in range(7))
    split_ids = {}
    for split, lens in lengths.items():
        split_ids[split] = []
        for j, n in enumerate(lens):
            d = f"series{split}_{j}"
            split_ids[split].append(d)
            spk[d] = ["A" if rng.random() < 0.5 else "B" for _ in range(n)]
            labels = [int(x) for x in rng.integers(0, 3, n)]
            if n == 9:
                labels[6], labels[8] = 5, 6  # Fear, Surprise: only beyond the first 4 utterances
                spk[d] = ["A", "B"] * 4 + ["A"]
            ids[d] = [f"{s}_{d}_{u + 1}" for u, s in enumerate(spk[d])]  # the release: speaker + annotation key
            lab[d] = labels
            txt[d] = rng.normal(size=(n, dims[0]))
            aud[d] = rng.normal(size=(n, dims[1]))
            aud[d][0, 0] = -np.inf
            vis[d] = rng.normal(size=(n, dims[2]))
            sent[d] = np.array([f"句子{u}" for u in range(n)])
    obj = [ids, spk, lab, txt, aud, vis, sent, split_ids["train"], split_ids["valid"], split_ids["test"]]
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)
    return {"ids": ids, "speakers": spk, "labels": lab, "text": txt, "audio": aud, "visual": vis, "splits": split_ids}


def write_m3ed_annotation(path: Path, fx: dict, sort_keys: bool = False) -> dict[str, list[list[str]]]:
    """M3ED's ``annotation.json`` for the dialogues of a ``write_m3ed_pickle`` result: series ->
    dialogue -> ``SpeakerInfo`` / ``Dialog`` -> utterance key ``{dialogue}_{n}`` (from 1) -> entry with
    ``EmoAnnotation.final_mul_emo`` = names joined by ',' (the pickle's label first, every third
    utterance with a second emotion). ``sort_keys``: keys in text order ('_10' before '_2').
    Returns the names of each utterance by dialogue."""
    out: dict = {}
    names: dict[str, list[list[str]]] = {}
    for d, uids in fx["ids"].items():
        series = d.rsplit("_", 1)[0]
        dialog = {}
        names[d] = []
        for u, label in enumerate(fx["labels"][d]):
            emos = [M3ED_NAMES[label]] + ([M3ED_NAMES[(label + 3) % 7]] if u % 3 == 1 else [])
            names[d].append(emos)
            dialog[f"{d}_{u + 1}"] = {
                "StartTime": f"00:00:{u:02d}:00",
                "EndTime": f"00:00:{u:02d}:50",
                "Text": f"句子{u}",
                "Speaker": fx["speakers"][d][u],
                "EmoAnnotation": {
                    "EmoAnnotator1": emos[0],
                    "EmoAnnotator2": ",".join(emos),
                    "EmoAnnotator3": ",".join(emos),
                    "final_mul_emo": ",".join(emos),
                    "final_main_emo": emos[0],
                },
            }
        speaker_info = {s: {"Name": f"{s}{d}", "Age": "mid", "Gender": "female", "OtherName": []} for s in "AB"}
        out.setdefault(series, {})[d] = {"SpeakerInfo": speaker_info, "Dialog": dialog}
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1, sort_keys=sort_keys), encoding="utf-8")
    return names


def write_m3ed_carat(
    path: Path,
    sizes: tuple[int, int, int] = (4, 2, 3),
    steps: int = 6,
    dims: tuple[int, int, int] = (16, 24, 342),  # text, audio (CARAT's 'src-visual'), visual (CARAT's 'src-audio')
    label_order: tuple[str, ...] | None = None,
    seed: int = 3,
) -> dict:
    """CARAT's ``m3ed_data_60.pt``: lists of (steps, d) arrays, audio under 'src-visual' and the
    342-d visual under 'src-audio', ``len_list`` true lengths, zero padding after them."""
    rng = np.random.default_rng(seed)
    names = tuple(label_order or M3ED_NAMES)
    obj: dict = {}
    expected = {}
    for split, n in zip(("train", "valid", "test"), sizes):
        lens = [int(x) for x in rng.integers(1, steps + 1, n)]
        if n:
            lens[0] = steps
        part = {"src-text": [], "src-visual": [], "src-audio": [], "len_list": lens, "tgt": []}
        for i, L in enumerate(lens):
            for key, d in (("src-text", dims[0]), ("src-visual", dims[1]), ("src-audio", dims[2])):
                x = np.zeros((steps, d), dtype=np.float32)
                x[:L] = rng.normal(size=(L, d))
                part[key].append(x)
            part["src-visual"][i][0, 0] = -np.inf  # audio (wav2vec) with -inf
            labels = [] if i == 1 else [int(x) for x in rng.integers(0, len(names), 3)]
            part["tgt"].append([2] + list(dict.fromkeys(x + 4 for x in labels)) + [3])
        obj[split] = part
        expected[split] = {k: [np.array(a) for a in v] if k.startswith("src") else list(v) for k, v in part.items()}
    obj["dict"] = {"src": None, "tgt": {**SPECIALS, **{name: 4 + j for j, name in enumerate(names)}}}
    obj["settings"] = argparse.Namespace(max_text_seq_len=steps)
    torch.save(obj, path)
    return {"splits": expected, "label_names": names}


# ------------------------------------------------------------------------------------------ MEmoR
MEMOR_CHARS = ("sheldon", "leonard", "howard", "rajesh", "penny", "bernadette", "amy", "others")
FPS = 23.976


def write_memor(
    root: Path,
    text_convention: str = "seg_ori_ind",
    dims: tuple[int, int, int, int, int] = (6, 9, 5, 4, 3),  # text, audio, face, object, environment
    seed: int = 4,
) -> dict:
    """A MEmoR release folder with three clips:

    - c1: 3 segments (Sheldon speaks; a visual-only segment; Penny speaks), 40 face crops:
      Sheldon 12 in s0, Penny 11 in s1 and 5 in s2, "OthersWomen" 12 in s2 (-> others);
      the audio key of s2 is missing;
    - c2: 2 segments, only 8 face crops (the whole clip's visual is absent);
    - c3: the target (Amy) is not on screen, the moment lies outside every segment, and the
      clip has no face-name file.
    Items 1 and 2 share (clip, character, moment): their labels are unions.
    """
    rng = np.random.default_rng(seed)
    d_t, d_a, d_f, d_o, d_e = dims
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "c1": {
            "seg_start": [100.0, 102.0, 104.0],
            "seg_end": [102.0, 104.0, 106.0],
            "seg_utt": [1, 2, 1],
            "seg_ori_ind": [0, -1, 1],
            "speakers": [0, -1, 4],
            "start": 100.0,
            "end": 106.0,
            "season": 1,
            "episode": 1,
            "sentences": ["hi", "how are you"],
            "on_character": [4, 0],
            "moment": 101.0,
        },
        "c2": {
            "seg_start": [10.0, 11.0],
            "seg_end": [11.0, 13.0],
            "seg_utt": [1, 1],
            "seg_ori_ind": [0, 1],
            "speakers": [1, 2],
            "start": 10.0,
            "end": 13.0,
            "season": 2,
            "episode": 3,
            "sentences": ["a", "b"],
            "on_character": [1, 2],
            "moment": 10.5,
        },
        "c3": {
            "seg_start": [0.0, 1.0],
            "seg_end": [1.0, 2.0],
            "seg_utt": [1, 1],
            "seg_ori_ind": [0, 1],
            "speakers": [3, 6],
            "start": 0.0,
            "end": 2.0,
            "season": 3,
            "episode": 1,
            "sentences": ["x", "y"],
            "on_character": [3],
            "moment": 0.5,
        },
    }
    items = [  # clip, character, moment, primary, fine-grained
        ("c1", 0, 101.0, "joy", "serenity"),
        ("c1", 4, 103.0, "anger", "annoyance"),
        ("c1", 4, 103.0, "surprise", "surprise"),
        ("c1", 7, 105.0, "neutral", "neutral"),
        ("c2", 1, 10.5, "sadness", "boredom"),
        ("c2", 2, 10.2, "fear", "fear"),
        ("c3", 6, 5.0, "trust", "interest"),
        ("c2", 1, 12.0, "disgust", "distraction"),
        ("c3", 3, 0.5, "anticipation", "anticipation"),
        ("c1", 0, 104.5, "joy", "joy"),
    ]
    anno = {
        "primary": [{"clip": c, "character": ch, "moment": m, "emotion": p} for c, ch, m, p, _ in items],
        "fine_grained": [{"clip": c, "character": ch, "moment": m, "emotion": f} for c, ch, m, _, f in items],
    }
    (root / "anno.json").write_text(json.dumps(anno))
    (root / "data.json").write_text(json.dumps(data))
    (root / "train_id.txt").write_text("\n".join(str(i) for i in range(7)) + "\n")
    (root / "test_id.txt").write_text("7\n8\n9\n")
    feat = root / "features"
    feat.mkdir(exist_ok=True)
    personality = rng.uniform(0, 5, size=(8, 118))
    np.savetxt(feat / "character_features.csv", personality, delimiter=",", fmt="%.6f")
    personality = np.loadtxt(feat / "character_features.csv", delimiter=",")
    text, audio = {}, {}
    for clip, c in data.items():
        for s, (ori, spk) in enumerate(zip(c["seg_ori_ind"], c["speakers"])):
            if spk < 0:
                continue
            key = f"{clip}+{ori}" if text_convention == "seg_ori_ind" else f"{clip}+{s}"
            text[key] = [round(float(x), 6) for x in rng.normal(size=d_t)]
            if (clip, s) != ("c1", 2):  # a missing audio key
                audio[f"{clip}+{ori}"] = [round(float(x), 6) for x in rng.normal(size=d_a)]
    audio["c2+0"][1] = float("-inf")  # json writes -Infinity
    (feat / "text_features.json").write_text(json.dumps(text))
    (feat / "audio_features.json").write_text(json.dumps(audio, indent=1))
    vis = feat / "visual_features"
    for sub in ("face_features", "face_names", "object_features", "environment_features"):
        (vis / sub).mkdir(parents=True, exist_ok=True)
    faces = {
        "c1": [(f, "Sheldon") for f in range(5, 17)]
        + [(f, "Penny") for f in range(50, 61)]
        + [(f, "Penny") for f in range(100, 105)]
        + [(f, "OthersWomen") for f in range(110, 122)],
        "c2": [(f, "Leonard") for f in range(0, 8)],
    }
    visual = {}
    for clip, crops in faces.items():
        n_frames = int((data[clip]["end"] - data[clip]["start"]) * FPS) + 2
        face = torch.from_numpy(rng.normal(size=(len(crops), d_f)).astype(np.float32))
        obj = torch.from_numpy(rng.normal(size=(n_frames, d_o)).astype(np.float32))
        env = torch.from_numpy(rng.normal(size=(n_frames, d_e)).astype(np.float32))
        torch.save(face, vis / "face_features" / f"{clip}.pt")
        torch.save(obj, vis / "object_features" / f"{clip}.pt")
        torch.save(env, vis / "environment_features" / f"{clip}.pt")
        (vis / "face_names" / f"{clip}.txt").write_text("\t".join(f"{f}_{name}.jpg" for f, name in crops) + "\n")
        visual[clip] = {"crops": crops, "face": face.numpy(), "object": obj.numpy(), "environment": env.numpy()}
    return {
        "data": data,
        "items": items,
        "anno": anno,
        "personality": personality,
        "text": text,
        "audio": audio,
        "visual": visual,
        "train_ids": list(range(7)),
        "test_ids": [7, 8, 9],
    }
