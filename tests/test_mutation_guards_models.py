"""Guards from hand mutation testing (round 4) of the baseline models and the training helpers:
each case fails under a small change of behaviour the rest of the suite did not notice (named in
its docstring)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import random_store
from test_baselines import amp_model, make_model, spec_of

from ramer.batch import MODALITIES
from ramer.models.classical import _OneBatch, pooled_features
from ramer.models.contract import with_garbage
from ramer.models.mlgcn import label_adjacency

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store():
    return random_store(n=6, n_labels=4, persons=(2, 3), segments=(2, 4), seed=11)


@pytest.mark.parametrize("name", ["late_fusion", "mult", "amp"])
def test_training_reads_no_feature_under_a_false_presence_bit(name, store):
    """NaN under every False presence bit leaves a training step's gradients finite: the token
    encoders never read an absent token's stored features, in backward either. (The
    ``torch.where`` before the per-token MLP removed in blocks.TokenEncoder / late_fusion: the
    outputs stay the same, the weight gradients turn NaN.)"""
    model = make_model(name, store).train()
    batch = with_garbage(store.collate(np.arange(len(store))), float("nan"))
    torch.manual_seed(0)
    model.loss(model(batch), batch).total.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad


# ---------------------------------------------------------------------- optimiser, weight average


def test_weight_decay_falls_on_weight_matrices_only():
    """AdamW's decay group holds the weight matrices; biases, LayerNorm weights and other 1-d
    parameters (learned vectors such as a missing-token embedding) are in the group of decay 0.
    (``p.ndim <= 1`` dropped from optim.param_groups, or the second group given the decay.)"""
    from ramer.train.optim import param_groups

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model.register_parameter("missing", torch.nn.Parameter(torch.zeros(4)))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 5  # two biases, the LayerNorm's weight and bias, the vector


def test_warm_up_steps_are_rounded_to_the_nearest():
    """``warmup`` of the steps, rounded to the nearest step: 0.29 of 10 steps is 3 warm-up steps.
    (round() replaced by int() in optim.warmup_linear.)"""
    from ramer.train.optim import warmup_linear

    factor = warmup_linear(10, 0.29)
    assert [factor(s) for s in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])


def test_a_restored_weight_average_keeps_its_place_in_the_decay_warm_up():
    """A weight average loaded from a state takes that state's step count, so its decay goes on
    from where it was (not from the warm-up's start). (``self.steps = state["steps"]`` removed
    from ema.WeightAverage.load_state_dict.)"""
    from ramer.train.ema import WeightAverage

    model = torch.nn.Linear(2, 1)
    ema = WeightAverage(model, decay=0.9)
    for _ in range(30):
        ema.update()
    again = WeightAverage(torch.nn.Linear(2, 1), decay=0.9)
    again.load_state_dict(ema.state_dict(), "state.pt", steps=30)
    assert again.steps == 30 and again.rate() == ema.rate() == pytest.approx(31 / 40)  # still warming up


# ---------------------------------------------------------------------- blocks


def test_sinusoid_is_the_sines_then_the_cosines_of_the_positions():
    """``sinusoid(pos, dim)`` = ``[sin(pos f_i) ; cos(pos f_i)]``, ``f_i = 10000^(-i / (dim/2))``.
    (The cosines replaced by sines in blocks.sinusoid: position 0 would read as all zeros.)"""
    from ramer.models.blocks import sinusoid

    pos = torch.tensor([0, 3])
    f = 10000.0 ** (-torch.arange(4) / 4)
    expected = torch.cat([torch.sin(pos[:, None] * f), torch.cos(pos[:, None] * f)], -1)
    torch.testing.assert_close(sinusoid(pos, 8), expected)


# ---------------------------------------------------------------------- the target scope


def shallow_model(name: str, store):
    """``name`` with token encoders of no layer, so a token is read only where the model pools or
    attends to it (not through the encoders' attention)."""
    from ramer.config import build_config
    from ramer.models import build_model

    torch.manual_seed(0)
    sets = [f"model.name={name}", "model.hidden=16", "model.ffn=16", "model.heads=2"]
    cfg = build_config(overrides=[*sets, *(f"model.layers.{m}=0" for m in MODALITIES)])
    model = build_model(cfg, spec_of(store))
    if hasattr(model, "prepare"):
        model.prepare(store)
    return model.eval()


def outside_scope_changed(batch):
    """``batch`` with new features on every present token outside its target scope."""
    feats = {}
    for m in MODALITIES:
        outside = (batch.present[m] & batch.valid & ~batch.scope).unsqueeze(-1)
        assert outside.any()
        noise = torch.randn(batch.features[m].shape, generator=torch.Generator().manual_seed(5))
        feats[m] = torch.where(outside, noise, batch.features[m])  # not a shift: the input LayerNorm removes one
    return replace(batch, features=feats)


@pytest.mark.parametrize("name", ["late_fusion", "hhmpn", "mlgcn", "amp"])
def test_a_token_outside_the_target_scope_is_not_pooled(name, store):
    """With encoders of no layer, the features of tokens outside the target scope (the other
    persons) change nothing: the scope pools and the emotion decoder's keys are the scope's present
    tokens. (``& batch.scope`` dropped from the pool of late_fusion / hhmpn, or from AMP's
    decoder keys.)"""
    model = shallow_model(name, store)
    batch = store.collate(np.arange(len(store)))
    with torch.no_grad():
        ref, got = model(batch).probs, model(outside_scope_changed(batch)).probs
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_classical_features_pool_the_target_scope_only(store):
    """The classical baselines' scope means read the target scope alone. (``& batch.scope``
    dropped from classical.pooled_features.)"""
    batch = store.collate(np.arange(len(store)))
    ref = pooled_features(_OneBatch(batch, store.dims), chunk=batch.size)
    got = pooled_features(_OneBatch(outside_scope_changed(batch), store.dims), chunk=batch.size)
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------- HHMPN


def test_hhmpn_reads_no_node_of_a_modality_the_sample_lacks(store):
    """A masked modality node is never read: with text absent everywhere, text's embedding (on its
    scope and target nodes) changes nothing; with the target token lacking every modality, the
    target-node embedding changes nothing. (hhmpn: ``modality_emb.repeat(2, 1)`` made
    ``repeat_interleave``, which puts text's embedding on audio's scope node; the target nodes'
    availability read from the target alone, ``tmask.any(1)``.)"""
    model = make_model("hhmpn", store).eval()
    batch = store.collate(np.arange(len(store)))
    no_text = batch.with_present({**batch.present, "text": torch.zeros_like(batch.present["text"])})
    at_target = torch.arange(batch.valid.shape[1]).unsqueeze(0) == batch.target.unsqueeze(1)
    no_target = batch.with_present({m: batch.present[m] & ~at_target for m in MODALITIES})
    for b, param, row in ((no_text, model.modality_emb, 0), (no_target, model.target_emb, ...)):
        with torch.no_grad():
            ref = model(b).probs
            param[row] += torch.randn(param.shape[-1])  # not a constant: LayerNorm removes one
            got = model(b).probs
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- MulT


def test_mult_reads_each_source_in_its_crossmodal_stream_and_pools_the_scope(store):
    """MulT's ``s -> t`` transformer takes ``s``'s present tokens (and its null token) as keys, and
    each target modality's stream is pooled over the target scope. (mult: ``sources[t]`` for
    ``sources[s]``, so a stream reads its own modality; the pool over ``batch.valid``.)"""
    from ramer.models.late_fusion import masked_mean

    model = make_model("mult", store).eval()
    batch = store.collate(np.arange(len(store)))
    seen = {}
    hooks = [
        model.cross["visual_to_text"].register_forward_hook(lambda mod, args, out: seen.update(keys=args[2])),
        model.norm_out.register_forward_hook(lambda mod, args, out: seen.setdefault("streams", []).append(out)),
    ]
    with torch.no_grad():
        out = model(batch)
    for hook in hooks:
        hook.remove()
    assert seen["keys"][:, 0].all()  # the null token
    torch.testing.assert_close(seen["keys"][:, 1:].sum(1), batch.present["visual"].sum(1))
    assert not torch.equal(batch.present["visual"].sum(1), batch.present["text"].sum(1))
    for k, h in enumerate(seen["streams"]):
        torch.testing.assert_close(out.pooled[:, k], masked_mean(h, batch.scope))


@pytest.mark.parametrize("name", ["mult", "amp"])
def test_the_segment_positions_reach_the_output(name, store):
    """The tokens' segment positions (their sinusoidal encoding) are read: the same tokens one
    segment later score otherwise. (mult: the segment replaced by 0 in the position encoding.)"""
    model = make_model(name, store).eval()
    batch = store.collate(np.arange(len(store)))
    with torch.no_grad():
        ref, got = model(batch).probs, model(replace(batch, segment=batch.segment + 1)).probs
    assert (got - ref).abs().max() > 1e-4


# ---------------------------------------------------------------------- late fusion


def test_late_fusion_averages_the_heads_of_the_modalities_in_the_scope(store):
    """The fused logit is the mean of the heads of the modalities present in the scope, the learned
    empty bias where none is. (late_fusion: the mean over all three heads, or the sum of the
    available heads divided by three.)"""
    model = make_model("late_fusion", store).eval()
    batch = store.collate(np.arange(len(store)))
    pres = {m: batch.present[m].clone() for m in MODALITIES}
    pres["visual"][1::2] = False  # odd samples without visual
    for m in MODALITIES:  # the first sample: nothing in its scope
        pres[m][0] &= ~batch.scope[0]
    with torch.no_grad():
        model.empty_bias += torch.randn(model.empty_bias.shape)
        out = model(batch.with_present(pres))
    assert not out.available[0].any() and out.available[1:].any(1).all() and not out.available[1::2, 2].any()
    torch.testing.assert_close(out.logits[0], model.empty_bias.detach())
    for i in range(1, len(store)):
        torch.testing.assert_close(out.logits[i], out.modality_logits[i, out.available[i]].mean(0))


def test_late_fusions_token_block_is_residual():
    """``TokenMLPBlock(x) = x + Dropout(FFN(LN(x)))``: with the FFN's last layer at zero it is the
    identity. (The residual dropped from late_fusion.TokenMLPBlock.)"""
    from ramer.models.late_fusion import TokenMLPBlock

    block = TokenMLPBlock(8, 12, 0.0)
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        moved = block(x)
        block.net[-1].weight.zero_()
        block.net[-1].bias.zero_()
        assert not torch.equal(moved, x) and torch.equal(block(x), x)


# ---------------------------------------------------------------------- AMP


def test_asymmetric_loss_by_hand():
    """The asymmetric loss with its defaults (gamma- 4, gamma+ 0, clip 0.05), entry by entry:
    ``-[y log p + (1-y) p_m^4 log(1 - p_m)]``, ``p_m = max(p - 0.05, 0)``, averaged over the entries.
    (amp.asymmetric_loss: the focusing weight on ``p`` for ``p_m``, the clip left out of the log,
    or a sum over the labels for the mean.)"""
    from ramer.models.amp import asymmetric_loss

    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    p = torch.sigmoid(logits)
    p_m = (p - 0.05).clamp_min(0)
    entries = y * torch.log(p) + (1 - y) * p_m**4 * torch.log(1 - p_m)
    torch.testing.assert_close(asymmetric_loss(logits, y), -entries.mean())
    assert p_m[1, 1] == 0  # a negative below the margin costs nothing


def test_amp_perturbs_each_sample_by_eps_up_its_gradient(store, monkeypatch):
    """FGM: the head is run again on ``z + delta`` with ``delta = eps g / ||g||`` per sample, ``g`` the
    gradient of the clean loss: every sample moves by ``eps`` uphill, and the total weighs the
    terms by ``w_adv`` and ``loss.w_amp_mask``. (amp.loss: ``-eps``, so the step goes downhill;
    one norm over the whole batch; the masked term's weight left out.)"""
    model = amp_model(store, amp_eps=0.7)
    model.w_mask = 0.3
    batch = store.collate(np.arange(len(store)))
    out = model(batch)
    (g,) = torch.autograd.grad(model.classification_loss(out.logits, batch.labels), out.fused, retain_graph=True)
    seen = []
    head = model.head.forward
    monkeypatch.setattr(model.head, "forward", lambda z: seen.append(z.detach()) or head(z))
    result = model.loss(out, batch)
    delta = seen[0] - out.fused.detach()
    torch.testing.assert_close(delta.flatten(1).norm(dim=1), torch.full((batch.size,), 0.7))
    assert ((delta * g).flatten(1).sum(1) > 0).all()
    t = result.terms
    torch.testing.assert_close(result.total.detach(), t["cls"] + model.w_adv * t["adv"] + 0.3 * t["masked"])


def test_amp_masking_moves_a_token_to_the_missing_vector(store, monkeypatch):
    """A fully masked token's encoding is the modality's missing vector: with every token of every
    modality present and masked, the masked pass reads the missing vectors (a new one changes
    it). (amp: ``e + a (missing - e)`` made ``e + a (0 - e)``.)"""
    import ramer.models.amp as amp

    model = amp_model(store)
    batch = store.collate(np.arange(len(store)))
    batch = batch.with_present({m: batch.valid.clone() for m in MODALITIES})
    monkeypatch.setattr(amp, "budget_mask", lambda scores, present, ratio: present.to(scores.dtype))
    with torch.no_grad():
        ref = model(batch).masked_logits
        for m in MODALITIES:
            model.encoders[m].missing += torch.randn(model.encoders[m].missing.shape)
        got = model(batch).masked_logits
    assert (got - ref).abs().max() > 1e-4


def test_amp_unimodal_keys_are_the_present_tokens(store):
    """The uni-modal encoders' keys are the modality's present tokens (the target token is a query
    even where it lacks the modality, never a key). (amp: the keys given as ``seen``.)"""
    model = make_model("amp", store).eval()
    batch = store.collate(np.arange(len(store)))
    keys = {}
    for m in MODALITIES:
        model.unimodal[m].register_forward_hook(lambda mod, args, out, m=m: keys.update({m: args[1]}))
    with torch.no_grad():
        model(batch)
    for m in MODALITIES:
        assert torch.equal(keys[m], batch.present[m]), m


# ---------------------------------------------------------------------- ML-GCN


def test_mlgcn_keeps_an_edge_whose_conditional_probability_is_tau():
    """The graph keeps ``P(j | i) >= tau``: label 1 in 2 of label 0's 5 samples (0.4) is an edge at
    tau 0.4. (``>=`` made ``>`` in mlgcn.label_adjacency.)"""
    Y = np.array([[1, 1], [1, 1], [1, 0], [1, 0], [1, 0]], dtype=np.uint8)
    np.testing.assert_allclose(label_adjacency(Y, tau=0.4, p=0.2), [[0.8, 0.2], [0.2, 0.8]], atol=1e-12)


def test_mlgcn_graph_follows_its_config_and_feeds_both_gcn_layers(store):
    """``prepare`` builds the graph with ``model.mlgcn_tau`` / ``mlgcn_p``, and the classifiers are
    ``A LeakyReLU_0.2(A E W1) W2``. (mlgcn: prepare with the default tau and p; the LeakyReLU
    left out; the second layer without the graph.)"""
    from ramer.config import build_config
    from ramer.models import build_model

    torch.manual_seed(0)
    cfg = build_config(overrides=["model.name=mlgcn", "model.hidden=16", "model.mlgcn_tau=0.6", "model.mlgcn_p=0.3"])
    model = build_model(cfg, spec_of(store))
    labels = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 1, 0, 1], [1, 1, 0, 1]], dtype=np.uint8)
    model.prepare(type("Store", (), {"labels": labels})())
    A = torch.from_numpy(label_adjacency(labels, 0.6, 0.3)).float()
    torch.testing.assert_close(model.adjacency, A)
    assert not torch.allclose(A, torch.from_numpy(label_adjacency(labels)).float())
    with torch.no_grad():
        z = torch.nn.functional.leaky_relu(A @ model.gc1(model.label_emb), 0.2)
        torch.testing.assert_close(model.classifiers(), A @ model.gc2(z))


