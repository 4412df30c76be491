"""``train.recompute``: the modality encoders keep only each transformer layer's input in training
and run the layer again in backward (docs/PERFORMANCE.md §4). The same losses and weights to the
bit, with dropout on, in float32 and under bf16 autocast, for every model built on those encoders;
less saved for backward; evaluation untouched."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import random_store
from rich.console import Console
from test_degenerate_data import bundle_of
from test_recipe import Stop, epoch_lines, stop_after, tiny_cfg

from ramer.cli import main
from ramer.config import build_config
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.models import DataSpec, build_model
from ramer.models.parts import ModalityEncoder
from ramer.models.parts.encoders import TransformerLayer
from ramer.train import inputs, recipe, run_training
from ramer.train.optim import build_optimizer
from ramer.train.recipe import training_step

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)

ENCODER_MODELS = ["ramer", "ramer-authors", "hhmpn", "mlgcn"]
DEEP = (
    "model.layers.text=4",
    "model.layers.audio=4",
    "model.layers.visual=4",
)  # the encoders' share of what is saved, as at CARAT's 6/4/4
SMALL = ["model.hidden=16", "model.heads=2", "model.ffn=16", "model.dropout=0.3", "model.queue_size=32"]


def _setup(model: str, recompute: bool, *overrides: str):
    store = random_store(n=16, seed=3)
    cfg = build_config(None, [f"model.name={model}", *SMALL, f"train.recompute={recompute}", *overrides])
    spec = DataSpec(
        dims=store.dims,
        n_labels=len(store.label_names),
        label_names=store.label_names,
        personality_dim=store.dims["personality"],
    )
    torch.manual_seed(0)
    return cfg, store, build_model(cfg, spec).train()


def _train(model_name: str, recompute: bool, precision: str, monkeypatch, steps: int = 3):
    """Losses, weights after ``steps`` training steps, and how many times the encoders' layers ran."""
    cfg, store, model = _setup(model_name, recompute)
    opt, sched = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, 100, 0.1)
    runs = []
    forward = TransformerLayer.forward
    monkeypatch.setattr(TransformerLayer, "forward", lambda self, *a: runs.append(1) or forward(self, *a))
    torch.manual_seed(1)
    losses = []
    for step in range(steps):
        batch = store.collate(np.arange(step * 5, step * 5 + 6) % len(store))
        losses.append(training_step(model, model, batch, opt, sched, cfg.train.grad_clip, precision).total.detach())
    monkeypatch.setattr(TransformerLayer, "forward", forward)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, len(runs)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("model_name", ENCODER_MODELS)
def test_recompute_trains_the_same_to_the_bit(model_name, precision, monkeypatch):
    kept_losses, kept, kept_runs = _train(model_name, False, precision, monkeypatch)
    again_losses, again, again_runs = _train(model_name, True, precision, monkeypatch)
    assert again_runs > kept_runs > 0  # the layers did run again in backward
    assert [x.item() for x in kept_losses] == [x.item() for x in again_losses]
    assert kept.keys() == again.keys()
    for key in kept:
        assert torch.equal(kept[key], again[key]), key


def _saved_bytes(model_name: str, recompute: bool, train: bool) -> int:
    """Bytes autograd keeps for backward during one forward and loss (each storage once)."""
    _, store, model = _setup(model_name, recompute, *DEEP)
    model.train(train)
    storages: dict[int, int] = {}
    held = []  # no storage is freed and its address taken by another while counting

    def pack(t):
        held.append(t)
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    batch = store.collate(np.arange(8))
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(model(batch), batch)
    return sum(storages.values())


def _layer_runs(model_name: str, recompute: bool, train: bool, monkeypatch) -> tuple[int, int]:
    """How many times the encoders' layers run in one forward and loss, and in its backward."""
    _, store, model = _setup(model_name, recompute, *DEEP)
    model.train(train)
    runs = []
    forward = TransformerLayer.forward
    monkeypatch.setattr(TransformerLayer, "forward", lambda self, *a: runs.append(1) or forward(self, *a))
    batch = store.collate(np.arange(8))
    torch.manual_seed(1)
    loss = model.loss(model(batch), batch).total
    ahead = len(runs)
    if loss.requires_grad:
        loss.backward()
    return ahead, len(runs) - ahead


@pytest.mark.parametrize("model_name", ["ramer", "hhmpn"])
def test_recompute_keeps_less_for_backward_and_runs_the_layers_again(model_name, monkeypatch):
    assert _saved_bytes(model_name, True, train=True) < 0.8 * _saved_bytes(model_name, False, train=True)
    ahead, behind = _layer_runs(model_name, False, True, monkeypatch)
    assert ahead > 0 and behind == 0
    again_ahead, again_behind = _layer_runs(model_name, True, True, monkeypatch)
    assert again_ahead == ahead and again_behind > 0


