"""Spec MODEL.md §2.2: personality as an input stream and as an auxiliary target.

- ``PersonalityStream``: an MLP ``d_pi -> H`` gives ``e_p`` per person (zero for a person whose
  personality is unknown); ``condition`` maps it to one additive term per modality,
  ``u_m(p, s) = h_m(p, s) + W_m e_p``.
- ``PersonalityHead``: predicts ``pi_p`` from person ``p``'s pooled uni-modal encodings taken
  *before* the injection, so the target cannot leak through the input (``L_pers``, MSE).

Axis letters: b batch, p persons, s segments, n tokens, m modality, h hidden, d personality dims.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PersonalityStream(nn.Module):
    def __init__(self, in_dim: int, dim: int, n_modalities: int, dropout: float) -> None:
        super().__init__()
        self.n_modalities = n_modalities
        self.encoder = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.inject = nn.Linear(dim, n_modalities * dim, bias=False)  # W_m for every m at once

    def forward(self, personality: Tensor, present: Tensor) -> Tensor:
        """personality (B, P, d), present (B, P) bool -> e (B, P, H), zero where unknown."""
        known = present.unsqueeze(-1)
        e = self.encoder(torch.where(known, personality, 0.0))  # (B, P, H)
        return torch.where(known, e, 0.0)

    def condition(self, e_tok: Tensor) -> Tensor:
        """e_tok (B, N, H) -> W_m e_p (B, N, M, H)."""
        return self.inject(e_tok).unflatten(-1, (self.n_modalities, -1))


class PersonalityHead(nn.Module):
    def __init__(self, dim: int, n_modalities: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_modalities * dim, dim), nn.GELU(), nn.Linear(dim, out_dim))

    def forward(self, h: Tensor, present: Tensor, grid: tuple[int, int]) -> Tensor:
        """h (B, N, M, H) encodings before injection, present (B, N, M) -> predicted pi (B, P, d)."""
        P, S = grid
        B, _, M, H = h.shape
        w = present.view(B, P, S, M, 1).to(h.dtype)
        pooled = (h.view(B, P, S, M, H) * w).sum(2) / w.sum(2).clamp_min(1.0)  # (B, P, M, H)
        return self.mlp(pooled.flatten(2))  # (B, P, d)
