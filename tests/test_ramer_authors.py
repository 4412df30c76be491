"""`ramer-authors` (the authors' released design) and the pile-dealing stack shuffle."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_store

from ramer.cli import main
from ramer.config import LossConfig, ModelConfig
from ramer.models import losses
from ramer.models.base import DataSpec
from ramer.models.parts import pile_order, pile_permutations
from ramer.models.ramer import RAMer
from ramer.models.ramer_authors import LOSS_WEIGHTS, RAMerAuthors

DIMS = {"text": 16, "audio": 8, "visual": 12}
C = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


def spec(personality: int | None = 7) -> DataSpec:
    return DataSpec(
        dims=dict(DIMS), n_labels=C, label_names=tuple(f"l{j}" for j in range(C)), personality_dim=personality
    )


def make(cls=RAMerAuthors, personality: int | None = 7, loss: LossConfig | None = None, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=16, heads=2, ffn=16, proj_size=8, queue_size=32, dropout=0.0, **kw)
    return cls(cfg, loss or LossConfig(), spec(personality))


def batch(n: int = 6, seed: int = 1):
    store = random_store(n=n, dims=tuple(DIMS.values()), n_labels=C, persons=(1, 3), segments=(2, 4), seed=seed)
    return store.collate(list(range(n)))


# ---------------------------------------------------------------------- pile shuffle
@pytest.mark.parametrize(
    "n, piles, expected",
    [
        # 8 cards, piles of 2: 0 2 4 6 1 3 5 7, then again with 4 piles: 0 4 1 5 2 6 3 7
        (8, 4, (0, 4, 1, 5, 2, 6, 3, 7)),
        # 10 cards, piles of 2 make 5 piles: 0 2 4 6 8 1 3 5 7 9; the second round deals into 5
        (10, 4, (0, 4, 8, 3, 7, 2, 6, 1, 5, 9)),
        # 7 cards, three piles of 2 and one of 1: 0 2 4 6 1 3 5; again with 4 piles, of 1 card each
        (7, 3, (0, 2, 4, 6, 1, 3, 5)),
        (3, 3, (0, 1, 2)),  # three modalities in three piles: the order does not change
        (3, 4, (0, 1, 2)),  # a batch smaller than the number of piles (the authors' code fails here)
        (1, 4, (0,)),
        (0, 4, ()),
    ],
)
def test_pile_order_deals_the_cards(n, piles, expected):
    assert pile_order(n, piles) == expected


def test_pile_permutations_are_the_same_for_every_label_and_source():
    sigma, rho = pile_permutations(10, 3, 4, torch.device("cpu"))
    assert sigma.shape == (4, 3, 10) and rho.shape == (4, 10, 3)
    assert (sigma == torch.tensor(pile_order(10, 4))).all()
    assert (rho == torch.tensor(pile_order(3, 3))).all()


@pytest.mark.parametrize("cls", [RAMerAuthors, RAMer])
def test_pile_shuffle_is_the_unshuffled_aggregator_loss(cls):
    """Every label gets the same permutations, so each virtual sample is one real sample (sources
    in the same order: 3 or 4 sources in 3 piles) and the shuffle term equals the aggregator loss on
    the unshuffled stack. A random shuffle mixes samples across labels."""
    b = batch()
    order = list(pile_order(b.size, 4))
    for shuffle, same in (("pile", True), ("random", False)):
        model = make(cls, shuffle=shuffle).train()
        torch.manual_seed(3)
        out = model(b)
        whole_samples = torch.allclose(out.shuffle_logits, out.agg_logits[order], atol=1e-6)
        assert whole_samples is same, shuffle
        if same:
            assert torch.equal(out.shuffle_targets, b.labels[order].unsqueeze(1).expand_as(out.shuffle_targets))
            terms = model.loss(out, b).terms
            plain = b.labels.unsqueeze(1).expand_as(out.agg_logits)
            agg = terms["agg"] if cls is RAMer else losses.bce(out.agg_logits, plain)
            shuffled = terms["shuffle"] if cls is RAMer else terms["shuffle_aug_clf"]
            assert torch.isclose(shuffled, agg, atol=1e-6)


def test_ramer_authors_shuffles_by_piles_unless_told():
    assert make().permutations is pile_permutations
    assert make(shuffle="random").permutations is not pile_permutations


# ---------------------------------------------------------------------- the model
def test_loss_terms_carry_the_authors_names_and_the_config_weights():
    weights = LossConfig(w_lsr=0.5, w_aug=0.25, w_beta_cls=2.0, w_cl=0.3, w_ae=0.7, w_cross=1.5, w_beta_mse=0.2,
                         w_shuf=0.9, w_cml=0.4, w_adv=0.05, w_diff=1e-3)  # fmt: skip
    by_name = {"lsr_clf": 0.5, "aug_clf": 0.25, "beta_clf": 2.0, "cl": 0.3, "recon_mse": 0.7, "aug_mse": 1.5,
               "beta_mse": 0.2, "shuffle_aug_clf": 0.9, "cml": 0.4, "adv_private": 0.05, "adv_common": 0.05,
               "diff": 1e-3}  # fmt: skip
    model = make(loss=weights).train()
    b = batch()
    result = model.loss(model(b), b)
    assert set(result.terms) == set(by_name)
    expected = sum(by_name[name] * value for name, value in result.terms.items())
    assert torch.isclose(result.total.detach(), expected, rtol=1e-5)


def test_every_modality_is_replaced_by_its_second_pass():
    """The prediction reads beta_m only, for present modalities too (AUTHORS_CODE.md §4, §8)."""
    model = make().eval()
    b = batch()
    with torch.no_grad():
        out = model(b)
        beta_logits = model.classifier(out.beta)
        agg = torch.sigmoid(model.aggregator(out.beta)).mean(1)
    assert torch.equal(out.logits, beta_logits.amax(1))
    assert torch.allclose(out.probs, 0.5 * (torch.sigmoid(out.logits) + agg))
    # and the features differ from the originals: nothing passes U through where it is present
    assert not torch.allclose(out.beta, out.label_features)


def test_common_branch_reads_the_reconstruction_and_private_the_originals():
    model = make().train()
    out = model(batch())
    every = torch.ones_like(out.available)
    private = losses.modality_ce(out.disc_private, every)
    common = losses.modality_ce(out.disc_common, every)
    (g_private,) = torch.autograd.grad(private, out.beta, retain_graph=True, allow_unused=True)
    (g_common,) = torch.autograd.grad(common, out.beta, retain_graph=True)
    assert g_private is None or not g_private.any()
    assert g_common.abs().sum() > 0
    (g_u,) = torch.autograd.grad(private, out.label_features, retain_graph=True)
    assert g_u.abs().sum() > 0


def test_common_classifier_reads_label_slot_zero_only():
    model = make().train()
    b = batch()
    out = model(b)
    (grad,) = torch.autograd.grad(losses.bce(out.cml_logits, b.labels), out.common)
    assert grad[:, :, 0].abs().sum() > 0
    assert not grad[:, :, 1:].any()


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_a_missing_modality_and_a_small_batch_stay_finite(n):
    """A modality with no token in any scope (text here), and batches smaller than the 4 piles."""
    model = make().train()
    b = batch(n)
    b = b.with_present({**b.present, "text": torch.zeros_like(b.present["text"])})
    out = model(b)
    result = model.loss(out, b)
    assert not out.available[:, 0].any()
    assert torch.isfinite(out.probs).all() and torch.isfinite(result.total)
    result.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_prototypes_take_one_ema_step_per_sample_in_batch_order():
    """AUTHORS_CODE.md §4: the authors' loop, ``pi <- mu pi + (1 - mu) z`` for each sample in turn
    (available modalities only), is what one training forward does to the prototypes."""
    model = make()
    model.reconstruction.prototypes.normal_()  # not the zeros at start, which hide the mu^n factor
    before = model.reconstruction.prototypes.clone()
    b = batch(8)
    b = b.with_present({**b.present, "audio": b.present["audio"] & (torch.arange(b.valid.shape[0]) % 2 == 0)[:, None]})
    out = model.train()(b)
    unit = torch.nn.functional.normalize(model.autoencoder.encode(out.label_features), dim=-1).detach()
    mu, expected = model.cfg.proto_momentum, before.clone()
    for i in range(unit.shape[0]):
        for m in range(unit.shape[1]):
            if out.available[i, m]:
                for j in range(C):
                    y = int(b.labels[i, j] > 0.5)
                    expected[m, j, y] = mu * expected[m, j, y] + (1 - mu) * unit[i, m, j]
    assert not out.available[:, 1].all()  # the loop skips some
    torch.testing.assert_close(model.reconstruction.prototypes, expected, rtol=1e-5, atol=1e-6)


def test_the_authors_layers():
    """§2: unscaled label attention with Xavier queries; §8: inner-product classifiers (no bias);
    §4: each modality's prototype weight from its own code, ``F_m`` one Linear; the aggregator
    Linear-ReLU-Linear; a dropout in the modality discriminator."""
    model = make().eval()
    b = batch()
    H = model.cfg.hidden
    g = torch.randn(2, 5, 3, H)
    keys = torch.ones(2, 5, 3, dtype=torch.bool)
    raw = torch.einsum("bnmh,mch->bmcn", g, model.labelwise.queries).softmax(-1)
    torch.testing.assert_close(model.labelwise.weights(g, keys), raw)
    assert model.labelwise.queries.abs().max() > 0.1  # Xavier-uniform, not N(0, 0.02)
    assert model.classifier.bias is None
    z = torch.nn.functional.normalize(torch.randn(4, 3, C, model.cfg.proj_size), dim=-1)
    protos = torch.nn.functional.normalize(torch.randn(3, C, 2, model.cfg.proj_size), dim=-1)
    visible = torch.ones(4, 3, dtype=torch.bool)
    w = model.reconstruction.positive_weight(z, visible, protos)
    z2 = z.clone()
    z2[:, 1:] = torch.nn.functional.normalize(torch.randn_like(z2[:, 1:]), dim=-1)
    w2 = model.reconstruction.positive_weight(z2, visible, protos)
    assert torch.equal(w[:, 0], w2[:, 0]) and not torch.equal(w[:, 1], w2[:, 1])
    assert all(isinstance(net, torch.nn.Linear) for net in model.reconstruction.cross)
    assert [type(x).__name__ for x in model.aggregator.net] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert model.aggregator.net[2].p == 0.0
    assert [type(x).__name__ for x in model.discriminator] == ["Linear", "Dropout", "ReLU", "Linear"]
    with torch.no_grad():
        assert torch.isfinite(model(b).probs).all()


def test_autoencoder_aggregator_and_cross_layers_are_xavier_initialised():
    """The authors build the auto-encoder, ``F_m`` and the aggregator as ``MLLinear``: Xavier-uniform
    weights, bound sqrt(6 / (in + out)), above nn.Linear's default 1 / sqrt(in) at these sizes."""
    model = make()  # H 16, P 8, C 5: Xavier's bound is at least 1.4 times the default's
    layers = [
        x
        for module in (model.autoencoder, model.reconstruction.cross, model.aggregator)
        for x in module.modules()
        if isinstance(x, torch.nn.Linear)
    ]
    assert len(layers) == 3 * 4 + 3 + 2
    for layer in layers:
        out, inp = layer.weight.shape
        xavier, default = (6 / (inp + out)) ** 0.5, inp**-0.5
        assert default * 1.2 < layer.weight.abs().max() <= xavier, (tuple(layer.weight.shape), xavier, default)


