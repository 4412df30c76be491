"""The batch of scenes every model consumes (spec MODEL.md section 1).

A scene is a ``P x S`` grid of tokens (persons x segments), flattened person-major:
token ``n = p * S + s``. A batch pads every scene to the largest ``P`` and ``S`` in it, so all
scenes share one grid ``(P, S)`` and ``N = P * S``. Padding is separate from missingness: a padded
token has ``valid = False`` and is absent in every modality.

Axis letters: b batch, n tokens, p persons, s segments, c labels, d feature dims.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

MODALITIES: tuple[str, ...] = ("text", "audio", "visual")

ROLE_NONE, ROLE_NONSPEAKER, ROLE_SPEAKER = -1, 0, 1


@dataclass
class Batch:
    features: dict[str, Tensor]  # m -> (B, N, d_m) float, zero where absent
    present: dict[str, Tensor]  # m -> (B, N) bool, False where missing or padded
    valid: Tensor  # (B, N) bool, False on padded tokens
    person: Tensor  # (B, N) long, person index p of each token
    segment: Tensor  # (B, N) long, segment index s of each token
    grid: tuple[int, int]  # (P, S) of the padded grid, N = P * S
    target: Tensor  # (B,) long, target token index n, or -1 for "the whole sample"
    scope: Tensor  # (B, N) bool: target person's valid tokens; marked target tokens (several); else all valid
    personality: Tensor | None  # (B, P, d_pi) float, or None when the data has none
    personality_present: Tensor | None  # (B, P) bool
    labels: Tensor  # (B, C) float 0/1
    role: Tensor  # (B,) long: 1 speaker, 0 non-speaker, -1 no target role
    label_names: tuple[str, ...]
    ids: list[str]

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    def __repr__(self) -> str:
        """One line (a notebook's echo; the tensors are its attributes)."""
        try:
            return (
                f"Batch({self.size} samples, grid {tuple(self.grid)}, {len(self.label_names)} labels, "
                f"dims {self.dims}, device {self.labels.device})"
            )
        except Exception:  # a batch being put together by hand
            return "Batch(...)"

    @property
    def dims(self) -> dict[str, int | None]:
        """Feature sizes, as ``SceneStore.dims``: each modality's and ``personality`` (None: none)."""
        out: dict[str, int | None] = {m: int(x.shape[-1]) for m, x in self.features.items()}
        out["personality"] = None if self.personality is None else int(self.personality.shape[-1])
        return out

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """The batch on ``device``; with ``dtype``, the model inputs (features, personality) also
        in that floating type (for a model whose weights are in it). Labels stay as they are."""

        def move(x, cast: bool):
            if isinstance(x, Tensor):
                return x.to(device, dtype if cast and dtype is not None else x.dtype, non_blocking=True)
            if isinstance(x, dict):
                return {k: move(v, cast) for k, v in x.items()}
            return x

        inputs = ("features", "personality")
        return replace(self, **{f.name: move(getattr(self, f.name), f.name in inputs) for f in fields(self)})

    def select(self, rows: Tensor) -> "Batch":
        """The samples ``rows`` (a 1-d long tensor) of this batch, on the same grid."""

        def pick(x):
            if isinstance(x, Tensor):
                return x.index_select(0, rows.to(x.device))
            if isinstance(x, dict):
                return {k: pick(v) for k, v in x.items()}
            return x

        out = replace(self, **{f.name: pick(getattr(self, f.name)) for f in fields(self) if f.name != "ids"})
        out.ids = [self.ids[i] for i in rows.tolist()]
        return out

    def with_present(self, present: dict[str, Tensor]) -> "Batch":
        """The same batch with other presence masks; features of hidden tokens are zeroed."""
        features = {m: self.features[m] * present[m].unsqueeze(-1).to(self.features[m].dtype) for m in MODALITIES}
        return replace(self, features=features, present=present)
