"""The training recipe end to end: run directory, resume, atomic saves, the CLI and its errors."""

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from ramer import checkpoint as ckpt
from ramer.cli import main
from ramer.config import build_config
from ramer.data.synthetic import generate
from ramer.dist import PARENT_ENV
from ramer.errors import RamerError
from ramer.models import known_models
from ramer.paths import atomic_write_text
from ramer.train import recipe as recipe_mod
from ramer.train.recipe import Recipe

TINY = [
    "data.synthetic.n_train=160",
    "data.synthetic.n_valid=40",
    "data.synthetic.n_test=50",
    "train.batch_size=32",
    "train.epochs=3",
    "model.hidden=16",
    "model.ffn=32",
    "model.heads=2",
    "train.lr=0.005",
]


def tiny_cfg(model="late_fusion", extra=()):
    cfg = build_config("src/ramer/configs/synthetic.yaml" if Path("src").exists() else None, TINY + list(extra))
    cfg.model.name = model
    return cfg


@pytest.fixture(scope="module")
def bundle():
    return generate(tiny_cfg().data.synthetic)


class Stop(Exception):
    pass


def stop_after(epoch):
    def hook(recipe, e):
        if e == epoch:
            raise Stop

    return hook


def die_before_saving_state(monkeypatch, epoch: int):
    """Saving epoch ``epoch``'s training state raises Stop (a kill after its log line, before its
    state); returns the real save, to put back."""
    real_save = ckpt.save_train_state

    def die(path, state):
        if state["epoch"] == epoch:
            raise Stop
        real_save(path, state)

    monkeypatch.setattr(ckpt, "save_train_state", die)
    return real_save


def epoch_lines(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in ln]


def test_run_directory_contents(tmp_path, bundle):
    out = tmp_path / "run"
    result = Recipe(tiny_cfg(), out, bundle=bundle).run()
    for name in ("config.yaml", "model.safetensors", "train_state.pt", "metrics.jsonl", "test_metrics.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "test_metrics.json").read_text())
    assert set(saved) == {"overall", "speaker", "nonspeaker"} and saved == json.loads(json.dumps(result))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln).get("epoch") for ln in lines] == [1, 2, 3, None]
    final = json.loads(lines[-1])
    best = max(epoch_lines(out), key=lambda d: d["valid"]["overall"]["micro_f1"])
    assert final["best_epoch"] == best["epoch"]  # tested on the best checkpoint, not the last
    steps = 160 // 32  # optimiser steps per epoch
    assert [d["step"] for d in epoch_lines(out)] == [steps, 2 * steps, 3 * steps]
    assert [d["best_step"] for d in epoch_lines(out)] == [d["best_epoch"] * steps for d in epoch_lines(out)]
    assert (final["best_step"], final["epochs_run"], final["stopped_early"]) == (best["epoch"] * steps, 3, False)
    assert final["threshold"] == best["threshold"]  # threshold chosen on validation
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["epoch"] == 3
    _, cfg, spec, threshold, epoch = ckpt.read_model_file(out / "model.safetensors")
    assert cfg.model.name == "late_fusion" and spec.n_labels == 9 and epoch == best["epoch"]


@pytest.mark.parametrize("extra", [[], ["train.ema_decay=0.8"]], ids=["plain", "weight-average"])
def test_resume_equals_uninterrupted_run(tmp_path, bundle, extra):
    full = Recipe(tiny_cfg(extra=extra), tmp_path / "full", bundle=bundle).run()
    with pytest.raises(Stop):
        Recipe(tiny_cfg(extra=extra), tmp_path / "cut", bundle=bundle, hooks=(stop_after(1),)).run()
    assert not (tmp_path / "cut" / "test_metrics.json").exists()
    resumed = Recipe(tiny_cfg(extra=extra), tmp_path / "cut", resume=True, bundle=bundle).run()
    assert resumed == full
    a, b = epoch_lines(tmp_path / "full"), epoch_lines(tmp_path / "cut")
    assert [x["valid"] for x in a] == [x["valid"] for x in b]
    assert [x["train"] for x in a] == [x["train"] for x in b]


def test_a_resumed_run_says_where_it_goes_on(tmp_path, bundle):
    """A resumed run was silent until its first epoch ended (minutes where stderr is a log): it says
    at once which epoch it goes on from and its best so far."""
    with pytest.raises(Stop):
        Recipe(tiny_cfg(), tmp_path / "cut", bundle=bundle, hooks=(stop_after(1),)).run()
    best = epoch_lines(tmp_path / "cut")[0]["best_epoch"]
    console = Console(record=True, width=200)
    Recipe(tiny_cfg(), tmp_path / "cut", resume=True, bundle=bundle, console=console).run()
    first = console.export_text().splitlines()[0]
    assert first.startswith(f"resuming {tmp_path / 'cut'} at epoch 2/{tiny_cfg().train.epochs} (best so far 0.")
    assert first.endswith(f" at epoch {best})")


# ------------------------------------------------------------------ early stopping
def scripted_scores(monkeypatch, scores: dict[int, float]) -> None:
    """Validation's selection score of epoch ``e`` becomes ``scores[e]`` (the rest of the run is real)."""
    now = {}
    real_epoch = Recipe.train_epoch

    def train_epoch(self, epoch, bar):
        now["epoch"] = epoch
        return real_epoch(self, epoch, bar)

    monkeypatch.setattr(Recipe, "train_epoch", train_epoch)
    monkeypatch.setattr(recipe_mod, "selection_score", lambda valid, task: scores[now["epoch"]])


# Best at epoch 2; with patience 2 the run stops after epoch 4 (epoch 5 would have been better).
SCORES = {1: 0.3, 2: 0.5, 3: 0.4, 4: 0.45, 5: 0.7, 6: 0.8, 7: 0.9, 8: 0.95}
PATIENT = ["train.epochs=8", "train.patience=2"]


