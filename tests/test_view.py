"""`ramer view`: the JSON the page embeds (per data source), the CLI's errors, and the page itself
in a real browser (Chromium driven by Playwright; those tests skip, with the reason, where either
is missing: `make test` installs Playwright, `.ci/run` installs Chromium)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fixtures_writers as fw
import numpy as np
import pytest
from conftest import random_store
from test_conversations import LABELS, base_rows, write_table
from test_recipe import tiny_cfg

from ramer.cli import main
from ramer.config import DataConfig
from ramer.data import DataBundle
from ramer.data.conversations import import_conversations
from ramer.data.formats import load_dataset
from ramer.data.store import load_native
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.infer import prediction_records, read_predictions
from ramer.metrics import decide, report
from ramer.paths import atomic_write_text
from ramer.train.recipe import Recipe
from ramer.view import AUDIO, SPEAKS, TEXT, page_data, render_page

NEEDS_PLAYWRIGHT = "needs Playwright for Python (pip install 'ramer[test]'; it drives the system Chromium)"
NEEDS_CHROMIUM = "needs a system Chromium (Debian: apt-get install chromium)"
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> & done'


def records_for(store, seed: int = 0, threshold=0.5) -> list[dict]:
    """Prediction records of random probabilities (what `ramer predict` writes)."""
    probs = np.random.default_rng(seed).random((len(store), len(store.label_names)))
    return prediction_records(store, probs, decide(probs, threshold), threshold)


def contrast(fore: str, back: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours."""

    def luminance(colour: str) -> float:
        c = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        c = [x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4 for x in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    high, low = sorted((luminance(fore), luminance(back)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_text_the_page_draws_keeps_wcag_contrast():
    """WCAG 1.4.3 (4.5:1) for the small text whose colour the page sets on its cells: an absent
    modality's letter, and a predicted chip's black code on its label's colour at full strength,
    over a speaker's white cell and both stripes of a listener's (read from the template)."""
    import re

    from ramer import view

    css = (Path(view.__file__).parent / "view_template.html").read_text()
    stripes = re.search(r"td\.lis \{ background: repeating-linear-gradient\(135deg, (#\w{6}) 0 6px, (#\w{6})", css)
    backs = ["#ffffff", *stripes.groups()]
    off = re.search(r"\.mod\.off \{ color: (#\w+);", css).group(1)
    off = off if len(off) == 7 else "#" + "".join(2 * ch for ch in off[1:])
    assert min(contrast(off, b) for b in backs) >= 4.5, off
    palette = re.findall(r"#\w{6}", re.search(r"const PALETTE = \[(.*?)\];", css).group(1))
    low, high = map(float, re.search(r"gold \? null : ([\d.]+) \+ ([\d.]+) \* p\)", css).groups())
    alpha = low + high  # p = 1

    def over(colour: str, back: str) -> str:
        return "#" + "".join(
            f"{round(alpha * int(colour[i : i + 2], 16) + (1 - alpha) * int(back[i : i + 2], 16)):02x}"
            for i in (1, 3, 5)
        )

    worst = min((contrast("#000000", over(c, b)), c, b) for c in palette for b in backs)
    assert worst[0] >= 4.5, worst


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run, its predictions file (ramer predict) and its page (ramer view RUN_DIR)."""
    root = tmp_path_factory.mktemp("view")
    cfg = tiny_cfg(extra=["train.epochs=1"])
    bundle = generate(cfg.data.synthetic)
    Recipe(cfg, root / "run", bundle=bundle).run()
    assert main(["predict", str(root / "run"), "--out", str(root / "preds.jsonl")]) == 0
    assert main(["view", str(root / "run"), "--out", str(root / "scenes.html")]) == 0
    preds = [json.loads(x) for x in (root / "preds.jsonl").read_text().splitlines()]
    return {"root": root, "bundle": bundle, "store": bundle.splits["test"], "preds": preds}


def imported(tmp_path: Path, rows: list[dict] | None = None) -> DataBundle:
    """The test file's conversations (c1-c3), all in split test, imported with the fake text model."""
    rows = rows or base_rows()
    for r in rows:
        r["split"] = "test"
    import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds", context=1)
    return load_native(tmp_path / "ds")


# ------------------------------------------------------------------------------------ the JSON blob
def test_imported_conversations_are_whole_grids_with_their_texts(tmp_path, fake_text):
    """A conversation is every person x every utterance; each sample (a window of context 1) lands
    on its own utterance; presence, speakers and texts come from the table."""
    bundle = imported(tmp_path)
    store = bundle.splits["test"]
    records = records_for(store)
    data = page_data(bundle, "test", records, 0.5)
    convs = {c["name"]: c for c in data["conversations"]}
    assert list(convs) == ["c1", "c2", "c3"]
    c1 = convs["c1"]
    assert c1["persons"] == ["ann", "bob", "cat"] and c1["segments"] == ["0", "1", "2", "3"]
    assert c1["texts"][1] == ["bob", "I am not happy about the plan."]
    # the speaker of each utterance has text and audio bits only where the table gives them
    ann, bob = c1["cells"][0], c1["cells"][1]
    assert ann[0] & (TEXT | SPEAKS) == TEXT | SPEAKS and not ann[1] & (TEXT | AUDIO | SPEAKS)
    assert bob[1] & TEXT and not bob[0] & (TEXT | AUDIO | SPEAKS)
    c2 = convs["c2"]
    assert c2["segments"] == ["10", "20", "30", "40"]
    dan = c2["cells"][0]
    assert dan[2] & SPEAKS and not dan[2] & TEXT  # index 30: dan speaks without words (text absent)
    by_id = {r["id"]: r for r in records}
    at = {x["id"]: x for c in data["conversations"] for x in c["samples"]}
    assert at["c1/1"]["at"] == [1, 1] and at["c2/40"]["at"] == [2, 3] and at["c3/3"]["at"] == [0, 2]
    for sample_id, x in at.items():
        assert x["probs"] == [by_id[sample_id]["probs"][n] for n in LABELS]
        assert [LABELS[j] for j in x["pred"]] == by_id[sample_id]["labels"]
        assert x["gold"] == np.flatnonzero(store.labels[store.ids.index(sample_id)]).tolist()
        assert x["role"] == "speaker"


def test_table_gone_or_edited_means_no_texts_and_a_note(tmp_path, fake_text):
    """The page shows the table's texts only while it is the file the import read (its sha256 in
    meta.json): edited since, its texts would not be what the model read; either way it says why."""
    bundle = imported(tmp_path)
    table = tmp_path / "talk.csv"

    def page():  # the page's conversations and its notes
        notes = []
        data = page_data(bundle, "test", records_for(bundle.splits["test"]), notes=notes)
        return data["conversations"], notes

    conversations, notes = page()
    assert notes == [] and any(c["texts"] for c in conversations)
    table.write_text(table.read_text().replace(",", ", ", 1))  # the same rows, another file
    conversations, notes = page()
    assert all(c["texts"] is None for c in conversations)
    assert notes == [
        f"{table.resolve()}: the imported table has changed since the import; the page shows no utterance texts "
        "(put the table as imported back at this path to show them)"
    ]
    table.unlink()
    conversations, notes = page()
    assert all(c["texts"] is None for c in conversations)
    assert len(notes) == 1 and notes[0].endswith(
        "the imported table is gone; the page shows no utterance texts (put the table as imported back at this "
        "path to show them)"
    )


def test_a_table_without_its_digest_in_meta_json_is_not_read(tmp_path, fake_text):
    """A dataset folder whose meta.json names another file and records no digest (edited, or made
    by someone else): that file's text was put in the page, which the user may pass on."""
    bundle = imported(tmp_path)
    private = tmp_path / "elsewhere" / "private.csv"
    private.parent.mkdir()
    private.write_text((tmp_path / "talk.csv").read_text().replace("plan", "PRIVATE"))
    bundle.info["source_files"] = [str(private)]
    del bundle.info["source_sha256"]
    notes = []
    data = page_data(bundle, "test", records_for(bundle.splits["test"]), notes=notes)
    assert "PRIVATE" not in json.dumps(data)
    assert all(c["texts"] is None for c in data["conversations"])
    assert notes == [
        f"{private}: meta.json records no digest of the imported table (an edited file, or an import by an "
        "earlier ramer), so the page shows no utterance texts; import the table again to show them"
    ]


def test_unlabelled_import_has_no_annotations_and_listener_targets(tmp_path, fake_text):
    """--targets all: a sample per person at each utterance; listeners are non-speaker targets."""
    rows = base_rows(labelled=False)
    for r in rows:
        r["split"] = "test"
    import_conversations(write_table(tmp_path / "new.csv", rows), tmp_path / "ds", labels=list(LABELS), targets="all")
    bundle = load_native(tmp_path / "ds")
    data = page_data(bundle, "test", records_for(bundle.splits["test"]))
    assert data["labelled"] is False and data["summary"] is None
    c1 = data["conversations"][0]
    assert len(c1["samples"]) == 3 * 4 and all(x["gold"] is None for x in c1["samples"])
    for x in c1["samples"]:
        p, s = x["at"]
        assert (x["role"] == "speaker") == bool(c1["cells"][p][s] & SPEAKS)


def test_memor_target_protocol_groups_samples_by_clip(tmp_path):
    """MEmoR (target protocol): the samples of a clip share one grid, a row per character of any of
    them, each sample at its character's row and moment's segment."""
    fw.write_memor(tmp_path / "memor")
    bundle = load_dataset(tmp_path / "memor")
    store = bundle.splits["train"]
    data = page_data(bundle, "train", records_for(store))
    clips = [c["name"] for c in data["conversations"]]
    assert len(clips) == len(set(clips)) and set(clips) == {i.split(":")[1] for i in store.ids}
    for c in data["conversations"]:
        for x in c["samples"]:
            i = store.ids.index(x["id"])
            p, s = (int(v) for v in store.target[i])
            char = int(store.character[store.person_offsets[i] + p])
            assert c["persons"][x["at"][0]] == bundle.info["memor"]["character_order"][char]
            assert x["at"][1] == s
    assert sum(len(c["samples"]) for c in data["conversations"]) == len(store)


def test_several_target_tokens_are_the_samples_scope(tmp_path):
    """MEmoR (clip protocol): one sample per clip whose scope is its target tokens."""
    fw.write_memor(tmp_path / "memor")
    bundle = load_dataset(tmp_path / "memor", memor_protocol="clip")
    store = bundle.splits["train"]
    data = page_data(bundle, "train", records_for(store))
    for c in data["conversations"]:
        (x,) = c["samples"]
        i = store.ids.index(x["id"])
        a, b = store.token_offsets[i], store.token_offsets[i + 1]
        P, S = store.grid[i]
        marked = np.argwhere(np.asarray(store.target_tokens[a:b]).reshape(P, S)).tolist()
        assert x["at"] is None and x["role"] is None and x["scope"] == marked and len(marked) >= 1


def test_mosei_is_a_one_row_grid_of_whole_samples(tmp_path):
    fw.write_mosei_aligned(tmp_path / "train_valid_test.pt", steps=5)
    bundle = load_dataset(tmp_path / "train_valid_test.pt")
    data = page_data(bundle, "test", records_for(bundle.splits["test"]))
    assert len(data["conversations"]) == len(bundle.splits["test"])
    for c in data["conversations"]:
        assert len(c["persons"]) == 1 and len(c["segments"]) == 5
        (x,) = c["samples"]
        assert x["at"] is None and x["scope"] is None


def test_m3ed_utterances_group_by_dialogue(tmp_path):
    """M3ED (utterance protocol): the windows of a dialogue's utterances land on one A/B grid."""
    fx = fw.write_m3ed_pickle(tmp_path / "m3ed.pkl", lengths={"train": [3], "valid": [2], "test": [4, 6]})
    fw.write_m3ed_annotation(tmp_path / "annotation.json", fx)
    cfg = DataConfig(m3ed_protocol="utterance", max_utterances=3)
    bundle = load_dataset(tmp_path / "m3ed.pkl", data_cfg=cfg, m3ed_protocol="utterance")
    data = page_data(bundle, "test", records_for(bundle.splits["test"]))
    assert [c["name"] for c in data["conversations"]] == fx["splits"]["test"]
    for c in data["conversations"]:
        speakers = fx["speakers"][c["name"]]
        assert c["persons"] == ["A", "B"] and len(c["segments"]) == len(speakers)
        assert [x["at"] for x in c["samples"]] == [["AB".index(who), t] for t, who in enumerate(speakers)]
        assert all(c["cells"]["AB".index(who)][t] & TEXT for t, who in enumerate(speakers))


def test_synthetic_scene_per_sample_and_the_split_figures(run):
    """The embedded benchmark: a conversation per sample, its grid the scene, the target's cell
    holding the predictions file's numbers; the figures are those of metrics.report."""
    store, preds = run["store"], run["preds"]
    threshold = preds[0]["threshold"]
    data = page_data(run["bundle"], "test", preds)
    assert data["threshold"] == threshold and isinstance(threshold, float)
    assert [c["name"] for c in data["conversations"]] == store.ids
    for i, c in enumerate(data["conversations"]):
        (x,) = c["samples"]
        assert np.array(c["cells"]).shape == tuple(store.grid[i])
        assert x["at"] == store.target[i].tolist()
        assert x["probs"] == list(preds[i]["probs"].values())
    probs = np.array([list(r["probs"].values()) for r in preds])
    want = report(store.labels, probs, threshold, store.role, store.label_names)
    got = data["summary"]
    for part, key in (("all", "overall"), ("speaker", "speaker"), ("non-speaker", "nonspeaker")):
        assert got["parts"][part]["n"] == want[key]["n"]
        assert got["parts"][part]["micro_f1"] == pytest.approx(want[key]["micro_f1"])
    for name in store.label_names:
        assert got["per_label"][name]["f1"] == pytest.approx(want["per_label"][name]["f1"])


def test_a_role_none_of_the_samples_has_gets_no_figures(run):
    """Figures over speaker targets alone (an import's labelled table has no other): the non-speaker
    part is ``n`` 0 alone, as metrics.report's; the page's data held 0.0 for each of its figures,
    which the page showed as "–" and a script reading the data as scores."""
    from ramer.view import summary

    store, preds = run["store"], run["preds"]
    speakers = {i: preds[i] for i in range(len(store)) if store.role[i] == 1}
    got = summary(store, speakers, list(store.label_names))["parts"]
    assert got["non-speaker"] == {"n": 0} and got["speaker"]["n"] == len(speakers) > 0
    assert got["speaker"]["micro_f1"] == got["all"]["micro_f1"]


def test_a_run_with_an_extra_missing_rate_says_its_figures_are_not_its_test_line(tmp_path, capsys):
    """view scores the data as it is (as predict does), not with the run's data.missing_rate, which
    ramer eval applies: the page and a note say so, where the rate applies to the split."""
    cfg = tiny_cfg(extra=["train.epochs=1", "data.missing_rate=0.5", "data.missing_at=test"])
    Recipe(cfg, tmp_path / "run", bundle=generate(cfg.data.synthetic)).run()
    said = "the run scores its test split with data.missing_rate 0.5 (missing_at test), as ramer eval does; this page"
    for split, told in (("test", True), ("valid", False)):
        page = tmp_path / f"{split}.html"
        assert main(["view", str(tmp_path / "run"), "--split", split, "--out", str(page)]) == 0
        assert (f"note: {said}" in capsys.readouterr().err) == told
        assert (f'"figures_aside":"{said}' in page.read_text()) == told, split


def test_predictions_file_carries_the_threshold(run):
    assert all(line["threshold"] == run["preds"][0]["threshold"] for line in run["preds"])
    store = run["store"]
    per_label = np.linspace(0.2, 0.6, len(store.label_names))
    probs = np.full((len(store), len(per_label)), 0.5)
    rec = prediction_records(store, probs, decide(probs, per_label), per_label)[0]
    assert rec["threshold"] == dict(zip(store.label_names, per_label.tolist()))
    assert rec["labels"] == [n for n, t in zip(store.label_names, per_label) if 0.5 > t]


def test_page_embeds_the_data_so_no_text_closes_the_script(tmp_path):
    store = random_store(n=3)
    store.ids[1] = "</script><script>alert(1)</script>"
    bundle = DataBundle({"test": store}, store.label_names, "native", "<memory>")
    data = page_data(bundle, "test", records_for(store), title="<b>t</b> __DATA__")
    page = render_page(data)
    assert page.count("</script>") == 2 and "<script>alert" not in page and "<b>t</b>" not in page
    assert "<title>&lt;b&gt;t&lt;/b&gt; __DATA__</title>" in page
    blob = page.split('<script type="application/json" id="data">')[1].split("</script>")[0]
    assert "<" not in blob and ">" not in blob and json.loads(blob) == json.loads(json.dumps(data))


def test_a_lone_surrogate_in_a_name_or_the_title_still_writes_the_page(tmp_path):
    """A label "ca\\udc80lm" (a JSON escape a meta.json may hold) and a title from a file name of
    bytes that are not UTF-8: the page had no UTF-8 form and was not written (UnicodeEncodeError)."""
    store = random_store(n=3)
    names = ("ca\udc80lm", *store.label_names[1:])
    store.label_names = names
    bundle = DataBundle({"test": store}, names, "native", "<memory>")
    data = page_data(bundle, "test", records_for(store), title="p\udcff.jsonl")
    path = tmp_path / "page.html"
    atomic_write_text(path, render_page(data))
    page = path.read_text(encoding="utf-8")
    assert "<title>p\\udcff.jsonl</title>" in page
    blob = page.split('<script type="application/json" id="data">')[1].split("</script>")[0]
    assert json.loads(blob) == json.loads(json.dumps(data)) and "ca\\udc80lm" in blob


# ------------------------------------------------------------------------------------ CLI errors
def test_cli_errors_name_the_file(run, tmp_path, capsys):
    root, store = run["root"], run["store"]
    out = str(tmp_path / "v.html")

    def error(*argv) -> str:
        assert main(["view", *argv, "--out", out]) == 2
        return capsys.readouterr().err

    assert "nowhere" in error(str(tmp_path / "nowhere"))
    assert "give RUN_DIR" in error()
    assert main(["view", str(root / "run"), "--out", str(tmp_path / "page.txt")]) == 2  # a name of another format
    assert "ramer view writes an HTML page, not a '.txt' file" in capsys.readouterr().err
    assert not (tmp_path / "page.txt").exists()
    assert "needs --data" in error("--preds", str(root / "preds.jsonl"))
    data = tmp_path / "synth"
    generate(tiny_cfg().data.synthetic).save(data)
    bad = tmp_path / "bad.jsonl"
    bad.write_text((root / "preds.jsonl").read_text().splitlines()[0] + "\n{not json\n")
    assert f"{bad}: line 2: not JSON" in error("--preds", str(bad), "--data", str(data))
    assert f"{tmp_path / 'none.jsonl'}: predictions file not found" in error(
        "--preds", str(tmp_path / "none.jsonl"), "--data", str(data)
    )
    line = json.loads((root / "preds.jsonl").read_text().splitlines()[0])
    bad.write_text(json.dumps({**line, "id": "someone-else"}) + "\n")
    assert f"{bad}: sample id 'someone-else' is not in split 'test'" in error("--preds", str(bad), "--data", str(data))
    bad.write_text(json.dumps({**line, "probs": {"x": 0.5}}) + "\n")
    assert f"{bad}: line 1: labels ['x'] differ" in error("--preds", str(bad), "--data", str(data))
    for threshold in ("0.5", 1.5, {"x": 0.5}, True):  # the page's script would fail on it, the page blank
        bad.write_text(json.dumps({**line, "threshold": threshold}) + "\n")
        assert f"{bad}: line 1: 'threshold' must be a number in [0, 1]" in error(
            "--preds", str(bad), "--data", str(data)
        )
    first = next(iter(line["probs"]))
    for labels in ([first, first], [["x"]]):  # a label twice (a page of millions of one label), or not a name
        bad.write_text(json.dumps({**line, "labels": labels}) + "\n")
        assert f"{bad}: line 1: 'labels' " in error("--preds", str(bad), "--data", str(data))
    # the same ids, of other samples (the generator at another seed): not shown as this data's
    role = {"speaker": "nonspeaker", "nonspeaker": "speaker"}[line["role"]]
    target = {**line["target"], "person": line["target"]["person"] + 1}
    for key, value in (("role", role), ("target", target)):
        bad.write_text(json.dumps({**line, key: value}) + "\n")
        expected = (
            f"{bad}: sample '{line['id']}' has {key} {json.dumps(value)} there and {json.dumps(line[key])} in the data"
        )
        assert expected in error("--preds", str(bad), "--data", str(data))
    assert "no split 'nope'" in error("--preds", str(root / "preds.jsonl"), "--data", str(data), "--split", "nope")
    # the same file, as written, makes the same page as predicting now; the layout may be named
    assert main(["view", "--preds", str(root / "preds.jsonl"), "--data", str(data), "--out", out]) == 0
    assert (
        main(
            [
                "view",
                "--preds",
                str(root / "preds.jsonl"),
                "--data",
                str(data),
                "--set",
                "data.format=native",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert "synth/anno.json: file not found (a MEmoR release folder holds" in error(
        "--preds", str(root / "preds.jsonl"), "--data", str(data), "--set", "data.format=memor"
    )
    assert len(read_predictions(root / "preds.jsonl", store.label_names)) == len(store)


PRED_LINE = {"id": "s1", "probs": {"a": 0.7, "b": 0.2}, "labels": ["a"]}


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [{**PRED_LINE, "probs": {"a": 1.5, "b": 0.2}}],
            "line 1: 'probs' must map each label to a probability in [0, 1]",
        ),
        ([PRED_LINE, {**PRED_LINE, "labels": []}], "line 2: sample id 's1' appears twice"),
        ([], "holds no predictions (an empty file)"),
    ],
    ids=["prob-above-1", "duplicate-id", "empty"],
)
def test_a_bad_predictions_file_is_one_line_naming_it(lines, message, tmp_path):
    """A probability above 1, one sample twice (which of its decisions would the page show?) or a
    file with no line: each refused by one line naming the file, not read as predictions."""
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps(PRED_LINE) + "\n")
    assert read_predictions(path, ("a", "b")) == [PRED_LINE]  # the good line alone is read
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(RamerError) as e:
        read_predictions(path, ("a", "b"))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_a_predictions_file_an_editor_saved_with_a_bom_is_read(run, tmp_path, capsys):
    """A UTF-8 byte-order mark before the first line (Windows' Notepad) is skipped, as ``data import``
    skips one in a table: not "line 1: not JSON"."""
    root, store = run["root"], run["store"]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (root / "preds.jsonl").read_bytes())
    assert read_predictions(bom, store.label_names) == run["preds"]
    data = tmp_path / "synth"
    generate(tiny_cfg().data.synthetic).save(data)
    assert main(["view", "--preds", str(bom), "--data", str(data), "--out", str(tmp_path / "v.html")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'v.html'} (")


def test_a_predictions_file_with_run_dir_is_shown_with_its_own_threshold_and_name(run, tmp_path, capsys):
    """``view RUN_DIR --preds FILE``: the run gives the data; the title, the threshold and the decisions
    are the file's (predictions of another run, at another threshold); the flags of predicting now
    are refused, since nothing is predicted."""
    root = run["root"]
    lines = [json.loads(x) for x in (root / "preds.jsonl").read_text().splitlines()]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**x, "threshold": 0.125}) + "\n" for x in lines))
    out = tmp_path / "v.html"
    assert main(["view", str(root / "run"), "--preds", str(other), "--out", str(out)]) == 0
    blob = out.read_text().split('<script type="application/json" id="data">')[1].split("</script>")[0]
    data = json.loads(blob)
    assert data["threshold"] == 0.125 and data["title"].startswith(f"{other} on ")
    for flags in (["--device", "cpu"], ["--precision", "bf16"], ["--workers", "2"]):
        assert main(["view", str(root / "run"), "--preds", str(other), "--out", str(out), *flags]) == 2
        assert (
            f"{flags[0]}: for predictions made now from RUN_DIR; --preds {other} is shown as it is"
            in capsys.readouterr().err
        )


