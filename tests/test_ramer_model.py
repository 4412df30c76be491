"""RAMer as a whole: every ablation x missing pattern, no leaks, switches, determinism."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import random_store

from ramer.batch import MODALITIES
from ramer.config import ABLATIONS, LossConfig, ModelConfig
from ramer.models import losses
from ramer.models import ramer as ramer_module
from ramer.models.base import DataSpec
from ramer.models.parts import identity_permutations
from ramer.models.ramer import RAMer, RAMerOutput

DIMS = {"text": 16, "audio": 8, "visual": 12}
C = 5
ALL_TERMS = {
    "cls",
    "lsr",
    "aug",
    "ae",
    "cross",
    "supcon",
    "agg",
    "shuffle",
    "spec",
    "com",
    "orth",
    "cml",
    "rec_adv",
    "pers",
}
REMOVES = {
    "no_personality": {"pers"},
    "no_modality_attention": set(),
    "no_adversarial": {"spec", "com", "orth", "cml"},
    "no_rec_adversarial": {"rec_adv"},
    "no_reconstruction": {"aug", "ae", "cross", "rec_adv"},
    "no_contrastive": {"supcon"},
    "no_shuffle": {"shuffle"},
    "no_stack": set(),
    "no_modality_dropout": set(),
}
TRAINING_ONLY = {"no_rec_adversarial", "no_contrastive", "no_shuffle", "no_modality_dropout"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


def spec(personality: int | None = 7) -> DataSpec:
    names = tuple(f"l{j}" for j in range(C))
    return DataSpec(dims=dict(DIMS), n_labels=C, label_names=names, personality_dim=personality)


def tiny(ablations=(), **kw) -> ModelConfig:
    base = dict(hidden=16, heads=2, ffn=16, proj_size=8, queue_size=32, ablations=list(ablations))
    base.update(kw)
    return ModelConfig(**base)


def make(ablations=(), personality: int | None = 7, seed: int = 0, **kw) -> RAMer:
    torch.manual_seed(seed)
    return RAMer(tiny(ablations, **kw), LossConfig(), spec(personality))


def base_batch(n: int = 6, seed: int = 1):
    return random_store(n=n, dims=tuple(DIMS.values()), n_labels=C, persons=(1, 3), segments=(2, 4), seed=seed).collate(
        list(range(n))
    )


def with_pattern(batch, pattern: str):
    """Missing-modality patterns of the brief, on top of the store's own (speaker-only text/audio)."""
    p = {m: batch.present[m].clone() for m in MODALITIES}
    valid, scope = batch.valid, batch.scope
    if pattern == "none_missing":
        p = {m: valid.clone() for m in MODALITIES}
    elif pattern == "nonspeaker_target":  # the target person never has text or audio
        for m in ("text", "audio"):
            p[m] &= ~scope
    elif pattern == "visual_absent":
        p["visual"][:] = False
    elif pattern == "modality_absent_batch":
        p["audio"][:] = False
    elif pattern == "nobody_speaks":  # scene 0 has no text and no audio at all, and one empty scene
        for m in ("text", "audio"):
            p[m][0] = False
        for m in MODALITIES:
            p[m][1] = False
    elif pattern != "store":
        raise ValueError(pattern)
    return batch.with_present(p)


PATTERNS = ["store", "none_missing", "nonspeaker_target", "visual_absent", "modality_absent_batch", "nobody_speaks"]
CONFIGS = [()] + [(a,) for a in ABLATIONS]


def check_finite_grads(model: RAMer) -> None:
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("ablation", CONFIGS, ids=lambda a: a[0] if a else "all_on")
def test_every_ablation_and_missing_pattern(ablation):
    model = make(ablation)
    removed = REMOVES[ablation[0]] if ablation else set()
    for pattern in PATTERNS:
        batch = with_pattern(base_batch(), pattern)
        B = batch.size
        model.train()
        model.zero_grad()
        out = model(batch)
        assert out.probs.shape == (B, C) and out.logits.shape == (B, C)
        assert out.label_features.shape == (B, 3, C, 16)
        K = 3 if (ablation and ablation[0] in ("no_stack", "no_adversarial")) else 4
        assert out.stack.shape == (B, K, C, 16) and out.agg_logits.shape == (B, K, C)
        assert torch.isfinite(out.probs).all() and ((out.probs >= 0) & (out.probs <= 1)).all(), pattern
        res = model.loss(out, batch)
        assert set(res.terms) == ALL_TERMS - removed, pattern
        assert torch.isfinite(res.total), (pattern, {k: v.item() for k, v in res.terms.items()})
        res.total.backward()
        check_finite_grads(model)
        # eval mode: same fields, finite, training-only fields empty
        model.eval()
        with torch.no_grad():
            ev = model(batch)
            ev_loss = model.loss(ev, batch)
        assert torch.isfinite(ev.probs).all() and torch.isfinite(ev_loss.total)
        assert ev.shuffle_logits is None and ev.items is None and ev.disc_common is None and ev.personality_pred is None
        assert not ev.dropped.any()
        assert not ({"supcon", "shuffle", "spec", "com", "rec_adv", "pers"} & set(ev_loss.terms))


