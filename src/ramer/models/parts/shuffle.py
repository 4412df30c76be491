"""Spec MODEL.md §6: the stack shuffle.

The ``K`` label-specific sources are stacked into ``T`` (B, K, C, H). ``Aggregator`` (an MLP on one
source's flattened ``C*H`` vector -> ``C`` logits, shared by all sources) is trained on ``T`` as it
is and on shuffled virtual samples
``T~[b, k, j] = T[sigma_jk(b), rho_jb(k), j]``, ``y~[b, k, j] = y[sigma_jk(b), j]``,
where ``sigma_jk`` permutes the batch (per label and source) and ``rho_jb`` the sources (per label
and sample). ``shuffle_stack`` takes them explicitly, so the identity can be tested. Two ways to
make them (``model.shuffle``):

- ``random_permutations``: argsorts of random keys (torch's global RNG), a new draw for every
  label, source and sample (the spec's reading);
- ``pile_permutations``: the RAMer authors' card deal (AUTHORS_CODE.md §7), the same fixed
  permutation for every label: ``pile_order(B, 4)`` for the batch and ``pile_order(K, 3)`` for the
  sources. ``pile_order(n, k)`` cuts ``0..n-1`` into consecutive piles of ``max(1, n // k)`` cards
  (one more pile holds the rest when ``k`` does not divide ``n``), then takes one card from each
  pile in turn until all are taken; a second round does the same with as many piles as the first
  round made. The authors' function then returned the list sorted in reverse, i.e. always
  ``n-1, ..., 0``; and it failed for ``n < k`` (a pile size of 0), where this one keeps the order.
  Since every label gets the same ``sigma`` and ``rho``, each virtual sample is one real sample
  with its sources reordered: the shuffle loss equals the unshuffled aggregator loss over a batch
  in another order (with 3 sources and 3 piles the source order does not even change).

Axis letters: b batch, k sources, c (j) labels, h hidden.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn


class Aggregator(nn.Module):
    def __init__(self, n_labels: int, dim: int, dropout: float, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_labels * dim, dim), activation(), nn.Dropout(dropout), nn.Linear(dim, n_labels)
        )

    def forward(self, stack: Tensor) -> Tensor:
        """stack (B, K, C, H) -> logits (B, K, C)."""
        return self.net(stack.flatten(2))


def random_permutations(batch: int, sources: int, labels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """-> sigma (C, K, B) permutations of the batch, rho (C, B, K) permutations of the sources."""
    sigma = torch.rand(labels, sources, batch, device=device).argsort(-1)
    rho = torch.rand(labels, batch, sources, device=device).argsort(-1)
    return sigma, rho


@lru_cache(maxsize=64)
def pile_order(n: int, piles: int, rounds: int = 2) -> tuple[int, ...]:
    """The authors' card deal of ``0..n-1`` into ``piles`` piles, ``rounds`` times (module docstring)."""
    order = torch.arange(n)
    k = piles
    for _ in range(rounds):
        size = max(1, n // k)
        pos = torch.arange(n)
        pile, card = pos // size, pos % size  # each position's pile and its place in the pile
        k = int(pile.max()) + 1 if n else k  # the next round deals into as many piles as this one made
        order = order[(card * k + pile).argsort()]  # one card from each pile in turn
    return tuple(order.tolist())


def pile_permutations(batch: int, sources: int, labels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """-> sigma (C, K, B), rho (C, B, K): ``pile_order(B, 4)`` and ``pile_order(K, 3)`` for every label."""
    sigma = torch.tensor(pile_order(batch, 4), device=device, dtype=torch.long)
    rho = torch.tensor(pile_order(sources, 3), device=device, dtype=torch.long)
    return sigma.expand(labels, sources, batch), rho.expand(labels, batch, sources)


PERMUTATIONS = {"random": random_permutations, "pile": pile_permutations}


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
