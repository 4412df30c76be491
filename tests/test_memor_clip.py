"""MEmoR's clip protocol (one sample per clip, the RAMer authors' reading) and scenes with several
target tokens (``SceneStore.target_tokens``): loader, collate, native format, models, CLI."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import fixtures_writers as fw
import numpy as np
import pytest
import torch
from conftest import random_store

from ramer.batch import MODALITIES, ROLE_NONE
from ramer.cli import main
from ramer.config import DataConfig, build_config
from ramer.data.formats import load_dataset
from ramer.data.info import dataset_info
from ramer.data.memor import FINE_GRAINED, PRIMARY
from ramer.data.store import DataBundle, SceneStore, load_native
from ramer.errors import RamerError
from ramer.models import build_model
from ramer.models.base import DataSpec
from ramer.models.parts.labelwise import LabelWiseAttention

SPLITS = ("train", "valid", "test")
EXTRA_CLIPS = 7  # d0..d5 only in train_id.txt, d6 only in test_id.txt


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


# ---------------------------------------------------------------------------------------- the release
def write_release(root: Path) -> dict:
    """``write_memor``'s release (clips c1-c3, each annotated in both id files: c1 has four train
    annotations, two of them on one (character, moment)) plus clips d0-d6, copies of c2 with two
    annotations each, both in segment 1 where Howard speaks (Leonard, who speaks in segment 0, and
    Howard)."""
    fx = fw.write_memor(root)
    feat = root / "features"
    data = json.loads((root / "data.json").read_text())
    anno = json.loads((root / "anno.json").read_text())
    text = json.loads((feat / "text_features.json").read_text())
    audio = json.loads((feat / "audio_features.json").read_text())
    train, test = list(fx["train_ids"]), list(fx["test_ids"])
    for j in range(EXTRA_CLIPS):
        clip = f"d{j}"
        data[clip] = dict(data["c2"])
        for s in (0, 1):
            text[f"{clip}+{s}"], audio[f"{clip}+{s}"] = text[f"c2+{s}"], audio[f"c2+{s}"]
        for char, moment in ((1, 12.0), (2, 12.0)):
            (train if j < EXTRA_CLIPS - 1 else test).append(len(anno["primary"]))
            anno["primary"].append({"clip": clip, "character": char, "moment": moment, "emotion": PRIMARY[j + char]})
            anno["fine_grained"].append(
                {"clip": clip, "character": char, "moment": moment, "emotion": FINE_GRAINED[j + char + 4]}
            )
    (root / "data.json").write_text(json.dumps(data))
    (root / "anno.json").write_text(json.dumps(anno))
    (feat / "text_features.json").write_text(json.dumps(text))
    (feat / "audio_features.json").write_text(json.dumps(audio, indent=1))
    (root / "train_id.txt").write_text("\n".join(map(str, train)) + "\n")
    (root / "test_id.txt").write_text("\n".join(map(str, test)) + "\n")
    return {**fx, "data": data, "anno": anno, "train_ids": train, "test_ids": test}


def clips_of(ids: list[int], anno: list[dict]) -> list[str]:
    """The clips of ``ids`` in order of first appearance."""
    return list(dict.fromkeys(anno[i]["clip"] for i in ids))


def reference(fx: dict, labels: str) -> dict[tuple[str, str], dict]:
    """(id file 'train' / 'test', clip) -> persons, target tokens (flat p * S + s) and label names of
    the clip's annotations listed in that file (straightforward loops)."""
    anno = fx["anno"][labels]
    out = {}
    for part, ids in (("train", fx["train_ids"]), ("test", fx["test_ids"])):
        for clip in clips_of(ids, anno):
            c = fx["data"][clip]
            mine = [anno[i] for i in ids if anno[i]["clip"] == clip]
            persons = sorted(set(c["on_character"]) | {a["character"] for a in mine})
            S = len(c["seg_start"])
            tokens = set()
            for a in mine:
                m = a["moment"]
                inside = [s for s in range(S) if c["seg_start"][s] <= m < c["seg_end"][s]]
                gap = [max(c["seg_start"][s] - m, 0) + max(m - c["seg_end"][s], 0) for s in range(S)]
                s_t = inside[0] if inside else int(np.argmin(gap))
                tokens.add(persons.index(a["character"]) * S + s_t)
            out[(part, clip)] = {
                "persons": persons,
                "grid": (len(persons), S),
                "tokens": tokens,
                "labels": {a["emotion"] for a in mine},
            }
    return out


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("memor") / "memor"
    return root, write_release(root)