def test_output_has_the_same_fields_in_train_and_eval():
    model = make(modality_dropout=0.9)  # something is hidden, so hidden_real is computed
    batch = base_batch()
    tr = model.train()(batch)
    ev = model.eval()(batch)
    assert isinstance(tr, RAMerOutput) and isinstance(ev, RAMerOutput)
    for f in dataclasses.fields(RAMerOutput):
        a, b = getattr(tr, f.name), getattr(ev, f.name)
        if f.name in (
            "disc_specific",
            "disc_common",
            "disc_real",
            "disc_fake",
            "shuffle_logits",
            "shuffle_targets",
            "shuffle_mask",
            "items",
            "item_classes",
            "queue_items",
            "queue_classes",
            "personality_pred",
            "hidden_real",
        ):
            assert a is not None and b is None, f.name
        else:
            assert (a is None) == (b is None), f.name
            if a is not None:
                assert a.shape == b.shape, f.name


def test_all_on_every_parameter_gets_a_gradient():
    model = make().train()
    batch = with_pattern(base_batch(), "store")
    res = model.loss(model(batch), batch)
    res.total.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert dead == []


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_switch_removes_its_part(ablation):
    full, cut = make(), make((ablation,))
    n_full = sum(p.numel() for p in full.parameters())
    n_cut = sum(p.numel() for p in cut.parameters())
    removed_module = {
        "no_personality": lambda m: m.personality is None and m.personality_head is None,
        "no_modality_attention": lambda m: m.context is None,
        "no_adversarial": lambda m: m.adversary is None,
        "no_rec_adversarial": lambda m: m.rec_adversary is None,
        "no_reconstruction": lambda m: (
            m.reconstruction is None and m.autoencoder.decoders is None and m.rec_adversary is None
        ),
        "no_contrastive": lambda m: m.memory is None,
        "no_shuffle": lambda m: m.shuffle is False,
        "no_stack": lambda m: m.stack_common is False,
        "no_modality_dropout": lambda m: m.p_drop == 0.0,
    }[ablation]
    assert removed_module(cut)
    if ablation not in ("no_contrastive", "no_shuffle", "no_stack", "no_modality_dropout"):
        assert n_cut < n_full

    # The cut model takes the full model's weights (its own are a subset) ...
    missing, unexpected = cut.load_state_dict(full.state_dict(), strict=False)
    assert missing == []
    batch = with_pattern(base_batch(), "nonspeaker_target")
    full.eval(), cut.eval()
    with torch.no_grad():
        a, b = full(batch).probs, cut(batch).probs
    # ... and a training-only part leaves the eval output exactly as it is; any other part changes it.
    if ablation in TRAINING_ONLY:
        assert torch.equal(a, b)
    else:
        assert not torch.allclose(a, b)

    # In training, the term is absent (not multiplied by zero) and the part's outputs are None.
    cut.train()
    torch.manual_seed(0)
    out = cut(batch)
    terms = cut.loss(out, batch).terms
    assert not (REMOVES[ablation] & set(terms))
    if ablation == "no_modality_dropout":
        assert not out.dropped.any()
    if ablation == "no_shuffle":
        assert out.shuffle_logits is None
    if ablation == "no_contrastive":
        assert out.items is None and not any("memory" in k or "queue" in k for k in cut.state_dict())


@pytest.mark.parametrize("stand_in", ["prototype", "own_slot", "gate", "context"])
def test_modality_dropout_hides_but_keeps_one(stand_in):
    model = make(modality_dropout=0.9, stand_in=stand_in).train()
    batch = with_pattern(base_batch(n=24), "none_missing")
    out = model(batch)
    assert out.dropped.any()
    assert (out.dropped <= out.available).all()
    assert (out.visible.any(1) == out.available.any(1)).all()  # never the last available modality
    # a hidden modality is replaced by its stand-in (built from context, as if it were truly missing),
    # and supervised by its real features: its label feature from every present token, as the
    # eval-mode model computes it
    hidden = out.dropped[:, :, None, None].expand_as(out.final)
    r, rec = out.label_features, out.reconstructed
    expected = {"prototype": rec, "own_slot": rec, "gate": model.gate(r, rec) if model.gate else None, "context": r}
    assert torch.equal(out.final[hidden], expected[stand_in][hidden])
    with torch.no_grad():
        real = model.eval()(batch).label_features
    torch.testing.assert_close(out.hidden_real[hidden], real[hidden], rtol=1e-5, atol=1e-5)
    assert (out.hidden_real[~hidden] == 0).all()


