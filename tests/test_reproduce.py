"""`ramer reproduce` end to end on the benchmark fixtures, with a tiny model."""

import json

import pytest
import yaml
from fixtures_writers import write_m3ed_pickle, write_memor, write_mosei_aligned

from ramer.cli import main

TINY = [
    "model.hidden=16",
    "model.ffn=16",
    "model.heads=2",
    "model.layers.text=1",
    "model.layers.audio=1",
    "model.layers.visual=1",
    "model.queue_size=64",
    "model.proj_size=8",
    "train.epochs=2",
    "train.batch_size=4",
]


def reproduce(bench, data, out, seeds=2):
    argv = ["reproduce", bench, "--data", str(data), "--seeds", str(seeds), "--out", str(out)]
    return main(argv + sum((["--set", s] for s in TINY), []))


def test_the_reported_command_pastes_as_it_is(tmp_path, monkeypatch):
    """Its Command line joined the arguments unquoted: a data path with a space split in two, and an
    --out starting with a dash was taken for an option."""
    import shlex

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my data").mkdir()
    write_mosei_aligned(tmp_path / "my data" / "train_valid_test.pt")
    argv = ["reproduce", "mosei", "--data", "my data/train_valid_test.pt", "--seeds", "1", "--out=-rep"]
    assert main(argv + sum((["--set", s] for s in TINY), [])) == 0
    line = next(ln for ln in (tmp_path / "-rep" / "results.md").read_text().splitlines() if ln.startswith("Command:"))
    argv = shlex.split(line.removeprefix("Command: `").removesuffix("`"))
    assert argv[:8] == ["ramer", "reproduce", "mosei", "--data", "my data/train_valid_test.pt", "--seeds", "1", "--out"]
    assert argv[8] == "./-rep" and argv[9:11] == ["--set", TINY[0]]


