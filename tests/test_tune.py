"""``ramer tune`` (Optuna) and TensorBoard curves, on tiny data: every model's search space builds
its model and each searched key is read; the CLI writes best.yaml and the trials table with values
read from validation only; a killed study resumes; the pruner stops a hopeless trial; two processes
share one study; ``train.tensorboard`` writes the logged scalars."""

import datetime
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from test_recipe import one_error_line

import ramer
from ramer.cli import main
from ramer.config import build_config, with_values
from ramer.data.synthetic import generate
from ramer.errors import LossNotFinite, RamerError
from ramer.models import BUILDERS, PRESETS, DataSpec, build_model, set_model
from ramer.models.spaces import SEARCHED, space_for, suggest
from ramer.train.recipe import Recipe
from ramer.tune import GRACE, open_study, tune, tune_config

optuna = pytest.importorskip("optuna")
optuna_optimize = pytest.importorskip("optuna.study._optimize")  # its trial loop, to stop it in places

TINY = [
    "data.synthetic.n_train=64",
    "data.synthetic.n_valid=32",
    "data.synthetic.n_test=32",
    "model.hidden=16",
    "model.ffn=32",
    "model.heads=2",
    "train.epochs=2",
    "train.batch_size=32",
    "train.threads=1",  # one thread: on a busy machine two are many times slower (docs/BENCH.md)
]
SETS = [x for s in TINY for x in ("--set", s)]
SRC = str(Path(ramer.__file__).parents[1])  # this checkout's package, for the subprocesses
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def lines(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def study_trials(out: Path, name: str) -> list:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def states(trials) -> list[str]:
    return [t.state.name.lower() for t in trials]


# ---------------------------------------------------------------------- the spaces
@pytest.fixture(scope="module")
def tiny():
    """A tiny synthetic bundle, its spec and one training batch."""
    cfg = build_config(overrides=TINY)
    bundle = generate(cfg.data.synthetic)
    spec = DataSpec.from_bundle(bundle, "multi_label")
    return bundle, spec, bundle.splits["train"].collate(list(range(8)))


def model_loss(cfg, bundle, spec, batch) -> tuple[torch.Tensor, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(cfg, spec)
    if hasattr(model, "prepare"):
        model.prepare(bundle.splits["train"])
    model.train()
    torch.manual_seed(1)
    return model.loss(model(batch), batch).total, model


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_space_builds_a_valid_config_and_its_model(tiny, name):
    """Two trials of a seeded sampler: the values validate as a config, the config holds them, and
    the model it builds trains (finite loss, gradients)."""
    bundle, spec, batch = tiny
    base = build_config(overrides=["model.heads=4"])
    set_model(base, name)
    space = space_for(base)
    assert {"train.lr", "train.weight_decay", "model.hidden", "model.dropout"} <= {p.key for p in space}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(2):
        trial = study.ask()
        values = suggest(trial, space)
        cfg = with_values(base, values)
        assert {p.key: p.value(cfg) for p in space} == values
        loss, model = model_loss(cfg, bundle, spec, batch)
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", [*sorted(BUILDERS), *sorted(PRESETS)])
def test_every_searched_model_key_is_read(tiny, name):
    """Changing one searched model / loss key (low vs high end of its range) changes the model's
    training loss: no searched key is one the model ignores, an ablation preset's included (the
    keys its switched-off part read are in spaces.UNUSED_WHEN_OFF). (train.lr and
    train.weight_decay are the optimiser's, read by every run.)"""
    bundle, spec, batch = tiny
    base = build_config(overrides=TINY)
    set_model(base, name)
    for p in space_for(base):
        if p.key.startswith("train."):
            continue
        ends = (p.choices[0], p.choices[-1]) if p.choices else (p.low, p.high)
        if p.integer:
            ends = tuple(int(v) for v in ends)
        low, high = (model_loss(with_values(base, {p.key: v}), bundle, spec, batch)[0] for v in ends)
        assert not torch.equal(low, high), f"{name}: {p.key} changes nothing"


def test_space_leaves_out_fixed_keys_and_switched_off_parts():
    base = build_config()
    assert "loss.w_shuf" in {p.key for p in space_for(base)}
    set_model(base, "ramer-no_shuffle")
    keys = {p.key for p in space_for(base, {"train.lr"})}
    assert "loss.w_shuf" not in keys and "train.lr" not in keys and "loss.w_cl" in keys
    base.model.name = "no-entry"  # a model with no entry of its own: the common space
    assert {p.key for p in space_for(base)} == {"train.lr", "train.weight_decay", "model.hidden", "model.dropout"}
    assert "model.layers.text" in SEARCHED


# ---------------------------------------------------------------------- ramer tune, end to end
@pytest.mark.slow
def test_tune_writes_best_config_and_trials_from_validation_only(tmp_path, capsys):
    out = tmp_path / "tune"
    argv = ["tune", "--model", "ramer", "--out", str(out), *SETS]
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the caller's own level: kept after the study
    assert main([*argv, "--trials", "2"]) == 0
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    trials = study_trials(out, "ramer")
    assert states(trials) == ["complete", "complete"]
    for t in trials:
        run = out / f"trial-{t.number:04d}"
        epochs = [ln for ln in lines(run) if "epoch" in ln]
        final = lines(run)[-1]
        # The value is the best validation micro-F1 of the run (the checkpoint's epoch), not a test score.
        assert t.value == max(ln["valid"]["overall"]["micro_f1"] for ln in epochs)
        assert t.value == epochs[final["best_epoch"] - 1]["valid"]["overall"]["micro_f1"]
        assert (t.user_attrs["best_step"], t.user_attrs["steps"]) == (final["best_step"], 2 * len(epochs))
        cfg = build_config(run / "config.yaml")
        space = {p.key: p for p in space_for(cfg)}
        assert {key: space[key].value(cfg) for key in t.params} == t.params  # the trial trained its values
        assert cfg.model.hidden == 16 and "model.hidden" not in t.params  # --set fixes a key
        assert cfg.train.patience == 5  # trials stop early unless --set says otherwise
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert (out / "best.yaml").read_text() == (out / f"trial-{best.number:04d}" / "config.yaml").read_text()
    summary = json.loads((out / "tune.json").read_text())
    assert summary["best"]["trial"] == best.number and summary["best"]["value"] == best.value
    assert (summary["budget"], summary["complete"], summary["finished"]) == (2, 2, 2)
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("number,state,value,best_step,steps,epochs,seconds,train.lr,")
    assert [r.split(",")[1] for r in rows[1:]] == ["complete", "complete"]
    assert float(rows[1].split(",")[2]) == trials[0].value
    assert "| trial | state | valid micro-F1 | steps to best |" in (out / "trials.md").read_text()
    assert "best: trial" in capsys.readouterr().out

    # Run again: the budget is reached, nothing is re-run; a timeout of 0 starts nothing new.
    stamps = sorted((p, p.stat().st_mtime_ns) for p in out.glob("trial-*/metrics.jsonl"))
    assert main([*argv, "--trials", "2"]) == 0
    assert main([*argv, "--trials", "3", "--timeout", "0"]) == 0
    assert sorted((p, p.stat().st_mtime_ns) for p in out.glob("trial-*/metrics.jsonl")) == stamps
    assert len(study_trials(out, "ramer")) == 2
    # Another config in the same folder is an error, not a mixed study.
    assert main([*argv, "--trials", "3", "--set", "train.epochs=3"]) == 2
    assert "holds a study of ramer with another config (differs in train.epochs)" in capsys.readouterr().err
    # Another model in the same folder is an error too: its trials would write over these.
    kept = {p: p.read_bytes() for p in (out / "best.yaml", out / "tune.json", out / "trial-0000" / "config.yaml")}
    assert main(["tune", "--model", "late_fusion", "--out", str(out), *SETS, "--trials", "1"]) == 2
    assert "holds the search of ramer; searching late_fusion there" in capsys.readouterr().err
    assert all(p.read_bytes() == kept[p] for p in kept) and len(study_trials(out, "ramer")) == 2


def test_trial_seeds_score_a_trial_by_the_mean_of_its_seeds(tmp_path, capsys):
    out = tmp_path / "tune"
    argv = ["tune", "--model", "late_fusion", "--out", str(out), *SETS, "--trials", "2"]
    assert main([*argv, "--trial-seeds", "2"]) == 0
    trials = study_trials(out, "late_fusion")
    assert states(trials) == ["complete", "complete"]
    for t in trials:
        runs = [out / f"trial-{t.number:04d}" / f"seed-{s}" for s in (1, 2)]
        cfgs = [build_config(run / "config.yaml") for run in runs]
        assert [c.train.seed for c in cfgs] == [1, 2]
        assert with_values(cfgs[1], {"train.seed": 1}) == cfgs[0]  # the same trial values, another seed
        epochs = [[ln for ln in lines(run) if "epoch" in ln] for run in runs]
        best = [max(ln["valid"]["overall"]["micro_f1"] for ln in e) for e in epochs]
        assert best[0] != best[1]  # else the mean could not be told from one seed
        assert t.user_attrs["seed_values"] == best and t.value == pytest.approx(sum(best) / 2, abs=1e-12)
        # What the pruner reads: the first seed's epochs (that it is asked only then: the test below).
        assert t.intermediate_values == {ln["epoch"]: ln["valid"]["overall"]["micro_f1"] for ln in epochs[0]}
        assert t.user_attrs["steps"] == 2 * (len(epochs[0]) + len(epochs[1]))
    assert build_config(out / "best.yaml").train.seed == 1
    summary = json.loads((out / "tune.json").read_text())
    assert summary["trial_seeds"] == 2 and len(summary["best"]["seed_values"]) == 2
    assert (out / "trials.csv").read_text().splitlines()[0].endswith(",seed_values,note")
    assert "| per seed | note |" in (out / "trials.md").read_text()
    # The study keeps the number of seeds it was made with.
    capsys.readouterr()
    assert main([*argv, "--trials", "3"]) == 2
    assert (
        "whose trials train 2 seed(s) each; continue it with --trial-seeds 2 (ramer tune, or ramer bench --tune-trials)"
        in capsys.readouterr().err
    )
    assert len(study_trials(out, "late_fusion")) == 2


@pytest.mark.parametrize("assignment", ["model.name=br", "model.ablations=[no_shuffle]"])
def test_a_set_of_the_model_is_refused(assignment):
    """``--model ramer --set model.name=br`` tuned ramer and listed model.name among the fixed keys;
    ``--set model.ablations=[...]`` added ablations to a study named for the full model."""
    with pytest.raises(RamerError, match=rf"--set {assignment.split('=')[0]}: --model names the model"):
        tune_config("ramer", None, [*TINY, assignment])


def test_a_study_made_before_a_config_key_existed_resumes(tmp_path):
    """A study's stored config is read back with today's defaults: one stored before a key existed
    (the key at its default now) is the same study; a real difference is still an error."""
    base = tune_config("amp", None, TINY)
    study, _ = open_study(optuna, tmp_path, None, base, seed=0)
    older = base.model_dump(mode="json")
    del older["model"]["amp_eps"]
    study.set_user_attr("config", older)
    open_study(optuna, tmp_path, None, base, seed=0)
    with pytest.raises(RamerError, match=r"another config \(differs in model.amp_eps\)"):
        open_study(optuna, tmp_path, None, with_values(base, {"model.amp_eps": 2.0}), seed=0)


def test_a_study_continues_with_recompute_turned_on(tmp_path):
    """train.recompute trains the same to the bit: a study continues with it on (a trial that ran out
    of memory); any other difference is still another config."""
    base = tune_config("ramer", None, TINY)
    open_study(optuna, tmp_path, None, base, seed=0)
    open_study(optuna, tmp_path, None, with_values(base, {"train.recompute": True}), seed=0)
    with pytest.raises(RamerError, match=r"another config \(differs in train.epochs\)"):
        open_study(optuna, tmp_path, None, with_values(base, {"train.recompute": True, "train.epochs": 9}), seed=0)


def test_a_study_continues_only_with_the_keys_it_searches(tmp_path, tiny):
    """``--set model.dropout=0.1`` (the config's own value) on a study made without it: the config
    was the same, so the study went on with dropout no longer searched, and its best.yaml kept a
    dropout an earlier trial drew, against what --set says. The study records the keys it searches
    and refuses a command that would search others; the same keys go on."""
    cfg = tune_config("late_fusion", None, [*TINY, "train.epochs=1"])
    out = tmp_path / "t"
    tune(cfg, out, trials=1, bundle=tiny[0], console=QUIET)
    assert cfg.model.dropout == build_config(overrides=TINY).model.dropout  # the --set below changes no value
    with pytest.raises(RamerError, match=r"searches other keys \(this command's --set fixes model.dropout, which"):
        tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET, fixed={"model.dropout"})
    tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
    assert states(study_trials(out, "late_fusion")) == ["complete", "complete"]
    fixed = tmp_path / "fixed"
    tune(cfg, fixed, trials=1, bundle=tiny[0], console=QUIET, fixed={"model.dropout"})
    with pytest.raises(RamerError, match=r"\(it fixed model.dropout, which this command searches\)"):
        tune(cfg, fixed, trials=2, bundle=tiny[0], console=QUIET)


def test_full_ramer_and_a_preset_are_studies_of_their_own_in_one_shared_storage(tmp_path, tiny):
    """Both were studies named 'ramer' in a shared --storage: the preset's tune was refused there as
    'searches other keys (this command's --set fixes loss.w_shuf ...)', with no --set given. A
    preset's study that a storage holds under the model's name is continued under it."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    cfgs = {m: tune_config(m, None, [*TINY, "train.epochs=1"]) for m in ("ramer", "ramer-no_shuffle")}
    for m, cfg in cfgs.items():
        tune(cfg, tmp_path / m, trials=1, storage=storage, bundle=tiny[0], console=QUIET)
    assert sorted(optuna.get_all_study_names(storage=storage)) == ["ramer", "ramer-no_shuffle"]
    with sqlite3.connect(tmp_path / "shared.db") as db:  # the preset's study as the model's name held it
        db.execute("DELETE FROM studies WHERE study_name = 'ramer'")
        db.execute("UPDATE studies SET study_name = 'ramer' WHERE study_name = 'ramer-no_shuffle'")
    tune(cfgs["ramer-no_shuffle"], tmp_path / "again", trials=2, storage=storage, bundle=tiny[0], console=QUIET)
    assert optuna.get_all_study_names(storage=storage) == ["ramer"]
    trials = optuna.load_study(study_name="ramer", storage=storage).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    # its own folder's study.db named in --storage, then left out: the same study, continued (the
    # folder was refused as holding another model's search when only --storage named presets)
    own = tmp_path / "own"
    tune(
        cfgs["ramer-no_shuffle"], own, trials=1, storage=f"sqlite:///{own / 'study.db'}", bundle=tiny[0], console=QUIET
    )
    tune(cfgs["ramer-no_shuffle"], own, trials=2, bundle=tiny[0], console=QUIET)
    assert states(study_trials(own, "ramer-no_shuffle")) == ["complete", "complete"]
    assert json.loads((own / "tune.json").read_text())["model"] == "ramer-no_shuffle"
    with pytest.raises(RamerError, match=r"own holds the search of ramer-no_shuffle; searching ramer there would"):
        tune(cfgs["ramer"], own, trials=1, bundle=tiny[0], console=QUIET)


def test_a_study_records_its_ramer_and_a_newer_ones_config_names_it(tmp_path):
    """A new study records the ramer that made it; a study a newer ramer made with a key this one
    lacks names both versions beside the key, and a version that is not one short line is refused."""
    from ramer import __version__

    base = tune_config("amp", None, TINY)
    study, _ = open_study(optuna, tmp_path, None, base, seed=0)
    assert study.user_attrs["ramer_version"] == __version__
    newer = base.model_dump(mode="json")
    newer["model"]["new_knob"] = 3
    study.set_user_attr("config", newer)
    with pytest.raises(RamerError, match=r"another config \(differs in model.new_knob\)") as caught:
        open_study(optuna, tmp_path, None, base, seed=0)
    assert "the study was" not in str(caught.value)  # made by this very version
    study.set_user_attr("ramer_version", "99.0.0")
    newer_note = rf"the study was written by ramer 99.0.0, newer than this ramer {__version__}"
    with pytest.raises(RamerError, match=newer_note):
        open_study(optuna, tmp_path, None, base, seed=0)
    study.set_user_attr("ramer_version", "9" * 100)
    with pytest.raises(RamerError, match="holds a study ramer tune did not write: its 'ramer_version' '9999"):
        open_study(optuna, tmp_path, None, base, seed=0)


def test_a_folder_whose_study_db_holds_another_model_is_refused(tmp_path):
    """Before any trial finished (no tune.json yet), the study's name in study.db tells the model."""
    open_study(optuna, tmp_path, None, tune_config("ramer", None, TINY), seed=0)
    with pytest.raises(RamerError, match="holds the search of ramer; searching late_fusion there"):
        tune(tune_config("late_fusion", None, TINY), tmp_path, trials=1)


def test_tune_rejects_classical_models_and_says_when_optuna_is_missing(tmp_path, monkeypatch, capsys):
    assert main(["tune", "--model", "br", "--out", str(tmp_path / "br"), *SETS]) == 2
    assert "classical model" in capsys.readouterr().err
    for timeout in ("-1", "nan"):
        assert main(["tune", "--model", "late_fusion", "--timeout", timeout, "--out", str(tmp_path / "t"), *SETS]) == 2
        assert "--timeout must be a number of seconds, 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # no study folder left behind
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    assert main(["tune", "--model", "ramer", "--out", str(tmp_path / "r"), *SETS]) == 2
    assert "pip install 'ramer[tune]'" in capsys.readouterr().err
    assert main(["bench", "--tune-trials", "2", "--models", "late_fusion", "--out", str(tmp_path / "b"), *SETS]) == 2
    assert "pip install 'ramer[tune]'" in capsys.readouterr().err


# ---------------------------------------------------------------------- stopped and continued
QUIET = Console(stderr=True, quiet=True)


REAL_TRAIN_EPOCH = Recipe.train_epoch


def stopped_in(name: str):
    """``Recipe.train_epoch`` stopped by Ctrl-C (a KeyboardInterrupt) in the run folder ``name``."""
    real = REAL_TRAIN_EPOCH

    def train_epoch(self, epoch, bar):
        if self.out.name == name:
            raise KeyboardInterrupt
        return real(self, epoch, bar)

    return train_epoch


def test_a_study_stopped_and_continued_draws_what_one_run_straight_through_draws(tmp_path, tiny):
    """--trials 3 straight, and --trials 1 then --trials 3 into another folder: each trial has the
    same values in both (the sampler is made anew before every trial, seeded by the study's trial
    count: a sampler kept across trials in one process continues its random stream)."""
    cfg = tune_config("late_fusion", None, [*TINY, "train.epochs=1"])
    tune(cfg, tmp_path / "straight", trials=3, bundle=tiny[0], console=QUIET)
    for trials in (1, 3):
        tune(cfg, tmp_path / "stopped", trials=trials, bundle=tiny[0], console=QUIET)
    straight, stopped = (study_trials(tmp_path / d, "late_fusion") for d in ("straight", "stopped"))
    assert states(straight) == states(stopped) == ["complete"] * 3
    assert [t.params for t in stopped] == [t.params for t in straight]
    assert len({json.dumps(t.params, sort_keys=True) for t in straight}) == 3  # three points, not one


def test_a_trial_stopped_by_ctrl_c_is_tried_again_first(tmp_path, tiny, monkeypatch):
    """Ctrl-C in trial 1: it is marked failed, its folder goes, and the same command again tries its
    values first (trial 2). A retry stopped by Ctrl-C too is queued again (it was once only, so a
    search stopped twice in one trial never trained that setting; a retry whose process was killed
    is still tried once only: test_a_retry_whose_process_died_is_not_queued_again)."""
    cfg = tune_config("late_fusion", None, [*TINY, "train.epochs=1"])
    out = tmp_path / "t"
    real = Recipe.train_epoch
    monkeypatch.setattr(Recipe, "train_epoch", stopped_in("trial-0001"))
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
    monkeypatch.setattr(Recipe, "train_epoch", real)
    tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
    trials = study_trials(out, "late_fusion")
    assert states(trials) == ["complete", "fail", "complete"]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1
    assert not (out / "trial-0001").exists()
    assert "the values of trial 1 again" in (out / "trials.csv").read_text()

    monkeypatch.setattr(Recipe, "train_epoch", stopped_in("trial-0004"))
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, out, trials=4, bundle=tiny[0], console=QUIET)  # trial 3 completes, 4 stopped
    monkeypatch.setattr(Recipe, "train_epoch", stopped_in("trial-0005"))
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, out, trials=4, bundle=tiny[0], console=QUIET)  # 5: trial 4's values, stopped again
    monkeypatch.setattr(Recipe, "train_epoch", real)
    tune(cfg, out, trials=4, bundle=tiny[0], console=QUIET)
    trials = study_trials(out, "late_fusion")
    assert states(trials) == ["complete", "fail", "complete", "complete", "fail", "fail", "complete"]
    assert trials[5].params == trials[4].params and trials[5].user_attrs["retry_of"] == 4
    assert trials[6].params == trials[4].params and trials[6].user_attrs["retry_of"] == 5
    assert "the values of trial 5 again" in (out / "trials.csv").read_text()


