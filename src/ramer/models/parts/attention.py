"""The attention block every part shares: multi-head attention with a boolean key mask.

``key_mask`` is True on the keys a query may attend to. With ``null_key=True`` a learned key and
value are prepended and always allowed, so a query whose keys are all masked (a segment where
nobody speaks, a person who never shows a face) reads the null value instead of a softmax over
nothing; no attention row is ever empty and nothing becomes NaN.

Speed (docs/PERFORMANCE.md): on CPU, training-time dropout (``Dropout``, ``dropout``) draws its
mask from 64-bit random words, keeps it as bool and applies it through a uint8 view
(``_apply_mask``). Attention with dropout recomputes its weights in backward in float32, except
where a query has at most ``d`` keys (``_keeps_weights``: kept, no larger than q); under autocast
it keeps them in bfloat16, and every pass after the float32 softmax is in bfloat16.
Without dropout, CPU attention is the explicit ``softmax(scale * q k^T + bias) v``
(``_softmax_weights``); bfloat16 evaluation takes its scores from float32 operands
(``_score_operands``). Tiny (queries x keys) problems are broadcast products on CPU, with or
without dropout (``_few_key_attention``). Float32 weights that would pass ``SCORE_BYTES`` (long
scenes) are made a block at a time (blocks of (scene, head) pairs: the same values; of one pair's
queries: the same to float rounding): in evaluation (``_explicit_attention``)
and in float32 training with dropout (``_pair_blocks``). Other devices use
``F.scaled_dot_product_attention`` with the kernels of ``SDPA_BACKENDS``.
``zero_unless`` is the masking the other parts share: ``torch.where(keep, x, 0)``, skipped when
nothing is masked.

Axis letters: x flattened batch rows, q queries, k keys, h hidden.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[Tensor, float]:
    """A bool keep-mask with P(keep) = 1 - p (rounded to 1/65536) and its exact inverse scale."""
    cut = round(p * 65536)
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    return (words.view(torch.int16)[:n] >= cut - 32768).view(shape), 65536.0 / (65536 - cut)


def _scaled_(x: Tensor, scale: float, dtype: torch.dtype | None = None) -> Tensor:
    """``(x * scale).to(dtype)`` in one pass; in place (x is consumed) when the dtype is x's."""
    if dtype is None or dtype == x.dtype:
        return x.mul_(scale)
    return torch.mul(x, scale, out=torch.empty(x.shape, dtype=dtype, device=x.device))


def _masked(x: Tensor, keep: Tensor, consume: bool = False) -> Tensor:
    """``x * keep`` in x's dtype, two to three times as fast on CPU as the plain product
    (``benchmarks/mask_ops.py``): the bool mask is read as uint8 (a bool -> float cast is not
    vectorised, a uint8 one is). The product goes into the cast mask, or into x if ``consume``."""
    mask = keep.view(torch.uint8).to(x.dtype)
    return x.mul_(mask) if consume else mask.mul_(x)


def _apply_mask(
    x: Tensor, keep: Tensor, scale: float, dtype: torch.dtype | None = None, consume: bool = False
) -> Tensor:
    """``(x * keep * scale).to(dtype)``, the same values (``_masked``, then ``_scaled_``).
    ``consume``: x may be overwritten."""
    return _scaled_(_masked(x, keep, consume), scale, dtype)


class _BoolMaskDropout(torch.autograd.Function):
    """Dropout that draws its mask from 16-bit slices of 64-bit random words (about ten times
    faster than ``bernoulli_`` on CPU) and keeps it as bool for backward (a quarter of the memory
    of ``F.dropout``'s float mask on CPU). The keep probability is ``1 - p`` rounded to 1/65536 and
    the scale is its exact inverse, so the output is unbiased."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        keep, ctx.scale = _keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        return _apply_mask(x, keep, ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return _apply_mask(grad, keep, ctx.scale), None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout`` in distribution; on CPU faster and lighter (``_BoolMaskDropout``), elsewhere
    ``torch.native_dropout`` (fused, bool mask). Randomness comes from torch's global generator."""
    if not training or p <= 0.0 or x.numel() == 0:
        return x
    if p >= 1.0:
        return x * 0.0
    if x.device.type == "cpu" and round(p * 65536) < 65536:
        return _BoolMaskDropout.apply(x.contiguous(), p)
    return torch.native_dropout(x, p, True)[0]


