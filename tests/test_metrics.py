"""Every metric key cross-checked against scikit-learn, on random and edge-case inputs."""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from ramer.errors import RamerError
from ramer.metrics import (
    METRIC_KEYS,
    MetricInputError,
    decide,
    format_mean_std,
    mean_std,
    multilabel_metrics,
    per_label_metrics,
    report,
    top1_accuracy,
    tune_threshold,
)


def sklearn_reference(y, p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"zero_division": 0}
        return {
            "acc": skm.jaccard_score(y, p, average="samples", **kw),
            "subset_acc": skm.accuracy_score(y, p),
            "hamming_loss": skm.hamming_loss(y, p),
            "micro_p": skm.precision_score(y, p, average="micro", **kw),
            "micro_r": skm.recall_score(y, p, average="micro", **kw),
            "micro_f1": skm.f1_score(y, p, average="micro", **kw),
            "macro_p": skm.precision_score(y, p, average="macro", **kw),
            "macro_r": skm.recall_score(y, p, average="macro", **kw),
            "macro_f1": skm.f1_score(y, p, average="macro", **kw),
            "weighted_f1": skm.f1_score(y, p, average="weighted", **kw),
        }


def cases():
    rng = np.random.default_rng(0)
    for seed in range(8):
        r = np.random.default_rng(seed)
        n, c = int(r.integers(1, 40)), int(r.integers(2, 10))
        yield (r.random((n, c)) < 0.3).astype(int), (r.random((n, c)) < 0.3).astype(int)
    y = (rng.random((20, 6)) < 0.4).astype(int)
    y[:5] = 0  # empty label rows
    yield y, (rng.random((20, 6)) < 0.4).astype(int)
    yield y, np.zeros_like(y)  # all-zero predictions
    yield np.zeros((7, 4), int), np.zeros((7, 4), int)  # nothing anywhere
    yield np.zeros((7, 4), int), np.ones((7, 4), int)
    yield np.ones((5, 3), int), np.ones((5, 3), int)  # perfect
    y = np.zeros((10, 5), int)
    y[:, 0] = 1  # labels 1..4 never occur
    yield y, (rng.random((10, 5)) < 0.5).astype(int)


@pytest.mark.parametrize("case", list(cases()))
def test_every_key_matches_sklearn(case):
    y, p = case
    ours = multilabel_metrics(y, p)
    assert tuple(ours) == METRIC_KEYS
    ref = sklearn_reference(y, p)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_per_label_matches_sklearn():
    rng = np.random.default_rng(3)
    y, p = (rng.random((50, 4)) < 0.3).astype(int), (rng.random((50, 4)) < 0.3).astype(int)
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, p, zero_division=0)
    ours = per_label_metrics(y, p, ["a", "b", "c", "d"])
    for j, name in enumerate("abcd"):
        assert ours[name]["p"] == pytest.approx(pr[j])
        assert ours[name]["r"] == pytest.approx(rc[j])
        assert ours[name]["f1"] == pytest.approx(f1[j])
        assert ours[name]["support"] == sup[j]


def test_empty_union_scores_zero_in_acc():
    y = np.array([[0, 0], [1, 0]])
    assert multilabel_metrics(y, y)["acc"] == 0.5


def test_bad_input_is_rejected():
    """A RamerError (one line for the CLI) that is still the ValueError these functions raised before."""
    for y_true, y_pred, message in (
        (np.zeros((3, 2)), np.zeros((3, 3)), r"y_true \(3, 2\) and y_pred \(3, 3\) must be equal \(N, C\) arrays"),
        (np.full((3, 2), 2), np.zeros((3, 2)), r"y_true must hold only 0 and 1 \(row 0 holds 2\)"),
    ):
        with pytest.raises(RamerError, match=message) as info:
            multilabel_metrics(y_true, y_pred)
        assert isinstance(info.value, ValueError)


Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
S = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.7, 0.4, 0.6], [0.1, 0.1, 0.1]])


@pytest.mark.parametrize("bad", [0.6, np.nan, -1])
def test_truth_that_is_not_0_or_1_is_refused(bad):
    """Soft, NaN or -1 truth would be cast to some label (0.6 -> 0: micro recall 0) without a word."""
    y = Y.astype(np.float64)
    y[2, 1] = bad
    for call in (lambda: report(y, S, 0.5), lambda: tune_threshold(y, S)):
        with pytest.raises(RamerError, match=r"y_true must hold only 0 and 1 \(row 2 holds"):
            call()


@pytest.mark.parametrize("names", [["a"], ["a", "b", "c", "d"]])
def test_label_names_must_name_every_label(names):
    """Too few names dropped labels from per_label; too many raised an IndexError."""
    for call in (lambda: per_label_metrics(Y, Y, names), lambda: report(Y, S, 0.5, label_names=names)):
        with pytest.raises(RamerError, match=rf"label_names has {len(names)} name\(s\) for 3 labels"):
            call()
    assert list(report(Y, S, 0.5, label_names=["a", "b", "c"])["per_label"]) == ["a", "b", "c"]