def test_early_stopping_stops_after_patience_epochs(tmp_path, bundle, monkeypatch):
    scripted_scores(monkeypatch, SCORES)
    out = tmp_path / "run"
    console = Console(record=True, width=200)
    Recipe(tiny_cfg(extra=PATIENT), out, bundle=bundle, console=console).run()
    steps = 160 // 32
    lines = epoch_lines(out)
    assert [d["epoch"] for d in lines] == [1, 2, 3, 4]
    assert [d["best_epoch"] for d in lines] == [1, 2, 2, 2] and [d["best_step"] for d in lines] == [5, 10, 10, 10]
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    progress = (final["best_epoch"], final["best_step"], final["epochs_run"], final["stopped_early"])
    assert progress == (2, 2 * steps, 4, True)
    assert ckpt.read_model_file(out / "model.safetensors")[4] == 2  # tested on the best epoch's weights
    assert "stopping early after epoch 4/8: no better validation score for 2 epoch(s)" in console.export_text()


def test_early_stopping_keeps_the_schedule_of_the_cap(tmp_path, bundle, monkeypatch):
    """A run that stops early trains exactly the first epochs of the same run without patience:
    the learning-rate schedule spans ``train.epochs`` either way."""
    Recipe(tiny_cfg(extra=["train.epochs=4"]), tmp_path / "whole", bundle=bundle).run()
    scripted_scores(monkeypatch, {1: 0.5, 2: 0.4, 3: 0.3, 4: 0.2})
    Recipe(tiny_cfg(extra=["train.epochs=4", "train.patience=1"]), tmp_path / "early", bundle=bundle).run()
    whole, early = epoch_lines(tmp_path / "whole"), epoch_lines(tmp_path / "early")
    assert len(early) == 2 and len(whole) == 4
    for key in ("train", "valid", "lr", "step"):
        assert [d[key] for d in early] == [d[key] for d in whole[:2]], key


def test_resume_honours_early_stopping(tmp_path, bundle, monkeypatch):
    scripted_scores(monkeypatch, SCORES)
    full = Recipe(tiny_cfg(extra=PATIENT), tmp_path / "full", bundle=bundle).run()
    # Killed after epoch 3 (before the stop): the resumed run trains epoch 4 and stops there too.
    with pytest.raises(Stop):
        Recipe(tiny_cfg(extra=PATIENT), tmp_path / "cut", bundle=bundle, hooks=(stop_after(3),)).run()
    resumed = Recipe(tiny_cfg(extra=PATIENT), tmp_path / "cut", resume=True, bundle=bundle).run()
    assert resumed == full
    a, b = epoch_lines(tmp_path / "full"), epoch_lines(tmp_path / "cut")
    assert [x["epoch"] for x in b] == [1, 2, 3, 4]
    for key in ("train", "valid", "step", "best_step"):
        assert [x[key] for x in a] == [x[key] for x in b], key
    final = [json.loads(ln) for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()][-1]
    assert (final["best_epoch"], final["epochs_run"], final["stopped_early"]) == (2, 4, True)

    # A run that had stopped early and is resumed trains nothing more (epoch 5 would improve).
    before = (tmp_path / "full" / "metrics.jsonl").read_text()

    def no_training(self, epoch, bar):
        raise AssertionError(f"epoch {epoch} trained after the run had stopped")

    monkeypatch.setattr(Recipe, "train_epoch", no_training)
    again = Recipe(tiny_cfg(extra=PATIENT), tmp_path / "full", resume=True, bundle=bundle).run()
    assert again == full
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == before


def test_a_tie_of_the_validation_score_keeps_the_earlier_epoch(tmp_path, bundle, monkeypatch):
    """Only a better validation score makes a new best: on a tie the earlier epoch's weights stay the
    ones tested and saved (the later ones are no better, and patience counts from the first)."""
    scripted_scores(monkeypatch, {1: 0.5, 2: 0.5})
    out = tmp_path / "run"
    Recipe(tiny_cfg(extra=["train.epochs=2"]), out, bundle=bundle).run()
    assert [d["best_epoch"] for d in epoch_lines(out)] == [1, 1]
    assert ckpt.read_model_file(out / "model.safetensors")[4] == 1


def test_resuming_a_finished_run_says_so_and_trains_nothing(tmp_path, bundle, monkeypatch):
    import io

    from rich.console import Console

    cfg = tiny_cfg(extra=["train.epochs=2"])
    full = Recipe(cfg, tmp_path / "run", bundle=bundle).run()
    monkeypatch.setattr(Recipe, "train_epoch", lambda self, epoch, bar: pytest.fail(f"epoch {epoch} trained again"))
    said = io.StringIO()
    again = Recipe(cfg, tmp_path / "run", resume=True, bundle=bundle, console=Console(file=said)).run()
    assert again == full and "the run had trained all 2 epochs; nothing more to train" in said.getvalue()


def test_patience_is_checked():
    with pytest.raises(RamerError, match="train.patience"):
        build_config(overrides=["train.patience=0"])
    assert build_config().train.patience is None  # off by default for `ramer train`


@pytest.mark.parametrize("key", ["train.lr", "train.ema_decay", "model.hidden", "data.synthetic.n_train"])
def test_true_or_false_is_not_a_number(key):
    """YAML reads ``--set train.lr=yes`` as true, which pydantic would take for 1.0."""
    for word in ("true", "yes", "off"):
        with pytest.raises(RamerError, match=f"'{key}': .*a number, not (true|false)"):
            build_config(overrides=[f"{key}={word}"])
    cfg = build_config(overrides=["train.tensorboard=yes", "train.ema_decay=", "train.per_label_threshold=on"])
    assert cfg.train.tensorboard is cfg.train.per_label_threshold is True and cfg.train.ema_decay is None


def test_new_run_refuses_to_overwrite(tmp_path, bundle):
    Recipe(tiny_cfg(extra=["train.epochs=1"]), tmp_path / "r", bundle=bundle).run()
    with pytest.raises(RamerError, match="already holds a run"):
        Recipe(tiny_cfg(), tmp_path / "r", bundle=bundle).run()


