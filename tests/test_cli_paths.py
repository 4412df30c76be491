"""Paths a user meets on the command line: where a run goes, a run's relative data path seen from
another folder, an import's table read back from another folder, and what an import's summary
says about the personality file; outputs that would destroy the data, links, FIFOs and what the
system refuses."""

import errno
import os
import shutil
import subprocess
import tempfile
import threading

import fixtures_writers as fw
import pytest
from conftest import for_data
from test_conversations import LABELS, base_rows, write_table

from ramer.bench import parse_rates
from ramer.cli import main
from ramer.config import build_config
from ramer.data.conversations import import_conversations, read_table, summary_lines
from ramer.errors import RamerError
from ramer.paths import WORK_MARKERS, atomic_write_text, dataset_folder, other_work, output_file

TINY = [
    *("data.synthetic.n_train=40", "data.synthetic.n_valid=20", "data.synthetic.n_test=20", "train.epochs=1"),
    *("model.hidden=16", "model.ffn=32", "model.heads=2", "model.queue_size=64"),
]
SETS = [x for s in TINY for x in ("--set", s)]


def test_train_names_the_run_folder_before_the_work(tmp_path, capsys, monkeypatch):
    """The default --out is made up: the first line says where the run goes (to --resume it)."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", *SETS]) == 0
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    (run,) = (tmp_path / "runs").iterdir()
    assert first == f"training ramer -> runs/{run.name}"


def test_the_commands_to_paste_take_a_folder_whose_name_starts_with_a_dash(tmp_path, capsys, monkeypatch):
    """--out=-run: the next steps said 'ramer eval -run', which the parser takes for an option
    ('the following arguments are required: RUN_DIR'); they say ./-run, and it works pasted."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out=-run", "--model", "late_fusion", *SETS]) == 0
    err = capsys.readouterr().err
    assert "next: ramer eval ./-run, ramer predict ./-run --out preds.jsonl, ramer view ./-run --out" in err, err
    assert main(["eval", "./-run"]) == 0
    assert main(["train", "--out=-run", "--model", "late_fusion", *SETS]) == 2
    assert "-run already holds a run; use --resume ./-run or another --out" in capsys.readouterr().err
    assert main(["train", "--resume", "./-run"]) == 0


def test_an_output_file_beside_a_recorded_path_the_file_names_cannot_hold(tmp_path):
    """Under LC_ALL=C (file names in ASCII), predict of data imported from 'talk ü.csv' ended in a
    UnicodeEncodeError traceback while checking that its --out was not that table."""
    import subprocess
    import sys

    script = (
        "import sys; from ramer.paths import output_file; "
        "print(output_file(sys.argv[1] + '/p.jsonl', data_from=('/data/talk \\u00fc.csv',)).name)"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "p.jsonl\n"), r.stderr[-1500:]


