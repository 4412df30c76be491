"""Multi-label metrics, computed with numpy and cross-checked against scikit-learn in the tests.

Conventions, chosen to match scikit-learn's defaults (and so the TAILOR / CARAT / AMP code):
- ``acc`` is example-based (Jaccard) accuracy: mean over samples of |y ∩ ŷ| / |y ∪ ŷ|; a sample
  whose union is empty (no true and no predicted label) scores 0.
- A precision, recall or F1 whose denominator is 0 is 0 (``zero_division=0``).
- Scores must be finite: a NaN would count as "not predicted" at a threshold but as the top label
  in ``top1_acc``, so ``report`` and ``tune_threshold`` refuse them.

The decision (``decide``): multi-label, ``score > threshold`` (one global value or one per label,
tuned on validation); single-label, the threshold is the string ``"argmax"`` (``ARGMAX``) and each
sample gets exactly its highest-scoring label. With one-hot truth and one-hot decisions,
``subset_acc``, ``top1_acc`` and ``micro_f1`` all equal plain accuracy.
"""

from __future__ import annotations

import numpy as np

from ramer.errors import RamerError, ScoresNotFinite, is_number

ARGMAX = "argmax"  # the stored threshold of a single-label model: the top label is the decision
SELECTION = {"multi_label": "micro_f1", "single_label": "weighted_f1"}  # validation metric choosing the best epoch
METRIC_NAMES = {"micro_f1": "micro-F1", "weighted_f1": "weighted-F1"}  # how logs spell them

METRIC_KEYS = (
    "acc",
    "subset_acc",
    "hamming_loss",
    "micro_p",
    "micro_r",
    "micro_f1",
    "macro_p",
    "macro_r",
    "macro_f1",
    "weighted_f1",
)


class MetricInputError(RamerError, ValueError):
    """Input a metric function cannot score (a shape, a value, a threshold): a RamerError, one line
    naming the argument; also a ValueError, which these functions raised before, so code that
    caught that still does."""


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise MetricInputError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal (N, C) arrays")
    _zero_one("y_true", y_true)
    _zero_one("y_pred", y_pred)
    return y_true.astype(bool), y_pred.astype(bool)


def _zero_one(name: str, y: np.ndarray) -> None:
    """A MetricInputError naming ``name``, the first row and its value when ``y`` holds anything but
    0 and 1 (a soft label, NaN, -1: cast to integers, each would silently become another label)."""
    ok = np.isin(y, (0, 1))  # y: (N, C)
    if y.size and not ok.all():
        row, col = np.argwhere(~ok)[0].tolist()
        raise MetricInputError(f"{name} must hold only 0 and 1 (row {row} holds {y[row, col].item()!r})")


