"""A newcomer's first hour with the command line: every long command ends by saying where its
outputs are and what to run next, Ctrl-C says how to go on (and that works, paths with spaces
included), output cut short by its reader ends quietly with 141, and the help leads to the start."""

import json
import shlex
from pathlib import Path

from test_conversations import base_rows, write_table
from test_recipe import to_closed_pipe

import ramer.train
from ramer.cli import build_parser, main
from ramer.data import features as F

TINY = [
    *("data.synthetic.n_train=40", "data.synthetic.n_valid=20", "data.synthetic.n_test=20", "train.epochs=1"),
    *("model.hidden=16", "model.ffn=32", "model.heads=2", "model.queue_size=64", "train.threads=1"),
]
SETS = [x for s in TINY for x in ("--set", s)]


def hinted(err: str, start: str) -> list[str]:
    """The command of the hint that begins with ``start`` (``ramer eval``...), as the shell reads it."""
    tail = err[err.index(start) :].splitlines()[0]
    return shlex.split(tail.split(", ramer ")[0])


def test_train_ends_with_the_run_folder_and_commands_that_paste(tmp_path, capsys, monkeypatch):
    """After the table: the run folder and the next commands, quoted so that a folder name with a
    space pastes as one argument; the hinted eval runs."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "my run"
    assert main(["train", "--model", "late_fusion", "--out", str(run), *SETS]) == 0
    err = capsys.readouterr().err
    assert f"run folder: {run}; next: ramer eval " in err
    eval_cmd = hinted(err, "ramer eval")
    assert eval_cmd == ["ramer", "eval", str(run)]
    assert hinted(err, "ramer view") == ["ramer", "view", str(run), "--out", "scenes.html"]
    assert main(eval_cmd[1:]) == 0


def test_ctrl_c_resume_hint_pastes_with_a_space_in_the_folder(tmp_path, capsys, monkeypatch):
    def interrupted(cfg, out, **kwargs):
        (out / "train_state.pt").write_bytes(b"")  # an epoch's state was saved
        raise KeyboardInterrupt

    monkeypatch.setattr(ramer.train, "run_training", interrupted)
    run = tmp_path / "my run"
    assert main(["train", "--model", "late_fusion", "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert hinted(err, "ramer train") == ["ramer", "train", "--resume", str(run)]


def test_demo_ctrl_c_says_to_run_it_again_and_that_works(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the demo: one line that says what to do; the same command then runs to the end and
    says where the runs are and what to run next."""
    real = ramer.train.run_training

    def interrupted(cfg, out, **kwargs):
        real(cfg, out, **kwargs)  # a finished run of the demo...
        raise KeyboardInterrupt  # ...then Ctrl-C

    monkeypatch.setattr(ramer.train, "run_training", interrupted)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SETS]) == 130
    err = capsys.readouterr().err
    assert f"interrupted; run the same command again to start the demo over (it replaces its runs in {out})" in err
    monkeypatch.setattr(ramer.train, "run_training", real)
    assert main(["demo", "--out", str(out), *SETS]) == 0
    err = capsys.readouterr().err
    assert hinted(err, "ramer eval") == ["ramer", "eval", str(out / "ramer")]


