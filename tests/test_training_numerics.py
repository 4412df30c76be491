"""Training that diverges, and settings that make it: a gradient, weights or validation scores that
are not finite stop the run as a loss that is not finite does (``LossNotFinite``: ``ramer tune``
prunes the trial), before anything of the step is saved, and say what the run folder keeps; settings
no run can train with are refused before any work (by the recipe, a search too: not by the config, so a
model file saved with them still loads)."""

import io
import json

import numpy as np
import pytest
import torch
from conftest import random_store
from rich.console import Console

import ramer
from ramer.api import RunNotFinished
from ramer.config import build_config
from ramer.data.store import DataBundle
from ramer.errors import LossNotFinite, RamerError
from ramer.train import recipe as recipe_module
from ramer.train import run_training
from ramer.train.ema import WeightAverage

pytestmark = pytest.mark.usefixtures("one_thread")

# 16 training scenes in batches of 16: one optimiser step per epoch
TINY = ["train.epochs=3", "model.hidden=16", "model.ffn=32", "model.heads=2", "train.batch_size=16"]


def bundle() -> DataBundle:
    train = random_store(n=16)
    splits = {"train": train, "valid": random_store(n=8, seed=1), "test": random_store(n=8, seed=2)}
    return DataBundle(splits, train.label_names, "odd", "odd")


def train(out, data, model="late_fusion", hooks=(), resume=False, sets=()) -> str:
    said = io.StringIO()
    cfg = build_config(None, [*TINY, f"model.name={model}", *sets])
    run_training(cfg, out, bundle=data, console=Console(file=said, width=400), resume=resume, hooks=hooks)
    return said.getvalue()


def after_step(monkeypatch, step: int, change) -> None:
    """``change(model)`` right after optimiser step ``step`` (from 1) of the run, as an update that
    overflowed would leave the weights."""
    done = []

    def step_then_change(forward, model, *args, **kwargs):
        loss = original(forward, model, *args, **kwargs)
        done.append(1)
        if len(done) == step:
            with torch.no_grad():
                change(model)
        return loss

    original = recipe_module.training_step
    monkeypatch.setattr(recipe_module, "training_step", step_then_change)


def epochs_logged(run) -> list[int]:
    lines = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [line["epoch"] for line in lines if "epoch" in line]  # not the test line


def assert_epoch_one_kept_and_resumable(run, data, said: str) -> None:
    """The run folder holds epoch 1 as it was saved, and --resume (the divergence gone) finishes it."""
    assert f"{run} keeps epoch 1 (the best, epoch 1, in model.safetensors)" in said, said
    assert "--resume repeats its steps" in said
    assert epochs_logged(run) == [1] and not (run / "test_metrics.json").exists()
    with pytest.warns(RunNotFinished):
        predictor = ramer.load(run)
    assert np.isfinite(predictor.predict(data.splits["test"])).all()
    train(run, data, resume=True)
    assert epochs_logged(run) == [1, 2, 3] and (run / "test_metrics.json").exists()


def test_a_gradient_not_finite_stops_before_the_step_with_the_weights_as_they_were(tmp_path):
    """A finite loss whose gradient is not (an overflow in the backward pass): clipping would scale it
    by 0 into NaN weights; the run stops before the optimiser step instead."""
    data, run, seen = bundle(), tmp_path / "run", []

    def infinite_gradient(recipe, epoch):  # from epoch 2 on, one parameter's gradient is infinite
        seen.append(recipe)
        next(recipe.model.parameters()).register_hook(lambda g: torch.full_like(g, float("inf")))

    with pytest.raises(LossNotFinite) as e:
        train(run, data, hooks=(infinite_gradient,))
    said = str(e.value)
    assert said.startswith("epoch 2 step 0: the gradient is not finite (norm inf, loss "), said
    assert all(bool(torch.isfinite(p).all()) for p in seen[0].model.parameters())
    assert_epoch_one_kept_and_resumable(run, data, said)