@pytest.fixture(scope="module")
def bundle(release) -> DataBundle:
    return load_dataset(release[0], memor_protocol="clip", valid_fraction=0.3)


def marked(store: SceneStore, i: int) -> set[int]:
    """The target tokens of scene ``i``, as token indices within the scene."""
    a, b = store.token_offsets[i], store.token_offsets[i + 1]
    return set(np.flatnonzero(np.asarray(store.target_tokens[a:b])).tolist())


def expected_scope(store: SceneStore, idx, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N) bool: the target tokens of the scenes ``idx`` on the padded grid ``(P, S)``."""
    P, S = grid
    out = torch.zeros(len(idx), P * S, dtype=torch.bool)
    for b, i in enumerate(idx):
        S_i = int(store.grid[i][1])
        for n in marked(store, i):
            out[b, (n // S_i) * S + n % S_i] = True
    return out


# ---------------------------------------------------------------------------------------- the loader
def test_one_sample_per_clip_and_split(release, bundle) -> None:
    """Train + valid hold one sample per clip of train_id.txt, test one per clip of test_id.txt; a
    clip in both files gives a sample on each side, each from that side's annotations."""
    _, fx = release
    anno = fx["anno"]["primary"]
    train_clips, test_clips = clips_of(fx["train_ids"], anno), clips_of(fx["test_ids"], anno)
    assert (len(train_clips), len(test_clips)) == (9, 4)
    got = {split: bundle.splits[split].ids for split in SPLITS}
    assert sorted(got["train"] + got["valid"]) == sorted(train_clips)
    assert got["test"] == test_clips  # file order
    assert bundle.info["memor"]["protocol"] == "clip" and bundle.info["memor"]["clips_in_train_and_test"] == 3
    # c1: four train annotations (joy, anger + surprise on one moment, neutral), one test one (joy)
    side = "train" if "c1" in got["train"] else "valid"
    names = bundle.label_names
    st = bundle.splits[side]
    assert {names[j] for j in np.flatnonzero(st.labels[st.ids.index("c1")])} == {"joy", "anger", "surprise", "neutral"}
    st = bundle.splits["test"]
    assert {names[j] for j in np.flatnonzero(st.labels[st.ids.index("c1")])} == {"joy"}
    assert sum(bundle.info["splits"][s]["annotations"] for s in SPLITS) == len(fx["train_ids"]) + len(fx["test_ids"])


@pytest.mark.parametrize("labels", ["primary", "fine_grained"])
def test_label_persons_and_target_tokens(release, labels) -> None:
    """Label = the union of the emotions of the split's annotations of the clip; persons =
    on-screen + annotated characters; target tokens = exactly the annotated (character,
    segment-of-moment) tokens; no single target, no role."""
    root, fx = release
    bundle = load_dataset(root, data_cfg=DataConfig(labels=labels), memor_protocol="clip", valid_fraction=0.3)
    ref = reference(fx, labels)
    seen = 0
    for split in SPLITS:
        st = bundle.splits[split]
        part = "test" if split == "test" else "train"
        for i, clip in enumerate(st.ids):
            r = ref[(part, clip)]
            assert tuple(st.grid[i]) == r["grid"], clip
            assert st.character[st.person_offsets[i] : st.person_offsets[i + 1]].tolist() == r["persons"], clip
            assert {bundle.label_names[j] for j in np.flatnonzero(st.labels[i])} == r["labels"], (split, clip)
            assert marked(st, i) == r["tokens"], (split, clip)
            assert tuple(st.target[i]) == (-1, -1) and st.role[i] == ROLE_NONE
            seen += 1
        assert st.marks_targets().all()
    assert seen == len(ref)
    multi = [k for k, r in ref.items() if len(r["labels"]) > 1]
    assert multi and sum(bundle.info["splits"][s]["multi_label_samples"] for s in SPLITS) == len(multi)


