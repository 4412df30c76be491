"""What a newcomer's slip on the command line is told: a mistyped flag of a command is that
command's error, with the flag or the config key it likely meant; a command to paste in an error
is quoted as the ``next:`` lines are; a run folder that is not there, a dataset given as the run and
``--labels`` written with the labels column's ``;`` are each named for what they are."""

import shlex

import pytest
from fixtures_writers import write_memor
from test_killed import killed_before_its_first_state
from test_recipe import tiny_cfg

from ramer.cli import main
from ramer.config import dump_config


def refused(capsys, argv: list[str]) -> str:
    """The stderr of ``ramer ARGV``, which must exit 2 as argparse does."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, usage, hint",
    [
        (["train", "--date", "data/talk"], "usage: ramer train ", "--date data/talk; did you mean --data?"),
        (["train", "--epochs", "2"], "usage: ramer train ", "--epochs 2; use --set train.epochs=2"),
        (["train", "--epoch=3"], "usage: ramer train ", "--epoch=3; use --set train.epochs=3"),
        (["train", "--lr", "1 e-3"], "usage: ramer train ", "use --set 'train.lr=1 e-3'"),
        (
            ["data", "import", "talk.csv", "--out", "ds", "--lables", "x"],
            "usage: ramer data import ",
            "--lables x; did you mean --labels?",
        ),
        (["data", "synth", "--out", "ds", "--n-train", "9"], "usage: ramer data synth ", "data.synthetic.n_train=9"),
        (["data", "info", "ds", "--epochs", "2"], "usage: ramer data info ", "arguments: --epochs 2\n"),
    ],
)
def test_a_mistyped_flag_is_the_commands_error_with_what_it_meant(tmp_path, capsys, monkeypatch, argv, usage, hint):
    """argparse left an unknown flag to the top-level parser (``usage: ramer [-h] [--version]
    COMMAND ...``, no hint); a command whose --set takes only loader options (data info) names no
    train.* key."""
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, argv)
    assert err.startswith(usage), err
    assert f"{usage.removeprefix('usage: ').strip()}: error: unrecognized arguments: " in err
    assert hint in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_flag_for_the_top_level_parser_stays_its_error(capsys):
    err = refused(capsys, ["--bogus", "train"])
    assert err.startswith("usage: ramer [-h] [--version] COMMAND ...") and "unrecognized arguments: --bogus" in err


def test_the_resume_hint_of_a_held_out_folder_pastes(tmp_path, capsys):
    """``--out`` a folder holding a run: the ``--resume`` it names is quoted, as the ``next:``
    lines are, so that a folder name with a space pastes as one argument."""
    run = tmp_path / "my run"
    run.mkdir()
    (run / "train_state.pt").write_bytes(b"")
    assert main(["train", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run} already holds a run; use --resume "), err  # the path itself as it is
    assert shlex.split(err.split("; use ")[1].split(" or another --out")[0]) == ["--resume", str(run)]


def test_the_train_again_hint_of_a_run_without_a_state_pastes(tmp_path, capsys):
    """A run killed before its first state: the command that trains it again is quoted."""
    run = killed_before_its_first_state(tmp_path / "my run")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    command = err[err.index("(ramer train --config ") + 1 :].splitlines()[0].removesuffix(")")
    assert shlex.split(command) == ["ramer", "train", "--config", str(run / "config.yaml"), "--out", str(run)]


def test_the_tune_hint_of_a_bench_without_a_tuned_config_pastes(tmp_path, capsys):
    tuned = tmp_path / "my tuned"
    tuned.mkdir()
    assert main(["bench", "--models", "ramer", "--tuned", str(tuned), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    command = err[err.index("make it with: ") :].split(": ", 1)[1].split(", or bench with")[0]
    assert shlex.split(command) == ["ramer", "tune", "--model", "ramer", "--out", str(tuned / "ramer")]


def test_the_convert_hint_of_a_folder_converted_otherwise_pastes(tmp_path, capsys):
    """A converted folder trained with another loader option: the convert command it names takes the
    source's path as one argument."""
    source = tmp_path / "my memor"
    write_memor(source)
    folder = tmp_path / "fine"
    assert main(["data", "convert", str(source), "--labels", "fine_grained", "--out", str(folder)]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(folder), "--set", "data.labels=primary", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    command = err[err.index("(ramer data convert ") + 1 :].splitlines()[0].removesuffix(")")
    assert shlex.split(command) == ["ramer", "data", "convert", str(source), "--labels", "primary", "--out", "DIR"]


def test_resume_of_a_folder_that_is_not_there_names_the_folder(tmp_path, capsys):
    """Not ``early/config.yaml: not found``: the folder itself is what is missing. A folder that is
    there without its config keeps saying so."""
    assert main(["train", "--resume", str(tmp_path / "early")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'early'}: no such run folder; nothing to resume\n"
    (tmp_path / "early").mkdir()
    assert main(["train", "--resume", str(tmp_path / "early")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'early' / 'config.yaml'}: not found; cannot resume")
    # a file, a dataset, a folder a killed command left only its lock file in: said what they are, not
    # 'FILE/config.yaml: not found' (the last: nothing to restore, train anew)
    (tmp_path / "file").write_text("x")
    assert main(["data", "synth", "--out", str(tmp_path / "ds"), "--set", "n_train=8", "--set", "n_valid=4"]) == 0
    (tmp_path / "early" / ".ramer.lock").write_text("")
    for folder, said in (
        ("file", "is a file, not a run folder (what ramer train --out writes)"),
        ("ds", "is a dataset (meta.json), not a run folder (what ramer train --out writes)"),
        ("early", "holds nothing of a run (stopped before its config was written); train it anew"),
    ):
        capsys.readouterr()
        assert main(["train", "--resume", str(tmp_path / folder)]) == 2
        assert capsys.readouterr().err == f"error: {tmp_path / folder}: {said}\n"


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_dataset_folder_given_as_the_run_is_named_a_dataset(tmp_path, capsys, command):
    ds = tmp_path / "talk"
    sizes = ("n_train=8", "n_valid=4", "n_test=4")
    assert main(["data", "synth", "--out", str(ds), *(x for s in sizes for x in ("--set", s))]) == 0
    capsys.readouterr()
    extra = ["--out", str(tmp_path / "p.jsonl")] if command == "predict" else []
    assert main([command, str(ds), *extra]) == 2
    err = capsys.readouterr().err
    said = "a dataset folder (it holds meta.json), not a run; give a run folder, and the data with --data"
    assert err == f"error: {ds}: {said}\n"
    assert not (tmp_path / "p.jsonl").exists()


def test_labels_given_with_semicolons_are_refused_before_the_table_is_read(tmp_path, capsys):
    """``--labels "anger;joy;neutral"`` was one label named 'anger;joy;neutral', and the import
    failed at the first labelled row; now it is refused at once, with the flag as written to paste.
    (The labels column separates names by ';', so a name cannot hold one.)"""
    table = tmp_path / "talk.csv"  # not there: it is not read
    out = tmp_path / "my data"
    assert main(["data", "import", str(table), "--out", str(out), "--labels", "anger;joy;neutral"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --labels is comma-separated (got 'anger;joy;neutral'): --labels anger,joy,neutral\n"
    assert not out.exists()
    assert main(["data", "import", str(table), "--out", str(out), "--labels", "very happy;sad"]) == 2
    err = capsys.readouterr().err
    assert shlex.split(err.split("): ")[1]) == ["--labels", "very happy,sad"]


@pytest.mark.parametrize("model", ["late_fusion", "br", "ramer"])
def test_ablations_set_for_a_model_they_do_not_reach_are_noted(tmp_path, capsys, model):
    """``model.ablations`` switch parts of RAMer off: another model trained with them trained as
    without them, and wrote them into its config, without a word (a researcher's walk)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(tiny_cfg(extra=["train.epochs=1"])))
    argv = ["train", "--config", str(config), "--model", model, "--set", "model.ablations=[no_shuffle]"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    note = f"note: model.ablations has no effect on model '{model}': they switch parts of RAMer off"
    assert (note in capsys.readouterr().err) == (model != "ramer")


def test_a_bench_notes_ablations_a_model_does_not_read_once():
    from conftest import random_store
    from test_degenerate_data import bundle_of

    from ramer.config import build_config
    from ramer.train import inputs

    sets = ["model.ablations=[no_shuffle]"]
    configs = [build_config(None, [f"model.name={m}", *sets]) for m in ("ramer", "hhmpn", "cc")]
    notes = [n for n in inputs.bench_notes(bundle_of(random_store(n=16)), configs, "multi_label") if "ablations" in n]
    said = "they switch parts of RAMer off (ramer train --model ramer-<ablation>)"
    assert notes == [f"model.ablations has no effect on model '{m}': {said}" for m in ("hhmpn", "cc")]


def test_a_flags_control_characters_are_written_out_in_its_error(capsys):
    """argparse's line repeats the arguments given, and the hint repeats the value: ESC reached the
    terminal as a command, as in no other error line."""
    err = refused(capsys, ["train", "--epochs", "2\x1b]0;t\x07"])
    assert "\x1b" not in err and "\x07" not in err
    assert "unrecognized arguments: --epochs 2\\x1b]0;t\\x07; use --set $'train.epochs=2\\x1b]0;t\\x07'" in err


def test_a_rank_in_the_environment_that_is_no_number_is_one_line(tmp_path, capsys, monkeypatch):
    """RANK (torchrun's) decides which process holds the run folder: 'abc' there was int()'s traceback."""
    monkeypatch.setenv("RANK", "abc")
    assert main(["train", "--out", str(tmp_path / "run")]) == 2
    said = "RANK='abc' in the environment: not a whole number (torchrun sets it for each process it starts; unset"
    assert capsys.readouterr().err.startswith(f"error: {said}")
    assert not (tmp_path / "run").exists()


def test_data_synth_refuses_a_key_outside_data_synthetic_naming_the_key_given(tmp_path, capsys):
    """``--set data.seed=3`` was prefixed into 'data.synthetic.data', an unknown key the user never typed."""
    for key in ("data.seed", "train.epochs"):
        assert main(["data", "synth", "--out", str(tmp_path / "ds"), "--set", f"{key}=3"]) == 2
        assert capsys.readouterr().err == (
            f"error: --set {key}: data synth takes the keys of data.synthetic (n_train=1000, or "
            "data.synthetic.n_train=1000), not other config keys\n"
        )
    assert not (tmp_path / "ds").exists()
