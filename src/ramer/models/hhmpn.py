"""HHMPN baseline (Zhang et al., AAAI 2021): heterogeneous hierarchical message passing between
modality nodes and label nodes.

Feature encoders: one transformer encoder per modality, RAMer's (``parts.encoders.ModalityEncoder``,
``model.layers`` of each modality: the same capacity as RAMer's encoders) over the modality's
present tokens: the feature-to-feature messages within a modality, token by token.

Nodes of one sample: three scope modality nodes (each modality's encoded present tokens
mean-pooled over the target scope, plus a modality-type embedding; a modality absent from the scope
is a masked node), three target modality nodes (each modality's encoding of the target token, plus the
modality-type embedding and a learned target-node embedding, the target marker; masked where the
target token lacks the modality or the sample has no target) and ``C`` label nodes (learned
embeddings). "Modality nodes" below are all six. Each of ``rounds`` rounds (3: the authors' CMU-MOSEI
script, ``-n_layers_enc 3 -n_layers_dec 3``) passes messages, in order, by attention blocks:

1. modality <-> modality: the modality nodes attend to each other (absent ones masked);
2. modality -> label: every label node attends to the modality nodes (absent ones masked);
3. label <-> label: the label nodes attend to each other (label correlations).

A learned always-present "null" node is appended to the modality keys, so a sample with no
modality in its scope still has a non-empty attention row. A per-label classifier reads each
label node; BCE (softmax cross-entropy on single-label data).

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
from ramer.models.blocks import AttentionBlock
from ramer.models.late_fusion import at_target, masked_mean, target_mask
from ramer.models.parts.encoders import ModalityEncoder, check_segments


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
    modality_nodes: Tensor  # (B, 2M, H): M scope nodes, then M target-token nodes
    available: Tensor  # (B, M) bool: modality present somewhere in the target scope
    target_available: Tensor  # (B, M) bool: modality present at the target token (False: no target)


class HHMPN(nn.Module):
    uses_every_parameter = True  # a gradient at every step (tests/test_baselines.py): DDP skips its search

    def __init__(self, cfg: ModelConfig, loss_cfg: LossConfig, spec: DataSpec, rounds: int = 3) -> None:
        super().__init__()
        self.single_label = spec.single_label  # softmax + cross-entropy, else sigmoids + BCE
        H, C = cfg.hidden, spec.n_labels
        self.max_segments = cfg.max_segments
        self.encoders = nn.ModuleDict(
            {
                m: ModalityEncoder(
                    spec.dims[m], H, cfg.heads, cfg.ffn, getattr(cfg.layers, m), cfg.dropout, cfg.max_segments
                )
                for m in MODALITIES
            }
        )
        self.modality_emb = nn.Parameter(torch.randn(len(MODALITIES), H) * 0.02)
        self.target_emb = nn.Parameter(torch.randn(H) * 0.02)  # node-type embedding of the target nodes
        self.null = nn.Parameter(torch.randn(1, 1, H) * 0.02)
        self.label_emb = nn.Parameter(torch.randn(C, H) * 0.02)
        self.rounds = nn.ModuleList([MessageRound(H, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(rounds)])
        self.norm = nn.LayerNorm(H)
        self.cls_weight = nn.Parameter(torch.randn(C, H) * H**-0.5)
        self.cls_bias = nn.Parameter(torch.zeros(C))

    def forward(self, batch: Batch) -> HHMPNOutput:
        check_segments(batch.grid[1], self.max_segments)
        B = batch.valid.shape[0]
        tmask = target_mask(batch)  # (B, N)
        nodes, avail, tnodes, tavail = [], [], [], []
        for m in MODALITIES:
            mask = batch.present[m] & batch.scope  # (B, N)
            h = self.encoders[m](batch.features[m], batch.present[m], batch.segment)  # (B, N, H), 0 where absent
            nodes.append(masked_mean(h, mask))  # (B, H)
            avail.append(mask.any(1))
            tnodes.append(at_target(h, batch.target))  # (B, H)
            tavail.append((batch.present[m] & tmask).any(1))
        available, target_available = torch.stack(avail, 1), torch.stack(tavail, 1)  # (B, M) each
        # a masked node (0 here: no token to pool, or the encoders' 0 at an absent target token) is never a key
        scope_nodes, target_nodes = torch.stack(nodes, 1), torch.stack(tnodes, 1)  # (B, M, H) each
        target_nodes = target_nodes + self.target_emb
        mods = torch.cat([scope_nodes, target_nodes], 1) + self.modality_emb.repeat(2, 1)  # (B, 2M, H)
        labels = self.label_emb.expand(B, -1, -1)  # (B, C, H)
        null = self.null.expand(B, -1, -1)  # (B, 1, H)
        always = torch.ones(B, 1, dtype=torch.bool, device=available.device)
        mask = torch.cat([always, available, target_available], 1)  # (B, 1+2M)
        for rnd in self.rounds:
            mods, labels = rnd(mods, labels, null, mask)
        labels = self.norm(labels)
        logits = (labels * self.cls_weight).sum(-1) + self.cls_bias  # (B, C)
        return HHMPNOutput(
            logits=logits,
            probs=label_probs(logits, self.single_label),
            label_nodes=labels,
            modality_nodes=mods,
            available=available,
            target_available=target_available,
        )

    def loss(self, out: HHMPNOutput, batch: Batch) -> LossResult:
        cls = losses.classification(out.logits, batch.labels, single_label=self.single_label)
        return LossResult(total=cls, terms={"cls": cls.detach()})
