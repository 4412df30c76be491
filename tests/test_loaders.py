"""The public-benchmark loaders, read from small files written in the release layouts
(tests/fixtures_writers.py) and compared value by value with what was written."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import fixtures_writers as fw
import numpy as np
import pytest
import torch
from conftest import CLOSES_WHAT_IT_OPENS, pipe_at

from ramer.batch import ROLE_NONE, ROLE_NONSPEAKER, ROLE_SPEAKER
from ramer.cli import main
from ramer.config import DataConfig
from ramer.data.commands import collect_info, convert, run_convert, run_info
from ramer.data.formats import FORMATS, detect_format, load_bundle, load_dataset
from ramer.data.info import dataset_info, format_info_table
from ramer.data.store import SceneStore, load_native
from ramer.errors import RamerError
from ramer.train.recipe import check_splits

SPLITS = ("train", "valid", "test")
ARRAYS = (
    "text",
    "audio",
    "visual",
    "present",
    "token_offsets",
    "grid",
    "labels",
    "target",
    "role",
    "person_offsets",
    "character",
)


def clean(x) -> np.ndarray:
    x = np.asarray(x).astype(np.float32)
    return np.where(np.isfinite(x), x, 0).astype(np.float32)


def nonfinite(x) -> int:
    return int((~np.isfinite(np.asarray(x, dtype=np.float32))).sum())


def tgt_multi_hot(tgt: list[list[int]], n: int) -> np.ndarray:
    out = np.zeros((len(tgt), n), dtype=np.uint8)
    for i, seq in enumerate(tgt):
        for v in seq:
            if v >= 4:
                out[i, v - 4] = 1
    return out


# ---------------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bench")
    out = {"dir": d}
    (d / "mosei").mkdir()
    out["aligned"] = d / "mosei" / "train_valid_test.pt"
    out["aligned_fx"] = fw.write_mosei_aligned(out["aligned"])
    out["unaligned"] = d / "mosei" / "mosei_senti_data_noalign.pkl"
    out["unaligned_fx"] = fw.write_mosei_unaligned(out["unaligned"])
    out["m3ed"] = d / "m3ed.pkl"
    out["m3ed_fx"] = fw.write_m3ed_pickle(out["m3ed"])
    out["carat"] = d / "m3ed_data_60.pt"
    out["carat_fx"] = fw.write_m3ed_carat(out["carat"])
    out["memor"] = d / "memor"
    out["memor_fx"] = fw.write_memor(out["memor"])
    return out


def test_detect_format(files, tmp_path: Path) -> None:
    assert detect_format(files["aligned"]) == "mosei_aligned"
    assert detect_format(files["unaligned"]) == "mosei_unaligned"
    assert detect_format(files["m3ed"]) == "m3ed_pickle"
    assert detect_format(files["carat"]) == "m3ed_carat"
    assert detect_format(files["memor"]) == "memor"
    assert detect_format(None) == "synthetic"
    convert(str(files["carat"]), tmp_path / "native")
    assert detect_format(tmp_path / "native") == "native"
    assert set(FORMATS) == {
        "mosei_aligned",
        "mosei_unaligned",
        "m3ed_pickle",
        "m3ed_carat",
        "memor",
        "native",
        "synthetic",
    }
    (tmp_path / "empty").mkdir()
    with pytest.raises(RamerError, match="unknown dataset folder"):
        detect_format(tmp_path / "empty")
    odd = tmp_path / "odd.pkl"
    odd.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(RamerError, match="odd.pkl: unknown layout"):
        detect_format(odd)
    with pytest.raises(RamerError, match="no such file"):
        detect_format(tmp_path / "nothing.pt")
    with pytest.raises(RamerError, match="holds the 'm3ed_carat' layout"):
        load_dataset(files["carat"], "mosei_aligned")
    with pytest.raises(RamerError, match="unknown data format"):
        load_dataset(files["carat"], "csv")


# ---------------------------------------------------------------------------------------- MOSEI aligned
def check_mosei_aligned(bundle, fx: dict) -> None:
    names = fx["label_names"]
    assert bundle.label_names == tuple(names) and bundle.format == "mosei_aligned"
    totals = {"text": 0, "audio": 0, "visual": 0}
    for split in SPLITS:
        st, want = bundle.splits[split], fx["splits"][split]
        n, L = want["text"].shape[:2]
        for m in ("text", "audio", "visual"):
            assert getattr(st, m).dtype == np.float32
            np.testing.assert_array_equal(getattr(st, m), clean(want[m]).reshape(n * L, -1))
            totals[m] += nonfinite(want[m])
        assert st.present.all() and st.present.shape == (n * L, 3)
        np.testing.assert_array_equal(st.grid, np.tile([1, L], (n, 1)))
        np.testing.assert_array_equal(st.labels, tgt_multi_hot(want["tgt"], len(names)))
        assert (st.target == -1).all() and (st.role == ROLE_NONE).all() and (st.character == -1).all()
        assert st.personality is None
        assert st.ids == [f"{split}/{i}" for i in range(n)]
        assert st.extra["empty_label_samples"] == sum(1 for t in want["tgt"] if len(t) == 2) > 0
    assert bundle.info["nonfinite_replaced"] == totals and totals["audio"] > 0


def test_mosei_aligned(files) -> None:
    check_mosei_aligned(load_dataset(files["aligned"]), files["aligned_fx"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": np.float64},
        {"with_dict": False, "with_settings": False},
        {"label_order": ("sad", "fear", "happy", "disgust", "anger", "surprise")},
        {"tgt_as_array": True},
    ],
)
def test_mosei_aligned_variants(tmp_path: Path, kwargs: dict) -> None:
    p = tmp_path / "train_valid_test.pt"
    fx = fw.write_mosei_aligned(p, **kwargs)
    bundle = load_dataset(p, "mosei_aligned")
    check_mosei_aligned(bundle, fx)
    if "label_order" in kwargs:
        assert bundle.label_names == kwargs["label_order"]
        assert bundle.info["mosei"]["label_names_from"] == "dict['tgt']"
    if kwargs.get("with_dict") is False:
        assert bundle.label_names == fw.MOSEI_DEFAULT and bundle.info["mosei"]["label_names_from"] == "default"


def _resave(path: Path, edit) -> Path:
    obj = torch.load(path, weights_only=False)  # our own fixture file
    edit(obj)
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda o: o.pop("valid"), "missing split 'valid'"),
        (lambda o: o["test"].pop("src-audio"), "split 'test' has no key 'src-audio'"),
        (lambda o: o["train"]["tgt"].pop(), r"split 'train': 'tgt' has 5 entries, features have N = 6"),
        (lambda o: o["valid"].__setitem__("src-visual", o["valid"]["src-visual"][:, :3]), r"disagree on \(N, steps\)"),
        (
            lambda o: o["test"].__setitem__("src-text", np.zeros((4, 4, 7))),
            r"split 'test' key 'src-text' has shape \(4, 4, 7\); feature dim 7",
        ),
        (
            lambda o: setattr(o["settings"], "max_audio_seq_len", 50),
            r"key 'src-audio' has shape \(6, 4, 5\), but settings.max_audio_seq_len = 50",
        ),
        (
            lambda o: o["train"]["tgt"].__setitem__(0, [2, 11, 3]),
            r"split 'train': tgt\[0\] holds id 11; emotion ids must be 4..9",
        ),
        (
            lambda o: o["train"].__setitem__("src-text", o["train"]["src-text"][0]),
            r"key 'src-text' has shape \(4, 6\), expected \(N, steps, dim\)",
        ),
        (lambda o: o["dict"]["tgt"].__setitem__("happy", 12), "dict\\['tgt'\\] emotion ids"),
        (
            lambda o: o["train"].__setitem__("tgt", 5),
            "split 'train': 'tgt' is a int, expected a list of id lists",
        ),
        (
            lambda o: o["train"]["tgt"].__setitem__(0, [2, [4, 5], 3]),
            r"split 'train': tgt\[0\] = \[2, \[4, 5\], 3\] is not a list of integer ids",
        ),
    ],
)
def test_mosei_aligned_malformed(tmp_path: Path, edit, message: str) -> None:
    p = tmp_path / "train_valid_test.pt"
    fw.write_mosei_aligned(p)
    _resave(p, edit)
    with pytest.raises(RamerError, match=message) as e:
        load_dataset(p, "mosei_aligned")
    assert str(p) in str(e.value)


def _empty_split(o: dict, split: str) -> None:
    for key in ("src-text", "src-audio", "src-visual"):
        o[split][key] = o[split][key][:0]
    o[split]["tgt"] = []


def test_mosei_aligned_empty_split(tmp_path: Path, capsys) -> None:
    """A split with no samples loads as an empty split, as in the native format: ``data info``
    reports it, training says it is empty."""
    p = tmp_path / "train_valid_test.pt"
    fw.write_mosei_aligned(p)
    _resave(p, lambda o: _empty_split(o, "train"))
    bundle = load_dataset(p, "mosei_aligned")
    assert len(bundle.splits["train"]) == 0 and len(bundle.splits["valid"]) > 0
    assert bundle.splits["train"].dims == bundle.splits["valid"].dims
    assert main(["data", "info", str(p)]) == 0
    assert "train" in capsys.readouterr().out
    with pytest.raises(RamerError, match="the train split is empty; nothing to train on"):
        check_splits(bundle)


# ---------------------------------------------------------------------------------------- MOSEI unaligned
def _pool_reference(x: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
    n, L, d = x.shape
    real = (x != 0).any(-1)
    xc = clean(x)
    out, pres = np.zeros((n, S, d), np.float32), np.zeros((n, S), bool)
    for i in range(n):
        for j in range(S):
            a, b = j * L // S, (j + 1) * L // S
            rows = [t for t in range(a, b) if real[i, t]]
            if rows:
                out[i, j] = xc[i, rows].sum(0) / len(rows)
                pres[i, j] = True
    return out, pres


@pytest.mark.parametrize("layout", ["pool", "pad"])
def test_mosei_unaligned(files, layout: str) -> None:
    bundle = load_dataset(files["unaligned"], "mosei_unaligned", unaligned_layout=layout)
    fx, labels = files["unaligned_fx"], files["aligned_fx"]
    assert bundle.label_names == fw.MOSEI_DEFAULT
    assert bundle.info["source_files"][1] == str(files["aligned"])  # the sibling aligned file
    keys = {"text": "text", "audio": "audio", "visual": "vision"}
    for split in SPLITS:
        st, raw = bundle.splits[split], fx[split]
        n = len(raw["text"])
        S = 5 if layout == "pool" else 10
        np.testing.assert_array_equal(st.grid, np.tile([1, S], (n, 1)))
        for k, (m, key) in enumerate(keys.items()):
            x = raw[key]
            if layout == "pool":
                want, pres = _pool_reference(x, S)
            else:
                want = np.zeros((n, S, x.shape[2]), np.float32)
                want[:, : x.shape[1]] = clean(x)
                pres = np.zeros((n, S), bool)
                pres[:, : x.shape[1]] = (x != 0).any(-1)
            np.testing.assert_allclose(getattr(st, m), want.reshape(n * S, -1), rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(st.present[:, k], pres.reshape(-1))
        np.testing.assert_array_equal(st.labels, tgt_multi_hot(labels["splits"][split]["tgt"], 6))
        assert st.ids == [f"vid{split}{i}_{i}.0_{i + 1}.5" for i in range(n)]
        assert not st.present[:, 0].all()  # MulT's zero padding rows are absent
    assert bundle.info["nonfinite_replaced"]["audio"] == sum(nonfinite(fx[s]["audio"]) for s in SPLITS)


def _unaligned_copy(files, tmp_path: Path, edit) -> Path:
    """The unaligned fixture edited, beside a copy of its aligned (label) file."""
    shutil.copy(files["aligned"], tmp_path / "train_valid_test.pt")
    p = tmp_path / "mosei_senti_data_noalign.pkl"
    with open(files["unaligned"], "rb") as fh:
        obj = pickle.load(fh)  # our own fixture file
    edit(obj)
    with open(p, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)
    return p


@pytest.mark.parametrize("layout", ["pool", "pad"])
def test_mosei_unaligned_empty_split(files, tmp_path: Path, layout: str) -> None:
    """A split with no samples loads as an empty split, as the aligned file's does."""

    def empty_valid(o):
        o["valid"] = {k: v[:0] for k, v in o["valid"].items()}

    p = _unaligned_copy(files, tmp_path, empty_valid)
    _resave(tmp_path / "train_valid_test.pt", lambda o: o["valid"].__setitem__("tgt", []))
    bundle = load_dataset(p, "mosei_unaligned", unaligned_layout=layout)
    assert len(bundle.splits["valid"]) == 0 and len(bundle.splits["train"]) == 6
    assert bundle.splits["valid"].dims == bundle.splits["train"].dims


