"""Baselines: MulT, ML-GCN, HHMPN, AMP (deep) and BR / CC / LP (scikit-learn)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from ramer.batch import MODALITIES
from ramer.config import build_config
from ramer.models import CLASSICAL, build_model
from ramer.models.amp import asymmetric_loss
from ramer.models.base import DataSpec
from ramer.models.classical import ClassicalModel, pooled_features
from ramer.models.mlgcn import label_adjacency

from conftest import random_store

DEEP = ("mult", "mlgcn", "hhmpn", "amp")


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
    cfg = build_config(overrides=[f"model.name={name}", "model.hidden=32", "model.ffn=48"])
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
    whole = random_store(n=6, with_target=False, seed=3).collate(np.arange(6))
    yield "whole_sample", whole


@pytest.fixture(scope="module")
def store():
    return random_store(n=10, n_labels=5, persons=(1, 4), segments=(2, 5), seed=1)


@pytest.mark.parametrize("name", DEEP)
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


@pytest.mark.parametrize("name", DEEP)
def test_eval_ignores_masked_features(name, store):
    """Garbage (huge values, NaN) under a False presence mask or on padding changes nothing."""
    model = make_model(name, store).eval()
    for pattern, batch in patterns(store):
        with torch.no_grad():
            ref = model(batch).probs
        for fill in (1e4, float("nan")):
            feats = {}
            for m in MODALITIES:
                x = batch.features[m]
                noise = torch.full_like(x, fill) if np.isnan(fill) else torch.randn_like(x) * fill
                feats[m] = torch.where(batch.present[m].unsqueeze(-1), x, noise)
            with torch.no_grad():
                got = model(replace(batch, features=feats)).probs
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-6, msg=f"{pattern} fill={fill}")


@pytest.mark.parametrize("name", DEEP)
def test_eval_is_deterministic_and_batch_independent(name, store):
    model = make_model(name, store).eval()
    with torch.no_grad():
        full = model(store.collate(np.arange(len(store)))).probs
        part = model(store.collate([2, 5])).probs
    torch.testing.assert_close(part, full[[2, 5]], rtol=1e-5, atol=1e-5)


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
    res = model.loss(model(batch), batch)
    assert set(res.terms) == {"cls", "adv"}
    model.eval()
    out = model(batch)
    assert not out.dropped.any()
    assert set(model.loss(out, batch).terms) == {"cls"}


def test_amp_masking_keeps_one_modality():
    from ramer.models.amp import random_modality_mask

    torch.manual_seed(0)
    avail = torch.rand(500, 3) < 0.6
    drop = random_modality_mask(avail, prob=1.0)
    assert not (drop & ~avail).any()
    assert (drop.sum(1) <= 1).all()
    assert ((avail & ~drop).sum(1) >= torch.clamp(avail.sum(1), max=1)).all()
    assert (drop.sum(1) == (avail.sum(1) >= 2).long()).all()


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
    assert X.shape == (len(lstore), 12 + 6 + 8 + 3)
    np.testing.assert_array_equal(pooled_features(lstore, [3, 7], chunk=1), X[[3, 7]])
    b = lstore.collate([5])
    w = (b.present["text"] & b.scope)[0]
    expect = b.features["text"][0][w].double().mean(0).numpy() if w.any() else np.zeros(12)
    np.testing.assert_allclose(X[5, :12], expect, atol=1e-6)


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
