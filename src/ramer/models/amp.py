"""AMP baseline (Ge et al., WWW 2023): robustness by adversarial masking and perturbation, trained
with the asymmetric loss.

Model (the authors' released ``MMERModel``, read on our token grid):
1. per modality, a per-token encoder (an absent token gets the modality's learned "missing"
   vector) plus the position: segment encoding, target-scope flag, modality embedding and, on the
   target token only, a learned target marker;
2. uni-modal encoders: ``model.layers`` of the modality self-attention blocks over the modality's
   present tokens (queries: those and the target token);
3. a joint ("tri-modal") encoder: ``max(model.layers)`` self-attention blocks over the tokens of all
   three modalities (queries and keys: every present token and the target token in every modality;
   the other tokens are never read);
4. the emotion decoder: one block (the authors' ``n_de = 1``) in which learned label queries attend
   to the present tokens of the target scope plus the target token in every modality (also where it
   is missing: its value is then the missing vector with position and marker after the encoders, no
   stored feature), giving ``z`` (B, C, H); a per-label linear head reads ``z``.
A sample without a target (``target == -1``) gets no marker and no extra key.

Training only (eval mode does neither):
- adversarial masking: a masker (``Linear(H, 1)`` per modality, the authors' scorer) scores every
  token from the uni-modal encoders' clean output (detached: the masker's objective does not reach
  the encoders); ``budget_mask`` turns the scores into soft masks ``a`` in [0, 1) whose sum over a
  sample's present tokens of a modality is at most ``amp_mask_ratio`` times their number; a masked
  token's encoding moves to the missing vector, ``e + a (missing - e)``, and the whole model runs
  again on the masked tokens. The masked pass's loss is added with weight ``loss.w_amp_mask``; the
  masker sees it through a gradient reversal layer (coefficient ``grl_lambda``, the authors' 0.1),
  so it learns to hide what the classifier needs most (it maximises the loss the classifier
  minimises);
- adversarial perturbation (FGM): in ``loss()`` the gradient ``g`` of the clean loss with respect
  to ``z`` gives ``delta = eps * g / ||g||`` (per sample; ``eps`` = ``model.amp_eps``, 1.0), and
  the head is run again on ``z + delta``; the total is ``clean + w_adv * adversarial + w_amp_mask * masked``.

Classification loss: asymmetric loss (Ridnik et al., ICCV 2021) with gamma- = 4, gamma+ = 0 and
probability margin (clip) 0.05 on negatives, averaged over the (B, C) entries. The asymmetric loss
is a per-label (sigmoid) loss; on single-label data every term is softmax cross-entropy instead
(``losses.classification``) and ``probs`` is a softmax.

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
from ramer.models.blocks import AttentionBlock, SelfAttentionStack, TokenEncoder, sinusoid
from ramer.models.late_fusion import target_mask
from ramer.models.parts.adversarial import grad_reverse


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


def budget_mask(scores: Tensor, present: Tensor, ratio: float) -> Tensor:
    """Soft masks (B, N) in [0, 1) from masker scores (B, N): ``a = sigmoid(score)`` on present tokens
    (0 elsewhere), scaled down where needed so that ``sum_n a <= ratio * (number of present tokens)``
    per sample. With ``ratio < 1`` a sample's tokens of a modality can never be hidden all at once:
    at least ``(1 - ratio)`` of their mass stays visible."""
    a = torch.where(present, torch.sigmoid(scores), torch.zeros((), dtype=scores.dtype, device=scores.device))
    budget = ratio * present.sum(1, keepdim=True).to(a.dtype)  # (B, 1)
    scale = (budget / a.sum(1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)  # (B, 1)
    return a * scale


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
    masked_logits: Tensor  # (B, C) of the adversarially masked pass (eval mode, or no masking: logits)
    mask: Tensor  # (B, M, N) soft mask of each token this step (all zero in eval mode)


class AMP(nn.Module):
    uses_every_parameter = True  # a gradient at every step (tests/test_baselines.py): DDP skips its search

    def __init__(
        self,
        cfg: ModelConfig,
        loss_cfg: LossConfig,
        spec: DataSpec,
        w_adv: float = 1.0,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        grl_lambda: float = 0.1,
    ) -> None:
        super().__init__()
        self.single_label = spec.single_label  # softmax + cross-entropy, else sigmoids + asymmetric loss
        H, C = cfg.hidden, spec.n_labels
        self.hidden = H
        self.mask_ratio = 0.0 if cfg.off("no_modality_dropout") else cfg.amp_mask_ratio
        self.w_mask = loss_cfg.w_amp_mask
        self.grl_lambda = grl_lambda  # the masker's gradient is -grl_lambda times the masked loss's
        self.adversarial = not cfg.off("no_adversarial")
        self.eps, self.w_adv = cfg.amp_eps, w_adv
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip
        args = (H, cfg.heads, cfg.ffn, cfg.dropout)
        self.encoders = nn.ModuleDict({m: TokenEncoder(spec.dims[m], H, cfg.dropout) for m in MODALITIES})
        self.modality_emb = nn.Parameter(torch.randn(len(MODALITIES), H) * 0.02)
        self.scope_emb = nn.Embedding(2, H)
        self.target_emb = nn.Parameter(torch.randn(H))  # marker added on the target token
        self.unimodal = nn.ModuleDict({m: SelfAttentionStack(getattr(cfg.layers, m), *args) for m in MODALITIES})
        self.joint = SelfAttentionStack(max(getattr(cfg.layers, m) for m in MODALITIES), *args)
        self.masker = nn.ModuleDict({m: nn.Linear(H, 1) for m in MODALITIES})
        self.null = nn.Parameter(torch.randn(1, 1, H) * 0.02)
        self.label_emb = nn.Parameter(torch.randn(C, H) * 0.02)
        self.decoder = AttentionBlock(*args)
        self.norm = nn.LayerNorm(H)
        self.head = LabelHead(C, H)

    def forward(self, batch: Batch) -> AMPOutput:
        tmask = target_mask(batch)  # (B, N)
        scope = self.scope_emb(batch.scope.long())
        pos = sinusoid(batch.segment, self.hidden, scope.dtype) + scope  # (B, N, H)
        pos = pos + torch.where(tmask.unsqueeze(-1), self.target_emb, 0.0)  # (B, N, H)
        pos = {m: pos + self.modality_emb[k] for k, m in enumerate(MODALITIES)}  # (B, N, H) each
        enc = {m: self.encoders[m](batch.features[m], batch.present[m]) for m in MODALITIES}  # (B, N, H) each
        z, uni = self._fuse(batch, {m: enc[m] + pos[m] for m in MODALITIES}, tmask)
        logits = self.head(z)  # (B, C)
        masked_logits = logits
        mask = torch.zeros(len(MODALITIES), *tmask.shape, dtype=z.dtype, device=z.device)  # (M, B, N)
        if self.training and self.mask_ratio > 0:
            masks = []
            for m in MODALITIES:
                score = self.masker[m](uni[m].detach()).squeeze(-1)  # (B, N): the masker reads, never trains, uni
                masks.append(budget_mask(grad_reverse(score, self.grl_lambda), batch.present[m], self.mask_ratio))
            mask = torch.stack(masks)  # (M, B, N)
            masked_tokens = {
                m: enc[m] + mask[k].unsqueeze(-1) * (self.encoders[m].missing - enc[m]) + pos[m]
                for k, m in enumerate(MODALITIES)
            }
            masked_logits = self.head(self._fuse(batch, masked_tokens, tmask)[0])  # (B, C)
        return AMPOutput(
            logits=logits,
            probs=label_probs(logits, self.single_label),
            fused=z,
            masked_logits=masked_logits,
            mask=mask.transpose(0, 1),
        )

    def _fuse(self, batch: Batch, tokens: dict[str, Tensor], tmask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Uni-modal encoders, joint encoder, emotion decoder -> z (B, C, H) and the uni-modal outputs."""
        B = tmask.shape[0]
        # Only present tokens and the target token are ever read (as keys here, below and in the
        # decoder), so only they are computed; the others keep their input.
        seen = [batch.present[m] | tmask for m in MODALITIES]  # (B, N) each
        uni = {m: self.unimodal[m](tokens[m], batch.present[m], seen[k]) for k, m in enumerate(MODALITIES)}
        joint_keys = torch.cat(seen, 1)  # (B, M*N): every present token and the target token in each modality
        joint = self.joint(torch.cat([uni[m] for m in MODALITIES], 1), joint_keys, joint_keys)  # (B, M*N, H)
        keys = [(batch.present[m] & batch.scope) | tmask for m in MODALITIES]  # (B, N) each
        always = torch.ones(B, 1, dtype=torch.bool, device=tmask.device)
        ctx = torch.cat([self.null.expand(B, -1, -1), joint], 1)  # (B, 1+M*N, H)
        z = self.decoder(self.label_emb.expand(B, -1, -1), ctx, torch.cat([always, *keys], 1))  # (B, C, H)
        return self.norm(z), uni

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
            total = total + self.w_adv * adv
            terms["adv"] = adv.detach()
        if self.training and self.mask_ratio > 0:
            masked = self.classification_loss(out.masked_logits, batch.labels)
            total = total + self.w_mask * masked
            terms["masked"] = masked.detach()
        return LossResult(total=total, terms=terms)
