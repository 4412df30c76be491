"""Spec MODEL.md §2.1: one transformer encoder per modality.

``LayerNorm(d_m) -> Linear(d_m, H)`` + a learned segment-position embedding, a learned summary
token prefixed to every sequence (always present, so a scene where nobody speaks still has a
defined text encoding), then ``n_m`` pre-LN transformer layers (GELU) whose attention sees only
present, unpadded tokens. Features of missing tokens are replaced by zeros before anything reads
them, so whatever a data set stores there (even NaN) cannot leak; the output is zero there too.

Axis letters: b batch, n tokens (person-major grid), d input features, h hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ramer.errors import RamerError
from ramer.models.parts.attention import Dropout, MaskedAttention, zero_unless


def check_segments(segments: int, max_segments: int, what: str = "a batch") -> None:
    """A ``RamerError`` when ``what`` (a batch's grid) has more segments than the position table has
    rows (``model.max_segments``), which the table's lookup would otherwise report as a bare IndexError."""
    if segments > max_segments:
        raise RamerError(
            f"{what} has {segments} segments, more than model.max_segments={max_segments} (the rows of the "
            f"segment-position table); train with --set model.max_segments={segments} or more"
        )


class TransformerLayer(nn.Module):
    """Pre-LN transformer encoder layer with a boolean key mask."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MaskedAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), Dropout(dropout), nn.Linear(ffn, dim))
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.drop(self.attn(y, y, key_mask))
        return x + self.drop(self.ff(self.norm2(x)))


def modality_encoders(model: nn.Module) -> list["ModalityEncoder"]:
    """The ``ModalityEncoder``s of ``model`` (none for a model not built on them)."""
    return [part for part in model.modules() if isinstance(part, ModalityEncoder)]


class ModalityEncoder(nn.Module):
    # train.recompute (set by models.build_model): in training, keep only each layer's input and run
    # the layer again in backward (torch.utils.checkpoint, its random state replayed, so the same
    # dropout masks): less memory for more time, the same values and gradients
    recompute: bool = False

    def __init__(
        self, in_dim: int, dim: int, heads: int, ffn: int, layers: int, dropout: float, max_segments: int
    ) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, dim)
        self.position = nn.Embedding(max_segments, dim)
        nn.init.normal_(self.position.weight, std=0.02)
        self.summary = nn.Parameter(torch.randn(dim) * 0.02)
        self.drop = Dropout(dropout)
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor, present: Tensor, segment: Tensor) -> Tensor:
        """x (B, N, d), present (B, N) bool, segment (B, N) long -> (B, N, H), zero where missing.

        Only present tokens are keys, so the encoder runs on them alone: each sample's present
        tokens are gathered to the front (their segment positions travel with them) and the
        sequence is cut at the largest count in the batch. Attention over a permuted set with its
        positions attached is the same, so this only saves time (text is present on about one
        token in ``P`` of a multi-party grid).
        """
        B, N, _ = x.shape
        if torch.compiler.is_exporting():  # ONNX export: every slot in place (no sort, no data-dependent size)
            order = torch.arange(N, device=x.device).expand(B, N)  # (B, N): the same result
        elif B * N and bool(present.all()):  # nothing missing (e.g. CMU-MOSEI): no gather or scatter
            return self._encode(x, present, segment)
        else:
            L = int(present.sum(1).max()) if B * N else 0
            order = torch.sort(present.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :L]  # (B, L)
        keep = present.gather(1, order)  # (B, L)
        xs = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, L, d)
        h = self._encode(xs, keep, segment.gather(1, order))  # (B, L, H), zero where not kept
        # (B, N, H), in place into the zeros; zero where missing: h is zero on the slots it holds that are not present
        return h.new_zeros(B, N, h.shape[-1]).scatter_(1, order.unsqueeze(-1).expand_as(h), h)

    def _encode(self, x: Tensor, keep: Tensor, segment: Tensor) -> Tensor:
        """x (B, L, d), keep (B, L) bool, segment (B, L) -> (B, L, H), zero where not kept."""
        B = x.shape[0]
        xs = zero_unless(keep.unsqueeze(-1), x)
        h = self.drop(self.proj(self.norm_in(xs)) + self.position(segment))  # (B, L, H)
        h = torch.cat([self.summary.to(h.dtype).expand(B, 1, -1), h], 1)  # (B, 1+L, H)
        mask = F.pad(keep, (1, 0), value=True)  # (B, 1+L): the summary token is always present
        again = self.recompute and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            h = checkpoint(layer, h, mask, use_reentrant=False) if again else layer(h, mask)
        return zero_unless(keep.unsqueeze(-1), self.norm_out(h[:, 1:]))  # (B, L, H)
