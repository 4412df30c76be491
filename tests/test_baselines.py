"""Baselines: MulT, ML-GCN, HHMPN, AMP (deep) and BR / CC / LP (scikit-learn)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_store
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from ramer.batch import MODALITIES
from ramer.config import ABLATIONS, build_config
from ramer.errors import RamerError
from ramer.models import CLASSICAL, build_model
from ramer.models.amp import asymmetric_loss
from ramer.models.base import DataSpec
from ramer.models.classical import ClassicalModel, ClassicalModule, _OneBatch, feature_size, pooled_features
from ramer.models.contract import with_garbage
from ramer.models.mlgcn import label_adjacency

DEEP = ("mult", "mlgcn", "hhmpn", "amp")
TORCH = ("late_fusion", *DEEP)
HIDDEN = 32


def spec_of(store) -> DataSpec:
    dims = store.dims
    return DataSpec(
        dims={m: dims[m] for m in MODALITIES},
        n_labels=len(store.label_names),
        label_names=store.label_names,
        personality_dim=dims["personality"],
    )


def make_model(name: str, store, seed: int = 0):
    torch.manual_seed(seed)
    cfg = build_config(overrides=[f"model.name={name}", f"model.hidden={HIDDEN}", "model.ffn=48"])
    model = build_model(cfg, spec_of(store))
    if hasattr(model, "prepare"):
        model.prepare(store)
    return model


def patterns(store):
    """Batches with the missing patterns every model must handle."""
    n = len(store)
    base = store.collate(np.arange(n))
    yield "random", base  # non-speakers without text / audio, visual absent ~30%
    pres = dict(base.present)
    pres["visual"] = torch.zeros_like(pres["visual"])
    yield "no_visual", base.with_present(pres)
    pres = dict(base.present)
    pres["text"] = torch.zeros_like(pres["text"])
    pres["audio"] = torch.zeros_like(pres["audio"])
    yield "nobody_speaking", base.with_present(pres)
    pres = {m: torch.zeros_like(base.present[m]) for m in MODALITIES}
    pres["text"] = base.present["text"]
    yield "text_only", base.with_present(pres)
    pres = {m: base.present[m].clone() for m in MODALITIES}
    for m in MODALITIES:  # first scene: nothing at all in its scope
        pres[m][0] &= ~base.scope[0]
    yield "empty_scope", base.with_present(pres)
    at_target = torch.arange(base.valid.shape[1]).unsqueeze(0) == base.target.unsqueeze(1)  # (B, N)
    yield "target_absent", base.with_present({m: base.present[m] & ~at_target for m in MODALITIES})
    whole = random_store(n=6, with_target=False, seed=3).collate(np.arange(6))
    yield "whole_sample", whole


@pytest.fixture(scope="module")
def store():
    return random_store(n=10, n_labels=5, persons=(1, 4), segments=(2, 5), seed=1)


@pytest.mark.parametrize("name", TORCH)
def test_forward_backward_all_patterns(name, store):
    model = make_model(name, store)
    model.train()
    for pattern, batch in patterns(store):
        out = model(batch)
        assert out.probs.shape == (batch.size, len(store.label_names)), pattern
        assert torch.isfinite(out.probs).all() and ((out.probs >= 0) & (out.probs <= 1)).all(), pattern
        res = model.loss(out, batch)
        assert res.total.ndim == 0 and torch.isfinite(res.total), pattern
        assert all(torch.isfinite(v) for v in res.terms.values()), pattern
        model.zero_grad()
        res.total.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads, pattern
        assert all(torch.isfinite(g).all() for g in grads), pattern
    model.eval()
    for pattern, batch in patterns(store):
        with torch.no_grad():
            out = model(batch)
            res = model.loss(out, batch)
        assert torch.isfinite(out.probs).all() and torch.isfinite(res.total), pattern


@pytest.mark.parametrize("name", TORCH)
def test_every_parameter_is_trained(name, store):
    """Over the missing patterns, every parameter gets a gradient somewhere (none is dead)."""
    model = make_model(name, store).train()
    trained = set()
    for _, batch in patterns(store):
        model.zero_grad()
        model.loss(model(batch), batch).total.backward()
        trained |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
    assert trained == {n for n, _ in model.named_parameters()}


DECLARED = [*((name, None) for name in (*TORCH, "ramer", "ramer-authors")), *(("ramer", a) for a in ABLATIONS)]


@pytest.mark.parametrize("name, ablation", DECLARED, ids=[f"{n}-{a}" if a else n for n, a in DECLARED])
def test_uses_every_parameter_holds_at_every_step(name, ablation):
    """A model that says ``uses_every_parameter`` gives every parameter a gradient (zero is one) at
    every step: ``--nproc`` then builds DDP without its search for unused parameters, and a
    parameter left out of one step's graph would stop the run there. Every missing pattern, with
    and without personality, both tasks."""
    overrides = [f"model.name={name}", f"model.hidden={HIDDEN}", "model.ffn=48"]
    overrides += [f"model.ablations=[{ablation}]"] if ablation else []
    cfg = build_config(overrides=overrides)
    left_out = {}
    for personality_dim in (7, None):
        store = random_store(n=10, n_labels=5, persons=(1, 4), segments=(2, 5), seed=1, personality_dim=personality_dim)
        for task in ("multi_label", "single_label"):
            torch.manual_seed(0)
            model = build_model(cfg, replace(spec_of(store), task=task)).train()
            assert model.uses_every_parameter
            if hasattr(model, "prepare"):
                model.prepare(store)
            for pattern, batch in patterns(store):
                model.zero_grad(set_to_none=True)
                model.loss(model(batch), batch).total.backward()
                none = [n for n, p in model.named_parameters() if p.grad is None]
                if none:
                    left_out[(personality_dim, task, pattern)] = none
    assert left_out == {}


def test_the_meta_model_is_the_model_without_its_values():
    """``meta_model`` (which checks a model file against its config) skips the initialisers and the
    products of random draws on meta tensors (``SkipInit``): each model and preset has the names,
    shapes and types of the model ``build_model`` makes, and the build never imports PyTorch's
    compiler (1 to 2 s in a fresh process; without ``SkipInit`` every model imported it)."""
    import subprocess
    import sys

    script = """
