"""What every model shares: the data facts it is built for, and the loss result it returns.

A model is an ``nn.Module`` with
- ``forward(batch) -> output``: a dataclass whose ``probs`` field is ``(B, C)`` scores in [0, 1]
  (the same fields in train and eval mode): per-label sigmoids for multi-label data, a softmax
  over the labels (each row sums to 1) for single-label data (``label_probs``);
- ``loss(output, batch) -> LossResult``: the weighted total and every named term (pure functions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ramer.config import TASKS
from ramer.errors import RamerError, is_whole

GUIDE = "docs/ARCHITECTURE.md, 'Adding a model'"


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data to be built."""

    dims: dict[str, int]  # text / audio / visual feature sizes
    n_labels: int
    label_names: tuple[str, ...]
    personality_dim: int | None = None  # None: the data has no personality
    task: str = "multi_label"  # config.TASKS: losses, probabilities and the decision follow it
    personality_names: tuple[str, ...] | None = None  # an import's traits, in column order (None: not known)
    # what an import's inputs were made with: {"context": N, "features": {modality: descriptor}} (None: not known)
    import_settings: dict | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task '{self.task}', expected one of {TASKS}")

    @property
    def single_label(self) -> bool:
        return self.task == "single_label"

    @classmethod
    def from_bundle(cls, bundle, task: str | None = None) -> "DataSpec":
        """``task``: the run's task (``data.resolve_task``); default (or ``"auto"``, as
        ``cfg.data.task`` has it) the bundle's own."""
        dims = bundle.dims
        return cls(
            dims={m: int(dims[m]) for m in ("text", "audio", "visual")},
            n_labels=len(bundle.label_names),
            label_names=tuple(bundle.label_names),
            personality_dim=dims.get("personality"),
            task=bundle.task if task in (None, "auto") else task,
            personality_names=trait_names(bundle.info, dims.get("personality")),
            import_settings=import_settings(bundle.info, bundle.modalities),
        )

    def to_dict(self) -> dict:
        names = {} if self.personality_names is None else {"personality_names": list(self.personality_names)}
        names |= {} if self.import_settings is None else {"import_settings": self.import_settings}
        return {
            "dims": dict(self.dims),
            "n_labels": self.n_labels,
            "label_names": list(self.label_names),
            "personality_dim": self.personality_dim,
            "task": self.task,
            **names,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(
            dims={k: int(v) for k, v in d["dims"].items()},
            n_labels=int(d["n_labels"]),
            label_names=tuple(d["label_names"]),
            personality_dim=None if d.get("personality_dim") is None else int(d["personality_dim"]),
            task=d.get("task", "multi_label"),  # checkpoints written before the key: multi-label
            personality_names=_names(d.get("personality_names")),
            import_settings=import_settings({"conversations": d.get("import_settings")}),
        )


def trait_names(info, width: int | None = None) -> tuple[str, ...] | None:
    """The personality traits of an import, in column order (``info.conversations.personality_traits``,
    ``ramer data import --personality``), where ``info`` (a bundle's) records them as strings, and as
    many as ``width`` where given; None otherwise (another loader's data, a file written before)."""
    conv = info.get("conversations") if isinstance(info, dict) else None
    traits = _names(conv.get("personality_traits") if isinstance(conv, dict) else None)
    return traits if traits is not None and (width is None or len(traits) == width) else None


def import_settings(info, modalities=None) -> dict | None:
    """What an import's inputs were made with (``info.conversations``: ``context``, the utterances
    before and after a target; ``features``, modality -> the descriptor of what made them, model and
    version, of ``modalities`` where given: those the data has), where ``info`` (a bundle's) records
    both; None otherwise (another loader's data)."""
    conv = info.get("conversations") if isinstance(info, dict) else None
    if not isinstance(conv, dict):
        return None
    context, features = conv.get("context"), conv.get("features")
    if not (is_whole(context) and isinstance(features, dict) and all(isinstance(v, str) for v in features.values())):
        return None
    kept = {str(k): v for k, v in features.items() if modalities is None or k in modalities}
    return {"context": int(context), "features": kept}


def _names(value) -> tuple[str, ...] | None:
    """``value`` as a tuple of names where it is a non-empty list of strings, else None."""
    ok = isinstance(value, list) and value and all(isinstance(t, str) for t in value)
    return tuple(value) if ok else None


def package_of(model) -> str:
    """The package ``model``'s class comes from: ``ramer``, or another's (a plugin), whose code
    errors then name rather than ramer's."""
    return type(model).__module__.split(".")[0]


def label_probs(logits: Tensor, single_label: bool) -> Tensor:
    """Scores from logits ``(..., C)``: a softmax over the labels (single-label) or per-label sigmoids."""
    return logits.softmax(-1) if single_label else logits.sigmoid()


@dataclass
class LossResult:
    total: Tensor  # scalar, what the optimiser minimises
    terms: dict[str, Tensor]  # each unweighted term, detached, for logging


def output_probs(model, out, size: int, n_labels: int) -> Tensor:
    """The ``probs`` of ``model``'s output ``out`` for a batch of ``size`` samples, checked against the
    contract (an object whose ``probs`` field is a ``(size, n_labels)`` tensor); a RamerError naming
    the model and what it returned otherwise (a model of another package breaking the contract)."""
    probs = getattr(out, "probs", None)
    if isinstance(probs, Tensor) and tuple(probs.shape) == (size, n_labels):
        return probs
    if isinstance(probs, Tensor):
        got = f"probs of shape {tuple(probs.shape)} for a batch of {size} samples and {n_labels} labels"
    elif hasattr(out, "probs"):
        got = f"probs as a {type(probs).__name__}"
    else:
        got = f"a {type(out).__name__} without a probs field"
    raise RamerError(
        f"model {type(model).__name__}: forward returned {got}; expected an object whose probs field is a "
        f"(B, C) tensor of scores in [0, 1] ({GUIDE})"
    )


def unit_scores(model, scores: np.ndarray) -> np.ndarray:
    """``scores`` (a batch's probs as an array) when none lies outside [0, 1] (NaN is left to
    ``metrics.finite_scores``); a RamerError naming the model otherwise (a model of another package
    returning logits: a threshold tuned on them, and every figure, would be nonsense)."""
    outside = (scores < 0) | (scores > 1)
    if outside.any():
        raise RamerError(
            f"model {type(model).__name__}: {int(outside.sum())} of {scores.size} scores of a batch lie outside "
            f"[0, 1] (e.g. {float(scores[outside][0]):.4g}); probs are per-label sigmoids or a softmax "
            "(ramer.models.base.label_probs)"
        )
    return scores


def distribution_scores(model, scores: np.ndarray, tolerance: float = 0.01) -> np.ndarray:
    """``scores`` of single-label data when each row sums to 1 (``tolerance`` for bfloat16's
    rounding; a row holding NaN is left to ``metrics.finite_scores``); a RamerError naming the model
    otherwise (a model of another package giving per-label sigmoids there: its lines would show
    probabilities that no distribution has)."""
    sums = scores.sum(1)
    off = np.abs(sums - 1) > tolerance
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise RamerError(
            f"model {type(model).__name__}: on single-label data probs are a softmax over the labels, summing to 1 "
            f"for each sample; {int(off.sum())} of {len(scores)} rows do not (row {i} sums to {float(sums[i]):.4g}) "
            f"(ramer.models.base.label_probs(logits, single_label=True); {GUIDE})"
        )
    return scores


def checked_loss(model, loss) -> LossResult:
    """``model.loss``'s result, checked: a LossResult whose total and terms are scalars; the term
    name ``loss`` is the logged total's."""
    name = type(model).__name__
    if not isinstance(loss, LossResult):
        raise RamerError(
            f"model {name}: loss() returned a {type(loss).__name__}; expected a "
            f"ramer.models.base.LossResult(total=..., terms={{...}}) ({GUIDE})"
        )
    if not isinstance(loss.total, Tensor) or loss.total.numel() != 1:
        got = f"shape {tuple(loss.total.shape)}" if isinstance(loss.total, Tensor) else type(loss.total).__name__
        raise RamerError(f"model {name}: LossResult.total must be a scalar tensor (one number), got {got}")
    if torch.is_grad_enabled() and not loss.total.requires_grad:
        raise RamerError(
            f"model {name}: LossResult.total has no gradient (requires_grad is False): it is detached, or "
            "depends on no trained parameter"
        )
    if not isinstance(loss.terms, dict):
        got = type(loss.terms).__name__
        raise RamerError(f"model {name}: LossResult.terms must be a dict of named scalars, got {got}")
    for key, value in loss.terms.items():
        if not isinstance(key, str) or key == "loss":
            raise RamerError(f"model {name}: LossResult.terms key {key!r}: a name other than 'loss' (the logged total)")
        if not (isinstance(value, (int, float)) or isinstance(value, Tensor) and value.numel() == 1):
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise RamerError(f"model {name}: LossResult.terms['{key}'] must be a scalar (one number), got {got}")
    return loss