def test_a_config_of_the_users_in_the_run_folder_is_not_written_over(tmp_path, bundle, capsys):
    """A new run writes its resolved config to OUT/config.yaml: a config.yaml no run wrote there (the
    user's, commented, perhaps the --config itself) or a link (the write followed it) is refused
    before any work, nothing written. A folder a run was started in and stopped before its first
    state (its config and an empty log) is started again there."""
    mine = tmp_path / "myexp"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my experiment\ntrain:\n  epochs: 1  # quick\n")
    (tmp_path / "target.yaml").write_text("train:\n  epochs: 1\n")
    link = tmp_path / "linked"
    link.mkdir()
    (link / "config.yaml").symlink_to(tmp_path / "target.yaml")
    sets = [x for kv in [*TINY, "train.epochs=1"] for x in ("--set", kv)]
    for out, config, message in [
        (mine, ["--config", str(mine / "config.yaml")], f"{mine / 'config.yaml'}: not a config a run wrote there"),
        (link, [], f"{link / 'config.yaml'}: is a link (to {tmp_path / 'target.yaml'}); a new run writes"),
    ]:
        capsys.readouterr()
        assert main(["train", "--model", "late_fusion", *config, "--out", str(out), *sets]) == 2
        err = capsys.readouterr().err
        assert message in err and "or use another --out" in err and one_error_line(err), err
        assert [p.name for p in out.iterdir()] == ["config.yaml"]
        with pytest.raises(RamerError, match="or use another --out"):
            Recipe(tiny_cfg(extra=["train.epochs=1"]), out, bundle=bundle).run()
    assert (mine / "config.yaml").read_text() == "# my experiment\ntrain:\n  epochs: 1  # quick\n"
    assert (tmp_path / "target.yaml").read_text() == "train:\n  epochs: 1\n" and (link / "config.yaml").is_symlink()
    stopped = tmp_path / "stopped"  # a run stopped before its first state, then started with other settings
    recipe_mod.start_run_folder(stopped, tiny_cfg(extra=["train.seed=5"]))
    Recipe(tiny_cfg(extra=["train.epochs=1"]), stopped, bundle=bundle).run()
    assert build_config(stopped / "config.yaml") == tiny_cfg(extra=["train.epochs=1"])