def test_weights_not_finite_after_an_epoch_stop_it_before_validation_and_name_the_weight(tmp_path, monkeypatch):
    data, run = bundle(), tmp_path / "run"
    name = []

    def overflow(model):
        name.append(next(model.named_parameters())[0])
        next(model.parameters()).fill_(float("inf"))

    after_step(monkeypatch, 2, overflow)  # the last (only) step of epoch 2
    with pytest.raises(LossNotFinite) as e:
        train(run, data)
    said = str(e.value)
    assert said.startswith(f"epoch 2: the weights are not finite after its last step ({name[0]})"), said
    assert "lower train.lr?" in said
    monkeypatch.undo()
    assert_epoch_one_kept_and_resumable(run, data, said)


def test_a_buffer_not_finite_after_an_epoch_stops_it_and_is_named(tmp_path, monkeypatch):
    """The contrastive queue is a buffer, not a parameter: a NaN there after the epoch's last step was
    validated and saved as it was."""
    after_step(monkeypatch, 2, lambda model: model.memory.queue[0].fill_(float("nan")))
    with pytest.raises(LossNotFinite) as e:
        train(tmp_path / "run", bundle(), model="ramer")
    said = str(e.value)
    assert said.startswith("epoch 2: the weights are not finite after its last step (memory.queue)"), said
    assert epochs_logged(tmp_path / "run") == [1]


def test_a_weight_average_not_finite_after_an_epoch_stops_it_and_is_named(tmp_path, monkeypatch):
    """With train.ema_decay the average is what is validated and saved; a NaN in it (the live weights
    finite) stops the run as one in the weights does."""
    data, run = bundle(), tmp_path / "run"
    original, done = WeightAverage.update, []

    def update_then_nan(self):
        original(self)
        done.append(self.names[0])
        if len(done) == 2:  # the last (only) step of epoch 2
            self.average[0].fill_(float("nan"))

    monkeypatch.setattr(WeightAverage, "update", update_then_nan)
    with pytest.raises(LossNotFinite) as e:
        train(run, data, sets=["train.ema_decay=0.9"])
    said = str(e.value)
    assert said.startswith(f"epoch 2: the weights are not finite after its last step ({done[0]} (weight average))")
    assert epochs_logged(run) == [1]


def test_validation_scores_not_finite_after_an_epoch_are_a_diverged_run(tmp_path, monkeypatch):
    """Finite weights whose scores are not (the forward pass overflows) at the epoch's last step: a
    LossNotFinite, not a RamerError of the metrics, so that a search prunes the trial."""
    data, run = bundle(), tmp_path / "run"
    after_step(monkeypatch, 2, lambda model: [p.mul_(1e30) for p in model.parameters() if p.ndim > 1])
    with pytest.raises(LossNotFinite) as e:
        train(run, data)
    said = str(e.value)
    assert said.startswith("epoch 2: the validation scores are NaN or infinite after its last step"), said
    monkeypatch.undo()
    assert_epoch_one_kept_and_resumable(run, data, said)


def test_a_divergence_in_the_first_epoch_keeps_nothing_to_resume(tmp_path, monkeypatch):
    after_step(monkeypatch, 1, lambda model: next(model.parameters()).fill_(float("nan")))
    with pytest.raises(LossNotFinite) as e:
        train(tmp_path / "run", bundle())
    assert str(e.value).startswith("epoch 1: the weights are not finite") and " keeps " not in str(e.value)


# ramer-authors' loss weights: each of its terms is weighted by one of them
AUTHORS_ZERO = (
    "w_adv",
    "w_ae",
    "w_aug",
    "w_beta_cls",
    "w_beta_mse",
    "w_cl",
    "w_cml",
    "w_cross",
    "w_diff",
    "w_lsr",
    "w_shuf",
)


def tiny_bench(tmp_path, models: str, sets, out="bench", **settings):
    """The settings of a one-seed bench of ``models`` at missing rate 0 on tiny data, into tmp_path/out."""
    from ramer import bench

    small = ["data.synthetic.n_train=16", "data.synthetic.n_valid=8", "data.synthetic.n_test=8", *TINY[1:]]
    return bench.resolve_settings(
        out=str(tmp_path / out),
        models=models,
        seeds=1,
        rates="0",
        overrides=[*small, *sets],
        complete="",
        jobs=1,
        **settings,
    )


