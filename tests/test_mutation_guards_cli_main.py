"""What ``ramer.cli`` (flag types, the checks before the work, the tables, the lines after a
run, ``main``'s exit codes), ``ramer.version``, ``ramer.console`` and ``python -m ramer`` do that no
other test pinned: each test fails when the behaviour it names is changed (its docstring names the
smallest change that breaks it). No training: a command runs with its training, search or
reproduction replaced by a stand-in, or its helper is called directly."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import subprocess
import sys

import pytest
from rich.console import Console

from ramer import cli
from ramer.console import labels_phrase, names_line, plural
from ramer.paths import LOCK_NAME

TINY = ["data.synthetic.n_train=24", "data.synthetic.n_valid=12", "data.synthetic.n_test=12", "train.epochs=1"]
SETS = [x for s in TINY for x in ("--set", s)]
FIGURES = {"micro_f1": 0.5, "macro_f1": 0.25, "acc": 0.125, "hamming_loss": 0.0625}


def shown(table) -> str:
    """``table`` as it prints, wide enough for every cell."""
    console = Console(width=300, record=True, markup=False, emoji=False, highlight=False)
    console.print(table, soft_wrap=False)
    return console.export_text()


# ---------------------------------------------------------------------- flag types
@pytest.mark.parametrize(
    "text, why", [("2.5", "not an integer: '2.5'"), ("1e3", "not an integer: '1e3'"), ("0", "must be at least 1")]
)
def test_a_count_flag_takes_whole_numbers_of_at_least_one(text, why):
    """``--workers``, ``--nproc``, ``--trials``... take a whole number of at least 1: ``2.5`` is not
    read as 2, nor ``0`` let through. (``int(text)`` made ``int(float(text))``; the bound made
    ``value < 0``.)"""
    assert cli.positive_int("1") == 1 and cli.positive_int(" 12 ") == 12
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        cli.positive_int(text)


# ---------------------------------------------------------------------- train: --nproc and the run folder
def test_nproc_under_torchrun_is_refused_before_the_config_is_read(tmp_path, monkeypatch, capsys):
    """``--nproc`` in a process torchrun started (``WORLD_SIZE`` 2) is refused first, whatever else
    is wrong: it would start N processes per process. (The bound made ``> 2``: the bad config
    below is then the error.)"""
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["train", "--nproc", "2", "--out", str(tmp_path / "run"), "--set", "train.epochs=many"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --nproc launches the processes itself; under torchrun leave it out"), err
    assert not (tmp_path / "run").exists()


def test_a_batch_two_processes_cannot_split_is_refused_by_the_launcher():
    """The launcher refuses a global batch that does not divide by the process count, two included,
    before the processes start (each would refuse it alike). (The check made to skip two
    processes.)"""
    from ramer.config import build_config
    from ramer.errors import RamerError

    cfg = build_config(None, ["train.batch_size=15", "train.device=cpu"])
    with pytest.raises(RamerError, match="train.batch_size 15 is the global batch and must divide by the 2 processes"):
        cli.check_processes(cfg, 2)
    cli.check_processes(build_config(None, ["train.batch_size=16", "train.device=cpu"]), 2)


def test_resume_refuses_an_out_of_its_own(tmp_path, capsys):
    """``--resume RUN --out OTHER`` is refused, as ``--config``, ``--set``, ``--data`` and ``--model``
    are: a resumed run writes to its own folder, and OTHER would be silently ignored. (``--out``
    dropped from the check: the missing run folder below is then the error.)"""
    argv = ["train", "--resume", str(tmp_path / "run"), "--out", str(tmp_path / "other")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume takes the run directory's own config; drop --config/--set/"), err


def test_an_empty_resume_is_refused_before_the_config_is_read(tmp_path, monkeypatch, capsys):
    """``train --resume ''`` is refused at once, not taken for a new run (which the flag's test in
    test_cli_hostile_values.py shows only after training one on the embedded benchmark). (``resume``
    left out of ``refuse_empty``: the bad config below is then the error.)"""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--resume", "", "--set", "train.epochs=many"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: empty; give the run folder to go on with"), err


def test_resume_under_torchrun_needs_no_out(tmp_path, monkeypatch, capsys):
    """Under torchrun (``WORLD_SIZE`` 2) ``--resume RUN`` names the one run folder of every process:
    it is not told to give ``--out``. (The check made ``not args.out``.)"""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'run'}: no such run folder; nothing to resume"), err


def fake_training(monkeypatch, result):
    """``ramer train``'s training replaced: it returns ``result``, or raises it (an exception);
    the model file's task read back as multi-label."""
    from types import SimpleNamespace

    import ramer.checkpoint
    import ramer.train

    def run_training(cfg, out, **kwargs):
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(ramer.train, "run_training", run_training)
    monkeypatch.setattr(ramer.checkpoint, "read_spec", lambda path: SimpleNamespace(task="multi_label"))


