"""The batch of scenes every model consumes (spec MODEL.md section 1).

A scene is a ``P x S`` grid of tokens (persons x segments), flattened person-major:
token ``n = p * S + s``. A batch pads every scene to the largest ``P`` and ``S`` in it, so all
scenes share one grid ``(P, S)`` and ``N = P * S``. Padding is separate from missingness: a padded
token has ``valid = False`` and is absent in every modality.

Axis letters: b batch, n tokens, p persons, s segments, c labels, d feature dims.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from ramer.errors import RamerError

MODALITIES: tuple[str, ...] = ("text", "audio", "visual")
OVERFLOW = 1e18  # a feature magnitude whose square (about 1e36) a LayerNorm's float32 variance barely holds


def largest_features(batch: "Batch") -> dict[str, float]:
    """The largest magnitude of each input of ``batch`` where present (0 where none is): what a
    model's arithmetic overflows on from ``OVERFLOW`` up (named where a loss or scores are NaN)."""
    inputs = [(m, batch.features[m], batch.present[m]) for m in MODALITIES]
    if batch.personality is not None:
        inputs.append(("personality", batch.personality, batch.personality_present))
    return {name: float(x[keep].abs().max()) if bool(keep.any()) else 0.0 for name, x, keep in inputs}


def magnitudes(largest: dict[str, float]) -> str:
    """``largest_features``' figures as an error says them: ``text 6.26e+20, audio 6.03``."""
    return ", ".join(f"{name} {v:.3g}" for name, v in largest.items())


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

    def check(self, source: str = "batch") -> None:
        """The batch's structure is one the models take (what ``SceneStore.collate`` builds): a
        RamerError naming ``source`` and the first field that is not, for a batch made or edited by
        hand, which the models would otherwise fail on deep inside, or score with another target.
        Types, shapes and index ranges only; ``api.Predictor.predict`` checks the values' finiteness."""

        def fail(problem: str):
            raise RamerError(f"{source}: {problem} (a Batch as SceneStore.collate builds it: ramer.batch)")

        def tensor(name: str, x, shape: tuple, kind: str) -> None:
            if not isinstance(x, Tensor):
                fail(f"{name} is a {type(x).__name__}, not a torch.Tensor")
            if x.dim() != len(shape) or any(want is not None and got != want for got, want in zip(x.shape, shape)):
                want = ", ".join("?" if w is None else str(w) for w in shape)
                fail(f"{name} has shape {tuple(x.shape)}, expected ({want}{',' if len(shape) == 1 else ''})")
            if not {
                "bool": x.dtype == torch.bool,
                "int": not x.is_floating_point() and x.dtype != torch.bool,
                "float": x.is_floating_point(),
            }[kind]:
                fail(f"{name} is of type {str(x.dtype).removeprefix('torch.')}, expected {kind}")

        grid = self.grid
        whole = (isinstance(g, numbers.Integral) and not isinstance(g, bool) and g > 0 for g in grid)
        if not (isinstance(grid, (tuple, list)) and len(grid) == 2 and all(whole)):
            fail(f"grid is {grid!r}, expected (P, S): two positive integers")
        P, S = (int(g) for g in grid)
        tensor("labels", self.labels, (None, len(self.label_names)), "float")
        B, N = self.labels.shape[0], P * S
        if not isinstance(self.ids, list) or len(self.ids) != B:
            fail(f"ids must be a list of {B} sample ids, one per row of labels")
        for name in ("features", "present"):
            given = getattr(self, name)
            if not isinstance(given, dict) or set(given) != set(MODALITIES):
                got = list(given) if isinstance(given, dict) else type(given).__name__
                fail(f"{name} must be a dict with the keys {list(MODALITIES)}, got {got}")
        for m in MODALITIES:
            tensor(f"features['{m}']", self.features[m], (B, N, None), "float")
            tensor(f"present['{m}']", self.present[m], (B, N), "bool")
        for name in ("valid", "scope"):
            tensor(name, getattr(self, name), (B, N), "bool")
        for name, size in (("person", P), ("segment", S)):
            x = getattr(self, name)
            tensor(name, x, (B, N), "int")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= size):
                fail(f"{name} holds indices outside 0..{size - 1} (the grid {grid})")
        # tokens are person-major (n = p * S + s) in every row, padding included: RAMer reads the grid
        # by reshaping (B, N) to (B, P, S), so another order scores other tokens as each person's
        n = torch.arange(N, device=self.person.device)
        for name, want in (("person", n // S), ("segment", n % S)):
            rows = (getattr(self, name) != want).any(1).nonzero().flatten()
            if len(rows):
                fail(
                    f"{name} of row {int(rows[0])} is not the person-major order of the grid {grid}: token n is "
                    "person n // S, segment n % S (n = p * S + s, padded tokens included)"
                )
        tensor("target", self.target, (B,), "int")
        if self.target.numel() and (int(self.target.min()) < -1 or int(self.target.max()) >= N):
            fail(
                f"target holds token indices outside -1..{N - 1} (-1: the whole sample; the grid {grid} has {N} tokens)"
            )
        rows = (self.target >= 0).nonzero().flatten()
        if not bool(self.valid[rows, self.target[rows]].all()):
            fail("a target is a padded token (valid False there)")
        for name, mask in (*((f"present['{m}']", self.present[m]) for m in MODALITIES), ("scope", self.scope)):
            if bool((mask & ~self.valid).any()):
                fail(f"{name} is True on a padded token (valid False there)")
        # the models pool over scope: one left as it was when the target was moved scored a mix of persons
        implied = self.valid & (self.person == (self.target // S).unsqueeze(1))
        if bool(((self.target >= 0).unsqueeze(1) & (implied != self.scope)).any()):
            fail(
                "scope is not the target person's tokens (valid & person == target // S) in a row whose target is "
                "a token; set target and scope together, or collate the scene again"
            )
        if B and not bool(self.scope.any(1).all()):
            fail("a row's scope is empty (no token for the models to pool over)")
        tensor("role", self.role, (B,), "int")
        if self.role.numel() and not bool(((self.role >= -1) & (self.role <= 1)).all()):
            fail("role holds values other than -1, 0 and 1 (no role, non-speaker, speaker)")
        if (self.personality is None) != (self.personality_present is None):
            fail("personality and personality_present must both be tensors, or both None")
        if self.personality is not None:
            tensor("personality", self.personality, (B, P, None), "float")
            tensor("personality_present", self.personality_present, (B, P), "bool")

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