# ------------------------------------------------------------------------------------ in a browser
def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="module")
def browser():
    if chromium() is None:
        pytest.skip(NEEDS_CHROMIUM)
    sync_api = pytest.importorskip("playwright.sync_api", reason=NEEDS_PLAYWRIGHT)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium())
        yield b
        b.close()


def open_page(browser, path: Path):
    """The page at ``path`` and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    return page, errors


def pick(page, name: str) -> None:
    page.fill("#search", name)
    page.locator("#convs button", has_text=name).first.click()


def test_page_loads_without_console_errors(browser, run):
    page, errors = open_page(browser, run["root"] / "scenes.html")
    assert page.locator("#convs li").count() == len(run["store"])
    assert page.locator("#grid td.cell").count() > 0
    page.locator("#grid td.cell[data-sample]").first.click()
    page.hover("#grid tbody tr >> nth=0")
    assert errors == []
    page.close()


def test_a_conversation_shows_its_persons_and_segments(browser, run):
    page, errors = open_page(browser, run["root"] / "scenes.html")
    store = run["store"]
    for i in (3, 17):
        pick(page, store.ids[i])
        P, S = (int(v) for v in store.grid[i])
        assert page.locator("#grid tbody tr").count() == P
        assert page.locator("#grid thead th").count() == S + 1  # plus the person column
        assert page.locator("#grid tbody tr >> nth=0").locator("td").count() == S
    assert errors == []
    page.close()


def test_listener_cells_show_no_text_and_no_audio(browser, run):
    """The targets that the data marks non-speaker are drawn as listeners, with text and audio
    absent (and a speaker target has its text)."""
    page, errors = open_page(browser, run["root"] / "scenes.html")
    store = run["store"]
    listeners = [i for i in range(len(store)) if store.role[i] == 0][:4]
    speakers = [i for i in range(len(store)) if store.role[i] == 1][:2]
    assert listeners and speakers
    for i in listeners + speakers:
        pick(page, store.ids[i])
        p, s = store.target[i]
        td = page.locator(f'#grid td[data-p="{p}"][data-s="{s}"]')
        on = {m: td.locator(f'.mod.on[data-m="{m}"]').count() for m in ("text", "audio")}
        if store.role[i] == 0:
            assert td.get_attribute("data-role") == "listener" and on == {"text": 0, "audio": 0}
        else:
            assert td.get_attribute("data-role") == "speaker" and on["text"] == 1
        for cell in page.locator('#grid td[data-role="listener"]').all():
            assert cell.locator('.mod.on[data-m="text"], .mod.on[data-m="audio"]').count() == 0
    assert errors == []
    page.close()


def test_clicking_a_cell_shows_the_predictions_file(browser, run):
    page, errors = open_page(browser, run["root"] / "scenes.html")
    store, preds = run["store"], run["preds"]
    for i in (0, 5, 11):
        pick(page, store.ids[i])
        p, s = store.target[i]
        page.click(f'#grid td[data-p="{p}"][data-s="{s}"]')
        section = page.locator(f'#detail section.sample[data-sample="{store.ids[i]}"]')
        shown = {
            row.get_attribute("data-label"): float(row.locator("td.prob").inner_text())
            for row in section.locator("tbody tr").all()
        }
        assert set(shown) == set(store.label_names)
        for name, prob in preds[i]["probs"].items():
            assert abs(shown[name] - prob) <= 0.0005 + 1e-9, (store.ids[i], name)
        assert section.locator("td.thr").first.inner_text() == f"{preds[i]['threshold']:.2f}"
        predicted = [
            r.get_attribute("data-label")
            for r in section.locator("tbody tr").all()
            if r.locator("td.is-pred").inner_text()
        ]
        assert sorted(predicted) == sorted(preds[i]["labels"])
    assert errors == []
    page.close()


def test_search_filters_the_list(browser, run):
    page, errors = open_page(browser, run["root"] / "scenes.html")
    ids = run["store"].ids
    page.fill("#search", ids[12][-5:])
    assert page.locator("#convs button").all_inner_texts()[0].startswith(ids[12])
    assert page.locator("#convs li").count() == sum(ids[12][-5:] in x for x in ids)
    page.fill("#search", "no such conversation")
    assert page.locator("#convs li").count() == 0
    assert page.inner_text("#count").startswith("0 of ")
    page.fill("#search", "")
    assert page.locator("#convs li").count() == len(ids)
    assert errors == []
    page.close()


def test_utterance_texts_are_shown_as_text(browser, tmp_path, fake_text):
    """An imported conversation: its whole grid, the speaker's words in the detail panel, and a
    text holding markup shown as characters, never run."""
    rows = base_rows()
    rows[1]["text"] = HOSTILE  # c1, index 1, bob
    bundle = imported(tmp_path, rows)
    html = tmp_path / "scenes.html"
    per_label = np.array([0.3, 0.4, 0.5, 0.6])
    records = records_for(bundle.splits["test"], threshold=per_label)
    html.write_text(render_page(page_data(bundle, "test", records, title=HOSTILE)))
    page, errors = open_page(browser, html)
    pick(page, "c1")
    assert page.locator("#grid tbody tr").count() == 3 and page.locator("#grid thead th").count() == 5
    page.click('#grid td[data-p="1"][data-s="1"]')
    assert page.inner_text("#detail .utt") == f"bob: {HOSTILE}"
    assert page.inner_text("#title") == HOSTILE
    thresholds = {
        r.get_attribute("data-label"): r.locator("td.thr").inner_text() for r in page.locator("#detail tbody tr").all()
    }
    assert thresholds == {n: f"{t:.2f}" for n, t in zip(LABELS, per_label)}  # one per label
    page.click('#grid td[data-p="0"][data-s="1"]')  # ann listens to bob: the same words, no prediction
    assert page.inner_text("#detail .utt") == f"bob: {HOSTILE}"
    assert page.evaluate("window.pwned") is None and page.locator("#detail img").count() == 0
    assert errors == []
    page.close()


def test_a_long_person_name_leaves_the_cells_in_reach(browser, tmp_path, fake_text):
    """The sticky row header of a person named with 400 characters is cut (the whole name in its
    title): it does not cover the grid's cells, which the mouse still reaches."""
    long = "p_" + "y" * 400
    rows = base_rows()
    for row in rows:
        row["speaker"] = long if row["speaker"] == "bob" else row["speaker"]
    bundle = imported(tmp_path, rows)
    html = tmp_path / "scenes.html"
    html.write_text(render_page(page_data(bundle, "test", records_for(bundle.splits["test"]))))
    page, errors = open_page(browser, html)
    pick(page, "c1")
    header = page.locator('#grid th[scope="row"]', has_text="p_yyy")
    assert header.get_attribute("title") == long
    assert header.bounding_box()["width"] < 400
    page.hover('#grid td[data-p="1"][data-s="1"]', timeout=5000)  # a header over it: "intercepts pointer events"
    page.click('#grid td[data-p="1"][data-s="1"]', timeout=5000)
    assert page.inner_text("#detail .utt").startswith(f"{long}: ")
    assert errors == []
    page.close()