def test_mosei_unaligned_ids_counted_or_refused(files, tmp_path: Path, capsys) -> None:
    """A repeated id is renamed (``#`` and its position) and counted; an ``'id'`` array of
    another length than the split is refused, not replaced by positions."""
    p = _unaligned_copy(files, tmp_path, lambda o: o["train"]["id"].__setitem__(1, o["train"]["id"][0]))
    bundle = load_dataset(p, "mosei_unaligned")
    assert bundle.splits["train"].ids[:2] == ["vidtrain0_0.0_1.5", "vidtrain0_0.0_1.5#1"]
    assert bundle.info["splits"]["train"]["duplicate_ids_renamed"] == 1
    assert bundle.info["splits"]["test"]["duplicate_ids_renamed"] == 0
    assert main(["data", "info", str(p)]) == 0
    counted = capsys.readouterr().out.split("what the loader counted (0 left out):")[1].splitlines()
    assert counted[1].split() == ["train", "duplicate_ids_renamed", "1"]  # steps: a setting, not a count
    assert not counted[2].strip()  # valid and test counted nothing
    p = _unaligned_copy(files, tmp_path, lambda o: o["test"].__setitem__("id", o["test"]["id"][:3]))
    with pytest.raises(RamerError, match=f"{p}: split 'test': 'id' has 3 rows for 4 samples"):
        load_dataset(p, "mosei_unaligned")
    p = _unaligned_copy(files, tmp_path, lambda o: [o[s].pop("id") for s in SPLITS])
    bundle = load_dataset(p, "mosei_unaligned")
    assert bundle.splits["test"].ids == [f"test/{i}" for i in range(4)]
    assert bundle.info["splits"]["test"]["ids_from_position"] == 4


def test_mosei_unaligned_labels_file(files, tmp_path: Path) -> None:
    p = tmp_path / "noalign.pkl"
    shutil.copy(files["unaligned"], p)
    with pytest.raises(RamerError, match="train_valid_test.pt, not found"):
        load_dataset(p, "mosei_unaligned")
    bundle = load_dataset(p, aligned_path=files["aligned"])  # explicit path, auto-detected format
    assert bundle.format == "mosei_unaligned" and len(bundle.splits["test"]) == 4
    wrong = tmp_path / "aligned_other.pt"
    fw.write_mosei_aligned(wrong, sizes=(6, 2, 4))
    with pytest.raises(
        RamerError, match=r"split 'valid' has 3 samples but the aligned file .*aligned_other.pt has 2 'tgt'"
    ):
        load_dataset(p, "mosei_unaligned", aligned_path=wrong)
    with pytest.raises(RamerError, match="unaligned_layout='zoom': Input should be 'pool' or 'pad'"):
        load_dataset(p, "mosei_unaligned", aligned_path=files["aligned"], unaligned_layout="zoom")
    with pytest.raises(RamerError, match="layout 'zoom' unknown"):  # a config not checked
        load_dataset(
            p, "mosei_unaligned", DataConfig.model_construct(unaligned_layout="zoom"), aligned_path=files["aligned"]
        )