@pytest.mark.parametrize(
    "sets, said",
    [
        (["train.lr=0.001", "train.weight_decay=1000"], "train.lr 0.001 x train.weight_decay 1000 is 1; AdamW scales"),
        (["train.lr=1000"], "train.lr 1000 x train.weight_decay 0.01 is 10; AdamW scales the weights by 1 - lr x"),
        (["model.name=ramer", "model.temperature=1e-12"], "model.temperature 1e-12 is below 0.0001: SupCon's"),
        (  # every gradient 0: the run logged losses of 0 and its untrained scores for every epoch, without a word
            ["model.name=ramer-authors", *(f"loss.{k}=0" for k in AUTHORS_ZERO)],
            "loss.w_adv, loss.w_ae, loss.w_aug, loss.w_beta_cls, loss.w_beta_mse, loss.w_cl, loss.w_cml, "
            "loss.w_cross, loss.w_diff, loss.w_lsr, loss.w_shuf are all 0: every term of ramer-authors' loss",
        ),
    ],
)
def test_settings_no_run_trains_with_are_refused_before_any_work(tmp_path, sets, said):
    cfg = build_config(None, [*TINY, "model.name=late_fusion", *sets])
    with pytest.raises(RamerError) as e:
        run_training(cfg, tmp_path / "run", bundle=bundle(), console=Console(file=io.StringIO()))
    assert str(e.value).startswith(said), str(e.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "sets, said",
    [
        (["model.name=ramer", "model.temperature=1e-6"], "model.temperature 1e-06 is below 0.0001"),
        (
            ["train.weight_decay=400"],  # 0.001 x 400 trains; the search's lr of 0.003 would not
            "the search (train.lr log-uniform [0.0001, 0.003]) reaches a setting no run trains with: train.lr 0.003 "
            "x train.weight_decay 400 is 1.2",
        ),
    ],
)
def test_a_search_refuses_them_before_it_makes_a_study(tmp_path, sets, said):
    """``ramer tune`` made its study, then failed its first trial ("killed or interrupted"), and the
    study kept the refused config: the corrected command was refused as another config's study."""
    pytest.importorskip("optuna")
    from ramer.config import set_keys
    from ramer.tune import tune

    cfg = build_config(None, [*TINY, "model.name=late_fusion", "train.lr=0.001", *sets])
    with pytest.raises(RamerError) as e:
        tune(
            cfg,
            tmp_path / "study",
            trials=1,
            fixed=set_keys(sets),
            bundle=bundle(),
            console=Console(file=io.StringIO()),
        )
    assert str(e.value).startswith(said), str(e.value)
    assert not (tmp_path / "study").exists()


def test_the_bounds_themselves_train_and_a_model_file_of_other_values_still_loads(tmp_path):
    """The checks are the recipe's, not the config's: the config of a model file saved with a
    temperature below the bound (by an earlier version) still validates, so the file still loads."""
    sets = ["train.epochs=1", "train.lr=0.001", "train.weight_decay=999", "model.temperature=1e-4"]
    cfg = build_config(None, [*TINY, "model.name=ramer", *sets])
    run_training(cfg, tmp_path / "run", bundle=bundle(), console=Console(file=io.StringIO()))
    build_config(None, ["train.lr=1000", "model.temperature=1e-12"])
    # a model whose loss has no SupCon term does not read the temperature
    recipe_module.check_training_values(build_config(None, ["model.name=late_fusion", "model.temperature=1e-12"]))


def test_a_value_the_search_replaces_is_not_refused():
    """``ramer tune --config C`` with a config of train.lr 0.5 and train.weight_decay 3: the search
    sets both in every trial (at most 0.003 x 0.1), so the config's product of 1.5 trains nowhere;
    it was refused as if a trial would."""
    from ramer.models.spaces import space_for
    from ramer.tune import check_space

    cfg = build_config(None, [*TINY, "model.name=late_fusion", "train.lr=0.5", "train.weight_decay=3"])
    check_space(cfg, space_for(cfg))
    with pytest.raises(RamerError, match="^train.lr 0.5 x train.weight_decay 3 is 1.5"):  # searched neither
        check_space(cfg, space_for(cfg, {"train.lr", "train.weight_decay"}))