def test_per_label_by_role_is_per_label_of_each_role_that_has_targets():
    """``per_label_by_role``: per_label_metrics of each role's rows; a role no target has, and data
    without roles, get none; ``per_label=False`` (validation lines, the oracle) leaves both out."""
    rep = report(Y, S, 0.5, np.array([1, 0, 1, -1]), ["a", "b", "c"])
    y_pred = (S > 0.5).astype(int)
    assert rep["per_label_by_role"] == {
        "speaker": per_label_metrics(Y[[0, 2]], y_pred[[0, 2]], ["a", "b", "c"]),
        "nonspeaker": per_label_metrics(Y[[1]], y_pred[[1]], ["a", "b", "c"]),
    }
    assert rep["per_label_by_role"]["speaker"]["b"] == {"p": 0.0, "r": 0.0, "f1": 0.0, "support": 1}
    assert list(report(Y, S, 0.5, np.array([1, 1, 1, -1]))["per_label_by_role"]) == ["speaker"]
    assert "per_label_by_role" not in report(Y, S, 0.5) and "per_label_by_role" not in report(Y, S, 0.5, -np.ones(4))
    lean = report(Y, S, 0.5, np.array([1, 0, 1, -1]), per_label=False)
    assert set(lean) == {"overall", "speaker", "nonspeaker"}


@pytest.mark.parametrize(
    "threshold, message",
    [
        (np.array([0.5, 0.5]), r"threshold of shape \(2,\): expected a finite number, one per label \(shape \(3,\)\)"),
        (None, "threshold None: expected a finite number"),
        (float("nan"), "threshold nan: expected a finite number"),
        ([0.5, float("inf"), 0.5], "threshold holds 1 NaN or infinite values"),
        ("max", "unknown decision rule 'max'"),
    ],
)
def test_a_bad_threshold_is_one_clear_error(threshold, message):
    for call in (lambda: decide(S, threshold), lambda: report(Y, S, threshold)):
        with pytest.raises(RamerError, match=message):
            call()


def test_wrong_shapes_name_the_argument_and_the_shapes():
    for call, message in (
        (lambda: decide(S[0], 0.5), r"scores have shape \(3,\), expected \(n, C\)"),
        (lambda: report(Y, S[:, :2], 0.5), r"y_true \(4, 3\) and scores \(4, 2\) must be equal"),
        (lambda: tune_threshold(Y, S[:, :2]), r"y_true \(4, 3\) and scores \(4, 2\) must be equal"),
        (lambda: tune_threshold(Y[:, 0], S[:, 0]), r"y_true \(4,\) and scores \(4,\) must be equal \(N, C\)"),
        (lambda: report(Y, S, 0.5, np.array([1, 0])), r"role has shape \(2,\), expected \(4,\)"),
    ):
        with pytest.raises(RamerError, match=message) as info:
            call()
        assert isinstance(info.value, ValueError)
    assert decide(S, np.array([0.5, 0.3, 0.5])).tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_scores_must_be_finite(bad):
    """A NaN would count as "not predicted" at the threshold but as the top label in top-1."""
    y, scores = np.array([[0, 1], [1, 0]]), np.array([[bad, 0.9], [0.8, 0.1]])
    for call in (lambda: report(y, scores, 0.5), lambda: tune_threshold(y, scores)):
        with pytest.raises(RamerError, match="1 of 4 scores are NaN or infinite"):
            call()


def test_report_splits_by_role_and_top1():
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.6], [0.4, 0.45]])
    rep = report(y, s, 0.5, np.array([1, 1, 0, 0]))
    assert rep["speaker"]["n"] == 2 and rep["nonspeaker"]["n"] == 2
    assert rep["speaker"]["micro_f1"] == 1.0
    assert rep["nonspeaker"]["micro_f1"] == pytest.approx(
        skm.f1_score(y[2:], (s[2:] > 0.5).astype(int), average="micro")
    )
    assert top1_accuracy(y, s) == 0.75
    assert "speaker" not in report(y, s, 0.5, np.full(4, -1))


def test_report_splits_by_role_when_every_target_is_a_nonspeaker():
    """Roles that are all 0 (non-speaker, ROLE_NONSPEAKER) still mark the targets: the split is
    reported, the non-speaker part with every row and the speaker part empty: ``n`` alone, no
    metric (it held zeros for every metric, which test_metrics.json gave a script as 0.0 scores)."""
    y, s = np.array([[1, 0], [0, 1], [1, 0]]), np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.6]])
    rep = report(y, s, 0.5, np.zeros(3, dtype=np.int64))
    assert rep["nonspeaker"]["n"] == 3 and rep["speaker"] == {"n": 0}
    assert rep["nonspeaker"]["micro_f1"] == rep["overall"]["micro_f1"]


def test_threshold_tuning_finds_the_best_on_the_given_split():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 5)) < 0.3).astype(int)
    s = np.clip(y * 0.3 + rng.random((300, 5)) * 0.5, 0, 1)
    thr = tune_threshold(y, s)
    grid = np.round(np.arange(0.05, 0.951, 0.01), 4)
    best = max(skm.f1_score(y, (s > t).astype(int), average="micro") for t in grid)
    assert skm.f1_score(y, (s > thr).astype(int), average="micro") == pytest.approx(best)
    per = tune_threshold(y, s, per_label=True)
    assert per.shape == (5,)
    for j in range(5):
        best_j = max(skm.f1_score(y[:, j], (s[:, j] > t).astype(int), zero_division=0) for t in grid)
        assert skm.f1_score(y[:, j], (s[:, j] > per[j]).astype(int), zero_division=0) == pytest.approx(best_j)


