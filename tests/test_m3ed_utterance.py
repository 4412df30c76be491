"""M3ED's utterance protocol: the feature pickle plus the release's ``annotation.json``, one sample
per utterance (tests/fixtures_writers.py writes both in the release layouts). At the end, checks of
the feature pickle that hold in both protocols, and of CARAT's ``m3ed_data_60.pt``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import fixtures_writers as fw
import numpy as np
import pytest
import torch

from ramer.batch import ROLE_SPEAKER
from ramer.cli import main
from ramer.config import DataConfig
from ramer.data.formats import load_bundle, load_dataset
from ramer.data.store import load_native
from ramer.errors import RamerError

SPLITS = ("train", "valid", "test")
LENGTHS = {"train": [3, 12, 2], "valid": [5, 1], "test": [4, 6]}


def clean(x) -> np.ndarray:
    x = np.asarray(x).astype(np.float32)
    return np.where(np.isfinite(x), x, 0).astype(np.float32)


def multi_hot(names: list[str]) -> np.ndarray:
    out = np.zeros(len(fw.M3ED_NAMES), np.uint8)
    out[[fw.M3ED_NAMES.index(x) for x in names]] = 1
    return out


@pytest.fixture
def release(tmp_path: Path) -> dict:
    """A feature pickle and its annotation.json side by side, as the release ships them."""
    pkl = tmp_path / "m3ed.pkl"
    fx = fw.write_m3ed_pickle(pkl, lengths=LENGTHS)
    names = fw.write_m3ed_annotation(tmp_path / "annotation.json", fx)
    return {"pkl": pkl, "ann": tmp_path / "annotation.json", "fx": fx, "names": names}


def load(release: dict, max_utterances: int = 60, **options):
    cfg = DataConfig(m3ed_protocol="utterance", max_utterances=max_utterances)
    return load_dataset(release["pkl"], data_cfg=cfg, m3ed_protocol="utterance", **options)


def _rewrite_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text(encoding="utf-8"))
    edit(obj)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _rewrite_pickle(path: Path, edit) -> None:
    with open(path, "rb") as fh:
        obj = pickle.load(fh)  # our own fixture file
    edit(obj)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


# ---------------------------------------------------------------------------------- the samples
def test_one_sample_per_utterance(release) -> None:
    """Every utterance is a sample, in split order, labelled with its own final_mul_emo."""
    fx, names = release["fx"], release["names"]
    bundle = load(release)
    assert bundle.format == "m3ed_pickle" and bundle.label_names == fw.M3ED_NAMES
    assert bundle.info["m3ed"]["protocol"] == "utterance"
    for split in SPLITS:
        st = bundle.splits[split]
        vids = fx["splits"][split]
        assert len(st) == sum(LENGTHS[split])  # the split's utterances: 17 / 6 / 10
        assert st.ids == [f"{d}/{t}" for d in vids for t in range(len(fx["ids"][d]))]
        want = np.stack([multi_hot(emos) for d in vids for emos in names[d]])
        np.testing.assert_array_equal(st.labels, want)
    assert sum(bundle.splits["train"].labels.sum(1) > 1) == 1 + 4 + 1  # utterances 1, 4, 7, .. have two
    assert bundle.task == "multi_label"


def test_target_role_and_presence(release) -> None:
    """Target = (speaker row, the utterance's segment), role speaker; each utterance's features sit
    on its speaker's row only, so the listener's token at the target is a non-speaker token."""
    fx = release["fx"]
    bundle = load(release)
    for split in SPLITS:
        st = bundle.splits[split]
        k = 0
        for d in fx["splits"][split]:
            n = len(fx["ids"][d])
            rows = [0 if s == "A" else 1 for s in fx["speakers"][d]]
            for t in range(n):
                assert tuple(st.grid[k]) == (2, n)  # the whole dialogue fits in the window
                assert tuple(st.target[k]) == (rows[t], t) and st.role[k] == ROLE_SPEAKER
                off = st.token_offsets[k]
                for m in ("text", "audio", "visual"):
                    want = np.zeros((2 * n, fx[m][d].shape[1]), np.float32)
                    for u in range(n):
                        want[rows[u] * n + u] = clean(fx[m][d][u])
                    np.testing.assert_array_equal(getattr(st, m)[off : off + 2 * n], want)
                pres = np.zeros(2 * n, bool)
                pres[[rows[u] * n + u for u in range(n)]] = True
                for j in range(3):
                    np.testing.assert_array_equal(st.present[off : off + 2 * n, j], pres)
                k += 1
    # through the batch: the listener's token at the target segment is valid but holds no modality
    st = bundle.splits["train"]
    batch = st.collate(list(range(len(st))))
    P, S = batch.grid
    for i in range(len(st)):
        p, s = (int(x) for x in st.target[i])
        listener = (1 - p) * S + s
        assert int(batch.target[i]) == p * S + s and bool(batch.valid[i, listener])
        assert not any(bool(batch.present[m][i, listener]) for m in ("text", "audio", "visual"))
        assert all(bool(batch.present[m][i, p * S + s]) for m in ("text", "audio", "visual"))


def test_window_at_the_cut(release) -> None:
    """A dialogue longer than max_utterances: the window holds the target and as many preceding
    utterances as fit (the first max_utterances for early targets, else the ones ending at it)."""
    fx = release["fx"]
    W = 4
    st = load(release, max_utterances=W).splits["train"]
    d = fx["splits"]["train"][1]  # 12 utterances
    first = LENGTHS["train"][0]
    rows = [0 if s == "A" else 1 for s in fx["speakers"][d]]
    starts = []
    for t in range(12):
        k = first + t
        assert tuple(st.grid[k]) == (2, W)
        p, s = (int(x) for x in st.target[k])
        start = t - s
        starts.append(start)
        assert p == rows[t]
        off = st.token_offsets[k]
        text = st.text[off : off + 2 * W]
        for u in range(start, start + W):  # the window's utterances, each on its speaker's row
            np.testing.assert_array_equal(text[rows[u] * W + u - start], clean(fx["text"][d][u]))
        assert st.present[off : off + 2 * W, 0].sum() == W
    assert starts == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert [int(x) for x in st.target[first : first + 12, 1]] == [0, 1, 2, 3] + [3] * 8
    assert tuple(st.grid[0]) == (2, 3)  # a dialogue shorter than the window keeps its length
    assert st.extra["samples_in_cut_dialogues"] == 12


def test_split_sizes_follow_the_pickle(release) -> None:
    """The pickle's trainVid / valVid / testVid decide the split of every utterance."""

    def move(obj):
        obj[8].append(obj[7].pop(0))  # the first train dialogue (3 utterances) to valid

    _rewrite_pickle(release["pkl"], move)
    bundle = load(release)
    assert {s: len(bundle.splits[s]) for s in SPLITS} == {"train": 14, "valid": 9, "test": 10}
    assert bundle.splits["valid"].ids[-3:] == ["seriestrain_0/0", "seriestrain_0/1", "seriestrain_0/2"]


# ---------------------------------------------------------------------------------- matching
def test_matches_by_utterance_id(release) -> None:
    """The pickle names utterances '{speaker}_{annotation key}': a dialogue listed in another
    order than the annotation's still gets each utterance's own labels."""
    d = "seriestest_1"
    perm = [2, 0, 1, 5, 3, 4]

    def permute(obj):
        for k in range(6):
            v = obj[k][d]
            obj[k][d] = v[perm] if isinstance(v, np.ndarray) else [v[i] for i in perm]

    _rewrite_pickle(release["pkl"], permute)
    bundle = load(release)
    st = bundle.splits["test"]
    k = LENGTHS["test"][0]
    want = np.stack([multi_hot(release["names"][d][i]) for i in perm])
    np.testing.assert_array_equal(st.labels[k : k + 6], want)
    assert bundle.info["m3ed"]["dialogues_matched_by"] == {"utterance id": 7, "order": 0}
    assert all(st.extra["speaker_disagreements"] == 0 for st in bundle.splits.values())


def test_orders_by_key_number_when_ids_differ(release) -> None:
    """Utterance ids the annotation does not know: matched by position, the annotation's utterances
    ordered by the number ending their key (a file written with sorted keys puts '_10' before '_2')."""
    fw.write_m3ed_annotation(release["ann"], release["fx"], sort_keys=True)

    def rename(obj):
        for d in obj[0]:
            obj[0][d] = [f"utt{u}" for u in range(len(obj[0][d]))]

    _rewrite_pickle(release["pkl"], rename)
    bundle = load(release)
    train = bundle.splits["train"]
    want = np.stack([multi_hot(e) for d in release["fx"]["splits"]["train"] for e in release["names"][d]])
    np.testing.assert_array_equal(train.labels, want)
    assert bundle.info["m3ed"]["dialogues_matched_by"] == {"utterance id": 0, "order": 7}
    assert bundle.info["m3ed"]["annotation_utterance_order"] == {"key number": 7}


def test_final_mul_emo_variants(release) -> None:
    """Lists (on the utterance itself), other separators and capitalisation, other spellings, Chinese
    names, no series level: the same labels, and info says which forms were found."""
    names = release["names"]
    spellings = {}
    respell = [{}, {}, {"Anger": "愤怒", "Sad": "伤心"}, {"Surprise": "surprised", "Happy": "HAPPY"}]

    def vary(obj):
        flat = {}
        for series in obj.values():
            for d, dia in series.items():
                for j, entry in enumerate(dia["Dialog"].values()):
                    emos = names[d][j]
                    form = j % 4
                    spelled = [e.lower() if form == 1 else respell[form].get(e, e) for e in emos]
                    spellings.update({x: e for x, e in zip(spelled, emos) if x != e})
                    sep = ["", " ; ", "，", ", "][form]
                    if form == 0:  # a list, on the utterance itself
                        del entry["EmoAnnotation"]["final_mul_emo"]
                        entry["final_mul_emo"] = spelled
                    else:
                        entry["EmoAnnotation"]["final_mul_emo"] = sep.join(spelled)
                flat[d] = dia
        obj.clear()
        obj.update(flat)

    _rewrite_json(release["ann"], vary)
    bundle = load(release)
    for split in SPLITS:
        want = np.stack([multi_hot(e) for d in release["fx"]["splits"][split] for e in names[d]])
        np.testing.assert_array_equal(bundle.splits[split].labels, want)
    m3ed = bundle.info["m3ed"]
    assert m3ed["annotation_nesting"] == "dialogue -> Dialog"
    assert set(m3ed["final_mul_emo_values"]) == {"list on the utterance", "string"}
    assert {";", "，", ","} <= set(m3ed["final_mul_emo_separators"])
    assert m3ed["final_mul_emo_spellings"] == spellings and "happy" in spellings


# ---------------------------------------------------------------------------------- errors
def test_utterance_count_mismatch(release) -> None:
    def drop(obj):
        obj["seriesvalid"]["seriesvalid_0"]["Dialog"].pop("seriesvalid_0_5")

    _rewrite_json(release["ann"], drop)
    with pytest.raises(
        RamerError, match=r"dialogue 'seriesvalid_0' has 4 utterances, but 5 in the feature pickle"
    ) as e:
        load(release)
    assert str(release["ann"]) in str(e.value) and str(release["pkl"]) in str(e.value)


def test_dialogue_missing_from_annotation(release) -> None:
    _rewrite_json(release["ann"], lambda obj: obj["seriestest"].pop("seriestest_1"))
    with pytest.raises(
        RamerError, match=r"dialogue 'seriestest_1' of the feature pickle .* \(6 utterances, split 'test'\) is missing"
    ) as e:
        load(release)
    assert str(release["ann"]) in str(e.value)


def test_unknown_emotion(release) -> None:
    def glee(obj):
        obj["seriestrain"]["seriestrain_1"]["Dialog"]["seriestrain_1_7"]["EmoAnnotation"]["final_mul_emo"] = (
            "Anger,Glee"
        )

    _rewrite_json(release["ann"], glee)
    with pytest.raises(
        RamerError,
        match=r"dialogue 'seriestrain_1' utterance 'seriestrain_1_7' \(index 6\): final_mul_emo holds 'Glee'",
    ) as e:
        load(release)
    assert str(release["ann"]) in str(e.value)


def test_missing_annotation_file(release, tmp_path: Path) -> None:
    release["ann"].unlink()
    with pytest.raises(RamerError, match="annotation file not found") as e:
        load(release)
    assert str(release["ann"]) in str(e.value)
    elsewhere = tmp_path / "labels" / "anno.json"
    with pytest.raises(RamerError, match="annotation file not found") as e:
        load(release, m3ed_annotation=elsewhere)
    assert str(elsewhere) in str(e.value)


def test_annotation_elsewhere_and_carat_refused(release, tmp_path: Path) -> None:
    """``m3ed_annotation`` names the file; CARAT's file cannot be read per utterance."""
    moved = tmp_path / "labels.json"
    release["ann"].rename(moved)
    assert len(load(release, m3ed_annotation=moved).splits["valid"]) == 6
    cfg = DataConfig(path=str(release["pkl"]), m3ed_protocol="utterance", m3ed_annotation=str(moved))
    bundle = load_bundle(cfg)  # the config's keys, as `ramer train` reads them
    assert len(bundle.splits["valid"]) == 6 and bundle.info["m3ed"]["annotation"] == str(moved)
    carat = tmp_path / "m3ed_data_60.pt"
    fw.write_m3ed_carat(carat)
    with pytest.raises(RamerError, match="CARAT's M3ED file has no speakers or utterance labels"):
        load_dataset(carat, m3ed_protocol="utterance")


def test_hostile_pickle_refused(tmp_path: Path) -> None:
    """The pickle still goes through the allow-list loader: nothing in it runs."""
    marker = tmp_path / "ran"
    pkl = fw.write_hostile_pickle(tmp_path / "m3ed.pkl", marker, "builtins.exec", wrap="list")
    (tmp_path / "annotation.json").write_text("{}")
    with pytest.raises(RamerError, match="refusing to load 'builtins.exec'"):
        load_dataset(pkl, m3ed_protocol="utterance")
    assert not marker.exists()


# ---------------------------------------------------------------------------------- CLI
def test_cli_info_and_convert(release, tmp_path: Path, capsys) -> None:
    """`ramer data info|convert --set data.m3ed_protocol=utterance`."""
    pkl = str(release["pkl"])
    assert main(["data", "info", pkl, "--json", "--set", "data.m3ed_protocol=utterance"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {s: info["splits"][s]["n"] for s in SPLITS} == {"train": 17, "valid": 6, "test": 10}
    assert info["splits"]["test"]["speaker_targets"] == 10 and info["details"]["m3ed"]["protocol"] == "utterance"
    out = tmp_path / "native"
    args = ["data", "convert", pkl, "--out", str(out), "--set", "data.m3ed_protocol=utterance"]
    assert main(args + ["--set", "data.max_utterances=4"]) == 0
    back = load_native(out)
    direct = load(release, max_utterances=4)
    for split in SPLITS:
        np.testing.assert_array_equal(back.splits[split].labels, direct.splits[split].labels)
        np.testing.assert_array_equal(back.splits[split].target, direct.splits[split].target)
        assert back.splits[split].ids == direct.splits[split].ids
    assert back.info["m3ed"]["protocol"] == "utterance" and back.splits["train"].grid[:, 1].max() == 4


# ---------------------------------------------------------------------------------- the feature pickle, both protocols
def _load_protocol(release: dict, protocol: str):
    return load_dataset(release["pkl"], "m3ed_pickle", m3ed_protocol=protocol)


@pytest.mark.parametrize("protocol", ["dialogue", "utterance"])
def test_dialogue_in_two_splits_refused(release, protocol: str) -> None:
    """trainVid / valVid / testVid are disjoint: a dialogue listed in two of them would be trained
    on and then scored."""
    _rewrite_pickle(release["pkl"], lambda obj: obj[9].append(obj[7][0]))
    with pytest.raises(
        RamerError, match=r"dialogue 'seriestrain_0' is listed in trainVid and testVid; the splits must be disjoint"
    ) as e:
        _load_protocol(release, protocol)
    assert str(release["pkl"]) in str(e.value)


@pytest.mark.parametrize("protocol", ["dialogue", "utterance"])
def test_unhashable_dialogue_id_refused(release, protocol: str) -> None:
    _rewrite_pickle(release["pkl"], lambda obj: obj[8].insert(1, ["x"]))
    with pytest.raises(RamerError, match=r"item 8 \(valVid\) entry 1 is a list, expected a dialogue id") as e:
        _load_protocol(release, protocol)
    assert str(release["pkl"]) in str(e.value)


@pytest.mark.parametrize("protocol", ["dialogue", "utterance"])
def test_empty_first_split_keeps_feature_sizes(release, tmp_path: Path, protocol: str) -> None:
    """An empty trainVid is a legal empty split with the feature sizes of the other splits, and its
    converted folder reads back."""
    _rewrite_pickle(release["pkl"], lambda obj: obj[7].clear())
    bundle = _load_protocol(release, protocol)
    want = {"text": 8, "audio": 5, "visual": 4, "personality": None}  # write_m3ed_pickle's sizes
    assert len(bundle.splits["train"]) == 0 and len(bundle.splits["valid"]) > 0
    assert {split: st.dims for split, st in bundle.splits.items()} == dict.fromkeys(SPLITS, want)
    out = tmp_path / "native"
    cmd = ["data", "convert", str(release["pkl"]), "--out", str(out), "--set", f"data.m3ed_protocol={protocol}"]
    assert main(cmd) == 0
    back = load_native(out)
    assert back.dims == want and len(back.splits["train"]) == 0
    for split in SPLITS:
        np.testing.assert_array_equal(
            back.splits[split].token_features("text"), bundle.splits[split].token_features("text")
        )


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda o: o[3].__setitem__("seriestrain_1", [[1.0, 2.0], [3.0]] + [[0.0, 0.0]] * 10),
            r"split 'train' dialogue 'seriestrain_1': videoText is not a numeric \(utterances, dim\) array",
        ),
        (
            lambda o: o[0].__setitem__("seriesvalid_1", 5),
            r"split 'valid' dialogue 'seriesvalid_1': videoIDs is a int, expected a list with one entry per utterance",
        ),
        (
            lambda o: o[0].__setitem__("seriestest_0", None),
            r"split 'test' dialogue 'seriestest_0': videoIDs is a NoneType, expected a list",
        ),
        (
            lambda o: o[1].__setitem__("seriestrain_2", None),
            r"split 'train' dialogue 'seriestrain_2': videoSpeakers is a NoneType, expected a list",
        ),
        (
            lambda o: o[2].__setitem__("seriestrain_0", [True, True, True]),
            r"split 'train' dialogue 'seriestrain_0': videoLabels holds a non-integer label \(\[True, True, True\]\)",
        ),
        (
            lambda o: o[2].__setitem__("seriesvalid_0", np.ones(5, dtype=bool)),
            r"split 'valid' dialogue 'seriesvalid_0': videoLabels holds a non-integer label",
        ),
    ],
    ids=["ragged_rows", "ids_int", "ids_none", "speakers_none", "labels_bool", "labels_bool_array"],
)
@pytest.mark.parametrize("protocol", ["dialogue", "utterance"])
def test_malformed_dialogue_values(release, protocol: str, edit, message: str) -> None:
    """Malformed values of one dialogue give a one-line error naming the dialogue and the item
    (True is not label 1, Neutral)."""
    _rewrite_pickle(release["pkl"], edit)
    with pytest.raises(RamerError, match=message) as e:
        _load_protocol(release, protocol)
    assert str(release["pkl"]) in str(e.value) and "\n" not in str(e.value)