# ---------------------------------------------------------------------- ramer-authors


def authors_model():
    from test_ramer_authors import make

    return make()


def authors_batch(n: int = 6):
    from test_ramer_authors import batch

    return batch(n)


def test_authors_personality_of_the_target_person_alone_is_read():
    """The personality tokens that join the label attention are the target scope's (the target
    person's) and known ones: another person's values, and NaN for an unknown personality, change
    nothing. (ramer_authors: ``& scope`` dropped from the personality keys; the
    ``torch.where(known, ...)`` dropped, so an unknown personality's NaN reaches the attention.)"""
    model = authors_model().eval()
    b = authors_batch()
    S = b.grid[1]
    person = torch.arange(b.personality.shape[1]).unsqueeze(0)  # (1, P)
    target = (b.target // S).unsqueeze(1)  # (B, 1)
    assert (b.target >= 0).all() and (b.personality_present.sum(1) > 1).any()
    others = (person != target).unsqueeze(-1)
    changed = replace(b, personality=torch.where(others, torch.randn(b.personality.shape), b.personality))
    known = b.personality_present & ~(person == target).roll(1, 0)  # some targets' persons unknown
    unknown = replace(
        b, personality_present=known, personality=torch.where(known.unsqueeze(-1), b.personality, float("nan"))
    )
    hidden = replace(b, personality_present=known)
    with torch.no_grad():
        ref = model(b).probs
        torch.testing.assert_close(model(changed).probs, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(unknown).probs, model(hidden).probs, rtol=0, atol=1e-6)


def test_authors_loss_terms_by_hand():
    """The authors' sums: each MSE and each adversary term is ``M`` times the mean over the
    modalities; ``diff`` sums ``||s_i s_j^T||^2`` over the private pairs and ``||c_i s_i^T||^2`` per
    modality; the common classifier reads the sum of the common features; a sample with no
    modality in its scope is left out of ``lsr_clf`` (its labels change nothing there); ``aug_clf``
    scores the max over the modalities.
    (ramer_authors: a factor ``M`` left out; ``(c_i, c_i)`` for ``(c_i, s_i)``; the common
    features averaged; the row mask of ``lsr_clf`` dropped; ``aug_clf`` on the mean over the
    modalities for the max.)"""
    from ramer.models import losses
    from ramer.models.ramer_authors import product_norm

    model = authors_model().train()
    model.common_classifier[1].p = 0.0  # its dropout: the logits are a function of the features
    b = authors_batch()
    pres = {m: b.present[m].clone() for m in MODALITIES}
    for m in MODALITIES:  # the first sample: nothing in its scope
        pres[m][0] &= ~b.scope[0]
    b = b.with_present(pres)
    out = model(b)
    assert not out.available[0].any() and out.available[1:].any(1).all()
    t = model.loss(out, b).terms
    M, avail, every = len(MODALITIES), out.available, torch.ones_like(out.available)
    U = out.label_features
    for name, pred in (("recon_mse", out.recon), ("aug_mse", out.aug), ("beta_mse", out.beta)):
        torch.testing.assert_close(t[name], M * losses.feature_mse(pred, U, avail).detach())
    for name, disc in (("adv_private", out.disc_private), ("adv_common", out.disc_common)):
        torch.testing.assert_close(t[name], M * losses.modality_ce(disc, every).detach())
    s, c = out.private, out.common
    diff = sum(product_norm(s[:, i], s[:, j]) for i in range(M) for j in range(i + 1, M))
    diff = diff + sum(product_norm(c[:, i], s[:, i]) for i in range(M))
    torch.testing.assert_close(t["diff"], diff.detach())
    torch.testing.assert_close(out.cml_logits, model.common_classifier(out.common.sum(1)[:, 0]))
    torch.testing.assert_close(t["aug_clf"], losses.classification(out.aug_logits.amax(1), b.labels).detach())
    flipped = b.labels.clone()
    flipped[0] = 1 - flipped[0]
    assert model.loss(out, replace(b, labels=flipped)).terms["lsr_clf"] == t["lsr_clf"]


def test_authors_wiring_of_the_scope_the_prototypes_and_the_contrastive_items(monkeypatch):
    """The label attention's keys are the present tokens of the target scope; the prototype pick
    is hard in evaluation and the mix in training; a modality absent from every scope leaves its
    prototypes as they were; the contrastive items are the codes of U for the available
    modalities, then of aug and beta for every modality. (ramer_authors: ``& scope`` dropped from
    the keys; ``hard=self.training``; the prototypes or the U items taken for every modality; aug's
    codes twice.)"""
    import torch.nn.functional as F

    model = authors_model()
    b = authors_batch()
    b = b.with_present({**b.present, "text": torch.zeros_like(b.present["text"])})
    seen = {}
    model.labelwise.register_forward_hook(lambda mod, args, out: seen.update(keys=args[1]))
    forward = model.reconstruction.forward
    monkeypatch.setattr(
        model.reconstruction, "forward", lambda *a, hard, **k: seen.update(hard=hard) or forward(*a, hard=hard, **k)
    )
    with torch.no_grad():
        model.eval()(b)
        assert seen["hard"] is True
        present = torch.stack([b.present[m] & b.valid for m in MODALITIES], -1)
        N = present.shape[1]  # the personality tokens follow
        torch.testing.assert_close(seen["keys"][:, :N], present & (b.scope & b.valid).unsqueeze(-1))
        before = model.reconstruction.prototypes.clone()
        out = model.train()(b)
        assert seen["hard"] is False
    after = model.reconstruction.prototypes
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1:], before[1:])
    B, M, C = out.beta_logits.shape
    assert not out.available[:, 0].any()
    assert out.items.shape[0] == C * (int(out.available.sum()) + 2 * B * M)
    beta_items = F.normalize(model.autoencoder.encode(out.beta), dim=-1).flatten(0, 2)
    torch.testing.assert_close(out.items[-B * M * C :], beta_items)


