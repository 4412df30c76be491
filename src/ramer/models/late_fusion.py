"""The small multimodal baseline: per-modality encoder, masked pooling over the target scope,
late fusion of per-modality logits, label head.

Per modality ``m``: ``LayerNorm -> Linear(d_m, H) -> GELU -> Linear(H, H)`` on each token, a
masked mean over the present tokens of the target scope, and a ``Linear(H, C)`` head. The fused
logit is the mean of the heads of the modalities present in the scope (a modality absent from the
whole scope contributes nothing); a sample with no modality at all in its scope gets a learned bias.

Axis letters: b batch, n tokens, c labels, h hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ramer.batch import MODALITIES, Batch
from ramer.config import LossConfig, ModelConfig
from ramer.models import losses
from ramer.models.base import DataSpec, LossResult, label_probs


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


class LateFusion(nn.Module):
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
                    nn.Dropout(cfg.dropout),
                    nn.Linear(H, H),
                    nn.GELU(),
                )
                for m in MODALITIES
            }
        )
        self.heads = nn.ModuleDict({m: nn.Linear(H, C) for m in MODALITIES})
        self.empty_bias = nn.Parameter(torch.zeros(C))

    def forward(self, batch: Batch) -> LateFusionOutput:
        logits, avail = [], []
        for m in MODALITIES:
            mask = batch.present[m] & batch.scope  # (B, N)
            h = self.encoders[m](batch.features[m])  # (B, N, H)
            logits.append(self.heads[m](masked_mean(h, mask)))  # (B, C)
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