def test_import_ctrl_c_after_some_features_says_they_are_kept(tmp_path, fake_text, capsys, monkeypatch):
    """Ctrl-C once a conversation's features are cached: the line says so and the same command goes
    on from there; Ctrl-C before any is cached claims nothing (main's one line)."""
    table = write_table(tmp_path / "talk.csv", base_rows())
    real_put = F.FeatureCache.put
    puts = []

    def put_then_stop(self, *args, **kwargs):
        if len(puts) == stop_after:
            raise KeyboardInterrupt
        puts.append(args)
        real_put(self, *args, **kwargs)

    monkeypatch.setattr(F.FeatureCache, "put", put_then_stop)
    stop_after = 0
    assert main(["data", "import", str(table), "--out", str(tmp_path / "none")]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"

    stop_after = 1
    ds = tmp_path / "ds"
    assert main(["data", "import", str(table), "--out", str(ds)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted; the features computed so far are kept in {ds / 'cache'}: run the same command again" in err
    monkeypatch.setattr(F.FeatureCache, "put", real_put)
    assert main(["data", "import", str(table), "--out", str(ds)]) == 0
    out, err = capsys.readouterr()
    assert "text computed 2 / cached 1 conversations" in out
    assert err.strip().splitlines()[-1] == f"next: ramer train --data {ds}"


def test_import_ctrl_c_in_the_text_model_keeps_the_conversations_embedded_before(
    tmp_path, fake_text, capsys, monkeypatch
):
    """Ctrl-C while the text model embeds the second of three conversations: the first's entry was
    written only after every conversation was embedded, so none was kept, though the line said the
    features were; the same command computed all three again."""
    table = write_table(tmp_path / "talk.csv", base_rows())
    embed = F.embed_texts

    def stop_at_the_second(texts, advance=None):
        if len(fake_text) == 1:
            raise KeyboardInterrupt
        return embed(texts, advance)

    monkeypatch.setattr(F, "embed_texts", stop_at_the_second)
    ds = tmp_path / "ds"
    assert main(["data", "import", str(table), "--out", str(ds)]) == 130
    assert "interrupted; the features computed so far are kept in" in capsys.readouterr().err
    monkeypatch.setattr(F, "embed_texts", embed)
    assert main(["data", "import", str(table), "--out", str(ds)]) == 0
    assert "text computed 2 / cached 1 conversations" in capsys.readouterr().out
    assert len(fake_text) == 3  # one batch a conversation: the first embedded once


def test_a_table_to_a_closed_pipe_ends_quietly_with_141(tmp_path):
    """`ramer data synth ... | head -1`: rich's own answer to the closed pipe was exit code 1; as
    for plain print, the reader going away is 141 with nothing on stderr."""
    sizes = ["--set", "n_train=8", "--set", "n_valid=4", "--set", "n_test=4"]
    proc = to_closed_pipe(["data", "synth", "--out", str(tmp_path / "d"), *sizes])
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
    assert (tmp_path / "d" / "meta.json").is_file()  # written before the report


def test_help_leads_a_newcomer_to_the_start_and_to_import():
    parser = build_parser()
    top = parser.format_help()
    assert "First steps: ramer demo" in top and "ramer data import" in top
    assert "import your own conversations" in top  # the data command's line
    bench = [a for a in parser._actions if a.dest == "command"][0].choices["bench"]
    assert "--seeds N" in bench.format_usage()


def test_bench_header_counts_in_words(tmp_path, capsys, monkeypatch):
    import ramer.bench

    monkeypatch.setattr(ramer.bench, "run_bench", lambda settings, console: None)
    assert main(["bench", "--quick", "--models", "br", "--complete", "", "--out", str(tmp_path / "b")]) == 0
    assert "bench: 1 model x 1 seed x 2 missing rates, " in capsys.readouterr().err


def test_unlabelled_import_points_to_predict(tmp_path, fake_text, capsys):
    table = write_table(tmp_path / "talk.csv", base_rows(labelled=False))
    ds = tmp_path / "ds"
    assert main(["data", "import", str(table), "--out", str(ds), "--labels", "anger,joy,neutral,sadness"]) == 0
    assert f"next: ramer predict RUN_DIR --data {ds} --out preds.jsonl" in capsys.readouterr().err


def test_the_example_table_goes_through_the_quick_start(tmp_path, fake_text, capsys, monkeypatch):
    """README's own-data commands on examples/talk.csv, the table a newcomer can try them on: the
    import reads all of it, and training, predict and view run on what it wrote."""
    table = Path(__file__).resolve().parent.parent / "examples" / "talk.csv"
    monkeypatch.chdir(tmp_path)
    assert main(["data", "import", str(table), "--out", "data/talk"]) == 0
    said = capsys.readouterr()
    summary = "12 conversations, 74 utterances, 4 persons; labels (6): anger, fear, joy, neutral, sadness"
    assert summary in said.out + said.err
    assert main(["train", "--data", "data/talk", "--out", "runs/talk", "--set", "train.epochs=2"]) == 0
    assert main(["predict", "runs/talk", "--out", "preds.jsonl"]) == 0
    assert main(["view", "runs/talk", "--out", "talk.html"]) == 0
    test = json.loads(Path("data/talk/meta.json").read_text())["splits"]["test"]
    assert test > 0 and len(Path("preds.jsonl").read_text().splitlines()) == test