def test_authors_common_features_meet_the_discriminator_through_a_gradient_reversal():
    """The modality discriminator's loss on the common features reaches the common extractor
    reversed (it learns to fool the discriminator), the private one unreversed. (ramer_authors:
    the ``grad_reverse`` dropped from the common branch, or put on the private one.)"""
    from ramer.models import losses

    model = authors_model().train()
    model.discriminator[1].p = 0.0  # its dropout: both passes are the same function
    out = model(authors_batch())
    every = torch.ones_like(out.available)
    weight = model.common[0].weight
    (through,) = torch.autograd.grad(losses.modality_ce(out.disc_common, every), weight, retain_graph=True)
    (plain,) = torch.autograd.grad(losses.modality_ce(model.discriminator(out.common), every), weight)
    torch.testing.assert_close(through, -plain)
    weight = model.private[0][0].weight
    (through,) = torch.autograd.grad(losses.modality_ce(out.disc_private, every), weight, retain_graph=True)
    (plain,) = torch.autograd.grad(losses.modality_ce(model.discriminator(out.private), every), weight)
    torch.testing.assert_close(through, plain)


# ---------------------------------------------------------------------- classical baselines


def test_classifier_chain_predicts_from_the_thresholded_earlier_labels():
    """``cc`` at prediction: label ``j`` reads labels ``0..j-1`` as 0/1 decisions (probability >=
    0.5), not as probabilities. A hand-made chain: label 1 = 10 [label 0] - 5, label 0 at
    probability 0.6 (decided 1) gives label 1 sigmoid(5). (classical.predict_features: the soft
    probability chained, or the chain term left out.)"""
    from ramer.models.classical import ClassicalModel

    arrays = {
        "mean": np.zeros(1),
        "scale": np.ones(1),
        "coef": np.array([[1.0, 0.0], [0.0, 10.0]]),  # (C, D + C - 1)
        "intercept": np.array([0.0, -5.0]),
    }
    model = ClassicalModel.from_arrays("cc", ("a", "b"), arrays)
    x0 = np.log(0.6 / 0.4)
    probs = model.predict_features(np.array([[x0], [-x0]]))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(probs, [[0.6, sig(5.0)], [0.4, sig(-5.0)]], rtol=1e-12)


