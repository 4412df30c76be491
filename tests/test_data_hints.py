"""Hints a newcomer's data needs: a config error quotes the bad value and names the default config
as the default, the personality file's problems name the row, the name and the cell, and a label
of a row or two whose name is close to another label's is noted as a likely typo, labels in another
order say the order to import with, and data info says none where no value was replaced."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from test_conversations import base_rows, write_table

import ramer
from ramer.api import load_data_for
from ramer.cli import main
from ramer.config import build_config, resolve_config
from ramer.data.conversations import import_conversations, summary_lines
from ramer.data.info import format_info_table
from ramer.errors import RamerError


# ------------------------------------------------------------------------------------ config errors
def test_a_config_error_quotes_the_value_and_names_the_default_config_as_such(tmp_path, capsys):
    """``ramer train --set train.epochs=two`` without --config: the bundled synthetic.yaml is named
    as the default (the user never chose it) and the value given is quoted."""
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "train.epochs=two"]) == 2
    err = capsys.readouterr().err
    assert (
        "error: invalid config (the default config synthetic.yaml + --set): 'train.epochs': Input should be a "
        "valid integer, unable to parse string as an integer (got 'two')"
    ) in err, err
    assert not (tmp_path / "run").exists()


def test_a_config_error_names_a_bundled_config_and_a_file_and_cuts_a_long_value(tmp_path):
    with pytest.raises(RamerError, match=r"^invalid config \(the bundled config mosei\.yaml \+ --set\): "):
        build_config(resolve_config("mosei"), ["train.precision=fp16"])
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  precision: " + "x" * 5000 + "\n")
    with pytest.raises(RamerError) as e:
        build_config(mine)
    assert str(e.value) == (
        f"invalid config ({mine}): 'train.precision': Input should be 'fp32' or 'bf16' (got '{'x' * 59}...)"
    )


# ------------------------------------------------------------------------------------ personality
def test_personality_rows_that_name_nobody_are_named(tmp_path, fake_text):
    """A misspelt name in the traits file: the summary says which row names nobody (one row: 'row
    names'), beside the person who then has no row."""
    src = write_table(tmp_path / "talk.csv", base_rows())
    pers = tmp_path / "traits.csv"
    everyone = "ann bob cat dan eve fay gus hal ivy".split()  # jon is spelt Jonn
    pers.write_text("person,open\n" + "".join(f"{p},1\n" for p in everyone) + "Jonn,2\n")
    lines = summary_lines(import_conversations(src, tmp_path / "ds", personality=pers))
    (line,) = [ln for ln in lines if ln.startswith("personality: ")]
    assert line == "personality: 1 person has no row (no personality): jon; 1 row names nobody in the table: Jonn"
    pers.write_text("person,open\n" + "".join(f"{p},1\n" for p in everyone) + "".join(f"x{k},2\n" for k in range(7)))
    lines = summary_lines(import_conversations(src, tmp_path / "ds", personality=pers))
    (line,) = [ln for ln in lines if ln.startswith("personality: ")]
    assert line.endswith("7 rows name nobody in the table: x0, x1, x2, x3, x4 and 2 more"), line


def test_a_trait_that_is_not_a_number_is_named_by_column_and_value(tmp_path, fake_text):
    src = write_table(tmp_path / "talk.csv", base_rows())
    pers = tmp_path / "traits.csv"
    pers.write_text("person,openness,calm\nann,0.5,1\nbob,1,2\ncid,x,3\n")
    with pytest.raises(RamerError) as e:
        import_conversations(src, tmp_path / "ds", personality=pers)
    assert str(e.value) == f"{pers}: row 4: the traits of 'cid' are not all numbers: column 'openness' holds 'x'"


# ------------------------------------------------------------------------------------ label typos
def test_a_rare_label_close_to_another_is_noted_as_a_typo(tmp_path, fake_text, capsys):
    """One row reads 'jyo' beside two of 'joy' (letters swapped), one 'sadnes' beside three of
    'sadness' (a letter left out): each imported as a label of its own, with a note that names it,
    its row and the label it is close to. A rare label far from every other name (a real
    rare emotion) gets none, and neither does a close name on as many rows as the other."""
    rows = base_rows()
    rows[4]["labels"] = "jyo"  # row 6 of the file (the header is row 1)
    rows[5]["labels"] = "joy;fear"
    rows[8]["labels"] = "sadnes"  # row 10
    table = write_table(tmp_path / "talk.csv", rows)
    assert main(["data", "import", str(table), "--out", str(tmp_path / "ds")]) == 0
    err = capsys.readouterr().err
    assert (
        "note: label 'jyo' is on 1 row (row 6) and is close to 'joy' (a typo? fix the table, or give --labels "
        "to refuse unknown names)"
    ) in err, err
    assert "note: label 'sadnes' is on 1 row (row 10) and is close to 'sadness' (a typo?" in err, err
    assert "'fear'" not in err
    rows = base_rows()
    for r in rows[:2]:
        r["labels"] = "jyo"  # 2 rows of 'jyo', 2 of 'joy': neither is the odd one out
    table = write_table(tmp_path / "even.csv", rows)
    assert main(["data", "import", str(table), "--out", str(tmp_path / "even")]) == 0
    assert "typo" not in capsys.readouterr().err


def test_personality_of_another_width_names_the_traits_to_import_with(tmp_path, fake_text, capsys, monkeypatch):
    """New data imported with a traits file of another width was refused with 'personality features have
    size 3, the model expects 5', naming neither file nor traits. The error names the data's traits and
    file, the model's (from its own import's meta.json while it is there) and the two ways out."""
    monkeypatch.chdir(tmp_path)
    everyone = "ann bob cat dan eve fay gus hal ivy jon".split()
    five = ["openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism"]
    Path("traits.csv").write_text("person," + ",".join(five) + "\n" + "".join(f"{q},1,2,3,4,5\n" for q in everyone))
    Path("traits3.csv").write_text("person,a,b,c\n" + "".join(f"{q},1,2,3\n" for q in everyone))
    import_conversations(write_table(tmp_path / "talk.csv", base_rows()), "ds", personality="traits.csv")
    assert main(["train", "--model", "br", "--data", "ds", "--out", "run"]) == 0
    plain = write_table(tmp_path / "plain.csv", base_rows(labelled=False))
    import_conversations(plain, "new3", labels=["anger", "joy", "neutral", "sadness"], personality="traits3.csv")
    capsys.readouterr()
    data = "new3/test: personality features have size 3 (the traits a, b, c of traits3.csv), the model expects 5"
    assert main(["predict", "run", "--data", "new3", "--out", "p.jsonl"]) == 2
    assert (
        f"error: {data} ({', '.join(five)}, as ds was imported with): import the table again with --personality "
        "naming a file of these 5 traits, in this order, or without --personality"
    ) in capsys.readouterr().err
    import_conversations(tmp_path / "talk.csv", "lab3", personality="traits3.csv")
    capsys.readouterr()
    assert main(["eval", "run", "--data", "lab3"]) == 2
    assert "lab3/test: personality features have size 3 (the traits a, b, c of traits3.csv), the model expects 5 (" in (
        capsys.readouterr().err
    )
    Path("ds").rename("gone")  # the run's data moved: its model file names the traits
    assert main(["predict", "run", "--data", "new3", "--out", "p.jsonl"]) == 2
    assert f"error: {data} ({', '.join(five)}, as ds was imported with)" in capsys.readouterr().err
    predictor = ramer.load("run")
    predictor.spec = dataclasses.replace(predictor.spec, personality_names=None)  # a file written before it did
    with pytest.raises(RamerError, match="the 5 traits the model was trained with, in their order, or without"):
        predictor.predict(load_data_for(predictor, "new3"))
    import_conversations(plain, "new0", labels=["anger", "joy", "neutral", "sadness"])  # the way out it names
    assert main(["predict", "run", "--data", "new0", "--out", "p.jsonl"]) == 0


def test_personality_traits_in_another_order_are_refused(tmp_path, fake_text, capsys, monkeypatch):
    """A traits file of the model's width with its columns in another order imported and predicted
    without a word, each trait read as another (an audit saw decisions change). The model file records
    the traits of its import, in order; other traits or another order are refused, naming both."""
    monkeypatch.chdir(tmp_path)
    everyone = "ann bob cat dan eve fay gus hal ivy jon".split()
    five = ["openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism"]
    for name, order in (("traits.csv", five), ("reversed.csv", five[::-1])):
        Path(name).write_text("person," + ",".join(order) + "\n" + "".join(f"{q},1,2,3,4,5\n" for q in everyone))
    import_conversations(write_table(tmp_path / "talk.csv", base_rows()), "ds", personality="traits.csv")
    assert main(["train", "--model", "br", "--data", "ds", "--out", "run"]) == 0
    assert ramer.load("run").spec.personality_names == tuple(five)
    plain = write_table(tmp_path / "plain.csv", base_rows(labelled=False))
    labels = ["anger", "joy", "neutral", "sadness"]
    import_conversations(plain, "same", labels=labels, personality="traits.csv")
    import_conversations(plain, "other", labels=labels, personality="reversed.csv")
    capsys.readouterr()
    assert main(["predict", "run", "--data", "same", "--out", "p.jsonl"]) == 0
    assert main(["predict", "run", "--data", "other", "--out", "p.jsonl"]) == 2
    assert (
        f"error: other/test: personality traits {', '.join(five[::-1])} of reversed.csv are not the model's "
        f"{', '.join(five)}, in this order: import the table again with --personality naming a file of these "
        "traits, in this order, or without --personality"
    ) in capsys.readouterr().err
    # a model without personality reads none: its data folder imported again with traits since changes nothing
    import_conversations(tmp_path / "talk.csv", "plain")
    assert main(["train", "--model", "br", "--data", "plain", "--out", "run0"]) == 0
    import_conversations(tmp_path / "talk.csv", "plain", personality="traits.csv")
    assert main(["predict", "run0", "--data", "other", "--out", "p.jsonl"]) == 0


def test_data_imported_otherwise_than_the_runs_is_noted(tmp_path, fake_text, capsys, monkeypatch):
    """New data imported with another --context (other neighbours in each scene), or whose features
    another model or version made, was scored without a word. The model file records its import's
    settings; predict, eval and view say what differs in a note, ramer.api.load_data_for warns, and
    data imported as the run's was, or differing in a modality neither has, gets neither."""
    from ramer.api import OtherImport

    monkeypatch.chdir(tmp_path)
    table = write_table(tmp_path / "talk.csv", base_rows())
    import_conversations(table, "ds")
    assert main(["train", "--model", "br", "--data", "ds", "--out", "run"]) == 0
    assert ramer.load("run").spec.import_settings["context"] == 8
    import_conversations(table, "same")
    import_conversations(table, "near", context=2)
    meta = json.loads(Path("same/meta.json").read_text())
    meta["info"]["conversations"]["features"]["text"] = "another-model (other 2.0), 384-d, speaker only"
    shutil.copytree("same", "other")
    Path("other/meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    for argv in (["predict", "run", "--out", "p.jsonl"], ["eval", "run"]):
        assert main([*argv, "--data", "same"]) == 0
        assert "note: same" not in capsys.readouterr().err
        assert main([*argv, "--data", "near"]) == 0
        assert (
            "note: near: imported with --context 2, the run's data with --context 8: its scenes hold other "
            "neighbours than the model learnt from (import it with --context 8 for the same)"
        ) in capsys.readouterr().err
    assert main(["predict", "run", "--data", "other", "--out", "p.jsonl"]) == 0
    assert "note: other: its text features are 'another-model (other 2.0), 384-d, speaker only', the run's " in (
        capsys.readouterr().err
    )
    predictor = ramer.load("run")
    with pytest.warns(OtherImport, match="near: imported with --context 2"):
        load_data_for(predictor, "near")
    # a modality neither import has (no media: no audio) is not compared, whatever its descriptor says
    meta["info"]["conversations"]["features"]["text"] = json.loads(Path("same/meta.json").read_text())["info"][
        "conversations"
    ]["features"]["text"]
    meta["info"]["conversations"]["features"]["audio"] = "librosa-stats-2 (a later one), 133-d, speaker only"
    Path("other/meta.json").write_text(json.dumps(meta))
    assert main(["predict", "run", "--data", "other", "--out", "p.jsonl"]) == 0
    assert "note: other" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------ labels
def test_labels_in_another_order_say_so_and_how_to_fix_it(tmp_path, fake_text, capsys):
    """Data imported with the model's labels in another order (``--labels joy,anger,...``) is refused
    (each column means another label), and the message gives the order to import it with."""
    import_conversations(write_table(tmp_path / "talk.csv", base_rows()), tmp_path / "ds")
    assert main(["train", "--model", "br", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run")]) == 0
    plain = write_table(tmp_path / "plain.csv", base_rows(labelled=False))
    import_conversations(plain, tmp_path / "new3", labels=["joy", "anger", "neutral", "sadness"])
    capsys.readouterr()
    argv = ["predict", str(tmp_path / "run"), "--data", str(tmp_path / "new3"), "--out", str(tmp_path / "p.jsonl")]
    assert main(argv) == 2
    assert (
        "differ from the model's ['anger', 'joy', 'neutral', 'sadness']: the same labels in another order; "
        "give them in the model's (an import: --labels anger,joy,neutral,sadness)"
    ) in capsys.readouterr().err


def test_fewer_or_more_labels_say_when_importing_with_the_models_fixes_it(tmp_path, fake_text, capsys):
    """Data with fewer labels than the model, or more that no sample carries (an unlabelled import given
    other --labels), was refused with no remedy, where the reordered case named one: importing it again
    with the model's --labels. A label the model lacks that samples carry says no import fixes it."""
    import_conversations(write_table(tmp_path / "talk.csv", base_rows()), tmp_path / "ds")
    assert main(["train", "--model", "br", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run")]) == 0
    plain = write_table(tmp_path / "plain.csv", base_rows(labelled=False))
    fewer = [{**r, "labels": ";".join(x for x in r["labels"].split(";") if x in ("anger", "joy"))} for r in base_rows()]
    more = [{**r, "labels": r["labels"].replace("sadness", "fear")} for r in base_rows()]
    fix = "give the model's labels, in its order (an import: --labels anger,joy,neutral,sadness)"
    include, carries = (
        "; the model's labels include all of these: ",
        "; no sample here carries 'fear', which the model lacks: ",
    )
    for name, table, labels, said in (
        ("sub", plain, ["anger", "joy"], include + fix),
        ("super", plain, ["anger", "fear", "joy", "neutral", "sadness"], carries + fix),
        ("fewer", write_table(tmp_path / "fewer.csv", fewer), None, include + fix),
        (
            "more",
            write_table(tmp_path / "more.csv", more),
            None,
            "; the model has no label 'fear', which samples here carry: score them with a run trained on these labels",
        ),
    ):
        import_conversations(table, tmp_path / name, labels=labels)
        capsys.readouterr()
        for command in (["predict", "--out", str(tmp_path / "p.jsonl")], ["eval"]):
            argv = [command[0], str(tmp_path / "run"), "--data", str(tmp_path / name), *command[1:]]
            if name in ("sub", "super") and command[0] == "eval":
                continue  # eval refuses unlabelled data first
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "differ from the model's ['anger', 'joy', 'neutral', 'sadness']" + said in err, (name, err)


def test_data_info_says_none_where_no_value_was_replaced(tmp_path, capsys):
    """'non-finite text 0, audio 0, visual 0 (replaced by 0)' read as if a native folder's values
    were replaced, where DATA.md says a native folder's non-finite value is an error."""
    sizes = ("n_train=8", "n_valid=4", "n_test=4")
    assert main(["data", "synth", "--out", str(tmp_path / "ds"), *(x for s in sizes for x in ("--set", s))]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "ds")]) == 0
    assert "\nnon-finite    none\n" in capsys.readouterr().out
    info = json.loads(main_info(tmp_path / "ds", capsys))
    info["nonfinite_replaced"] = {"text": 0, "audio": 7, "visual": 0}  # what a MOSEI file's reader replaced
    assert "non-finite    text 0, audio 7, visual 0  (replaced by 0)" in format_info_table(info)


def main_info(path, capsys) -> str:
    assert main(["data", "info", str(path), "--json"]) == 0
    return capsys.readouterr().out