def zero_unless(keep: Tensor, x: Tensor) -> Tensor:
    """``torch.where(keep, x, 0.0)``, or ``x`` itself when ``keep`` is all True (as on CMU-MOSEI,
    where every token is valid and present): the same values without a pass over ``x``. Not while
    exporting, whose graph cannot depend on the data."""
    if not torch.compiler.is_exporting() and bool(keep.all()):
        return x
    return torch.where(keep, x, 0.0)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same state, same repr) computed by ``dropout`` above."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training) if not self.inplace else super().forward(x)


# The float32 (Q x K) weights CPU attention holds at once: in evaluation and in float32 training
# with dropout, a call whose weights pass it makes them a block at a time (long scenes).
SCORE_BYTES = 256 * 2**20


def _pair_blocks(key_mask: Tensor, q: Tensor, k: Tensor, *more: Tensor):
    """(rows, key_mask of those rows, [q, k, *more] of those rows) over blocks of (scene, head) pairs
    whose float32 (Q x K) weights hold at most ``SCORE_BYTES`` (one pair at least). key_mask (X, K),
    q (X, heads, Q, d), k (X, heads, K, d), more (X, heads, ., .) (v, the dropout mask); a block's
    tensors have one pair per row, (pairs, 1, ...), as ``_flat_pairs`` views a result."""
    X, heads, Q, _ = q.shape
    pairs = max(1, SCORE_BYTES // (4 * Q * k.shape[2]))
    flat = [_flat_pairs(t) for t in (q, k, *more)]
    mask = key_mask.repeat_interleave(heads, 0)  # (X*heads, K)
    for a in range(0, X * heads, pairs):
        rows = slice(a, a + pairs)
        yield rows, mask[rows], [t[rows] for t in flat]


def _flat_pairs(t: Tensor) -> Tensor:
    """(X, heads, L, e) -> (X*heads, 1, L, e), a view where ``t`` is contiguous: one (scene, head)
    pair per row."""
    return t.reshape(-1, 1, *t.shape[2:])


def _fits(q: Tensor, k: Tensor) -> bool:
    """Whether the float32 (Q x K) weights of the whole call hold at most ``SCORE_BYTES``."""
    return 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= SCORE_BYTES


def _weights_backward(
    q, k, v, key_mask, keep, scale: float, grad: Tensor, w: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The float32 backward of ``_AttentionWithDropout`` -> grad q, k, v; ``w``: the forward's
    weights where it kept them (not written to), else they are recomputed, to the same bits."""
    if w is None:
        w = _softmax_weights(q, k, key_mask)  # float32: recomputed
    grad_v = torch.matmul(_apply_mask(w, keep, scale, v.dtype).transpose(-1, -2), grad)
    grad_w = _apply_mask(torch.matmul(grad, v.transpose(-1, -2)).float(), keep, scale, consume=True)
    grad_w.sub_((grad_w * w).sum(-1, keepdim=True))  # softmax': w * (grad_w - sum(grad_w * w))
    grad_s = _scaled_(grad_w.mul_(w), q.shape[-1] ** -0.5, q.dtype)  # w * grad_w, into grad_w
    return torch.matmul(grad_s, k), torch.matmul(grad_s.transpose(-1, -2), q), grad_v


def _keeps_weights(q: Tensor, k: Tensor) -> bool:
    """Whether float32 training keeps the forward's weights for backward instead of recomputing
    them: where a query has at most ``d`` keys, so the (Q x K) weights take no more memory than q
    (which is saved anyway). Softmax over a row of fewer keys than a vector register holds (16 on
    AVX-512) is many times slower per element on CPU than over a longer one, so for these calls
    the recomputation was most of the backward's cost."""
    return k.shape[2] <= q.shape[3]


class _AttentionWithDropout(torch.autograd.Function):
    """``softmax(q k^T / sqrt(d), allowed keys)`` with dropout on the weights, times ``v``.

    The explicit form of ``F.scaled_dot_product_attention(..., dropout_p=p)`` (which takes its
    unfused path on CPU anyway), saving q, k, v and the bool dropout mask. In float32 the (Q x K)
    weights are recomputed in backward, as flash attention does (memory), unless a query has at
    most ``d`` keys (``_keeps_weights``: then they are kept, the same values); where the weights of
    the whole call would pass ``SCORE_BYTES`` (long scenes), forward and backward make them for a
    block of (scene, head) pairs at a time (``_pair_blocks``: the same products, so the same
    values; only the bool mask is whole). For bfloat16 inputs (autocast) they are kept in
    bfloat16, which costs half as much and saves the recomputation, and after the float32
    softmax every (Q x K) pass stays in bfloat16: the dropout scale goes on
    the (Q x d) output and gradients, and the softmax derivative is two in-place passes. (A
    mixed-dtype elementwise op, such as float32 times a bool mask written to bfloat16, takes a
    slower path on CPU than a cast plus a same-dtype op.) A row always has an allowed key in RAMer
    (summary token or null key); one without would get uniform weights, not NaN.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, p: float) -> Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # head-major: batched GEMMs without copies
        ctx.bf16 = q.dtype == torch.bfloat16
        if ctx.bf16:  # from here on every (Q x K) pass is in bfloat16, one dtype per op
            w = _softmax_weights(q, k, key_mask)  # (X, heads, Q, K), float32
            keep, ctx.scale = _keep_mask(w.shape, p, w.device)
            kept = w.to(torch.bfloat16)
            ctx.save_for_backward(q, k, v, key_mask, keep, kept)
            return torch.matmul(_masked(kept, keep), v).mul_(ctx.scale)  # the scale on the smaller side
        if _fits(q, k):
            w = _softmax_weights(q, k, key_mask)  # (X, heads, Q, K)
            keep, ctx.scale = _keep_mask(w.shape, p, w.device)
            kept = _keeps_weights(q, k)  # else recomputed in backward
            ctx.save_for_backward(q, k, v, key_mask, keep, w if kept else None)
            return torch.matmul(_apply_mask(w, keep, ctx.scale, v.dtype, consume=not kept), v)
        keep, ctx.scale = _keep_mask(q.shape[:3] + k.shape[2:3], p, q.device)  # (X, heads, Q, K), as above
        ctx.save_for_backward(q, k, v, key_mask, keep, None)
        out = torch.empty_like(q, dtype=v.dtype)  # (X, heads, Q, d)
        for rows, mb, (qb, kb, vb, keepb) in _pair_blocks(key_mask, q, k, v, keep):
            w = _softmax_weights(qb, kb, mb)  # (pairs, 1, Q, K)
            _flat_pairs(out)[rows] = torch.matmul(_apply_mask(w, keepb, ctx.scale, v.dtype, consume=True), vb)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, key_mask, keep, kept = ctx.saved_tensors
        grad = grad.to(v.dtype)
        if kept is not None and not ctx.bf16:  # the float32 weights, kept (_keeps_weights)
            return (*_weights_backward(q, k, v, key_mask, keep, ctx.scale, grad, kept), None, None)
        if kept is not None:  # bfloat16: dw = scale * keep * G with G = grad v^T; P = w * keep * G
            wk = _masked(kept, keep)  # w * keep
            grad_v = torch.matmul(wk.transpose(-1, -2), grad).mul_(ctx.scale)
            wk.mul_(torch.matmul(grad, v.transpose(-1, -2)))  # P
            wk.addcmul_(kept, wk.sum(-1, keepdim=True), value=-1)  # softmax': (P - w * sum(P)) = ds / scale
            c = ctx.scale * q.shape[-1] ** -0.5
            return torch.matmul(wk, k).mul_(c), torch.matmul(wk.transpose(-1, -2), q).mul_(c), grad_v, None, None
        if _fits(q, k):
            return (*_weights_backward(q, k, v, key_mask, keep, ctx.scale, grad), None, None)
        grads = [torch.empty_like(t) for t in (q, k, v)]
        flat_grad = _flat_pairs(grad.contiguous())
        for rows, mb, (qb, kb, vb, keepb) in _pair_blocks(key_mask, q, k, v, keep):
            for g, gb in zip(grads, _weights_backward(qb, kb, vb, mb, keepb, ctx.scale, flat_grad[rows])):
                _flat_pairs(g)[rows] = gb
        return (*grads, None, None)


def _score_operands(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """q and k as the scores of CPU evaluation take them: contiguous (batched GEMMs without copies)
    and, for bfloat16, widened to float32 in the same pass. Small bfloat16 batched products are
    slower than float32 ones on CPU, and their bfloat16 scores would need widening for the softmax
    anyway. (In training, where backward needs more products of these shapes, the measured
    balance was the other way, and scores stay bfloat16.)"""
    if q.dtype == torch.bfloat16:
        return tuple(t.to(torch.float32, memory_format=torch.contiguous_format) for t in (q, k))
    return q.contiguous(), k.contiguous()


def _key_bias(key_mask: Tensor) -> Tensor:
    """(X, K) float32: 0 on the keys a query may attend to, the lowest float on the others."""
    bias = torch.zeros(key_mask.shape, dtype=torch.float32, device=key_mask.device)
    return bias.masked_fill_(~key_mask, torch.finfo(torch.float32).min)


def _softmax_weights(q: Tensor, k: Tensor, key_mask: Tensor) -> Tensor:
    """softmax over the allowed keys of q k^T / sqrt(d), computed in float32 -> (X, heads, Q, K).

    The scale and the mask are one pass, ``bias + scale * scores`` (``_key_bias``; a masked fill
    over the (Q x K) scores costs more than the whole pass); for bfloat16 scores that pass also widens
    them: softmax is both exacter and, on CPU, faster in float32. A masked key's term is the lowest
    float whatever its score, so a row with no allowed key gets uniform weights."""
    scores = torch.matmul(q, k.transpose(-1, -2))  # (X, heads, Q, K)
    # float32 without autograd: no second (Q x K) buffer
    in_place = scores.dtype == torch.float32 and not scores.requires_grad and not torch.compiler.is_exporting()
    bias = _key_bias(key_mask)[:, None, None, :]  # (X, 1, 1, K)
    return torch.add(bias, scores, alpha=q.shape[-1] ** -0.5, out=scores if in_place else None).softmax(-1)


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
    """``softmax(scale * q k^T + bias) v`` on CPU: q (X, heads, Q, d), k / v (X, heads, K, d),
    key_mask (X, K) -> (X, heads, Q, d). Without autograd (evaluation), when the float32 scores of
    the whole call would pass ``SCORE_BYTES``, they are made for a block of (scene, head) pairs at a
    time, and where one pair's (Q x K) scores pass it, for a block of its queries at a time: the
    memory of one block instead of ``X x heads`` (Q x K) matrices (a batch of 256 scenes of 2,800
    visual tokens at 8 heads would hold 64 GB at once; one scene of 17,500, 1.2 GB per head). A
    softmax row is one query's, so blocks of (scene, head) pairs give the same values (the same
    matrix products), and blocks of queries the same to float rounding (products of other shapes);
    tests/test_extreme_shapes.py."""
    if torch.is_grad_enabled() or torch.compiler.is_exporting() or _fits(q, k):
        w = _softmax_weights(*_score_operands(q, k), key_mask)  # (X, heads, Q, K)
        return torch.matmul(w.to(v.dtype), v.contiguous())
    Q = q.shape[2]
    y = q.new_empty(q.shape, dtype=v.dtype)  # (X, heads, Q, d), contiguous: _flat_pairs views it
    queries = max(1, SCORE_BYTES // (4 * k.shape[2]))  # a pair's queries per block: all where one pair fits
    for rows, mb, (qb, kb, vb) in _pair_blocks(key_mask, q, k, v):
        for c in range(0, Q, queries):
            cols = slice(c, c + queries)
            w = _softmax_weights(*_score_operands(qb[:, :, cols], kb), mb)  # (pairs, 1, queries, K)
            _flat_pairs(y)[rows, :, cols] = torch.matmul(w.to(v.dtype), vb.contiguous())
    return y


def _few_key_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, heads: int, p: float = 0.0) -> Tensor:
    """Attention for tiny (Q x K) problems, as broadcast products in the (tokens, heads, d) layout.

    q (X, Q, H), k / v (X, K, H), key_mask (X, K) -> (X, Q, H); dropout ``p`` on the weights. The
    same function as the batched matrix products, without the head-major copies and the
    per-matrix overhead that dominate when each row has one or two queries and keys
    (inter-personal attention with one person per scene, as in CMU-MOSEI). Autograd's record of
    it is small: the (X, Q, K, heads) weights and their bool dropout mask."""
    X, Q, H = q.shape
    d = H // heads
    qh = q.view(X, Q, 1, heads, d)
    kh, vh = (t.unflatten(-1, (heads, d)).unsqueeze(1) for t in (k, v))  # (X, 1, K, heads, d)
    scores = (qh * kh).sum(-1)  # (X, Q, K, heads); a bfloat16 sum accumulates in float32, as matmul does
    w = torch.add(_key_bias(key_mask)[:, None, :, None], scores, alpha=d**-0.5).softmax(2)
    w = dropout(w, p, p > 0)
    return (w.to(v.dtype).unsqueeze(-1) * vh).sum(2).view(X, Q, H)  # (X, Q, heads, d) -> (X, Q, H)


def _attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, p: float) -> Tensor:
    """q (X, heads, Q, d), k / v (X, heads, K, d), key_mask (X, K) bool -> (X, heads, Q, d)."""
    return _AttentionWithDropout.apply(q, k, v, key_mask, p)


FEW_KEYS = 6  # queries x keys up to which CPU attention uses _few_key_attention

# The kernels ``F.scaled_dot_product_attention`` may choose off CPU (None: all, torch's own choice).
# Not cuDNN's: for bfloat16 on Hopper torch picks it first, and it builds a plan for every new
# shape (13 ms of CPU per call; batch shapes vary with their scenes), which made bf16 training on
# an H200 five times slower than with the other kernels (benchmarks/cuda_train.py, PERFORMANCE.md §7).
SDPA_BACKENDS: list[SDPBackend] | None = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class MaskedAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, null_key: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.null_k = nn.Parameter(torch.zeros(dim)) if null_key else None
        self.null_v = nn.Parameter(torch.zeros(dim)) if null_key else None

    def forward(self, query: Tensor, keys: Tensor, key_mask: Tensor) -> Tensor:
        """query (X, Q, H), keys (X, K, H), key_mask (X, K) bool -> (X, Q, H)."""
        X, Q, H = query.shape
        if self._only_the_null_key(query, keys, key_mask):
            return self._null_key_only(query, keys)
        q = self.q(query)  # (X, Q, H)
        k, v = self.kv(keys).chunk(2, dim=-1)  # (X, K, H) each
        if self.null_k is not None:
            k = torch.cat([self.null_k.to(k.dtype).expand(X, 1, H), k], 1)  # (X, 1+K, H)
            v = torch.cat([self.null_v.to(v.dtype).expand(X, 1, H), v], 1)
            key_mask = torch.cat([key_mask.new_ones(X, 1), key_mask], 1)  # (X, 1+K)
        p = self.dropout if self.training else 0.0
        if Q * k.shape[1] <= FEW_KEYS and q.device.type == "cpu" and not torch.compiler.is_exporting():
            return self.out(_few_key_attention(q, k, v, key_mask, self.heads, p))
        d = H // self.heads
        q, k, v = (t.unflatten(-1, (self.heads, d)).transpose(1, 2) for t in (q, k, v))  # (X, heads, L, d)
        if p > 0 and q.device.type == "cpu":  # CPU SDPA with dropout is unfused: the lighter explicit form
            y = _attention_with_dropout(q, k, v, key_mask, p)  # (X, heads, Q, d)
        elif q.device.type == "cpu":  # faster than CPU SDPA in float32, and far faster in bfloat16
            y = _explicit_attention(q, k, v, key_mask)  # (X, heads, Q, d)
        else:
            with sdpa_kernel(SDPA_BACKENDS) if SDPA_BACKENDS is not None else contextlib.nullcontext():
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(X, Q, H))

    def _only_the_null_key(self, query: Tensor, keys: Tensor, key_mask: Tensor) -> bool:
        """Whether ``_null_key_only`` gives this call's result: a null key, no other key allowed, the
        CPU batched path, not exporting, not bfloat16 training (its null_v gradient would round)."""
        return (
            self.null_k is not None
            and query.device.type == "cpu"
            and query.shape[1] * (keys.shape[1] + 1) > FEW_KEYS
            and not torch.compiler.is_exporting()
            and not (self.training and torch.is_autocast_enabled("cpu"))
            and not bool(key_mask.any())
        )

    def _null_key_only(self, query: Tensor, keys: Tensor) -> Tensor:
        """The CPU batched path's result when no key of the call is allowed (a modality absent from
        the whole batch, as audio and visual of a text-only corpus): the softmax is exactly 1 on the
        null key and 0 elsewhere, so each head returns the null value, times its dropout keep and
        scale. The same values, the same random draw (the full weights' mask, its null column
        used) and the same exact-zero gradients for q, kv, null_k and the inputs, without the
        products (the speed it gives on text-only data: docs/PERFORMANCE.md §2).
        Only null_v's gradient is summed in another order: float32 rounding (in bfloat16 training
        that would be bfloat16 rounding, so there the full path runs)."""
        X, Q, H = query.shape
        heads, d = self.heads, H // self.heads
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else self.null_v.dtype
        null_v = self.null_v.to(dtype).view(1, heads, 1, d)
        p = self.dropout if self.training else 0.0
        if p > 0:  # float32 training (bfloat16 training takes the full path)
            keep, scale = _keep_mask(torch.Size((X, heads, Q, keys.shape[1] + 1)), p, query.device)
            y = keep[..., :1].contiguous().view(torch.uint8).to(dtype).mul_(scale) * null_v  # (X, heads, Q, d)
        else:
            y = null_v.expand(X, heads, Q, d).contiguous()  # a strided input would take another GEMM path
        out = self.out(y.transpose(1, 2).reshape(X, Q, H))
        unread = (query.sum() + keys.sum() + self.null_k.sum()) * 0.0
        for layer in (self.q, self.kv):
            unread = unread + (layer.weight.sum() + layer.bias.sum()) * 0.0
        return out + unread.to(out.dtype)  # each gets its exact-zero gradient, as in the full path