def test_label_powerset_of_two_sets_reads_the_decision_as_the_second_sets():
    """``lp`` with two label sets in training: scikit-learn's one decision function gives the
    probability of the second set (in ``classes`` order). (classical.predict_features: the two
    sets' probabilities swapped.)"""
    from ramer.models.classical import ClassicalModel

    arrays = {
        "mean": np.zeros(1),
        "scale": np.ones(1),
        "coef": np.array([[1.0]]),
        "intercept": np.array([0.0]),
        "classes": np.array([[1.0, 0.0], [0.0, 1.0]]),
    }
    probs = ClassicalModel.from_arrays("lp", ("a", "b"), arrays).predict_features(np.array([[np.log(4.0)]]))
    np.testing.assert_allclose(probs, [[0.2, 0.8]], rtol=1e-12)


# ---------------------------------------------------------------------- search spaces, notes, classical recipe


def test_a_log_range_is_drawn_log_uniform():
    """A ``log`` parameter asks the trial for a log-uniform draw, the others for a uniform one.
    (spaces.Param.suggest without ``log=self.log``.)"""
    from ramer.models.spaces import Param, log

    calls = []
    trial = type("Trial", (), {"suggest_float": lambda self, *a, **k: calls.append((a, k)) or 1.0})()
    log("train.lr", 1e-4, 3e-3).suggest(trial)
    Param("model.dropout", 0.0, 0.3).suggest(trial)
    assert calls == [(("train.lr", 1e-4, 3e-3), {"log": True}), (("model.dropout", 0.0, 0.3), {"log": False})]


