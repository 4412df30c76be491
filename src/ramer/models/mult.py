"""MulT baseline (Tsai et al., ACL 2019): pairwise cross-modal transformers.

For each target modality ``t`` and each other (source) modality ``s``, a cross-modal block lets the
tokens of ``t`` (queries) attend to the tokens of ``s`` (keys / values); absent source tokens are
key-padded, and a learned always-present "null" token per source modality keeps every attention row
non-empty. The two cross-modal streams into ``t`` are concatenated, projected back to ``H`` and
passed through one self-attention block over the valid tokens. Each stream is mean-pooled over
the target scope and also read at the target token; the three pooled vectors and the three
target-token vectors are concatenated and fed to the label head (BCE; softmax cross-entropy on
single-label data). A sample without a target (``target == -1``) has zeros in the target-token
slots.

Tokens are the ``P x S`` grid of the scene: a token's position is its segment (sinusoidal
encoding) plus a learned flag "belongs to the target scope" plus, on the target token only, a
learned target marker (nothing is added where the sample has no target). A token absent in a
modality gets that modality's learned "missing" embedding, so features under a False presence
mask are never read (a target token absent in ``t`` is read out like any other missing token: its
stream is what the missing embedding, position and marker collected from the other modalities).

Axis letters: b batch, n tokens, m modality, c labels, h hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramer.batch import MODALITIES, Batch
from ramer.config import LossConfig, ModelConfig
from ramer.models import losses
from ramer.models.base import DataSpec, LossResult, label_probs
from ramer.models.late_fusion import at_target, masked_mean, target_mask


class TokenEncoder(nn.Module):
    """Per-token ``LayerNorm -> Linear -> GELU -> Dropout -> Linear``; absent tokens get a learned
    ``missing`` vector instead (their features are never read, even if not finite)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.missing = nn.Parameter(torch.randn(hidden) * 0.02)

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        keep = present.unsqueeze(-1)  # (B, N, 1)
        h = self.net(torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)))  # (B, N, H)
        return torch.where(keep, h, self.missing.to(h.dtype))


class Attention(nn.Module):
    """Multi-head attention of queries ``x`` (B, L, H) over ``ctx`` (B, K, H); ``key_mask`` (B, K)
    True where a key may be attended to (no dropout on the attention weights)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        assert hidden % heads == 0, f"hidden {hidden} is not a multiple of heads {heads}"
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, ctx: Tensor, key_mask: Tensor) -> Tensor:
        B, L, H = x.shape
        q = self.q(x).view(B, L, self.heads, -1).transpose(1, 2)  # (B, h, L, d)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, h, K, d) each
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])  # (B, h, L, d)
        return self.out(a.transpose(1, 2).reshape(B, L, H))


class AttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x), LN(ctx))`` then ``x + FFN(LN(x))``.

    ``key_mask`` (B, K) is True on keys that may be attended to; every row must have one (callers
    append an always-present token where a row could be empty)."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden)
        self.norm_kv = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads)
        self.norm_ff = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, ctx: Tensor, key_mask: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm_q(x), self.norm_kv(ctx), key_mask))
        return x + self.drop(self.ff(self.norm_ff(x)))


def sinusoid(pos: Tensor, dim: int) -> Tensor:
    """Sinusoidal encoding of integer positions ``pos`` (...,) -> (..., dim)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32).unsqueeze(-1) * freq  # (..., half)
    enc = torch.cat([ang.sin(), ang.cos()], -1)
    return F.pad(enc, (0, dim - 2 * half))


@dataclass
class MulTOutput:
    logits: Tensor  # (B, C)
    probs: Tensor  # (B, C)
    pooled: Tensor  # (B, M, H): per-target-modality representation of the scope
    target_read: Tensor  # (B, M, H): per-target-modality representation of the target token (0: none)


class MulT(nn.Module):
    def __init__(self, cfg: ModelConfig, loss_cfg: LossConfig, spec: DataSpec) -> None:
        super().__init__()
        self.single_label = spec.single_label  # softmax + cross-entropy, else sigmoids + BCE
        H, C = cfg.hidden, spec.n_labels
        self.hidden = H
        self.encoders = nn.ModuleDict({m: TokenEncoder(spec.dims[m], H, cfg.dropout) for m in MODALITIES})
        self.scope_emb = nn.Embedding(2, H)
        self.target_emb = nn.Parameter(torch.randn(H))  # marker added on the target token
        self.null = nn.ParameterDict({m: nn.Parameter(torch.randn(1, 1, H) * 0.02) for m in MODALITIES})
        self.pairs = [(t, s) for t in MODALITIES for s in MODALITIES if s != t]
        self.cross = nn.ModuleDict(
            {f"{s}_to_{t}": AttentionBlock(H, cfg.heads, cfg.ffn, cfg.dropout) for t, s in self.pairs}
        )
        self.merge = nn.ModuleDict({t: nn.Linear(2 * H, H) for t in MODALITIES})
        self.self_attn = nn.ModuleDict({t: AttentionBlock(H, cfg.heads, cfg.ffn, cfg.dropout) for t in MODALITIES})
        self.norm_out = nn.LayerNorm(H)
        self.head = nn.Sequential(
            nn.Linear(2 * len(MODALITIES) * H, H), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(H, C)
        )

    def forward(self, batch: Batch) -> MulTOutput:
        B = batch.valid.shape[0]
        pos = sinusoid(batch.segment, self.hidden) + self.scope_emb(batch.scope.long())  # (B, N, H)
        pos = pos + torch.where(target_mask(batch).unsqueeze(-1), self.target_emb, 0.0)  # (B, N, H)
        tokens = {m: self.encoders[m](batch.features[m], batch.present[m]) + pos for m in MODALITIES}
        always = torch.ones(B, 1, dtype=torch.bool, device=batch.valid.device)
        pooled, read = [], []
        for t in MODALITIES:
            streams = []
            for s in MODALITIES:
                if s == t:
                    continue
                ctx = torch.cat([self.null[s].expand(B, -1, -1), tokens[s]], 1)  # (B, 1+N, H)
                keys = torch.cat([always, batch.present[s]], 1)  # (B, 1+N)
                streams.append(self.cross[f"{s}_to_{t}"](tokens[t], ctx, keys))  # (B, N, H)
            h = self.merge[t](torch.cat(streams, -1))  # (B, N, H)
            h = self.self_attn[t](h, h, batch.valid)  # (B, N, H)
            h = self.norm_out(h)  # (B, N, H)
            pooled.append(masked_mean(h, batch.scope))  # (B, H)
            read.append(at_target(h, batch.target))  # (B, H)
        pooled_t, read_t = torch.stack(pooled, 1), torch.stack(read, 1)  # (B, M, H) each
        logits = self.head(torch.cat([pooled_t.flatten(1), read_t.flatten(1)], -1))  # (B, C)
        return MulTOutput(
            logits=logits, probs=label_probs(logits, self.single_label), pooled=pooled_t, target_read=read_t
        )

    def loss(self, out: MulTOutput, batch: Batch) -> LossResult:
        cls = losses.classification(out.logits, batch.labels, single_label=self.single_label)
        return LossResult(total=cls, terms={"cls": cls.detach()})
