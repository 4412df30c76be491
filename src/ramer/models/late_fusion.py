"""The small multimodal baseline: per-modality encoder, masked pooling over the target scope plus
the target token's own encoding, late fusion of per-modality logits, label head.

Per modality ``m``: ``LayerNorm -> Linear(d_m, H) -> GELU -> Dropout -> Linear(H, H) -> GELU`` on
each token, then ``model.layers`` of ``m`` residual token-MLP blocks ``x + Dropout(FFN(LN(x)))``
(``FFN``: ``Linear(H, ffn) -> GELU -> Dropout -> Linear(ffn, H)``; tokens never see each other),
absent tokens being encoded from zeros, never from their stored features; a masked mean over the
present tokens of the target scope, the encoding of the target token, and a ``Linear(2H, C)`` head on
``[scope mean ; target token]``. The target slot holds a learned per-modality vector where the
target token lacks ``m`` and zeros where the sample has no target (``target == -1``: the head then
reads the scope mean alone). The fused logit is the mean of the heads of the modalities present in
the scope (a modality absent from the whole scope contributes nothing); a sample with no modality
at all in its scope gets a learned bias.

Axis letters: b batch, n tokens, m modality, c labels, h hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ramer.batch import MODALITIES, Batch
from ramer.config import LossConfig, ModelConfig
from ramer.models import losses
from ramer.models.base import DataSpec, LossResult, label_probs
from ramer.models.parts.attention import Dropout


class TokenMLPBlock(nn.Module):
    """Residual per-token MLP: ``x + Dropout(Linear(GELU(Dropout(Linear(LN(x))))))``."""

    def __init__(self, hidden: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(hidden), nn.Linear(hidden, ffn), nn.GELU(), Dropout(dropout), nn.Linear(ffn, hidden)
        )
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.net(x))


@dataclass
class LateFusionOutput:
    logits: Tensor  # (B, C)
    probs: Tensor  # (B, C)
    modality_logits: Tensor  # (B, M, C)
    available: Tensor  # (B, M) bool: modality present somewhere in the target scope


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (B, N, H) over tokens where ``mask`` (B, N) is True; zero when none."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def target_mask(batch: Batch) -> Tensor:
    """(B, N) bool: True on each sample's target token only (all False where ``target == -1``)."""
    n = torch.arange(batch.valid.shape[1], device=batch.valid.device)  # (N,)
    return n.unsqueeze(0) == batch.target.unsqueeze(1)


def at_target(x: Tensor, target: Tensor) -> Tensor:
    """``x`` (B, N, H) at each sample's target token -> (B, H); zeros where ``target == -1``."""
    idx = target.clamp_min(0).view(-1, 1, 1).expand(-1, 1, x.shape[-1])  # (B, 1, H)
    got = x.gather(1, idx).squeeze(1)  # (B, H)
    return torch.where((target >= 0).unsqueeze(-1), got, torch.zeros((), dtype=x.dtype, device=x.device))


class LateFusion(nn.Module):
    uses_every_parameter = True  # a gradient at every step (tests/test_baselines.py): DDP skips its search

    def __init__(self, cfg: ModelConfig, loss_cfg: LossConfig, spec: DataSpec) -> None:
        super().__init__()
        self.single_label = spec.single_label  # softmax + cross-entropy, else sigmoids + BCE
        H, C = cfg.hidden, spec.n_labels
        self.encoders = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.LayerNorm(spec.dims[m]),
                    nn.Linear(spec.dims[m], H),
                    nn.GELU(),
                    Dropout(cfg.dropout),
                    nn.Linear(H, H),
                    nn.GELU(),
                    *(TokenMLPBlock(H, cfg.ffn, cfg.dropout) for _ in range(getattr(cfg.layers, m))),
                )
                for m in MODALITIES
            }
        )
        self.heads = nn.ModuleDict({m: nn.Linear(2 * H, C) for m in MODALITIES})
        self.target_missing = nn.Parameter(torch.randn(len(MODALITIES), H) * 0.02)  # target token lacks m
        self.empty_bias = nn.Parameter(torch.zeros(C))

    def forward(self, batch: Batch) -> LateFusionOutput:
        tmask = target_mask(batch)  # (B, N)
        has_target = (batch.target >= 0).unsqueeze(-1)  # (B, 1)
        logits, avail = [], []
        for k, m in enumerate(MODALITIES):
            present = batch.present[m]  # (B, N)
            mask = present & batch.scope  # (B, N)
            x = batch.features[m]
            h = self.encoders[m](torch.where(present.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device)))
            here = (present & tmask).any(1, keepdim=True)  # (B, 1): the target token has m
            zero = torch.zeros((), dtype=h.dtype, device=h.device)
            tgt = torch.where(here, at_target(h, batch.target), torch.where(has_target, self.target_missing[k], zero))
            logits.append(self.heads[m](torch.cat([masked_mean(h, mask), tgt], -1)))  # (B, C)
            avail.append(mask.any(1))
        stacked = torch.stack(logits, 1)  # (B, M, C)
        available = torch.stack(avail, 1)  # (B, M)
        w = available.to(stacked.dtype).unsqueeze(-1)
        n_avail = w.sum(1)  # (B, 1)
        fused = (stacked * w).sum(1) / n_avail.clamp_min(1.0)
        fused = torch.where(n_avail > 0, fused, self.empty_bias.expand_as(fused))
        probs = label_probs(fused, self.single_label)
        return LateFusionOutput(logits=fused, probs=probs, modality_logits=stacked, available=available)

    def loss(self, out: LateFusionOutput, batch: Batch) -> LossResult:
        cls = losses.classification(out.logits, batch.labels, single_label=self.single_label)
        return LossResult(total=cls, terms={"cls": cls.detach()})