def test_the_largest_feature_magnitudes_read_present_values_only(store):
    """The magnitudes a first-step divergence reports are of the values the model reads: a huge
    value under a False presence bit is not one. (batch.largest_features over every value.)"""
    from ramer.batch import largest_features

    batch = store.collate(np.arange(len(store)))
    got = largest_features(with_garbage(batch, 1e30))
    assert got == largest_features(batch) and max(got.values()) < 100


def test_single_label_log_loss_is_the_mean_over_samples_of_the_true_labels():
    """Single-label log-loss: ``-mean_i log p_i(y_i)``. (classical.log_loss averaging over every
    (sample, label) entry, so dividing by the number of labels.)"""
    from ramer.train.classical import log_loss

    y = np.array([[1, 0, 0], [0, 0, 1]])
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert log_loss(y, p, single_label=True) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2)


def test_a_classical_run_chooses_its_threshold_on_the_valid_split(tmp_path, monkeypatch):
    """``br`` / ``cc`` / ``lp`` choose the threshold on validation predictions. (train.classical:
    the train split's predictions given to choose_threshold.)"""
    from test_recipe import tiny_cfg

    import ramer.train.classical as classical
    from ramer.data.synthetic import generate

    cfg = tiny_cfg("br", ["data.synthetic.n_train=60", "data.synthetic.n_valid=20", "data.synthetic.n_test=20"])
    bundle = generate(cfg.data.synthetic)
    seen = []
    choose = classical.choose_threshold
    monkeypatch.setattr(classical, "choose_threshold", lambda labels, *a: seen.append(labels) or choose(labels, *a))
    classical.ClassicalRecipe(cfg, tmp_path / "br", bundle=bundle).run()
    assert len(seen) == 1 and np.array_equal(seen[0], np.asarray(bundle.splits["valid"].labels))