class Tuning(Exception):
    pass


@pytest.mark.parametrize(
    "sets, said",
    [
        ([], None),  # the search replaces both: its trials train with at most 0.003 x 0.1
        (["train.lr=0.5", "train.weight_decay=3"], "train.lr 0.5 x train.weight_decay 3 is 1.5"),  # searched neither
        (["train.weight_decay=400"], r"the search \(train.lr log-uniform \[0.0001, 0.003\]\) reaches a setting"),
    ],
)
def test_a_bench_that_tunes_checks_the_search_not_the_values_it_replaces(tmp_path, monkeypatch, sets, said):
    """``ramer bench --config C --tune-trials N`` with C's own train.lr 0.5 and train.weight_decay 3:
    the bench refused C's product of 1.5 before any work, though tuning sets both in every trial and
    every run; it checks the search's ends (as ``ramer tune`` does), and a value ``--set`` keeps."""
    pytest.importorskip("optuna")
    from ramer import bench

    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 0.5\n  weight_decay: 3\n")
    s = tiny_bench(tmp_path, "late_fusion", sets, config=config, tune_trials=1)

    def tuning(*args):
        raise Tuning

    monkeypatch.setattr(bench, "tune_models", tuning)
    if said is None:
        with pytest.raises(Tuning):  # the pre-check passed; the bench goes on to tune
            bench.run_bench(s, Console(file=io.StringIO()))
    else:
        with pytest.raises(RamerError, match=f"^{said}"):
            bench.run_bench(s, Console(file=io.StringIO()))


@pytest.mark.parametrize("tune_trials", [None, 1])
def test_a_bench_refuses_a_loss_of_weight_0_before_any_run(tmp_path, monkeypatch, tune_trials):
    """ramer-authors with every loss weight 0 (``check_loss_weights``): refused before the bench's
    first run, not after the models planned before it have trained; with --tune-trials too, whose
    search leaves the weights --set fixes as they are (``tune.check_space``): it made the studies and
    every trial failed."""
    from ramer import bench

    if tune_trials:
        pytest.importorskip("optuna")

        def tuning(*args):
            raise Tuning

        monkeypatch.setattr(bench, "tune_models", tuning)
    sets = [f"loss.{k}=0" for k in AUTHORS_ZERO]
    s = tiny_bench(tmp_path, "late_fusion,ramer-authors", sets, tune_trials=tune_trials)
    with pytest.raises(RamerError, match=r"^loss.w_adv, .* are all 0: every term of ramer-authors' loss"):
        bench.run_bench(s, Console(file=io.StringIO()))
    assert not (tmp_path / "bench").exists()  # made for the bench, removed again: nothing in it


def test_a_refused_bench_leaves_no_folder_it_made_and_keeps_the_users(tmp_path):
    """A bench refused before its first run removes the --out it made for itself (an empty folder left
    behind, as before), and the parents it made for it (the default runs/bench's runs/), and keeps a
    folder that was there before it."""
    from ramer import bench

    sets = ["train.lr=100", "train.weight_decay=1"]
    with pytest.raises(RamerError, match="train.lr 100 x train.weight_decay 1 is 100"):
        bench.run_bench(tiny_bench(tmp_path, "late_fusion", sets, out="runs/bench"), Console(file=io.StringIO()))
    assert not (tmp_path / "runs").exists()
    for existed in (False, True):
        if existed:
            (tmp_path / "bench").mkdir()
        with pytest.raises(RamerError, match="train.lr 100 x train.weight_decay 1 is 100"):
            bench.run_bench(tiny_bench(tmp_path, "late_fusion", sets), Console(file=io.StringIO()))
        assert (tmp_path / "bench").exists() == existed
        if existed:
            assert [p.name for p in (tmp_path / "bench").iterdir() if p.name != ".ramer.lock"] == []