# ---------------------------------------------------------------------------------------- M3ED pickle
@pytest.mark.parametrize("max_utt", [60, 4])
def test_m3ed_pickle(files, max_utt: int) -> None:
    fx = files["m3ed_fx"]
    bundle = load_dataset(files["m3ed"], data_cfg=DataConfig(max_utterances=max_utt))
    assert bundle.format == "m3ed_pickle" and bundle.label_names == fw.M3ED_NAMES
    beyond = 0
    for split in SPLITS:
        st = bundle.splits[split]
        vids = fx["splits"][split]
        assert st.ids == vids
        for i, d in enumerate(vids):
            n = len(fx["ids"][d])
            S = min(n, max_utt)
            assert tuple(st.grid[i]) == (2, S)
            off = st.token_offsets[i]
            want = {m: np.zeros((2 * S, fx[m][d].shape[1]), np.float32) for m in ("text", "audio", "visual")}
            pres = np.zeros(2 * S, bool)
            for s in range(S):
                row = (0 if fx["speakers"][d][s] == "A" else 1) * S + s
                for m in want:
                    want[m][row] = clean(fx[m][d][s])
                pres[row] = True
            for k, m in enumerate(want):
                np.testing.assert_array_equal(getattr(st, m)[off : off + 2 * S], want[m])
                np.testing.assert_array_equal(st.present[off : off + 2 * S, k], pres)
            labels = np.zeros(7, np.uint8)
            labels[fx["labels"][d]] = 1  # the union over ALL utterances, also beyond the cut
            np.testing.assert_array_equal(st.labels[i], labels)
            beyond += len(set(fx["labels"][d][S:]) - set(fx["labels"][d][:S]))
        assert (st.target == -1).all() and (st.role == ROLE_NONE).all()
    assert bundle.info["nonfinite_replaced"] == {"text": 0, "audio": 7, "visual": 0}  # one -inf per dialogue
    counted = sum(bundle.info["splits"][s]["labels_only_beyond_cut"] for s in SPLITS)
    assert counted == beyond and (beyond >= 2 if max_utt == 4 else beyond == 0)
    assert bundle.info["splits"]["train"]["dialogues_truncated"] == (1 if max_utt == 4 else 0)


def _rewrite_pickle(path: Path, edit) -> Path:
    with open(path, "rb") as fh:
        obj = pickle.load(fh)  # our own fixture file
    edit(obj)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda o: o.pop(), "expected a list of 10 items"),
        (lambda o: o[3].pop("seriestrain_1"), "dialogue 'seriestrain_1' .* is missing from videoText"),
        (
            lambda o: o[4].__setitem__("seriesvalid_0", np.zeros((4, 5))),
            r"dialogue 'seriesvalid_0': videoAudio has shape \(4, 5\), expected \(5, dim\)",
        ),
        (
            lambda o: o[5].__setitem__("seriestest_0", np.zeros((4, 9))),
            r"videoVisual has shape \(4, 9\); feature dim 9 differs from 4",
        ),
        (lambda o: o[1]["seriestrain_0"].__setitem__(0, "C"), "videoSpeakers holds 'C'"),
        (lambda o: o[2]["seriestrain_0"].__setitem__(0, 7), "videoLabels holds 7"),
        (lambda o: o[2]["seriestrain_0"].__setitem__(0, 1.5), r"videoLabels holds a non-integer label \(\[1.5"),
        (lambda o: o[2]["seriestrain_0"].pop(), r"3 utterance ids, 3 speakers \(videoSpeakers\), 2 labels"),
        (
            lambda o: o[7].append("seriestrain_0"),
            r"m3ed.pkl: dialogue 'seriestrain_0' is listed twice in trainVid \(entries 0 and 3\)$",
        ),
    ],
)
def test_m3ed_pickle_malformed(tmp_path: Path, edit, message: str) -> None:
    p = tmp_path / "m3ed.pkl"
    fw.write_m3ed_pickle(p)
    _rewrite_pickle(p, edit)
    with pytest.raises(RamerError, match=message) as e:
        load_dataset(p, "m3ed_pickle")
    assert str(p) in str(e.value)


@pytest.mark.parametrize("protocol, max_utt", [("dialogue", 60), ("dialogue", 4), ("utterance", 4)])
def test_m3ed_pickle_counts_non_finite_values_beyond_the_cut(tmp_path: Path, protocol: str, max_utt: int) -> None:
    """A NaN in utterance 7 of the 9-utterance train dialogue is counted whatever the cut: each
    value of the file once (besides the fixture's -inf in each dialogue's first audio row)."""
    p = tmp_path / "m3ed.pkl"
    fx = fw.write_m3ed_pickle(p)
    fw.write_m3ed_annotation(tmp_path / "annotation.json", fx)
    _rewrite_pickle(p, lambda o: o[3]["seriestrain_1"].__setitem__((6, 0), np.nan))
    bundle = load_dataset(p, data_cfg=DataConfig(max_utterances=max_utt), m3ed_protocol=protocol)
    assert bundle.info["nonfinite_replaced"] == {"text": 1, "audio": 7, "visual": 0}
    assert bundle.info["splits"]["train"]["nonfinite_replaced"]["text"] == 1


@pytest.mark.parametrize("protocol", ["dialogue", "utterance"])
def test_m3ed_pickle_counts_dialogues_in_no_split(tmp_path: Path, protocol: str) -> None:
    """A dialogue of videoIDs listed in none of trainVid / valVid / testVid is read by no split:
    counted (``dialogues_in_no_split``), shown on the ``m3ed:`` line of ``ramer data info``."""
    p = tmp_path / "m3ed.pkl"
    fx = fw.write_m3ed_pickle(p)
    fw.write_m3ed_annotation(tmp_path / "annotation.json", fx)
    assert load_dataset(p, m3ed_protocol=protocol).info["m3ed"]["dialogues_in_no_split"] == 0
    _rewrite_pickle(p, lambda o: o[7].remove("seriestrain_1"))
    bundle = load_dataset(p, m3ed_protocol=protocol)
    assert bundle.info["m3ed"]["dialogues_in_no_split"] == 1
    assert not any(sid.startswith("seriestrain_1") for s in SPLITS for sid in bundle.splits[s].ids)
    table = format_info_table(collect_info(str(p), sets=[f"data.m3ed_protocol={protocol}"]))
    assert re.search(r"\nm3ed: .*dialogues_in_no_split=1", table)


# ---------------------------------------------------------------------------------------- M3ED CARAT
def test_m3ed_carat(files) -> None:
    fx = files["carat_fx"]
    bundle = load_dataset(files["carat"])
    assert bundle.format == "m3ed_carat" and bundle.label_names == fw.M3ED_NAMES
    assert bundle.info["m3ed"]["audio_visual_swapped"] is True
    assert bundle.dims == {"text": 16, "audio": 24, "visual": 342, "personality": None}
    for split in SPLITS:
        st, part = bundle.splits[split], fx["splits"][split]
        for i, L in enumerate(part["len_list"]):
            assert tuple(st.grid[i]) == (1, L)
            sl = slice(st.token_offsets[i], st.token_offsets[i + 1])
            np.testing.assert_array_equal(st.text[sl], clean(part["src-text"][i][:L]))
            np.testing.assert_array_equal(st.audio[sl], clean(part["src-visual"][i][:L]))  # CARAT's naming swap
            np.testing.assert_array_equal(st.visual[sl], clean(part["src-audio"][i][:L]))
            assert st.present[sl].all()
        np.testing.assert_array_equal(st.labels, tgt_multi_hot(part["tgt"], 7))
    assert bundle.info["nonfinite_replaced"] == {"text": 0, "audio": 9, "visual": 0}


def test_m3ed_carat_counts_non_finite_values_beyond_len_list(tmp_path: Path) -> None:
    """An inf in a stored row beyond a sample's len_list (CARAT's padding, not in the sample) is
    counted: each value of the file once, as in the pickle beyond max_utterances."""
    p = tmp_path / "m3ed_data_60.pt"
    fx = fw.write_m3ed_carat(p)
    i = next(i for i, L in enumerate(fx["splits"]["test"]["len_list"]) if L < 6)
    _resave(p, lambda o: o["test"]["src-text"][i].__setitem__((5, 0), np.inf))
    bundle = load_dataset(p)
    assert bundle.info["nonfinite_replaced"] == {"text": 1, "audio": 9, "visual": 0}
    assert bundle.info["splits"]["test"]["nonfinite_replaced"]["text"] == 1
    assert tuple(bundle.splits["test"].grid[i]) == (1, fx["splits"]["test"]["len_list"][i])  # the row stays out


