"""Spec MODEL.md §3: label-specific representations and the label-wise classifier.

- ``LabelWiseAttention``: per modality one learned query per label (``C x H``) attends over the
  tokens of the target scope, ``r_m[b, j] = sum_n softmax_n(<q_mj, g_m[b, n]> / sqrt(H) + beta_mj [n = t_b]) g_m[b, n]``
  where ``t_b`` is the target token and ``beta`` a learned bonus (``model.target_prior`` at start;
  none without a target or with the prior off); a (sample, modality) without any allowed token
  gets ``r_m = 0``. With ``scaled=False`` (``ramer-authors``: a bias-free ``Linear(H -> C)``
  query, Xavier-initialised, unscaled scores) the ``1 / sqrt(H)`` goes and the queries start
  Xavier-uniform instead of ``N(0, 0.02)``.
- ``LabelWiseClassifier``: ``logit_m[b, j] = <r_m[b, j], W_m[j]> + b_m[j]`` (``bias=False``:
  ``ramer-authors``' plain inner products).
- ``fuse_max``: max-pool of per-modality logits over a mask of modalities.

Axis letters: b batch, n tokens, m modality, c labels, h hidden.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LabelWiseAttention(nn.Module):
    def __init__(
        self, n_modalities: int, n_labels: int, dim: int, target_prior: float | None = None, scaled: bool = True
    ) -> None:
        super().__init__()
        if scaled:
            queries = torch.randn(n_modalities, n_labels, dim) * 0.02
        else:  # as nn.init.xavier_uniform_ on each modality's (C, H) weight of a Linear(H -> C)
            bound = math.sqrt(6.0 / (dim + n_labels))
            queries = torch.empty(n_modalities, n_labels, dim).uniform_(-bound, bound)
        self.queries = nn.Parameter(queries)  # (M, C, H)
        self.scale = 1.0 / math.sqrt(dim) if scaled else 1.0
        # a learned score bonus of the target token, per (modality, label), starting at target_prior
        self.target_bias = (
            nn.Parameter(torch.full((n_modalities, n_labels), float(target_prior)))
            if target_prior is not None
            else None
        )

    def forward(self, g: Tensor, keys: Tensor, target: Tensor | None = None) -> Tensor:
        """g (B, N, M, H), keys (B, N, M) bool, target (B,) token index or -1 -> r (B, M, C, H)."""
        weights = self.weights(g, keys, target)  # (B, M, C, N)
        r = torch.einsum("bmcn,bnmh->bmch", weights, g)  # (B, M, C, H)
        allowed = keys.permute(0, 2, 1).unsqueeze(2)  # (B, M, 1, N)
        return torch.where(allowed.any(-1, keepdim=True), r, 0.0)

    def weights(self, g: Tensor, keys: Tensor, target: Tensor | None = None) -> Tensor:
        """The attention weights (B, M, C, N): exactly 0 on every token not in ``keys`` (uniform where a
        (sample, modality) has no key at all; ``forward`` gives that one r = 0)."""
        scores = torch.einsum("bnmh,mch->bmcn", g, self.queries.to(g.dtype)) * self.scale  # (B, M, C, N)
        if self.target_bias is not None and target is not None:
            at = target.unsqueeze(1) == torch.arange(g.shape[1], device=g.device)  # (B, N), none for target -1
            scores = (
                scores + at[:, None, None, :].to(scores.dtype) * self.target_bias.to(scores.dtype)[None, :, :, None]
            )
        allowed = keys.permute(0, 2, 1).unsqueeze(2)  # (B, M, 1, N)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return scores.softmax(-1)


class LabelWiseClassifier(nn.Module):
    def __init__(self, n_sources: int, n_labels: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(n_sources, n_labels, dim).uniform_(-bound, bound))  # (M, C, H)
        self.bias = nn.Parameter(torch.zeros(n_sources, n_labels)) if bias else None  # (M, C)

    def forward(self, r: Tensor) -> Tensor:
        """r (B, M, C, H) -> logits (B, M, C)."""
        logits = (r * self.weight.to(r.dtype)).sum(-1)
        return logits if self.bias is None else logits + self.bias.to(r.dtype)


def fuse_max(logits: Tensor, mask: Tensor) -> Tensor:
    """Max over the modalities in ``mask`` (B, M) of ``logits`` (B, M, C) -> (B, C).

    A sample with no modality in the mask gets the mean over all modalities instead (finite).
    """
    masked = logits.masked_fill(~mask.unsqueeze(-1), torch.finfo(logits.dtype).min)
    return torch.where(mask.any(1, keepdim=True), masked.amax(1), logits.mean(1))