def test_evaluation_is_untouched_by_recompute(monkeypatch):
    assert _saved_bytes("ramer", True, train=False) == _saved_bytes("ramer", False, train=False)
    assert _layer_runs("ramer", True, False, monkeypatch) == _layer_runs("ramer", False, False, monkeypatch)


def test_build_model_sets_every_encoder_and_leaves_it_off_by_default():
    for recompute in (False, True):
        _, _, model = _setup("ramer", recompute)
        flags = [part.recompute for part in model.modules() if isinstance(part, ModalityEncoder)]
        assert flags == [recompute] * 3


@pytest.mark.parametrize("model_name", ["late_fusion", "ramer"])
def test_a_model_recompute_does_not_reach_is_noted(tmp_path, model_name):
    """late_fusion has none of RAMer's modality encoders: asked to recompute, it trains as without
    it, and the run and a bench say so; a model with them says nothing."""
    said = io.StringIO()
    cfg = build_config(None, [*SMALL, "train.epochs=1", f"model.name={model_name}", "train.recompute=true"])
    run_training(cfg, tmp_path / "run", bundle=bundle_of(random_store(n=16)), console=Console(file=said, width=400))
    note = f"note: train.recompute has no effect on model '{model_name}': it runs again only the layers of"
    assert (note in said.getvalue()) == (model_name == "late_fusion"), said.getvalue()
    configs = [build_config(None, [f"model.name={m}", "train.recompute=true"]) for m in ("late_fusion", "ramer")]
    notes = [n for n in inputs.bench_notes(bundle_of(random_store(n=16)), configs, "multi_label") if "recompute" in n]
    said_once = "train.recompute has no effect on model 'late_fusion': it runs again only the layers of RAMer's"
    assert notes == [said_once + " modality encoders, which this model does not have"]


def test_a_training_step_out_of_memory_names_recompute_where_it_would_help(tmp_path, monkeypatch):
    """A step that does not fit names train.recompute besides the sizes to lower, for a model whose
    encoders do not recompute yet; not once they do, not for scoring, not for late_fusion."""

    def too_big(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9883055232 bytes")

    said, bundle = {}, generate(tiny_cfg().data.synthetic)
    for model_name, recompute, name in [
        ("ramer", False, "training_step"),
        ("ramer", True, "training_step"),
        ("late_fusion", False, "training_step"),
        ("ramer", False, "predict"),
    ]:
        cfg = tiny_cfg(model_name, [f"train.recompute={recompute}"])
        with monkeypatch.context() as m:
            m.setattr(recipe, name, too_big)
            with pytest.raises(RamerError) as e:
                recipe.Recipe(cfg, tmp_path / f"{model_name}-{recompute}-{name}", bundle=bundle).run()
        said[model_name, recompute, name] = str(e.value)
    hint = "; lower them, or set train.recompute=true (the encoders' layers run again in backward: less memory with"
    hint += " deep encoders)"
    assert said["ramer", False, "training_step"].endswith(hint), said
    assert [hint in x for x in said.values()] == [True, False, False, False], said
    assert all("does not fit in memory (9 GiB asked for)" in x for x in said.values()), said


def test_a_run_resumes_with_recompute_turned_on_and_trains_as_never_stopped(tmp_path, capsys):
    """A run stopped (say out of memory, whose line names train.recompute) resumes with
    train.recompute=true in its config.yaml, and ends as the run never stopped without it."""
    two = ["train.epochs=2", "model.dropout=0.3"]
    bundle = generate(tiny_cfg().data.synthetic)
    full = recipe.Recipe(tiny_cfg("ramer", two), tmp_path / "full", bundle=bundle).run()
    out = tmp_path / "cut"
    with pytest.raises(Stop):
        recipe.Recipe(tiny_cfg("ramer", two), out, bundle=bundle, hooks=(stop_after(1),)).run()
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("recompute: false", "recompute: true"))
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0, capsys.readouterr().err
    assert torch.load(out / "train_state.pt", weights_only=True)["config"]["train"]["recompute"] is True
    a, b = epoch_lines(tmp_path / "full"), epoch_lines(out)
    assert [(x["train"], x["valid"]) for x in a] == [(x["train"], x["valid"]) for x in b]
    assert json.loads((out / "test_metrics.json").read_text()) == full