def test_a_large_split_lists_a_few_hundred_and_draws_one_conversation(browser, tmp_path):
    """3,000 samples: the page lists the first 300 conversations (the search reaches the others)
    and draws only the chosen conversation's grid."""
    store = random_store(n=3000, persons=(2, 6), segments=(3, 9), seed=1)
    bundle = DataBundle({"test": store}, store.label_names, "native", "<memory>")
    html = tmp_path / "big.html"
    html.write_text(render_page(page_data(bundle, "test", records_for(store, threshold="argmax"))))
    page, errors = open_page(browser, html)
    assert "threshold arg-max" in page.inner_text("#about")
    assert page.locator("#convs li").count() == 300
    assert page.inner_text("#count").startswith("3000 of 3000 conversations")
    assert page.locator("#grid tbody tr").count() == int(store.grid[0][0])
    pick(page, "s2999")
    assert page.locator("#grid tbody tr").count() == int(store.grid[2999][0])
    assert errors == []
    page.close()


def test_a_pinned_cell_is_said_and_seen_and_stays_a_table_cell(browser, run):
    """Enter pins a focused cell: assistive technology hears it (aria-current) and the cell keeps
    its table role, so its row and column headers are read with it; focused, pinned, and both
    look unlike each other."""
    page, errors = open_page(browser, run["root"] / "scenes.html")
    cells = page.locator("#grid td.cell:not(.none)")
    first, second = cells.nth(0), cells.nth(1)
    assert first.get_attribute("role") is None and first.get_attribute("aria-current") is None
    style = "(e) => getComputedStyle(e).outlineStyle + ' ' + getComputedStyle(e).outlineColor"
    first.focus()
    focused = first.evaluate(style)
    page.keyboard.press("Enter")
    assert first.get_attribute("aria-current") == "true"
    pinned_and_focused = first.evaluate(style)
    second.focus()
    assert len({focused, pinned_and_focused, first.evaluate(style)}) == 3  # focused, pinned and focused, pinned
    page.keyboard.press("Enter")
    assert (first.get_attribute("aria-current"), second.get_attribute("aria-current")) == (None, "true")
    page.keyboard.press("Enter")
    assert second.get_attribute("aria-current") is None
    assert errors == []
    page.close()