@pytest.mark.parametrize("nproc", ["0", "-2", "two"])
def test_a_process_count_below_one_is_refused_before_any_folder(nproc, tmp_path, capsys):
    """``--nproc`` is checked where the flags are read, as every other count flag is."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "run"), "--nproc", nproc, *SETS])
    assert exit_info.value.code == 2 and "argument --nproc:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_from_another_folder_says_how_the_data_path_was_stored(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sizes = ["--set", "n_train=40", "--set", "n_valid=20", "--set", "n_test=20"]
    assert main(["data", "synth", "--out", "ds", *sizes]) == 0
    assert main(["train", "--data", "ds", "--out", "run", *SETS[6:]]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "run")
    assert main(["train", "--resume", "."]) == 2
    err = capsys.readouterr().err
    assert "ds: data path not found from here (the run's data.path, as given when it was trained" in err
    assert "run from that folder, or set data.path in config.yaml" in err


def test_view_reads_the_imported_table_from_another_folder(tmp_path, fake_text, capsys, monkeypatch):
    """meta.json records the table's absolute path, so the page has the texts wherever view runs."""
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "talk.csv", base_rows())
    meta = import_conversations("talk.csv", "ds")
    assert main(["train", "--model", "br", "--data", "ds", "--out", "run"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tested,) = [c["name"] for c in meta["info"]["conversations"]["items"] if c["split"] == "test"]
    some_text = next(r["text"] for r in base_rows() if r["conversation"] == tested and r["text"])
    assert main(["view", str(tmp_path / "run"), "--data", str(tmp_path / "ds"), "--out", "page.html"]) == 0
    assert some_text in (elsewhere / "page.html").read_text()


def test_import_summary_names_persons_without_personality_and_unused_rows(tmp_path, fake_text):
    src = write_table(tmp_path / "talk.csv", base_rows())
    pers = tmp_path / "traits.csv"
    pers.write_text("person,open,calm\nann,0.5,1.0\nbob,-1,2\nzed,3,3\n")
    lines = summary_lines(import_conversations(src, tmp_path / "ds", personality=pers))
    (line,) = [ln for ln in lines if ln.startswith("personality: ")]
    assert "persons have no row (no personality): cat" in line and "1 row names nobody in the table: zed" in line
    everyone = "ann bob cat dan eve fay gus hal ivy jon".split()
    pers.write_text("person,open,calm\n" + "".join(f"{p},1,1\n" for p in everyone))
    lines = summary_lines(import_conversations(src, tmp_path / "ds", personality=pers))
    assert not [ln for ln in lines if "personality" in ln]


def test_scoring_an_empty_split_is_an_error_that_names_the_sizes(tmp_path, fake_text, capsys):
    """An unlabelled import puts every conversation in test: its train split has nothing to score."""
    import_conversations(write_table(tmp_path / "talk.csv", base_rows()), tmp_path / "ds")
    unlabelled = write_table(tmp_path / "plain.csv", base_rows(labelled=False))
    import_conversations(unlabelled, tmp_path / "plain", labels=list(LABELS))
    assert main(["train", "--model", "br", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    for command in (["predict", "--out", str(tmp_path / "p.jsonl")], ["eval"]):
        argv = [command[0], str(tmp_path / "run"), "--data", str(tmp_path / "plain"), "--split", "train", *command[1:]]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "split 'train' has no samples (train 0, valid 0, test " in err and "choose another --split" in err
    assert not (tmp_path / "p.jsonl").exists()


def test_predict_and_view_never_write_over_the_data_they_read(tmp_path, fake_text, capsys, monkeypatch):
    """--out naming the data's own file (a corpus file, an imported table) is refused before the
    work, with or without --data, and the file is left as it was."""
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "talk.csv", base_rows())
    import_conversations("talk.csv", "ds")
    fw.write_mosei_aligned(tmp_path / "m.pt")
    assert main(["train", "--model", "br", "--data", "ds", "--out", "run"]) == 0
    assert main(["train", "--model", "br", "--data", "m.pt", "--out", "run_m"]) == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("talk.csv", "m.pt")}
    capsys.readouterr()
    for command in ("predict", "view"):
        for argv in (
            ["run", "--out", "talk.csv"],
            ["run_m", "--out", "m.pt"],
            ["run_m", "--data", "m.pt", "--out", "m.pt"],
        ):
            assert main([command, *argv]) == 2, (command, argv)
            err = capsys.readouterr().err
            assert f"error: {argv[-1]}: is the file the data comes from" in err, err
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_written_file_follows_links_streams_to_fifos_and_names_what_the_system_refuses(tmp_path, monkeypatch):

    (tmp_path / "real.txt").write_text("old")
    (tmp_path / "link.txt").symlink_to("real.txt")
    atomic_write_text(tmp_path / "link.txt", "new")
    assert (tmp_path / "link.txt").is_symlink() and (tmp_path / "real.txt").read_text() == "new"

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "streamed")
    reader.join(timeout=30)
    assert got == ["streamed"] and fifo.is_fifo()

    refusals = [  # where the system says no, and what: before the temp file is made, and after
        (tempfile, "mkstemp", PermissionError(errno.EACCES, "Permission denied")),
        (os, "fsync", OSError(errno.ENOSPC, "No space left on device")),
    ]
    for module, name, error in refusals:

        def refuse(*args, error=error, **kwargs):
            raise error

        with monkeypatch.context() as m:
            m.setattr(module, name, refuse)
            with pytest.raises(RamerError, match=rf"real.txt: cannot write \({error.strerror}\)"):
                atomic_write_text(tmp_path / "real.txt", "lost")
    assert (tmp_path / "real.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "fifo",
        "link.txt",
        "real.txt",
    ]