import sys, torch
from ramer.config import build_config
from ramer.models import build_model, meta_model
from ramer.models.base import DataSpec
spec = DataSpec(dims={"text": 12, "audio": 6, "visual": 5}, n_labels=4, label_names=tuple("abcd"), personality_dim=5)
for name, ablation in %r:
    cfg = build_config(overrides=[f"model.name={name}"] + ([f"model.ablations=[{ablation}]"] if ablation else []))
    meta = {k: (v.shape, v.dtype, v.device.type) for k, v in meta_model(cfg, spec).state_dict().items()}
    real = {k: (v.shape, v.dtype, "meta") for k, v in build_model(cfg, spec).state_dict().items()}
    assert meta == real, name
    assert "torch._dynamo" not in sys.modules, name
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script % DECLARED], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]


def test_skip_init_computes_what_a_builder_puts_off_the_meta_device():
    """Within ``SkipInit`` on the meta device a product of meta tensors is an empty one of its shape,
    but one of tensors a builder made on the CPU on purpose is computed (a plugin that read a number
    from it failed: 'Tensor.item() cannot be called on meta tensors')."""
    from ramer.models import SkipInit

    with torch.random.fork_rng(devices=[]), torch.device("meta"), SkipInit():
        on_cpu = torch.ones(3, device="cpu") * 2
        from_numpy = torch.from_numpy(np.arange(4.0)) * 2
        meta = torch.ones(3) * 2
        drawn = torch.randn(2, 5, device="cpu")
    assert float(on_cpu.sum()) == 6.0 and from_numpy.device.type == "cpu" and drawn.device.type == "cpu"
    assert meta.is_meta and meta.shape == (3,)


@pytest.mark.parametrize("name", ["mlgcn", "hhmpn", "ramer", "ramer-authors"])
def test_more_segments_than_the_position_table_is_a_clear_error(name, store):
    """The models with RAMer's encoders (a learned table of ``model.max_segments`` segment positions)
    stop with a RamerError that names the key, not the table lookup's IndexError."""
    cfg = build_config(
        overrides=[f"model.name={name}", f"model.hidden={HIDDEN}", "model.ffn=48", "model.max_segments=2"]
    )
    model = build_model(cfg, spec_of(store))
    if hasattr(model, "prepare"):
        model.prepare(store)
    batch = store.collate(np.arange(len(store)))
    assert batch.grid[1] > 2
    with pytest.raises(RamerError, match=rf"a batch has {batch.grid[1]} segments, more than model.max_segments=2"):
        model(batch)