def _hide_every_other(modality: int):
    """A modality_dropout stand-in that hides ``modality`` in every other sample where it is available."""

    def hide(available, p):
        dropped = torch.zeros_like(available)
        dropped[::2, modality] = available[::2, modality]
        return dropped

    return hide


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("value", [1e4, float("nan")], ids=["noise", "nan"])
def test_hidden_modality_is_hidden_from_every_path(monkeypatch, modality, value):
    """A modality hidden by modality dropout is read by nothing but the detached teacher pass that gives
    its reconstruction target: its scope tokens may hold noise or NaN and the training forward (one
    model state, one RNG state) is bit-identical in every other field, and so is every loss term but
    the reconstruction's."""
    i = MODALITIES.index(modality)
    monkeypatch.setattr(ramer_module, "modality_dropout", _hide_every_other(i))
    batch = with_pattern(base_batch(n=8), "none_missing")
    model = make().train()
    twin = copy.deepcopy(model)  # the same buffers (queue, prototypes): the forward updates them
    torch.manual_seed(5)
    clean = model(batch)
    hidden = clean.dropped[:, i].unsqueeze(1) & batch.scope  # (B, N): the hidden tokens
    assert clean.dropped[:, i].sum() >= 2 and not clean.dropped[:, [k for k in range(3) if k != i]].any()
    x = batch.features[modality]
    junk = torch.full_like(x, value) if value != value else torch.randn_like(x) * value
    dirty_batch = dataclasses.replace(
        batch, features={**batch.features, modality: torch.where(hidden.unsqueeze(-1), junk, x)}
    )
    torch.manual_seed(5)
    dirty = twin(dirty_batch)
    for f in dataclasses.fields(RAMerOutput):
        a, b = getattr(clean, f.name), getattr(dirty, f.name)
        if isinstance(a, torch.Tensor) and f.name != "hidden_real":
            assert torch.equal(a, b), f.name
    terms_a, terms_b = model.loss(clean, batch).terms, twin.loss(dirty, dirty_batch).terms
    assert {k for k in terms_a if not torch.equal(terms_a[k], terms_b[k])} == {
        "cross"
    }  # the hidden target moves that term only
    # the teacher does read them: the reconstruction target of the hidden modality is its real feature
    assert not torch.equal(clean.hidden_real[:, i], dirty.hidden_real[:, i])


@pytest.mark.parametrize("stand_in", ["own_slot", "gate", "context"])
def test_context_reaches_a_nonspeaker_stand_in(stand_in):
    """A target whose text is missing from its whole scope (a non-speaker): changing only the other
    persons' text changes its final text feature and its scores; with §2.3 off it changes nothing."""
    batch = with_pattern(base_batch(n=10), "nonspeaker_target")
    others = batch.present["text"] & ~batch.scope  # (B, N): other persons' text tokens
    rows = others.any(1)  # (B,) samples where someone else speaks
    assert rows.sum() >= 3
    noise = torch.randn(batch.features["text"].shape, generator=torch.Generator().manual_seed(0))
    text = torch.where(others.unsqueeze(-1), batch.features["text"] + noise, batch.features["text"])
    moved = dataclasses.replace(batch, features={**batch.features, "text": text})
    t = MODALITIES.index("text")

    model = make(stand_in=stand_in).eval()
    with torch.no_grad():
        a, b = model(batch), model(moved)
    assert not a.available[rows, t].any()
    final_change = (a.final[:, t] - b.final[:, t]).abs().amax((1, 2))  # (B,)
    assert (final_change[rows] > 0).all() and (final_change[~rows] == 0).all()
    assert ((a.probs - b.probs).abs().amax(1)[rows] > 0).all()

    off = make(("no_modality_attention",), stand_in=stand_in).eval()
    with torch.no_grad():
        a, b = off(batch), off(moved)
    assert torch.equal(a.final, b.final) and torch.equal(a.probs, b.probs)


