"""Spec MODEL.md §4.1 (tier 1, modality adversary) and §4.3 (tier 2, real vs reconstructed).

Tier 1 acts on the final label-specific features ``f_m`` (B, M, C, H) (real where the modality is
visible; where it is missing or hidden, the stand-in of ``model.stand_in``, by default a gate
between the context-built feature and its reconstruction), one H-vector per (sample, modality, label):
- specific extractor per modality ``s_m = tanh(Linear_m(dropout(f_m)))``;
- one shared common extractor ``c_m = tanh(Linear(dropout(f_m)))``, common feature
  ``c_bar = mean of c_m over the modalities with a defined final feature``;
- modality discriminator ``D_mod``: ``Linear(H, H/2) -> Dropout -> ReLU -> Linear(H/2, M)``, on
  ``s_m`` directly and on ``GRL(c_m)``;
- common classifier: a label-wise classifier on ``c_bar`` (``L_cml``).
Tier 2: ``D_rec`` (``Linear(H, H/2) -> Dropout -> ReLU -> Linear(H/2, 1)``) tells a real ``r_m``
from a reconstructed one; the reconstruction reaches it through a GRL.

Axis letters: b batch, m modality, c labels, h hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ramer.models.parts.attention import Dropout
from ramer.models.parts.labelwise import LabelWiseClassifier


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-lambd`` on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, lambd: float) -> Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: Tensor, lambd: float = 1.0) -> Tensor:
    return GradientReversal.apply(x, lambd)


def _discriminator(dim: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim // 2), Dropout(dropout), nn.ReLU(), nn.Linear(dim // 2, out))


class CommonSpecific(nn.Module):
    """Tier 1: specific / common extractors, modality discriminator, common classifier."""

    def __init__(self, n_modalities: int, n_labels: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.specific = nn.ModuleList(
            nn.Sequential(Dropout(dropout), nn.Linear(dim, dim), nn.Tanh()) for _ in range(n_modalities)
        )
        self.common = nn.Sequential(Dropout(dropout), nn.Linear(dim, dim), nn.Tanh())
        self.discriminator = _discriminator(dim, n_modalities, dropout)
        self.classifier = LabelWiseClassifier(1, n_labels, dim)
        self.grl_lambda = 1.0

    def forward(self, f: Tensor, usable: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """f (B, M, C, H), usable (B, M) -> specific, common (B, M, C, H), c_bar (B, C, H), cml logits (B, C)."""
        # Each slice made contiguous: a Linear on a strided 3-d view runs as a bmm over a batch of weight copies.
        specific = torch.stack([ext(f[:, i].contiguous()) for i, ext in enumerate(self.specific)], 1)  # (B, M, C, H)
        common = self.common(f)  # (B, M, C, H)
        w = usable.to(common.dtype)[:, :, None, None]  # (B, M, 1, 1)
        c_bar = (common * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, C, H)
        cml = self.classifier(c_bar.unsqueeze(1)).squeeze(1)  # (B, C)
        return specific, common, c_bar, cml

    def discriminate(self, specific: Tensor, common: Tensor) -> tuple[Tensor, Tensor]:
        """-> D_mod(s_m), D_mod(GRL(c_m)), each (B, M, C, M) modality logits."""
        return self.discriminator(specific), self.discriminator(grad_reverse(common, self.grl_lambda))


class RealFakeDiscriminator(nn.Module):
    """Tier 2: ``D_rec`` on label vectors; real input is detached, the reconstruction is reversed."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = _discriminator(dim, 1, dropout)
        self.grl_lambda = 1.0

    def forward(self, real: Tensor, reconstructed: Tensor) -> tuple[Tensor, Tensor]:
        """real, reconstructed (B, M, C, H) -> logits (B, M, C) each."""
        d_real = self.net(real.detach()).squeeze(-1)
        d_fake = self.net(grad_reverse(reconstructed, self.grl_lambda)).squeeze(-1)
        return d_real, d_fake