def test_features_are_the_target_protocols(release, bundle) -> None:
    """A clip sample's token rows are those the target protocol builds for the same clip and persons."""
    root, _ = release
    per_item = load_dataset(root, valid_fraction=0.3)
    rows = {}
    for st in per_item.splits.values():
        for i, sid in enumerate(st.ids):
            _, clip, _ = sid.split(":")
            P, S = st.grid[i]
            a = st.token_offsets[i]
            for p, who in enumerate(st.character[st.person_offsets[i] : st.person_offsets[i + 1]]):
                rows[(clip, int(who))] = [np.asarray(getattr(st, m)[a + p * S : a + (p + 1) * S]) for m in MODALITIES]
    for st in bundle.splits.values():
        for i, clip in enumerate(st.ids):
            P, S = st.grid[i]
            a = st.token_offsets[i]
            for p, who in enumerate(st.character[st.person_offsets[i] : st.person_offsets[i + 1]]):
                for m, want in zip(MODALITIES, rows[(clip, int(who))]):
                    np.testing.assert_array_equal(getattr(st, m)[a + p * S : a + (p + 1) * S], want)


def test_valid_split_takes_whole_clips_seeded(release) -> None:
    root, fx = release
    train_clips = clips_of(fx["train_ids"], fx["anno"]["primary"])
    for seed in (1, 2020):
        b = load_dataset(root, memor_protocol="clip", valid_fraction=0.3, valid_seed=seed)
        train, valid = b.splits["train"].ids, b.splits["valid"].ids
        assert not set(train) & set(valid) and sorted(train + valid) == sorted(train_clips)
        drawn = set(np.random.default_rng(seed).permutation(len(train_clips))[:3].tolist())
        assert valid == [c for j, c in enumerate(train_clips) if j in drawn]  # a seeded 30 % of the clips, in order
        assert train == [c for j, c in enumerate(train_clips) if j not in drawn]
        again = load_dataset(root, memor_protocol="clip", valid_fraction=0.3, valid_seed=seed)
        assert again.splits["valid"].ids == valid
    assert load_dataset(root, memor_protocol="clip", valid_fraction=0.3, valid_seed=1).splits["valid"].ids != (
        load_dataset(root, memor_protocol="clip", valid_fraction=0.3, valid_seed=2020).splits["valid"].ids
    )


def test_protocol_is_checked(release) -> None:
    with pytest.raises(RamerError, match="memor_protocol='scene': Input should be 'target' or 'clip'"):
        load_dataset(release[0], memor_protocol="scene")
    with pytest.raises(RamerError, match="MEmoR protocol 'scene' unknown; choose target"):  # a config not checked
        load_dataset(release[0], data_cfg=DataConfig.model_construct(memor_protocol="scene"))
    with pytest.raises(ValueError, match="memor_protocol"):
        DataConfig(memor_protocol="scene")


# ---------------------------------------------------------------------------------------- collate
def test_collated_scope_is_the_target_tokens(bundle) -> None:
    st = bundle.splits["test"]
    idx = list(range(len(st)))
    batch = st.collate(idx)
    assert len({tuple(g) for g in st.grid}) > 1  # scenes of different sizes: padding is in play
    assert (batch.target == -1).all()
    assert torch.equal(batch.scope, expected_scope(st, idx, batch.grid))
    assert (batch.scope & ~batch.valid).sum() == 0
    part = st.collate([2, 0])  # another order and grid: each scene keeps its own tokens
    assert torch.equal(part.scope, expected_scope(st, [2, 0], part.grid))