@pytest.mark.parametrize(
    "command, foreign",
    [
        ("train", ("meta.json", "train")),
        ("train-deep", ("report.md", "results.json")),
        ("tune", ("model.safetensors",)),
        ("tune", ("demo.json",)),
        ("bench", ("train_state.pt",)),
        ("bench", ("study.db",)),
        ("reproduce", ("test_metrics.json",)),
        ("reproduce", ("meta.json", "test")),
        ("demo", ("report.md", "results.json")),
    ],
)
def test_a_command_refuses_a_folder_holding_another_commands_work(command, foreign, tmp_path, capsys):
    """A run into a dataset, a study or a bench into a run folder...: refused before any work, the
    folder left as it was (their files would mix, and each reads its own back). A user's own file
    of one of those names, alone, marks nothing."""
    out = tmp_path / "out"
    out.mkdir()
    for name in foreign:
        (out / name).write_text("theirs")
    data = tmp_path / "train_valid_test.pt"
    fw.write_mosei_aligned(data)
    argv = {
        "train": ["train", "--model", "br", *SETS],
        "train-deep": ["train", "--model", "late_fusion", *SETS],
        "tune": ["tune", "--model", "late_fusion", "--trials", "1", *SETS],
        "bench": ["bench", "--quick", "--models", "br"],
        "reproduce": ["reproduce", "mosei", "--data", str(data), "--seeds", "1"],
        "demo": ["demo", *SETS],
    }[command]
    assert main([*argv, "--out", str(out)]) == 2
    kind = next(k for k, groups in WORK_MARKERS.items() if foreign in groups)
    article = "an" if kind[0] in "aeiou" else "a"
    assert f"error: {out}: holds {article} {kind} ({', '.join(foreign)}), not " in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(foreign)
    assert all((out / name).read_text() == "theirs" for name in foreign)
    if len(foreign) > 1:  # one name of the group alone is a user's own file of that name
        (out / foreign[1]).unlink()
        own = {"train": "run", "train-deep": "run", "tune": "study", "bench": "bench", "reproduce": "reproduction"}
        own["demo"] = "demo"
        assert other_work(out, own[command]) is None


def test_a_split_without_samples_has_a_fingerprint_and_a_run_trains(tmp_path, fake_text, capsys, monkeypatch):
    """A labelled import whose table puts nothing in test: the run trains (its test table has n = 0),
    as it did before runs recorded their data's fingerprints."""
    monkeypatch.chdir(tmp_path)
    rows = [{**r, "split": "valid" if r["conversation"] == "c2" else "train"} for r in base_rows()]
    write_table(tmp_path / "talk.csv", rows)
    import_conversations("talk.csv", "ds")
    for model in ("br", "late_fusion"):
        assert main(["train", "--model", model, "--data", "ds", "--out", model, "--set", "train.epochs=1"]) == 0


