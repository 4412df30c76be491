"""AMP baseline (Ge et al., WWW 2023): robustness by adversarial masking and perturbation, trained
with the asymmetric loss.

Model: per-modality token encoders (segment position, target-scope flag and, on the target token
only, a learned target marker added) with one self-attention block over the modality's present
tokens; label queries (learned embeddings) attend to the present tokens of all modalities in the
target scope plus the target token in every modality (also where it is missing: its value is then
the learned missing vector with position and marker after the self-attention over the modality's
present tokens, no stored feature), giving one representation per label, the fused
representation ``z`` (B, C, H); a per-label linear head reads ``z``. A sample without a target
(``target == -1``) gets no marker and no extra key.

Training only (eval mode does neither):
- random modality masking: with probability ``mask_prob`` a sample loses one of the modalities
  present in its scope (chosen uniformly; a sample with a single modality keeps it);
- adversarial perturbation (FGM): in ``loss()`` the gradient ``g`` of the clean loss with respect
  to ``z`` gives ``delta = eps * g / ||g||`` (per sample), and the head is run again on
  ``z + delta``; the total is ``clean + w_adv * adversarial``.

Classification loss: asymmetric loss (Ridnik et al., ICCV 2021) with gamma- = 4, gamma+ = 0 and
probability margin (clip) 0.05 on negatives, averaged over the (B, C) entries. The asymmetric loss
is a per-label (sigmoid) loss; on single-label data both the clean and the adversarial term are
softmax cross-entropy instead (``losses.classification``) and ``probs`` is a softmax.

Axis letters: b batch, n tokens, m modality, c labels, h hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramer.batch import MODALITIES, Batch
from ramer.config import LossConfig, ModelConfig
from ramer.models import losses
from ramer.models.base import DataSpec, LossResult, label_probs
from ramer.models.late_fusion import target_mask
from ramer.models.mult import AttentionBlock, TokenEncoder, sinusoid


def asymmetric_loss(
    logits: Tensor, targets: Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05
) -> Tensor:
    """Mean over entries of ``-[y (1-p)^g+ log p + (1-y) p_m^g- log(1-p_m)]``, ``p_m = max(p-clip, 0)``."""
    p = torch.sigmoid(logits)
    log_pos = F.logsigmoid(logits)
    if clip > 0:
        p_m = (p - clip).clamp_min(0.0)
        log_neg = torch.log((torch.sigmoid(-logits) + clip).clamp(max=1.0))  # log(1 - p_m), >= log(clip)
    else:
        p_m = p
        log_neg = F.logsigmoid(-logits)
    pos = targets * (1.0 - p).pow(gamma_pos) * log_pos
    neg = (1.0 - targets) * p_m.pow(gamma_neg) * log_neg
    return -(pos + neg).mean()


def random_modality_mask(available: Tensor, prob: float) -> Tensor:
    """(B, M) bool: the modality each sample drops (at most one, only where >= 2 are available)."""
    B, M = available.shape
    score = torch.rand(B, M, device=available.device).masked_fill(~available, -1.0)
    choice = F.one_hot(score.argmax(1), M).bool()  # (B, M)
    hit = (torch.rand(B, device=available.device) < prob) & (available.sum(1) >= 2)
    return choice & hit.unsqueeze(1)


class LabelHead(nn.Module):
    """Per-label linear classifier on label representations (B, C, H) -> logits (B, C)."""

    def __init__(self, n_labels: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_labels, hidden) * hidden**-0.5)
        self.bias = nn.Parameter(torch.zeros(n_labels))

    def forward(self, z: Tensor) -> Tensor:
        return (z * self.weight).sum(-1) + self.bias


@dataclass
class AMPOutput:
    logits: Tensor  # (B, C)
    probs: Tensor  # (B, C)
    fused: Tensor  # (B, C, H) label representations fed to the head (perturbed in loss())
    dropped: Tensor  # (B, M) bool: modality masked this step (all False in eval mode)


class AMP(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        loss_cfg: LossConfig,
        spec: DataSpec,
        eps: float = 1.0,
        w_adv: float = 1.0,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
    ) -> None:
        super().__init__()
        self.single_label = spec.single_label  # softmax + cross-entropy, else sigmoids + asymmetric loss
        H, C = cfg.hidden, spec.n_labels
        self.hidden = H
        self.mask_prob = 0.0 if cfg.off("no_modality_dropout") else cfg.modality_dropout
        self.adversarial = not cfg.off("no_adversarial")
        self.eps, self.w_adv = eps, w_adv
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip
        self.encoders = nn.ModuleDict({m: TokenEncoder(spec.dims[m], H, cfg.dropout) for m in MODALITIES})
        self.modality_emb = nn.Parameter(torch.randn(len(MODALITIES), H) * 0.02)
        self.scope_emb = nn.Embedding(2, H)
        self.target_emb = nn.Parameter(torch.randn(H))  # marker added on the target token
        self.null = nn.Parameter(torch.randn(1, 1, H) * 0.02)
        self.temporal = nn.ModuleDict({m: AttentionBlock(H, cfg.heads, cfg.ffn, cfg.dropout) for m in MODALITIES})
        self.label_emb = nn.Parameter(torch.randn(C, H) * 0.02)
        self.decoder = AttentionBlock(H, cfg.heads, cfg.ffn, cfg.dropout)
        self.norm = nn.LayerNorm(H)
        self.head = LabelHead(C, H)

    def forward(self, batch: Batch) -> AMPOutput:
        B = batch.valid.shape[0]
        present = dict(batch.present)
        available = torch.stack([present[m] & batch.scope for m in MODALITIES], 1).any(2)  # (B, M)
        dropped = torch.zeros_like(available)
        if self.training and self.mask_prob > 0:
            dropped = random_modality_mask(available, self.mask_prob)
            present = {m: present[m] & ~dropped[:, k : k + 1] for k, m in enumerate(MODALITIES)}
        tmask = target_mask(batch)  # (B, N)
        pos = sinusoid(batch.segment, self.hidden) + self.scope_emb(batch.scope.long())  # (B, N, H)
        pos = pos + torch.where(tmask.unsqueeze(-1), self.target_emb, 0.0)  # (B, N, H)
        always = torch.ones(B, 1, dtype=torch.bool, device=batch.valid.device)
        null = self.null.expand(B, -1, -1)
        tokens, keys = [], []
        for k, m in enumerate(MODALITIES):
            h = self.encoders[m](batch.features[m], present[m]) + pos + self.modality_emb[k]  # (B, N, H)
            h = self.temporal[m](h, torch.cat([null, h], 1), torch.cat([always, present[m]], 1))
            tokens.append(h)
            keys.append((present[m] & batch.scope) | (tmask & ~dropped[:, k : k + 1]))  # (B, N)
        ctx = torch.cat([null, *tokens], 1)  # (B, 1+M*N, H)
        key_mask = torch.cat([always, *keys], 1)  # (B, 1+M*N)
        z = self.decoder(self.label_emb.expand(B, -1, -1), ctx, key_mask)  # (B, C, H)
        z = self.norm(z)
        logits = self.head(z)  # (B, C)
        return AMPOutput(logits=logits, probs=label_probs(logits, self.single_label), fused=z, dropped=dropped)

    def classification_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.single_label:
            return losses.classification(logits, targets, single_label=True)
        return asymmetric_loss(logits, targets, self.gamma_neg, self.gamma_pos, self.clip)

    def loss(self, out: AMPOutput, batch: Batch) -> LossResult:
        clean = self.classification_loss(out.logits, batch.labels)
        terms = {"cls": clean.detach()}
        total = clean
        if self.training and self.adversarial and torch.is_grad_enabled() and out.fused.requires_grad:
            (g,) = torch.autograd.grad(clean, out.fused, retain_graph=True, create_graph=False)
            norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]  # (B, 1, 1)
            delta = self.eps * g / norm
            adv = self.classification_loss(self.head(out.fused + delta), batch.labels)
            total = clean + self.w_adv * adv
            terms["adv"] = adv.detach()
        return LossResult(total=total, terms=terms)