def test_a_failed_trials_folder_is_removed_only_of_what_its_runs_wrote(tmp_path, tiny, monkeypatch):
    """The next search removes a failed trial's folder, but a file there that no run writes (the
    user's, here in a run folder of --trial-seeds 2) stops it, naming the file, with nothing removed
    (the folder was removed whole); once the file is moved, the folder goes."""
    cfg = tune_config("late_fusion", None, [*TINY, "train.epochs=1"])
    out, trial = tmp_path / "t", tmp_path / "t" / "trial-0000"
    monkeypatch.setattr(Recipe, "train_epoch", stopped_in("seed-2"))  # trial 0's second seed
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, out, trials=1, bundle=tiny[0], console=QUIET, trial_seeds=2)
    monkeypatch.setattr(Recipe, "train_epoch", REAL_TRAIN_EPOCH)
    (trial / "seed-2" / "notes.txt").write_text("mine")
    held = {p: p.read_bytes() for p in trial.rglob("*") if p.is_file()}
    assert trial / "seed-1" / "model.safetensors" in held
    with pytest.raises(RamerError, match=r"trial-0000: trial 0 failed, .* files no run writes \(seed-2/notes\.txt\)"):
        tune(cfg, out, trials=1, bundle=tiny[0], console=QUIET, trial_seeds=2)
    assert {p: p.read_bytes() for p in trial.rglob("*") if p.is_file()} == held
    (trial / "seed-2" / "notes.txt").unlink()
    tune(cfg, out, trials=1, bundle=tiny[0], console=QUIET, trial_seeds=2)
    assert not trial.exists() and (out / "trial-0001" / "seed-2" / "model.safetensors").exists()


