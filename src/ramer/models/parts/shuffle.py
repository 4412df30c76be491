"""Spec MODEL.md §6: the stack shuffle.

The ``K`` label-specific sources are stacked into ``T`` (B, K, C, H). ``Aggregator`` (an MLP on one
source's flattened ``C*H`` vector -> ``C`` logits, shared by all sources) is trained on ``T`` as it
is and on shuffled virtual samples
``T~[b, k, j] = T[sigma_jk(b), rho_jb(k), j]``, ``y~[b, k, j] = y[sigma_jk(b), j]``,
where ``sigma_jk`` permutes the batch (per label and source) and ``rho_jb`` the sources (per label
and sample). ``random_permutations`` draws them as argsorts of random keys (torch's global RNG);
``shuffle_stack`` takes them explicitly, so the identity can be tested.

Axis letters: b batch, k sources, c (j) labels, h hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Aggregator(nn.Module):
    def __init__(self, n_labels: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_labels * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, n_labels)
        )

    def forward(self, stack: Tensor) -> Tensor:
        """stack (B, K, C, H) -> logits (B, K, C)."""
        return self.net(stack.flatten(2))


def random_permutations(batch: int, sources: int, labels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """-> sigma (C, K, B) permutations of the batch, rho (C, B, K) permutations of the sources."""
    sigma = torch.rand(labels, sources, batch, device=device).argsort(-1)
    rho = torch.rand(labels, batch, sources, device=device).argsort(-1)
    return sigma, rho


def identity_permutations(batch: int, sources: int, labels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    sigma = torch.arange(batch, device=device).expand(labels, sources, batch)
    rho = torch.arange(sources, device=device).expand(labels, batch, sources)
    return sigma, rho


def shuffle_stack(
    stack: Tensor, labels: Tensor, mask: Tensor, sigma: Tensor, rho: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """stack (B, K, C, H), labels (B, C), mask (B, K) -> shuffled stack (B, K, C, H), targets and mask (B, K, C)."""
    B, K, C, _ = stack.shape
    b_idx = sigma.permute(2, 1, 0)  # (B, K, C): [b, k, j] = sigma[j, k, b]
    k_idx = rho.permute(1, 2, 0)  # (B, K, C): [b, k, j] = rho[j, b, k]
    j_idx = torch.arange(C, device=stack.device).expand(B, K, C)
    # One flat index_select instead of stack[b_idx, k_idx, j_idx]: a (b, k, j) cell can be drawn
    # several times, and the backward of advanced indexing adds those gradients up in a
    # thread-dependent order on CPU (runs would not repeat); index_select's backward does not.
    flat = ((b_idx * K + k_idx) * C + j_idx).reshape(-1)  # (B*K*C,)
    shuffled = stack.reshape(B * K * C, -1).index_select(0, flat).view(B, K, C, -1)
    return shuffled, labels[b_idx, j_idx], mask[b_idx, k_idx]