def test_prototype_stand_in_never_sees_the_context():
    """``stand_in: prototype`` is the spec's literal reading: r~_m = F_m([r^_n ; p^_m]) for a modality
    missing from the scope, so the context §2.3 gathered for it does not reach its final feature."""
    batch = with_pattern(base_batch(n=10), "nonspeaker_target")
    others = batch.present["text"] & ~batch.scope
    text = torch.where(others.unsqueeze(-1), batch.features["text"] + 1.0, batch.features["text"])
    moved = dataclasses.replace(batch, features={**batch.features, "text": text})
    model = make(stand_in="prototype").eval()
    with torch.no_grad():
        a, b = model(batch), model(moved)
    assert torch.equal(a.final[:, 0], b.final[:, 0])
    assert not torch.equal(a.label_features[:, 0], b.label_features[:, 0])  # r_text itself did move


def test_personality_off_without_data():
    model = make(personality=None)
    assert model.personality is None and model.personality_head is None
    model = make()
    batch = dataclasses.replace(base_batch(), personality=None, personality_present=None)
    res = model.loss(model.train()(batch), batch)
    assert "pers" not in res.terms and torch.isfinite(res.total)


def garbage(batch, value: float):
    """The same batch with garbage wherever a modality (or a personality) is absent."""
    feats = {}
    for m in MODALITIES:
        x = batch.features[m]
        junk = torch.full_like(x, value) if value != value else torch.randn_like(x) * value  # NaN or noise
        feats[m] = torch.where(batch.present[m].unsqueeze(-1), x, junk)
    junk = torch.randn_like(batch.personality) * value
    pers = torch.where(batch.personality_present.unsqueeze(-1), batch.personality, junk)
    return dataclasses.replace(batch, features=feats, personality=pers)


@pytest.mark.parametrize("ablation", [(), ("no_modality_attention",), ("no_reconstruction",)], ids=str)
@pytest.mark.parametrize("value", [1e4, float("nan")], ids=["noise", "nan"])
def test_masked_modality_does_not_leak(ablation, value):
    model = make(ablation).eval()
    batch = with_pattern(base_batch(), "nonspeaker_target")
    pp = batch.personality_present.clone()
    pp[0, 0] = False  # one person without personality
    batch = dataclasses.replace(batch, personality_present=pp)
    with torch.no_grad():
        clean, dirty = model(batch), model(garbage(batch, value))
    for f in dataclasses.fields(RAMerOutput):
        a, b = getattr(clean, f.name), getattr(dirty, f.name)
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f.name


def test_identity_shuffle_reproduces_the_aggregator_loss(monkeypatch):
    monkeypatch.setitem(ramer_module.PERMUTATIONS, "random", identity_permutations)
    model = make(dropout=0.0).train()
    batch = base_batch()
    out = model(batch)
    terms = model.loss(out, batch).terms
    assert torch.equal(out.shuffle_logits, out.agg_logits)
    assert terms["shuffle"].item() == terms["agg"].item()


def test_gradient_reversal_through_the_model():
    """Tier 1, in one model state: the gradient of L_com on the common extractor is minus the gradient of
    the same loss without the reversal, the discriminator's is the same (it learns to tell modalities apart)."""
    model = make(dropout=0.0).train()
    batch = base_batch()
    out = model(batch)
    adv = model.adversary
    reversed_loss = losses.modality_ce(out.disc_common, out.usable)
    plain_loss = losses.modality_ce(adv.discriminator(out.common), out.usable)  # the same, no GRL
    common, disc = list(adv.common.parameters()), list(adv.discriminator.parameters())
    g_rev = torch.autograd.grad(reversed_loss, common + disc, retain_graph=True)
    g_plain = torch.autograd.grad(plain_loss, common + disc)
    for g_r, g_p in zip(g_rev[: len(common)], g_plain[: len(common)]):
        assert g_r.abs().sum() > 0 and torch.equal(g_r, -g_p)
    for g_r, g_p in zip(g_rev[len(common) :], g_plain[len(common) :]):
        assert g_r.abs().sum() > 0 and torch.equal(g_r, g_p)


