"""Spec MODEL.md §5: supervised contrastive items and a MoCo-style memory queue.

Items are the unit-normalised codes ``normalize(E_m(.))`` of the real label features of every
visible (sample, modality) and of the reconstructed ones of every available (sample, modality);
the class of the item for (b, m, j) is
``(m, j, y_bj)``, encoded ``2 * (m * C + j) + y_bj`` (``2 M C`` classes; real and reconstructed
share it). Anchors are the current batch's items only; the queue (detached items of earlier steps,
buffers ``queue`` / ``queue_classes`` / ``queue_ptr``) serves only as keys, so the loss costs
``O(I * (I + Q))``. The loss itself is ``ramer.models.losses.supcon``.

Axis letters: b batch, m modality, c labels, p code size, i items, q queue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def contrastive_items(
    real: Tensor, reconstructed: Tensor | None, real_mask: Tensor, rec_mask: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """real / reconstructed codes (B, M, C, P), masks (B, M) of the (sample, modality) pairs whose real /
    reconstructed code is an item, labels (B, C) -> items (I, P), classes (I,)."""
    B, M, C, _ = real.shape
    slot = torch.arange(M * C, device=real.device).view(1, M, C)  # (1, M, C)
    classes = 2 * slot + labels.long().unsqueeze(1)  # (B, M, C)
    keep = real_mask.unsqueeze(-1).expand(B, M, C)  # (B, M, C)
    items, cls = [F.normalize(real, dim=-1)[keep]], [classes[keep]]
    if reconstructed is not None:
        keep = rec_mask.unsqueeze(-1).expand(B, M, C)
        items.append(F.normalize(reconstructed, dim=-1)[keep])
        cls.append(classes[keep])
    return torch.cat(items), torch.cat(cls)


class ContrastiveMemory(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("queue", torch.zeros(size, dim))  # (Q, P)
        self.register_buffer("queue_classes", torch.full((size,), -1, dtype=torch.long))  # -1: empty slot
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def snapshot(self) -> tuple[Tensor, Tensor]:
        """The filled part of the queue, copied (the buffers are overwritten by ``_enqueue``)."""
        filled = self.queue_classes >= 0
        return self.queue[filled].clone(), self.queue_classes[filled].clone()

    @torch.no_grad()
    def _enqueue(self, items: Tensor, classes: Tensor) -> None:
        """Write ``items`` (I, P) over the oldest entries; a random subset if ``I`` exceeds the queue.

        In distributed training, all-gather the items and classes of every process before this.
        """
        n = items.shape[0]
        if self.size == 0 or n == 0:
            return
        if n > self.size:
            keep = torch.randperm(n, device=items.device)[: self.size]
            items, classes, n = items[keep], classes[keep], self.size
        idx = (self.queue_ptr + torch.arange(n, device=items.device)) % self.size  # (I,)
        self.queue[idx] = items.detach().to(self.queue.dtype)
        self.queue_classes[idx] = classes
        self.queue_ptr.copy_((self.queue_ptr + n) % self.size)
