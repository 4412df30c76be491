"""Values no command can use (an empty flag, a seed or size beyond what torch and numpy take, a
number of more digits than Python reads, a loop of symbolic links) are one line naming the flag or
path, exit 2, before any work: found by a fuzz of every command's flags."""

import os

import pytest

from ramer.cli import main

TINY = ["--set", "train.epochs=1", "--set", "model.hidden=16", "--set", "model.ffn=16", "--set", "model.heads=2"]


def one_line_error(capsys, argv) -> str:
    """Run ``argv``: exit 2 and one line on stderr, no traceback; returns that line."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "", *TINY], "--data: empty; give the data's path"),
        (["train", "--data", " ", *TINY], "--data: empty; give the data's path"),
        (["train", "--model", "", *TINY], "--model: empty; give a model name"),
        (["train", "--out", "", *TINY], "--out: empty; give a folder"),
        (["train", "--resume", ""], "--resume: empty; give the run folder to go on with"),
        (["train", "--nproc", "2", "--data", "", *TINY], "--data: empty; give the data's path"),
        (["demo", "--out", "", *TINY], "--out: empty; give a folder (or leave --out out for runs/demo)"),
        (["tune", "--model", "late_fusion", "--out", "", *TINY], "--out: empty; give a folder (or leave --out out"),
        (["tune", "--model", "late_fusion", "--data", "", *TINY], "--data: empty; give the data's path"),
        (["bench", "--models", "br", "--out", "", *TINY], "--out: empty; give a folder (or leave --out out for runs"),
        (["bench", "--models", "br", "--data", "", *TINY], "--data: empty; give the data's path"),
        (["reproduce", "mosei", "--data", "x.pt", "--out", ""], "--out: empty; give a folder (or leave --out out"),
        (["data", "synth", "--out", ""], "--out: empty; give a folder"),
        (["data", "convert", "x.pt", "--out", ""], "--out: empty; give a folder"),
        (["data", "import", "x.csv", "--out", ""], "--out: empty; give a folder"),
    ],
)
def test_an_empty_flag_is_refused_not_taken_for_the_flag_left_out(argv, message, tmp_path, capsys, monkeypatch):
    """``--data "$UNSET"`` trained on the embedded benchmark, ``--resume ''`` started a new run and
    ``demo --out ''`` wrote its runs into the current folder: the empty value read as no flag (tune's,
    bench's and reproduce's went to their default folder; a data command's wrote into the current
    folder)."""
    monkeypatch.chdir(tmp_path)
    assert one_line_error(capsys, argv).startswith(f"error: {message}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--set", "train.seed=1000000000000000000000000000000"], "'train.seed': Input should be less than"),
        (["train", "--set", f"train.epochs={'9' * 5000}"], "'train.epochs': Unable to parse input string"),
        (["data", "synth", "--set", f"n_train={10**30}"], "'data.synthetic.n_train': Input should be less than"),
        (["data", "synth", "--set", f"text_dim={10**30}"], "'data.synthetic.text_dim': Input should be less than"),
    ],
)
def test_a_number_beyond_what_torch_or_numpy_take_is_refused_by_the_config(argv, message, tmp_path, capsys):
    """A seed past 2**32 overflowed torch's generator, a 5000-digit integer stopped YAML's reader, a
    synthetic size of 10**30 stopped numpy's allocator: each was a traceback."""
    argv = [*argv, "--out", str(tmp_path / "out")]
    assert message in one_line_error(capsys, argv)
    assert not (tmp_path / "out").exists()


def test_a_config_file_with_a_number_of_5000_digits_is_one_line(tmp_path, capsys):
    config = tmp_path / "big.yaml"
    config.write_text(f"train:\n  epochs: {'9' * 5000}\n")
    line = one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "out")])
    assert line.startswith(f"error: config file {config} is not valid YAML: a number of more than ")


def test_a_config_value_yaml_cannot_convert_is_named_for_what_it_is(tmp_path, capsys):
    """A date with month 13 is a ValueError of YAML's constructor too, which was said to be a number
    of more than 4300 digits."""
    config = tmp_path / "date.yaml"
    config.write_text("train:\n  epochs: 2020-13-45\n")
    line = one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "out")])
    assert line == f"error: config file {config} is not valid YAML: a value it cannot read (month must be in 1..12)"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_a_loop_of_symbolic_links_is_named(tmp_path, capsys, monkeypatch):
    """A written file's path that loops (``a -> b -> a``) gave Path.resolve's RuntimeError."""
    monkeypatch.chdir(tmp_path)
    os.symlink("loop2", "loop1")
    os.symlink("loop1", "loop2")
    assert main(["data", "synth", "--out", "syn", "--set", "n_train=8", "--set", "n_valid=4", "--set", "n_test=4"]) == 0
    capsys.readouterr()
    for argv in (
        ["view", "--preds", "loop1", "--data", "syn", "--out", "v.html"],
        ["data", "convert", "loop1", "--out", "conv"],
        ["view", "--preds", "p.jsonl", "--data", "syn", "--out", "loop1"],
    ):
        assert one_line_error(capsys, argv) == "error: loop1: a loop of symbolic links", argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop1", "loop2", "syn"]