def test_personality_tokens_join_the_label_attention():
    """With personality, U moves when only the personality changes; without it (no data), it cannot."""
    model = make().eval()
    b = batch()
    other = torch.randn_like(b.personality)
    with torch.no_grad():
        u = model(b).label_features
        moved = model(type(b)(**{**b.__dict__, "personality": other})).label_features
    assert (u - moved).abs().max() > 1e-4


@pytest.mark.parametrize("cls", [RAMerAuthors, RAMer])
def test_an_unknown_personality_is_never_read(cls):
    """NaN in the personality rows a batch marks unknown (a hand-made batch: collate writes zeros)
    changes no output and leaves every gradient finite: the encoder reads zeros there."""
    b = batch()
    known = b.personality_present.clone()
    known[0, 0] = False  # one unknown person besides the padding's
    b = type(b)(**{**b.__dict__, "personality_present": known})
    nan = type(b)(**{**b.__dict__, "personality": torch.where(known.unsqueeze(-1), b.personality, float("nan"))})
    grads = []
    for one in (b, nan):
        model = make(cls).train()  # the same weights, queue and prototypes for both
        out = model(one)
        model.loss(out, one).total.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert [n for n, g in grads[1].items() if not torch.isfinite(g).all()] == []
    assert [n for n, g in grads[0].items() if not torch.equal(g, grads[1][n])] == []


def test_train_through_the_cli_logs_the_authors_terms(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--model", "ramer-authors", "--out", str(out)]
    sets = ["data.synthetic.n_train=48", "data.synthetic.n_valid=16", "data.synthetic.n_test=16", "train.epochs=1",
            "model.hidden=16", "model.ffn=16", "model.heads=2", "model.queue_size=32", "model.proj_size=8"]  # fmt: skip
    assert main(argv + sum((["--set", s] for s in sets), [])) == 0
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert set(LOSS_WEIGHTS) <= set(first["train"])
    assert json.loads((out / "test_metrics.json").read_text())["overall"]["n"] == 16