def test_a_retry_whose_process_died_is_not_queued_again_and_a_part_drawn_trial_not_at_all(monkeypatch):
    """``requeue``: a trial stopped part-way through its draw is not queued (its retry drew the rest
    anew: a point no straight run tries), nor counted in the sampler's seed; a retry whose process
    died (``fail_stale``: killed, out of memory?) is not queued again, one stopped by Ctrl-C is."""
    from ramer import tune as tuning

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("searched", ["train.lr", "train.weight_decay"])
    fail, waiting = optuna.trial.TrialState.FAIL, (optuna.trial.TrialState.WAITING,)
    part = study.ask()  # trial 0: drew one of its two values
    part.suggest_float("train.lr", 1e-4, 1e-2)
    study.tell(part, state=fail)
    tuning.requeue(study, study.trials[0], interrupted=True)
    assert study.get_trials(states=waiting) == []
    retry = study.ask()  # trial 1: a retry of an earlier trial, with all its values
    retry.suggest_float("train.lr", 1e-4, 1e-2)
    retry.suggest_float("train.weight_decay", 1e-4, 1e-1)
    retry.set_user_attr("retry_of", 0)
    study.tell(retry, state=fail)
    tuning.requeue(study, study.trials[1])  # its process died
    assert study.get_trials(states=waiting) == []
    tuning.requeue(study, study.trials[1], interrupted=True)
    queued = study.get_trials(states=waiting)
    assert [(q.system_attrs["fixed_params"], q.user_attrs) for q in queued] == [(retry.params, {"retry_of": 1})]
    counted = []
    monkeypatch.setattr(tuning, "sampler_seed", lambda seed, n: counted.append(n) or 0)
    tuning.fresh_sampler(optuna, study, 0)
    assert counted == [1]  # trial 0 (part drawn) and trial 1 (retried) not counted; its retry is


