"""The attention block every part shares: multi-head attention with a boolean key mask.

``key_mask`` is True on the keys a query may attend to. With ``null_key=True`` a learned key and
value are prepended and always allowed, so a query whose keys are all masked (a segment where
nobody speaks, a person who never shows a face) reads the null value instead of a softmax over
nothing; no attention row is ever empty and nothing becomes NaN.

Axis letters: x flattened batch rows, q queries, k keys, h hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, null_key: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.null_k = nn.Parameter(torch.zeros(dim)) if null_key else None
        self.null_v = nn.Parameter(torch.zeros(dim)) if null_key else None

    def forward(self, query: Tensor, keys: Tensor, key_mask: Tensor) -> Tensor:
        """query (X, Q, H), keys (X, K, H), key_mask (X, K) bool -> (X, Q, H)."""
        X, Q, H = query.shape
        q = self.q(query)  # (X, Q, H)
        k, v = self.kv(keys).chunk(2, dim=-1)  # (X, K, H) each
        if self.null_k is not None:
            k = torch.cat([self.null_k.to(k.dtype).expand(X, 1, H), k], 1)  # (X, 1+K, H)
            v = torch.cat([self.null_v.to(v.dtype).expand(X, 1, H), v], 1)
            key_mask = torch.cat([key_mask.new_ones(X, 1), key_mask], 1)  # (X, 1+K)
        d = H // self.heads
        q, k, v = (t.unflatten(-1, (self.heads, d)).transpose(1, 2) for t in (q, k, v))  # (X, heads, L, d)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )  # (X, heads, Q, d)
        return self.out(y.transpose(1, 2).reshape(X, Q, H))