def test_whole_float_labels_still_read(release) -> None:
    """Labels stored as whole floats (2.0) stay accepted: only bool and fractions are refused."""
    d = "seriestrain_0"
    _rewrite_pickle(release["pkl"], lambda obj: obj[2].__setitem__(d, [float(x) for x in obj[2][d]]))
    st = load_dataset(release["pkl"], "m3ed_pickle").splits["train"]
    want = np.zeros(7, np.uint8)
    want[release["fx"]["labels"][d]] = 1
    np.testing.assert_array_equal(st.labels[0], want)


# ---------------------------------------------------------------------------------- CARAT's file
def test_carat_each_sample_keeps_its_own_rows(tmp_path: Path) -> None:
    """A copy stored without padding: every sample keeps min(len_list, its own stored rows), none
    is cut to sample 0's rows, and only a len_list beyond a sample's own rows is counted."""
    p = tmp_path / "m3ed_data_60.pt"
    fw.write_m3ed_carat(p, steps=6)
    obj = torch.load(p, weights_only=False)  # our own fixture file
    train = obj["train"]
    train["len_list"] = [2, 5, 6, 8]  # sample 3: 8 utterances, 6 rows stored
    for key in ("src-text", "src-visual", "src-audio"):
        train[key][0] = train[key][0][:2]  # sample 0 stored with its 2 rows only
    torch.save(obj, p)
    bundle = load_dataset(p, "m3ed_carat")
    st = bundle.splits["train"]
    assert st.grid[:, 1].tolist() == [2, 5, 6, 6]
    for i, S in enumerate([2, 5, 6, 6]):
        sl = slice(st.token_offsets[i], st.token_offsets[i + 1])
        np.testing.assert_array_equal(st.text[sl], clean(train["src-text"][i][:S]))
        np.testing.assert_array_equal(st.visual[sl], clean(train["src-audio"][i][:S]))  # CARAT's naming swap
        assert st.present[sl].all()
    assert st.extra["len_list_beyond_stored_steps"] == 1
    assert bundle.info["splits"]["valid"]["len_list_beyond_stored_steps"] == 0


def test_carat_modalities_of_one_sample_that_disagree_on_rows_are_refused(tmp_path: Path) -> None:
    """One row per utterance in every modality: a sample whose visual stores 2 rows and text 6 is an
    error naming it, not a cut of every modality to 2 rows."""
    p = tmp_path / "m3ed_data_60.pt"
    fw.write_m3ed_carat(p, steps=6)
    obj = torch.load(p, weights_only=False)  # our own fixture file
    obj["train"]["src-visual"][1] = obj["train"]["src-visual"][1][:2]
    torch.save(obj, p)
    with pytest.raises(RamerError, match=r"split 'train': sample 1 stores different numbers of utterance rows"):
        load_dataset(p, "m3ed_carat")