def test_decide_compares_as_report_does_whatever_the_scores_dtype():
    """float32 scores against 0.43 (not a float32 value): a score equal to float32(0.43) is above
    0.43 in float64, as report and tune_threshold compare, so predict and eval agree."""
    s32 = np.array([[np.float32(0.43), 0.2]], dtype=np.float32)
    assert decide(s32, 0.43).tolist() == decide(s32.astype(np.float64), 0.43).tolist() == [[1, 0]]
    assert report(np.array([[1, 0]]), s32, 0.43)["overall"]["micro_p"] == 1.0


@pytest.mark.parametrize("lo, hi", [(0.435, 0.565), (0.445, 0.555)])
def test_threshold_ties_as_near_to_half_go_to_the_lower(lo, hi):
    """Micro-F1 is as high below ``lo`` as from ``hi`` up; the two grid points nearest 0.5 are as
    near (0.43 and 0.57: their float distances from 0.5 differ in the last bits)."""
    y = np.array([[1], [1], [0], [0]])
    s = np.array([[lo], [0.9], [hi], [hi]])
    assert tune_threshold(y, s) == pytest.approx(np.floor(lo * 100) / 100)


def test_threshold_search_reaches_095():
    """The grid runs from 0.05 to 0.95 inclusive: a negative scored 0.945 and a positive scored
    0.955 are told apart only by 0.95, which the search must find."""
    y = np.array([[1], [0], [0]])
    s = np.array([[0.955], [0.945], [0.1]])
    assert tune_threshold(y, s) == pytest.approx(0.95)
    assert tune_threshold(y, s, per_label=True).tolist() == pytest.approx([0.95])


# ------------------------------------------------------------------------------------ over seeds
def test_mean_std_is_the_sample_standard_deviation():
    """The seed tables' spread is the sample standard deviation (n - 1 in the denominator), 0 for
    one seed."""
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert mean_std([0.5]) == (0.5, 0.0, 1)


def test_format_mean_std_never_prints_minus_zero():
    """A mean that rounds to zero prints as 0.000 (or +0.000 for a difference), not -0.000."""
    assert format_mean_std(-0.0001, 0.002, 2) == "0.000 ± 0.002"
    assert format_mean_std(-0.0004, 0.0, 1, signed=True) == "+0.000"
    assert format_mean_std(-0.0006, 0.0, 1) == "-0.001"


def test_top1_accuracy_is_the_accuracy_of_the_arg_max_decisions():
    """Against scikit-learn: without ties, top_k_accuracy_score (k = 1); with ties, accuracy_score of
    ``decide``'s arg-max, whose tie rule (the first label) it shares."""
    rng = np.random.default_rng(0)
    y = np.eye(5, dtype=int)[rng.integers(0, 5, 200)]
    s = rng.random((200, 5))
    assert top1_accuracy(y, s) == pytest.approx(skm.top_k_accuracy_score(y.argmax(1), s, k=1, labels=range(5)))
    tied = np.round(s, 1)
    assert top1_accuracy(y, tied) == pytest.approx(skm.accuracy_score(y, decide(tied, "argmax")))
    assert top1_accuracy(np.array([[0, 1, 0]]), np.array([[0.3, 0.3, 0.1]])) == 0.0


def test_no_label_column_is_an_error_not_nan():
    with pytest.raises(MetricInputError, match=r"no label column \(C = 0\)"):
        multilabel_metrics(np.zeros((3, 0)), np.zeros((3, 0)))


def test_top1_accuracy_checks_its_inputs():
    with pytest.raises(MetricInputError, match="must be equal"):
        top1_accuracy(np.zeros((3, 4)), np.zeros((3, 2)))
    with pytest.raises(RamerError, match="1 of 4 scores are NaN or infinite"):
        top1_accuracy(np.eye(2), np.array([[np.nan, 0.1], [0.2, 0.3]]))


def test_the_oracle_of_a_split_of_one_role_keeps_its_row():
    """The embedded benchmark's oracle of a test split whose targets all have one role (one scene):
    the other role's part is ``{"n": 0}`` (report), which oracle_report left out as no figure
    rather than taking the whole oracle for a hand-edited one (None: no oracle row at all)."""
    from ramer.data.synthetic import SynthConfig, generate
    from ramer.metrics import oracle_report

    info = generate(SynthConfig(n_train=4, n_valid=2, n_test=1)).info
    empty = [p for p in ("speaker", "nonspeaker") if info["oracle"]["test"].get(p) == {"n": 0}]
    rep = oracle_report(info, "test")
    assert len(empty) == 1 and rep is not None and empty[0] not in rep
    assert rep["overall"]["n"] == 1 and {"overall", *empty} | set(rep) == {"overall", "speaker", "nonspeaker"}