def test_an_empty_test_split_is_refused_before_any_run(tmp_path, capsys):
    """A protocol's figures are the test split's: without a sample there, a table of no rows."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data, sizes=(6, 3, 0))
    assert reproduce("mosei", data, tmp_path / "out") == 2
    assert f"{data}: the test split is empty; ramer reproduce reports figures" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_loader_option_the_data_does_not_read_is_refused_before_any_run(tmp_path, capsys):
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    argv = ["reproduce", "mosei", "--data", str(data), "--out", str(tmp_path / "out"), "--set", "data.max_utterances=5"]
    assert main(argv) == 2
    said = f"data.max_utterances=5: {data} holds mosei_aligned data, whose loader would ignore it"
    assert said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bench", ["mosei", "mosei_authors", "m3ed", "memor_primary", "memor_fine"])
def test_reproduce_writes_the_table(tmp_path, bench, capsys):
    if bench.startswith("mosei"):
        data = tmp_path / "train_valid_test.pt"
        write_mosei_aligned(data)
    elif bench == "m3ed":
        data = tmp_path / "A-V-L.pkl"
        write_m3ed_pickle(data)
    else:
        data = tmp_path / "memor"
        write_memor(data)
    out = tmp_path / "out"
    assert reproduce(bench, data, out) == 0
    text = (out / "results.md").read_text()
    first = 42 if bench == "mosei_authors" else 1  # the authors' script trains with seed 42
    assert f"mean ± std (sample std) over 2 seed(s): {first}, {first + 1}" in text and "| overall |" in text
    assert f"Command: `ramer reproduce {bench} --data {data} --seeds 2 --out {out}" in text
    assert f"Settings changed from config `{'authors_mosei' if bench == 'mosei_authors' else bench}` (--set): " in text
    assert "`model.hidden=16`, `model.ffn=16`" in text
    assert ("Top-1" in text and "| nonspeaker |" in text) if bench.startswith("memor") else "Top-1" not in text
    authors = {  # how the authors' code decides, said where the benchmark is read as theirs
        "mosei_authors": "test once (the authors' script decides at a fixed threshold of 0.25: docs/MODEL.md).",
        "memor_primary": "test once (the authors' code tests MEmoR's last epoch at a fixed threshold of 0.25: "
        "docs/MODEL.md).",
    }
    authors["memor_fine"] = authors["memor_primary"]
    assert authors[bench] in text if bench in authors else "validation, test once.\n" in text, text
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == 2 and all("micro_f1" in r["overall"] for r in runs)
    seeds = [out / f"seed{first + k}" for k in (0, 1)]
    assert all((run / "test_metrics.json").exists() for run in seeds)
    model = yaml.safe_load((seeds[0] / "config.yaml").read_text())["model"]["name"]
    assert model == ("ramer-authors" if bench == "mosei_authors" else "ramer")
    # A second call reuses finished seeds instead of training again.
    before = (seeds[0] / "model.safetensors").stat().st_mtime_ns
    assert reproduce(bench, data, out) == 0
    assert (seeds[0] / "model.safetensors").stat().st_mtime_ns == before
    if bench == "m3ed":  # finished seeds made with other settings: not mixed into one table
        capsys.readouterr()
        assert main(["reproduce", bench, "--data", str(data), "--seeds", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{seeds[0]} was made with other settings (" in err and "model.hidden" in err
        other = tmp_path / "other.pkl"  # ... nor seeds made on other data
        write_m3ed_pickle(other, seed=1)
        assert reproduce(bench, other, out) == 2
        err = capsys.readouterr().err
        assert f"{seeds[0]} was made on other data than {other} (data.path {data} there)" in err, err
        write_m3ed_pickle(data, seed=1)  # other data at the same path: the seeds' fingerprints say so
        assert reproduce(bench, data, out) == 2
        err = capsys.readouterr().err
        assert f"{seeds[0]} was made on other data than {data} (the files at {data} have changed since (splits" in err
        write_m3ed_pickle(data)  # the data the seeds were made on, again
        kept = seeds[0] / "kept.safetensors"  # without its model file, a seed cannot say what data it saw
        (seeds[0] / "model.safetensors").rename(kept)
        assert reproduce(bench, other, out) == 2
        err = capsys.readouterr().err
        assert f"{seeds[0]}: its model.safetensors, which records the data the seed was trained on, is gone" in err
        kept.rename(seeds[0] / "model.safetensors")
        (seeds[0] / "config.yaml").rename(seeds[0] / "kept.yaml")  # gone: said so, with what to do
        assert reproduce(bench, data, out) == 2
        err = capsys.readouterr().err
        assert f"{seeds[0] / 'config.yaml'}: config file not found; remove {seeds[0]} to train it again" in err
        assert "another build" not in err
        (seeds[0] / "kept.yaml").rename(seeds[0] / "config.yaml")
    if bench == "m3ed":  # a finished seed's file cut short: one line naming it, nothing removed
        (seeds[0] / "test_metrics.json").write_text('{"overall": ')
        capsys.readouterr()
        assert reproduce(bench, data, out) == 2
        assert f"{seeds[0] / 'test_metrics.json'}: unreadable" in capsys.readouterr().err
        assert (seeds[0] / "model.safetensors").stat().st_mtime_ns == before


def test_one_benchmark_a_folder_and_its_data_from_data_alone(tmp_path, capsys):
    """Another benchmark into a folder that holds one's results replaced its report and mixed their
    seeds; a --set data.path went unused while the report's command showed it. Both refused."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    out = tmp_path / "out"
    assert reproduce("mosei", data, out, seeds=1) == 0
    report = (out / "results.md").read_bytes()
    assert reproduce("mosei_authors", data, out, seeds=1) == 2
    assert f"{out}: holds the results of ramer reproduce mosei; give another --out for mosei_authors" in (
        capsys.readouterr().err
    )
    assert (out / "results.md").read_bytes() == report and not (out / "seed42").exists()
    argv = ["reproduce", "mosei", "--data", str(data), "--out", str(tmp_path / "o2"), "--set", "data.path=x.pt"]
    assert main(argv) == 2
    assert "--set data.path=x.pt: ramer reproduce reads the data given with --data" in capsys.readouterr().err


def test_reproduce_rejects_unknown_data(tmp_path, capsys):
    assert reproduce("mosei", tmp_path / "missing.pt", tmp_path / "o") == 2
    assert "data path not found" in capsys.readouterr().err


def test_reproduce_refuses_another_corpus_data(tmp_path, capsys):
    """A benchmark's protocol, config and table heading go with its corpus: data of another layout
    (a file, or a folder converted from one) is refused before any run, naming what it holds."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    assert main(["data", "convert", str(data), "--format", "mosei_aligned", "--out", str(tmp_path / "native")]) == 0
    capsys.readouterr()
    for given in (data, tmp_path / "native"):
        assert reproduce("m3ed", given, tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert f"{given}: holds mosei_aligned data; ramer reproduce m3ed reads m3ed_pickle or m3ed_carat" in err, err
    assert not (tmp_path / "out").exists()


def test_a_refused_setting_leaves_no_folder_it_made(tmp_path, capsys):
    """A setting no run trains with, refused at the first seed, left the --out (and the parents) made
    for it behind, empty; a folder the user had stays."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    bad = ["--set", "train.lr=100", "--set", "train.weight_decay=1"]
    for out in (tmp_path / "runs" / "rep", tmp_path / "mine"):
        if out.name == "mine":
            out.mkdir()
        argv = ["reproduce", "mosei", "--data", str(data), "--seeds", "1", "--out", str(out), *bad]
        assert main(argv) == 2 and "train.lr 100 x train.weight_decay 1 is 100" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "train_valid_test.pt"]