def test_m3ed_carat_empty_split(tmp_path: Path) -> None:
    """An empty valid or test split loads as one, with the train split's feature sizes, as the
    other loaders' do; the train split gives the sizes, so an empty one is an error."""
    p = tmp_path / "m3ed_data_60.pt"
    fw.write_m3ed_carat(p, sizes=(4, 0, 0))
    bundle = load_dataset(p)
    assert [len(bundle.splits[s]) for s in SPLITS] == [4, 0, 0]
    assert bundle.splits["valid"].dims == bundle.splits["test"].dims == bundle.splits["train"].dims
    fw.write_m3ed_carat(p, sizes=(0, 2, 3))
    with pytest.raises(RamerError, match="split 'train' key 'src-visual' is empty"):
        load_dataset(p)


def test_m3ed_carat_malformed(tmp_path: Path) -> None:
    p = tmp_path / "m3ed_data_60.pt"
    fw.write_m3ed_carat(p)
    _resave(p, lambda o: o["valid"]["len_list"].append(3))
    with pytest.raises(RamerError, match=r"split 'valid': sample counts disagree: .*len_list 3"):
        load_dataset(p)
    fw.write_m3ed_carat(p)
    _resave(p, lambda o: o["test"].pop("len_list"))
    with pytest.raises(RamerError, match="split 'test' has no key 'len_list'"):
        load_dataset(p, "m3ed_carat")
    for bad in (float("nan"), 2.5, float("inf")):  # counts are whole numbers: none cast or clamped silently
        fw.write_m3ed_carat(p)
        _resave(p, lambda o: o["train"].__setitem__("len_list", [bad] + o["train"]["len_list"][1:]))
        with pytest.raises(RamerError, match="split 'train': 'len_list' must hold whole utterance counts >= 0"):
            load_dataset(p, "m3ed_carat")


# ---------------------------------------------------------------------------------------- MEmoR
def memor_reference(fx: dict, labels: str, order=fw.MEMOR_CHARS, convention: str = "seg_ori_ind") -> dict:
    """What the baseline builds for each annotation item (straightforward loops)."""
    names = ("neutral", "joy", "anger", "disgust", "sadness", "surprise", "fear", "anticipation", "trust")
    if labels == "fine_grained":
        names += ("serenity", "interest", "annoyance", "boredom", "distraction")
    anno = fx["anno"][labels]
    pers = fx["personality"] / np.maximum(np.sqrt((fx["personality"] ** 2).sum(0)), 1e-12)
    out = {}
    for idx, a in enumerate(anno):
        c = fx["data"][a["clip"]]
        S = len(c["seg_start"])
        persons = sorted(set(c["on_character"]) | {a["character"]})
        P = len(persons)
        vis = fx["visual"].get(a["clip"])
        d_f, d_o, d_e = (
            (vis["face"].shape[1], vis["object"].shape[1], vis["environment"].shape[1]) if vis else (5, 4, 3)
        )
        t = np.zeros((P * S, 6), np.float32)
        au = np.zeros((P * S, 9), np.float32)
        v = np.zeros((P * S, d_f + d_o + d_e), np.float32)
        pres = np.zeros((P * S, 3), bool)
        for p, who in enumerate(persons):
            for s in range(S):
                row = p * S + s
                if c["speakers"][s] == who:
                    tk = f"{a['clip']}+{c['seg_ori_ind'][s]}" if convention == "seg_ori_ind" else f"{a['clip']}+{s}"
                    if tk in fx["text"]:
                        t[row], pres[row, 0] = clean(fx["text"][tk]), True
                    ak = f"{a['clip']}+{c['seg_ori_ind'][s]}"
                    if ak in fx["audio"]:
                        au[row], pres[row, 1] = clean(fx["audio"][ak]), True
                if vis is None or len(vis["crops"]) <= 10:
                    continue
                b = int((c["seg_start"][s] - c["start"]) * fw.FPS)
                e = int((c["seg_end"][s] - c["start"]) * fw.FPS)
                sel = [
                    j
                    for j, (f, name) in enumerate(vis["crops"])
                    if b <= f <= e
                    and order.index("others" if name.lower().startswith("others") else name.lower()) == who
                ]
                if len(sel) > 10:
                    v[row] = np.concatenate(
                        [vis["face"][sel].mean(0), vis["object"][b:e].mean(0), vis["environment"][b:e].mean(0)]
                    )
                    pres[row, 2] = True
        moment = a["moment"]
        inside = [s for s in range(S) if c["seg_start"][s] <= moment < c["seg_end"][s]]
        s_t = (
            inside[0]
            if inside
            else int(
                np.argmin([max(c["seg_start"][s] - moment, 0) + max(moment - c["seg_end"][s], 0) for s in range(S)])
            )
        )
        lab = np.zeros(len(names), np.uint8)
        for b2 in anno:
            if (b2["clip"], b2["character"], b2["moment"]) == (a["clip"], a["character"], moment):
                lab[names.index(b2["emotion"])] = 1
        out[idx] = {
            "grid": (P, S),
            "text": t,
            "audio": au,
            "visual": v,
            "present": pres,
            "target": (persons.index(a["character"]), s_t),
            "role": ROLE_SPEAKER if c["speakers"][s_t] == a["character"] else ROLE_NONSPEAKER,
            "labels": lab,
            "character": persons,
            "personality": pers[persons].astype(np.float32),
            "id": f"{idx}:{a['clip']}:{a['character']}",
        }
    return out


def check_memor(bundle, fx: dict, labels: str, order=fw.MEMOR_CHARS, convention: str = "seg_ori_ind") -> None:
    ref = memor_reference(fx, labels, order, convention)
    seen = []
    for split in SPLITS:
        st = bundle.splits[split]
        for i, sid in enumerate(st.ids):
            idx = int(sid.split(":")[0])
            seen.append(idx)
            r = ref[idx]
            assert sid == r["id"] and tuple(st.grid[i]) == r["grid"]
            sl = slice(st.token_offsets[i], st.token_offsets[i + 1])
            for m in ("text", "audio", "visual"):
                np.testing.assert_allclose(getattr(st, m)[sl], r[m], rtol=1e-5, atol=1e-6, err_msg=f"{sid} {m}")
            np.testing.assert_array_equal(st.present[sl], r["present"], err_msg=sid)
            assert tuple(st.target[i]) == r["target"] and st.role[i] == r["role"], sid
            np.testing.assert_array_equal(st.labels[i], r["labels"])
            psl = slice(st.person_offsets[i], st.person_offsets[i + 1])
            assert st.character[psl].tolist() == r["character"]
            np.testing.assert_allclose(st.personality[psl], r["personality"], rtol=1e-6)
            assert st.personality_present[psl].all()
    assert sorted(seen) == list(range(10))  # nothing dropped or duplicated