def test_resume_of_a_run_whose_config_was_removed_says_what_the_folder_holds(tmp_path, capsys):
    """The folder holds the run's model and training state but no config.yaml: not a run "stopped as
    it began, so nothing of it is kept" (what the error said)."""
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), *TINY, "--set", "data.synthetic.n_train=40"]
    argv += ["--set", "data.synthetic.n_valid=10", "--set", "data.synthetic.n_test=10"]
    assert main(argv) == 0
    (run / "config.yaml").unlink()
    capsys.readouterr()
    line = one_line_error(capsys, ["train", "--resume", str(run)])
    assert line == (
        f"error: {run / 'config.yaml'}: not found; cannot resume: the folder holds the run's model.safetensors and "
        "train_state.pt, but not the config they were made with"
    )


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A small dataset folder (``ramer data synth``)."""
    data = tmp_path_factory.mktemp("data") / "ds"
    argv = ["data", "synth", "--out", str(data), "--set", "n_train=16", "--set", "n_valid=8", "--set", "n_test=8"]
    assert main(argv) == 0
    return str(data)


GENERATOR = "--set data.synthetic.n_train: a setting of the embedded benchmark's generator, and the data is read from"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--data", "{data}", "--model", "br", "--set", "model.name=mult"],
            "--set model.name: --model gives it",
        ),
        (["train", "--data", "{data}", "--set", "data.path=elsewhere"], "--set data.path: --data gives it"),
        (["tune", "--model", "br", "--data", "{data}", "--set", "data.path=elsewhere"], "--set data.path: --data"),
        (["bench", "--models", "br", "--data", "{data}", "--set", "data.path=elsewhere"], "--set data.path: --data"),
        (["train", "--data", "{data}", "--model", "br", "--set", "data.synthetic.n_train=10"], GENERATOR),
        (["train", "--set", "data.path={data}", "--model", "br", "--set", "data.synthetic.n_train=10"], GENERATOR),
        (
            [
                "tune",
                "--model",
                "late_fusion",
                "--trials",
                "1",
                "--data",
                "{data}",
                "--set",
                "data.synthetic.n_train=10",
            ],
            GENERATOR,
        ),
        (["bench", "--models", "br", "--data", "{data}", "--set", "data.synthetic.n_train=10"], GENERATOR),
        (["reproduce", "mosei", "--data", "{data}", "--set", "data.synthetic.n_train=10"], GENERATOR),
    ],
    ids=[
        "model-name",
        "data-path",
        "tune-data-path",
        "bench-data-path",
        "train",
        "train-set-path",
        "tune",
        "bench",
        "reproduce",
    ],
)
def test_a_set_that_a_flag_or_the_data_overrides_is_refused(argv, message, native, tmp_path, capsys):
    """``--model late_fusion --set model.name=mult`` trained late_fusion, and a generator setting
    with data read from a folder was recorded in the run's config but never applied: each without a
    word. Now one line before any work."""
    argv = [a.replace("{data}", native) for a in argv] + ["--out", str(tmp_path / "out"), "--set", "train.epochs=1"]
    assert one_line_error(capsys, argv).startswith(f"error: {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["bench", "--models", "br"], ["reproduce", "mosei", "--data", "x"]])
def test_seed_is_not_taken_for_seeds(command, tmp_path, capsys):
    """argparse took ``--seed 42`` for an abbreviation of ``--seeds``: ``ramer bench --seed 42`` trained
    42 seeds (``tune --seed`` is a sampler's seed, ``data import --seed`` a split's)."""
    with pytest.raises(SystemExit) as e:
        main([*command, "--seed", "42", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert f"--seed is not a flag of ramer {command[0]}: --seeds N is the number of seeds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # the hidden flag is no "did you mean"
        main([*command, "--seedz", "3"])
    assert "did you mean --seeds?" in capsys.readouterr().err