@pytest.mark.parametrize(
    "model, extra, given",
    [
        ("late_fusion", ["model.heads=1", "model.hidden=1000000000000"], None),
        ("ramer", ["model.proj_size=100000000000"], None),
    ],
    ids=["hidden", "proj_size"],
)
def test_a_size_too_large_for_memory_is_one_line_naming_the_sizes(tmp_path, bundle, model, extra, given):
    """A model whose sizes cannot be allocated (a request of hundreds of TiB, which fails at once:
    nothing is allocated) was a raw allocator traceback. (The embedded benchmark's sizes are bounded
    by the config: test_cli_hostile_values.)"""
    cfg = tiny_cfg(model, extra=extra[:-1])
    # past the config's bound (MAX_DIM), which refuses it when given: set around the check, for an
    # allocation that fails at once, as one within the bound fails on a machine with less memory
    key, value = extra[-1].removeprefix("model.").split("=")
    object.__setattr__(cfg.model, key, int(value))
    with pytest.raises(RamerError) as e:
        Recipe(cfg, tmp_path / "run", bundle=None if given else bundle).run()
    what = "the synthetic data" if given else "the model"
    setting, value = extra[-1].split("=")
    assert str(e.value).startswith(f"{what} does not fit in memory (") and "\n" not in str(e.value), str(e.value)
    assert "its sizes are too large (" in str(e.value) and f"{setting} {value}" in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    """A run directory on a shared file system must be readable like any file the user writes
    (the temp file behind the atomic rename starts private)."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
        os.umask(0o022)  # safetensors' writer makes its file private itself
        model = torch.nn.Linear(2, 2)
        ckpt.save_model(
            tmp_path / "model.safetensors",
            model,
            tiny_cfg(),
            ckpt.DataSpec.from_dict({"dims": {"text": 2}, "n_labels": 2, "label_names": ["a", "b"]}),
            0.5,
            1,
        )
        assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644
        (tmp_path / "a.txt").chmod(0o640)  # a file written over keeps what its owner gave it
        atomic_write_text(tmp_path / "a.txt", "y")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_a_read_only_file_written_over_stays_read_only():
    """A file made read-only (0444) is written over as a rename replaces it, and keeps its mode: the
    temporary takes the mode after it is written. Run as a user the permissions bind (root's writes
    ignore them), so as nobody where the suite runs as root."""
    import shutil
    import subprocess
    import sys
    import tempfile

    folder = Path(tempfile.mkdtemp())
    try:
        target = folder / "a.txt"
        target.write_text("old")
        target.chmod(0o444)
        code = f"from ramer.paths import atomic_write_text; atomic_write_text({str(target)!r}, 'new')"
        cmd = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("runs as root without setpriv: the permissions would not bind")
            os.chown(folder, 65534, 65534)
            os.chown(target, 65534, 65534)
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        got = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr[-2000:]
        assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o444
    finally:
        shutil.rmtree(folder)


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path, bundle, monkeypatch):
    out = tmp_path / "run"
    Recipe(tiny_cfg(extra=["train.epochs=1"]), out, bundle=bundle).run()
    before = (out / "model.safetensors").read_bytes()
    state_before = (out / "train_state.pt").read_bytes()

    def dying_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    recipe = Recipe(tiny_cfg(extra=["train.epochs=1"]), out, resume=True, bundle=bundle)
    recipe.setup()
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_model(out / "model.safetensors", recipe.model, recipe.cfg, recipe.spec, 0.3, 2)
    assert (out / "model.safetensors").read_bytes() == before
    assert (out / "train_state.pt").read_bytes() == state_before
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    ckpt.read_model_file(out / "model.safetensors")  # still loads

    def dying_torch_save(obj, f):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", dying_torch_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_train_state(out / "train_state.pt", {"epoch": 9})
    assert (out / "train_state.pt").read_bytes() == state_before


@pytest.mark.slow
def test_sigkill_then_cli_resume_matches(tmp_path):
    """A real process killed with SIGKILL mid-run, resumed from the CLI, ends where a clean run ends."""
    args = ["--model", "late_fusion", *sum((["--set", s] for s in TINY + ["train.epochs=6"]), [])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    clean = tmp_path / "clean"
    subprocess.run(
        [sys.executable, "-m", "ramer", "train", *args, "--out", str(clean)], check=True, env=env, capture_output=True
    )
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ramer", "train", *args, "--out", str(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (cut / "train_state.pt").exists():  # epoch 1 saved (atomically, after its log line)
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(
        [sys.executable, "-m", "ramer", "train", "--resume", str(cut)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((cut / "test_metrics.json").read_text()) == json.loads((clean / "test_metrics.json").read_text())


# ------------------------------------------------------------------ CLI errors: one line, non-zero exit
def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "ramer", *argv], capture_output=True, text=True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--set", "model.nonexistent=1"], "unknown key 'model.nonexistent'"),
        (["train", "--set", "model.hiden=3"], "unknown key 'model.hiden' (did you mean 'model.hidden'?)"),
        (["train", "--set", "train.hidden=3"], "unknown key 'train.hidden' (did you mean 'model.hidden'?)"),
        (["train", "--set", "model.seed=3"], "unknown key 'model.seed' (did you mean 'train.seed'?)"),
        (["train", "--set", "train.hiden=3"], "unknown key 'train.hiden' (did you mean 'model.hidden'?)"),
        (
            ["train", "--model", "late-fusion"],
            f"unknown model 'late-fusion'; did you mean 'late_fusion'? known: {known_models()}",
        ),
        (["bench", "--models", "ramr", "--out", "/no/such/b"], "--models: unknown ramr; did you mean 'ramer'? known:"),
        (["train", "--data", "/no/such/dir"], "/no/such/dir: data path not found"),
        (["train", "--config", "no_such_config"], "no config named 'no_such_config'"),
        (
            ["train", "--model", "no_such_model", "--set", "train.epochs=1"],
            f"unknown model 'no_such_model'; known: {known_models()}",
        ),
        (["bench", "--models", "", "--out", "/no/such/bench"], "--models: empty list"),
        (["train", "--config", ""], "--config: empty; give a config file"),
        (["bench", "--models", "br", "--tuned", "/no/such/tuned"], "--tuned /no/such/tuned: no such folder"),
        (["eval", "/no/such/run"], "/no/such/run: run folder not found"),
        (["train", "--resume", "/no/such/run"], "/no/such/run: no such run folder; nothing to resume"),
        (["train", "--set", "model.hidden=17", "--set", "model.heads=2"], "model.hidden 17 is not divisible by"),
        (
            ["train", "--set", "model.ablations=no_shuffle"],
            "valid list (written [a,b], e.g. --set model.ablations=[no_shuffle])",
        ),
        (["bench", "--set", "model.heads=3", "--out", "/no/such/bench"], "model.hidden 64 is not divisible by"),
    ],
)
def test_cli_bad_input_gives_one_clear_line(argv, message):
    r = run_cli(*argv)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, bundle):
    out = tmp_path / "run"
    Recipe(tiny_cfg(extra=["train.epochs=1"]), out, bundle=bundle).run()
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    r = run_cli("eval", str(out))
    assert r.returncode == 2 and "model.safetensors" in r.stderr and "Traceback" not in r.stderr
    (out / "model.safetensors").write_bytes(b"\x00" * 64)
    r = run_cli("eval", str(out))
    assert r.returncode == 2 and "not a readable safetensors file" in r.stderr
    (out / "train_state.pt").write_bytes(b"junk" * 16)
    r = run_cli("train", "--resume", str(out))
    assert r.returncode == 2 and "train_state.pt: not a readable training state" in r.stderr


def test_resume_refuses_what_it_cannot_continue_and_loses_nothing(tmp_path, bundle, capsys):
    """`train --resume` of a run stopped after epoch 1: a config.yaml edited since (but for where the
    work runs), an empty or foreign train_state.pt and a bad line in metrics.jsonl are each one clear
    error naming the file, with nothing lost; a last log line cut off by a kill is dropped and the run
    completes."""
    out = tmp_path / "run"
    with pytest.raises(Stop):
        Recipe(tiny_cfg(), out, bundle=bundle, hooks=(stop_after(1),)).run()
    files = {name: (out / name).read_bytes() for name in ("config.yaml", "train_state.pt", "metrics.jsonl")}

    def refused(message):
        capsys.readouterr()
        assert main(["train", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        for name, data in files.items():
            if name not in changed:
                assert (out / name).read_bytes() == data, name  # nothing lost

    changed = {"config.yaml"}
    (out / "config.yaml").write_text(files["config.yaml"].decode().replace("lr: 0.005", "lr: 0.01"))
    refused("config.yaml differs from the config this run was trained with (train.lr)")
    (out / "config.yaml").write_bytes(files["config.yaml"])

    changed = {"train_state.pt"}
    (out / "train_state.pt").write_bytes(b"")
    refused("train_state.pt: not a readable training state (EOFError)")
    for foreign in ({"a": 1}, [1, 2]):
        torch.save(foreign, out / "train_state.pt")
        refused("train_state.pt: not a ramer training state (it lacks epoch, model")
    (out / "train_state.pt").write_bytes(files["train_state.pt"])

    changed = {"metrics.jsonl"}
    (out / "metrics.jsonl").write_bytes(b"garbage\n" + files["metrics.jsonl"])
    refused("metrics.jsonl: line 1 is not JSON")

    # A state written before a config key existed: the key takes today's default, the same run.
    state = torch.load(out / "train_state.pt", weights_only=True)
    del state["config"]["train"]["ema_decay"]
    torch.save(state, out / "train_state.pt")
    # A kill while epoch 2's line was written; the thread count may change on resume.
    (out / "metrics.jsonl").write_bytes(files["metrics.jsonl"] + b'{"epoch": 2, "tra')
    (out / "config.yaml").write_text(files["config.yaml"].decode().replace("threads: null", "threads: 1"))
    assert main(["train", "--resume", str(out)]) == 0
    assert [ln.get("epoch") for ln in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [
        1,
        2,
        3,
        None,
    ]


def test_a_kill_right_after_a_state_is_saved_leaves_no_gap_in_the_log(tmp_path, bundle, monkeypatch):
    """The epoch's log line is written before its training state: killed right after epoch 2's state
    is saved, the resumed run's log still holds every epoch once."""
    out = tmp_path / "run"
    real_save = ckpt.save_train_state

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 2:
            raise Stop

    monkeypatch.setattr(ckpt, "save_train_state", save_then_die)
    with pytest.raises(Stop):
        Recipe(tiny_cfg(), out, bundle=bundle).run()
    monkeypatch.setattr(ckpt, "save_train_state", real_save)
    Recipe(tiny_cfg(), out, resume=True, bundle=bundle).run()
    assert [json.loads(ln).get("epoch") for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, None]


