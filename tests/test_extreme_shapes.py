"""Legal data far from the embedded benchmark's sizes: features of two values per token, and long
scenes (many persons x segments), whose attention weights are made a block at a time (memory) with
the values of one pass."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import random_store
from rich.console import Console
from test_degenerate_data import TINY, changed
from test_recipe import tiny_cfg

from ramer.cli import main
from ramer.config import build_config
from ramer.data.store import SceneStore
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.models import DataSpec, build_model
from ramer.models.parts import attention
from ramer.train import inputs
from ramer.train import recipe as recipe_mod
from ramer.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SETS = [*TINY, "data.synthetic.n_train=32", "data.synthetic.n_valid=16", "data.synthetic.n_test=16"]


def spec_of(store: SceneStore) -> DataSpec:
    dims = store.dims
    return DataSpec(
        {m: dims[m] for m in ("text", "audio", "visual")},
        len(store.label_names),
        store.label_names,
        dims["personality"],
    )


def built(store: SceneStore, model: str = "late_fusion"):
    cfg = build_config(None, [*TINY, f"model.name={model}"])
    torch.manual_seed(0)
    return cfg, build_model(cfg, spec_of(store))


def notes_of(store: SceneStore, model: str = "late_fusion") -> list[str]:
    cfg, m = built(store, model)
    return inputs.input_notes(store, m, cfg.loss, "odd")


def test_a_feature_of_two_values_is_noted_as_read_for_its_order_only():
    """A LayerNorm over two values gives (+1, -1) or (-1, +1): only which one is larger is left."""
    two = random_store(n=16, dims=(2, 8, 12))
    notes = notes_of(two)
    assert len(notes) == 1 and notes[0].startswith("odd: the text features have two values per token"), notes
    assert "which of the two is larger" in notes[0] and "br, cc and lp read the values" in notes[0]
    # what the note says: moving the two values apart, in their order, leaves the scores as they were
    model = built(two)[1].eval()
    text = np.asarray(two.text)
    stretched = text + 3.0 * np.sign(text[:, :1] - text[:, 1:]) * np.array([[1.0, -1.0]], dtype=np.float32)
    with torch.no_grad():
        a = model(two.collate(np.arange(16))).probs
        b = model(changed(two, text=stretched.astype(np.float32)).collate(np.arange(16))).probs
    assert torch.allclose(a, b, atol=1e-4)
    assert notes_of(random_store(n=16, dims=(3, 8, 12))) == []  # three values keep a direction


def test_evaluation_attention_holds_a_block_of_scores_at_a_time(monkeypatch):
    """Without autograd, CPU attention whose scores would pass ``SCORE_BYTES`` makes them a block of
    (scene, head) pairs, or of one pair's queries, at a time (memory for long scenes): blocks of
    pairs give the same values to the bit, blocks of queries (other product shapes) to float rounding."""
    torch.manual_seed(0)
    attn = attention.MaskedAttention(16, 2, dropout=0.3).eval()
    x = torch.randn(5, 40, 16)
    mask = torch.rand(5, 40) < 0.6
    mask[:, 0] = True
    with torch.no_grad():
        whole = attn(x, x, mask)
    seen = []
    softmax_weights = attention._softmax_weights

    def recorded(q, k, key_mask):
        w = softmax_weights(q, k, key_mask)
        seen.append(w.shape[0] * w.shape[1])  # (scene, head) pairs held at once
        return w

    monkeypatch.setattr(attention, "_softmax_weights", recorded)
    monkeypatch.setattr(attention, "SCORE_BYTES", 3 * 4 * 40 * 40, raising=False)  # three (Q x K) float32 matrices
    with torch.no_grad():
        blocks = attn(x, x, mask)
    assert max(seen) == 3 and sum(seen) == 10, seen
    assert torch.equal(blocks, whole)
    seen.clear()
    monkeypatch.setattr(attention, "SCORE_BYTES", 4 * 16 * 40)  # 16 queries of one (scene, head) pair
    with torch.no_grad():
        queries = attn(x, x, mask)
    assert max(seen) == 1 and len(seen) == 10 * 3, seen  # 40 queries in blocks of 16, 16 and 8
    torch.testing.assert_close(queries, whole, rtol=0, atol=1e-6)


def test_training_attention_with_dropout_holds_a_block_of_weights_at_a_time(monkeypatch):
    """Float32 training with dropout on long scenes: forward and backward make the weights of a block
    of (scene, head) pairs at a time, with the same dropout draw, output and gradients to the bit."""
    torch.manual_seed(0)
    attn = attention.MaskedAttention(16, 2, dropout=0.3).train()
    x, mask, pull = torch.randn(5, 40, 16), torch.rand(5, 40) < 0.6, torch.randn(5, 40, 16)
    mask[:, 0] = True

    def step():
        torch.manual_seed(1)
        x_ = x.clone().requires_grad_()
        out = attn(x_, x_, mask)
        (out * pull).sum().backward()
        grads = [x_.grad, *(p.grad.clone() for p in attn.parameters())]
        attn.zero_grad()
        return out.detach(), grads

    whole, whole_grads = step()
    seen = []
    softmax_weights = attention._softmax_weights

    def recorded(q, k, key_mask):
        w = softmax_weights(q, k, key_mask)
        seen.append(w.shape[0] * w.shape[1])
        return w

    monkeypatch.setattr(attention, "_softmax_weights", recorded)
    monkeypatch.setattr(attention, "SCORE_BYTES", 3 * 4 * 40 * 40, raising=False)
    blocks, block_grads = step()
    assert max(seen) == 3 and sum(seen) == 2 * 10, seen  # forward, then backward's recomputation
    assert torch.equal(blocks, whole)
    assert all(torch.equal(a, b) for a, b in zip(block_grads, whole_grads))


@pytest.mark.parametrize("model", ["ramer", "mult"])
def test_long_scenes_score_and_train_alike_in_blocks(monkeypatch, model):
    """A whole model on long scenes: evaluation (to float rounding), and a training step's loss and
    gradients (to the bit), with attention weights made in blocks equal those of one pass."""
    store = random_store(n=6, persons=(3, 5), segments=(20, 30), seed=3)
    m = built(store, model)[1]
    batch = store.collate(np.arange(6))
    state = copy.deepcopy(m.state_dict())  # RAMer's queue and prototypes move at each training forward

    def run():
        m.load_state_dict(state)
        m.eval()
        with torch.no_grad():
            probs = m(batch).probs
        m.train()
        torch.manual_seed(1)
        loss = m.loss(m(batch), batch).total
        loss.backward()
        grads = [p.grad.clone() for p in m.parameters() if p.grad is not None]
        m.zero_grad()
        return probs, loss.detach(), grads

    whole = run()
    monkeypatch.setattr(attention, "SCORE_BYTES", 4 * 64 * 64, raising=False)
    blocks = run()
    torch.testing.assert_close(blocks[0], whole[0], rtol=0, atol=1e-6)  # evaluation: blocks of queries here
    assert torch.equal(blocks[1], whole[1])  # training makes blocks of whole (scene, head) pairs: to the bit
    assert len(blocks[2]) == len(whole[2]) and all(torch.equal(a, b) for a, b in zip(blocks[2], whole[2]))


def test_a_split_of_scenes_longer_than_the_segment_table_is_refused_before_training(tmp_path):
    """A test split of longer scenes than ``model.max_segments`` was found by the test itself, after
    the last epoch, by a model that could never score it."""
    cfg = tiny_cfg("ramer", ["model.max_segments=8", "data.synthetic.segments_max=6"])
    short = generate(cfg.data.synthetic)
    long = generate(cfg.data.synthetic.model_copy(update={"segments_min": 10, "segments_max": 12}))
    bundle = dataclasses.replace(short, splits={**short.splits, "test": long.splits["test"]})
    with pytest.raises(
        RamerError, match=r"a scene of split 'test' has 1[0-2] segments, more than model.max_segments=8"
    ):
        Recipe(cfg, tmp_path / "run", bundle=bundle).run()
    assert not (tmp_path / "run").exists()  # nothing trained, no folder made
    cfg.model.name = "late_fusion"  # no segment table: nothing to refuse
    Recipe(cfg, tmp_path / "lf", bundle=bundle).run()


def test_a_step_or_a_scoring_that_does_not_fit_in_memory_names_the_settings_to_lower(tmp_path, monkeypatch):
    """A 40-line allocator traceback lost the run's epoch; now one line naming the batch's size
    setting (train.batch_size to train, train.eval_batch_size to score)."""
    cfg = tiny_cfg("late_fusion", ["train.batch_size=16", "train.eval_batch_size=20"])
    bundle = generate(cfg.data.synthetic)

    def too_big(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 9883055232 bytes"
        )

    for name, setting in (("training_step", "train.batch_size 16"), ("predict", "train.eval_batch_size 20")):
        with monkeypatch.context() as m:
            m.setattr(recipe_mod, name, too_big)
            with pytest.raises(RamerError) as e:
                Recipe(cfg, tmp_path / name, bundle=bundle).run()
        assert "does not fit in memory (9 GiB asked for)" in str(e.value), name
        assert "scenes at once, up to " in str(e.value) and setting in str(e.value), name


def test_training_says_how_far_an_epoch_is_in_a_log(tmp_path, monkeypatch, capsys):
    """With stderr not a terminal (a log file, CI) the step bar is off: an epoch of minutes said
    nothing until it ended. Now a plain line at most every LOG_EVERY seconds."""
    cfg = tiny_cfg("late_fusion", ["train.epochs=1"])  # 160 scenes in 5 steps of 32
    monkeypatch.setattr(recipe_mod, "LOG_EVERY", 0.0)
    Recipe(cfg, tmp_path / "run", bundle=generate(cfg.data.synthetic), console=Console(stderr=True)).run()
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("epoch 1: step")]
    assert [x.split(" (")[0] for x in lines] == [f"epoch 1: step {k} of 5" for k in (1, 2, 3, 4)]  # not the last


def test_eval_predict_and_view_take_a_batch_size_and_name_it_when_a_batch_does_not_fit(tmp_path, monkeypatch, capsys):
    """They scored at the run's train.eval_batch_size (256), with no way to lower it for long scenes."""
    import ramer.api

    run = tmp_path / "run"
    sets = [x for kv in TINY_SETS for x in ("--set", kv)]
    assert main(["train", "--model", "late_fusion", "--out", str(run), *sets]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    whole = capsys.readouterr().out
    assert main(["eval", str(run), "--json", "--batch-size", "3"]) == 0
    assert capsys.readouterr().out == whole  # the scores do not depend on it
    for n in ("1", "7"):
        assert main(["predict", str(run), "--out", str(tmp_path / f"p{n}.jsonl"), "--batch-size", n]) == 0
    one, seven = ([json.loads(x) for x in (tmp_path / f"p{n}.jsonl").read_text().splitlines()] for n in "17")
    # the same lines but for a probability's last float32 bits (a batch of 1 or of 7 sums in another order)
    assert [{**x, "probs": None} for x in one] == [{**x, "probs": None} for x in seven]
    for a, b in zip(one, seven):
        assert list(a["probs"]) == list(b["probs"])
        np.testing.assert_allclose(list(a["probs"].values()), list(b["probs"].values()), rtol=0, atol=1e-6)
    assert (
        main(
            [
                "view",
                str(run),
                "--preds",
                str(tmp_path / "p1.jsonl"),
                "--out",
                str(tmp_path / "v.html"),
                "--batch-size",
                "2",
            ]
        )
        == 2
    )
    assert "--batch-size: for predictions made now from RUN_DIR" in capsys.readouterr().err

    sizes = []
    real = ramer.api.predict_store
    monkeypatch.setattr(ramer.api, "predict_store", lambda m, d, n, *a, **k: sizes.append(n) or real(m, d, n, *a, **k))
    assert main(["eval", str(run), "--batch-size", "4"]) == main(["eval", str(run)]) == 0
    assert sizes == [4, tiny_cfg().train.eval_batch_size]

    def too_big(self, *args, **kwargs):  # 300 MB: said in MiB (it was "0 GiB asked for")
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 300000000 bytes")

    monkeypatch.setattr(ramer.api.Predictor, "predict", too_big)
    for argv in (
        ["eval", str(run)],
        ["predict", str(run), "--out", str(tmp_path / "p.jsonl")],
        ["view", str(run), "--out", str(tmp_path / "v.html")],
    ):
        capsys.readouterr()
        assert main([*argv, "--batch-size", "5"]) == 2, argv
        err = capsys.readouterr().err
        assert "scoring split 'test' (5 scenes at once) does not fit in memory (286 MiB asked for)" in err
        assert "(--batch-size 5)" in err