def test_tier2_reversal_reaches_reconstruction_only():
    """Tier 2, in one model state: the real branch of D_rec is detached (no gradient reaches the label
    features r through it); the fake branch is reversed (the gradient on r~ is minus the plain one),
    while D_rec itself gets the plain gradient of both."""
    model = make(dropout=0.0).train()
    batch = with_pattern(base_batch(), "nonspeaker_target")
    out = model(batch)
    net = model.rec_adversary.net
    real_loss = losses.bce(out.disc_real, torch.ones_like(out.disc_real), out.visible.unsqueeze(-1))
    (g_r,) = torch.autograd.grad(real_loss, out.label_features, allow_unused=True, retain_graph=True)
    assert g_r is None  # detached: r is not in the graph of the real branch
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(real_loss, list(net.parameters()), retain_graph=True))

    zeros, mask = torch.zeros_like(out.disc_fake), out.available.unsqueeze(-1)
    fake_loss = losses.bce(out.disc_fake, zeros, mask)
    plain_loss = losses.bce(net(out.reconstructed).squeeze(-1), zeros, mask)  # the same, no GRL
    inputs = [out.reconstructed, *net.parameters()]
    g_rev = torch.autograd.grad(fake_loss, inputs, retain_graph=True)
    g_plain = torch.autograd.grad(plain_loss, inputs)
    assert g_rev[0].abs().sum() > 0 and torch.equal(g_rev[0], -g_plain[0])
    for a, b in zip(g_rev[1:], g_plain[1:]):
        assert torch.equal(a, b)


def test_seeded_runs_are_reproducible():
    batch = base_batch()
    totals = []
    for _ in range(2):
        model = make(seed=3).train()
        torch.manual_seed(11)
        res = model.loss(model(batch), batch)
        res.total.backward()
        totals.append((res.total.item(), next(model.parameters()).grad.clone()))
    assert totals[0][0] == totals[1][0] and torch.equal(totals[0][1], totals[1][1])


def test_state_updates_only_in_training():
    model = make()
    batch = base_batch()
    model.eval()
    with torch.no_grad():
        model(batch)
    assert (model.memory.queue_classes == -1).all() and (model.reconstruction.prototypes == 0).all()
    model.train()
    out = model(batch)
    assert out.queue_items.shape[0] == 0  # the queue was empty before this batch
    assert (model.memory.queue_classes >= 0).sum() == min(32, out.items.shape[0])
    assert model.reconstruction.prototypes.abs().sum() > 0


def test_complete_scenes_score_the_same_on_the_shortcut():
    """Where every token is valid and present (as on CMU-MOSEI), evaluation without autograd
    skips the modality completion (nothing to fill). Its scores equal those of the full path,
    which the same eval model takes with autograd on."""
    store = random_store(n=6, dims=tuple(DIMS.values()), n_labels=C, persons=(2, 2), segments=(3, 3), seed=4)
    batch = with_pattern(store.collate(list(range(6))), "none_missing")
    assert batch.valid.all() and all(bool(batch.present[m].all()) for m in MODALITIES)
    model = make().eval()
    with torch.no_grad():
        fast = model(batch).probs
    with torch.enable_grad():
        full = model(batch).probs
    assert full.requires_grad and torch.equal(fast, full)


def test_bf16_autocast():
    model = make().train()
    batch = base_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        res = model.loss(out, batch)
    res.total.backward()
    assert torch.isfinite(res.total) and torch.isfinite(out.probs.float()).all()
    check_finite_grads(model)


@pytest.mark.parametrize("stand_in", ["own_slot", "gate"])
def test_beta_pass(stand_in):
    model = make(beta=True, stand_in=stand_in).train()
    batch = with_pattern(base_batch(), "nonspeaker_target")
    out = model(batch)
    res = model.loss(out, batch)
    assert "beta" in res.terms and out.beta is not None
    # the second pass is the reconstruction part of a missing modality's stand-in
    missing = ~out.visible[:, :, None, None].expand_as(out.final)
    expected = model.gate(out.label_features, out.beta) if model.gate is not None else out.beta
    assert torch.equal(out.final[missing], expected[missing])
    res.total.backward()
    check_finite_grads(model)


def test_too_many_segments_is_a_clear_error():
    from ramer.errors import RamerError

    model = make(max_segments=2)
    with pytest.raises(RamerError, match="max_segments"):
        model(base_batch())


def test_a_batch_of_exactly_max_segments_runs():
    """The segment-position table has ``max_segments`` rows: a batch of that many segments uses them
    all and is no error. (``segments >= max_segments`` in check_segments.)"""
    batch = base_batch()
    with torch.no_grad():
        out = make(max_segments=batch.grid[1]).eval()(batch)
    assert torch.isfinite(out.probs).all()


def test_teacher_pass_leaves_each_modules_own_mode():
    """The eval-mode teacher pass of modality dropout hands every module back in the mode it had: a
    part a user froze in eval mode stays in eval mode after a training forward."""
    model = make(modality_dropout=0.9).train()
    model.labelwise.eval()
    out = model(with_pattern(base_batch(n=24), "none_missing"))
    assert out.dropped.any() and out.hidden_real is not None  # the teacher pass ran
    assert not model.labelwise.training and model.training
    frozen = {id(m) for m in model.labelwise.modules()}
    assert all(m.training for m in model.modules() if id(m) not in frozen)