@pytest.mark.parametrize("labels", ["primary", "fine_grained"])
def test_memor(files, labels: str) -> None:
    fx = files["memor_fx"]
    bundle = load_dataset(files["memor"], data_cfg=DataConfig(labels=labels))
    assert bundle.format == "memor" and len(bundle.label_names) == (9 if labels == "primary" else 14)
    check_memor(bundle, fx, labels)
    info = bundle.info["memor"]
    assert info["text_key_convention"] == "seg_ori_ind"
    assert info["visual_clips_with_10_or_fewer_faces"] == 1 and info["visual_clips_without_face_names"] == 1
    # official test ids in file order; validation = a seeded 10 % of train, the rest train in order
    assert [s.split(":")[0] for s in bundle.splits["test"].ids] == ["7", "8", "9"]
    tr = [int(s.split(":")[0]) for s in bundle.splits["train"].ids]
    va = [int(s.split(":")[0]) for s in bundle.splits["valid"].ids]
    assert len(va) == 1 and sorted(tr + va) == list(range(7)) and tr == sorted(tr)
    assert va == [int(np.random.default_rng(2020).permutation(7)[0])]
    # the union labels of items 1 and 2 (same clip, character, moment)
    if labels == "primary":
        st = bundle.splits["train"] if "1:c1:4" in bundle.splits["train"].ids else bundle.splits["valid"]
        row = st.labels[st.ids.index("1:c1:4")]
        assert [bundle.label_names[j] for j in np.flatnonzero(row)] == ["anger", "surprise"]
    # specific branches of the fixture
    everything = {sid: (split, i) for split in SPLITS for i, sid in enumerate(bundle.splits[split].ids)}
    split, i = everything["1:c1:4"]
    st = bundle.splits[split]
    off, S = st.token_offsets[i], 3
    assert (
        not st.present[off + 0 * S + 1, :2].any() and st.present[off + 1 * S + 1, 2]
    )  # visual-only segment, Penny seen
    assert st.role[i] == ROLE_NONSPEAKER
    split, i = everything["3:c1:7"]
    st = bundle.splits[split]
    off = st.token_offsets[i]
    assert st.present[off + 2 * 3 + 2, 2]  # OthersWomen faces count as "others"
    assert st.present[off + 1 * 3 + 2, 0] and not st.present[off + 1 * 3 + 2, 1]  # Penny's s2: text, no audio key
    split, i = everything["6:c3:6"]
    assert tuple(bundle.splits[split].target[i]) == (1, 1) and bundle.splits[split].role[i] == ROLE_SPEAKER
    assert sum(bundle.info["splits"][s].get("target_outside_segments", 0) for s in SPLITS) == 1
    # the fixture's one -inf (audio key c2+0), counted once though clip c2 serves two splits
    assert bundle.info["nonfinite_replaced"] == {"text": 0, "audio": 1, "visual": 0}


def test_memor_visual_nan_and_inf_are_replaced_before_the_means(tmp_path: Path) -> None:
    """A NaN in one face crop and an inf in one object frame are two zeros among the values a
    segment's mean reads, not a whole mean set to 0, and the count is of the values in the files."""
    root = tmp_path / "memor"
    fx = fw.write_memor(root)
    vis = root / "features" / "visual_features"
    for kind, row in (("face", 0), ("object", 5)):
        values = torch.load(vis / f"{kind}_features" / "c1.pt", weights_only=True)
        values[row, 0] = float("nan") if kind == "face" else float("inf")
        torch.save(values, vis / f"{kind}_features" / "c1.pt")
        fx["visual"]["c1"][kind][row, 0] = 0.0  # what the reference reads: the value replaced
    bundle = load_dataset(root, "memor")
    check_memor(bundle, fx, "primary")
    assert bundle.info["nonfinite_replaced"] == {"text": 0, "audio": 1, "visual": 2}
    # a float64 file's value beyond float32's range is replaced as an inf is (the mean would overflow)
    face = torch.load(vis / "face_features" / "c1.pt", weights_only=True).double()
    face[1, 0] = 1e300
    torch.save(face, vis / "face_features" / "c1.pt")
    fx["visual"]["c1"]["face"][1, 0] = 0.0
    bundle = load_dataset(root, "memor")
    check_memor(bundle, fx, "primary")
    assert bundle.info["nonfinite_replaced"] == {"text": 0, "audio": 1, "visual": 3}


def test_memor_object_or_environment_file_shorter_than_the_segments_is_counted(tmp_path: Path) -> None:
    """Clip c1's segments need frames up to 143; its present visual tokens are Sheldon's in s0,
    Penny's in s1 and others' in s2 ([95, 143)). An object file of 100 rows gives s2's object part
    the mean of rows 95..99; an environment file of 90 rows gives s1 the mean of 47..89 and s2
    zeros: the tokens stay present (one visual flag per token), and each table is counted."""
    root = tmp_path / "memor"
    fx = fw.write_memor(root)
    vis = root / "features" / "visual_features"
    fx["visual"]["c1"]["object"] = fx["visual"]["c1"]["object"][:100]
    torch.save(torch.from_numpy(fx["visual"]["c1"]["object"]), vis / "object_features" / "c1.pt")
    bundle = load_dataset(root, "memor")
    check_memor(bundle, fx, "primary")  # the reference's means of the rows there
    info = bundle.info["memor"]
    assert info["visual_clips_with_too_few_object_frames"] == 1
    assert "visual_clips_with_too_few_environment_frames" not in info
    env = fx["visual"]["c1"]["environment"][:90]
    torch.save(torch.from_numpy(env), vis / "environment_features" / "c1.pt")
    bundle = load_dataset(root, "memor")
    info = bundle.info["memor"]
    assert info["visual_clips_with_too_few_object_frames"] == info["visual_clips_with_too_few_environment_frames"] == 1
    assert "visual_clips_with_a_segment_without_frames" not in info  # s2 still has object rows
    st = next(bundle.splits[s] for s in SPLITS if "3:c1:7" in bundle.splits[s].ids)
    i = st.ids.index("3:c1:7")  # persons Sheldon, Penny, others
    row = st.token_offsets[i] + 2 * 3 + 2  # others, s2
    assert st.present[row, 2] and not st.visual[row, -3:].any()
    np.testing.assert_allclose(st.visual[row - 3 - 1, -3:], env[47:90].mean(0), rtol=1e-5)  # Penny, s1
    np.testing.assert_allclose(st.visual[row, 5:9], fx["visual"]["c1"]["object"][95:100].mean(0), rtol=1e-5)
    assert collect_info(str(root))["details"]["memor"]["visual_clips_with_too_few_environment_frames"] == 1


def test_memor_a_feature_size_differing_between_clips_names_both_files(tmp_path: Path) -> None:
    """Clips c1 and c2 (given 12 face crops) both have visual; c1's object file, read first, is
    the odd one (7 columns, c2's 4): the error names both files and both shapes, not c2 alone."""
    root = tmp_path / "memor"
    fw.write_memor(root)
    vis = root / "features" / "visual_features"
    (vis / "face_names" / "c2.txt").write_text("\t".join(f"{f}_Leonard.jpg" for f in range(12)) + "\n")
    torch.save(torch.zeros(12, 5), vis / "face_features" / "c2.pt")
    load_dataset(root, "memor")  # the same sizes in both clips
    torch.save(torch.zeros(145, 7), vis / "object_features" / "c1.pt")
    with pytest.raises(RamerError) as e:
        load_dataset(root, "memor")
    assert str(e.value) == (
        f"{vis / 'object_features' / 'c2.pt'}: shape (73, 4), but {vis / 'object_features' / 'c1.pt'} (the first "
        "clip read) has shape (145, 7); a feature size must be the same in every clip"
    )


@pytest.mark.parametrize("protocol", ["target", "clip"])
def test_memor_speech_by_a_speaker_who_is_no_person_is_counted(files, protocol: str) -> None:
    """Clip c3: Rajesh (3) is on screen and speaks s0, Amy (6) speaks s1 (keys c3+1 in both
    files). Test item 8 targets Rajesh, so its persons are [3]: Amy's speech is in no token of
    it, counted once; train item 6 targets Amy, who is then a person (nothing counted)."""
    bundle = load_dataset(files["memor"], memor_protocol=protocol)
    st = bundle.splits["test"]
    i = st.ids.index("8:c3:3" if protocol == "target" else "c3")
    assert st.character[st.person_offsets[i] : st.person_offsets[i + 1]].tolist() == [3]
    assert not st.present[st.token_offsets[i] : st.token_offsets[i + 1], :2].any(axis=1)[1]  # s1: no text/audio
    assert {s: bundle.info["splits"][s]["speech_by_non_person"] for s in SPLITS} == {"train": 0, "valid": 0, "test": 1}
    assert "speech_by_non_person 1" in format_info_table(
        collect_info(str(files["memor"]), sets=[f"data.memor_protocol={protocol}"])
    )


def test_memor_text_key_convention(tmp_path: Path) -> None:
    root = tmp_path / "memor"
    fx = fw.write_memor(root, text_convention="segment_index")
    bundle = load_dataset(root, "memor")
    assert bundle.info["memor"]["text_key_convention"] == "segment_index"
    assert bundle.info["memor"]["text_keys_matched"] == {"seg_ori_ind": 5, "segment_index": 6}
    check_memor(bundle, fx, "primary", convention="segment_index")