def test_ctrl_c_in_a_process_other_than_rank_0_ends_130_without_a_hint(tmp_path, monkeypatch, capsys):
    """Ctrl-C under torchrun: a process of rank 1 ends 130, as rank 0 does, and leaves the hint to
    rank 0. (Its exit code made 1.)"""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    fake_training(monkeypatch, KeyboardInterrupt())
    assert cli.main(["train", "--out", str(tmp_path / "run"), *SETS]) == 130
    assert "interrupted" not in capsys.readouterr().err


def test_after_a_run_with_an_empty_test_split_the_hints_name_valid(tmp_path, monkeypatch, capsys):
    """A run whose test split is empty (``n`` 0) ends with commands on ``--split valid``, which
    those commands take (they refuse an empty split). (``no_test`` made ``False``.)"""
    fake_training(monkeypatch, {"overall": {"n": 0}})
    run = tmp_path / "run"
    assert cli.main(["train", "--out", str(run), *SETS]) == 0
    assert f"next: ramer eval {run} --split valid, ramer predict {run} --split valid" in capsys.readouterr().err


def test_ctrl_c_keeps_a_runs_folder_that_was_there(tmp_path, monkeypatch, capsys):
    """Ctrl-C before anything was saved removes the run folder this command made under ``runs/``,
    and ``runs/`` too only where the command made it: an empty ``runs/`` that was there stays.
    (``runs_made`` taken as every made-up folder's.)"""
    monkeypatch.chdir(tmp_path)
    fake_training(monkeypatch, KeyboardInterrupt())
    assert cli.main(["train", *SETS]) == 130
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()
    assert cli.main(["train", *SETS]) == 130
    assert (tmp_path / "runs").is_dir() and list((tmp_path / "runs").iterdir()) == []


