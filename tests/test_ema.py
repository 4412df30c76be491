"""The weight average (``train.ema_decay``): its arithmetic, what is validated and saved, a state
without it. Resume with it: ``test_recipe.py::test_resume_equals_uninterrupted_run``."""

import json

import pytest
import torch
from test_recipe import Stop, epoch_lines, scripted_scores, stop_after, tiny_cfg
from torch import nn

from ramer import checkpoint as ckpt
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.train.ema import WeightAverage
from ramer.train.recipe import Recipe

EMA = ["train.ema_decay=0.8"]


@pytest.fixture(scope="module")
def bundle():
    return generate(tiny_cfg().data.synthetic)


def test_average_follows_the_formula():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightAverage(model, decay=0.8)
    expected = 1.0
    values = torch.randn(40, generator=torch.Generator().manual_seed(0)).tolist()
    for t, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(value)  # the optimiser's step
        ema.update()
        d = min(0.8, (1 + t) / (10 + t))  # 2/11, 3/12, ... up to 0.8 from step 35 on
        expected = d * expected + (1 - d) * value
        assert ema.average[0].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert ema.rate() == 0.8  # past the warm-up of the decay


def test_swapped_in_restores_the_live_weights_even_after_an_error():
    model = nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped_in():
        for p, avg in zip(model.parameters(), ema.average):
            assert torch.equal(p, avg) and not torch.equal(p, live["weight" if p.ndim == 2 else "bias"])
    with pytest.raises(ZeroDivisionError), ema.swapped_in():
        1 / 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k])


def test_decay_outside_0_1_is_refused():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(RamerError, match="train.ema_decay"):
            tiny_cfg(extra=[f"train.ema_decay={bad}"])
        with pytest.raises(RamerError, match="train.ema_decay"):
            WeightAverage(nn.Linear(1, 1), bad)


@pytest.mark.parametrize("model", ["late_fusion", "ramer"])
def test_the_average_is_validated_saved_and_tested(tmp_path, bundle, monkeypatch, model):
    scripted_scores(monkeypatch, {1: 0.1, 2: 0.2, 3: 0.3})  # the best epoch is the last
    out = tmp_path / "run"
    result = Recipe(tiny_cfg(model, extra=EMA), out, bundle=bundle).run()
    saved, *_ = ckpt.read_model_file(out / "model.safetensors")
    state = torch.load(out / "train_state.pt", weights_only=True)
    average, live = state["ema"]["average"], state["model"]
    assert state["ema"]["steps"] == 3 * (160 // 32)
    assert set(average) <= set(saved)
    for name, value in average.items():
        assert torch.equal(saved[name], value), name  # the checkpoint holds the average ...
    assert any(not torch.equal(saved[n], live[n]) for n in average)  # ... not the live weights

    # Validation scored the averaged weights too: the same run without the average scores otherwise.
    plain = tmp_path / "plain"
    other = Recipe(tiny_cfg(model), plain, bundle=bundle).run()
    assert [d["valid"] for d in epoch_lines(out)] != [d["valid"] for d in epoch_lines(plain)]
    assert [d["train"] for d in epoch_lines(out)] == [d["train"] for d in epoch_lines(plain)]  # same training
    assert result != other


def test_resume_of_a_state_without_the_average_is_a_clear_error(tmp_path, bundle):
    out = tmp_path / "run"
    with pytest.raises(Stop):
        Recipe(tiny_cfg(extra=EMA), out, bundle=bundle, hooks=(stop_after(1),)).run()
    state = torch.load(out / "train_state.pt", weights_only=True)
    del state["ema"]
    torch.save(state, out / "train_state.pt")
    with pytest.raises(RamerError, match=r"train_state.pt: holds no weight average; .* without train.ema_decay"):
        Recipe(tiny_cfg(extra=EMA), out, resume=True, bundle=bundle).run()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1  # nothing lost


def test_resume_without_the_average_of_a_run_trained_with_it_is_a_clear_error(tmp_path, bundle):
    """The config check names the key (the settings given here are not the run's config.yaml); a state
    written before states kept their config (none stored) meets the state's own guard."""
    out = tmp_path / "run"
    with pytest.raises(Stop):
        Recipe(tiny_cfg(extra=EMA), out, bundle=bundle, hooks=(stop_after(1),)).run()
    state = (out / "train_state.pt").read_bytes()
    with pytest.raises(
        RamerError,
        match=r"the settings given differ from those .*run was trained with \(train.ema_decay; its config.yaml",
    ):
        Recipe(tiny_cfg(), out, resume=True, bundle=bundle).run()
    assert (out / "train_state.pt").read_bytes() == state  # nothing lost
    older = torch.load(out / "train_state.pt", weights_only=True)
    del older["config"]
    torch.save(older, out / "train_state.pt")
    state = (out / "train_state.pt").read_bytes()
    with pytest.raises(RamerError, match=r"train_state.pt: the run was trained with a weight average"):
        Recipe(tiny_cfg(), out, resume=True, bundle=bundle).run()
    assert (out / "train_state.pt").read_bytes() == state
