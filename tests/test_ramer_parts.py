"""RAMer's parts against slow reference implementations (loops here, in the tests only)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ramer.models.losses import bce, feature_mse, orthogonality, personality_mse, real_fake, supcon
from ramer.models.parts import (
    Aggregator,
    ContrastiveMemory,
    CrossReconstruction,
    LabelWiseAttention,
    MaskedAttention,
    contrastive_items,
    fuse_max,
    grad_reverse,
    identity_permutations,
    modality_dropout,
    random_permutations,
    shuffle_stack,
)
from ramer.models.parts.context import GridAttention, ModalityCompletion

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


def test_gradient_reversal_function():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * w)


def test_prototype_update_equals_a_slow_loop():
    torch.manual_seed(0)
    M, C, P, B, mu = 3, 4, 5, 9, 0.9
    rec = CrossReconstruction(M, C, 8, P, mu)
    rec.prototypes.copy_(torch.randn(M, C, 2, P))
    start = rec.prototypes.clone()
    z = F.normalize(torch.randn(B, M, C, P), dim=-1)
    available = torch.rand(B, M) < 0.7
    available[:, 2] = False  # a modality with no sample at all keeps its prototypes
    labels = (torch.rand(B, C) < 0.4).float()
    labels[:, 0] = 1.0  # label 0 has no negative sample
    rec._update_prototypes(*rec.prototype_sums(z, available, labels))
    ref = start.clone()
    for m in range(M):
        for j in range(C):
            for y in (0, 1):
                rows = [b for b in range(B) if available[b, m] and int(labels[b, j]) == y]
                if rows:
                    mean = torch.stack([z[b, m, j] for b in rows]).mean(0)
                    ref[m, j, y] = mu * start[m, j, y] + (1 - mu) * mean
    torch.testing.assert_close(rec.prototypes, ref)
    assert torch.equal(rec.prototypes[2], start[2]) and torch.equal(rec.prototypes[:, 0, 0], start[:, 0, 0])


def reference_supcon(anchors, classes, queue, queue_classes, t):
    keys = torch.cat([anchors, queue])
    key_classes = torch.cat([classes, queue_classes])
    per_anchor = []
    for i in range(len(anchors)):
        others = [k for k in range(len(keys)) if k != i]
        logits = torch.stack([anchors[i] @ keys[k] / t for k in others])
        log_prob = logits - torch.logsumexp(logits, 0)
        pos = [n for n, k in enumerate(others) if key_classes[k] == classes[i]]
        if pos:
            per_anchor.append(-log_prob[pos].mean())
    return torch.stack(per_anchor).mean()


def test_supcon_with_empty_queue_equals_reference():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(30, 6), dim=-1).requires_grad_()
    c = torch.randint(0, 5, (30,))
    c[0] = 99  # an anchor without positives is left out
    empty, empty_c = torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)
    got = supcon(a, c, empty, empty_c, 0.07)
    (g_got,) = torch.autograd.grad(got, a)
    want = reference_supcon(a, c, empty, empty_c, 0.07)
    (g_want,) = torch.autograd.grad(want, a)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-4)


def test_supcon_with_queue_equals_reference_and_is_linear_in_queue():
    torch.manual_seed(1)
    a = F.normalize(torch.randn(300, 6), dim=-1).requires_grad_()  # more than one block of rows
    c = torch.randint(0, 8, (300,))
    q = F.normalize(torch.randn(20, 6), dim=-1)
    qc = torch.randint(0, 8, (20,))
    got = supcon(a, c, q, qc, 0.1)
    (g_got,) = torch.autograd.grad(got, a)
    want = reference_supcon(a[:40], c[:40], torch.cat([a[40:], q]).detach(), torch.cat([c[40:], qc]), 0.1)
    # the reference on all anchors is slow; check all anchors with a dense (but loop-free) version
    keys = torch.cat([a, q])
    logits = a @ keys.T / 0.1
    logits = logits.masked_fill(torch.eye(300, 320, dtype=torch.bool), float("-inf"))
    log_prob = logits.log_softmax(1)
    pos = (c[:, None] == torch.cat([c, qc])[None]) & ~torch.eye(300, 320, dtype=torch.bool)
    dense = -(torch.where(pos, log_prob, 0.0).sum(1) / pos.sum(1).clamp_min(1))[pos.any(1)].mean()
    (g_dense,) = torch.autograd.grad(dense, a)
    torch.testing.assert_close(got, dense)
    torch.testing.assert_close(g_got, g_dense, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(want)


def test_supcon_degenerate_inputs_are_finite():
    a = F.normalize(torch.randn(1, 4), dim=-1).requires_grad_()
    out = supcon(a, torch.tensor([0]), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 0.07)
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(a.grad).all()
    none = supcon(
        torch.zeros(0, 4, requires_grad=True),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        0.07,
    )
    assert none.item() == 0.0


def test_queue_is_a_ring_buffer():
    torch.manual_seed(0)
    mem = ContrastiveMemory(5, 2)
    mem._enqueue(torch.ones(3, 2), torch.tensor([1, 2, 3]))
    items, cls = mem.snapshot()
    assert items.shape == (3, 2) and cls.tolist() == [1, 2, 3]
    mem._enqueue(2 * torch.ones(4, 2), torch.tensor([4, 5, 6, 7]))
    assert mem.queue_classes.tolist() == [6, 7, 3, 4, 5] and int(mem.queue_ptr) == 2
    mem._enqueue(torch.randn(9, 2), torch.arange(10, 19))  # more than fits: a random subset of 5
    assert sorted(mem.queue_classes.tolist()) == sorted(set(mem.queue_classes.tolist()))
    assert all(10 <= k < 19 for k in mem.queue_classes.tolist())


def test_identity_shuffle_equals_unshuffled_loss():
    torch.manual_seed(0)
    B, K, C, H = 5, 4, 3, 6
    stack, labels = torch.randn(B, K, C, H), (torch.rand(B, C) < 0.5).float()
    mask = torch.rand(B, K) < 0.8
    agg = Aggregator(C, H, 0.0)
    sigma, rho = identity_permutations(B, K, C, stack.device)
    t, y, m = shuffle_stack(stack, labels, mask, sigma, rho)
    plain = bce(agg(stack), labels.unsqueeze(1).expand(B, K, C), mask.unsqueeze(-1))
    assert bce(agg(t), y, m).item() == plain.item()


def test_random_shuffle_matches_its_definition():
    torch.manual_seed(0)
    B, K, C, H = 6, 4, 3, 2
    stack, labels, mask = torch.randn(B, K, C, H), (torch.rand(B, C) < 0.5).float(), torch.rand(B, K) < 0.7
    sigma, rho = random_permutations(B, K, C, stack.device)
    assert (sigma.sort(-1).values == torch.arange(B)).all() and (rho.sort(-1).values == torch.arange(K)).all()
    t, y, m = shuffle_stack(stack, labels, mask, sigma, rho)
    for b in range(B):
        for k in range(K):
            for j in range(C):
                sb, sk = sigma[j, k, b], rho[j, b, k]
                assert torch.equal(t[b, k, j], stack[sb, sk, j])
                assert y[b, k, j] == labels[sb, j] and m[b, k, j] == mask[sb, sk]


def test_orthogonality_matches_its_definition():
    torch.manual_seed(0)
    B, M, C, H = 2, 3, 4, 5
    s, c = torch.randn(B, M, C, H), torch.randn(B, M, C, H)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    got = orthogonality(s, c, mask)
    sn, cn = F.normalize(s, dim=-1), F.normalize(c, dim=-1)
    total = 0.0
    for b in range(B):
        for m in range(M):
            if not mask[b, m]:
                continue
            total += (cn[b, m].T @ sn[b, m]).pow(2).sum()
            for n in range(m + 1, M):
                if mask[b, n]:
                    total += (sn[b, m].T @ sn[b, n]).pow(2).sum()
    torch.testing.assert_close(got, total / B / C**2)


def test_feature_mse_is_the_mean_over_hidden_and_labels_of_the_masked_pairs():
    """Reconstruction error: per (sample, modality) the mean squared error over labels and hidden
    units, then the mean over the pairs in the mask (a left-out modality adds nothing)."""
    pred = torch.zeros(2, 2, 1, 2)
    target = torch.tensor([[[[1.0, 3.0]], [[7.0, 7.0]]], [[[2.0, 0.0]], [[9.0, 9.0]]]])
    mask = torch.tensor([[True, False], [True, False]])
    # sample 0: (1 + 9) / 2 = 5; sample 1: (4 + 0) / 2 = 2; mean of the two pairs = 3.5
    assert feature_mse(pred, target, mask).item() == pytest.approx(3.5)


def test_real_fake_adds_the_real_and_the_fake_terms():
    """The tier-2 adversary loss is BCE(real, 1) over the visible modalities plus BCE(fake, 0)
    over the available ones; each term counts (dropping the fake one changes the loss)."""
    real_logits, fake_logits = torch.tensor([[[0.0], [2.0]]]), torch.tensor([[[1.0], [-3.0]]])
    real_mask, fake_mask = torch.tensor([[True, False]]), torch.tensor([[True, True]])
    real = math.log(2.0)  # log(1 + e^-0); the masked-out logit 2.0 adds nothing
    fake = (math.log1p(math.exp(1.0)) + math.log1p(math.exp(-3.0))) / 2
    assert real_fake(real_logits, fake_logits, real_mask, fake_mask).item() == pytest.approx(real + fake)


def test_personality_mse_ignores_nan_in_unknown_rows():
    """A person with no known personality may hold NaN in the target (a blank cell): the loss and
    its gradient stay finite and equal those with that row zeroed."""
    target = torch.tensor([[[1.0, 2.0], [float("nan"), float("nan")]]])
    mask = torch.tensor([[True, False]])
    pred = torch.zeros(1, 2, 2, requires_grad=True)
    loss = personality_mse(pred, target, mask)
    loss.backward()
    assert loss.item() == pytest.approx(2.5)  # (1 + 4) / 2 over the one known person
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.tolist() == [[[-1.0, -2.0], [0.0, 0.0]]]


def test_null_key_keeps_empty_rows_finite():
    att = MaskedAttention(8, 2, 0.0, null_key=True)
    q = torch.randn(3, 2, 8, requires_grad=True)
    out = att(q, torch.randn(3, 4, 8), torch.zeros(3, 4, dtype=torch.bool))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()


def _reference_attention(att: MaskedAttention, query, keys, key_mask):
    """softmax(q k^T / sqrt(d)) v over the allowed keys, head by head, in float64."""
    q = att.q(query).double()
    k, v = (t.double() for t in att.kv(keys).chunk(2, dim=-1))
    if att.null_k is not None:
        X, _, H = k.shape
        k = torch.cat([att.null_k.double().expand(X, 1, H), k], 1)
        v = torch.cat([att.null_v.double().expand(X, 1, H), v], 1)
        key_mask = torch.cat([key_mask.new_ones(X, 1), key_mask], 1)
    d = q.shape[-1] // att.heads
    heads = []
    for h in range(att.heads):
        sl = slice(h * d, (h + 1) * d)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / d**0.5  # (X, Q, K)
        scores = scores.masked_fill(~key_mask[:, None, :], -1e300)
        heads.append(scores.softmax(-1) @ v[..., sl])
    return att.out(torch.cat(heads, -1).to(query.dtype))


@pytest.mark.parametrize("n_queries,n_keys", [(1, 1), (1, 2), (2, 2), (3, 4), (6, 9)])
@pytest.mark.parametrize("null_key", [False, True])
@pytest.mark.parametrize("few", [0, 10**6])
def test_masked_attention_equals_reference(n_queries, n_keys, null_key, few, monkeypatch):
    """Both CPU forms without dropout (broadcast products for tiny problems, batched matrix
    products otherwise, forced here by FEW_KEYS) equal the textbook attention; a row with no
    allowed key and no null key gets uniform weights."""
    import ramer.models.parts.attention as attention

    monkeypatch.setattr(attention, "FEW_KEYS", few)
    torch.manual_seed(n_queries * 10 + n_keys)
    att = MaskedAttention(16, 4, 0.0, null_key=null_key).eval()
    query, keys = torch.randn(7, n_queries, 16), torch.randn(7, n_keys, 16)
    mask = torch.rand(7, n_keys) < 0.6
    mask[0] = False
    mask[1] = True
    with torch.no_grad():
        got = att(query, keys, mask)
        torch.testing.assert_close(got, _reference_attention(att, query, keys, mask), atol=1e-5, rtol=1e-5)
        if not null_key:  # nothing allowed: the mean of the values
            mean_v = att.out(att.kv(keys[:1]).chunk(2, dim=-1)[1].mean(1, keepdim=True))
            torch.testing.assert_close(got[:1], mean_v.expand_as(got[:1]), atol=1e-5, rtol=1e-5)
        bf16 = att.to(torch.bfloat16)(query.bfloat16(), keys.bfloat16(), mask).float()
    assert (bf16 - got).abs().max() < 0.05


def _with_and_without_shortcut(run, monkeypatch):
    """``run()`` with the null-key-only shortcut, then with the full path (the shortcut's guard off)."""
    shortcut = run()
    monkeypatch.setattr(MaskedAttention, "_only_the_null_key", lambda self, *args: False)
    full = run()
    monkeypatch.undo()
    return shortcut, full


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_no_allowed_key_shortcut_is_the_full_path(dropout, monkeypatch):
    """A call with no allowed key (a modality absent from a whole batch) skips the products: the
    same output to the bit, in training the same random draw after it, the same exact-zero gradients
    (as tensors, not None: AdamW's weight decay still steps them) and null_v's up to summation order."""
    att = MaskedAttention(16, 4, dropout, null_key=True)
    with torch.no_grad():
        att.null_k.normal_(), att.null_v.normal_()
    query, keys = torch.randn(5, 3, 16), torch.randn(5, 4, 16)
    mask = torch.zeros(5, 4, dtype=torch.bool)
    assert att._only_the_null_key(query, keys, mask) and not att._only_the_null_key(query, keys, ~mask)

    def train_step():
        torch.manual_seed(0)
        att.zero_grad(set_to_none=True)
        q, k = query.clone().requires_grad_(), keys.clone().requires_grad_()
        out = att.train()(q, k, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = {n: p.grad for n, p in att.named_parameters()} | {"query": q.grad, "keys": k.grad}
        return out.detach(), torch.rand(3), grads

    (out, after, grads), (ref, ref_after, ref_grads) = _with_and_without_shortcut(train_step, monkeypatch)
    assert torch.equal(out, ref) and torch.equal(after, ref_after)  # the same dropout draw, no other
    for name, grad in ref_grads.items():
        assert grads[name] is not None, name
        if name == "null_v":
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(grads[name], grad), name
    with torch.no_grad():
        evals = _with_and_without_shortcut(lambda: att.eval()(query, keys, mask), monkeypatch)
        bf16 = _with_and_without_shortcut(
            lambda: att.to(torch.bfloat16)(query.bfloat16(), keys.bfloat16(), mask), monkeypatch
        )
    assert torch.equal(*evals) and torch.equal(*bf16)
    att.float().train()
    with torch.autocast("cpu", torch.bfloat16):  # bfloat16 training: the full path (null_v's rounding)
        assert not att._only_the_null_key(query, keys, mask)


def test_off_cpu_attention_keeps_cudnn_sdpa_off(monkeypatch):
    """Off CPU, attention calls SDPA with cuDNN's kernel disabled (attention.SDPA_BACKENDS), and
    the global setting is as before afterwards. The meta device takes the off-CPU branch on any
    machine; tests/test_cuda.py checks the kernels a real bf16 step runs."""
    import ramer.models.parts.attention as attention

    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_sdpa)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    att = MaskedAttention(16, 2, 0.0).to("meta").eval()
    x, mask = torch.empty(3, 4, 16, device="meta"), torch.ones(3, 4, dtype=torch.bool, device="meta")
    assert att(x, x, mask).shape == (3, 4, 16)
    assert seen == [False] and torch.backends.cuda.cudnn_sdp_enabled() == before


@pytest.mark.parametrize("few", [0, 10**6])
def test_attention_dropout_is_unbiased_and_trains(few, monkeypatch):
    """With dropout on the weights (training), both CPU forms average to the eval output (the
    output projection is linear) and pass gradients to the query, keys and values."""
    import ramer.models.parts.attention as attention

    monkeypatch.setattr(attention, "FEW_KEYS", few)
    torch.manual_seed(3)
    att = MaskedAttention(16, 4, 0.5, null_key=True)
    query, keys = torch.randn(5, 1, 16), torch.randn(5, 1, 16, requires_grad=True)
    mask = torch.tensor([True, False, True, True, False]).unsqueeze(1)
    with torch.no_grad():
        expected = att.eval()(query, keys, mask)
        att.train()
        draws = torch.stack([att(query, keys, mask) for _ in range(4000)])
    assert not torch.allclose(draws[0], expected)  # dropout is on
    torch.testing.assert_close(draws.mean(0), expected, atol=0.03, rtol=0)
    att(query.requires_grad_(), keys, mask).square().sum().backward()
    assert query.grad.abs().sum() > 0 and keys.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_with_dropout_gradients_equal_float64(dtype):
    """The explicit attention with dropout (weights recomputed in float32, kept in bfloat16)
    against autograd through the textbook formula in float64, with the same dropout mask."""
    from ramer.models.parts.attention import _AttentionWithDropout, _keep_mask

    torch.manual_seed(0)
    X, heads, L, d = 3, 2, 6, 4
    q, k, v = (torch.randn(X, heads, L, d).to(dtype).requires_grad_() for _ in range(3))
    key_mask = torch.rand(X, L) < 0.6
    key_mask[:, 0] = True
    grad = torch.randn(X, heads, L, d).to(dtype)
    torch.manual_seed(5)
    y = _AttentionWithDropout.apply(q, k, v, key_mask, 0.3)
    y.backward(grad)
    torch.manual_seed(5)  # the same mask: nothing else draws before it
    keep, scale = _keep_mask((X, heads, L, L), 0.3, q.device)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    scores = (q64 @ k64.transpose(-1, -2) / d**0.5).masked_fill(~key_mask[:, None, None, :], -1e300)
    y64 = (scores.softmax(-1) * keep * scale) @ v64
    y64.backward(grad.double())
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    torch.testing.assert_close(y.double(), y64, **tol)
    for got, ref in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        torch.testing.assert_close(got.double(), ref, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_masks_apply_as_the_plain_product(dtype):
    """``_apply_mask`` (the mask read as uint8) gives the values of ``(x * keep * scale).to(out)``
    to the bit, in place or not, with or without a cast; ``zero_unless`` those of ``torch.where``."""
    from ramer.models.parts.attention import _apply_mask, _keep_mask, zero_unless

    torch.manual_seed(0)
    x = torch.randn(6, 5, 7, dtype=dtype)
    keep, scale = _keep_mask(x.shape, 0.3, x.device)
    assert 0 < keep.sum() < keep.numel()
    for out in (None, torch.bfloat16, torch.float32):
        expected = (x * keep * scale).to(out or dtype)
        got = _apply_mask(x, keep, scale, out)
        assert got.dtype == expected.dtype and torch.equal(got, expected)
        assert torch.equal(_apply_mask(x.clone(), keep, scale, out, consume=True), expected)
    x[0, 0, 0] = float("nan")
    assert zero_unless(torch.ones(6, 5, 1, dtype=torch.bool), x) is x
    some = torch.rand(6, 5, 1) < 0.5
    some[0, 0] = False
    assert torch.equal(zero_unless(some, x), torch.where(some, x, 0.0))


def test_labelwise_attention_without_keys_is_zero():
    att = LabelWiseAttention(3, 4, 8)
    g = torch.randn(2, 5, 3, 8)
    keys = torch.rand(2, 5, 3) < 0.5
    keys[0, :, 1] = False
    r = att(g, keys)
    assert torch.equal(r[0, 1], torch.zeros(4, 8)) and torch.isfinite(r).all()


def test_labelwise_target_prior_weighs_the_target_token():
    """The target token's score gets the learned bonus; a sample without a target gets none."""
    torch.manual_seed(0)
    att = LabelWiseAttention(3, 4, 8, target_prior=2.0)
    g = torch.randn(2, 5, 3, 8)
    keys = torch.ones(2, 5, 3, dtype=torch.bool)
    r = att(g, keys, torch.tensor([2, -1]))
    scores = torch.einsum("bnmh,mch->bmcn", g, att.queries.detach()) / 8**0.5  # (B, M, C, N)
    bonus = torch.zeros(2, 1, 1, 5)
    bonus[0, 0, 0, 2] = 2.0
    expected = torch.einsum("bmcn,bnmh->bmch", (scores + bonus).softmax(-1), g)
    torch.testing.assert_close(r, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(att(g, keys, torch.tensor([2, -1]))[1], att(g, keys)[1])  # no target: no bonus


def test_fuse_max_and_modality_dropout():
    logits = torch.tensor([[[1.0, -2.0], [3.0, -5.0]], [[1.0, 2.0], [3.0, 4.0]]])  # (B=2, M=2, C=2)
    mask = torch.tensor([[False, True], [False, False]])
    assert fuse_max(logits, mask).tolist() == [[3.0, -5.0], [2.0, 3.0]]  # no modality: the mean
    torch.manual_seed(0)
    avail = torch.rand(200, 3) < 0.6
    dropped = modality_dropout(avail, 0.99)
    assert (dropped <= avail).all() and ((avail & ~dropped).any(1) == avail.any(1)).all()


def test_the_prototype_weight_of_a_modality_reads_the_other_visible_ones():
    """w+ of modality m is the mean over the other visible modalities of how positive their codes
    look; where no other modality is visible, m's own code's. (``torch.where(others > 0, ...)``
    dropped, or m's own code left in the mean, in CrossReconstruction.positive_weight.)"""
    torch.manual_seed(0)
    rec = CrossReconstruction(3, 2, 8, 4, 0.9)
    protos = torch.randn(3, 2, 2, 4)  # (M, C, 2, P)
    z = F.normalize(torch.randn(2, 3, 2, 4), dim=-1)  # (B, M, C, P)
    visible = torch.tensor([[True, True, True], [True, False, False]])
    own = torch.einsum("bmcp,mcyp->bmcy", z, protos).softmax(-1)[..., 1]  # (B, M, C)
    w = rec.positive_weight(z, visible, protos)  # (B, M, C)
    expected = torch.stack([(own[0].sum(0) - own[0]) / 2, own[1, 0].expand(3, 2)])
    torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-6)


def test_completion_fills_only_the_missing_modalities_of_a_token():
    """§2.3's cross-modality completion gives a stand-in to each modality missing at a token; a
    present modality keeps its own features. (The ``torch.where(present, own, ...)`` dropped in
    ModalityCompletion.forward.)"""
    torch.manual_seed(0)
    completion = ModalityCompletion(8, 2, 3, 0.0)
    u = torch.randn(2, 5, 3, 8)  # (B, N, M, H)
    present = torch.rand(2, 5, 3) < 0.5
    present[0, 0], present[0, 1] = True, False  # a complete token and one with nothing present
    out = completion(u, present, torch.ones(2, 5, dtype=torch.bool), None, None)
    assert torch.equal(out[present], u[present])
    assert (out[~present] != u[~present]).any(-1).all()


def test_grid_attention_takes_no_missing_token_as_a_key():
    """Inter- and intra-personal attention read only present tokens of the modality: moving the
    features of the missing ones leaves every present token's output as it was. (``valid`` for
    ``present`` as the keys of GridAttention's inter or intra step.)"""
    torch.manual_seed(0)
    grid = GridAttention(8, 2, 0.0)
    u = torch.randn(2, 3, 4, 8)  # (B, P, S, H)
    present = torch.rand(2, 3, 4) < 0.5
    valid = torch.ones(2, 3, 4, dtype=torch.bool)
    moved = torch.where(present.unsqueeze(-1), u, u + 10 * torch.randn_like(u))
    a, b = grid(u, present, valid), grid(moved, present, valid)
    assert torch.equal(a[present], b[present])


def test_contrastive_items_are_the_visible_real_and_the_available_reconstructed_codes():
    """Items: the unit real code of each visible (sample, modality), then the unit reconstructed code of
    each available one, each label slot an item of class ``2 (m C + j) + y``, against a loop.
    (``2 *`` dropped from the class, or the real mask taken for the reconstructed items.)"""
    torch.manual_seed(0)
    B, M, C, P = 3, 3, 2, 4
    real, rec = torch.randn(B, M, C, P), torch.randn(B, M, C, P)
    labels = torch.tensor([[1, 0], [0, 1], [1, 1]])
    visible = torch.tensor([[True, False, True], [True, True, False], [False, False, True]])
    available = torch.tensor([[True, True, True], [True, True, False], [False, True, True]])
    items, classes = contrastive_items(real, rec, visible, available, labels)
    want_items, want_classes = [], []
    for codes, mask in ((real, visible), (rec, available)):
        for b, m, j in zip(*torch.nonzero(mask.unsqueeze(-1).expand(B, M, C), as_tuple=True)):
            want_items.append(F.normalize(codes[b, m, j], dim=-1))
            want_classes.append(int(2 * (m * C + j) + labels[b, j]))
    torch.testing.assert_close(items, torch.stack(want_items))
    assert classes.tolist() == want_classes