def test_a_kill_between_an_epochs_log_line_and_its_state_leaves_no_repeated_line(tmp_path, bundle, monkeypatch):
    """Killed after epoch 2's log line is written but before its state is saved: the resumed run
    trains epoch 2 again and drops the line of the lost one, so the log holds each epoch once."""
    out = tmp_path / "run"
    real_save = die_before_saving_state(monkeypatch, 2)
    with pytest.raises(Stop):
        Recipe(tiny_cfg(extra=["train.epochs=2"]), out, bundle=bundle).run()
    assert [d["epoch"] for d in epoch_lines(out)] == [1, 2]  # the line of epoch 2 was written
    monkeypatch.setattr(ckpt, "save_train_state", real_save)
    Recipe(tiny_cfg(extra=["train.epochs=2"]), out, resume=True, bundle=bundle).run()
    assert [json.loads(ln).get("epoch") for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, None]


def test_an_interrupted_train_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    """Ctrl-C: with a training state (written after every epoch) the hint names the run's own folder;
    before the first one there is nothing to resume."""
    import ramer.train

    saved = []  # whether the interrupted run had written its first training state

    def interrupted(cfg, out, **kw):
        if saved:
            Path(out).mkdir(exist_ok=True)  # ramer train makes --out (and holds it) first
            (Path(out) / "train_state.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(ramer.train, "run_training", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--model", "late_fusion", "--out", str(out)]) == 130
    assert "interrupted before anything was saved to resume from: run the command again" in capsys.readouterr().err
    saved.append(True)
    assert main(["train", "--model", "late_fusion", "--out", str(out)]) == 130
    assert f"interrupted; resume with: ramer train --resume {out}" in capsys.readouterr().err


def to_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess:
    """``ramer ARGV`` in a new process whose stdout is a pipe its reader has left (``| head -1``
    that ended before the first write)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "ramer", *argv], stdout=write_end, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write_end)


def test_output_cut_short_by_its_reader_is_no_traceback(tmp_path):
    """`ramer data info DIR | head -1`: the reader goes away (here before the first write); ramer
    stops quietly."""
    generate(tiny_cfg().data.synthetic).save(tmp_path / "d")
    proc = to_closed_pipe(["data", "info", str(tmp_path / "d")])
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_eval_elsewhere_of_a_run_trained_on_a_relative_data_path(tmp_path, bundle, monkeypatch, capsys):
    """The run keeps data.path as given; from another folder the error says where it came from, and
    to run from there or give the data with --data (a new user read the path as looked up there)."""
    bundle.save(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    Recipe(tiny_cfg(extra=["train.epochs=1", "data.path=d"]), tmp_path / "run", bundle=bundle).run()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "d: data path not found from here (the run's data.path, as given when it was trained: a relative" in err
    assert "run this from that folder, or give the data with --data PATH" in err
    assert main(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "d")]) == 0


def test_a_broken_pipe_other_than_stdout_is_not_hidden(monkeypatch, capfd):
    """Only a closed reader of stdout is quiet: a broken pipe elsewhere (a worker, a database) is raised."""
    import ramer.data.commands

    def broken(*args, **kwargs):
        raise BrokenPipeError("a worker's pipe")

    monkeypatch.setattr(ramer.data.commands, "run_info", broken)
    with pytest.raises(BrokenPipeError, match="a worker's pipe"):
        main(["data", "info", "anything"])


def test_train_out_must_be_a_folder(tmp_path, bundle, capsys):
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(RamerError, match="file.txt: exists and is not a folder"):
        Recipe(tiny_cfg(extra=["train.epochs=1"]), tmp_path / "file.txt", bundle=bundle).run()
    assert (tmp_path / "file.txt").read_text() == ""


def test_cli_train_then_eval_reads_back_metrics(tmp_path):
    out = tmp_path / "run"
    sets = sum((["--set", s] for s in TINY + ["train.epochs=2"]), [])
    assert main(["train", "--model", "late_fusion", "--out", str(out), *sets]) == 0
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(ln["train"]["loss"] > 0 for ln in lines if "epoch" in ln)
    r = run_cli("eval", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    saved = json.loads((out / "test_metrics.json").read_text())
    assert rep["overall"] == pytest.approx(saved["overall"])


def test_help_says_what_each_command_does():
    """``ramer --help`` gives each command a line of its own, and ``ramer COMMAND --help`` (data's
    commands too) says what the command does above its flags, as the real command prints it."""
    import argparse

    from ramer.cli import build_parser

    def commands(parser) -> dict:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return {c.dest: c.help for c in action._choices_actions}, dict(action.choices)

    top = run_cli("--help")
    assert top.returncode == 0 and "usage: ramer" in top.stdout
    summaries, parsers = commands(build_parser())
    assert set(summaries) == set(parsers)
    said = " ".join(top.stdout.split())
    for name, summary in summaries.items():
        assert summary and " ".join(summary.split()) in said, name
        own = [(name, parsers[name])]
        if name == "data":
            own = [(f"data {n}", p) for n, p in commands(parsers[name])[1].items()]
        for full, parser in own:
            assert parser.description, f"ramer {full} --help says nothing of what it does"
    for name, parser in (("train", parsers["train"]), ("synth", commands(parsers["data"])[1]["synth"])):
        r = run_cli(*(["data"] if name == "synth" else []), name, "--help")  # as the command prints it
        opening = " ".join(parser.description.split()[:6])
        assert r.returncode == 0 and opening in " ".join(r.stdout.split()), name


def test_nproc_default_run_folder_follows_model(monkeypatch, tmp_path):
    """`train --nproc N --model M` without --out: the run folder fixed for every process is named
    after M, as a one-process run's is (the launched command is captured, not run). The launcher is
    told this process's pid (dist.PARENT_ENV), to end with it even when it is killed."""
    launched, envs = [], []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env=None: launched.append(cmd) or envs.append(env) or 0)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--nproc", "2", "--model", "late_fusion"]) == 0
    assert envs[0][PARENT_ENV] == str(os.getpid())
    (cmd,) = launched
    out = cmd[cmd.index("--out") + 1]
    assert out.startswith("runs/late_fusion-") and cmd[cmd.index("--model") + 1] == "late_fusion"
    assert not Path(out).exists()  # no process wrote into it: not left behind
    assert not Path("runs").exists()  # nor the runs/ made for it

    def writes(cmd, env=None):  # the processes start the run, then fail
        (Path(cmd[cmd.index("--out") + 1]) / "config.yaml").write_text("")
        return 1

    monkeypatch.setattr(subprocess, "call", writes)
    assert main(["train", "--nproc", "2", "--model", "late_fusion"]) == 1
    (kept,) = (tmp_path / "runs").iterdir()
    assert (kept / "config.yaml").is_file()