def test_memor_character_order(tmp_path: Path) -> None:
    root = tmp_path / "memor"
    fx = fw.write_memor(root)
    order = ("leonard", "sheldon", "howard", "rajesh", "penny", "bernadette", "amy", "others")
    bundle = load_dataset(root, memor_character_order=order)
    assert bundle.info["memor"]["character_order"] == list(order)
    check_memor(bundle, fx, "primary", order=order)
    with pytest.raises(RamerError, match="expected 8 distinct names"):
        load_dataset(root, memor_character_order=("a", "b"))


def test_memor_validation_fraction_and_seed(files) -> None:
    """Keyword options are checked as --set data.KEY is (valid_fraction 0 aside: no valid split),
    before the loader reads them: a negative seed was numpy's bare ValueError."""
    for bad, message in (
        (dict(valid_seed=-1), "valid_seed=-1: Input should be greater than or equal to 0"),
        (dict(valid_fraction=1.0), "valid_fraction=1.0: Input should be less than 1"),
    ):
        with pytest.raises(RamerError, match=message):
            load_dataset(files["memor"], **bad)
    a = load_dataset(files["memor"], valid_fraction=0.3, valid_seed=1)
    b = load_dataset(files["memor"], valid_fraction=0.3, valid_seed=1)
    assert a.splits["valid"].ids == b.splits["valid"].ids and len(a.splits["valid"]) == 2
    assert len(load_dataset(files["memor"], valid_fraction=0.0).splits["valid"]) == 0


def test_load_dataset_refuses_a_keyword_option_the_data_does_not_read(files, tmp_path) -> None:
    """A keyword option the format's loader does not read was dropped without a word (the clip
    protocol asked of a converted MEmoR folder gave the target protocol's samples), while --set
    data.KEY of the same option is refused: refused alike, naming the keyword and the readers."""
    native = tmp_path / "native"
    convert(str(files["memor"]), native)
    for path, option, said in (
        (native, dict(memor_protocol="clip"), "is a native folder, which reads no loader option"),
        (
            files["m3ed"],
            dict(valid_fraction=0.5),
            "holds m3ed_pickle data, whose loader would ignore it; it applies to memor",
        ),
        (files["m3ed"], dict(unaligned_layout="pool"), "it applies to mosei_unaligned data"),
        (files["memor"], dict(aligned_path=files["aligned"]), "holds memor data, whose loader would ignore it"),
        (files["aligned"], dict(m3ed_protocol="dialogue"), "it applies to m3ed_pickle and m3ed_carat data"),
        (None, dict(valid_seed=2), "the embedded benchmark holds synthetic data"),
    ):
        key, value = next(iter(option.items()))
        with pytest.raises(RamerError, match=f"^{re.escape(f'{key}={value!r}: ')}") as e:
            load_dataset(path, **option)
        assert said in str(e.value), e.value
    clip = load_dataset(files["memor"], memor_protocol="clip")  # an option the loader reads is taken
    assert len(clip.splits["train"]) != len(load_dataset(files["memor"]).splits["train"])
    assert load_dataset(files["carat"], m3ed_protocol="dialogue").splits["test"].label_names


DEEP_JSON = "[" * 100_000 + "]" * 100_000


def _as_folder(p: Path) -> None:
    p.unlink()
    p.mkdir()


def _memor_edit(root: Path, name: str, edit) -> None:
    p = root / name
    obj = json.loads(p.read_text())
    edit(obj)
    p.write_text(json.dumps(obj))


@CLOSES_WHAT_IT_OPENS
@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda r: _memor_edit(r, "anno.json", lambda o: o["primary"][0].__setitem__("emotion", "glee")),
            r"anno.json: 'primary'\[0\]: emotion 'glee' is not one of the 9 primary classes",
        ),
        (lambda r: _memor_edit(r, "anno.json", lambda o: o.pop("primary")), "anno.json: has no key 'primary'"),
        (
            lambda r: (r / "test_id.txt").write_text("7\n12\n"),
            r"test_id.txt: line 2: index 12 is outside the anno.json list \(0..9\)",
        ),
        (lambda r: (r / "train_id.txt").write_text("1\nx\n"), "train_id.txt: line 2 is 'x'"),
        (lambda r: _memor_edit(r, "data.json", lambda o: o.pop("c2")), "data.json: clip 'c2' .* is missing"),
        (  # a clip name is part of its feature files' paths: read outside the release otherwise
            lambda r: [
                _memor_edit(r, "anno.json", lambda o: [a.__setitem__("clip", "../../x/c1") for a in o["primary"]]),
                _memor_edit(r, "data.json", lambda o: o.__setitem__("../../x/c1", o.pop("c1"))),
            ],
            r"data.json: clip name '../../x/c1' \(from anno.json\) is not a plain file name",
        ),
        (  # on Windows a path on another drive
            lambda r: [
                _memor_edit(r, "anno.json", lambda o: [a.__setitem__("clip", "D:c1") for a in o["primary"]]),
                _memor_edit(r, "data.json", lambda o: o.__setitem__("D:c1", o.pop("c1"))),
            ],
            r"data.json: clip name 'D:c1' \(from anno.json\) is not a plain file name",
        ),
        (
            lambda r: _memor_edit(r, "data.json", lambda o: o["c1"]["seg_end"].pop()),
            r"clip 'c1': segment lists have lengths",
        ),
        (
            lambda r: (r / "features" / "character_features.csv").write_text("1,2\n3,4\n"),
            "character_features.csv: 2 rows",
        ),
        (
            lambda r: torch.save(torch.zeros(3, 5), r / "features/visual_features/face_features/c1.pt"),
            r"face_features/c1.pt: shape \(3, 5\) but .*c1.txt names 40 faces",
        ),
        (
            lambda r: _memor_edit(r, "features/text_features.json", lambda o: o.__setitem__("c2+0", [1.0, 2.0])),
            "text_features.json: key 'c2\\+0' has 2 numbers, expected 6",
        ),
        (
            lambda r: (r / "features" / "audio_features.json").write_text('{"c1+0": [1, "a"]}'),
            "audio_features.json: key 'c1\\+0' does not hold a list of numbers",
        ),
        (lambda r: shutil.rmtree(r / "features" / "visual_features"), "visual_features: folder not found"),
        (lambda r: (r / "anno.json").write_text(DEEP_JSON), "anno.json: not valid JSON \\(nested too deeply\\)"),
        (lambda r: (r / "data.json").write_text(DEEP_JSON), "data.json: not valid JSON \\(nested too deeply\\)"),
        (
            lambda r: (r / "features" / "text_features.json").write_text(DEEP_JSON),
            "text_features.json: not valid JSON \\(nested too deeply\\)",
        ),
        (lambda r: (r / "train_id.txt").write_bytes(b"0\n\xff\n"), "train_id.txt: not UTF-8 text"),
        (
            lambda r: (r / "features" / "character_features.csv").write_bytes(b"\xff1,2\n"),
            "character_features.csv: not UTF-8 text",
        ),
        (
            lambda r: (r / "features/visual_features/face_names/c1.txt").write_bytes(b"\xffa\tb\n"),
            "c1.txt: not UTF-8 text",
        ),
        (lambda r: _as_folder(r / "train_id.txt"), "train_id.txt: is a folder, expected a file"),
        (lambda r: _as_folder(r / "features" / "character_features.csv"), "character_features.csv: is a folder"),
        (lambda r: _as_folder(r / "features/visual_features/face_names/c1.txt"), "c1.txt: is a folder"),
        (
            lambda r: _memor_edit(r, "data.json", lambda o: o["c1"].__setitem__("seg_start", [float("nan")] * 3)),
            "data.json: clip 'c1': seg_start / seg_end / start hold a non-finite value",
        ),
    ],
)
def test_memor_malformed(tmp_path: Path, edit, message: str) -> None:
    root = tmp_path / "memor"
    fw.write_memor(root)
    edit(root)
    with pytest.raises(RamerError, match=message):
        load_dataset(root, "memor")