def test_scenes_without_marks_keep_the_target_rule() -> None:
    """One store mixing marked scenes, scenes with one target and a whole-sample scene."""
    base = random_store(n=5, persons=(2, 3), segments=(2, 4), seed=2)
    target = base.target.copy()
    tokens = np.zeros(len(base.present), dtype=bool)
    for i, n in ((0, (0, 3)), (2, (1,))):  # scenes 0 and 2 mark tokens; scene 4 is a whole sample
        target[i] = (-1, -1)
        tokens[base.token_offsets[i] + np.asarray(n)] = True
    target[4] = (-1, -1)
    role = np.where((target == -1).all(1), -1, base.role).astype(np.int8)  # a whole sample has no role
    store = SceneStore(**{**base.__dict__, "target": target, "role": role, "target_tokens": tokens})
    assert store.marks_targets().tolist() == [True, False, True, False, False]
    batch = store.collate(range(5))
    P, S = batch.grid
    for i in range(5):
        P_i, S_i = store.grid[i]
        valid = batch.valid[i]
        if i in (0, 2):
            want = expected_scope(store, [i], (P, S))[0]
        elif i == 4:
            want = valid
        else:
            p = int(target[i][0])
            want = valid & (batch.person[i] == p)
            assert batch.target[i] == p * S + target[i][1]
        assert torch.equal(batch.scope[i], want), i
    assert batch.target[[0, 2, 4]].tolist() == [-1, -1, -1]


def test_target_tokens_are_checked(tmp_path) -> None:
    base = random_store(n=3, with_target=False, seed=4)
    T = len(base.present)
    with pytest.raises(RamerError, match=rf"<memory>: target_tokens has shape \({T + 1},\), expected \({T},\)"):
        SceneStore(**{**base.__dict__, "target_tokens": np.zeros(T + 1, dtype=bool)})
    with pytest.raises(RamerError, match="<memory>: target_tokens has dtype uint8, expected bool"):
        SceneStore(**{**base.__dict__, "target_tokens": np.zeros(T, dtype=np.uint8)})
    target = base.target.copy()
    target[1] = (0, 1)
    tokens = np.zeros(T, dtype=bool)
    tokens[base.token_offsets[1]] = True
    with pytest.raises(
        RamerError,
        match=r"<memory>: target_tokens marks tokens of scene 1, whose target row is \(0, 1\); a scene that "
        r"marks target tokens must have target \(-1, -1\)",
    ):
        SceneStore(**{**base.__dict__, "target": target, "target_tokens": tokens})
    SceneStore(**{**base.__dict__, "target": target})  # the same target row without marks is fine
    # on disk: the dtype is checked on load, naming the file
    SceneStore(**{**base.__dict__, "target_tokens": tokens}).save(tmp_path / "s")
    np.save(tmp_path / "s" / "target_tokens.npy", tokens.astype(np.uint8))
    with pytest.raises(RamerError, match=r"target_tokens.npy: dtype uint8, expected bool"):
        SceneStore.load(tmp_path / "s", base.label_names)


