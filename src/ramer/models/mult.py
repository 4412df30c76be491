"""MulT baseline (Tsai et al., ACL 2019): pairwise crossmodal transformers.

1. Input: per modality, each token's features go through a per-token MLP to ``H`` (a token absent
   in the modality gets the modality's learned "missing" vector instead, so features under a
   False presence mask are never read), then the paper's temporal 1-D convolution along each
   person's segments (kernel ``model.mult_kernels``; padding reads as zeros). Then the position:
   the segment's sinusoidal encoding, a learned flag "belongs to the target scope" and, on the
   target token only, a learned target marker (nothing where the sample has no target).
2. Crossmodal transformers: for each target modality ``t`` and each source ``s != t``, ``D``
   pre-LN blocks whose queries are ``t``'s sequence and whose keys are ``s``'s input sequence
   (the same at every layer, as in the paper); absent source tokens are key-masked and a learned
   always-present "null" token per source keeps every row non-empty.
3. The two streams into ``t`` are concatenated, projected back to ``H`` and passed through ``D``
   self-attention blocks over the valid tokens (the paper's self-attention transformer), then
   LayerNorm.
4. Read-out: each of the three streams is mean-pooled over the target scope and read at the target
   token (zeros without a target); the 6 vectors are concatenated and fed to the MLP head (BCE;
   softmax cross-entropy on single-label data).

``D = max(model.layers)``: the paper has one depth for every transformer (Table 5: D = 4). A
target token absent in ``t`` is read out like any other missing token: its stream is what the
missing vector, its neighbours (convolution), position and marker collected from the others.

Axis letters: b batch, n tokens (person-major grid), m modality, c labels, h hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ramer.batch import MODALITIES, Batch
from ramer.config import LossConfig, ModelConfig
from ramer.models import losses
from ramer.models.base import DataSpec, LossResult, label_probs
from ramer.models.blocks import (
    CrossAttentionStack,
    SelfAttentionStack,
    TemporalConv,
    TokenEncoder,
    kept_first,
    sinusoid,
    take,
)
from ramer.models.late_fusion import at_target, masked_mean, target_mask
from ramer.models.parts.attention import Dropout


@dataclass
class MulTOutput:
    logits: Tensor  # (B, C)
    probs: Tensor  # (B, C)
    pooled: Tensor  # (B, M, H): per-target-modality representation of the scope
    target_read: Tensor  # (B, M, H): per-target-modality representation of the target token (0: none)


class MulT(nn.Module):
    uses_every_parameter = True  # a gradient at every step (tests/test_baselines.py): DDP skips its search

    def __init__(self, cfg: ModelConfig, loss_cfg: LossConfig, spec: DataSpec) -> None:
        super().__init__()
        self.single_label = spec.single_label  # softmax + cross-entropy, else sigmoids + BCE
        H, C = cfg.hidden, spec.n_labels
        self.hidden = H
        D = max(getattr(cfg.layers, m) for m in MODALITIES)  # one depth, as in the paper
        self.encoders = nn.ModuleDict({m: TokenEncoder(spec.dims[m], H, cfg.dropout) for m in MODALITIES})
        self.convs = nn.ModuleDict({m: TemporalConv(H, getattr(cfg.mult_kernels, m)) for m in MODALITIES})
        self.scope_emb = nn.Embedding(2, H)
        self.target_emb = nn.Parameter(torch.randn(H))  # marker added on the target token
        self.null = nn.ParameterDict({m: nn.Parameter(torch.randn(1, 1, H) * 0.02) for m in MODALITIES})
        self.pairs = [(t, s) for t in MODALITIES for s in MODALITIES if s != t]
        self.cross = nn.ModuleDict(
            {f"{s}_to_{t}": CrossAttentionStack(D, H, cfg.heads, cfg.ffn, cfg.dropout) for t, s in self.pairs}
        )
        self.merge = nn.ModuleDict({t: nn.Linear(2 * H, H) for t in MODALITIES})
        self.self_attn = nn.ModuleDict(
            {t: SelfAttentionStack(D, H, cfg.heads, cfg.ffn, cfg.dropout) for t in MODALITIES}
        )
        self.norm_out = nn.LayerNorm(H)
        self.head = nn.Sequential(
            nn.Linear(2 * len(MODALITIES) * H, H), nn.GELU(), Dropout(cfg.dropout), nn.Linear(H, C)
        )

    def forward(self, batch: Batch) -> MulTOutput:
        B = batch.valid.shape[0]
        scope = self.scope_emb(batch.scope.long())
        pos = sinusoid(batch.segment, self.hidden, scope.dtype) + scope  # (B, N, H)
        pos = pos + torch.where(target_mask(batch).unsqueeze(-1), self.target_emb, 0.0)  # (B, N, H)
        tokens = {}
        for m in MODALITIES:
            h = self.encoders[m](batch.features[m], batch.present[m])  # (B, N, H), missing vector where absent
            tokens[m] = self.convs[m](h, batch.valid, batch.grid) + pos  # (B, N, H)
        always = torch.ones(B, 1, dtype=torch.bool, device=batch.valid.device)
        sources = {}  # s -> its null token and present tokens (gathered to the front: the same keys, fewer)
        for s in MODALITIES:
            order = kept_first(batch.present[s])
            ctx, keys = (
                (tokens[s], batch.present[s])
                if order is None
                else (take(tokens[s], order), take(batch.present[s], order))
            )
            sources[s] = (
                torch.cat([self.null[s].expand(B, -1, -1), ctx], 1),
                torch.cat([always, keys], 1),
            )  # (B, 1+K, ..)
        pooled, read = [], []
        for t in MODALITIES:
            streams = []
            for s in MODALITIES:
                if s != t:
                    streams.append(self.cross[f"{s}_to_{t}"](tokens[t], *sources[s]))  # (B, N, H)
            h = self.merge[t](torch.cat(streams, -1))  # (B, N, H)
            h = self.norm_out(self.self_attn[t](h, batch.valid))  # (B, N, H)
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