def test_a_run_folder_is_removed_only_while_its_log_is_empty(tmp_path):
    """A folder made for a run that stopped before its first epoch ended (its config and an empty
    log) is removed; once the log holds an epoch's line, the folder is the run's and stays.
    (``st_size == 0`` dropped from the check.)"""
    from ramer.config import build_config, dump_config

    cfg = build_config(None, [])
    for log, kept in (("", False), ('{"epoch": 1}\n', True)):
        out = tmp_path / f"run-{kept}"
        out.mkdir()
        (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        (out / "metrics.jsonl").write_text(log)
        cli.remove_unstarted_run(out, cfg)
        assert out.exists() == kept and (out / "metrics.jsonl").exists() == kept


def test_demo_refuses_a_blank_out(tmp_path, monkeypatch, capsys):
    """``demo --out " "`` (a blank value) is refused like an empty one, before anything else is
    looked at: Path(" ") is a folder named by a space. (``strip()`` dropped; the ``--set`` below
    is then the error.)"""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--out", " ", "--set", "model.name=br"]) == 2
    assert capsys.readouterr().err.startswith("error: --out: empty; give a folder (or leave --out out for runs/demo)")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- eval / predict: the split
def test_a_split_the_data_lacks_is_one_line_naming_the_splits_it_has(monkeypatch):
    """``eval`` / ``predict --split NAME`` of a dataset without that split names the dataset and its
    splits, also where ``--data`` is the run's own (no ``KeyError`` in the check of whether it has
    changed). (The split check dropped.)"""
    from types import SimpleNamespace

    import ramer.api
    import ramer.checkpoint
    from ramer.errors import RamerError

    predictor = SimpleNamespace(data_fingerprints={}, cfg=SimpleNamespace(data=SimpleNamespace(path=None)))
    bundle = SimpleNamespace(source="DATA", splits={"train": [1], "test": [1]})
    monkeypatch.setattr(cli, "load_predictor", lambda *a, **k: predictor)
    monkeypatch.setattr(ramer.api, "load_data_for", lambda *a, **k: bundle)
    monkeypatch.setattr(
        ramer.checkpoint, "changed_splits", lambda fingerprints, data, splits: [data.splits[s] for s in splits]
    )
    for data in (None, "DATA"):
        args = argparse.Namespace(run_dir="RUN", device=None, precision="fp32", data=data, split="valid")
        with pytest.raises(RamerError, match=r"^DATA: no split 'valid' \(has train, test\)$"):
            cli.load_run_and_data(args)


# ---------------------------------------------------------------------- view
def test_view_of_a_run_refuses_loader_settings(tmp_path, capsys):
    """``view RUN --set KEY=VALUE`` is refused at once: a run reads its data with its own options,
    and the setting would be silently ignored. (The check dropped: the missing run is then the
    error.)"""
    argv = ["view", str(tmp_path / "run"), "--out", str(tmp_path / "v.html"), "--set", "data.max_utterances=80"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set is for --preds with --data (a run reads its data with its own options)"), err


def test_view_prints_the_notes_of_the_page_and_counts_in_words(tmp_path, fake_text, capsys):
    """What the page leaves out is said on stderr: with the imported table gone, a ``note:`` line
    that the page shows no utterance texts; the line on stdout counts "1 conversation". (The loop
    that prints the notes dropped; ``plural`` made ``{n} conversations``.)"""
    from test_conversations import base_rows
    from test_view import imported, records_for

    bundle = imported(tmp_path, [r for r in base_rows() if r["conversation"] == "c1"])
    (tmp_path / "talk.csv").unlink()
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in records_for(bundle.splits["test"])))
    argv = ["view", "--preds", str(preds), "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "v.html")]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "note: " in err and "the imported table is gone; the page shows no utterance texts" in err, err
    n = len(bundle.splits["test"])
    assert out.endswith(f" KiB): 1 conversation, {n} predicted samples\n") and n > 1, out


# ---------------------------------------------------------------------- data import, reproduce, bench
def test_an_empty_labels_flag_of_import_is_refused_not_left_out(tmp_path, fake_text, capsys):
    """``data import FILE --labels ""`` is an error, not the file's own labels as if the flag were
    left out. (``is not None`` made a truth test of the string.)"""
    from test_conversations import base_rows, write_table

    table = write_table(tmp_path / "talk.csv", base_rows())
    assert cli.main(["data", "import", str(table), "--out", str(tmp_path / "ds"), "--labels", ""]) == 2
    assert capsys.readouterr().err.startswith("error: --labels is empty; give names separated by commas")


def test_reproduce_writes_to_a_folder_named_by_its_benchmark(monkeypatch, capsys):
    """Without ``--out``, ``ramer reproduce BENCH`` works in ``runs/reproduce-BENCH`` (two benchmarks
    never share one). (The default made one folder for all.)"""
    import ramer.reproduce

    asked = []
    monkeypatch.setattr(
        ramer.reproduce, "reproduce", lambda bench, data, seeds, out, sets, console: asked.append(out) or "T"
    )
    assert cli.main(["reproduce", "m3ed", "--data", "D"]) == 0 and cli.main(["reproduce", "mosei", "--data", "D"]) == 0
    assert asked == ["runs/reproduce-m3ed", "runs/reproduce-mosei"] and capsys.readouterr().out == "T\nT\n"


def test_the_bench_header_names_the_complete_input_runs(tmp_path, monkeypatch, capsys):
    """The bench's first line names the models also trained on complete inputs. (The reference
    dropped from the line.)"""
    import ramer.bench

    monkeypatch.setattr(ramer.bench, "run_bench", lambda settings, console: None)
    argv = ["bench", "--quick", "--models", "br,late_fusion", "--complete", "late_fusion", "--out", str(tmp_path / "b")]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("bench: 2 models x 1 seed x 2 missing rates (+ late_fusion on complete inputs), "), err


# ---------------------------------------------------------------------- tune and demo: their last lines
def fake_tune(monkeypatch, result):
    """``ramer tune``'s search replaced: it returns a result of summary ``result``, or raises it."""
    from types import SimpleNamespace

    import ramer.tune

    def tune(cfg, out, **kwargs):
        if isinstance(result, BaseException):
            out.mkdir(parents=True, exist_ok=True)  # as the search makes its study before a trial
            (out / "study.db").write_bytes(b"")
            raise result
        return SimpleNamespace(summary=result)

    monkeypatch.setattr(ramer.tune, "require_optuna", lambda: None)
    monkeypatch.setattr(ramer.tune, "tune", tune)


def test_tune_says_its_outcome_in_its_folder_named_by_the_model(tmp_path, monkeypatch, capsys):
    """``ramer tune --model M`` works in ``runs/tune-M``; Ctrl-C ends 130 saying the finished trials
    are kept there; a study with no complete trial says so (no best to print); else the best trial,
    its values and the paths. (The default folder made one for all models; Ctrl-C's code made 0;
    the no-trial branch dropped.)"""
    monkeypatch.chdir(tmp_path)
    fake_tune(monkeypatch, KeyboardInterrupt())
    assert cli.main(["tune", "--model", "late_fusion"]) == 130
    kept = "interrupted; run the same command again to continue (finished trials are kept in runs/tune-late_fusion)"
    assert capsys.readouterr().err == kept + "\n"
    fake_tune(monkeypatch, {"best": None, "metric": "micro_f1"})
    assert cli.main(["tune", "--model", "late_fusion"]) == 0
    assert capsys.readouterr().out == "no trial completed; trials: runs/tune-late_fusion/trials.md\n"
    best = {"trial": 3, "value": 0.5, "values": {"train.lr": 0.001}}
    fake_tune(monkeypatch, {"best": best, "metric": "weighted_f1"})
    assert cli.main(["tune", "--model", "late_fusion", "--out", "t"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "best: trial 3, valid weighted-F1 0.5000 (train.lr=0.001)",
        "config: t/best.yaml (ramer train --config t/best.yaml); trials: t/trials.md",
    ]


def test_demo_takes_a_run_folder_holding_only_a_lock_file_for_its_own(tmp_path, monkeypatch, capsys):
    """A demo run folder that holds nothing but the lock file a killed command left is no one's
    work: the demo goes on (here to its first run, which Ctrl-C stops: 130). (The lock file
    counted as a file the demo did not write: refused.)"""
    import ramer.train

    def interrupted(cfg, out, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ramer.train, "run_training", interrupted)
    out = tmp_path / "d"
    (out / "ramer").mkdir(parents=True)
    (out / "ramer" / LOCK_NAME).write_text("")
    assert cli.main(["demo", "--out", str(out), *SETS]) == 130
    assert capsys.readouterr().err.splitlines()[-1].startswith("interrupted; run the same command again to start")


def test_a_demo_record_whose_runs_are_not_a_list_is_one_error(tmp_path):
    """``demo.json`` holding ``{"runs": 3}`` or ``{"runs": "ramer"}`` (not what the demo writes) is
    an error naming the file, not a TypeError nor the letters of a string taken for run folders.
    (The check that ``runs`` is a list dropped.)"""
    from ramer.errors import RamerError

    (tmp_path / cli.DEMO_FILE).write_text('{"runs": ["ramer", "late_fusion"]}')
    assert cli.demo_runs(tmp_path) == {"ramer", "late_fusion"}
    for runs in ("3", '"ramer"'):
        (tmp_path / cli.DEMO_FILE).write_text(f'{{"runs": {runs}}}')
        with pytest.raises(RamerError, match=r"demo\.json: not a list of the demo's runs"):
            cli.demo_runs(tmp_path)


# ---------------------------------------------------------------------- the run a command reads
def test_the_model_file_of_a_run_folder_is_one_the_command_reads(tmp_path):
    """RUN_DIR names its ``model.safetensors`` as the file the command reads, so an output there is
    refused also in a folder without ``config.yaml`` (which the rule on a run's own files needs).
    (``model_file`` giving the folder itself.)"""
    from ramer.errors import RamerError
    from ramer.paths import output_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"weights")
    assert cli.model_file(str(run)) == run / "model.safetensors"
    assert cli.model_file(str(run / "model.safetensors")) == run / "model.safetensors"
    with pytest.raises(RamerError, match=r"model\.safetensors: is a file this command reads"):
        output_file(run / "model.safetensors", reads=(cli.model_file(str(run)),), make=False)


def test_a_note_names_another_version_only(monkeypatch, capsys):
    """``eval``/``predict``/``view``/``export`` say which ramer wrote the run where it is another
    version than this one, and say nothing for this version's own runs. (The check made ``if
    written``.)"""
    from types import SimpleNamespace

    import ramer.api
    from ramer.version import __version__

    def loaded(written: str) -> str:
        """What ``load_predictor`` says on stderr of a run that ramer ``written`` wrote."""
        predictor = SimpleNamespace(written_by={"ramer_version": written})
        monkeypatch.setattr(ramer.api, "load", lambda run_dir, device=None, precision="fp32": predictor)
        assert cli.load_predictor("RUN") is predictor
        return capsys.readouterr().err

    assert loaded(__version__) == ""
    assert loaded("99.0").startswith("note: RUN: written by ramer 99.0, newer than this ramer")


# ---------------------------------------------------------------------- tables
def test_a_part_without_targets_shows_a_dash_and_the_name_leads_only_its_first_line():
    """A part with ``n == 0`` (no non-speaker target in the split) shows ``–`` in every metric
    column, not 0.0000; the model's name is on its overall line only; the scores have four
    decimals. (``empty`` made ``False``; the name on every line; ``.4f`` made ``.3f``.)"""
    rep = {"overall": {**FIGURES, "n": 5}, "speaker": {**FIGURES, "n": 5}, "nonspeaker": {"n": 0}}
    lines = [ln for ln in shown(cli.metrics_table("t", {"mine": rep})).splitlines() if "│" in ln]
    cells = [[c.strip() for c in ln.strip("│").split("│")] for ln in lines]
    assert cells == [
        ["mine", "overall", "5", "0.5000", "0.2500", "0.1250", "0.0625"],
        ["", "speaker", "5", "0.5000", "0.2500", "0.1250", "0.0625"],
        ["", "nonspeaker", "0", "–", "–", "–", "–"],
    ]


def test_the_caption_counts_the_samples_without_a_role_of_any_row():
    """Of several rows, one whose parts add up to overall and one with 3 samples in neither part,
    the caption names 3: any row, the largest count. (``any(unroled)`` made ``all``; ``max`` made
    ``min``; the non-speaker count left out of the difference.)"""
    whole = {"overall": {**FIGURES, "n": 7}, "speaker": {**FIGURES, "n": 4}, "nonspeaker": {**FIGURES, "n": 3}}
    mixed = {**whole, "overall": {**FIGURES, "n": 10}}
    table = cli.metrics_table("t", {"a": whole, "b": mixed, "oracle": {"overall": {**FIGURES, "n": 10}}})
    assert table.caption.startswith("overall also counts 3 sample(s) without a role")
    assert cli.metrics_table("t", {"a": whole, "oracle": {"overall": {**FIGURES, "n": 10}}}).caption is None


def test_the_name_columns_read_left_and_the_figures_right():
    """``model`` and ``targets`` are left-aligned, the counts and scores right-aligned (digits line
    up). (Every column made right-aligned.)"""
    table = cli.metrics_table("t", {"m": {"overall": {**FIGURES, "n": 5}}})
    assert [c.justify for c in table.columns] == ["left", "left", "right", "right", "right", "right", "right"]


def test_a_table_to_a_log_is_laid_out_160_columns_wide(capsys):
    """Where stdout is no terminal (a log, a pipe) the tables are laid out 160 columns wide: a model
    name of 80 characters stays whole on its line. (The width made 80: the name folds.)"""
    if cli.OUT.is_terminal:
        pytest.skip("stdout is a terminal: the table takes its width")
    name = "ramer-" + "x" * 74
    cli.OUT.print(cli.metrics_table("t", {name: {"overall": {**FIGURES, "n": 5}}}), soft_wrap=False)
    out = capsys.readouterr().out
    assert any(name in line and line.count("│") == 8 for line in out.splitlines()), out


def test_the_per_label_table_is_precision_then_recall_and_folds_long_names():
    """``eval --per-label``: support, P, R, F1 in that order, each column folding a long value whole
    rather than cutting it; the confusion table's columns fold too. (P and R swapped; ``overflow``
    left at rich's default, ellipsis.)"""
    per_label = {"joy": {"support": 3, "p": 0.75, "r": 0.5, "f1": 0.6}}
    table = cli.per_label_table("t", per_label)
    row = [ln for ln in shown(table).splitlines() if "joy" in ln][0]
    assert [c.strip() for c in row.strip("│").split("│")] == ["joy", "3", "0.7500", "0.5000", "0.6000"]
    assert {c.overflow for c in table.columns} == {"fold"}
    confusion = cli.confusion_table("t", {"labels": ["a", "b"], "gold_by_decided": [[1, 0], [2, 3]]})
    assert {c.overflow for c in confusion.columns} == {"fold"}


# ---------------------------------------------------------------------- the lines after a run
def test_the_next_commands_name_the_split_and_quote_the_folder():
    """After a run whose test split is empty the hinted commands carry ``--split valid``; a folder
    with a space is quoted so that it pastes as one argument. (The ``--split`` dropped; the folder
    not quoted.)"""
    line = cli.next_steps("my run", "valid")
    predict = line[line.index("ramer predict") :].split(", ramer ")[0]
    assert shlex.split(predict) == ["ramer", "predict", "my run", "--split", "valid", "--out", "preds.jsonl"]
    assert "--split" not in cli.next_steps("runs/a")


def test_the_hint_after_ctrl_c_follows_what_the_folder_holds(tmp_path):
    """Ctrl-C: with a saved state, the resume command (quoted); with a model file but no state, what
    a new run there would say; with nothing, run the command again. (The folder's model file not
    asked about; the folder not quoted.)"""
    run = tmp_path / "a run"
    run.mkdir()
    assert cli.interrupted_hint(run) == "interrupted before anything was saved to resume from: run the command again"
    (run / "model.safetensors").write_bytes(b"")
    assert cli.interrupted_hint(run).startswith("interrupted before a state to resume from was saved: ")
    (run / "train_state.pt").write_bytes(b"")
    assert cli.interrupted_hint(run) == f"interrupted; resume with: ramer train --resume {shlex.quote(str(run))}"
    # a run of --nproc 2 resumes in 2 processes: in another count it would train on otherwise
    assert cli.interrupted_hint(run, 2).endswith(f"--resume {shlex.quote(str(run))} --nproc 2")


# ---------------------------------------------------------------------- ramer.version
def test_a_version_is_newer_only_where_its_release_numbers_are_larger(monkeypatch):
    """``newer_writer`` compares every release number (0.1.1 > 0.1.0, not the first two alone), a
    pre-release by its numbers (0.2.0rc1 is 0.2.0), the same version is not newer, an older one is
    not. (``>`` made ``>=``; the numbers cut to two, or to the first; the two sides swapped.)"""
    from ramer import version

    monkeypatch.setattr(version, "__version__", "0.1.0")
    versions = ("0.1.1", "0.2.0rc1", "1.0", "0.1.0", "0.0.9", "dev", None, "")
    assert [v for v in versions if version.newer_writer(v)] == ["0.1.1", "0.2.0rc1", "1.0"]


def test_the_version_note_says_same_newer_older_or_none(monkeypatch):
    """Each of the four cases has its own wording. (The same-version case dropped; an empty string
    taken for a version.)"""
    from ramer import version

    monkeypatch.setattr(version, "__version__", "0.1.0")
    assert version.version_note("0.1.0") == "written by this ramer version, 0.1.0"
    assert version.version_note("0.3.0") == (
        "written by ramer 0.3.0, newer than this ramer 0.1.0: read it with ramer 0.3.0 or later"
    )
    assert version.version_note("0.0.5") == "written by ramer 0.0.5; this is ramer 0.1.0"
    for written in (None, ""):
        assert version.version_note(written) == "the file records no ramer version; this is ramer 0.1.0"


# ---------------------------------------------------------------------- ramer.console
def test_counts_and_name_lists_read_as_english():
    """``0 seeds``, ``1 seed``; six names are shown whole, a seventh is "... (1 more)"; five labels
    are named without "and 0 more", two are "labels ... have". (``n != 1`` made ``n > 1``; ``>``
    made ``>=`` in ``names_line`` or ``labels_phrase``; ``== 1`` made ``<= 2``.)"""
    assert [plural(n, "seed") for n in (0, 1, 2)] == ["0 seeds", "1 seed", "2 seeds"]
    six = [f"l{i}" for i in range(6)]
    assert names_line(six) == "(6): l0, l1, l2, l3, l4, l5"
    assert names_line([*six, "l6"]) == "(7): l0, l1, l2, l3, l4, l5, ... (1 more)"
    assert labels_phrase(["'a'"]) == ("label 'a' has", "it")
    assert labels_phrase(["'a'", "'b'"]) == ("labels 'a', 'b' have", "them")
    five = [f"'{c}'" for c in "abcde"]
    assert labels_phrase(five)[0] == "labels 'a', 'b', 'c', 'd', 'e' have"
    assert labels_phrase([*five, "'f'"])[0] == "labels 'a', 'b', 'c', 'd', 'e' and 1 more have"


# ---------------------------------------------------------------------- main: what it answers for
def failing_reproduce(monkeypatch, error: BaseException):
    """``ramer reproduce`` made to raise ``error`` (a stand-in for any command's work)."""
    import ramer.reproduce

    def reproduce(*args):
        raise error

    monkeypatch.setattr(ramer.reproduce, "reproduce", reproduce)


def test_a_broken_pipe_of_another_pipe_is_raised_not_taken_for_a_gone_reader(tmp_path, monkeypatch):
    """A BrokenPipeError while stdout and stderr are files (a worker's pipe, a database connection)
    is a real error, raised; it is not the 141 of a reader of ours that went away. (``if not gone:
    raise`` dropped; ``POLLERR`` asked as ``POLLOUT``, which a writable file always reports.)"""
    failing_reproduce(monkeypatch, BrokenPipeError("a worker's pipe"))
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        monkeypatch.setattr("sys.stdout", out)
        monkeypatch.setattr("sys.stderr", err)
        assert not cli.reader_gone(out)
        with pytest.raises(BrokenPipeError, match="a worker's pipe"):
            cli.main(["reproduce", "m3ed", "--data", "D"])


def test_a_stream_that_cannot_be_asked_is_taken_for_a_gone_reader():
    """Where poll cannot be asked about a stream (no descriptor: a StringIO, pytest's capture), its
    reader is taken for gone, as the docstring says. (The fallback made ``False``.)"""
    import io

    assert cli.reader_gone(io.StringIO()) and cli.reader_gone(object())


def test_a_name_too_long_without_a_path_is_raised_not_said(monkeypatch, capsys):
    """``ENAMETOOLONG`` with a file name is one line naming it, exit 2; without one (nothing to
    name) it is raised as the error it is. (``or not e.filename`` dropped: "error: None: ...".)"""
    failing_reproduce(monkeypatch, OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300))
    assert cli.main(["reproduce", "m3ed", "--data", "D"]) == 2
    assert capsys.readouterr().err == f"error: {'x' * 300}: a name in the path is longer than the file system allows\n"
    failing_reproduce(monkeypatch, OSError(errno.ENAMETOOLONG, "File name too long"))
    with pytest.raises(OSError, match="File name too long"):
        cli.main(["reproduce", "m3ed", "--data", "D"])