@pytest.mark.parametrize("name", TORCH)
def test_eval_ignores_masked_features(name, store):
    """Garbage (huge values, NaN) under a False presence mask or on padding, the target token
    included, changes nothing: outputs are bit-identical."""
    model = make_model(name, store).eval()
    for pattern, batch in patterns(store):
        with torch.no_grad():
            ref = model(batch).probs
        for fill in (1e4, float("nan")):
            with torch.no_grad():
                got = model(with_garbage(batch, fill)).probs
            assert torch.equal(got, ref), f"{pattern} fill={fill}"


def test_pooled_features_ignore_masked_features(store):
    for pattern, batch in patterns(store):
        ref = pooled_features(_OneBatch(batch, store.dims), chunk=batch.size)
        for fill in (1e4, float("nan")):
            got = pooled_features(_OneBatch(with_garbage(batch, fill), store.dims), chunk=batch.size)
            np.testing.assert_array_equal(got, ref, err_msg=f"{pattern} fill={fill}")


@pytest.mark.parametrize("name", TORCH)
def test_eval_is_deterministic_and_batch_independent(name, store):
    model = make_model(name, store).eval()
    with torch.no_grad():
        full = model(store.collate(np.arange(len(store)))).probs
        part = model(store.collate([2, 5])).probs
    torch.testing.assert_close(part, full[[2, 5]], rtol=1e-5, atol=1e-5)


def build_with(name: str, store, *sets: str):
    torch.manual_seed(0)
    cfg = build_config(overrides=[f"model.name={name}", f"model.hidden={HIDDEN}", "model.ffn=48", *sets])
    model = build_model(cfg, spec_of(store))
    if hasattr(model, "prepare"):
        model.prepare(store)
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("deeper", MODALITIES)
@pytest.mark.parametrize("name", TORCH)
def test_depth_follows_model_layers(name, deeper, store):
    """Layers 1 everywhere against 3 for one modality: more parameters (MulT and AMP's joint encoder
    read the largest entry, the others each modality's own), and the deeper model trains and
    predicts."""
    one = [f"model.layers.{m}=1" for m in MODALITIES]
    shallow = build_with(name, store, *one)
    deep = build_with(name, store, *one, f"model.layers.{deeper}=3")
    assert n_params(deep) > n_params(shallow)
    batch = store.collate(np.arange(len(store)))
    deep.train()
    loss = deep.loss(deep(batch), batch).total
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in deep.parameters() if p.grad is not None)
    deep.eval()
    assert torch.isfinite(probs_of(deep, batch)).all()


@pytest.mark.parametrize("name", TORCH)
def test_each_modality_reads_its_own_depth(name, store):
    """Deepening audio under a deeper text: every model but MulT grows (its encoders read each
    modality's entry); MulT, whose one depth is the largest entry, stays the same size."""
    base = ["model.layers.text=3", "model.layers.audio=1", "model.layers.visual=1"]
    shallow, deep = build_with(name, store, *base), build_with(name, store, *base, "model.layers.audio=3")
    if name == "mult":
        assert n_params(deep) == n_params(shallow)
    else:
        assert n_params(deep) > n_params(shallow)


def test_mult_uses_every_layer_and_its_convolutions(store):
    """MulT at layers 3/1/1 has depth D = 3 in all nine stacks; perturbing the last block of any of
    them, or the off-centre taps of any modality's temporal convolution, changes every output."""
    model = build_with("mult", store, "model.layers.text=3", "model.layers.audio=1", "model.layers.visual=1").eval()
    batch = store.collate(np.arange(len(store)))
    ref = probs_of(model, batch)
    stacks = [f"cross.{k}" for k in model.cross] + [f"self_attn.{k}" for k in model.self_attn]
    assert len(stacks) == 9 and all(len(model.get_submodule(name).blocks) == 3 for name in stacks)
    for name in stacks:
        other = copy.deepcopy(model)
        last = other.get_submodule(name).blocks[-1]
        with torch.no_grad():
            for p in last.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        assert differ(probs_of(other, batch), ref), name
    for m in MODALITIES:
        other = copy.deepcopy(model)
        weight = other.convs[m].conv.weight  # (H, H, kernel)
        assert weight.shape[-1] == 3
        with torch.no_grad():
            weight[..., [0, 2]] += torch.randn_like(weight[..., [0, 2]]) * 0.5
        assert differ(probs_of(other, batch), ref), m


