"""Classical multi-label baselines with scikit-learn logistic regression on pooled features.

Features of a sample (:func:`pooled_features`, :func:`feature_size` columns), in this order:
for each modality the mean of its present tokens in the target scope (zero when none); for each
modality its features at the target token (zero where the target token lacks the modality or the
sample has no target); the three flags "modality present somewhere in the scope"; the three flags
"modality present at the target token" (all 0 without a target). Standardised with the training
mean and standard deviation.

- ``br`` binary relevance: one logistic regression per label;
- ``cc`` classifier chain (label order 0..C-1): label ``j`` also sees labels ``0..j-1`` (the true
  ones when fitting, the thresholded predictions when predicting);
- ``lp`` label powerset: one multinomial logistic regression over the label sets seen in
  training; the probability of label ``j`` is the total probability of the sets containing it.

On single-label data the fits are the same; ``ClassicalModule`` divides each
sample's label probabilities by their sum, so that they sum to 1, and the decision is the arg-max.

``ClassicalModule`` puts a fitted model behind the deep models' interface (``forward(batch).probs``).

A fitted model is a handful of arrays (``to_arrays`` / ``from_arrays``, safetensors-friendly, no
pickle); predictions are computed from those arrays, so a rebuilt model gives identical
probabilities.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from ramer.batch import MODALITIES, Batch
from ramer.errors import RamerError
from ramer.models.base import DataSpec
from ramer.models.late_fusion import target_mask

KINDS = ("br", "cc", "lp")


def feature_size(dims) -> int:
    """Columns of :func:`pooled_features` for feature sizes ``dims`` (modality -> d_m):
    ``2 * sum d_m + 6`` (scope means, target-token features, two sets of three flags)."""
    return 2 * sum(int(dims[m]) for m in MODALITIES) + 2 * len(MODALITIES)


def pooled_features(store, indices=None, chunk: int = 1024) -> np.ndarray:
    """(n, 2 sum d_m + 6) float64: per-modality masked means over the target scope, per-modality
    features at the target token, scope presence flags, target-token presence flags."""
    idx = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    out = np.zeros((len(idx), feature_size(store.dims)), dtype=np.float64)
    for start in range(0, len(idx), chunk):
        batch = store.collate(idx[start : start + chunk])
        at_target = target_mask(batch)  # (B, N), none when target == -1
        means, targets, flags, target_flags = [], [], [], []
        for m in MODALITIES:
            w = (batch.present[m] & batch.scope).to(torch.float64).unsqueeze(-1)  # (B, N, 1)
            x = torch.where(w > 0, batch.features[m].to(torch.float64), 0.0)  # (B, N, d_m), 0 where not read
            means.append((x * w).sum(1) / w.sum(1).clamp_min(1.0))
            flags.append((w.sum(1) > 0).to(torch.float64))
            here = (batch.present[m] & at_target).unsqueeze(-1)  # (B, N, 1): the target token, if it has m
            targets.append(torch.where(here, x, 0.0).sum(1))  # (B, d_m)
            target_flags.append(here.any(1).to(torch.float64))
        out[start : start + len(batch.ids)] = torch.cat(means + targets + flags + target_flags, 1).numpy()
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN scores (of NaN features) are the caller's to name, without a warning
        return np.exp(-np.logaddexp(0.0, -z))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _constant_logit(y: np.ndarray) -> float:
    """Smoothed log-odds of a label that is constant in training (LR cannot be fitted)."""
    k, n = float(y.sum()), float(len(y))
    return float(np.log((k + 0.5) / (n - k + 0.5)))


class ClassicalModel:
    """``br`` / ``cc`` / ``lp`` over :func:`pooled_features`; see the module docstring."""

    def __init__(self, kind: str, label_names, seed: int = 0, C: float = 1.0, max_iter: int = 300) -> None:
        if kind not in KINDS:
            raise RamerError(f"unknown classical model '{kind}'; known: {', '.join(KINDS)}")
        self.kind = kind
        self.label_names = tuple(label_names)
        self.seed, self.C, self.max_iter = seed, C, max_iter
        self.arrays: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ fitting
    def _lr(self) -> LogisticRegression:
        return LogisticRegression(C=self.C, solver="lbfgs", max_iter=self.max_iter, random_state=self.seed)

    def _fit_binary(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        if y.min() == y.max():
            return np.zeros(X.shape[1]), _constant_logit(y)
        lr = self._lr().fit(X, y)
        return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])

    def fit(self, store) -> "ClassicalModel":
        X = pooled_features(store)
        Y = np.asarray(store.labels, dtype=np.int64)
        if Y.shape[1] != len(self.label_names):
            raise RamerError(f"store has {Y.shape[1]} labels, model has {len(self.label_names)}")
        mean = X.mean(0)
        scale = X.std(0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        Xs = (X - mean) / scale
        n, C = Y.shape
        arrays = {"mean": mean, "scale": scale}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.kind == "br":
                fits = [self._fit_binary(Xs, Y[:, j]) for j in range(C)]
                arrays["coef"] = np.stack([w for w, _ in fits])  # (C, D)
                arrays["intercept"] = np.array([b for _, b in fits])  # (C,)
            elif self.kind == "cc":
                D = Xs.shape[1]
                coef = np.zeros((C, D + C - 1))
                intercept = np.zeros(C)
                for j in range(C):
                    w, b = self._fit_binary(np.concatenate([Xs, Y[:, :j]], 1), Y[:, j])
                    coef[j, : D + j], intercept[j] = w, b
                arrays["coef"], arrays["intercept"] = coef, intercept
            else:  # lp
                classes, y = np.unique(Y, axis=0, return_inverse=True)
                y = y.reshape(-1)
                if len(classes) == 1:
                    coef, intercept = np.zeros((1, Xs.shape[1])), np.zeros(1)
                else:
                    lr = self._lr().fit(Xs, y)
                    coef, intercept = lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64)
                arrays["classes"] = classes.astype(np.float64)  # (K, C) label sets
                arrays["coef"], arrays["intercept"] = coef, intercept  # (K or 1, D), (K or 1,)
        self.arrays = arrays
        return self

    # ------------------------------------------------------------------ prediction
    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """(n, C) probabilities from raw pooled features ``X``."""
        if self.arrays is None:
            raise RamerError("classical model is not fitted")
        a = self.arrays
        if X.shape[1] != len(a["mean"]):
            raise RamerError(
                f"classical '{self.kind}' model was fitted on {len(a['mean'])} pooled features, the data gives "
                f"{X.shape[1]}: it was fitted on data of other feature sizes or by a version that pooled "
                "other features; train it again"
            )
        Xs = (X - a["mean"]) / a["scale"]
        if self.kind == "br":
            return _sigmoid(Xs @ a["coef"].T + a["intercept"])
        if self.kind == "cc":
            D, C = Xs.shape[1], len(a["intercept"])
            probs = np.zeros((len(Xs), C))
            hard = np.zeros((len(Xs), C))
            for j in range(C):
                z = Xs @ a["coef"][j, :D] + hard[:, :j] @ a["coef"][j, D : D + j] + a["intercept"][j]
                probs[:, j] = _sigmoid(z)
                hard[:, j] = (probs[:, j] >= 0.5).astype(np.float64)
            return probs
        classes = a["classes"]  # (K, C)
        K = len(classes)
        if K == 1:
            set_probs = np.ones((len(Xs), 1))
        elif K == 2:  # sklearn's binary case: one decision function for the second class
            p1 = _sigmoid(Xs @ a["coef"][0] + a["intercept"][0])
            set_probs = np.stack([1.0 - p1, p1], 1)
        else:
            set_probs = _softmax(Xs @ a["coef"].T + a["intercept"])  # (n, K)
        return set_probs @ classes

    def predict_proba(self, store, batch_size: int = 1024) -> np.ndarray:
        return self.predict_features(pooled_features(store, chunk=batch_size))

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        if self.arrays is None:
            raise RamerError("classical model is not fitted")
        return {k: np.ascontiguousarray(v) for k, v in self.arrays.items()}

    @classmethod
    def from_arrays(cls, kind: str, label_names, arrays: dict[str, np.ndarray]) -> "ClassicalModel":
        model = cls(kind, label_names)
        need = {"mean", "scale", "coef", "intercept"} | ({"classes"} if kind == "lp" else set())
        missing = need - set(arrays)
        if missing:
            raise RamerError(f"classical '{kind}' weights lack {sorted(missing)}")
        model.arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
        return model


@dataclass
class ClassicalOutput:
    probs: Tensor  # (B, C) float64 label probabilities


class _OneBatch:
    """``pooled_features`` reads a store through ``len``/``dims``/``collate``; this serves one
    already collated batch as a store of that batch (so features are pooled by the same code)."""

    def __init__(self, batch: Batch, dims: dict[str, int]) -> None:
        self.batch = batch.to("cpu")
        self.dims = dims

    def __len__(self) -> int:
        return self.batch.size

    def collate(self, indices) -> Batch:
        assert len(indices) == self.batch.size, "the whole batch is pooled in one chunk"
        return self.batch


class ClassicalModule(nn.Module):
    """A fitted ``br``/``cc``/``lp`` with the model interface: ``forward(batch).probs``.

    The fitted arrays are float64 buffers, so ``state_dict()`` is what ``model.safetensors`` holds.
    """

    def __init__(self, kind: str, spec: DataSpec, arrays: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.kind, self.spec = kind, spec
        self.classical = ClassicalModel.from_arrays(kind, spec.label_names, arrays)
        for name, value in self.classical.arrays.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)))

    @classmethod
    def from_state(cls, kind: str, spec: DataSpec, state: dict[str, Tensor]) -> "ClassicalModule":
        """Rebuild from the tensors of a ``model.safetensors`` (``checkpoint.read_model_file``)."""
        # copies: float64 tensors of the file are views of its memory map (the file would stay open)
        return cls(kind, spec, {k: v.double().numpy().copy() for k, v in state.items()})

    def forward(self, batch: Batch) -> ClassicalOutput:
        X = pooled_features(_OneBatch(batch, self.spec.dims), chunk=max(1, batch.size))  # (B, D)
        probs = self.classical.predict_features(X)  # (B, C)
        if self.spec.single_label:  # the per-label fits, normalised to one distribution per sample
            probs = probs / np.maximum(probs.sum(1, keepdims=True), 1e-300)
        return ClassicalOutput(torch.from_numpy(probs).to(batch.labels.device))