# ---------------------------------------------------------------------- ramer.console: LOG_EVERY
def test_a_quick_import_to_a_log_says_only_when_each_stage_starts_and_ends(tmp_path, fake_text, capsys):
    """In a log (stderr no terminal) a stage says how far it is once every ``LOG_EVERY`` (30) seconds:
    an import of a second says when its stage starts and ends, no line in between. (``LOG_EVERY``
    made 0: a line per conversation.)"""
    from test_conversations import base_rows, write_table

    table = write_table(tmp_path / "talk.csv", base_rows())
    assert cli.main(["data", "import", str(table), "--out", str(tmp_path / "ds")]) == 0
    stage = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("text: ")]
    assert len(stage) == 2 and stage[1].startswith("text: 11 utterances in 3 conversations: done in "), stage


# ---------------------------------------------------------------------- python -m ramer
def test_a_process_torchrun_started_ends_by_os_exit(tmp_path):
    """``python -m ramer`` in a process torchrun launched (``WORLD_SIZE`` 2, ``RANK``) ends with
    ``dist.end_process``, ``os._exit`` with the command's code: no interpreter teardown, so no exit
    handler runs (torch's C++ destructors aborted now and then). (The ``end_process`` call
    dropped: ``sys.exit``, and the handler prints.)"""
    code = (
        "import atexit, runpy, sys; atexit.register(lambda: print('teardown', flush=True)); "
        f"sys.argv = ['ramer', 'data', 'info', {str(tmp_path / 'none')!r}]; "
        "runpy.run_module('ramer', run_name='__main__')"
    )
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert (proc.returncode, proc.stdout) == (2, ""), proc
    assert proc.stderr == f"error: {tmp_path / 'none'}: data path not found\n"
