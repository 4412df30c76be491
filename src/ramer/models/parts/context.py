"""Spec MODEL.md §2.3: modality-level attention (after AMER), per modality ``m``.

In the ``P x S`` grid (person-major tokens, ``n = p * S + s``):
- *inter-personal*: every token attends along the person axis of its segment,
  ``(B, P, S, H) -> (B*S, P, H)``;
- *intra-personal*: every token attends along the segment axis of its person, ``(B*P, S, H)``;
  keys restricted to present tokens of ``m`` in both, residual + LayerNorm after each;
- *cross-modality completion*: at each token, a learned per-modality query (plus ``e_p``) attends
  over the token's present modalities and ``e_p``; the result, added to the context-attended slot
  and normalised, is the stand-in ``u~_m`` of every modality missing at that token. Present tokens
  keep their own features.
Every attention has a learned null key, so a row with no present key (a segment where nobody
speaks) is well defined. Missing tokens are queries (they gather context for their stand-in) but
never keys. Cost is ``O(N * (P + S))``; no loop over persons or segments.

Axis letters: b batch, p persons, s segments, n tokens, m modality, h hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ramer.models.parts.attention import Dropout, MaskedAttention, zero_unless


def _on_rows(fn, x: Tensor, keep: Tensor) -> Tensor:
    """Apply ``fn`` to the rows of ``x`` (X, ...) where ``keep`` (X,) is True; other rows are 0."""
    if torch.compiler.is_exporting():  # ONNX export: every row (no data-dependent size), the same result
        every = torch.arange(x.shape[0], device=x.device)
        return torch.where(keep.view(-1, *(1,) * (x.dim() - 1)), fn(x, every), 0.0)
    idx = keep.nonzero().squeeze(1)
    if idx.numel() == x.shape[0]:  # every row (e.g. one person per scene): no gather, no scatter
        return fn(x, idx)
    y = fn(x.index_select(0, idx), idx)
    return y.new_zeros(x.shape).index_copy_(0, idx, y)  # in place: no copy of the zeros


class GridAttention(nn.Module):
    """Inter- then intra-personal attention for one modality (rows of padding are skipped)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.inter = MaskedAttention(dim, heads, dropout, null_key=True)
        self.intra = MaskedAttention(dim, heads, dropout, null_key=True)
        self.norm_inter = nn.LayerNorm(dim)
        self.norm_intra = nn.LayerNorm(dim)
        self.drop = Dropout(dropout)

    def forward(self, u: Tensor, present: Tensor, valid: Tensor) -> Tensor:
        """u (B, P, S, H), present / valid (B, P, S) bool -> (B, P, S, H), zero on padding."""
        B, P, S, H = u.shape

        def inter(x: Tensor, idx: Tensor) -> Tensor:  # x (rows, P, H)
            keys = present.transpose(1, 2).reshape(B * S, P).index_select(0, idx)
            return self.norm_inter(x + self.drop(self.inter(x, x, keys)))

        def intra(x: Tensor, idx: Tensor) -> Tensor:  # x (rows, S, H)
            keys = present.reshape(B * P, S).index_select(0, idx)
            return self.norm_intra(x + self.drop(self.intra(x, x, keys)))

        x = u.transpose(1, 2).reshape(B * S, P, H)  # (B*S, P, H): one row per segment
        x = _on_rows(inter, x, valid.any(1).reshape(B * S))
        x = x.view(B, S, P, H).transpose(1, 2).reshape(B * P, S, H)  # (B*P, S, H): one row per person
        x = _on_rows(intra, x, valid.any(2).reshape(B * P))
        return x.view(B, P, S, H)


class ModalityCompletion(nn.Module):
    """Fill each missing modality slot of a token from the token's other modalities and ``e_p``."""

    def __init__(self, dim: int, heads: int, n_modalities: int, dropout: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_modalities, dim) * 0.02)  # one learned query per modality
        self.kind = nn.Parameter(torch.randn(n_modalities + 1, dim) * 0.02)  # key type: each modality, person
        self.attn = MaskedAttention(dim, heads, dropout, null_key=True)
        self.norm = nn.LayerNorm(dim)
        self.drop = Dropout(dropout)

    def forward(
        self, u: Tensor, present: Tensor, valid: Tensor, e_tok: Tensor | None, e_known: Tensor | None
    ) -> Tensor:
        """u (B, N, M, H), present (B, N, M), valid (B, N), e_tok (B, N, H), e_known (B, N) -> (B, N, M, H)."""
        B, N, M, H = u.shape
        # Nothing to fill (e.g. CMU-MOSEI). Not with autograd: DDP needs every parameter in the graph.
        if not torch.is_grad_enabled() and not torch.compiler.is_exporting() and bool(present.all()):
            return u
        keys = u + self.kind[:M].to(u.dtype)  # (B, N, M, H)
        mask = present
        query = self.query.to(u.dtype).expand(B, N, M, H)
        if e_tok is not None:
            keys = torch.cat([keys, (e_tok + self.kind[M].to(u.dtype)).unsqueeze(2)], 2)  # (B, N, M+1, H)
            mask = torch.cat([mask, e_known.unsqueeze(-1)], 2)  # (B, N, M+1)
            query = query + e_tok.unsqueeze(2)
        # Only tokens with a missing modality need a stand-in.
        need = (valid & ~present.all(-1)).reshape(B * N)  # (B*N,)
        # ONNX export: every row (no data-dependent size); rows not needed are not used below.
        idx = torch.arange(B * N, device=u.device) if torch.compiler.is_exporting() else need.nonzero().squeeze(1)
        flat = lambda t: t.flatten(0, 1).index_select(0, idx)  # noqa: E731
        filled = self.attn(flat(query), flat(keys), flat(mask))  # (rows, M, H)
        own = flat(u)  # (rows, M, H)
        filled = torch.where(flat(present).unsqueeze(-1), own, self.norm(own + self.drop(filled)))
        # Rows not needed keep u: every modality present there, or padding (which the caller zeroes).
        return u.flatten(0, 1).index_copy(0, idx, filled).view(B, N, M, H)


class ModalityLevelAttention(nn.Module):
    """All of §2.3: grid attention per modality, then cross-modality completion."""

    def __init__(self, dim: int, heads: int, n_modalities: int, dropout: float) -> None:
        super().__init__()
        self.grid = nn.ModuleList(GridAttention(dim, heads, dropout) for _ in range(n_modalities))
        self.completion = ModalityCompletion(dim, heads, n_modalities, dropout)

    def forward(
        self,
        u: Tensor,
        present: Tensor,
        valid: Tensor,
        grid: tuple[int, int],
        e_tok: Tensor | None = None,
        e_known: Tensor | None = None,
    ) -> Tensor:
        """u (B, N, M, H), present (B, N, M), valid (B, N) -> (B, N, M, H), zero on padding."""
        P, S = grid
        B, N, M, H = u.shape
        grid_valid = valid.view(B, P, S)
        u = torch.stack(
            [
                att(u[:, :, i].reshape(B, P, S, H), present[:, :, i].reshape(B, P, S), grid_valid).reshape(B, N, H)
                for i, att in enumerate(self.grid)
            ],
            2,
        )  # (B, N, M, H)
        u = self.completion(u, present, valid, e_tok, e_known)
        return zero_unless(valid[:, :, None, None], u)