def _truth_and_scores(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` (0/1, (N, C)) and finite ``scores`` of the same shape, checked (``finite_scores``)."""
    y_true = np.asarray(y_true)
    scores = finite_scores(scores)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise MetricInputError(f"y_true {y_true.shape} and scores {scores.shape} must be equal (N, C) arrays")
    _zero_one("y_true", y_true)
    return y_true, scores


def per_label_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, predicted positives and real positives per label, as float arrays."""
    t, p = _check(y_true, y_pred)
    return (t & p).sum(0).astype(np.float64), p.sum(0).astype(np.float64), t.sum(0).astype(np.float64)


def per_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names=None) -> dict[str, dict[str, float]]:
    """``{label: {"p", "r", "f1", "support"}}``."""
    tp, pp, rp = per_label_counts(y_true, y_pred)
    prec, rec = _div(tp, pp), _div(tp, rp)
    f1 = _div(2 * tp, pp + rp)
    if label_names is None:
        names = [str(j) for j in range(len(tp))]
    else:
        names = [label_names] if isinstance(label_names, str) else list(label_names)
        if len(names) != len(tp):
            raise MetricInputError(
                f"label_names has {len(names)} name(s) for {len(tp)} labels (the columns of y_true); one name per label"
            )
    return {
        str(name): {"p": float(prec[j]), "r": float(rec[j]), "f1": float(f1[j]), "support": int(rp[j])}
        for j, name in enumerate(names)
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``(C, C)`` int64 counts of single-label decisions: ``[i, j]`` samples of label ``i`` decided
    ``j`` (the arg-max). Each row of both holds exactly one label; otherwise a MetricInputError (a
    multi-label row has no one cell)."""
    t, p = _check(y_true, y_pred)
    for name, y in (("y_true", t), ("y_pred", p)):
        if (bad := int((y.sum(1) != 1).sum())) > 0:
            raise MetricInputError(
                f"{name}: {bad} row(s) without exactly one label; a confusion matrix needs one per row"
            )
    out = np.zeros((t.shape[1], t.shape[1]), dtype=np.int64)
    np.add.at(out, (t.argmax(1), p.argmax(1)), 1)
    return out


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """All metrics of ``METRIC_KEYS`` for ``(N, C)`` 0/1 arrays; an empty set gives zeros."""
    t, p = _check(y_true, y_pred)
    if t.shape[1] == 0:  # every mean below would be over no label
        raise MetricInputError("y_true and y_pred have no label column (C = 0)")
    if t.shape[0] == 0:
        return {k: 0.0 for k in METRIC_KEYS}
    inter, union = (t & p).sum(1), (t | p).sum(1)
    tp, pp, rp = per_label_counts(t, p)
    prec_l, rec_l, f1_l = _div(tp, pp), _div(tp, rp), _div(2 * tp, pp + rp)
    support = rp.sum()
    return {
        "acc": float(_div(inter, union).mean()),
        "subset_acc": float((t == p).all(1).mean()),
        "hamming_loss": float((t != p).mean()),
        "micro_p": float(_div(tp.sum(), pp.sum())),
        "micro_r": float(_div(tp.sum(), rp.sum())),
        "micro_f1": float(_div(2 * tp.sum(), pp.sum() + rp.sum())),
        "macro_p": float(prec_l.mean()),
        "macro_r": float(rec_l.mean()),
        "macro_f1": float(f1_l.mean()),
        "weighted_f1": float((f1_l * rp).sum() / support) if support > 0 else 0.0,
    }


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """``scores`` as float64; a ``ScoresNotFinite`` when any is NaN or infinite (a diverged model), so
    that no metric, threshold or prediction file is made from them."""
    scores = np.asarray(scores, dtype=np.float64)
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise ScoresNotFinite(
            f"{bad} of {scores.size} scores are NaN or infinite (did the model diverge?); "
            "nothing is computed or written from them"
        )
    return scores


def top1_accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Share of samples whose highest-scoring label is one of their true labels (MEmoR). A tie goes
    to the first label, as ``decide``'s arg-max does (scikit-learn's ``top_k_accuracy_score`` takes
    the last), so that top-1 accuracy is the accuracy of the arg-max decisions."""
    y_true, scores = _truth_and_scores(y_true, scores)
    if len(y_true) == 0:
        return 0.0
    best = np.asarray(scores).argmax(1)
    return float(y_true[np.arange(len(y_true)), best].astype(bool).mean())


def decide(scores: np.ndarray, threshold: float | np.ndarray | str) -> np.ndarray:
    """0/1 decisions ``(n, C)`` int64: ``scores > threshold``, or for ``ARGMAX`` the top label of each
    row (exactly one per sample; ties go to the first label). ``threshold``: a finite number, one per
    label (shape ``(C,)``) or ``ARGMAX``; anything else is a MetricInputError. Compared in float64,
    as ``report`` and ``tune_threshold`` compare (float32 scores against a float64 threshold would
    compare in float32 under NumPy 1's value-based casting: a score equal to float32(0.43) would be
    above 0.43 in one and not in the other)."""
    scores = np.asarray(scores)
    if scores.dtype.kind == "f":
        scores = scores.astype(np.float64, copy=False)
    if scores.ndim != 2:
        raise MetricInputError(f"scores have shape {scores.shape}, expected (n, C): one row per sample")
    if isinstance(threshold, str):
        if threshold != ARGMAX:
            raise MetricInputError(f"unknown decision rule '{threshold}' (a number, one per label, or '{ARGMAX}')")
        out = np.zeros(scores.shape, dtype=np.int64)
        if scores.shape[0]:
            out[np.arange(scores.shape[0]), scores.argmax(1)] = 1
        return out
    return (scores > _threshold(threshold, scores.shape[1])).astype(np.int64)


def _threshold(threshold, n_labels: int) -> np.ndarray:
    """``threshold`` as a float array of shape () or (C,), finite; else a MetricInputError."""
    try:
        thr = None if isinstance(threshold, bool) else np.asarray(threshold, dtype=np.float64)
    except (TypeError, ValueError):  # None, a ragged list, text in a list
        thr = None
    if thr is None or thr.shape not in ((), (n_labels,)) or not np.isfinite(thr).all():
        if thr is None or thr.ndim == 0:
            got = repr(threshold)
        elif thr.shape == (n_labels,):
            got = f"holds {int((~np.isfinite(thr)).sum())} NaN or infinite values"
        else:
            got = f"of shape {thr.shape}"
        raise MetricInputError(
            f"threshold {got}: expected a finite number, one per label (shape ({n_labels},)) or '{ARGMAX}'"
        )
    return thr


def choose_threshold(
    y_true: np.ndarray, scores: np.ndarray, task: str, per_label: bool = False
) -> float | np.ndarray | str:
    """The decision rule a run stores, chosen on validation: ``ARGMAX`` for single-label data (no
    tuning), else ``tune_threshold``."""
    if task == "single_label":
        return ARGMAX
    return tune_threshold(y_true, scores, per_label=per_label)


def describe_threshold(threshold, word: str = "thr") -> str:
    """For logs and titles: ``thr 0.43``, ``arg-max``, or for per-label values their range,
    ``thr per label 0.46 to 0.54`` (not one number: a mean read as the run's threshold)."""
    if isinstance(threshold, str):
        return "arg-max"
    if np.ndim(threshold) == 0:
        return f"{word} {float(threshold):.2f}"
    low, high = (f"{float(f(threshold)):.2f}" for f in (np.min, np.max))
    return f"{word} per label {low}" + ("" if low == high else f" to {high}")


def report(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float | np.ndarray | str,
    role: np.ndarray | None = None,
    label_names=None,
    per_label: bool = True,
) -> dict:
    """``{"overall": {...}, "speaker": {...}, "nonspeaker": {...}}`` at ``threshold`` (``decide``).

    The role split appears only when ``role`` marks some targets (1 speaker, 0 non-speaker).
    Each part holds the keys of ``METRIC_KEYS`` plus ``top1_acc`` and ``n``; a part of no target
    (a role, or ``overall`` of an empty split) holds ``n`` (0) alone. With ``per_label``,
    ``per_label`` (every target) sits beside the parts, and with the role split
    ``per_label_by_role``: ``{role: {label: {...}}}`` for each role some target has.
    """
    y_true, scores = _truth_and_scores(y_true, scores)
    y_true = y_true.astype(np.int64)
    y_pred = decide(scores, threshold)
    if role is not None and np.shape(role) != (len(y_true),):
        raise MetricInputError(f"role has shape {np.shape(role)}, expected ({len(y_true)},): one per row of y_true")

    def part(mask: np.ndarray) -> dict:
        out = multilabel_metrics(y_true[mask], y_pred[mask])
        out["top1_acc"] = top1_accuracy(y_true[mask], scores[mask])
        out["n"] = int(mask.sum())
        return out

    everything = np.ones(len(y_true), dtype=bool)
    # an empty split (a test split no conversation went to) scores nothing: not zeros (a Hamming loss
    # of 0 reads as perfect) that a reader would take for figures, as a role of no target
    result = {"overall": part(everything) if len(y_true) else {"n": 0}}
    roles = {}
    if role is not None and (np.asarray(role) >= 0).any():
        role = np.asarray(role)
        roles = {name: mask for name, mask in (("speaker", role == 1), ("nonspeaker", role == 0))}
        for name, mask in roles.items():
            # a role no target of the split has: no score, not zeros that a reader would average
            result[name] = part(mask) if mask.any() else {"n": 0}
    if per_label:
        result["per_label"] = per_label_metrics(y_true, y_pred, label_names)
        if roles:
            result["per_label_by_role"] = {
                name: per_label_metrics(y_true[mask], y_pred[mask], label_names)
                for name, mask in roles.items()
                if mask.any()
            }
    return result


def scored_parts(metrics: dict) -> dict:
    """The parts of a run's test metrics that scored some targets: a split whose targets all have
    one role (M3ED utterances, an import with --targets rows) reports the other part with n = 0
    (runs written by earlier versions also hold zeros for its metrics there, which are no score and
    would be averaged as one)."""
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics is {type(metrics).__name__}, not an object")
    return {
        k: metrics[k]
        for k in ("overall", "speaker", "nonspeaker")
        if isinstance(metrics.get(k), dict) and metrics[k].get("n", 1) > 0
    }


def oracle_report(info: dict, split: str) -> dict | None:
    """The embedded benchmark's oracle figures of ``split`` (a ``report`` without ``per_label``) from a
    bundle's ``info``; None where the data has none, or holds them in a form no table can show (a
    hand-edited meta.json): a reference row, never a reason to fail after the runs."""
    oracle = info.get("oracle") if isinstance(info, dict) else None
    rep = oracle.get(split) if isinstance(oracle, dict) else None
    if not isinstance(rep, dict) or not isinstance(rep.get("overall"), dict):
        return None
    # a role no target of the split has ({"n": 0}, from report) is no figure: left out, as scored_parts does
    # (which a hand-edited, non-numeric n would stop with a TypeError; the checks below name it instead)
    rep = {k: v for k, v in rep.items() if k == "overall" or not (isinstance(v, dict) and v.get("n") == 0)}
    for part in ("overall", "speaker", "nonspeaker"):
        m = rep.get(part)
        if part in rep and not (
            isinstance(m, dict) and all(is_number(m.get(k)) for k in (*METRIC_KEYS, "top1_acc", "n"))
        ):
            return None
    return rep


def tune_threshold(
    y_true: np.ndarray, scores: np.ndarray, per_label: bool = False, grid: np.ndarray | None = None
) -> float | np.ndarray:
    """Threshold maximising micro-F1 (global) or each label's F1 (per label) on the given split.

    Call it on the validation split only. Ties go to the threshold nearest 0.5, and between two
    as near, to the lower.
    """
    y_true, scores = _truth_and_scores(y_true, scores)
    y_true = y_true.astype(bool)
    grid = np.round(np.arange(0.05, 0.951, 0.01), 4) if grid is None else np.asarray(grid)
    # (G, N, C) comparisons, chunked over the grid so memory stays small.
    tp = np.empty((len(grid), y_true.shape[1]))
    pp = np.empty_like(tp)
    for g0 in range(0, len(grid), 16):
        pred = scores[None] > grid[g0 : g0 + 16, None, None]
        tp[g0 : g0 + 16] = (pred & y_true[None]).sum(1)
        pp[g0 : g0 + 16] = pred.sum(1)
    rp = y_true.sum(0)[None].astype(np.float64)
    # ties go to the threshold nearest 0.5, and of two as near, the lower (rounded: 0.43 and 0.57 are
    # as near, though their float differences from 0.5 are not)
    order = np.lexsort((grid, np.round(np.abs(grid - 0.5), 9)))
    if not per_label:
        f1 = _div(2 * tp.sum(1), pp.sum(1) + rp.sum())
        return float(grid[order[np.argmax(f1[order])]])
    f1 = _div(2 * tp, pp + rp)  # (G, C)
    return grid[order[np.argmax(f1[order], axis=0)]]


# ---------------------------------------------------------------------- over seeds
def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of a metric over seeds; NaNs for none."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan"), 0
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size)


def format_mean_std(mean: float, std: float, n: int, digits: int = 3, signed: bool = False) -> str:
    """``mean ± std`` as the seed tables write it: ``–`` for no value, the value alone for one;
    ``signed`` for a difference (``+0.013 ± 0.003``)."""
    if n == 0:
        return "–"
    if abs(mean) < 0.5 * 10**-digits:
        mean = 0.0  # no "-0.000"
    value = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return value if n == 1 else f"{value} ± {std:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table: names in the first column (left-aligned), figures in the
    others (right-aligned). Every seed table of the bench and of ``ramer reproduce`` is one."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
