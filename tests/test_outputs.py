"""What a command writes never destroys what it or another command made: an output file is not a
file of a run, of a dataset or of the command's own input, and a dataset is written only into a
new, empty or dataset folder."""

import hashlib
import shutil

import pytest
from test_recipe import tiny_cfg

from ramer.cli import main
from ramer.data.synthetic import generate
from ramer.train.recipe import Recipe

SIZES = ["--set", "n_train=40", "--set", "n_valid=20", "--set", "n_test=20"]


def fingerprint(folder):
    """Every file under ``folder`` with the hash of its bytes."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "run"
    cfg = tiny_cfg(extra=["train.epochs=1"])
    Recipe(cfg, out, bundle=generate(cfg.data.synthetic)).run()
    return out


@pytest.mark.parametrize("name", ["model.safetensors", "config.yaml", "metrics.jsonl", "test_metrics.json"])
def test_predict_will_not_write_over_a_file_of_the_run(run, name, capsys):
    before = fingerprint(run)
    assert main(["predict", str(run), "--out", str(run / name)]) == 2
    whose = "a file this command reads" if name == "model.safetensors" else f"a file of the run in {run}"
    assert f"is {whose}" in capsys.readouterr().err
    assert fingerprint(run) == before


def test_predict_and_view_will_not_write_over_their_inputs(run, tmp_path, capsys):
    """Nor over a file of the dataset it scores, nor ``view`` over the predictions it reads."""
    data = tmp_path / "data"
    assert main(["data", "synth", "--out", str(data), *SIZES]) == 0
    before = fingerprint(data)
    for target in (data / "meta.json", data / "test" / "labels.npy"):
        assert main(["predict", str(run), "--data", str(data), "--out", str(target)]) == 2
        assert f"is a file of the dataset in {data}" in capsys.readouterr().err
    assert fingerprint(data) == before
    preds = tmp_path / "p.jsonl"
    assert main(["predict", str(run), "--out", str(preds)]) == 0
    kept = preds.read_bytes()
    assert main(["view", "--preds", str(preds), "--data", str(data), "--out", str(preds)]) == 2
    assert "is a file this command reads" in capsys.readouterr().err
    assert preds.read_bytes() == kept


def test_no_output_writes_over_the_model_file_it_reads(run, tmp_path, capsys):
    """A model file outside its run folder (RUN_DIR may be the file) is one the command reads:
    ``predict --out``, ``view --out`` and ``export --onnx`` there are refused, the file kept."""
    model = tmp_path / "m" / "best.safetensors"
    model.parent.mkdir()
    shutil.copy(run / "model.safetensors", model)
    kept = model.read_bytes()
    for argv in (
        ["predict", str(model), "--out", str(model)],
        ["view", str(model), "--out", str(model)],
        ["export", str(model), "--onnx", str(model)],
        ["predict", str(model.parent / ".." / "m" / model.name), "--out", str(model)],
    ):
        assert main(argv) == 2, argv
        assert f"{model}: is a file this command reads ({argv[1]})" in capsys.readouterr().err
        assert model.read_bytes() == kept


def test_files_of_the_users_beside_a_dataset_are_neither_refused_nor_touched(run, tmp_path, capsys):
    """An output written into a dataset folder may be written again, and the dataset written over with
    it there (it stays); a split folder left by a write that was cut off does not block the next."""
    data = tmp_path / "data"
    assert main(["data", "synth", "--out", str(data), *SIZES]) == 0
    for _ in range(2):
        assert main(["predict", str(run), "--data", str(data), "--out", str(data / "preds.jsonl")]) == 0
    kept = (data / "preds.jsonl").read_bytes()
    (data / "train.tmp").mkdir()  # what SceneStore.save leaves when killed mid-split
    assert main(["data", "synth", "--out", str(data), *SIZES]) == 0
    assert (data / "preds.jsonl").read_bytes() == kept and not (data / "train.tmp").exists()


@pytest.mark.parametrize("command", ["synth", "convert"])
def test_a_dataset_is_not_written_into_a_run_or_another_folder(run, tmp_path, command, capsys):
    """``data synth`` and ``data convert`` (``data import`` shares the check) refuse a folder that
    holds anything a dataset folder does not, and leave it as it was; a dataset folder written
    before is written over."""
    source = tmp_path / "source"
    assert main(["data", "synth", "--out", str(source), *SIZES]) == 0
    argv = {"synth": ["data", "synth", *SIZES, "--out"], "convert": ["data", "convert", str(source), "--out"]}[command]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for folder in (run, other):
        before = fingerprint(folder)
        assert main([*argv, str(folder)]) == 2
        err = capsys.readouterr().err
        assert "which a dataset folder does not; give a new or empty folder" in err
        assert fingerprint(folder) == before
    again = tmp_path / "again"
    assert main([*argv, str(again)]) == 0
    assert main([*argv, str(again)]) == 0
    assert (again / "meta.json").is_file()


DEMO = [
    *("data.synthetic.n_train=64", "data.synthetic.n_valid=32", "data.synthetic.n_test=40", "train.epochs=1"),
    *("train.batch_size=32", "model.hidden=16", "model.ffn=32", "model.heads=2", "model.queue_size=64"),
]


def test_demo_refuses_a_setting_no_run_trains_with_before_any_work(tmp_path, capsys):
    """The data generated, its tables printed and a demo.json naming a run that never started, before
    the first run refused a setting (a learning rate that flips the weights); each model's own check
    (model.temperature is ramer's) runs first."""
    for bad in (["train.lr=100", "train.weight_decay=1"], ["model.temperature=1e-6"]):
        assert main(["demo", "--out", str(tmp_path / "demo"), *[x for s in bad for x in ("--set", s)]]) == 2
        said = capsys.readouterr()
        assert said.out == "" and said.err.startswith("error: ") and "\n" not in said.err.strip(), said
        assert not (tmp_path / "demo").exists()


def test_demo_replaces_only_the_runs_it_made(run, tmp_path, capsys):
    """A run folder under the demo's --out that another command made is refused, untouched; the
    demo's own runs are replaced when it runs again. Data of the user's is refused before any work."""
    sets = [x for s in DEMO for x in ("--set", s)]
    assert main(["demo", "--out", str(tmp_path / "d"), *sets, "--set", f"data.path={tmp_path}"]) == 2
    assert "ramer demo trains on the embedded benchmark, and data.path is set" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    for key in ("model.name=br", "model.ablations=[no_shuffle]"):  # it trained RAMer all the same
        assert main(["demo", "--out", str(tmp_path / "d"), *sets, "--set", key]) == 2
        assert f"--set {key.split('=')[0]}: ramer demo trains ramer, late fusion" in capsys.readouterr().err
        assert not (tmp_path / "d").exists()
    mine = tmp_path / "mine"
    shutil.copytree(run, mine / "ramer")  # a late_fusion run: not one the demo makes there
    before = fingerprint(mine)
    assert main(["demo", "--out", str(mine), *sets]) == 2
    names = "config.yaml, metrics.jsonl, model.safetensors and 2 more"  # a late_fusion run's
    assert f"{mine / 'ramer'}: holds files that ramer demo did not write ({names})" in capsys.readouterr().err
    assert fingerprint(mine) == before
    demo = tmp_path / "demo"
    assert main(["demo", "--out", str(demo), *sets]) == 0
    first = (demo / "ramer" / "metrics.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--out", str(demo), *sets]) == 0
    assert f"replacing the earlier demo's {demo / 'ramer'}" in capsys.readouterr().err
    assert (demo / "ramer" / "metrics.jsonl").stat().st_mtime_ns != first
    # a file of the user's in the demo's own run folder: refused before any work, nothing removed
    (demo / "late_fusion" / "notes.txt").write_text("mine")
    before = fingerprint(demo)
    assert main(["demo", "--out", str(demo), *sets]) == 2
    said = f"{demo / 'late_fusion'}: an earlier demo's run, and files a run does not write (notes.txt); move them"
    assert said in capsys.readouterr().err
    assert fingerprint(demo) == before
    (demo / "late_fusion" / "notes.txt").unlink()
    # Without demo.json, a run of the folder's model on the embedded benchmark may be the user's
    # own `ramer train --out demo/ramer`: refused, untouched, like any run the demo did not make.
    (demo / "demo.json").unlink()
    before = fingerprint(demo)
    assert main(["demo", "--out", str(demo), *sets]) == 2
    assert f"{demo / 'ramer'}: holds files that ramer demo did not write" in capsys.readouterr().err
    assert fingerprint(demo) == before