# ---------------------------------------------------------------------------------------- native format
def test_native_round_trip_keeps_target_tokens(bundle, tmp_path) -> None:
    bundle.save(tmp_path / "native")
    back = load_native(tmp_path / "native")
    for split in SPLITS:
        a, b = bundle.splits[split], back.splits[split]
        assert b.target_tokens is not None and b.target_tokens.dtype == np.bool_
        np.testing.assert_array_equal(a.target_tokens, b.target_tokens)
        idx = list(range(len(a)))
        assert torch.equal(a.collate(idx).scope, b.collate(idx).scope)
        assert b.with_missing(0.5, seed=0).target_tokens is b.target_tokens  # a variant keeps the marks
    info = dataset_info(back)["splits"]
    assert info == dataset_info(bundle)["splits"]
    assert all(info[s]["several_target_samples"] == info[s]["n"] > 0 for s in SPLITS)
    assert all(info[s]["whole_sample_targets"] == 0 for s in SPLITS)
    # a folder written before target_tokens existed (none on disk) still loads: whole-sample scenes
    for split in SPLITS:
        (tmp_path / "native" / split / "target_tokens.npy").unlink()
    old = load_native(tmp_path / "native")
    st = old.splits["test"]
    assert st.target_tokens is None and not st.marks_targets().any()
    batch = st.collate(range(len(st)))
    assert torch.equal(batch.scope, batch.valid)
    assert dataset_info(old)["splits"]["test"]["whole_sample_targets"] == len(st)


# ---------------------------------------------------------------------------------------- models
def make_model(name: str, store: SceneStore):
    torch.manual_seed(0)
    sets = ["model.hidden=16", "model.ffn=16", "model.heads=2", "model.proj_size=8", "model.queue_size=32"]
    cfg = build_config(overrides=[f"model.name={name}", *sets])
    dims = store.dims
    spec = DataSpec(
        dims={m: dims[m] for m in MODALITIES},
        n_labels=len(store.label_names),
        label_names=store.label_names,
        personality_dim=dims["personality"],
    )
    return build_model(cfg, spec)