def test_annotated_outlines_past_the_palette_are_dashed(browser, run):
    """Labels 8 and 9 share the colours of labels 1 and 2; their annotated chips' outlines are
    dashed, so an outline alone still tells them apart."""
    page, errors = open_page(browser, run["root"] / "scenes.html")
    store = run["store"]
    names = list(store.label_names)
    i = next(i for i in range(len(store)) if store.labels[i][7:].any() and store.labels[i][:7].any())
    pick(page, store.ids[i])
    styles = page.evaluate(
        """() => Array.from(document.querySelectorAll('#grid .chip.gold')).map(
             (c) => [c.dataset.label, getComputedStyle(c).borderTopStyle])"""
    )
    seen = dict(styles)
    assert seen, "no annotated chip drawn"
    for label, style in seen.items():
        assert style == ("dashed" if names.index(label) >= 7 else "solid"), (label, style)
    assert any(names.index(label) >= 7 for label in seen)
    assert errors == []
    page.close()


def test_a_table_name_the_file_names_cannot_hold_is_not_called_gone():
    """Under LC_ALL=C (file names in ASCII), a run imported from 'talk ü.csv' was told 'the imported
    table is gone' while the file was there: the note says the locale cannot name it."""
    import os
    import subprocess
    import sys

    script = (
        "import types; from ramer.view import _table; "
        "info = {'source_files': ['/data/talk \\u00fc.csv'], 'source_sha256': 'ab'}; "
        "print(ascii(_table(types.SimpleNamespace(info=info))[1]))"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "this system's file names (ascii) cannot name the imported table" in r.stdout and "gone" not in r.stdout