def test_a_config_naming_no_model_or_a_preset_says_what_to_write_before_the_data_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(recipe_mod, "load_bundle", lambda *a: pytest.fail("the data was loaded before the model check"))
    config = tmp_path / "c.yaml"
    for name, message in [
        ("nosuch", f"error: unknown model 'nosuch'; known: {known_models()}"),
        ("ramer-no_shuffle", "error: model.name 'ramer-no_shuffle' is a preset of --model; in a config write "),
    ]:
        config.write_text(f"model:\n  name: {name}\n")
        assert main(["train", "--config", str(config), "--out", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err.startswith(message)


def test_a_classical_fit_says_which_settings_it_does_not_use(tmp_path, capsys):
    sets = ["--set", "train.device=cuda", "--set", "train.precision=bf16", *[x for s in TINY for x in ("--set", s)]]
    assert main(["train", "--model", "br", "--out", str(tmp_path / "br"), *sets]) == 0
    err = capsys.readouterr().err
    assert "note: br is fitted by scikit-learn on the CPU; train.device=cuda, train.precision=bf16 not used" in err


def test_nproc_refuses_what_one_process_would_before_starting_any(monkeypatch, tmp_path, capsys):
    """Bad data, a folder holding a run, a run to resume that is not there, another model's unknown
    settings: one error line from the launching process, and torchrun is never started (each of N
    processes printed the error, then torchrun its own traceback)."""
    launched = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env=None: launched.append(cmd) or 0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "train_state.pt").write_bytes(b"")
    (tmp_path / "ds" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "meta.json").write_text("{}")
    cases = {
        ("--out", "ds"): "error: ds: holds a dataset (meta.json, train), not run work; give another --out",
        ("--set", "model.name=ramer-no_shuffle"): "error: model.name 'ramer-no_shuffle' is a preset of --model",
        ("--data", "nope"): "error: nope: data path not found",
        ("--out", "held"): "error: held already holds a run; use --resume held or another --out",
        ("--resume", "gone"): "error: gone: no such run folder; nothing to resume",
        ("--set", "model.options.zz.a=1"): "error: model.options.zz: no model 'zz' is registered or installed",
    }
    for argv, message in cases.items():
        assert main(["train", "--nproc", "2", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("error:") == 1, err
    assert launched == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ds", "held"]


def test_default_run_folders_of_runs_started_in_the_same_second_differ(monkeypatch, tmp_path, capsys):
    """The made-up --out is created by the run that takes it (the second in the same second gets
    -2), and removed again when the run is refused before writing anything."""
    from ramer.cli import default_out

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261205-120000")
    cfg = build_config(None)
    first, second = default_out(cfg), default_out(cfg)
    assert (first, second) == (Path("runs/ramer-20261205-120000"), Path("runs/ramer-20261205-120000-2"))
    assert first.is_dir() and second.is_dir()
    assert main(["train", "--data", "nope"]) == 2
    assert "nope: data path not found" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [first.name, second.name]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--set", "data.synthetic.persons_min=20"]) == 2  # refused in setup, after the folder
    assert list(elsewhere.iterdir()) == []  # nor its runs/


# ------------------------------------------------------------------ bad runs, states and configs: nothing lost
def one_error_line(err: str) -> bool:
    """stderr of a refused command: no traceback, one error line (after any progress line)."""
    return (
        "Traceback" not in err
        and [ln.startswith("error:") for ln in err.strip().splitlines()][-1:] == [True]
        and (err.count("error:") == 1)
    )


def test_a_finished_run_without_its_state_is_not_overwritten(tmp_path, bundle):
    """A run folder holding a model file, test metrics or a non-empty log (not only a training state)
    is refused by both recipes, through one check, with nothing replaced. Without a state to resume
    from, the message does not send the user to --resume (which could not continue it), unless the
    run is a classical one (--resume fits it again)."""
    from ramer.train.classical import ClassicalRecipe

    out = tmp_path / "r"
    Recipe(tiny_cfg(extra=["train.epochs=1"]), out, bundle=bundle).run()
    (out / "train_state.pt").unlink()
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(RamerError) as e:
        Recipe(tiny_cfg(extra=["train.epochs=1", "train.seed=7"]), out, bundle=bundle).run()
    assert str(e.value) == (
        f"{out} holds a run's model.safetensors, test_metrics.json, metrics.jsonl but no train_state.pt to resume "
        "from (stopped before its first state was saved, or the state was removed); remove them to train there "
        "again, or use another --out"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files
    ClassicalRecipe(tiny_cfg("br"), tmp_path / "br", bundle=bundle).run()
    with pytest.raises(RamerError, match="already holds a run; use --resume"):
        ClassicalRecipe(tiny_cfg("br"), tmp_path / "br", bundle=bundle).run()
    for name, data in [("model.safetensors", b"x"), ("test_metrics.json", b"{}"), ("metrics.jsonl", b"{}\n")]:
        for recipe in (
            Recipe(tiny_cfg(), tmp_path / name, bundle=bundle),
            ClassicalRecipe(tiny_cfg("br"), tmp_path / name, bundle=bundle),
        ):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / name).write_bytes(data)
            with pytest.raises(RamerError, match=f"holds a run's {name} but no train_state.pt"):
                recipe.run()
            assert (tmp_path / name / name).read_bytes() == data


def test_resuming_a_classical_run_refits_only_what_was_not_fitted(tmp_path, capsys):
    """--resume of a finished br run fitted it again on whatever its config.yaml held since: other
    data, another model or seed replaced the run's model and test metrics with exit 0. A saved fit
    is now checked as a deep run's state is and kept (the same files to the byte); a run stopped
    before its fit was saved is fitted."""
    sizes = ["--set", "n_train=60", "--set", "n_valid=20", "--set", "n_test=20"]
    for name, seed in (("d1", "0"), ("d2", "5")):
        assert main(["data", "synth", "--out", str(tmp_path / name), *sizes, "--set", f"seed={seed}"]) == 0
    run = tmp_path / "r"
    assert main(["train", "--model", "br", "--data", str(tmp_path / "d1"), "--out", str(run)]) == 0
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "br: the run's fit is saved; nothing more to fit" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files
    config = files["config.yaml"].decode()
    for edit, said in (
        (
            (f"path: {tmp_path / 'd1'}", f"path: {tmp_path / 'd2'}"),
            "is not what the run started on (train, valid, test",
        ),
        (("name: br", "name: cc"), "config.yaml differs from the config this run was trained with (model.name)"),
        (("seed: 1\n", "seed: 7\n"), "config.yaml differs from the config this run was trained with (train.seed)"),
    ):
        assert edit[0] in config, edit
        (run / "config.yaml").write_text(config.replace(edit[0], edit[1], 1))
        assert main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert said in err and one_error_line(err), err
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "config.yaml"} == {
            k: v for k, v in files.items() if k != "config.yaml"
        }
    (run / "config.yaml").write_bytes(files["config.yaml"])
    (run / "model.safetensors").unlink()  # stopped before its fit was saved
    (run / "test_metrics.json").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "test_metrics.json").read_bytes() == files["test_metrics.json"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["model.hidden=17"], "'model': Value error, model.hidden 17 is not divisible by model.heads 2"),
        (["loss.w_cl=nan"], "'loss.w_cl': Input should be a finite number"),
        (["loss.w_aug=inf"], "'loss.w_aug': Input should be a finite number"),
        (["model.target_prior=.nan"], "'model.target_prior': Input should be a finite number"),
        (["train.lr=.inf"], "'train.lr': Input should be a finite number"),
        (["loss.w_cl=-1"], "'loss.w_cl': Value error, a loss weight must be 0 or more, not -1.0"),
    ],
)
def test_config_refuses_what_cannot_train(extra, message):
    with pytest.raises(RamerError, match="invalid config") as e:
        tiny_cfg(extra=extra)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_files_that_do_not_read_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfetrain:\n  epochs: 1\n")
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "folder").mkdir()
    for name, message in [
        ("bad.yaml", "is not UTF-8 text"),
        ("folder.yaml", "is a folder, not a config file"),
        ("folder", "is a folder, not a config file"),
    ]:
        capsys.readouterr()
        assert main(["train", "--config", str(tmp_path / name), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name}" in err and message in err and one_error_line(err), err
    assert not (tmp_path / "run").exists()


def test_a_bundled_configs_name_is_that_config_whatever_is_in_the_folder(tmp_path, monkeypatch):
    """A folder or file named as a bundled config in the current folder (a data folder ``mosei``, a
    dataset ``synthetic``) took the name: ``--config mosei`` was "is a folder, not a config file",
    and so was plain ``ramer train`` (the default, ``synthetic``); a stray file was read instead of
    the bundled config. The bundled config is meant; the file there is ``./NAME``."""
    from ramer.config import CONFIG_DIR, resolve_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "mosei").write_text("train:\n  epochs: 1\n")
    assert resolve_config(None) == resolve_config("synthetic") == CONFIG_DIR / "synthetic.yaml"
    assert resolve_config("mosei") == CONFIG_DIR / "mosei.yaml"
    assert resolve_config("./mosei") == Path("mosei") and resolve_config(str(tmp_path / "mosei")) == tmp_path / "mosei"
    with pytest.raises(RamerError, match="synthetic: is a folder, not a config file"):
        resolve_config("./synthetic")


