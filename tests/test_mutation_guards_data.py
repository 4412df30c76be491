"""Guards found by hand mutation testing of the data loaders (round 4): each case pins a behaviour
that a small change of the loaders' code altered without any other test noticing (a split
assignment, a window bound, a presence mask, a label id, a count in the loader's info)."""

from __future__ import annotations

import json
from pathlib import Path

import fixtures_writers as fw
import numpy as np
import pytest
import torch
from conftest import random_store
from test_conversations import write_table

from ramer.batch import ROLE_NONSPEAKER, ROLE_SPEAKER
from ramer.cli import main
from ramer.config import DataConfig
from ramer.data.conversations import import_conversations
from ramer.data.formats import load_dataset, read_as_converted
from ramer.data.info import split_info
from ramer.data.memor import _segment_of
from ramer.data.mosei import _pool, _real_rows
from ramer.data.readers import labels_from_tgt
from ramer.errors import RamerError

SPLITS = ("train", "valid", "test")


# ------------------------------------------------------------------------------------ conversations
def test_the_seeded_split_of_a_seed_is_fixed(tmp_path, fake_text):
    """A table re-imported by another version of ramer gets the same valid and test conversations:
    16 conversations give 2 of each (10 % of 16 is 1.6, rounded), these ones for seed 3."""
    rows = [
        {"conversation": f"k{i:02d}", "index": 0, "speaker": "a", "text": f"t{i}", "labels": "joy"} for i in range(16)
    ]
    meta = import_conversations(write_table(tmp_path / "t.csv", rows), tmp_path / "out", seed=3)
    split = {it["name"]: it["split"] for it in meta["info"]["conversations"]["items"]}
    assert sorted(n for n, s in split.items() if s == "valid") == ["k01", "k09"]
    assert sorted(n for n, s in split.items() if s == "test") == ["k11", "k15"]


def test_import_counts_every_utterance_and_the_texts_present(tmp_path, fake_text):
    """meta.json's ``utterances`` counts the table's rows, those that are context only (target 0)
    too; ``speaker_text_present`` the rows with a text (one of the 6 has none)."""
    rows = [
        {"conversation": f"k{i}", "index": j, "speaker": "a", "text": f"t{i}{j}", "labels": "joy", "target": j}
        for i in range(3)
        for j in range(2)
    ]
    rows[3]["text"] = ""
    counts = import_conversations(write_table(tmp_path / "t.csv", rows), tmp_path / "out")["info"]["conversations"][
        "counts"
    ]
    assert (counts["utterances"], counts["speaker_text_present"]) == (6, 5)
    assert sum(counts["samples"].values()) == 3


def test_personality_names_match_the_speakers_as_written(tmp_path, fake_text):
    """The personality file's 'Ann' is the table's speaker 'Ann' (names are not folded to lower case)."""
    rows = [{"conversation": f"k{i}", "index": 0, "speaker": "Ann", "text": f"t{i}", "labels": "joy"} for i in range(3)]
    pers = tmp_path / "traits.csv"
    pers.write_text("person,open\nAnn,0.5\n")
    meta = import_conversations(write_table(tmp_path / "t.csv", rows), tmp_path / "out", personality=pers)
    counts = meta["info"]["conversations"]["counts"]
    assert (counts["persons_without_personality"], counts["personality_rows_unused"]) == ([], 0)


def test_an_import_with_labels_records_where_the_names_came_from(tmp_path, fake_text):
    rows = [{"conversation": f"k{i}", "index": 0, "speaker": "a", "text": f"t{i}", "labels": "joy"} for i in range(3)]
    src = write_table(tmp_path / "t.csv", rows)
    given = import_conversations(src, tmp_path / "given", labels=["joy", "anger"])["info"]["conversations"]
    found = import_conversations(src, tmp_path / "found")["info"]["conversations"]
    assert (given["label_names_from"], found["label_names_from"]) == ("--labels", "file")