def test_a_study_stopped_in_a_trial_draws_what_one_run_straight_through_draws(tmp_path, tiny, monkeypatch):
    """Ctrl-C in trial 1 of 3, then the same command: the retry takes trial 1's place, and the trial
    after it draws what trial 2 drew straight through (the sampler's seed counted the failed trial
    too, so the stopped study tried another point and never trial 2's)."""
    cfg = tune_config("late_fusion", None, [*TINY, "train.epochs=1"])
    tune(cfg, tmp_path / "straight", trials=3, bundle=tiny[0], console=QUIET)
    monkeypatch.setattr(Recipe, "train_epoch", stopped_in("trial-0001"))
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, tmp_path / "stopped", trials=3, bundle=tiny[0], console=QUIET)
    monkeypatch.undo()
    tune(cfg, tmp_path / "stopped", trials=3, bundle=tiny[0], console=QUIET)
    straight, stopped = (study_trials(tmp_path / d, "late_fusion") for d in ("straight", "stopped"))
    assert states(stopped) == ["complete", "fail", "complete", "complete"]
    assert [t.params for t in stopped if t.state.name == "COMPLETE"] == [t.params for t in straight]


def test_a_ctrl_c_before_or_after_the_objective_leaves_no_trial_running(tmp_path, tiny, monkeypatch):
    """Ctrl-C between Optuna's ask and the objective: the trial Optuna made was left running with
    no worker, and every later command said the rest of the budget was running elsewhere, a trial
    short for good. Ctrl-C while Optuna records a finished trial: a traceback (Optuna 5's
    UnboundLocalError) and exit 1. Now each is a KeyboardInterrupt (``interrupted``, exit 130), the
    stopped trial is failed, and the same command again runs the whole budget, drawing the points a
    straight run draws (the trial stopped before it drew is not counted in the sampler's seed); a
    retry stopped before it drew its queued values tries them still."""
    cfg = tune_config("late_fusion", None, [*TINY, "train.epochs=1"])
    real_ask, real_tell = optuna.Study.ask, optuna_optimize._tell_with_warning

    def ask(self, *args, **kwargs):
        real_ask(self, *args, **kwargs)
        raise KeyboardInterrupt

    def tell(*args, **kwargs):
        real_tell(*args, **kwargs)
        raise KeyboardInterrupt

    tune(cfg, tmp_path / "straight", trials=2, bundle=tiny[0], console=QUIET)
    straight = [t.params for t in study_trials(tmp_path / "straight", "late_fusion")]
    for name, where, patched in (("ask", optuna.Study, ask), ("_tell_with_warning", optuna_optimize, tell)):
        out = tmp_path / name
        monkeypatch.setattr(where, name, patched)
        with pytest.raises(KeyboardInterrupt):
            tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
        monkeypatch.undo()
        assert "running" not in states(study_trials(out, "late_fusion"))
        tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
        done = study_trials(out, "late_fusion")
        assert states(done).count("complete") == 2, states(done)
        assert json.loads((out / "tune.json").read_text())["complete"] == 2
        if name == "ask":  # stopped before it drew: the points drawn after are a straight run's
            assert [t.params for t in done if t.state.name == "COMPLETE"] == straight

    out = tmp_path / "retry"  # trial 1 stopped in its epoch; trial 2, its retry, stopped at ask
    monkeypatch.setattr(Recipe, "train_epoch", stopped_in("trial-0001"))
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
    monkeypatch.undo()
    monkeypatch.setattr(optuna.Study, "ask", ask)
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
    monkeypatch.undo()
    tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
    trials = study_trials(out, "late_fusion")
    assert states(trials) == ["complete", "fail", "fail", "complete"]
    assert trials[3].params == trials[1].params and trials[3].user_attrs["retry_of"] == 1