@pytest.mark.parametrize("name", ["mosei", "authors_mosei", "m3ed", "memor_primary", "memor_fine"])
def test_a_bundled_corpus_config_without_data_is_an_error_not_a_run_on_the_benchmark(tmp_path, capsys, name):
    """``--config mosei`` (a config for a corpus the user brings) without ``--data`` trained the
    corpus's model and settings on the embedded benchmark without a word, and its test table read as
    MOSEI's results; train, tune and bench now refuse it before anything is written."""
    from ramer.config import CONFIG_DIR

    bundled = ["authors_mosei", "m3ed", "memor_fine", "memor_primary", "mosei", "synthetic"]
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == bundled  # a new one is a case here
    out = tmp_path / "out"
    commands = [["train"], ["bench", "--models", "br", "--seeds", "1"]]
    if importlib.util.find_spec("optuna") is not None:
        commands.append(["tune", "--model", "br", "--trials", "1"])
    said = f"--config {name} is for a corpus you bring ({name}.yaml: data.path is null); give --data PATH"
    for command in commands:
        capsys.readouterr()
        assert main([*command, "--config", name, "--out", str(out)]) == 2, command
        err = capsys.readouterr().err
        assert said in err and one_error_line(err), err
        assert not out.exists(), command
    from ramer.config import build_config, resolve_config
    from ramer.train import run_training

    with pytest.raises(RamerError, match=re.escape(said)):  # the Python route ramer train starts from
        run_training(build_config(resolve_config(name), ["train.epochs=1"]), out)
    assert not out.exists()


