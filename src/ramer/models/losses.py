"""Every loss term of RAMer (spec MODEL.md §7) as a pure function of tensors.

Masks are boolean and broadcast against the per-element loss; a masked mean over nothing is 0
(a finite value, never NaN). All terms are computed in float32, whatever the autocast dtype.

Axis letters: b batch, m modality, k sources, c labels, h hidden, p persons / code size, i items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``x`` over the elements where ``mask`` (broadcastable) is True; 0 when there are none."""
    if mask is None:
        return x.mean()
    mask = mask.expand_as(x)
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp_min(1)


def bce(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits, averaged over ``mask``."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return masked_mean(loss, mask)


def classification(logits: Tensor, targets: Tensor, mask: Tensor | None = None, single_label: bool = False) -> Tensor:
    """The classification term of every model: logits and targets ``(..., C)``.

    Multi-label: ``bce`` over the (sample, label) entries in ``mask``.
    Single-label: softmax cross-entropy over the ``C`` labels, ``-sum_c t_c log softmax(z)_c`` with
    the target ``t = y / sum y`` (the one-hot label of a real sample; for the stack shuffle's
    virtual samples, whose label slots come from different samples, the normalised multi-hot
    row), averaged over the rows. ``mask`` broadcasts against ``logits``: a row mask ``(..., 1)``
    leaves rows out; a per-label mask ``(..., C)`` also leaves label slots out of the softmax and
    the target. A row with no positive target left (a virtual sample without a label) is left
    out; with none at all the term is 0.
    """
    if not single_label:
        return bce(logits, targets, mask)
    z, t = logits.float(), targets.float()
    if mask is not None:
        keep = mask.expand_as(z)
        z = z.masked_fill(~keep, torch.finfo(z.dtype).min)  # exp() of a left-out slot is 0
        t = torch.where(keep, t, 0.0)
    total = t.sum(-1, keepdim=True)  # (..., 1)
    log_p = z.log_softmax(-1)  # (..., C)
    ce = -torch.where(t > 0, t / total.clamp_min(1e-12) * log_p, 0.0).sum(-1)  # (...), 0 * -inf never formed
    return masked_mean(ce, total.squeeze(-1) > 0)


def feature_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """pred, target (B, M, C, H), mask (B, M): mean squared error over the masked (sample, modality)."""
    err = (pred.float() - target.float()).pow(2).mean((-1, -2))  # (B, M)
    return masked_mean(err, mask)


def modality_ce(logits: Tensor, mask: Tensor) -> Tensor:
    """Discriminator logits (B, M, C, M), mask (B, M): cross-entropy against each item's modality."""
    B, M, C, _ = logits.shape
    target = torch.arange(M, device=logits.device).view(1, M, 1).expand(B, M, C)
    loss = F.cross_entropy(logits.float().flatten(0, 2), target.flatten(), reduction="none").view(B, M, C)
    return masked_mean(loss, mask.unsqueeze(-1))


def orthogonality(specific: Tensor, common: Tensor, mask: Tensor) -> Tensor:
    """``sum_{m<n} ||s_m^T s_n||_F^2 + sum_m ||c_m^T s_m||_F^2`` per sample, on unit label vectors,
    divided by ``C^2`` (so each norm lies in [0, 1]) and averaged over the batch.

    ``||A^T B||_F^2 = <A A^T, B B^T>``: computed from the (C, C) Gram matrices of the label axis.
    specific, common (B, M, C, H); mask (B, M) selects the modalities that take part.
    """
    C = specific.shape[2]
    s = F.normalize(specific.float(), dim=-1)
    c = F.normalize(common.float(), dim=-1)
    gs = s @ s.transpose(-1, -2)  # (B, M, C, C)
    gc = c @ c.transpose(-1, -2)  # (B, M, C, C)
    w = mask.float()  # (B, M)
    pair = torch.einsum("bmij,bnij->bmn", gs, gs) * w[:, :, None] * w[:, None, :]  # (B, M, M)
    upper = torch.ones(pair.shape[1:], dtype=torch.bool, device=pair.device).triu(1)
    own = (gc * gs).sum((-1, -2)) * w  # (B, M)
    return (pair[:, upper].sum(1) + own.sum(1)).mean() / C**2


class _LogSumExpOthers(torch.autograd.Function):
    """Row-wise ``log sum_{k != i} exp(<a_i, key_k> / t)`` for unit anchors ``a`` (I, P) and unit keys
    (K, P), K >= I, where key ``i`` is anchor ``i`` itself.

    Computed in blocks of ``block`` rows that stay in cache and recomputed in the backward pass, so
    the (I, K) similarity matrix is never stored (about three times faster than autograd through
    ``logsumexp`` on CPU, and far lighter on memory). Unit vectors bound every logit by ``1/t``, so
    that fixed shift replaces the row maximum of the usual log-sum-exp.
    """

    @staticmethod
    def _block(a: Tensor, keys: Tensor, i0: int, i1: int, shift: float) -> Tensor:
        sim = torch.mm(a[i0:i1], keys.T).sub_(shift)  # (block, K), a is pre-scaled by 1/t
        sim[:, i0:i1].fill_diagonal_(-1e4)  # an anchor is not its own key
        return sim

    @staticmethod
    def forward(ctx, a: Tensor, keys: Tensor, temperature: float, block: int) -> Tensor:
        I, shift = a.shape[0], 1.0 / temperature
        a = a / temperature
        lse = a.new_empty(I)
        for i0 in range(0, I, block):
            i1 = min(I, i0 + block)
            lse[i0:i1] = _LogSumExpOthers._block(a, keys, i0, i1, shift).exp_().sum(1).clamp_min_(1e-30).log_()
        ctx.save_for_backward(a, keys, lse)
        ctx.temperature, ctx.block = temperature, block
        return lse + shift

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, keys, lse = ctx.saved_tensors  # a / t, keys, log-sum-exp minus the shift
        t, block, I = ctx.temperature, ctx.block, a.shape[0]
        grad_a, grad_keys = torch.empty_like(a), torch.zeros_like(keys)
        for i0 in range(0, I, block):
            i1 = min(I, i0 + block)
            sim = _LogSumExpOthers._block(a, keys, i0, i1, 1.0 / t)
            weight = sim.sub_(lse[i0:i1, None]).exp_().mul_(grad[i0:i1, None])  # softmax * grad
            grad_a[i0:i1] = (weight @ keys).div_(t)
            grad_keys.addmm_(weight.T, a[i0:i1])  # a is already divided by t
        return grad_a, grad_keys, None, None


def supcon(anchors: Tensor, classes: Tensor, queue: Tensor, queue_classes: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) with extra keys from a memory queue.

    anchors (I, P) unit vectors of this batch, classes (I,) ids >= 0; queue (Q, P) unit keys,
    queue_classes (Q,). Keys = the batch items except the anchor itself, plus the queue. For anchor
    ``i`` with positives ``Pos(i)`` (the keys of its class):
    ``-1/|Pos(i)| sum_p log(exp(s_ip/t) / sum_{k != i} exp(s_ik/t))``, averaged over the anchors that
    have a positive (0 when none has).

    Cost ``O(I * (I + Q))`` for the denominator (computed blockwise, never stored); the positive
    part uses ``sum_p s_ip = <a_i, sum of the keys of i's class - a_i>``, so no (I, I+Q) mask is built.
    """
    I = anchors.shape[0]
    if I == 0:
        return anchors.sum() * 0.0
    a = anchors.float()
    keys = torch.cat([a, queue.float()])  # (I+Q, P)
    key_classes = torch.cat([classes, queue_classes])  # (I+Q,)
    lse = _LogSumExpOthers.apply(a, keys, temperature, 256)  # (I,) log of the denominator
    n_classes = int(key_classes.max()) + 1
    class_sum = keys.new_zeros(n_classes, keys.shape[1]).index_add_(0, key_classes, keys)  # (n, P)
    n_pos = torch.bincount(key_classes, minlength=n_classes)[classes] - 1  # (I,)
    # index_select, not class_sum[classes]: the backward of advanced indexing with repeated indices
    # accumulates in a thread-dependent order on CPU (runs would differ); index_select's does not
    pos_logits = (a * (class_sum.index_select(0, classes) - a)).sum(-1) / temperature  # (I,) sum of s_ip / t
    mean_log_pos = (pos_logits - n_pos * lse) / n_pos.clamp_min(1)  # (I,)
    return masked_mean(-mean_log_pos, n_pos > 0)


def real_fake(real_logits: Tensor, fake_logits: Tensor, real_mask: Tensor, fake_mask: Tensor) -> Tensor:
    """Tier-2 adversary: ``BCE(D(r), 1) + BCE(D(GRL(r~)), 0)``; logits (B, M, C), masks (B, M) of the
    real features (visible modalities) and of the reconstructions (available ones)."""
    real = bce(real_logits, torch.ones_like(real_logits), real_mask.unsqueeze(-1))
    return real + bce(fake_logits, torch.zeros_like(fake_logits), fake_mask.unsqueeze(-1))


def personality_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """pred, target (B, P, d), mask (B, P): MSE over the persons with a known personality."""
    target = torch.where(mask.unsqueeze(-1), target.float(), 0.0)  # unknown rows may hold anything
    err = (pred.float() - target).pow(2).mean(-1)  # (B, P)
    return masked_mean(err, mask)