def test_reproduce_takes_a_converted_directory(tmp_path):
    """`--data` may be a directory written by `ramer data convert`: it loads as itself."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    assert main(["data", "convert", str(data), "--format", "mosei_aligned", "--out", str(tmp_path / "native")]) == 0
    assert reproduce("mosei", tmp_path / "native", tmp_path / "out", seeds=1) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]["overall"]["n"] > 0


def test_reproduce_runs_a_classical_model(tmp_path):
    """Every model trains through the one entry (`ramer.train.run_training`), so the paper protocol
    runs a scikit-learn baseline too, into the same run folders."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    argv = ["reproduce", "mosei", "--data", str(data), "--seeds", "2", "--out", str(tmp_path / "br")]
    assert main(argv + ["--set", "model.name=br"]) == 0
    runs = json.loads((tmp_path / "br" / "results.json").read_text())["runs"]
    assert len(runs) == 2 and all("micro_f1" in r["overall"] for r in runs)
    assert (tmp_path / "br" / "seed1" / "model.safetensors").exists()


def test_a_seed_stopped_before_its_first_state_is_trained_again(tmp_path, capsys):
    """A kill between epoch 1's model file and its train_state.pt leaves nothing to resume: reproduce
    starts that seed again (as bench does) instead of stopping at the run folder's refusal."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    assert reproduce("mosei", data, tmp_path / "out", seeds=1) == 0
    seed = tmp_path / "out" / "seed1"
    for name in ("train_state.pt", "test_metrics.json"):
        (seed / name).unlink()
    capsys.readouterr()
    assert reproduce("mosei", data, tmp_path / "out", seeds=1) == 0
    assert f"seed 1: {seed} holds no state to resume from; removing its files" in capsys.readouterr().err
    assert (seed / "test_metrics.json").is_file()


def test_a_seed_folder_holding_the_users_own_files_is_refused_not_cleared(tmp_path, capsys):
    """A seed folder without a training state is cleared for the seed to start again, but only of what
    a run writes: a file of the user's there is named, and nothing is removed."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    seed = tmp_path / "out" / "seed1"
    (seed / "sub").mkdir(parents=True)
    (seed / "notes.txt").write_text("my notes")
    (seed / "sub" / "important.csv").write_text("a,b")
    (seed / "metrics.jsonl").write_text("")  # what a run stopped at once left
    assert reproduce("mosei", data, tmp_path / "out", seeds=1) == 2
    err = capsys.readouterr().err
    assert f"{seed}: holds no training state to resume from, and files a run does not write (notes.txt, sub)" in err
    assert (seed / "notes.txt").read_text() == "my notes" and (seed / "sub" / "important.csv").is_file()
    assert (seed / "metrics.jsonl").is_file() and not (tmp_path / "out" / "results.md").exists()


def test_a_role_no_target_has_gets_no_row():
    """A part with n = 0 (no non-speaker target in the split) is no score: no row of zeros."""
    from ramer.reproduce import summarise

    part = {"acc": 0.5, "hamming_loss": 0.1, "micro_p": 0.5, "micro_r": 0.5, "micro_f1": 0.5, "macro_f1": 0.4}
    empty = {**{k: 0.0 for k in part}, "n": 0}
    table = summarise([{"overall": {**part, "n": 4}, "speaker": {**part, "n": 4}, "nonspeaker": empty}] * 2, False)
    assert "| speaker | 4 |" in table and "nonspeaker" not in table