class Hostile:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, bundle):
    """A run stopped after epoch 1 of 3 (what ``train --resume`` continues)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(Stop):
        Recipe(tiny_cfg(), out, bundle=bundle, hooks=(stop_after(1),)).run()
    return out


def state_with(**fields):
    def edit(out):
        state = torch.load(out / "train_state.pt", weights_only=True)
        torch.save({**state, **{k: f(state) if callable(f) else f for k, f in fields.items()}}, out / "train_state.pt")

    return edit


def made_a_folder(path):
    path.unlink()
    path.mkdir()


NOT_A_STATE = "train_state.pt: not a ramer training state ("


@pytest.mark.parametrize(
    "edit, name, message",
    [
        (
            state_with(epoch="one"),
            "train_state.pt",
            NOT_A_STATE + "'epoch' must be a whole number of at least 1, not 'one'",
        ),
        (state_with(epoch=-5), "train_state.pt", NOT_A_STATE + "'epoch' must be a whole number of at least 1, not -5"),
        (state_with(rng=torch.zeros(3)), "train_state.pt", NOT_A_STATE + "'rng' must be a random generator state"),
        (state_with(rng=None), "train_state.pt", NOT_A_STATE + "'rng' must be a random generator state"),
        (state_with(model=[1]), "train_state.pt", NOT_A_STATE + "'model' must map parameter names to tensors"),
        (state_with(scheduler="x"), "train_state.pt", NOT_A_STATE + "'scheduler' must be a state dict, not str"),
        (state_with(best=[1, 2]), "train_state.pt", NOT_A_STATE + "'best' must hold score, epoch and threshold"),
        (state_with(best={}), "train_state.pt", NOT_A_STATE + "'best' must hold score, epoch and threshold"),
        (
            state_with(best=lambda s: {**s["best"], "score": "x"}),
            "train_state.pt",
            NOT_A_STATE + "best 'score' must be",
        ),
        (state_with(best=Hostile()), "train_state.pt", "train_state.pt: refusing to load 'posix.getcwd'"),
        (
            lambda out: made_a_folder(out / "train_state.pt"),
            "train_state.pt",
            "train_state.pt: is a folder, not a training state; cannot resume",
        ),
        (
            lambda out: (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"epoch": "a"}\n'),
            "metrics.jsonl",
            'metrics.jsonl: line 2 has epoch "a"',
        ),
        (
            lambda out: (out / "config.yaml").write_bytes(b"\xff\xfe" + (out / "config.yaml").read_bytes()),
            "config.yaml",
            "config.yaml is not UTF-8 text",
        ),
        (lambda out: made_a_folder(out / "config.yaml"), "config.yaml", "config.yaml: is a folder, not a config file"),
    ],
)
def test_resume_refuses_a_malformed_state_log_or_config_and_loses_nothing(
    stopped_run, tmp_path, capsys, edit, name, message
):
    """Wrong field types in train_state.pt, a hostile object in it, a log line whose epoch is no
    number, a config.yaml that is not UTF-8, a folder in place of a file: one line naming the file
    (never a hint to load unsafely), nothing else changed."""
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != name}
    edit(out)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / name}" in err and message in err and one_error_line(err), err
    assert "weights_only" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != name} == files


def test_a_run_with_extra_missingness_is_scored_in_python_as_it_was_tested(tmp_path, bundle):
    """README's Python block: ``apply_missing(bundle, predictor.cfg)`` gives the test split as the
    run's test line (and ``ramer eval``) scored it; the data as it is gives other figures."""
    import ramer
    from ramer.infer import apply_missing
    from ramer.metrics import multilabel_metrics

    out = tmp_path / "run"
    Recipe(tiny_cfg(extra=["data.missing_rate=0.6"]), out, bundle=bundle).run()
    tested = json.loads((out / "test_metrics.json").read_text())["overall"]
    predictor = ramer.load(out)
    test = apply_missing(bundle, predictor.cfg)["test"]
    got = multilabel_metrics(test.labels, predictor.decide(predictor.predict(test)))
    assert got["micro_f1"] == pytest.approx(tested["micro_f1"], abs=1e-9)
    assert got["macro_f1"] == pytest.approx(tested["macro_f1"], abs=1e-9)
    plain = bundle.splits["test"]
    assert not np.array_equal(plain.present, test.present)  # the extra missingness hid tokens


@pytest.mark.parametrize("fmt", ["mine", "synthetic"])
def test_a_split_no_loader_read_is_checked_before_training(tmp_path, bundle, monkeypatch, fmt):
    """Training checks the values of a split of arrays made in memory (swapped into a bundle, whatever
    the bundle's ``format`` says) as loading a native folder does: a NaN in a present feature is one
    line naming the split, before any step. The generator's splits, arrays in memory too, are read
    again (a split read from a folder is not: test_data_core)."""
    from ramer.data import DataBundle
    from ramer.data import store as store_mod

    test = bundle.splits["test"]  # the last split: the others are checked (or not) before it
    text = np.array(test.text)
    text[int(np.flatnonzero(test.present[:, 0])[0]), 0] = np.nan
    splits = {**bundle.splits, "test": dataclasses.replace(test, text=text)}
    mine = DataBundle(splits, bundle.label_names, fmt, "my arrays")
    scanned = []
    scan = store_mod.non_finite_features
    monkeypatch.setattr(store_mod, "non_finite_features", lambda s: scanned.append(s) or scan(s))
    with pytest.raises(RamerError, match=r"my arrays, split 'test': text holds 1 non-finite values"):
        Recipe(tiny_cfg(), tmp_path / "run", bundle=mine).run()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert [id(s) for s in scanned] == [id(splits[name]) for name in ("train", "valid", "test")]


def test_python_entries_name_a_wrong_argument_type():
    """``build_config(None, "train.epochs=3")`` read the string letter by letter ("got 't'");
    ``run_training`` of a dict raised an AttributeError."""
    from ramer.train import run_training

    with pytest.raises(RamerError, match=r"overrides is a list of 'key=value' strings .* not 'train.epochs=3'"):
        build_config(None, "train.epochs=3")
    with pytest.raises(RamerError, match="overrides is a list of 'key=value' strings"):
        build_config(None, [("train.epochs", 3)])
    with pytest.raises(RamerError, match=r"overrides is a list of 'key=value' strings .* not 5"):
        build_config(None, 5)  # not iterable: was list()'s TypeError
    assert build_config(None, (x for x in ["train.epochs=3"])).train.epochs == 3  # a generator, read once
    with pytest.raises(RamerError, match=r"run_training takes a ramer.config.Config .*, not dict"):
        run_training({"model": {"name": "ramer"}}, "runs/x")


@pytest.mark.parametrize("model", ["late_fusion", "br"])
def test_train_threads_hold_for_the_run_only(tmp_path, bundle, model):
    """A run's train.threads stayed the process's thread count after it: a later run (or notebook cell)
    with train.threads unset inherited it, stopped runs too."""
    from ramer.train import run_training

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_training(tiny_cfg(model, extra=["train.threads=1", "train.epochs=1"]), tmp_path / "a", bundle=bundle)
        assert torch.get_num_threads() == 2
        with pytest.raises(Stop):
            cfg = tiny_cfg(extra=["train.threads=1", "train.epochs=2"])
            Recipe(cfg, tmp_path / "b", bundle=bundle, hooks=(stop_after(1),)).run()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