@pytest.mark.parametrize("name", ["late_fusion", "ramer"])
def test_a_model_trains_a_step_on_clip_batches(bundle, name) -> None:
    st = bundle.splits["train"]
    model = make_model(name, st).train()
    batch = st.collate(range(len(st)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    out = model(batch)
    res = model.loss(out, batch)
    assert torch.isfinite(res.total) and torch.isfinite(out.probs).all()
    res.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_ramer_label_attention_stays_on_the_target_tokens(bundle, monkeypatch) -> None:
    """The label-wise attention weights are exactly 0 on every token that is not a target token."""
    st = bundle.splits["test"]
    idx = list(range(len(st)))
    batch = st.collate(idx)
    want = expected_scope(st, idx, batch.grid)  # (B, N)
    seen = []
    original = LabelWiseAttention.weights

    def record(self, g, keys, target=None):
        w = original(self, g, keys, target)
        seen.append(w.detach())
        return w

    monkeypatch.setattr(LabelWiseAttention, "weights", record)
    model = make_model("ramer", st).eval()
    with torch.no_grad():
        model(batch)
    (w,) = seen  # (B, M, C, N)
    assert (w * ~want[:, None, None, :]).abs().max() == 0
    torch.testing.assert_close((w * want[:, None, None, :]).sum(-1), torch.ones(w.shape[:3]))


def test_late_fusion_reads_only_the_target_tokens(bundle) -> None:
    """Noise on every other token leaves late fusion's output bit-identical; on a target token it does not."""
    st = bundle.splits["train"]
    idx = list(range(len(st)))
    batch = st.collate(idx)
    want = expected_scope(st, idx, batch.grid)
    model = make_model("late_fusion", st).eval()
    assert (batch.present["text"] & ~want).any()  # present tokens outside the targets: the noise can reach them

    def noisy(where: torch.Tensor):
        torch.manual_seed(1)
        feats = {m: torch.where(where[..., None], torch.randn_like(x) * 10, x) for m, x in batch.features.items()}
        return replace(batch, features=feats).with_present(batch.present)

    with torch.no_grad():
        ref = model(batch).probs
        assert torch.equal(model(noisy(~want)).probs, ref)
        assert not torch.equal(model(noisy(want)).probs, ref)


# ---------------------------------------------------------------------------------------- CLI
def test_cli_data_info_and_train_take_the_protocol(release, tmp_path, capsys) -> None:
    root, fx = release
    assert main(["data", "info", str(root), "--json", "--set", "data.memor_protocol=clip"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["details"]["memor"]["protocol"] == "clip"
    assert info["splits"]["test"]["n"] == info["splits"]["test"]["several_target_samples"] == 4
    out = tmp_path / "run"
    sets = ["data.memor_protocol=clip", "data.valid_fraction=0.3", "train.epochs=1", "train.batch_size=4"]
    sets += ["model.hidden=16", "model.ffn=16", "model.heads=2"]
    argv = ["train", "--model", "late_fusion", "--data", str(root), "--out", str(out)]
    assert main(argv + sum((["--set", s] for s in sets), [])) == 0
    assert "memor_protocol: clip" in (out / "config.yaml").read_text()
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out), "--out", str(preds)]) == 0  # reads the data as the saved config says
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [x["id"] for x in lines] == clips_of(fx["test_ids"], fx["anno"]["primary"])
    assert all(x["target"] is None and x["role"] is None for x in lines)


# ---------------------------------------------------------------------------------------- id files, both protocols
def edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("protocol", ["target", "clip"])
@pytest.mark.parametrize(
    "name, lines, message",
    [
        (
            "train_id.txt",
            "0\n1\n2\n3\n\n4\n5\n6\n0\n",
            r"train_id.txt: line 9: index 0 is listed again \(first on line 1\)",
        ),
        ("test_id.txt", "7\n8\n9\n9\n", r"test_id.txt: line 4: index 9 is listed again \(first on line 3\)"),
    ],
    ids=["train", "test"],
)
def test_an_index_listed_twice_in_an_id_file_is_refused(tmp_path, protocol, name, lines, message) -> None:
    """One annotation twice in train_id.txt could land in train and valid: refused, naming the lines."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    (root / name).write_text(lines)
    with pytest.raises(RamerError, match=message):
        load_dataset(root, memor_protocol=protocol)


@pytest.mark.parametrize("protocol", ["target", "clip"])
def test_indices_in_both_id_files_are_refused(tmp_path, protocol) -> None:
    """An index in train_id.txt and test_id.txt is one sample in train (or valid) and test: refused,
    naming the indices (in either protocol: the clip protocol's clips on both sides are other annotations)."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    (root / "test_id.txt").write_text("7\n8\n9\n0\n")
    with pytest.raises(RamerError, match=r"test_id.txt: 1 index is also in train_id.txt \(0\); the splits must be"):
        load_dataset(root, memor_protocol=protocol)
    (root / "test_id.txt").write_text("7\n5\n8\n9\n0\n")
    with pytest.raises(RamerError, match=r"test_id.txt: 2 indices are also in train_id.txt \(5, 0\)"):
        load_dataset(root, memor_protocol=protocol)


# ---------------------------------------------------------------------------------------- target protocol: twins
def sides(bundle: DataBundle) -> dict[int, str]:
    """anno index -> split, for the target protocol's ids ``"{anno}:{clip}:{character}"``."""
    return {int(sid.split(":")[0]): split for split in SPLITS for sid in bundle.splits[split].ids}


def test_target_protocol_draws_identical_samples_together(tmp_path) -> None:
    """Items 1 and 2 of the fixture share (c1, Penny, 103.0): one union label, the same scene, so
    identical samples. Validation is drawn over such groups: the two are never split between train
    and valid, at every seed and share, and the valid share stays within one item of the asked one."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    for fraction in (0.1, 0.15, 0.3, 0.5):
        want = min(max(round(7 * fraction), 1), 6)
        for seed in range(25):
            got = sides(load_dataset(root, valid_fraction=fraction, valid_seed=seed))
            assert got[1] == got[2], (fraction, seed)
            valid = [i for i, s in got.items() if s == "valid"]
            assert abs(len(valid) - want) <= 1 and 0 < len(valid) < 7, (fraction, seed, valid)
            assert (
                np.random.default_rng(seed).permutation(7)[0] in valid
            )  # the walk starts where the per-item draw does
    # the audit's case: drawn per item, seed 0 put item 2 in valid and its twin 1 in train; the
    # seeded walk (items 2, 4, 3, ...) reaches item 2 first and brings its twin along
    b = load_dataset(root, valid_fraction=0.15, valid_seed=0)
    assert np.random.default_rng(0).permutation(7)[0] == 2
    assert b.splits["valid"].ids == ["1:c1:4", "2:c1:4"]
    assert b.splits["train"].ids == ["0:c1:0", "3:c1:7", "4:c2:1", "5:c2:2", "6:c3:6"]
    again = load_dataset(root, valid_fraction=0.15, valid_seed=0)  # seeded
    assert again.splits["valid"].ids == b.splits["valid"].ids


def test_target_protocol_counts_identical_samples_per_split(tmp_path, capsys) -> None:
    """``duplicate_annotation_samples``: the items beyond the first of their (clip, character,
    moment) in a split (their copies: same scene, same union label)."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    twin = {"clip": "c2", "character": 1, "moment": 12.0}  # item 7's, in test_id.txt
    edit_json(
        root / "anno.json",
        lambda o: [o[k].append({**twin, "emotion": e}) for k, e in (("primary", "joy"), ("fine_grained", "joy"))],
    )
    (root / "test_id.txt").write_text("7\n8\n9\n10\n")
    b = load_dataset(root, valid_fraction=0.15, valid_seed=0)
    counts = {s: b.info["splits"][s]["duplicate_annotation_samples"] for s in SPLITS}
    assert counts == {"train": 0, "valid": 1, "test": 1}
    st = b.splits["test"]
    a, z = st.ids.index("7:c2:1"), st.ids.index("10:c2:1")
    assert [b.label_names[j] for j in np.flatnonzero(st.labels[a])] == ["joy", "disgust"]
    np.testing.assert_array_equal(st.labels[a], st.labels[z])
    assert (
        main(["data", "info", str(root), "--json", "--set", "data.valid_fraction=0.15", "--set", "data.valid_seed=0"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert {s: info["splits"][s]["loader"]["duplicate_annotation_samples"] for s in SPLITS} == counts
    # the clip protocol has no such copies (a clip's annotations are one sample): no counter
    clip = load_dataset(root, memor_protocol="clip", valid_fraction=0.3)
    assert all("duplicate_annotation_samples" not in clip.info["splits"][s] for s in SPLITS)


def test_target_protocol_counts_test_samples_also_in_train(tmp_path, capsys) -> None:
    """An item of test_id.txt sharing (clip, character, moment) with one of train_id.txt is the
    same sample (one union label) in test and in train or valid: kept, and counted in test
    (``samples_also_in_train``), wherever the draw put its twin; valid counts its twins in train."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    twin = {"clip": "c1", "character": 0, "moment": 101.0}  # item 0's, in train_id.txt
    edit_json(
        root / "anno.json",
        lambda o: [o[k].append({**twin, "emotion": "sadness"}) for k in ("primary", "fine_grained")],
    )
    (root / "test_id.txt").write_text("7\n8\n9\n10\n")
    for seed, side in ((0, "train"), (7, "valid")):  # item 0 drawn into train, then into valid
        b = load_dataset(root, valid_fraction=0.15, valid_seed=seed)
        assert sides(b)[0] == side and b.splits["test"].ids == ["7:c2:1", "8:c3:3", "9:c1:0", "10:c1:0"]
        assert {s: b.info["splits"][s].get("samples_also_in_train") for s in SPLITS} == {
            "train": None,
            "valid": 0,
            "test": 1,
        }
        np.testing.assert_array_equal(
            b.splits["test"].labels[3], b.splits[side].labels[b.splits[side].ids.index("0:c1:0")]
        )
    assert main(["data", "info", str(root), "--set", "data.valid_fraction=0.15", "--set", "data.valid_seed=0"]) == 0
    assert re.search(r"\n  test +.*samples_also_in_train 1", capsys.readouterr().out)


def test_target_protocol_draw_without_twins_is_the_per_item_draw(tmp_path) -> None:
    """With no (clip, character, moment) shared, each group is one item: the draw is the seeded
    per-item one (a seeded ``round(n * fraction)`` of the items, at least one, never all)."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    for key in ("primary", "fine_grained"):
        edit_json(root / "anno.json", lambda o, key=key: o[key][2].__setitem__("moment", 103.5))
    for fraction, seed in ((0.1, 2020), (0.15, 0), (0.3, 1), (0.5, 7)):
        b = load_dataset(root, valid_fraction=fraction, valid_seed=seed)
        n_val = min(max(round(7 * fraction), 1), 6)
        drawn = set(np.random.default_rng(seed).permutation(7)[:n_val].tolist())
        assert [int(x.split(":")[0]) for x in b.splits["valid"].ids] == sorted(drawn)
        assert all(b.info["splits"][s]["duplicate_annotation_samples"] == 0 for s in SPLITS)


# ---------------------------------------------------------------------------------------- whole numbers
@pytest.mark.parametrize("value", [0.7, True, 2.5, "x"])
def test_a_character_that_is_not_a_whole_number_is_refused(tmp_path, value) -> None:
    """anno.json's character 0.7 was read as 0 (Sheldon), true as 1: refused, naming the item."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    edit_json(root / "anno.json", lambda o: o["primary"][0].__setitem__("character", value))
    with pytest.raises(
        RamerError,
        match=rf"anno.json: 'primary'\[0\]: character {value!r} is not a whole number \(a character id 0..7\)",
    ):
        load_dataset(root)


def test_a_whole_float_character_still_loads(tmp_path) -> None:
    root = tmp_path / "memor"
    fw.write_memor(root)
    edit_json(root / "anno.json", lambda o: o["primary"][0].__setitem__("character", 0.0))
    assert 0 in sides(load_dataset(root))  # 0.0 is character 0


@pytest.mark.parametrize("protocol", ["target", "clip"])
@pytest.mark.parametrize(
    "key, position, value",
    [
        ("speakers", 0, 0.7),
        ("speakers", 2, True),
        ("on_character", 1, 0.7),
        ("on_character", 0, False),
        ("seg_ori_ind", 2, 1.5),
    ],
)
def test_data_json_integers_that_are_not_whole_numbers_are_refused(tmp_path, protocol, key, position, value) -> None:
    """data.json's speakers / on_character / seg_ori_ind of 0.7 were read as 0 (another character or
    segment), a bool as 0 or 1: refused, naming the clip, the key and the value."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    edit_json(root / "data.json", lambda o: o["c1"][key].__setitem__(position, value))
    with pytest.raises(RamerError, match=rf"data.json: clip 'c1' key '{key}' holds {value!r}, expected a whole number"):
        load_dataset(root, memor_protocol=protocol)


# ---------------------------------------------------------------------------------------- personality
def test_a_non_finite_personality_value_is_named_by_line_and_column(tmp_path) -> None:
    """NaN / inf in character_features.csv stay an error (not replaced): the message names the
    first one's line, character and column, and how many there are."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    p = root / "features" / "character_features.csv"
    rows = [line.split(",") for line in p.read_text().splitlines()]
    rows[2][5], rows[6][117] = "nan", "inf"
    p.write_text("\n".join(",".join(r) for r in rows) + "\n")
    with pytest.raises(
        RamerError,
        match=r"character_features.csv: holds non-finite values \(2\); the first is nan at line 3 \(character 2, "
        r"howard\), column 5 \(0-based\)",
    ):
        load_dataset(root)
    order = ("leonard", "sheldon", "penny", "rajesh", "howard", "bernadette", "amy", "others")
    with pytest.raises(RamerError, match=r"line 3 \(character 2, penny\), column 5"):
        load_dataset(root, memor_character_order=order)
