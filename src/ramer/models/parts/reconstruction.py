"""Spec MODEL.md §4.2: reconstruction, class prototypes, cross-modal reconstruction, modality dropout.

- ``LabelAutoEncoder``: per modality ``z_m = E_m(r_m)`` (``H -> H/2 -> P``, ReLU) and
  ``r^_m = G_m(z_m)`` (``P -> H/2 -> H``). With reconstruction switched off but contrastive
  learning on, only ``E_m`` is built: it is the contrastive projection head.
- ``CrossReconstruction``:
  * prototypes ``pi[m, j, y]`` (buffer (M, C, 2, P), index 0 negative, 1 positive): EMA (momentum
    ``mu``) of the L2-normalised, detached codes of the samples whose label ``j`` is ``y``, updated
    in one vectorised step per batch (``prototype_sums`` then ``_update_prototypes``; in
    distributed training all-reduce the sums and counts in between); ``update_in_order`` is the
    authors' form, one EMA step per sample in batch order, in closed form:
    ``pi <- mu^n pi + (1 - mu) sum_i mu^(n - i) z_i`` over the ``n`` codes of the batch in order;
  * prototype mix of modality ``m``: weight ``w+`` of the positive prototype = mean over the
    *other visible* modalities ``n`` of ``softmax_y <z^_n, pi[n, j, y]>`` at ``y = +`` (each code is
    compared with the prototypes of its own space); with no other visible modality, ``m``'s own
    code is used (``own_code=True``, the authors': always ``m``'s own code). Training:
    ``w+ pi+ + (1 - w+) pi-``; evaluation: the nearer one (``w+ > 1/2``);
  * ``p^_m = G_m(mix_m)``, ``r~_m = F_m([slot_n for n != m ; own_m])`` (``F_m``: ``M*H -> H -> H``,
    ReLU; ``cross_hidden=False``, the authors': one Xavier-initialised ``Linear(M*H -> H)``; slots
    in modality order) where ``slot_n = r^_n`` when ``n``'s label feature may be used
    and ``p^_n`` when it may not (undefined); ``m``'s own slot holds ``p^_m``, or, for a modality
    missing from the scope whose label feature was built from context (``own_usable``), ``r^_m``
    (``model.stand_in: own_slot``);
  * optional second ("beta") pass ``r^beta_m = F_m([r~_n for all n])``.
- ``modality_dropout``: during training, draw the available modalities of each sample to hide,
  each with probability ``p``; a draw that would hide all of a sample's hides none
  (``RAMer.forward`` then removes their scope tokens before anything reads them).
- ``StandInGate`` (``model.stand_in: gate``): a learned gate between a context-built ``r_m`` and
  ``r~_m``.

Axis letters: b batch, m modality, c labels, y polarity, h hidden, p code size.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def modality_dropout(available: Tensor, p: float) -> Tensor:
    """available (B, M) bool -> dropped (B, M) bool. A sample whose draw would hide every available
    modality hides none, so each of ``k`` available modalities is hidden with probability ``p - p**k``."""
    drop = available & (torch.rand(available.shape, device=available.device) < p)
    emptied = available.any(1) & ~(available & ~drop).any(1)  # (B,)
    return drop & ~emptied.unsqueeze(1)


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


def _xavier_linear(i: int, o: int) -> nn.Linear:
    layer = nn.Linear(i, o)
    nn.init.xavier_uniform_(layer.weight)
    return layer


class LabelAutoEncoder(nn.Module):
    def __init__(self, n_modalities: int, dim: int, proj: int, decoder: bool = True) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(_mlp(dim, dim // 2, proj) for _ in range(n_modalities))
        self.decoders = nn.ModuleList(_mlp(proj, dim // 2, dim) for _ in range(n_modalities)) if decoder else None

    def encode(self, r: Tensor) -> Tensor:
        """r (B, M, C, H) -> z (B, M, C, P)."""
        # Contiguous slices: a Linear on a strided 3-d view runs as a bmm over a batch of weight copies.
        return torch.stack([enc(r[:, i].contiguous()) for i, enc in enumerate(self.encoders)], 1)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, M, C, P) -> r^ (B, M, C, H)."""
        return torch.stack([dec(z[:, i].contiguous()) for i, dec in enumerate(self.decoders)], 1)