# ------------------------------------------------------------------------------------ readers
def test_an_unk_id_in_tgt_is_refused_not_dropped():
    """``<unk>`` (id 1) names no emotion: a 'tgt' holding it is an error, not a sample without that label."""
    with pytest.raises(RamerError, match="holds id 1"):
        labels_from_tgt([[2, 4, 3], [2, 1, 3]], 6, "f.pt: split 'train'")


# ------------------------------------------------------------------------------------ MOSEI unaligned
def test_pool_windows_of_a_length_that_is_no_multiple_of_the_tokens():
    """7 frames over 3 tokens: windows [0, 2), [2, 4), [4, 7) (each starts at floor(j * L / S))."""
    x = np.arange(1, 8, dtype=np.float32).reshape(1, 7, 1)
    means, present = _pool(x, np.ones((1, 7), bool), 3)
    np.testing.assert_allclose(means.reshape(-1), [1.5, 3.5, 6.0])
    assert present.all()


def test_pool_with_fewer_frames_than_tokens_keeps_padding_absent():
    """2 frames (the first MulT's zero padding) over 4 tokens: each token takes the frame under it,
    and the tokens over the padding frame stay absent."""
    x = np.array([[[0.0, 0.0], [1.0, 2.0]]], np.float32)
    means, present = _pool(x, _real_rows(x), 4)
    np.testing.assert_array_equal(present, [[False, False, True, True]])
    np.testing.assert_array_equal(means[0, 2:], [[1.0, 2.0], [1.0, 2.0]])


def test_a_frame_with_some_zero_features_is_real():
    """Only a row of zeros is padding: a real frame may hold an exact 0 in some of its features."""
    x = np.array([[[0.0, 1.5], [0.0, 0.0], [2.0, 0.0]]], np.float32)
    np.testing.assert_array_equal(_real_rows(x), [[True, False, True]])


# ------------------------------------------------------------------------------------ M3ED
def test_m3ed_counts_the_utterances_whose_pickle_label_final_mul_emo_lacks(tmp_path):
    """``videoLabels_not_in_final_mul_emo``: one utterance whose annotation names another emotion
    than the pickle's videoLabels is counted once, in its split; the others agree, one of them with
    the pickle's label second in its list (membership, not the first name)."""
    pkl = tmp_path / "m3ed.pkl"
    fx = fw.write_m3ed_pickle(pkl)
    fw.write_m3ed_annotation(tmp_path / "annotation.json", fx)
    d = fx["splits"]["train"][0]
    obj = json.loads((tmp_path / "annotation.json").read_text(encoding="utf-8"))
    dialog = obj[d.rsplit("_", 1)[0]][d]["Dialog"]
    other = fw.M3ED_NAMES[(fx["labels"][d][0] + 1) % len(fw.M3ED_NAMES)]
    dialog[f"{d}_1"]["EmoAnnotation"]["final_mul_emo"] = other
    label = fw.M3ED_NAMES[fx["labels"][d][1]]
    before = fw.M3ED_NAMES[(fx["labels"][d][1] + 1) % len(fw.M3ED_NAMES)]
    dialog[f"{d}_2"]["EmoAnnotation"]["final_mul_emo"] = f"{before},{label}"
    (tmp_path / "annotation.json").write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    bundle = load_dataset(pkl, m3ed_protocol="utterance")
    counted = {s: bundle.splits[s].extra["videoLabels_not_in_final_mul_emo"] for s in SPLITS}
    assert counted == {"train": 1, "valid": 0, "test": 0}


def test_carat_features_of_one_dim_are_read_under_their_own_names(tmp_path):
    """CARAT's audio/visual swap is told by the 342-d visual: when both keys hold 342-d features
    nothing tells them apart, so each is read under the name the file gives it."""
    path = tmp_path / "m3ed_data_60.pt"
    fw.write_m3ed_carat(path, sizes=(2, 1, 1), dims=(4, 342, 342))
    info = load_dataset(path).info["m3ed"]
    assert info["audio_visual_swapped"] is False
    assert info["read_as"] == {"text": "src-text", "audio": "src-audio", "visual": "src-visual"}