def test_a_trial_left_running_by_a_stopped_ask_is_failed_after_the_grace_period(tmp_path, tiny):
    """A study left with such a trial (a command before the fix, or a process killed between ask and
    the objective): the next command fails it once it is older than the heartbeat grace period, and
    runs the budget."""
    cfg = tune_config("late_fusion", None, [*TINY, "train.epochs=1"])
    out = tmp_path / "t"
    tune(cfg, out, trials=1, bundle=tiny[0], console=QUIET)
    study = optuna.load_study(study_name="late_fusion", storage=f"sqlite:///{out / 'study.db'}")
    old = datetime.datetime.now() - datetime.timedelta(seconds=GRACE + 60)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING))
    del study
    with sqlite3.connect(out / "study.db") as db:
        db.execute("UPDATE trials SET datetime_start = ? WHERE number = 1", (old.isoformat(" "),))
    tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
    assert states(study_trials(out, "late_fusion")) == ["complete", "fail", "complete"]


# ---------------------------------------------------------------------- pruning
def test_pruner_stops_a_hopeless_trial(tmp_path, monkeypatch):
    """Scripted validation scores: trials 0 and 1 score 0.3, 0.5, 0.4 in epochs 1-3, trial 2 scores
    0.05 in epoch 1, below the median of the others there: it is pruned after epoch 1 and trains no
    further. Trial 3's loss diverges: pruned too (a bad setting), not failed. A completed trial's
    value is its best epoch's score (0.5), not its last."""
    scripted = {0: [0.3, 0.5, 0.4], 1: [0.3, 0.5, 0.4], 2: [0.05, 0.9, 0.9]}
    real_validate, real_epoch = Recipe.validate, Recipe.train_epoch

    def validate(self):
        rep, threshold = real_validate(self)
        rep["overall"]["micro_f1"] = scripted[int(self.out.name.split("-")[1])][len(self.log)]
        return rep, threshold

    def train_epoch(self, epoch, bar):
        if self.out.name == "trial-0003":
            said = f"epoch {epoch} step 0: loss is not finite (nan); lower train.lr?"
            raise LossNotFinite(said, f"; {self.out} keeps ..., but --resume repeats its steps")  # as the recipe's
        return real_epoch(self, epoch, bar)

    monkeypatch.setattr(Recipe, "validate", validate)
    monkeypatch.setattr(Recipe, "train_epoch", train_epoch)
    from ramer.tune import tune, tune_config

    cfg = tune_config("late_fusion", None, [*TINY, "train.epochs=3"])
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    summary = tune(cfg, tmp_path / "t", trials=4, pruner=pruner).summary
    trials = study_trials(tmp_path / "t", "late_fusion")
    assert states(trials) == ["complete", "complete", "pruned", "pruned"]
    assert [t.value for t in trials[:2]] == [0.5, 0.5]
    assert trials[2].user_attrs["note"] == "pruned after epoch 1" and trials[2].user_attrs["epochs_run"] == 1
    pruned = tmp_path / "t" / "trial-0002"
    assert [ln["epoch"] for ln in lines(pruned)] == [1] and not (pruned / "test_metrics.json").exists()
    # the note says why; not what a run folder of a resumable run keeps (a trial is not resumed)
    assert trials[3].user_attrs["note"] == "epoch 1 step 0: loss is not finite (nan); lower train.lr?"
    assert (summary["complete"], summary["pruned"], summary["finished"]) == (2, 2, 4)