class CrossReconstruction(nn.Module):
    def __init__(
        self,
        n_modalities: int,
        n_labels: int,
        dim: int,
        proj: int,
        momentum: float,
        cross_hidden: bool = True,
        own_code: bool = False,
    ) -> None:
        super().__init__()
        self.momentum, self.own_code = momentum, own_code
        self.cross = nn.ModuleList(
            _mlp(n_modalities * dim, dim, dim) if cross_hidden else _xavier_linear(n_modalities * dim, dim)
            for _ in range(n_modalities)
        )
        self.register_buffer("prototypes", torch.zeros(n_modalities, n_labels, 2, proj))  # (M, C, 2, P)

    def positive_weight(self, z_unit: Tensor, visible: Tensor, protos: Tensor) -> Tensor:
        """z_unit (B, M, C, P) unit codes, visible (B, M) -> w+ (B, M, C) in [0, 1]."""
        sim = torch.einsum("bmcp,mcyp->bmcy", z_unit, protos)  # (B, M, C, 2)
        own = sim.float().softmax(-1)[..., 1]  # (B, M, C): how positive each code looks in its own space
        if self.own_code:
            return own
        v = visible.to(own.dtype).unsqueeze(-1)  # (B, M, 1)
        others = v.sum(1, keepdim=True) - v  # (B, M, 1): number of other visible modalities
        mean_others = ((own * v).sum(1, keepdim=True) - own * v) / others.clamp_min(1.0)  # (B, M, C)
        return torch.where(others > 0, mean_others, own)

    def forward(
        self,
        r_hat: Tensor,
        z_unit: Tensor,
        visible: Tensor,
        usable: Tensor,
        decode: Callable[[Tensor], Tensor],
        hard: bool,
        own_usable: Tensor | None = None,
    ) -> Tensor:
        """r_hat (B, M, C, H), z_unit (B, M, C, P), visible / usable (B, M) -> r~ (B, M, C, H).

        ``own_usable`` (B, M): where True, ``m``'s own slot holds ``r^_m`` instead of ``p^_m`` (a
        label feature built from context for a modality missing from the scope); None: ``p^_m``."""
        protos = self.prototypes.clone().to(z_unit.dtype)  # a snapshot: the buffer is updated later in place
        w = self.positive_weight(z_unit, visible, protos)  # (B, M, C)
        if hard:
            w = (w > 0.5).to(w.dtype)
        w = w.to(z_unit.dtype).unsqueeze(-1)  # (B, M, C, 1)
        mix = w * protos[:, :, 1] + (1 - w) * protos[:, :, 0]  # (B, M, C, P)
        p_hat = decode(mix)  # (B, M, C, H)
        slots = torch.where(usable[:, :, None, None], r_hat, p_hat)  # (B, M, C, H)
        own_slot = p_hat if own_usable is None else torch.where(own_usable[:, :, None, None], r_hat, p_hat)
        M = slots.shape[1]
        own = torch.eye(M, dtype=torch.bool, device=slots.device)  # (M, M): target m x slot n
        out = []
        for m, net in enumerate(self.cross):
            inputs = torch.where(own[m][None, :, None, None], own_slot, slots)  # (B, M, C, H)
            out.append(net(inputs.transpose(1, 2).flatten(2)))  # (B, C, H)
        return torch.stack(out, 1)

    def second_pass(self, rec: Tensor) -> Tensor:
        """CARAT's beta level: r~ (B, M, C, H) -> (B, M, C, H)."""
        inputs = rec.transpose(1, 2).flatten(2)  # (B, C, M*H)
        return torch.stack([net(inputs) for net in self.cross], 1)

    @staticmethod
    def _selection(available: Tensor, labels: Tensor) -> Tensor:
        """(B, M, C, 2): 1 where a sample's code of modality ``m`` feeds prototype (``m``, ``j``, ``y``):
        the modality is available and label ``j`` is ``y``."""
        pos = labels.bool()[:, None, :]  # (B, 1, C)
        avail = available[:, :, None]  # (B, M, 1)
        return torch.stack([avail & ~pos, avail & pos], -1).float()

    @torch.no_grad()
    def prototype_sums(self, z_unit: Tensor, available: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per (modality, label, polarity): sum and count of the available unit codes."""
        sel = self._selection(available, labels)  # (B, M, C, 2)
        sums = torch.einsum("bmcy,bmcp->mcyp", sel, z_unit.detach().float())  # (M, C, 2, P)
        return sums, sel.sum(0)  # (M, C, 2, P), (M, C, 2)

    @torch.no_grad()
    def update_in_order(self, z_unit: Tensor, available: Tensor, labels: Tensor) -> None:
        """The authors' update: one EMA step per available code, in batch order (a prototype met by
        ``n`` codes keeps ``mu^n`` of itself, the ``i``-th code of ``n`` enters with weight
        ``(1 - mu) mu^(n - i)``), in one vectorised step."""
        sel = self._selection(available, labels)  # (B, M, C, 2)
        order = sel.cumsum(0)  # (B, M, C, 2): i, the place of each selected code among its prototype's
        n = order[-1]  # (M, C, 2)
        mu = torch.tensor(self.momentum, dtype=torch.float32, device=sel.device)
        weight = sel * (1.0 - mu) * mu.pow(n - order)  # (B, M, C, 2)
        sums = torch.einsum("bmcy,bmcp->mcyp", weight, z_unit.detach().float())  # (M, C, 2, P)
        self.prototypes.copy_(mu.pow(n).unsqueeze(-1) * self.prototypes + sums)

    @torch.no_grad()
    def _update_prototypes(self, sums: Tensor, counts: Tensor) -> None:
        """One EMA step towards the batch mean of every prototype that has samples in the batch."""
        mean = sums / counts.clamp_min(1.0).unsqueeze(-1)
        new = self.momentum * self.prototypes + (1.0 - self.momentum) * mean
        self.prototypes.copy_(torch.where(counts.unsqueeze(-1) > 0, new, self.prototypes))


class StandInGate(nn.Module):
    """``model.stand_in: gate``: for a modality missing from the scope whose label feature ``r_m`` was
    built from context, the final feature ``f_m = g r_m + (1 - g) r~_m`` with a gate learned per
    modality (``w_m``, ``b_m``) and valued per (sample, label) by what it reads,
    ``g = sigmoid(<w_m, [r_m ; r~_m]> + b_m)`` (starts at 1/2)."""

    def __init__(self, n_modalities: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_modalities, 2, dim))  # (M, 2, H)
        self.bias = nn.Parameter(torch.zeros(n_modalities))  # (M,)

    def forward(self, r: Tensor, rec: Tensor) -> Tensor:
        """r, rec (B, M, C, H) -> (B, M, C, H)."""
        w = self.weight.to(r.dtype)
        logit = torch.einsum("bmch,mh->bmc", r, w[:, 0]) + torch.einsum("bmch,mh->bmc", rec, w[:, 1])  # (B, M, C)
        g = torch.sigmoid(logit + self.bias.to(r.dtype)[None, :, None]).unsqueeze(-1)  # (B, M, C, 1)
        return rec + g * (r - rec)