def test_mult_kernels_are_configurable(store):
    model = build_with("mult", store, "model.mult_kernels.audio=5", "model.mult_kernels.text=1")
    assert [model.convs[m].conv.kernel_size[0] for m in MODALITIES] == [1, 5, 3]
    with pytest.raises(RamerError, match="kernel 4 is even"):
        build_config(overrides=["model.mult_kernels.visual=4"])


def test_self_attention_stack_on_marked_queries_equals_the_full_stack():
    """Computing only the marked tokens (gathered to the front) gives the full stack's values there
    and leaves every other token as it was."""
    from ramer.models.blocks import SelfAttentionStack

    torch.manual_seed(0)
    stack = SelfAttentionStack(2, 16, 2, 24, 0.0).eval()
    x = torch.randn(5, 9, 16)
    keys = torch.rand(5, 9) < 0.4
    queries = keys | (torch.rand(5, 9) < 0.2)
    queries[0] = False  # a row with no query at all
    with torch.no_grad():
        full, part = stack(x, keys), stack(x, keys, queries)
    torch.testing.assert_close(part[queries], full[queries], rtol=1e-5, atol=1e-6)
    assert torch.equal(part[~queries], x[~queries])


def test_mlgcn_adjacency_hand_computed():
    Y = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    # counts N = (3, 3, 1, 0); P(1|0) = 2/3, P(2|0) = 1/3, P(0|1) = 2/3, P(2|1) = 1/3, P(0|2) = P(1|2) = 1
    # binarised at 0.4, re-weighted with p = 0.2: every row with a neighbour sums to 1, so D = I
    # except label 3 (never seen): only its diagonal 0.8, normalised to 1.
    expected = np.array(
        [
            [0.8, 0.2, 0.0, 0.0],
            [0.2, 0.8, 0.0, 0.0],
            [0.1, 0.1, 0.8, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(label_adjacency(Y, tau=0.4, p=0.2), expected, atol=1e-12)


def test_mlgcn_adjacency_degree_normalisation():
    Y = np.array([[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=np.uint8)
    # P(1|0) = P(2|0) = 1/4 < 0.4; P(0|1) = P(2|1) = P(0|2) = P(1|2) = 1
    A = np.array([[0.8, 0.0, 0.0], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    d = A.sum(1) ** -0.5
    np.testing.assert_allclose(label_adjacency(Y), d[:, None] * A * d[None, :], atol=1e-12)


def test_mlgcn_prepare_fills_saved_buffer(store):
    model = make_model("mlgcn", store)
    expected = torch.from_numpy(label_adjacency(store.labels)).float()
    torch.testing.assert_close(model.adjacency, expected)
    assert "adjacency" in model.state_dict()


def test_asymmetric_loss_reduces_to_bce():
    torch.manual_seed(0)
    logits = torch.randn(7, 5) * 3
    y = (torch.rand(7, 5) < 0.4).float()
    bce = F.binary_cross_entropy_with_logits(logits, y)
    torch.testing.assert_close(asymmetric_loss(logits, y, gamma_neg=0, gamma_pos=0, clip=0), bce)
    # the default (gamma- = 4, clip 0.05) down-weights negatives: never above BCE
    assert asymmetric_loss(logits, y) <= bce


def test_amp_training_extras_only_in_train_mode(store):
    model = make_model("amp", store)
    batch = store.collate(np.arange(len(store)))
    model.train()
    out = model(batch)
    assert out.mask.shape == (batch.size, len(MODALITIES), batch.valid.shape[1]) and out.mask.any()
    assert not torch.equal(out.masked_logits, out.logits)
    assert set(model.loss(out, batch).terms) == {"cls", "adv", "masked"}
    model.eval()
    out = model(batch)
    assert not out.mask.any() and torch.equal(out.masked_logits, out.logits)
    assert set(model.loss(out, batch).terms) == {"cls"}


def amp_model(store, **overrides):
    """AMP without dropout (two forwards in one state are the same function), masking on."""
    torch.manual_seed(0)
    sets = [f"model.{k}={v}" for k, v in overrides.items()]
    cfg = build_config(overrides=["model.name=amp", f"model.hidden={HIDDEN}", "model.ffn=48", "model.dropout=0", *sets])
    return build_model(cfg, spec_of(store)).train()


def masker_and_rest_grads(model, batch, grl_lambda: float):
    model.grl_lambda = grl_lambda
    model.zero_grad()
    model.loss(model(batch), batch).total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    masker = {n: g for n, g in grads.items() if n.startswith("masker.")}
    return masker, {n: g for n, g in grads.items() if not n.startswith("masker.")}


def test_amp_masker_gets_the_reversed_gradient(store):
    """In one model state, the masker's gradient of the total loss is exactly minus its gradient
    without the reversal (GRL coefficient -1 passes the gradient unchanged), and nothing else
    changes: the masker reads the encoders detached, so the reversal reaches the masker alone."""
    model = amp_model(store)
    batch = store.collate(np.arange(len(store)))
    rev, rest_rev = masker_and_rest_grads(model, batch, 1.0)
    plain, rest_plain = masker_and_rest_grads(model, batch, -1.0)
    assert set(rev) == {f"masker.{m}.{w}" for m in MODALITIES for w in ("weight", "bias")}
    for name in rev:
        assert plain[name].abs().max() > 0, name
        torch.testing.assert_close(rev[name], -plain[name], rtol=1e-5, atol=1e-8)
    assert rest_rev.keys() == rest_plain.keys()
    for name in rest_rev:
        torch.testing.assert_close(rest_rev[name], rest_plain[name], rtol=1e-5, atol=1e-8)


def masked_loss_change(model, batch, step: float = 0.5) -> float:
    """How much the masked pass's classification loss moves when the masker alone takes one
    gradient step (length ``step``) on the total loss, as the optimiser would."""
    masked_loss = lambda: model.classification_loss(model(batch).masked_logits, batch.labels).item()  # noqa: E731
    before = masked_loss()
    model.zero_grad()
    model.loss(model(batch), batch).total.backward()
    params = [p for m in MODALITIES for p in model.masker[m].parameters()]
    norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
    with torch.no_grad():
        for p in params:
            p.sub_(step * p.grad / norm)
    return masked_loss() - before


def test_amp_masker_step_raises_the_masked_loss(store):
    """A descent step on the total loss makes the masker hide more of what the classifier needs:
    the masked loss rises (without the reversal the same step lowers it)."""
    batch = store.collate(np.arange(len(store)))
    model = amp_model(store)
    assert masked_loss_change(model, batch) > 5e-4
    model = amp_model(store)
    model.grl_lambda = -1.0  # no reversal: the masker would help the classifier
    assert masked_loss_change(model, batch) < -5e-4


def test_amp_mask_cannot_hide_every_token():
    """Whatever the masker scores, a sample's present tokens of a modality keep at least
    (1 - ratio) of their mass visible; absent tokens are never masked."""
    from ramer.models.amp import budget_mask

    g = torch.Generator().manual_seed(0)
    present = torch.rand(200, 12, generator=g) < 0.3
    present[0] = False
    present[1, 1:] = False  # a single present token
    n = present.sum(1).float()
    for scores in (torch.full((200, 12), 50.0), torch.randn(200, 12, generator=g) * 20, torch.zeros(200, 12)):
        mask = budget_mask(scores, present, 0.48)
        assert ((mask >= 0) & (mask <= 1)).all() and not mask[~present].any()
        assert (mask.sum(1) <= 0.48 * n + 1e-5).all()
        assert ((1 - mask) * present).sum(1).ge(0.52 * n - 1e-5).all()
    assert budget_mask(torch.full((1, 3), 50.0), torch.tensor([[True, False, False]]), 0.48)[0, 0] <= 0.48


def test_amp_model_masks_within_the_budget(store):
    """The model's masks: within the budget per sample and modality, even against a masker that
    wants to hide everything."""
    model = amp_model(store)
    with torch.no_grad():
        for m in MODALITIES:
            model.masker[m].bias.fill_(50.0)
    batch = store.collate(np.arange(len(store)))
    out = model(batch)
    for k, m in enumerate(MODALITIES):
        n = batch.present[m].sum(1).float()  # (B,)
        assert (out.mask[:, k].sum(1) <= 0.48 * n + 1e-5).all(), m
        assert not out.mask[:, k][~batch.present[m]].any(), m
    no_mask = amp_model(store, amp_mask_ratio=0.0)
    out = no_mask(batch)
    assert not out.mask.any() and set(no_mask.loss(out, batch).terms) == {"cls", "adv"}


# ---------------------------------------------------------------------- classical


def learnable_store(n: int = 300, seed: int = 0):
    store = random_store(n=n, dims=(12, 6, 8), n_labels=4, persons=(1, 3), segments=(2, 4), seed=seed)
    X = pooled_features(store)
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(X.shape[1], 4))
    z = (X - X.mean(0)) / (X.std(0) + 1e-9) @ W
    store.labels = (z > np.quantile(z, 0.6, axis=0)).astype(np.uint8)
    return store


@pytest.fixture(scope="module")
def lstore():
    return learnable_store()


def test_classical_registry():
    assert CLASSICAL == ("br", "cc", "lp")


def test_pooled_features_match_collate(lstore):
    X = pooled_features(lstore)
    D = 12 + 6 + 8
    assert X.shape == (len(lstore), 2 * D + 6) and feature_size(lstore.dims) == 2 * D + 6
    np.testing.assert_array_equal(pooled_features(lstore, [3, 7], chunk=1), X[[3, 7]])
    spoke = silent = 0
    for i in range(len(lstore)):
        b = lstore.collate([i])
        w = (b.present["text"] & b.scope)[0]
        expect = b.features["text"][0][w].double().mean(0).numpy() if w.any() else np.zeros(12)
        np.testing.assert_allclose(X[i, :12], expect, atol=1e-6)
        t = int(b.target[0])
        here = [bool(b.present[m][0, t]) for m in MODALITIES]
        spoke, silent = spoke + here[0], silent + (not here[0])
        for k, (m, lo) in enumerate(zip(MODALITIES, (D, D + 12, D + 18))):
            d = lstore.dims[m]
            expect = b.features[m][0, t].double().numpy() if here[k] else np.zeros(d)
            np.testing.assert_allclose(X[i, lo : lo + d], expect, atol=1e-6)
        np.testing.assert_array_equal(X[i, 2 * D + 3 :], np.array(here, dtype=np.float64))
    assert spoke and silent  # both kinds of target were seen


def test_pooled_features_without_target_have_no_target_columns():
    whole = random_store(n=6, dims=(12, 6, 8), with_target=False, seed=3)
    X = pooled_features(whole)
    D = 12 + 6 + 8
    assert not X[:, D : 2 * D].any() and not X[:, 2 * D + 3 :].any()
    assert X[:, :D].any() and X[:, 2 * D : 2 * D + 3].all()


def test_classical_refuses_features_of_another_size(lstore):
    model = ClassicalModel("br", lstore.label_names, seed=0).fit(lstore)
    X = pooled_features(lstore)
    with pytest.raises(RamerError, match="fitted on 58 pooled features, the data gives 29"):
        model.predict_features(X[:, :29])


@pytest.mark.parametrize("kind", CLASSICAL)
def test_classical_learns_and_round_trips(kind, lstore):
    model = ClassicalModel(kind, lstore.label_names, seed=0).fit(lstore)
    probs = model.predict_proba(lstore, batch_size=64)
    assert probs.shape == (len(lstore), 4) and np.isfinite(probs).all()
    assert ((probs >= 0) & (probs <= 1 + 1e-12)).all()
    Y = lstore.labels
    f1 = f1_score(Y, probs >= 0.5, average="micro")
    chance = f1_score(Y, np.random.default_rng(0).random(Y.shape) < Y.mean(), average="micro")
    assert f1 > max(0.6, chance + 0.2), (kind, f1, chance)
    arrays = model.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "fiub" for v in arrays.values())
    rebuilt = ClassicalModel.from_arrays(kind, lstore.label_names, arrays)
    np.testing.assert_array_equal(rebuilt.predict_proba(lstore), probs)


def test_br_equals_independent_logistic_regressions(lstore):
    model = ClassicalModel("br", lstore.label_names, seed=0).fit(lstore)
    a = model.to_arrays()
    Xs = (pooled_features(lstore) - a["mean"]) / a["scale"]
    probs = model.predict_proba(lstore)
    for j in range(4):
        lr = LogisticRegression(solver="lbfgs", max_iter=300, random_state=0).fit(Xs, lstore.labels[:, j])
        np.testing.assert_allclose(probs[:, j], lr.predict_proba(Xs)[:, 1], rtol=1e-9, atol=1e-12)


def test_lp_probabilities_sum_label_sets(lstore):
    model = ClassicalModel("lp", lstore.label_names, seed=0).fit(lstore)
    a = model.to_arrays()
    classes, y = np.unique(lstore.labels, axis=0, return_inverse=True)
    np.testing.assert_array_equal(a["classes"], classes)
    Xs = (pooled_features(lstore) - a["mean"]) / a["scale"]
    lr = LogisticRegression(solver="lbfgs", max_iter=300, random_state=0).fit(Xs, y.reshape(-1))
    np.testing.assert_allclose(model.predict_proba(lstore), lr.predict_proba(Xs) @ classes, rtol=1e-9, atol=1e-12)


def test_classical_constant_label():
    store = learnable_store(n=80, seed=2)
    store.labels[:, 1] = 0
    for kind in CLASSICAL:
        probs = ClassicalModel(kind, store.label_names).fit(store).predict_proba(store)
        assert np.isfinite(probs).all() and probs[:, 1].max() < 0.05, kind


# ---------------------------------------------------------------------- the target token

ALL = (*TORCH, *CLASSICAL)


def target_scenes(dims: dict[str, int], at_target: str, n: int = 4, seed: int = 0):
    """``n`` scenes of 2 persons x 4 segments with random features and the target at person 0,
    segment 1; moving it to segment 2 keeps the scope (person 0). ``at_target``: which modalities
    segments 1 and 2 of person 0 have ("all", "visual" as for a silent person in view, "none");
    every other token has all three."""
    S = 4
    base = random_store(n=n, dims=tuple(dims[m] for m in MODALITIES), persons=(2, 2), segments=(S, S), seed=seed)
    b = base.collate(np.arange(n))
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(b.features[m].shape, generator=g) for m in MODALITIES}
    keep = {"all": MODALITIES, "visual": ("visual",), "none": ()}[at_target]
    pair = (b.person == 0) & ((b.segment == 1) | (b.segment == 2))  # (B, N)
    present = {m: b.valid & (~pair | (m in keep)) for m in MODALITIES}
    feats = {m: feats[m] * present[m].unsqueeze(-1) for m in MODALITIES}  # zero where absent, as collated
    return replace(b, features=feats, present=present, target=torch.full((n,), 1), scope=b.valid & (b.person == 0))


def moved(batch, segment: int = 2):
    """The same scenes with the target at ``segment`` of person 0 (same scope)."""
    return replace(batch, target=torch.full_like(batch.target, segment))


@pytest.fixture(scope="module")
def predictors(store, lstore):
    """name -> (model in eval mode, its feature sizes); the classical ones fitted on ``lstore``."""
    out = {}
    for name in TORCH:
        model = make_model(name, store).eval()
        out[name] = (model, store.dims)
    for kind in CLASSICAL:
        fitted = ClassicalModel(kind, lstore.label_names, seed=0).fit(lstore)
        out[kind] = (ClassicalModule(kind, spec_of(lstore), fitted.to_arrays()), lstore.dims)
    return out


def probs_of(model, batch):
    with torch.no_grad():
        return model(batch).probs.double()


def differ(a, b, tol: float = 1e-6) -> bool:
    """Every sample's probabilities differ somewhere by more than ``tol``."""
    return bool(((a - b).abs().amax(1) > tol).all())


@pytest.mark.parametrize("at_target", ["all", "visual"])
@pytest.mark.parametrize("name", ALL)
def test_moving_the_target_within_the_scope_changes_the_output(name, at_target, predictors):
    """Same scope, same features: only which token is asked about differs."""
    model, dims = predictors[name]
    batch = target_scenes(dims, at_target)
    assert differ(probs_of(model, batch), probs_of(model, moved(batch))), name


# MulT, AMP, ML-GCN and HHMPN encode sequence positions (ML-GCN and HHMPN through RAMer's encoders),
# so a swap of two tokens changes their scope means and output with or without a target read-out;
# their read-out is tested by the moving-target test above, the two tests below (MulT, AMP) and
# test_a_sample_without_target_reads_nothing_of_the_target_path
@pytest.mark.parametrize("name", [n for n in ALL if n not in ("mult", "amp", "mlgcn", "hhmpn")])
def test_the_target_tokens_own_features_matter(name, predictors):
    """Swapping the features of the target token and another token of the target person leaves
    every scope mean as it was; the output still changes."""
    model, dims = predictors[name]
    batch = target_scenes(dims, "all")
    a, b = batch.target[0].item(), batch.target[0].item() + 2  # person 0: segments 1 and 3
    feats = {m: batch.features[m].clone() for m in MODALITIES}
    for m in MODALITIES:
        feats[m][:, [a, b]] = batch.features[m][:, [b, a]]
    assert differ(probs_of(model, batch), probs_of(model, replace(batch, features=feats))), name


def zero_marker(model):
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.target_emb.zero_()
    return model


@pytest.mark.parametrize("name", ["mult", "amp"])
def test_a_target_missing_everywhere_is_located_without_the_marker(name, predictors):
    """A silent, unseen target (no modality at its token) is still read: by MulT's target read-out,
    by AMP's target key; the marker is switched off so that it cannot be what tells them apart."""
    model, dims = predictors[name]
    model = zero_marker(model)
    batch = target_scenes(dims, "none")
    assert differ(probs_of(model, batch), probs_of(model, moved(batch))), name


def test_mult_marker_reaches_the_scope_pool(predictors):
    """MulT's scope mean alone (no read-out in it) depends on where the marker sits."""
    model, dims = predictors["mult"]
    batch = target_scenes(dims, "all")
    with torch.no_grad():
        a, b = model(batch).pooled, model(moved(batch)).pooled
    assert ((a - b).abs().flatten(1).amax(1) > 1e-6).all()


def target_only_parameters(model, name: str) -> list:
    """Views of the parameters (or parameter columns) that only a sample with a target reads."""
    H, M = HIDDEN, len(MODALITIES)
    if name == "late_fusion":
        return [model.target_missing, *(model.heads[m].weight[:, H:] for m in MODALITIES)]
    if name == "mult":
        return [model.target_emb, model.head[0].weight[:, M * H :]]
    if name == "mlgcn":
        return [model.fuse[0].weight[:, M * H :]]
    if name in ("hhmpn", "amp"):
        return [model.target_emb]
    pytest.fail(f"add {name}'s target-only parameters to target_only_parameters")


@pytest.mark.parametrize("name", TORCH)
def test_a_sample_without_target_reads_nothing_of_the_target_path(name, store):
    """``target == -1``: the target-only parameters do not change the output (bit-identical);
    with a target they do (where the target token has some modality: HHMPN masks a target node
    whose modality is missing, so a silent, unseen target leaves it as it was)."""
    model = make_model(name, store).eval()
    whole = random_store(n=6, with_target=False, seed=3).collate(np.arange(6))
    targeted = store.collate(np.arange(len(store)))
    seen = torch.stack([targeted.present[m].gather(1, targeted.target[:, None])[:, 0] for m in MODALITIES]).any(0)
    assert seen.any() and not seen.all()
    ref_whole, ref_targeted = probs_of(model, whole), probs_of(model, targeted)
    with torch.no_grad():
        for p in target_only_parameters(model, name):
            p.add_(torch.randn_like(p))
    assert torch.equal(probs_of(model, whole), ref_whole)
    assert differ(probs_of(model, targeted)[seen], ref_targeted[seen])


@pytest.mark.parametrize("name", [*TORCH, "ramer", "ramer-authors"])
def test_every_deep_model_scores_cast_to_bfloat16(name):
    """``--precision bf16`` casts the whole model: whatever a model makes in its forward pass (here
    MulT's and AMP's segment positions) is in the model's type, and the scores stay near fp32's."""
    from ramer.infer import predict, to_inference_precision

    store = random_store(n=8)
    model = make_model(name, store).eval()
    fp32 = predict(model, store, 8, torch.device("cpu")).scores
    bf16 = predict(to_inference_precision(copy.deepcopy(model), "bf16"), store, 8, torch.device("cpu")).scores
    assert np.isfinite(bf16).all() and np.abs(bf16 - fp32).max() < 0.05