def test_memor_json_fallback_parser(tmp_path: Path) -> None:
    """Feature files that are valid JSON but not in the compact layout are parsed whole."""
    root = tmp_path / "memor"
    fx = fw.write_memor(root)
    p = root / "features" / "text_features.json"
    p.write_text(json.dumps({"_meta": {"x": [1]}, **json.loads(p.read_text())}))
    check_memor(load_dataset(root), fx, "primary")


@pytest.mark.parametrize("name", ["talk.csv", "talk.tsv", "talk.jsonl", "talk.json"])
def test_conversation_table_is_not_a_dataset(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    sep = {".csv": ",", ".tsv": "\t"}.get(p.suffix)
    row = sep.join(["conversation", "index", "speaker", "text"]) + "\n" if sep else ""
    p.write_text(row + ("c1,0,a,hi\n" if sep else '{"conversation": "c1", "index": 0, "speaker": "a", "text": "hi"}\n'))
    for fmt in ("auto", "m3ed_pickle"):
        with pytest.raises(RamerError) as e:
            load_dataset(p, fmt)
        assert str(e.value) == (
            f"{p}: not a dataset; for a conversation table (.csv, .tsv, .jsonl) run `ramer data import` first"
        )
    with pytest.raises(RamerError, match="run `ramer data import` first"):
        detect_format(p)


def test_a_pipe_or_a_device_is_not_read(tmp_path: Path) -> None:
    """A named pipe would block the reader forever, /dev/zero never ends: both are refused unread
    (the pipe's writer closes it once it is opened: without the check, a wrong message, not a hang)."""
    with pipe_at(tmp_path / "fifo") as pipe:
        with pytest.raises(RamerError, match="not a file or a folder"):
            load_dataset(pipe)
    with pytest.raises(RamerError, match="not a file or a folder"):
        load_dataset(Path("/dev/zero"))


# ---------------------------------------------------------------------------------------- hostile files
def test_hostile_files_refused_by_every_entry_point(files, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cases = []
    p = fw.write_hostile_torch(tmp_path / "train_valid_test.pt", marker)
    cases += [(p, "mosei_aligned", {}), (p, "m3ed_carat", {}), (p, "auto", {})]
    p = fw.write_hostile_pickle(tmp_path / "noalign.pkl", marker, "builtins.open")
    cases += [(p, "mosei_unaligned", {"aligned_path": files["aligned"]}), (p, "auto", {})]
    # a valid unaligned pickle whose aligned (label) file is hostile
    cases += [
        (
            files["unaligned"],
            "mosei_unaligned",
            {"aligned_path": fw.write_hostile_torch(tmp_path / "evil_aligned.pt", marker, "builtins.eval")},
        )
    ]
    p = fw.write_hostile_pickle(tmp_path / "m3ed.pkl", marker, "builtins.exec", wrap="list")
    cases += [(p, "m3ed_pickle", {}), (p, "auto", {})]
    root = tmp_path / "memor"
    shutil.copytree(files["memor"], root)
    fw.write_hostile_torch(root / "features/visual_features/face_features/c1.pt", marker, with_tensor=True)
    cases += [(root, "memor", {}), (root, "auto", {})]
    native = tmp_path / "native"
    convert(str(files["carat"]), native)
    evil = np.empty(1, dtype=object)
    evil[0] = fw.hostile_objects(marker)["os.system"]
    np.save(native / "test" / "text.npy", evil, allow_pickle=True)
    cases += [(native, "native", {}), (native, "auto", {})]
    for path, fmt, kw in cases:
        with pytest.raises(RamerError) as e:
            load_dataset(path, fmt, **kw)
        assert "refus" in str(e.value) or "not a readable .npy" in str(e.value), (path, fmt, str(e.value))
        assert not marker.exists(), (path, fmt)
        try:
            detect_format(path)
        except RamerError:
            pass
        assert not marker.exists(), path
    for path, fmt, _ in cases[:2]:
        with pytest.raises(RamerError):
            run_info(str(path), fmt)
        with pytest.raises(RamerError):
            run_convert(str(path), str(tmp_path / "out"), fmt)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- native round trip, info
def _same_store(a: SceneStore, b: SceneStore) -> None:
    for name in ARRAYS:
        if name in ("text", "audio", "visual"):  # a native folder packs them: compare what a batch reads
            x, y = a.token_features(name), b.token_features(name)
        else:
            x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
    assert a.ids == b.ids and a.label_names == b.label_names
    assert (a.personality is None) == (b.personality is None)
    if a.personality is not None:
        assert np.array_equal(a.personality, np.asarray(b.personality))
        assert np.array_equal(a.personality_present, np.asarray(b.personality_present))


@pytest.mark.parametrize("key", ["aligned", "unaligned", "m3ed", "carat", "memor"])
def test_convert_round_trip(files, tmp_path: Path, key: str) -> None:
    out = tmp_path / "native"
    run_convert(str(files[key]), str(out))
    direct = load_dataset(files[key])
    back = load_native(out)
    assert back.format == direct.format and back.label_names == direct.label_names
    assert set(back.splits) == set(SPLITS)
    for split in SPLITS:
        _same_store(direct.splits[split], back.splits[split])
    assert back.info["nonfinite_replaced"] == direct.info["nonfinite_replaced"]
    assert dataset_info(back)["splits"] == dataset_info(direct)["splits"]
    # a native folder converts again (a copy)
    convert(str(out), tmp_path / "again")
    for split in SPLITS:
        _same_store(back.splits[split], load_native(tmp_path / "again").splits[split])
    with pytest.raises(RamerError, match="must differ"):
        convert(str(out), out)


def test_dataset_info_and_commands(files, capsys) -> None:
    info = dataset_info(load_dataset(files["memor"]))
    assert set(info) >= {"format", "label_names", "feature_dims", "nonfinite_replaced", "splits"}
    assert info["feature_dims"] == {"text": 6, "audio": 9, "visual": 12, "personality": 118}
    s = info["splits"]["train"]
    assert set(s) >= {
        "n",
        "label_counts",
        "empty_label_samples",
        "presence",
        "persons_mean",
        "tokens_mean",
        "nonspeaker_targets",
    }
    assert set(s["presence"]) == {"text", "audio", "visual"} and 0 < s["presence"]["text"] < 1
    assert len(s["label_counts"]) == 9 and s["nonspeaker_targets"] > 0
    json.dumps(info)
    assert "memor" in format_info_table(info)
    run_info(str(files["aligned"]), as_json=True)
    got = json.loads(capsys.readouterr().out)
    assert got["format"] == "mosei_aligned" and got["splits"]["train"]["empty_label_samples"] == 2
    assert got == collect_info(str(files["aligned"]))
    run_info(str(files["m3ed"]), "m3ed_pickle")
    out = capsys.readouterr().out
    assert "m3ed_pickle" in out and "Surprise" in out
    with pytest.raises(RamerError, match="--labels must be primary or fine_grained"):
        run_info(str(files["memor"]), labels="tertiary")


def test_data_info_and_convert_take_loader_options(files, tmp_path, capsys) -> None:
    """`ramer data info|convert --set data.KEY=VALUE`: the loader options of `train --set`."""
    whole = collect_info(str(files["m3ed"]), "m3ed_pickle")
    cut = collect_info(str(files["m3ed"]), "m3ed_pickle", sets=["data.max_utterances=2"])
    assert whole["splits"]["train"]["tokens_mean"] > cut["splits"]["train"]["tokens_mean"] == 2 * 2  # P = 2 rows
    assert (
        main(
            [
                "data",
                "convert",
                str(files["m3ed"]),
                "--format",
                "m3ed_pickle",
                "--out",
                str(tmp_path / "n"),
                "--set",
                "data.max_utterances=2",
            ]
        )
        == 0
    )
    assert load_native(tmp_path / "n").splits["train"].grid[:, 1].max() == 2
    assert main(["data", "info", str(files["m3ed"]), "--set", "model.hidden=8"]) == 2
    assert "only data.* keys (loader options) apply here" in capsys.readouterr().err
    assert main(["data", "info", str(files["m3ed"]), "--set", "data.max_utterance=2"]) == 2
    assert "data.max_utterance" in capsys.readouterr().err
    # data.* keys that reading the data ignores, and MEmoR's label set on other data: refused, not ignored
    for key in ("data.task=single_label", "data.missing_rate=0.5", "data.missing_at=test", "data.format=memor"):
        for command in (["info"], ["convert", "--out", str(tmp_path / "x")]):
            assert main(["data", command[0], str(files["m3ed"]), *command[1:], "--set", key]) == 2
            said = f"--set {key.split('=')[0]}: not a loader option, and reading the data would ignore it; "
            assert said in capsys.readouterr().err
    for command, asked in zip(
        (["info"], ["convert", "--out", str(tmp_path / "x")]),
        (["--labels", "fine_grained"], ["--set", "data.labels=fine_grained"]),
    ):
        assert main(["data", command[0], str(files["aligned"]), *command[1:], *asked]) == 2
        err = capsys.readouterr().err
        assert f"--labels chooses MEmoR's label set; {files['aligned']} holds mosei_aligned data" in err
    assert not (tmp_path / "x").exists()
    assert main(["data", "info", str(files["memor"]), "--labels", "fine_grained"]) == 0


@CLOSES_WHAT_IT_OPENS
def test_data_info_and_convert_refuse_a_loader_option_the_data_does_not_read(files, tmp_path, capsys) -> None:
    """A loader option of another format, or any on a native folder (its loader options were applied
    when it was converted), would be ignored: refused by both commands, nothing written; one the
    format reads is taken (each format's, each reader of a key named in the error)."""
    native = tmp_path / "native"
    assert main(["data", "convert", str(files["m3ed"]), "--out", str(native)]) == 0
    before = (native / "meta.json").read_bytes()
    out = tmp_path / "x"
    cases = [
        (
            files["aligned"],
            "data.m3ed_protocol=utterance",
            "holds mosei_aligned data, whose loader would ignore it; it applies to m3ed_pickle and m3ed_carat data",
        ),
        (
            files["unaligned"],
            "data.max_utterances=2",
            "holds mosei_unaligned data, whose loader would ignore it; it applies to m3ed_pickle data",
        ),
        (files["carat"], "data.max_utterances=2", "holds m3ed_carat data, whose loader would ignore it"),
        (
            files["m3ed"],
            "data.valid_seed=3",
            "holds m3ed_pickle data, whose loader would ignore it; it applies to memor",
        ),
        (files["memor"], "data.unaligned_layout=pad", "holds memor data, whose loader would ignore it"),
        (files["m3ed"], "data.synthetic.n_train=10", "whose loader would ignore it; it applies to synthetic data"),
        (native, "data.max_utterances=2", "is a native folder, which reads no loader option"),
        (native, "data.m3ed_protocol=dialogue", "is a native folder, which reads no loader option"),
    ]
    for path, assignment, said in cases:
        key = assignment.split("=")[0]
        for command in (["info"], ["convert", "--out", str(out)]):
            assert main(["data", command[0], str(path), *command[1:], "--set", assignment]) == 2, (path, key)
            err = capsys.readouterr().err
            assert f"--set {key}: {path} " in err and said in err, err
    assert not out.exists() and (native / "meta.json").read_bytes() == before
    for path, assignment in (
        (files["unaligned"], "data.unaligned_layout=pad"),
        (files["carat"], "data.m3ed_protocol=dialogue"),
        (files["memor"], "data.valid_seed=3"),
        (files["m3ed"], "data.m3ed_protocol=dialogue"),
    ):
        assert main(["data", "info", str(path), "--set", assignment]) == 0, capsys.readouterr().err
    capsys.readouterr()


def test_training_commands_refuse_a_loader_option_the_data_does_not_read(files, tmp_path, capsys) -> None:
    """train, bench and tune would train on the data read without the option while the run's
    config.yaml recorded it: refused before any work, naming the key and its readers; an option at
    its default (the m3ed config's max_utterances: 60 on CARAT's file) is no choice and trains."""
    out = tmp_path / "out"
    said = "holds mosei_aligned data, whose loader would ignore it; it applies to m3ed_pickle data"
    for command in (["train"], ["bench", "--models", "br", "--seeds", "1"], ["tune", "--model", "late_fusion"]):
        argv = [*command, "--data", str(files["aligned"]), "--set", "data.max_utterances=5", "--out", str(out)]
        assert main(argv) == 2, command
        assert f"data.max_utterances=5: {files['aligned']} {said}" in capsys.readouterr().err, command
        assert not out.exists()
    assert main(["train", "--set", "data.valid_seed=3", "--out", str(out)]) == 2
    assert "data.valid_seed=3: the embedded benchmark holds synthetic data" in capsys.readouterr().err
    unaligned = ["train", "--data", str(files["aligned"]), "--set", "data.aligned_path=/x", "--out", str(out)]
    assert main(unaligned) == 2  # the advice names the default as --set takes it
    assert "or give --set data.aligned_path=null)" in capsys.readouterr().err
    native = tmp_path / "converted"  # a folder converted from MOSEI: MOSEI's options alone, and those as converted
    assert main(["data", "convert", str(files["aligned"]), "--out", str(native)]) == 0
    assert main(["train", "--data", str(native), "--set", "data.max_utterances=5", "--out", str(out)]) == 2
    said = f"data.max_utterances=5: {native} is a native folder made from mosei_aligned data, whose loader does not"
    assert said in capsys.readouterr().err and not out.exists()
    assert main(["train", "--data", str(files["carat"]), "--config", "m3ed", "--model", "br", "--out", str(out)]) == 0
    capsys.readouterr()


def test_load_dataset_reads_the_loader_options_of_its_config(files, tmp_path: Path) -> None:
    """``load_dataset(path, data_cfg=cfg)`` reads the data as ``--data`` with ``cfg``'s ``data.*``
    would (``load_bundle``); a keyword option given to the call wins over the config's."""
    m3ed = tmp_path / "m3ed.pkl"
    shutil.copy(files["m3ed"], m3ed)
    fw.write_m3ed_annotation(tmp_path / "annotation.json", files["m3ed_fx"])
    cfg = DataConfig(path=str(m3ed), m3ed_protocol="utterance")
    from_cfg, bundle = load_dataset(m3ed, data_cfg=cfg), load_bundle(cfg)
    assert from_cfg.splits["train"].ids == bundle.splits["train"].ids
    assert from_cfg.splits["train"].ids[0] == "seriestrain_0/0"  # one sample per utterance
    dialogues = load_dataset(m3ed, data_cfg=cfg, m3ed_protocol="dialogue")
    assert dialogues.splits["train"].ids[0] == "seriestrain_0"
    memor = DataConfig(memor_protocol="clip", valid_seed=3)
    assert (
        load_dataset(files["memor"], data_cfg=memor).splits["valid"].ids
        == load_bundle(memor.model_copy(update={"path": str(files["memor"])})).splits["valid"].ids
    )
    assert ":" not in load_dataset(files["memor"], data_cfg=memor).splits["test"].ids[0]  # a sample per clip
    with pytest.raises(RamerError, match="is a file; format 'memor' is a MEmoR release, a folder"):
        load_dataset(m3ed, data_cfg=DataConfig(format="memor"))  # data.format: read, not ignored


def test_convert_into_a_dataset_with_a_users_file_in_a_split_folder_loses_nothing(files, tmp_path: Path) -> None:
    """The split folders are checked with the dataset folder, before ``meta.json`` is removed: a
    refused convert leaves the dataset that was there loading as before, the user's file kept."""
    out = tmp_path / "native"
    convert(str(files["m3ed"]), out, "m3ed_pickle")
    (out / "train" / "notes.txt").write_text("mine")
    with pytest.raises(RamerError, match=r"native/train: holds notes.txt, which a split folder does not"):
        convert(str(files["m3ed"]), out, "m3ed_pickle")
    assert (out / "train" / "notes.txt").read_text() == "mine"
    assert len(load_native(out).splits["train"]) == 3