def test_m3ed_counts_labels_and_samples_only_beyond_the_cut_apart(tmp_path):
    """The dialogue of 9 utterances cut to 4 has Fear and Surprise only beyond the cut (and maybe
    more): ``labels_only_beyond_cut`` counts the labels, ``samples_with_labels_only_beyond_cut``
    the one dialogue."""
    pkl = tmp_path / "m3ed.pkl"
    fx = fw.write_m3ed_pickle(pkl)
    extra = load_dataset(pkl, data_cfg=DataConfig(max_utterances=4)).splits["train"].extra
    lab = fx["labels"]["seriestrain_1"]
    assert extra["labels_only_beyond_cut"] == len(set(lab[4:]) - set(lab[:4])) >= 2
    assert extra["samples_with_labels_only_beyond_cut"] == 1


def test_carat_counts_only_len_list_entries_beyond_the_stored_rows(tmp_path):
    """``len_list_beyond_stored_steps``: a sample whose len_list equals its stored rows (6) is whole,
    one whose len_list says 9 is counted (and read at its 6 stored rows)."""
    path = tmp_path / "m3ed_data_60.pt"
    fw.write_m3ed_carat(path, sizes=(3, 1, 1))
    obj = torch.load(path, weights_only=False)  # our own fixture file
    obj["train"]["len_list"][2] = 9
    torch.save(obj, path)
    bundle = load_dataset(path)
    counted = {s: bundle.splits[s].extra["len_list_beyond_stored_steps"] for s in SPLITS}
    assert counted == {"train": 1, "valid": 0, "test": 0}
    assert bundle.splits["train"].grid[2, 1] == 6


# ------------------------------------------------------------------------------------ MEmoR
def test_memor_a_moment_on_a_segment_boundary_lies_in_the_later_segment():
    """Segments are ``[start, end)``: a moment at 102.0 lies in the segment starting there, once."""
    counts = {"target_in_several_segments": 0, "target_outside_segments": 0}
    starts, ends = np.array([100.0, 102.0, 104.0]), np.array([102.0, 104.0, 106.0])
    assert _segment_of(102.0, starts, ends, counts) == 1
    assert counts == {"target_in_several_segments": 0, "target_outside_segments": 0}


def test_memor_a_moment_in_overlapping_segments_takes_the_first_and_is_counted():
    counts = {"target_in_several_segments": 0, "target_outside_segments": 0}
    assert _segment_of(1.5, np.array([0.0, 1.0, 3.0]), np.array([2.0, 3.0, 4.0]), counts) == 0
    assert counts == {"target_in_several_segments": 1, "target_outside_segments": 0}


def test_memor_validation_samples_keep_the_order_of_the_id_file(tmp_path):
    """The validation share keeps train_id.txt's order (as train does), whatever the order of the indices."""
    fw.write_memor(tmp_path)
    (tmp_path / "train_id.txt").write_text("".join(f"{i}\n" for i in reversed(range(7))))
    bundle = load_dataset(tmp_path, data_cfg=DataConfig(format="memor", valid_fraction=0.5))
    for split in ("train", "valid"):
        order = [int(sid.split(":")[0]) for sid in bundle.splits[split].ids]
        assert len(order) >= 2 and order == sorted(order, reverse=True), split


def _sheldon_visual_in_c1_first_segment(root: Path, frames: list[int]) -> list[bool]:
    """Clip c1 of ``write_memor`` with Sheldon's 12 face crops moved to ``frames``: per c1 sample,
    whether Sheldon has visual in the clip's first segment (frames 0..47 at 23.976 fps)."""
    fw.write_memor(root)
    names = root / "features" / "visual_features" / "face_names" / "c1.txt"
    crops = names.read_text().strip().split("\t")
    moved = [f"{frames[j]}_Sheldon.jpg" if c.endswith("_Sheldon.jpg") else c for j, c in enumerate(crops)]
    assert moved[:12] == [f"{f}_Sheldon.jpg" for f in frames]
    names.write_text("\t".join(moved) + "\n")
    out = []
    for st in load_dataset(root, "memor").splits.values():
        for i, sid in enumerate(st.ids):
            if ":c1:" in sid:
                persons = list(st.character[st.person_offsets[i] : st.person_offsets[i + 1]])
                out.append(bool(st.present[st.token_offsets[i] + persons.index(0) * int(st.grid[i, 1]), 2]))
    return out


