"""What every model shares: the data facts it is built for, and the loss result it returns.

A model is an ``nn.Module`` with
- ``forward(batch) -> output``: a dataclass whose ``probs`` field is ``(B, C)`` scores in [0, 1]
  (the same fields in train and eval mode): per-label sigmoids for multi-label data, a softmax
  over the labels (each row sums to 1) for single-label data (``label_probs``);
- ``loss(output, batch) -> LossResult``: the weighted total and every named term (pure functions).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ramer.config import TASKS


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data to be built."""

    dims: dict[str, int]  # text / audio / visual feature sizes
    n_labels: int
    label_names: tuple[str, ...]
    personality_dim: int | None = None  # None: the data has no personality
    task: str = "multi_label"  # config.TASKS: losses, probabilities and the decision follow it

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task '{self.task}', expected one of {TASKS}")

    @property
    def single_label(self) -> bool:
        return self.task == "single_label"

    @classmethod
    def from_bundle(cls, bundle, task: str | None = None) -> "DataSpec":
        """``task``: the run's task (``data.resolve_task``); default the bundle's own."""
        dims = bundle.dims
        return cls(
            dims={m: int(dims[m]) for m in ("text", "audio", "visual")},
            n_labels=len(bundle.label_names),
            label_names=tuple(bundle.label_names),
            personality_dim=dims.get("personality"),
            task=task or bundle.task,
        )

    def to_dict(self) -> dict:
        return {
            "dims": dict(self.dims),
            "n_labels": self.n_labels,
            "label_names": list(self.label_names),
            "personality_dim": self.personality_dim,
            "task": self.task,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(
            dims={k: int(v) for k, v in d["dims"].items()},
            n_labels=int(d["n_labels"]),
            label_names=tuple(d["label_names"]),
            personality_dim=None if d.get("personality_dim") is None else int(d["personality_dim"]),
            task=d.get("task", "multi_label"),  # checkpoints written before the key: multi-label
        )


def label_probs(logits: Tensor, single_label: bool) -> Tensor:
    """Scores from logits ``(..., C)``: a softmax over the labels (single-label) or per-label sigmoids."""
    return logits.softmax(-1) if single_label else logits.sigmoid()


@dataclass
class LossResult:
    total: Tensor  # scalar, what the optimiser minimises
    terms: dict[str, Tensor]  # each unweighted term, detached, for logging
