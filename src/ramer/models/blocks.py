"""Blocks the deep baselines share (MulT, ML-GCN, HHMPN, AMP).

- ``TokenEncoder``: a per-token MLP from a modality's features to ``H``; an absent token gets the
  modality's learned ``missing`` vector instead, so its stored features are never read.
- ``AttentionBlock``: one pre-LN transformer block, queries ``x`` over keys ``ctx`` with a boolean
  key mask (``parts.attention.MaskedAttention``: dropout on the attention weights too).
- ``SelfAttentionStack``: ``depth`` such blocks of self-attention over the allowed tokens, with a
  learned always-allowed "null" key, so a row whose tokens are all masked is still defined; it can
  compute only the tokens a caller will read (``kept_first``, ``take``: gathered to the front).
- ``CrossAttentionStack``: ``depth`` blocks whose queries are updated while the keys stay the
  source sequence (MulT's crossmodal transformer), the source's null token prefixed.
- ``TemporalConv``: a 1-D convolution along each person's segments of the ``P x S`` grid.
- ``sinusoid``: the sinusoidal encoding of integer positions.

Axis letters: b batch, n tokens (person-major grid, ``n = p * S + s``), p persons, s segments,
k keys, h hidden.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramer.models.parts.attention import Dropout, MaskedAttention


class TokenEncoder(nn.Module):
    """Per-token ``LayerNorm -> Linear -> GELU -> Dropout -> Linear``; absent tokens get a learned
    ``missing`` vector instead (their features are never read, even if not finite)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.missing = nn.Parameter(torch.randn(hidden) * 0.02)

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        keep = present.unsqueeze(-1)  # (B, N, 1)
        h = self.net(torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)))  # (B, N, H)
        return torch.where(keep, h, self.missing.to(h.dtype))


class AttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x), LN(ctx))`` then ``x + FFN(LN(x))``, dropout on
    the attention weights, inside the FFN and on both residual branches.

    ``key_mask`` (B, K) is True on keys that may be attended to; every row must have one (callers
    append an always-allowed token where a row could be empty)."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden)
        self.norm_kv = nn.LayerNorm(hidden)
        self.attn = MaskedAttention(hidden, heads, dropout)
        self.norm_ff = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), Dropout(dropout), nn.Linear(ffn, hidden))
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, ctx: Tensor, key_mask: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm_q(x), self.norm_kv(ctx), key_mask))  # (B, L, H)
        return x + self.drop(self.ff(self.norm_ff(x)))


def kept_first(keep: Tensor) -> Tensor | None:
    """Token indices (B, L') that put each row's kept tokens first (in order), cut at the largest
    count in the batch; None when that gains nothing (every token kept) or while exporting (whose
    graph cannot have data-dependent sizes)."""
    if torch.compiler.is_exporting() or keep.numel() == 0 or bool(keep.all()):
        return None
    count = int(keep.sum(1).max())
    return torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :count]


def take(x: Tensor, order: Tensor) -> Tensor:
    """``x`` (B, L, ...) at the token indices ``order`` (B, L')."""
    index = order.view(*order.shape, *(1,) * (x.dim() - 2)).expand(*order.shape, *x.shape[2:])
    return x.gather(1, index)


class SelfAttentionStack(nn.Module):
    """``depth`` self-attention blocks: the allowed tokens and a learned null token are the keys;
    ``depth = 0`` is the identity.

    Every token is a query, or with ``query_mask`` only the tokens it marks (it must contain every
    key): the others come back unchanged. The marked tokens are gathered to the front and the
    sequence is cut at the largest count in the batch, the same function at a lower cost."""

    def __init__(self, depth: int, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(AttentionBlock(hidden, heads, ffn, dropout) for _ in range(depth))
        self.null = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)

    def forward(self, x: Tensor, key_mask: Tensor, query_mask: Tensor | None = None) -> Tensor:
        """x (B, L, H), key_mask (B, L) bool, query_mask (B, L) bool or None -> (B, L, H)."""
        order = None if query_mask is None or not self.blocks else kept_first(query_mask)
        if order is None:
            return self._run(x, key_mask)
        kept = take(query_mask, order)  # (B, L')
        out = self._run(take(x, order), take(key_mask, order) & kept)  # (B, L', H)
        out = x.scatter(1, order.unsqueeze(-1).expand_as(out), out)  # (B, L, H)
        return torch.where(query_mask.unsqueeze(-1), out, x)  # rows cut in with a shorter sample: as they were

    def _run(self, x: Tensor, key_mask: Tensor) -> Tensor:
        null = self.null.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, 1, H)
        keys = F.pad(key_mask, (1, 0), value=True)  # (B, 1+L)
        for block in self.blocks:
            x = block(x, torch.cat([null, x], 1), keys)
        return x


class CrossAttentionStack(nn.Module):
    """``depth`` blocks of queries ``x`` over a fixed source ``ctx`` (MulT's crossmodal transformer:
    each layer reads the source's low-level sequence again); ``depth = 0`` is the identity."""

    def __init__(self, depth: int, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(AttentionBlock(hidden, heads, ffn, dropout) for _ in range(depth))

    def forward(self, x: Tensor, ctx: Tensor, key_mask: Tensor) -> Tensor:
        """x (B, L, H), ctx (B, K, H), key_mask (B, K) bool (a row never all False) -> (B, L, H)."""
        for block in self.blocks:
            x = block(x, ctx, key_mask)
        return x


class TemporalConv(nn.Module):
    """``Conv1d(H, H, kernel)`` (no bias) along each person's segments, zero-padded to the same
    length (``kernel`` odd). Padding tokens (``valid`` False) are read as zeros, so a scene gives the
    same result whatever grid its batch pads it to."""

    def __init__(self, hidden: int, kernel: int) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"temporal convolution kernel {kernel}: expected an odd size >= 1")
        self.conv = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor, valid: Tensor, grid: tuple[int, int]) -> Tensor:
        """x (B, N, H), valid (B, N) bool, grid (P, S) with N = P * S -> (B, N, H)."""
        B, N, H = x.shape
        P, S = grid
        x = torch.where(valid.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        rows = x.reshape(B * P, S, H).transpose(1, 2)  # (B*P, H, S): one row per person
        return self.conv(rows).transpose(1, 2).reshape(B, N, H)


def sinusoid(pos: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal encoding of integer positions ``pos`` (...,) -> (..., dim), computed in float32 and
    given in ``dtype`` (the model's: a model cast to bfloat16 takes it in bfloat16)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32).unsqueeze(-1) * freq  # (..., half)
    enc = torch.cat([ang.sin(), ang.cos()], -1)
    return F.pad(enc, (0, dim - 2 * half)).to(dtype)