def test_trial_seeds_prune_on_the_first_seed_and_name_a_later_seed_that_diverges(tmp_path, monkeypatch):
    """With two seeds per trial the pruner is asked once per epoch of the first seed only; a trial
    whose second seed diverges is pruned, its note names that seed, and its seed scores hold the
    first seed's."""
    asked = []

    class Recording(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            asked.append((trial.number, max(trial.intermediate_values)))
            return False

    real_epoch = Recipe.train_epoch

    def train_epoch(self, epoch, bar):
        if self.out.parent.name == "trial-0001" and self.out.name == "seed-2":
            raise LossNotFinite(f"epoch {epoch} step 0: loss is not finite (nan); lower train.lr?")
        return real_epoch(self, epoch, bar)

    monkeypatch.setattr(Recipe, "train_epoch", train_epoch)
    from ramer.tune import tune, tune_config

    cfg = tune_config("late_fusion", None, TINY)  # 2 epochs per run, no early stop
    tune(cfg, tmp_path / "t", trials=2, pruner=Recording(), trial_seeds=2)
    trials = study_trials(tmp_path / "t", "late_fusion")
    assert states(trials) == ["complete", "pruned"]
    assert asked == [(0, 1), (0, 2), (1, 1), (1, 2)]  # the first seed's two epochs of each trial
    note = trials[1].user_attrs["note"]
    assert note.startswith("seed 2: epoch 1 step 0: loss is not finite")
    first = [ln for ln in lines(tmp_path / "t" / "trial-0001" / "seed-1") if "epoch" in ln]
    assert trials[1].user_attrs["seed_values"] == [max(ln["valid"]["overall"]["micro_f1"] for ln in first)]


def test_a_trial_that_raises_says_what_in_its_note(tmp_path, monkeypatch):
    """A bug in a trial's run (a plugin's forward on float64 weights) stops the search with its
    error; trials.md and trials.csv said the trial was "killed or interrupted"."""
    real_epoch = Recipe.train_epoch

    def train_epoch(self, epoch, bar):
        if self.out.name == "trial-0001":
            raise RuntimeError("mat1 and mat2 must have the same dtype\nsecond line")
        return real_epoch(self, epoch, bar)

    monkeypatch.setattr(Recipe, "train_epoch", train_epoch)
    cfg = tune_config("late_fusion", None, TINY)
    with pytest.raises(RuntimeError, match="same dtype"):
        tune(cfg, tmp_path / "t", trials=2, console=Console(file=io.StringIO()))
    assert states(study_trials(tmp_path / "t", "late_fusion")) == ["complete", "fail"]
    for name in ("trials.md", "trials.csv"):
        text = (tmp_path / "t" / name).read_text()
        assert "failed: RuntimeError: mat1 and mat2 must have the same dtype" in text and "killed" not in text


# ---------------------------------------------------------------------- several processes
def wrapped(script: str) -> str:
    """A ``python -c`` program: ``script`` (patches for the test), then the real CLI."""
    return textwrap.dedent(script) + "\nfrom ramer.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.slow
def test_tune_killed_mid_trial_resumes_where_it_stopped(tmp_path, capsys):
    """SIGKILL during trial 1's second epoch; the same command again marks trial 1 failed and
    removes its folder, keeps trial 0 (not trained again) and runs trials until 3 completed."""
    out = tmp_path / "tune"
    argv = ["tune", "--model", "late_fusion", "--trials", "3", "--out", str(out), *SETS]
    stop_in_trial_1 = """
        import sys, time
        from ramer.train.recipe import Recipe
        real = Recipe.train_epoch
        def train_epoch(self, epoch, bar):
            if self.out.name == "trial-0001" and epoch == 2:
                (self.out.parent / "in-trial-1").write_text("")
                time.sleep(600)
            return real(self, epoch, bar)
        Recipe.train_epoch = train_epoch
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapped(stop_in_trial_1), *argv], env=env(), stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(out / "in-trial-1", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert states(study_trials(out, "late_fusion")) == ["complete", "running"]
    assert (out / "trial-0001" / "train_state.pt").exists()
    first = (out / "trial-0000" / "metrics.jsonl").stat().st_mtime_ns

    capsys.readouterr()
    assert main(argv) == 0
    said = capsys.readouterr().err
    assert said.count("note: trial 1 stopped before the end (killed or interrupted)") == 1, said  # none before
    trials = study_trials(out, "late_fusion")
    assert states(trials) == ["complete", "fail", "complete", "complete"]
    assert not (out / "trial-0001").exists()
    assert trials[2].params == trials[1].params  # the killed trial's values, tried again first
    assert (out / "trial-0000" / "metrics.jsonl").stat().st_mtime_ns == first
    summary = json.loads((out / "tune.json").read_text())
    assert (summary["complete"], summary["failed"], summary["running"]) == (3, 1, 0)
    assert "killed or interrupted" in (out / "trials.csv").read_text()


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path):
    """Two processes on one SQLite study (--storage), each with its own --out, as two machines
    would run: both train at once (each waits in its first epoch until the other is there too),
    and together they finish the study's budget of 4 trials, no more."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    meet_the_other = f"""
        import os, sys, time
        from pathlib import Path
        from ramer.train.recipe import Recipe
        real, barrier = Recipe.train_epoch, Path({str(barrier)!r})
        def train_epoch(self, epoch, bar):
            if not (barrier / f"ready-{{os.getpid()}}").exists():
                (barrier / f"ready-{{os.getpid()}}").write_text("")
                deadline = time.time() + 300
                while len(list(barrier.glob("ready-*"))) < 2 and time.time() < deadline:
                    time.sleep(0.1)
            return real(self, epoch, bar)
        Recipe.train_epoch = train_epoch
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", wrapped(meet_the_other), "tune", "--model", "late_fusion", "--trials", "4"]
            + ["--storage", storage, "--out", str(tmp_path / f"w{k}"), "--seed", str(k), *SETS],
            env=env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="late_fusion", storage=storage).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 4
    assert all(t.user_attrs["note"].startswith("not run") for t in trials if t.state.name == "FAIL")
    workers: dict[int, int] = {}  # process -> trials it completed
    pids = {p.pid: k for k, p in enumerate(procs)}
    for t in done:  # each trial's run folder is in the --out of the process that ran it
        k = pids[t.user_attrs["worker"]["pid"]]
        assert (tmp_path / f"w{k}" / f"trial-{t.number:04d}" / "test_metrics.json").exists()
        workers[k] = workers.get(k, 0) + 1
    assert sorted(workers) == [0, 1]  # both processes trained trials
    assert max(json.loads((tmp_path / f"w{k}" / "tune.json").read_text())["complete"] for k in range(2)) == 4