def test_a_run_notices_that_its_data_was_made_again(tmp_path, capsys, monkeypatch):
    """The run records a fingerprint of each split: eval of the run's own data says when that split
    changed since (the figures are of the data as it is now), and --resume refuses to go on."""
    monkeypatch.chdir(tmp_path)
    sizes = ["--set", "n_train=40", "--set", "n_valid=20", "--set", "n_test=20"]
    assert main(["data", "synth", "--out", "ds", *sizes]) == 0
    assert main(["train", "--data", "ds", "--out", "run", *SETS[6:]]) == 0
    capsys.readouterr()
    assert main(["eval", "run"]) == 0 and "note:" not in capsys.readouterr().err
    assert main(["data", "synth", "--out", "ds", *sizes, "--set", "seed=9"]) == 0
    capsys.readouterr()
    assert main(["eval", "run"]) == 0
    relative = "(the run's data.path is relative to where it was trained) has changed since the run was made on it"
    assert f"note: split 'test' of ds, read from {tmp_path} {relative}" in capsys.readouterr().err
    assert main(["eval", "run", "--data", "ds"]) == 0 and "note:" not in capsys.readouterr().err  # data asked for
    (tmp_path / "other").mkdir()  # another folder's data of the same name: the note says which was read
    monkeypatch.chdir(tmp_path / "other")
    assert main(["data", "synth", "--out", "ds", *sizes, "--set", "seed=5"]) == 0
    capsys.readouterr()
    assert main(["eval", "../run"]) == 0
    assert f"note: split 'test' of ds, read from {tmp_path / 'other'} {relative}" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "test_metrics.json").unlink()  # as if stopped before its test
    assert main(["train", "--resume", "run"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume run: the data at data.path (ds) is not what the run started on (train, valid, test" in err


def test_a_run_trained_on_data_made_in_python_is_not_only_said_of_the_embedded_benchmark(tmp_path, capsys):
    """A run trained on a bundle made in Python records no data path: its eval reads the embedded
    benchmark, which the note named as the run's data, changed since."""
    from test_recipe import tiny_cfg

    from ramer.data.synthetic import generate
    from ramer.train.recipe import Recipe

    cfg = tiny_cfg(extra=["train.epochs=1"])
    Recipe(cfg, tmp_path / "run", bundle=generate(cfg.data.synthetic.model_copy(update={"seed": 7}))).run()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    said = "the embedded benchmark (or the run was trained on data made in Python: give that data) has changed"
    assert f"note: split 'test' of {said}" in capsys.readouterr().err


def test_errors_say_what_the_path_given_is(tmp_path, fake_text, capsys, monkeypatch):
    """A file where a run folder goes, a folder where a table goes, a file named as a folder
    format, a JSON value of the wrong kind, an empty list: each said as it is."""
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "talk.csv", base_rows())
    import_conversations("talk.csv", "ds")
    assert main(["train", "--model", "br", "--data", "ds", "--out", "run"]) == 0
    fw.write_mosei_aligned(tmp_path / "m.pt")
    capsys.readouterr()
    (tmp_path / "run" / "model.safetensors").rename(tmp_path / "run" / "model.safetensors.bak")
    assert main(["eval", "run/model.safetensors.bak"]) == 0  # a model file by its content, whatever its name
    (tmp_path / "run" / "model.safetensors.bak").rename(tmp_path / "run" / "model.safetensors")
    capsys.readouterr()
    cases = [
        (
            ["eval", "run/config.yaml"],
            "error: run/config.yaml: a file, not a run folder (or its model.safetensors); the run is run",
        ),
        (["data", "import", "ds", "--out", "x"], "error: ds: a folder; give the table file (.csv, .tsv, .jsonl)"),
        (["data", "info", "m.pt", "--format", "native"], "error: m.pt: is a file; format 'native' is a native dataset"),
        (
            ["data", "info", "m.pt", "--format", "memor"],
            "error: m.pt: is a file; format 'memor' is a MEmoR release, a folder",
        ),
        (
            ["train", "--data", "ds", "--set", "data.format=synthetic", "--out", "run2"],
            "error: data format 'synthetic' is the embedded benchmark and reads no path, but the path ds is given",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert capsys.readouterr().err.startswith(message), argv
    assert not (tmp_path / "run2").exists()
    assert main(["data", "info", "ds"]) == 0  # the layout data.format would name, and what it was made from
    assert capsys.readouterr().out.startswith("format        native (made from conversations)   (ds)")
    rows = tmp_path / "t.jsonl"
    rows.write_text('{"conversation": "c", "index": true, "speaker": "a", "text": "hi"}\n')
    with pytest.raises(RamerError, match="column 'index' holds True, expected an integer"):
        read_table(rows)
    with pytest.raises(RamerError, match="--missing-rates: empty list"):
        parse_rates("")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_the_hint_after_ctrl_c_names_a_command_that_works(tmp_path, capsys, monkeypatch):
    """Stopped after the first model file was written but before a state to resume from: running
    the command again is refused there, so the hint says what works (from what the folder holds)."""
    from ramer.train.classical import ClassicalRecipe
    from ramer.train.recipe import Recipe

    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:  # a classical fit stopped after its model was saved, before the test
        m.setattr(ClassicalRecipe, "test", _interrupt)
        assert main(["train", "--model", "br", "--out", "fit", *SETS[:6]]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "interrupted before a state to resume from was saved: fit already holds a run; "
        "use --resume fit or another --out"
    )
    assert main(["train", "--resume", "fit"]) == 0  # what the hint says: it fits again
    with monkeypatch.context() as m:  # a deep run stopped between its best model and its state
        m.setattr(Recipe, "_save_train_state", _interrupt)
        assert main(["train", "--out", "deep", *SETS]) == 130
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(
            "interrupted before a state to resume from was saved: deep holds a run's model.safetensors, metrics.jsonl "
            "but no train_state.pt to resume from"
        )
    )
    assert main(["train", "--out", "deep", *SETS]) == 2  # the command again is refused, as the hint says


def test_ctrl_c_in_the_first_epoch_leaves_no_folder_made_for_the_run(tmp_path, capsys, monkeypatch):
    """A folder this command made (no --out, or an --out not there before) holding only the config
    and the empty log the run started it with is removed; a user's folder that was there stays."""
    from ramer.train.recipe import Recipe

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Recipe, "train_epoch", _interrupt)
    assert main(["train", *SETS]) == 130
    assert main(["train", "--out", "new/run", *SETS]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "interrupted before anything was saved to resume from: run the command again"
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "new" / "run").exists()
    (tmp_path / "mine").mkdir()
    assert main(["train", "--out", "mine", *SETS]) == 130
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["config.yaml", "metrics.jsonl"]


def test_train_and_eval_on_the_embedded_benchmark_print_its_ceiling(tmp_path, capsys):
    """Every results table on the embedded benchmark prints the oracle beside the model (SYNTHETIC.md):
    train's test table and eval's, on the generated data and on a folder of it; not on other data."""
    from ramer.data.synthetic import generate

    run = tmp_path / "br"
    assert main(["train", "--model", "br", "--out", str(run), *SETS]) == 0
    oracle = generate(build_config(run / "config.yaml").data.synthetic).info["oracle"]["test"]["overall"]
    row = f"│ oracle (sees the latent state) │ overall    │ {oracle['n']} │   {oracle['micro_f1']:.4f} │"
    assert row in capsys.readouterr().out
    assert main(["eval", str(run)]) == 0
    assert row in capsys.readouterr().out
    data = tmp_path / "m.pt"
    fw.write_mosei_aligned(data)
    assert main(["train", "--model", "br", "--data", str(data), "--out", str(tmp_path / "mosei")]) == 0
    assert "oracle" not in capsys.readouterr().out


def test_train_and_eval_print_the_same_table_for_a_test_split_of_one_role(tmp_path, capsys):
    """One test scene: the oracle's other role has no target. train printed it as a row of "–" from
    the data's raw figures, eval (through oracle_report) left it out; the two tables now agree."""
    run = tmp_path / "br"
    assert main(["train", "--model", "br", "--out", str(run), *SETS, "--set", "data.synthetic.n_test=1"]) == 0
    trained = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("│")]
    assert main(["eval", str(run)]) == 0
    evaluated = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("│")]
    assert trained == evaluated and any("oracle" in ln for ln in trained)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "{long}"],
        ["train", "--config", "{long}.yaml"],
        ["eval", "{long}"],
        ["predict", "{run}", "--out", "{long}/p.jsonl"],
        ["data", "import", "{long}.csv", "--out", "{tmp}/ds"],
        ["demo", "--out", "{long}/demo"],
    ],
)
def test_a_name_longer_than_the_file_system_allows_is_one_line(argv, tmp_path, capsys, tiny_run):
    """A path with a name past the file system's limit (255 bytes here) fails at whichever check
    first looks it up (``Path.exists`` raises ENAMETOOLONG): one line naming it, not a traceback."""
    long = str(tmp_path / ("y" * 300))
    try:
        os.stat(long)
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            pytest.skip(f"this file system takes a 300-byte name ({e.strerror})")
    argv = [a.format(long=long, run=tiny_run[0], tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {long}") and "longer than the file system allows" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("end", ["/", "/."])
@pytest.mark.parametrize("argv", [["predict", "--out"], ["view", "--out"], ["export", "--onnx"]])
def test_an_output_name_ending_in_a_slash_names_a_folder_not_a_file(argv, end, tmp_path, capsys, tiny_run):
    """``--out newdir/`` for a folder that does not exist yet: ``Path`` drops the slash, and a file
    named ``newdir`` was written; it is refused as the name of an existing folder is, nothing made."""
    (command, flag), new = argv, f"{tmp_path / 'newdir'}{end}"
    assert main([command, str(tiny_run[0]), flag, new]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {new}: names a folder, not a file; give a file name\n"
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("command", ["predict", "view"])
def test_a_failed_command_leaves_no_folder_it_made_for_its_output(command, tmp_path, capsys):
    """The output's folders are made before the work (that an unusable path fails at once is
    test_predict's ``test_predict_output_path_is_checked_before_the_work``); a command that fails
    after (a run that is not there) removes those it made, not those that were there."""
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "new" / "deeper" / "out.file"
    assert main([command, str(tmp_path / "nothere"), "--out", str(out)]) == 2
    assert "nothere" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


def test_an_output_file_is_refused_where_it_would_destroy_a_run_or_a_dataset(tmp_path):
    """An output file may not be a folder, nor a file of a run (a folder with a config.yaml) or of a
    dataset (meta.json, or a file of one of its split folders), nor lie under a file; a new file
    beside them is allowed. (Each check of output_file and check_out_folder removed in turn.)"""
    run, data = tmp_path / "run", tmp_path / "data"
    (data / "test").mkdir(parents=True)
    run.mkdir()
    for path in (run / "config.yaml", run / "model.safetensors", data / "meta.json", data / "test" / "labels.npy"):
        path.write_bytes(b"kept")
    refused = {
        run: f"{run}: is a folder; give a file name",
        run / "model.safetensors": f"{run / 'model.safetensors'}: is a file of the run in {run}; writing there would",
        data / "test" / "labels.npy": f"{data / 'test' / 'labels.npy'}: is a file of the dataset in {data}; writing",
        run / "config.yaml" / "p.jsonl": f"{run / 'config.yaml'}: exists and is not a folder",
    }
    for path, message in refused.items():
        with pytest.raises(RamerError) as e:
            output_file(path, make=False)
        assert str(e.value).startswith(message), str(e.value)
    assert output_file(run / "predictions.jsonl", make=False) == run / "predictions.jsonl"
    assert (run / "model.safetensors").read_bytes() == (data / "test" / "labels.npy").read_bytes() == b"kept"


def test_a_dataset_folder_holding_a_run_is_not_imported_into(tmp_path):
    """A dataset folder written before is written over and a user's own files there are left alone,
    but one that also holds a run's files is refused: the import would change that run's data under
    it. (The RUN_FILES filter of dataset_folder emptied.)"""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    assert dataset_folder(folder) == folder
    (folder / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(RamerError, match=r"holds model\.safetensors, which a dataset folder does not"):
        dataset_folder(folder)


def test_an_out_inside_a_dataset_or_a_study_is_refused(tmp_path, capsys):
    """``--out ds/train`` wrote a study (or a run) into a dataset's split folder, which the data
    command then refused to write again; ``tune --out study/trial-0000`` nested a study in another
    study's trial folder. Each is refused, naming what the folder is part of; nothing is written."""
    ds = tmp_path / "ds"
    sizes = ["--set", "n_train=32", "--set", "n_valid=8", "--set", "n_test=8"]
    assert main(["data", "synth", "--out", str(ds), *sizes]) == 0
    study = tmp_path / "st"
    (study / "trial-0000").mkdir(parents=True)
    (study / "study.db").write_bytes(b"")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    for argv, why in (
        (["tune", "--model", "late_fusion", "--data", str(ds), "--out", str(ds / "train")], "a folder of the dataset"),
        (["train", "--data", str(ds), "--out", str(ds / "test"), *for_data(SETS)], "a folder of the dataset"),
        (["tune", "--model", "late_fusion", "--out", str(study / "trial-0000"), *SETS], "a trial folder of the study"),
    ):
        assert main(argv) == 2, argv
        assert why in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_run_in_a_folder_whose_name_is_not_utf8_is_read_back(tmp_path, capsys):
    """A folder name of bytes that are not UTF-8 (Latin-1 'été' on Linux; a surrogate in Python): the
    run trained and wrote its model file, which then no command could read (safetensors' reader
    takes a name of UTF-8 text only), and --resume advised training it again."""
    parent = tmp_path / os.fsdecode(b"\xe9t\xe9")
    if not _makes(parent):  # macOS's file systems take UTF-8 names only
        pytest.skip("this file system takes no such name")
    run = parent / "run"
    assert main(["train", "--model", "late_fusion", "--out", str(run), *SETS]) == 0, capsys.readouterr().err
    # the commands to paste name the folder as a shell gives it back: its byte as \xe9 in $'...'
    assert (
        f"ramer eval $'{os.fsencode(str(run)).decode('latin-1').replace(chr(0xE9), chr(92) + 'xe9')}'"
        in capsys.readouterr().err
    )
    assert main(["eval", str(run)]) == 0, capsys.readouterr().err
    assert main(["predict", str(run), "--out", str(tmp_path / "p.jsonl")]) == 0, capsys.readouterr().err
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 20


@pytest.mark.skipif(shutil.which("bash") is None, reason="runs bash")
def test_a_path_to_paste_is_given_back_by_the_shell_byte_for_byte():
    """``paths.shell_quote``: a name with a byte that is not UTF-8, or a control character, was
    quoted as text that no shell turns back into that byte (``'r\\udcff'``); now ``$'r\\xff'``."""
    from ramer.paths import shell_quote

    for raw in [b"r\xff", b"esc\x1bx", b"tab\tx", "\u00e9t\u00e9 x".encode() + b"\xe9", b"it's", b"a b", b"-run"]:
        quoted = shell_quote(os.fsdecode(raw))
        got = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, check=True).stdout
        assert got == raw, quoted


def _makes(folder) -> bool:
    try:
        folder.mkdir()
    except OSError:
        return False
    return True