def test_memor_a_face_on_a_segments_last_frame_counts_for_it(tmp_path):
    """A face belongs to the frames ``[begin, end]`` of a segment, its last frame included: 11 crops
    (more than 10) on frames 37..47 give Sheldon visual in the first segment; the 12th lies past the clip."""
    assert set(_sheldon_visual_in_c1_first_segment(tmp_path, [37 + j for j in range(11)] + [500])) == {True}


def test_memor_ten_faces_of_a_person_in_a_segment_are_too_few(tmp_path):
    """More than 10 face crops are needed per person and segment: exactly 10 leave the visual absent."""
    assert set(_sheldon_visual_in_c1_first_segment(tmp_path, [5 + j for j in range(10)] + [500, 501])) == {False}


def test_memor_a_clip_of_ten_faces_is_counted_as_one_of_10_or_fewer(tmp_path):
    """Clip c2 with exactly 10 face crops is a clip of 10 or fewer faces (its visual all absent)."""
    fw.write_memor(tmp_path)
    vis = tmp_path / "features" / "visual_features"
    (vis / "face_names" / "c2.txt").write_text("\t".join(f"{f}_Leonard.jpg" for f in range(10)) + "\n")
    torch.save(torch.zeros(10, 5), vis / "face_features" / "c2.pt")
    bundle = load_dataset(tmp_path, "memor")
    assert bundle.info["memor"]["visual_clips_with_10_or_fewer_faces"] == 1


# ------------------------------------------------------------------------------------ info
def test_info_counts_each_kind_of_target_apart():
    """Whole-sample targets (role -1, MOSEI's and M3ED's dialogues) are neither speaker nor
    non-speaker targets in ``ramer data info``."""
    whole = split_info(random_store(n=6, with_target=False))
    assert (whole["whole_sample_targets"], whole["speaker_targets"], whole["nonspeaker_targets"]) == (6, 0, 0)
    st = random_store(n=6)
    roles = split_info(st)
    assert roles["speaker_targets"] == int((st.role == ROLE_SPEAKER).sum())
    assert roles["nonspeaker_targets"] == int((st.role == ROLE_NONSPEAKER).sum())
    assert roles["whole_sample_targets"] == 0


def test_info_counts_samples_without_a_label_not_labels_without_a_sample():
    st = random_store(n=6, n_labels=5)
    st.labels[:] = 0
    st.labels[2:, 0] = 1  # samples 0 and 1 have no label; labels 1..4 no sample
    info = split_info(st)
    assert info["empty_label_samples"] == 2
    assert info["label_counts"] == [4, 0, 0, 0, 0]


# ------------------------------------------------------------------------------------ formats
def test_a_converted_folder_lends_a_config_every_loader_option_it_was_converted_with(tmp_path, capsys):
    """A config that leaves the loader options at their defaults takes all of the folder's (MEmoR's
    label set and validation seed; M3ED's cut); one that sets another cut is refused."""
    fw.write_memor(tmp_path / "memor")
    fw.write_m3ed_pickle(tmp_path / "m3ed.pkl")
    memor, m3ed = tmp_path / "conv_memor", tmp_path / "conv_m3ed"
    options = ["--labels", "fine_grained", "--set", "data.valid_seed=7"]
    assert main(["data", "convert", str(tmp_path / "memor"), "--out", str(memor), *options]) == 0
    cut = ["--set", "data.max_utterances=4"]
    assert main(["data", "convert", str(tmp_path / "m3ed.pkl"), "--out", str(m3ed), *cut]) == 0
    capsys.readouterr()
    data = DataConfig(path=str(memor))
    read_as_converted(data)
    assert (data.labels, data.valid_seed) == ("fine_grained", 7)
    data = DataConfig(path=str(m3ed))
    read_as_converted(data)
    assert data.max_utterances == 4
    with pytest.raises(RamerError, match="converted with data.max_utterances 4"):
        read_as_converted(DataConfig(path=str(m3ed), max_utterances=60))