# ---------------------------------------------------------------------- TensorBoard
def test_tensorboard_curves_hold_the_logged_scalars(tmp_path):
    """``train.tensorboard`` through ``ramer tune``: the trial's run writes RUN/tensorboard, whose
    scalars are the values of metrics.jsonl at each line's step."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tune"
    assert main(["tune", "--model", "late_fusion", "--trials", "1", "--out", str(out), *SETS]
                + ["--set", "train.tensorboard=true"]) == 0  # fmt: skip
    run = out / "trial-0000"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "valid/overall/micro_f1", "valid/speaker/micro_f1", "lr", "test/overall/micro_f1"} <= tags
    epochs = [ln for ln in lines(run) if "epoch" in ln]
    assert {t for t in tags if t.startswith("train/")} == {f"train/{k}" for k in epochs[0]["train"]}
    for tag, read in (("train/loss", lambda ln: ln["train"]["loss"]), ("lr", lambda ln: ln["lr"])):
        points = [(e.step, e.value) for e in events.Scalars(tag)]
        assert points == [(ln["step"], pytest.approx(read(ln), rel=1e-6)) for ln in epochs], tag
    final = lines(run)[-1]
    (test_point,) = events.Scalars("test/overall/micro_f1")
    assert test_point.value == pytest.approx(final["test"]["overall"]["micro_f1"], rel=1e-6)


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    assert main(["train", "--model", "late_fusion", "--out", str(tmp_path / "r"), *SETS,
                 "--set", "train.tensorboard=true"]) == 2  # fmt: skip
    assert "pip install 'ramer[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # said before any work


def test_a_storage_that_will_not_open_leaves_no_folder_behind(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["tune", "--model", "late_fusion", "--trials", "1", "--storage", "nosuch://db", "--out", str(out), *SETS]
    assert main(argv) == 2
    assert "cannot open the study at nosuch://db" in capsys.readouterr().err and not out.exists()
    argv[argv.index(str(out))] = str(tmp_path / "runs" / "study")  # nor the parents it made for it
    assert main(argv) == 2 and not (tmp_path / "runs").exists()
    argv[argv.index(str(tmp_path / "runs" / "study"))] = str(out)
    out.mkdir()  # a folder the user made is kept, empty or not
    assert main(argv) == 2 and out.is_dir()


def test_an_in_memory_sqlite_storage_is_refused(tmp_path, capsys):
    """An in-memory SQLite database keeps no study after the command, and Optuna's heartbeat thread
    opens a database of its own (tracebacks from that thread, exit 0): one line, exit 2, no folder.
    A file, or another database, is not refused here; an empty --storage is."""
    from ramer.tune import in_memory_sqlite

    out = tmp_path / "study"
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://", "sqlite:///file::memory:?uri=true"):
        argv = ["tune", "--model", "late_fusion", "--trials", "1", "--storage", url, "--out", str(out), *SETS]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert one_error_line(err) and not out.exists(), err
        assert (
            f"--storage {url}: an in-memory database holds no study after the command (and Optuna's heartbeat "
            "thread cannot share it); give sqlite:///FILE"
        ) in " ".join(err.split())
    for url in ("", " "):  # OUT/study.db, taken for a shared storage: its lock and one-model checks skipped
        argv = ["tune", "--model", "late_fusion", "--trials", "1", "--storage", url, "--out", str(out), *SETS]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert one_error_line(err) and not out.exists() and "--storage: empty; give a database URL" in err, err
    assert in_memory_sqlite("sqlite:///file:x?mode=memory&uri=true")
    for url in ("sqlite:///study.db", "sqlite:////tmp/x/study.db", "postgresql://u@host/db", "nosuch://db", "bogus"):
        assert not in_memory_sqlite(url), url


def test_best_yaml_names_its_data_by_a_path_that_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sizes = ["--set", "n_train=40", "--set", "n_valid=20", "--set", "n_test=20"]
    assert main(["data", "synth", "--out", "ds", *sizes]) == 0
    argv = ["tune", "--model", "late_fusion", "--trials", "1", "--data", "ds", "--out", "study"]
    assert (
        main([*argv, *[x for s in ("train.epochs=1", "model.hidden=16", "model.heads=2") for x in ("--set", s)]]) == 0
    )
    best = build_config(tmp_path / "study" / "best.yaml")
    trial = build_config(tmp_path / "study" / "trial-0000" / "config.yaml")
    assert trial.data.path == "ds" and best.data.path == str(tmp_path / "ds")
    best.data.path = trial.data.path
    assert best == trial  # the rest as the trial trained it


def test_a_study_takes_its_data_under_another_spelling_of_the_path(tmp_path, monkeypatch, capsys):
    """--data ds, then ./ds and the absolute path: one dataset (the study's recorded fingerprints say
    so), one study. Other data made at the same path, named as the study names it or another way:
    refused, saying the data differs (named as the study names it, the study went on, its best trial
    scored on the old data)."""
    monkeypatch.chdir(tmp_path)
    sizes = ["--set", "n_train=40", "--set", "n_valid=20", "--set", "n_test=20"]
    assert main(["data", "synth", "--out", "ds", *sizes]) == 0
    argv = ["tune", "--model", "late_fusion", "--out", "study"]
    argv += [x for s in ("train.epochs=1", "model.hidden=16", "model.heads=2") for x in ("--set", s)]
    for trials, spelling in ((1, "ds"), (2, "./ds"), (3, str(tmp_path / "ds"))):
        assert main([*argv, "--trials", str(trials), "--data", spelling]) == 0, capsys.readouterr().err
    assert states(study_trials(tmp_path / "study", "late_fusion")) == ["complete"] * 3
    assert main(["data", "synth", "--out", "ds", *sizes, "--set", "seed=7"]) == 0
    capsys.readouterr()
    for spelling in ("ds", "./ds"):
        assert main([*argv, "--trials", "4", "--data", spelling]) == 2
        err = capsys.readouterr().err
        assert f"scored on other data than {spelling} holds now (split train, valid, test differs" in err, err
    assert states(study_trials(tmp_path / "study", "late_fusion")) == ["complete"] * 3


def test_a_study_in_another_storage_is_refused_a_folder_that_holds_another_studys_trials(tmp_path, capsys):
    """``--storage`` of another database on a folder that holds a study's trials: the new study's
    trial 0 removed the folder's trial-0000 and wrote over its best.yaml and tune.json, without a
    word. The folder's tune.json records which study it holds; another is refused, nothing changed;
    the folder's own study, named in --storage, is the same study."""
    from ramer.cli import main

    out = tmp_path / "t"
    argv = ["tune", "--model", "late_fusion", "--trials", "1", "--out", str(out), *SETS]
    assert main(argv) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "study.db"}
    capsys.readouterr()
    assert main([*argv, "--storage", f"sqlite:///{tmp_path / 'other.db'}"]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds the trials of another study than the one sqlite:///" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "study.db"} == files
    assert main([*argv[:4], "2", *argv[5:], "--storage", f"sqlite:///{out / 'study.db'}"]) == 0
    assert states(study_trials(out, "late_fusion")) == ["complete", "complete"]


def test_ctrl_c_before_the_study_is_made_names_no_folder(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the data loaded said "finished trials are kept in OUT" of a folder never made."""
    from ramer import tune as tuning
    from ramer.cli import main

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tuning, "tune", stopped)
    out = tmp_path / "t"
    assert main(["tune", "--model", "late_fusion", "--out", str(out), *SETS]) == 130
    assert capsys.readouterr().err == "interrupted\n" and not out.exists()


def test_an_earlier_searchs_folder_holding_a_users_file_stops_the_search_before_any_trial(tmp_path, tiny):
    """A trial folder the study has not reached (an earlier search's, its study.db gone) holding a
    file of the user's: refused before any trial starts, nothing removed. It was refused within its
    trial, which the study then held as failed, and the next command blamed that trial."""
    cfg = tune_config("late_fusion", None, [*TINY, "train.epochs=1"])
    out = tmp_path / "t"
    (out / "trial-0001").mkdir(parents=True)
    (out / "trial-0001" / "notes.txt").write_text("mine")
    for _ in range(2):
        with pytest.raises(
            RamerError, match=r"trial-0001: trial 1 will train here, .*files no run writes \(notes\.txt\)"
        ):
            tune(cfg, out, trials=2, bundle=tiny[0], console=QUIET)
    assert study_trials(out, "late_fusion") == [] and (out / "trial-0001" / "notes.txt").read_text() == "mine"