def test_a_converted_folder_must_hold_the_benchmarks_reading(tmp_path, capsys):
    """A folder converted with other loader options (MEmoR's other label set, another M3ED cut) was
    trained and scored as it holds, under the benchmark's name and config: refused before any run,
    naming the key, both values and the convert command that makes the right folder."""
    memor = tmp_path / "memor"
    write_memor(memor)
    m3ed = tmp_path / "A-V-L.pkl"
    write_m3ed_pickle(m3ed)
    convert = [
        (memor, ["--labels", "fine_grained"], "memor_primary", "data.labels fine_grained", "data.labels primary", ""),
        (memor, [], "memor_fine", "data.labels primary", "data.labels fine_grained", " --labels fine_grained"),
        (m3ed, ["--set", "data.max_utterances=4"], "m3ed", "data.max_utterances 4", "data.max_utterances 60", ""),
    ]
    for k, (source, options, bench, held, wanted, fix) in enumerate(convert):
        folder = tmp_path / f"conv{k}"
        assert main(["data", "convert", str(source), "--out", str(folder), *options]) == 0
        capsys.readouterr()
        assert reproduce(bench, folder, tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert f"{folder}: converted with {held}; ramer reproduce {bench} reads {wanted}" in err, err
        if bench == "m3ed":
            fix = " --set data.max_utterances=60"
        elif bench == "memor_primary":
            fix = " --labels primary"
        assert f"(ramer data convert {source}{fix} --out DIR)" in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert reproduce("memor_fine", tmp_path / "conv0", tmp_path / "out", seeds=1) == 0  # the right reading


def test_train_bench_and_tune_refuse_a_loader_option_the_folder_was_not_converted_with(tmp_path, capsys):
    """A converted folder is read as it was converted: `ramer train --set data.labels=primary` on a
    fine-grained folder trained 14 labels while its config.yaml said primary. A loader option that
    the config sets (its file or --set) otherwise than the folder records is refused by train, bench,
    tune and run_training, before any folder is made. One the config leaves at its default takes the
    folder's value, so a run's config.yaml and a tune's best.yaml train on the folder again."""
    from ramer.config import build_config
    from ramer.errors import RamerError
    from ramer.train import run_training

    write_memor(tmp_path / "memor")
    write_m3ed_pickle(tmp_path / "A-V-L.pkl")
    fine, cut = tmp_path / "fine", tmp_path / "cut"
    assert main(["data", "convert", str(tmp_path / "memor"), "--labels", "fine_grained", "--out", str(fine)]) == 0
    assert (
        main(["data", "convert", str(tmp_path / "A-V-L.pkl"), "--set", "data.max_utterances=4", "--out", str(cut)]) == 0
    )
    tiny = sum((["--set", s] for s in TINY), [])
    out = tmp_path / "out"
    cases = [
        (fine, ["train", "--set", "data.labels=primary"], "data.labels fine_grained", "data.labels primary"),
        (fine, ["train", "--config", "memor_primary"], "data.labels fine_grained", "data.labels primary"),
        (
            fine,
            ["train", "--nproc", "2", "--set", "data.labels=primary"],
            "data.labels fine_grained",
            "data.labels primary",
        ),
        (cut, ["train", "--config", "m3ed"], "data.max_utterances 4", "data.max_utterances 60"),
        (cut, ["bench", "--set", "data.max_utterances=60"], "data.max_utterances 4", "data.max_utterances 60"),
        (
            fine,
            ["tune", "--model", "late_fusion", "--set", "data.labels=primary"],
            "data.labels fine_grained",
            "data.labels primary",
        ),
    ]
    capsys.readouterr()
    for folder, argv, held, asked in cases:
        assert main([*argv, "--data", str(folder), *tiny, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err
        source, fix = (tmp_path / "memor", "--labels primary") if folder == fine else (tmp_path / "A-V-L.pkl", "")
        fix = fix or "--set data.max_utterances=60"
        assert err.count(f"{folder}: converted with {held}, but the config sets {asked}; ") == 1, err
        assert f"(ramer data convert {source} {fix} --out DIR)" in err, err
        assert not out.exists(), argv
    with pytest.raises(RamerError, match="converted with data.labels fine_grained, but the config sets"):
        run_training(build_config(None, [f"data.path={fine}", "data.labels=primary", *TINY]), out)
    assert not out.exists()
    # the folder's own reading, given or left at the default, trains, and the run's config.yaml and a
    # tune's best.yaml record it: each trains on the folder again as --config
    assert main(["train", "--data", str(fine), "--set", "data.labels=fine_grained", *tiny, "--out", str(out)]) == 0
    assert main(["train", "--data", str(cut), *tiny, "--out", str(tmp_path / "out2")]) == 0
    assert yaml.safe_load((tmp_path / "out2" / "config.yaml").read_text())["data"]["max_utterances"] == 4
    assert main(["train", "--config", str(tmp_path / "out2" / "config.yaml"), "--out", str(tmp_path / "out3")]) == 0
    study = tmp_path / "study"
    assert (
        main(["tune", "--model", "late_fusion", "--data", str(fine), *tiny, "--trials", "1", "--out", str(study)]) == 0
    )
    assert yaml.safe_load((study / "best.yaml").read_text())["data"]["labels"] == "fine_grained"
    assert main(["train", "--config", str(study / "best.yaml"), "--out", str(tmp_path / "out4")]) == 0


def test_a_finished_seed_is_read_back_from_the_converted_copy(tmp_path, capsys):
    """The same data converted (the split fingerprints match) is no other setting: finished seeds are
    read back, and a seed still in progress resumes, where data.format differs (a file's layout, a
    converted folder's auto)."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    out = tmp_path / "out"
    assert reproduce("mosei", data, out) == 0
    assert main(["data", "convert", str(data), "--out", str(tmp_path / "native")]) == 0
    (out / "seed2" / "test_metrics.json").unlink()  # seed 2 stopped after its last state
    before = (out / "seed1" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert reproduce("mosei", tmp_path / "native", out) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"seed 1: done earlier, reading {out / 'seed1'}" in err and f"seed 2: resuming in {out / 'seed2'}" in err
    assert (out / "seed1" / "model.safetensors").stat().st_mtime_ns == before
    assert (out / "seed2" / "test_metrics.json").is_file()


def test_a_damaged_finished_seed_is_one_line(tmp_path, capsys):
    """A seed's test_metrics.json that is JSON but not the metrics a table reads (not an object, a
    column missing, a text for a number, no overall part) is one line naming it; nothing is removed
    and the earlier tables stay."""
    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    out = tmp_path / "out"
    assert reproduce("mosei", data, out) == 0
    path = out / "seed2" / "test_metrics.json"
    good = json.loads(path.read_text())
    tables = [(out / name).read_bytes() for name in ("results.md", "results.json")]
    damaged = [
        [1, 2],
        {"overall": {"acc": 0.2, "n": 12}},
        {**good, "overall": {**good["overall"], "micro_f1": "0.5"}},
        {**good, "overall": {**good["overall"], "n": None}},
        {"foo": 1},
        {**good, "speaker": {**good["overall"], "acc": [0.5]}},
    ]
    for metrics in damaged:
        path.write_text(json.dumps(metrics))
        capsys.readouterr()
        assert reproduce("mosei", data, out) == 2, metrics
        err = capsys.readouterr().err
        assert f"{path}: unreadable; remove {out / 'seed2'} to train it again (" in err, (metrics, err)
        assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    assert [(out / name).read_bytes() for name in ("results.md", "results.json")] == tables
    assert (out / "seed2" / "model.safetensors").is_file()


def test_the_table_on_stdout_writes_a_paths_control_characters_out(tmp_path, capsys):
    """The table names the command that made it, its --data and --out paths as given: a path's ESC
    reached the terminal as its command."""
    data = tmp_path / "A-V-L.pkl"
    write_m3ed_pickle(data)
    out = tmp_path / "o\x1b[31mx"
    assert reproduce("m3ed", data, out, seeds=1) == 0
    said = capsys.readouterr()
    assert "\x1b" not in said.out + said.err
    assert f"--out $'{tmp_path}/o\\x1b[31mx'" in said.out  # as a shell gives the path back (paths.shell_quote)


def test_ctrl_c_says_how_to_go_on_and_the_same_command_does(tmp_path, monkeypatch, capsys):
    """Ctrl-C while seed 2 trains said only "interrupted", where bench and tune say to run the same
    command again; run again, it reads seed 1 back and trains seed 2."""
    import ramer.reproduce as reproduce_mod

    write_mosei_aligned(tmp_path / "m.pt")
    real = reproduce_mod.run_training

    def stopped_at_seed_2(cfg, run_dir, **kwargs):
        if cfg.train.seed == 2:
            raise KeyboardInterrupt
        return real(cfg, run_dir, **kwargs)

    monkeypatch.setattr(reproduce_mod, "run_training", stopped_at_seed_2)
    assert reproduce("mosei", tmp_path / "m.pt", tmp_path / "rep") == 130
    said = capsys.readouterr().err.splitlines()[-1]
    assert said == "interrupted; run the same command again to resume (finished seeds are read back)"
    monkeypatch.setattr(reproduce_mod, "run_training", real)
    assert reproduce("mosei", tmp_path / "m.pt", tmp_path / "rep") == 0
    err = capsys.readouterr().err
    assert f"seed 1: done earlier, reading {tmp_path / 'rep' / 'seed1'}" in err and "seed 2: training in" in err
