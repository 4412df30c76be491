"""Mechanisms of the model, the training recipe and the native loader that no other test pinned:
each test fails when the mechanism it names is removed (its docstring names the smallest change
that removes it). The model tests reuse the tiny RAMer and batches of test_ramer_model.py.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from test_ramer_model import _hide_every_other, base_batch, make, with_pattern

from ramer.batch import MODALITIES
from ramer.config import LossConfig
from ramer.models import losses
from ramer.models import ramer as ramer_module
from ramer.models.parts import fuse_max

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


# ---------------------------------------------------------------------- model


@pytest.mark.parametrize("detach", [True, False])
def test_reconstruction_targets_take_no_gradient_unless_asked(detach):
    """The targets r_m of the ae / cross terms are detached (loss.detach_targets): with r_m made a
    leaf that only the loss reads, the total has no gradient on it; with the switch off, it has.
    (Removing the ``.detach()`` in RAMer.loss; would extend test_ramer_model's loss tests.)"""
    model = make().train()
    model.weights = LossConfig(detach_targets=detach)
    batch = base_batch(n=8)
    torch.manual_seed(3)
    out = model(batch)
    leaf = out.label_features.detach().requires_grad_()  # read by the loss only as the targets
    total = model.loss(dataclasses.replace(out, label_features=leaf), batch).total
    (grad,) = torch.autograd.grad(total, leaf, allow_unused=True)
    reaches = grad is not None and bool(grad.abs().sum() > 0)
    assert reaches is not detach


def test_personality_head_reads_the_encodings_before_the_injection():
    """L_pers predicts pi_p from h, taken before W_m e_p is added: changing only the personalities
    leaves the prediction bit-identical while the scores move (the personality does reach them).
    (Feeding the head ``u`` instead of ``h``; would extend test_ramer_model's leak tests.)"""
    model = make(dropout=0.0).train()
    twin = copy.deepcopy(model)  # the same buffers: the forward updates them
    batch = base_batch(n=8)
    noise = torch.randn(batch.personality.shape, generator=torch.Generator().manual_seed(0))
    other = dataclasses.replace(batch, personality=batch.personality + noise)  # a shift LayerNorm would undo
    torch.manual_seed(4)
    a = model(batch)
    torch.manual_seed(4)
    b = twin(other)
    assert torch.equal(a.personality_pred, b.personality_pred)
    assert not torch.allclose(a.probs, b.probs)


def test_an_unknown_personality_is_no_personality():
    """A person whose personality is unknown gets e_p = 0 and no personality key in §2.3: a batch
    where nobody's is known scores as the same batch without personalities at all. (Dropping the
    ``torch.where(known, e, 0)`` in PersonalityStream.forward, which leaves e = MLP(0), or the
    e_known key mask in context.ModalityCompletion; test_masked_modality_does_not_leak only changes
    the unknown values, which both ignore.)"""
    model = make().eval()
    batch = base_batch(n=8)
    unknown = dataclasses.replace(batch, personality_present=torch.zeros_like(batch.personality_present))
    none = dataclasses.replace(batch, personality=None, personality_present=None)
    with torch.no_grad():
        a, b, known = model(unknown).probs, model(none).probs, model(batch).probs
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(known, b, atol=1e-4)  # a known personality does move the scores


def test_the_queue_of_earlier_steps_is_a_key_of_supcon():
    """The contrastive queue serves as keys: the second step's output carries the queue as the first
    step left it, which the SupCon term reads. (Passing an empty queue to the loss; test_ramer_parts
    checks losses.supcon with a queue, not that the model gives it one.)"""
    model = make(queue_size=1024).train()  # room for every item of a step
    batch = base_batch(n=8)
    torch.manual_seed(6)
    first = model(batch)
    queue, classes = model.memory.snapshot()
    assert queue.shape[0] == first.items.shape[0] > 0
    second = model(base_batch(n=8, seed=2))
    assert torch.equal(second.queue_items, queue) and torch.equal(second.queue_classes, classes)
    with_queue = model.loss(second, batch).terms["supcon"]
    empty = losses.supcon(second.items, second.item_classes, queue[:0], classes[:0], model.cfg.temperature)
    assert not torch.equal(with_queue, empty)


def test_a_hidden_modalitys_reconstruction_target_is_its_real_feature(monkeypatch):
    """For a modality hidden by modality dropout, the cross term's target is its label feature from its
    real tokens (``hidden_real``), not the r_m computed without them. (Dropping the
    ``torch.where(out.dropped, out.hidden_real, real)`` in RAMer.loss; test_hidden_modality_is_hidden_
    from_every_path allows the cross term to differ but does not assert that it does.)"""
    i = MODALITIES.index("audio")
    monkeypatch.setattr(ramer_module, "modality_dropout", _hide_every_other(i))
    batch = with_pattern(base_batch(n=8), "none_missing")
    model = make().train()
    torch.manual_seed(5)
    out = model(batch)
    assert out.dropped[:, i].sum() >= 2
    target = torch.where(out.dropped[:, :, None, None], out.hidden_real, out.label_features.detach())
    expected = losses.feature_mse(out.reconstructed, target, out.available)
    assert torch.equal(model.loss(out, batch).terms["cross"], expected)
    assert not torch.equal(out.hidden_real[:, i], out.label_features[:, i])  # the two targets differ


def test_an_unavailable_modalitys_reconstruction_error_is_not_in_the_loss():
    """The ae term is averaged over visible modalities and cross over available ones: moving the
    autoencoded and reconstructed features of a modality absent from every scope changes neither,
    while moving those of a present one changes both. (Dropping the mask in losses.feature_mse.)"""
    batch = with_pattern(base_batch(n=8), "visual_absent")
    model = make().train()
    torch.manual_seed(7)
    out = model(batch)
    v, t = MODALITIES.index("visual"), MODALITIES.index("text")
    assert not out.available[:, v].any() and out.available[:, t].any()

    def terms_moved(m):
        shift = torch.zeros_like(out.reconstructed)
        shift[:, m] = 5.0
        moved = dataclasses.replace(out, reconstructed=out.reconstructed + shift, autoencoded=out.autoencoded + shift)
        base, new = model.loss(out, batch).terms, model.loss(moved, batch).terms
        return {k for k in ("ae", "cross") if not torch.equal(base[k], new[k])}

    assert terms_moved(v) == set()
    assert terms_moved(t) == {"ae", "cross"}


def test_the_model_shuffles_the_stack_with_random_permutations():
    """model.shuffle unset means random permutations (a new draw per label, source and sample): the
    virtual samples' targets are not the batch's own. (Mapping "random" to the identity;
    test_random_shuffle_matches_its_definition checks shuffle_stack, not what the model draws.)"""
    model = make().train()
    batch = base_batch(n=8)
    assert model.cfg.shuffle is None
    torch.manual_seed(8)
    out = model(batch)
    own = batch.labels.unsqueeze(1).expand_as(out.shuffle_targets)
    assert not torch.equal(out.shuffle_targets, own.to(out.shuffle_targets.dtype))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_evaluation_takes_the_nearer_prototype_training_the_mix(training):
    """Spec §4.2: the prototype mix decoded into p^_m is ``w+ pi+ + (1 - w+) pi-`` in training and the
    nearer prototype itself in evaluation (``w+ > 1/2``). (RAMer.forward passing ``hard=False`` in
    eval mode; test_ramer_parts tests the prototype update, not the mix.)"""
    model = make().train(training)
    protos = model.reconstruction.prototypes
    protos.copy_(
        torch.nn.functional.normalize(torch.randn(protos.shape, generator=torch.Generator().manual_seed(1)), dim=-1)
    )
    decoded = []
    decode = model.autoencoder.decode
    model.autoencoder.decode = lambda z: decoded.append(z.detach().clone()) or decode(z)
    with torch.no_grad():
        model(base_batch(n=8))
    mix = decoded[1]  # decode(codes), then decode(mix) in CrossReconstruction
    pos, neg = (protos[None, :, :, y].to(mix.dtype) for y in (1, 0))  # (1, M, C, P)
    exactly_one = ((mix == pos).all(-1) | (mix == neg).all(-1)).all()
    assert bool(exactly_one) is not training


WEIGHT_OF = {  # spec MODEL.md §7: the LossConfig weight of each RAMer term ("cls" has weight 1)
    "lsr": "w_lsr",
    "aug": "w_aug",
    "ae": "w_ae",
    "cross": "w_cross",
    "beta": "w_beta",
    "supcon": "w_cl",
    "agg": "w_agg",
    "shuffle": "w_shuf",
    "spec": "w_adv",
    "com": "w_adv",
    "orth": "w_orth",
    "cml": "w_cml",
    "rec_adv": "w_radv",
    "pers": "w_pers",
}


@pytest.mark.parametrize("weight", sorted(set(WEIGHT_OF.values())))
def test_each_loss_weight_scales_its_own_terms(weight):
    """Changing one loss weight by d moves the total by exactly d times its terms, and no other.
    (A weight replaced by a constant in RAMer.loss; test_ramer_model checks which terms exist, not
    how they are weighted.)"""
    model = make(beta=True).train()
    batch = base_batch(n=8)
    torch.manual_seed(9)
    out = model(batch)
    before = model.loss(out, batch)
    model.weights = model.weights.model_copy(update={weight: getattr(model.weights, weight) + 0.5})
    after = model.loss(out, batch)
    own = [k for k, w in WEIGHT_OF.items() if w == weight]
    assert set(own) <= set(before.terms)
    expected = before.total.detach() + 0.5 * sum(before.terms[k] for k in own)
    torch.testing.assert_close(after.total.detach(), expected, rtol=1e-6, atol=1e-6)
    assert set(before.terms) - {"cls"} == set(WEIGHT_OF)  # every term has its weight here


def test_only_a_context_built_modality_fills_its_own_reconstruction_slot():
    """``stand_in: own_slot`` puts r^_m in F_m's own slot only for a modality missing from the scope
    whose label feature §2.3 built from context; a visible modality's own slot keeps p^_m, as with
    ``stand_in: prototype`` (one seed: the same weights). (``from_context = trusted`` without
    ``& ~visible`` in RAMer.forward.)"""
    batch = with_pattern(base_batch(n=10), "nonspeaker_target")
    with torch.no_grad():
        own, proto = make(stand_in="own_slot").eval()(batch), make(stand_in="prototype").eval()(batch)
    from_context = own.trusted & ~own.visible  # (B, M)
    assert from_context.any() and own.visible.any()
    same = (own.reconstructed == proto.reconstructed).flatten(2).all(-1)  # (B, M)
    assert torch.equal(same, ~from_context)


def test_the_stand_in_gate_leaves_a_modality_no_context_built():
    """With §2.3 off nothing is built from context: a modality absent from the scope takes its
    reconstruction r~_m as it is, not gated with its empty r_m. (The gate's ``torch.where(from_context,
    ...)`` dropped in RAMer.forward.)"""
    batch = with_pattern(base_batch(n=8), "visual_absent")
    v = MODALITIES.index("visual")
    with torch.no_grad():
        out = make(("no_modality_attention",), stand_in="gate").eval()(batch)
    assert not out.trusted[:, v].any() and (out.label_features[:, v] == 0).all()
    assert torch.equal(out.final[:, v], out.reconstructed[:, v])


def test_the_aggregator_score_averages_the_usable_sources():
    """§7's aggregator score is the mean over the usable sources of the stack; a scene where no
    modality is present (without reconstruction and §2.3) has none, the common feature included, and
    takes the mean over every source. (``usable.any(1)`` of the common slot's mask set to True, or
    the mask dropped from the mean, in RAMer.forward.)"""
    batch = with_pattern(base_batch(n=8), "nobody_speaks")
    with torch.no_grad():
        out = make(("no_reconstruction", "no_modality_attention")).eval()(batch)
    some = out.stack_mask.any(1)  # (B,)
    assert out.stack.shape[1] == len(MODALITIES) + 1
    assert not out.stack_mask[~out.usable.any(1)].any() and not some.all()
    assert not out.stack_mask[some].all()  # a sample with a source left out of its mean
    p, w = out.agg_logits.sigmoid(), out.stack_mask.unsqueeze(-1).float()  # (B, K, C), (B, K, 1)
    agg = torch.where(some[:, None], (p * w).sum(1) / w.sum(1).clamp_min(1.0), p.mean(1))  # (B, C)
    torch.testing.assert_close(out.probs, 0.5 * (out.logits.sigmoid() + agg), rtol=0, atol=1e-6)


def test_the_max_pool_reads_the_stand_ins_of_missing_modalities():
    """With reconstruction, every modality's final feature is defined (its stand-in where missing) and
    the §7 max-pool runs over all of them, not only over the visible ones. (``fuse_max(...,
    visible)`` for ``usable`` in RAMer.forward.)"""
    batch = with_pattern(base_batch(n=10), "nonspeaker_target")
    with torch.no_grad():
        out = make().eval()(batch)
    assert out.usable.all() and not out.visible.all()
    assert torch.equal(out.logits, out.modality_logits.amax(1))
    assert not torch.equal(out.logits, fuse_max(out.modality_logits, out.visible))  # a stand-in's logit wins


def test_the_offset_embedding_counts_segments_from_the_target_segment():
    """Every token gets the embedding of its segment's offset from the target segment (the target
    token's index modulo S), clipped to +-R; a target at token 0 counts, a sample without a target gets
    none. (``% S`` dropped, or ``target >= 0`` made ``> 0``, in RAMer._offset_embedding.)"""
    model = make(target_offset=1)
    batch = base_batch(n=8)
    S = batch.grid[1]
    target = batch.target.clone()
    target[0], target[1] = 0, -1
    batch = dataclasses.replace(batch, target=target)
    assert (target >= S).any()  # a target person after the first
    got = model._offset_embedding(batch)  # (B, N, H)
    offset = (batch.segment - (target.clamp_min(0) % S).unsqueeze(1)).clamp(-1, 1) + 1  # (B, N)
    expected = model.target_embedding.weight[offset]  # (B, N, H)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2:], expected[2:])
    assert (got[1] == 0).all()


def test_the_label_specific_term_leaves_out_a_sample_with_no_usable_feature():
    """L_lsr classifies r_m only where some r_m may be used: a scene where no modality is present
    (here with §2.3 off) is left out of its mean. (The row mask ``trusted.any(1)`` dropped in
    RAMer.loss.)"""
    batch = with_pattern(base_batch(n=6), "nobody_speaks")
    model = make(("no_modality_attention",)).eval()
    with torch.no_grad():
        out = model(batch)
        keep = out.trusted.any(1)  # (B,)
        assert keep.any() and not keep.all()
        expected = losses.classification(fuse_max(out.label_logits, out.trusted)[keep], batch.labels[keep])
        # equal but for the float rounding of another reduction order (1 ulp on some CPUs); the row
        # mask dropped moves it by 2e-2 here
        torch.testing.assert_close(model.loss(out, batch).terms["lsr"], expected, rtol=1e-6, atol=0.0)


def test_the_slot_of_a_modality_without_a_usable_feature_holds_its_prototype():
    """In F_m's input, a modality whose label feature may not be used (absent from the scope, §2.3
    off) is represented by its prototype mix p^_n: moving that modality's prototypes moves the
    other modalities' reconstructions. (``slots = r_hat`` for the ``torch.where(usable, r_hat, p_hat)``
    in CrossReconstruction.forward.)"""
    batch = with_pattern(base_batch(n=8), "visual_absent")
    v, t = MODALITIES.index("visual"), MODALITIES.index("text")
    model = make(("no_modality_attention",)).eval()
    with torch.no_grad():
        before = model(batch)
        model.reconstruction.prototypes[v].normal_()
        after = model(batch)
    assert not before.trusted[:, v].any()
    moved = (before.reconstructed[:, t] != after.reconstructed[:, t]).flatten(1).any(1)  # (B,)
    assert moved.all()


# ---------------------------------------------------------------------- train


def test_learning_rate_warms_up_then_decays_to_zero():
    """The recipe's schedule (build_optimizer): linear from lr / warm to lr over the warm-up steps,
    then linear down to 0 at the last step. (Warm-up removed in optim.warmup_linear; no other test
    reads the schedule.)"""
    from ramer.train.optim import build_optimizer

    opt, sched = build_optimizer(torch.nn.Linear(3, 2), lr=1e-3, weight_decay=0.0, total_steps=20, warmup=0.25)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    warm = [1e-3 * k / 5 for k in range(1, 6)]  # 5 warm-up steps, 0.2 lr to lr
    assert lrs[:5] == pytest.approx(warm)
    assert lrs[5:] == pytest.approx([1e-3 * (20 - s) / 15 for s in range(5, 20)])


def test_training_step_clips_the_gradient_norm():
    """training_step clips the total gradient norm to grad_clip before the step: with plain SGD at
    lr 1 the parameters move by a vector of exactly that norm. (The clip_grad_norm_ call removed
    from recipe.training_step; no other test reads the update's size.)"""
    from ramer.train.recipe import training_step

    model = make().train()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    torch.manual_seed(10)
    training_step(model, model, base_batch(n=8), opt, None, grad_clip=1e-3)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert moved.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_validation_scores_the_valid_split_and_test_scores_the_best_model_file(tmp_path, monkeypatch):
    """A two-epoch run whose best epoch is the first: each epoch line's validation metrics and
    threshold are those of that epoch's weights on the valid split (threshold tuned there), and the
    test line is the best model file's (epoch 1, not the last weights) on the test split at its
    stored threshold. (Recipe.validate scoring the test split; Recipe.test keeping the last weights
    instead of loading model.safetensors. test_run_directory_contents would better hold this: it
    checks the best epoch's number and threshold, not the data and weights behind them.)"""
    from test_recipe import epoch_lines, tiny_cfg

    import ramer
    from ramer.data.synthetic import generate
    from ramer.infer import predict
    from ramer.metrics import choose_threshold, report
    from ramer.train import recipe as recipe_mod
    from ramer.train.recipe import Recipe

    cfg = tiny_cfg(extra=["train.epochs=2"])
    bundle = generate(cfg.data.synthetic)
    scores = iter([0.9, 0.1])  # the first epoch is the best
    monkeypatch.setattr(recipe_mod, "selection_score", lambda valid, task: next(scores))
    out = tmp_path / "run"
    result = Recipe(cfg, out, bundle=bundle).run()
    first, second = epoch_lines(out)
    assert first["best_epoch"] == second["best_epoch"] == 1

    best = ramer.load(out)
    assert best.epoch == 1
    valid, test = bundle.splits["valid"], bundle.splits["test"]
    pred = predict(best.model, valid, cfg.train.eval_batch_size, torch.device("cpu"))
    threshold = choose_threshold(pred.labels, pred.scores, "multi_label")
    assert first["threshold"] == threshold == best.threshold
    assert first["valid"]["overall"] == report(pred.labels, pred.scores, threshold, pred.role)["overall"]
    pred = predict(best.model, test, cfg.train.eval_batch_size, torch.device("cpu"))
    assert result["overall"] == report(pred.labels, pred.scores, threshold, pred.role)["overall"]
    assert first["valid"]["overall"] != result["overall"]  # the two splits do score differently


def test_a_process_other_than_rank_0_writes_nothing_into_the_run(tmp_path, monkeypatch):
    """Rank-0-only I/O: a finished run's recipe, acting as another rank, saves its training state and
    tests the best model without changing a byte in the run folder. (Dropping the ``is_main`` return
    in Recipe._save_train_state; test_tiny_distributed_run_agrees_on_every_rank, which it would
    better extend, checks the log lines but not who wrote train_state.pt.)"""
    from test_recipe import tiny_cfg

    from ramer.data.synthetic import generate
    from ramer.train import recipe as recipe_mod
    from ramer.train.recipe import Recipe

    cfg = tiny_cfg(extra=["train.epochs=1"])
    out = tmp_path / "run"
    recipe = Recipe(cfg, out, bundle=generate(cfg.data.synthetic))
    recipe.run()
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(recipe_mod, "is_main", lambda: False)
    recipe._save_train_state(1)
    recipe.test()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files


def test_training_draws_a_new_seeded_order_of_the_samples_every_epoch(tmp_path, monkeypatch):
    """Each epoch trains on a permutation of the training split seeded by (seed, epoch): every sample
    once, not in stored order, another order in the next epoch, the same orders in a run with the same
    seed. (Recipe._epoch_order returning the stored order, or one order for every epoch; no test
    read the order: test_resume_equals_uninterrupted_run passes with either.)"""
    from test_recipe import tiny_cfg

    from ramer.data.synthetic import generate
    from ramer.train.recipe import Recipe

    cfg = tiny_cfg(extra=["train.epochs=2"])
    bundle = generate(cfg.data.synthetic)
    train = bundle.splits["train"]
    n, batch = len(train), cfg.train.batch_size
    assert n % batch == 0  # every sample in every epoch

    def orders(run):
        seen = []
        collate = type(train).collate
        with monkeypatch.context() as m:
            m.setattr(train, "collate", lambda idx: seen.append(list(idx)) or collate(train, idx))
            Recipe(cfg, tmp_path / run, bundle=bundle).run()
        flat = [i for idx in seen for i in idx]
        return flat[:n], flat[n:]

    first, second = orders("a")
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != list(range(n)) and second != first
    assert orders("b") == (first, second)


def test_each_training_step_advances_the_learning_rate_schedule(tmp_path):
    """The recipe steps its schedule once per optimiser step: 3 epochs of 5 steps with 40 % warm-up
    (6 steps) log lr x 1 after epoch 1 (step 5 of the warm-up), x 5/9 after epoch 2 (step 10 of the
    decay to step 15) and 0 at the end. (The scheduler.step() in recipe.training_step removed: the
    rate stays at its first warm-up value.)"""
    from test_recipe import epoch_lines, tiny_cfg

    from ramer.data.synthetic import generate
    from ramer.train.recipe import Recipe

    cfg = tiny_cfg(extra=["train.epochs=3", "train.warmup=0.4"])
    Recipe(cfg, tmp_path / "run", bundle=generate(cfg.data.synthetic)).run()
    lines = epoch_lines(tmp_path / "run")
    assert [d["step"] for d in lines] == [5, 10, 15]
    assert [d["lr"] for d in lines] == pytest.approx([cfg.train.lr, cfg.train.lr * 5 / 9, 0.0])


# ---------------------------------------------------------------------- safety


class _MakesAFolder:
    """Unpickled, it makes the folder it names: proof that loading ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "in-memory"])
def test_a_native_array_holding_a_pickle_runs_nothing(tmp_path, mmap):
    """A native split's .npy that is an object array (a pickle inside) is refused, naming the file,
    and its pickle never runs, memory-mapped or read whole. (``allow_pickle=True`` in
    SceneStore.load; test_data_core's test_native_errors_name_the_file fails on it only by the
    wording of a truncated file's error; test_native_checks would better hold this.)"""
    import numpy as np
    from conftest import random_store

    from ramer.data.store import DataBundle, load_native
    from ramer.errors import RamerError

    store = random_store(n=4)
    out = tmp_path / "d"
    DataBundle({s: store for s in ("train", "valid", "test")}, store.label_names, "test", "mem").save(out)
    marker = tmp_path / "ran"
    np.save(out / "train" / "labels.npy", np.array([_MakesAFolder(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(RamerError, match="labels.npy"):
        load_native(out, mmap=mmap)
    assert not marker.exists()
