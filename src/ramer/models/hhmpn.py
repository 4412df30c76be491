"""HHMPN baseline (Zhang et al., AAAI 2021): heterogeneous hierarchical message passing between
modality nodes and label nodes.

Nodes of one sample: three modality nodes (each modality's tokens encoded and mean-pooled over
the target scope, plus a modality-type embedding; a modality absent from the scope is a masked
node) and ``C`` label nodes (learned embeddings). Each of ``rounds`` rounds passes messages, in
order, by attention blocks:

1. modality <-> modality: the modality nodes attend to each other (absent ones masked);
2. modality -> label: every label node attends to the modality nodes (absent ones masked);
3. label <-> label: the label nodes attend to each other (label correlations).

A learned always-present "null" node is appended to the modality keys, so a sample with no
modality in its scope still has a non-empty attention row. A per-label classifier reads each
label node; BCE.

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
from ramer.models.late_fusion import masked_mean
from ramer.models.mult import AttentionBlock, TokenEncoder


class MessageRound(nn.Module):
    """One round: modality<->modality, modality->label, label<->label."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.mod_mod = AttentionBlock(hidden, heads, ffn, dropout)
        self.mod_label = AttentionBlock(hidden, heads, ffn, dropout)
        self.label_label = AttentionBlock(hidden, heads, ffn, dropout)

    def forward(self, mods: Tensor, labels: Tensor, null: Tensor, mod_mask: Tensor) -> tuple[Tensor, Tensor]:
        keys = torch.cat([null, mods], 1)  # (B, 1+M, H)
        mods = self.mod_mod(mods, keys, mod_mask)  # (B, M, H)
        keys = torch.cat([null, mods], 1)
        labels = self.mod_label(labels, keys, mod_mask)  # (B, C, H)
        all_labels = torch.ones(labels.shape[:2], dtype=torch.bool, device=labels.device)
        labels = self.label_label(labels, labels, all_labels)  # (B, C, H)
        return mods, labels


@dataclass
class HHMPNOutput:
    logits: Tensor  # (B, C)
    probs: Tensor  # (B, C)
    label_nodes: Tensor  # (B, C, H)
    modality_nodes: Tensor  # (B, M, H)
    available: Tensor  # (B, M) bool: modality present somewhere in the target scope


class HHMPN(nn.Module):
    def __init__(self, cfg: ModelConfig, loss_cfg: LossConfig, spec: DataSpec, rounds: int = 2) -> None:
        super().__init__()
        self.single_label = spec.single_label  # softmax + cross-entropy, else sigmoids + BCE
        H, C = cfg.hidden, spec.n_labels
        self.encoders = nn.ModuleDict({m: TokenEncoder(spec.dims[m], H, cfg.dropout) for m in MODALITIES})
        self.modality_emb = nn.Parameter(torch.randn(len(MODALITIES), H) * 0.02)
        self.absent = nn.Parameter(torch.randn(len(MODALITIES), H) * 0.02)
        self.null = nn.Parameter(torch.randn(1, 1, H) * 0.02)
        self.label_emb = nn.Parameter(torch.randn(C, H) * 0.02)
        self.rounds = nn.ModuleList([MessageRound(H, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(rounds)])
        self.norm = nn.LayerNorm(H)
        self.cls_weight = nn.Parameter(torch.randn(C, H) * H**-0.5)
        self.cls_bias = nn.Parameter(torch.zeros(C))

    def forward(self, batch: Batch) -> HHMPNOutput:
        B = batch.valid.shape[0]
        nodes, avail = [], []
        for m in MODALITIES:
            mask = batch.present[m] & batch.scope  # (B, N)
            nodes.append(masked_mean(self.encoders[m](batch.features[m], batch.present[m]), mask))  # (B, H)
            avail.append(mask.any(1))
        available = torch.stack(avail, 1)  # (B, M)
        mods = torch.where(available.unsqueeze(-1), torch.stack(nodes, 1), self.absent) + self.modality_emb  # (B, M, H)
        labels = self.label_emb.expand(B, -1, -1)  # (B, C, H)
        null = self.null.expand(B, -1, -1)  # (B, 1, H)
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=available.device), available], 1)  # (B, 1+M)
        for rnd in self.rounds:
            mods, labels = rnd(mods, labels, null, mask)
        labels = self.norm(labels)
        logits = (labels * self.cls_weight).sum(-1) + self.cls_bias  # (B, C)
        return HHMPNOutput(
            logits=logits, probs=label_probs(logits, self.single_label), label_nodes=labels, modality_nodes=mods,
            available=available,
        )

    def loss(self, out: HHMPNOutput, batch: Batch) -> LossResult:
        cls = losses.classification(out.logits, batch.labels, single_label=self.single_label)
        return LossResult(total=cls, terms={"cls": cls.detach()})
