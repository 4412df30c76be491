"""How much of a comparison between two models is the test set's own sampling: a paired bootstrap
over the test samples of two groups of ``ramer predict`` files (for example eight seeds of each model).

    python benchmarks/paired_bootstrap.py DATA --a A1.jsonl A2.jsonl ... --b B1.jsonl B2.jsonl ... \
        [--names A,B] [--split test] [--metric weighted_f1] [--above X] [--unit conversation] \
        [--resamples 2000] [--seed 0]

Every file must hold one prediction for every sample of the split (evaluation drops none); their
``labels`` (the run's own decision: the arg-max on single-label data, the threshold otherwise) are
scored with ``ramer.metrics.multilabel_metrics``, the code every report uses. Each resample draws
conversations (``--unit conversation``: the part of a sample id before the first ``/``, as
``ramer data import`` writes ids; samples of one conversation are not independent) or samples
with replacement, the same draw for both groups, and scores each group's mean over its files.

Prints each file's figure, each group's mean, the 95 % percentile interval of each group's mean
and of the difference A - B, the share of resamples where A >= B, and with ``--above X`` the share
where A's mean >= X. The metric defaults to the data's selection metric (weighted F1 on
single-label data, micro-F1 otherwise). Nothing here is chosen: it reads predictions already made.
(EmoryNLP: docs/RESULTS.md.)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ramer.config import DataConfig
from ramer.data import load_bundle
from ramer.errors import RamerError
from ramer.infer import read_predictions
from ramer.metrics import METRIC_KEYS, SELECTION, multilabel_metrics


def decisions(path: str, ids: list[str], names: tuple[str, ...]) -> np.ndarray:
    """(n, C) 0/1 decisions of a predictions file, in the split's sample order."""
    records = {rec["id"]: rec for rec in read_predictions(path, names)}
    missing = [i for i in ids if i not in records]
    if missing:
        raise RamerError(
            f"{path}: no prediction for {len(missing)} of the split's {len(ids)} samples (first: {missing[0]})"
        )
    extra = set(records) - set(ids)
    if extra:
        raise RamerError(f"{path}: {len(extra)} predictions for samples not in this split (first: {sorted(extra)[0]})")
    column = {n: j for j, n in enumerate(names)}
    out = np.zeros((len(ids), len(names)), dtype=np.int64)
    for i, sample_id in enumerate(ids):
        for label in records[sample_id]["labels"]:
            out[i, column[label]] = 1
    return out


def units(ids: list[str], unit: str) -> np.ndarray:
    """(n,) the resampling unit of each sample: its conversation or itself."""
    if unit == "sample":
        return np.arange(len(ids))
    if not all("/" in i for i in ids):
        raise RamerError(
            "--unit conversation needs sample ids of the form CONVERSATION/..., as ramer data import writes; "
            "use --unit sample"
        )
    return np.unique([i.split("/", 1)[0] for i in ids], return_inverse=True)[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="the dataset the predictions were made on")
    ap.add_argument("--a", nargs="+", required=True, metavar="PREDS", help="group A's ramer predict files")
    ap.add_argument("--b", nargs="+", required=True, metavar="PREDS", help="group B's ramer predict files")
    ap.add_argument("--names", default="A,B", help="the two groups' names (default: A,B)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--metric", choices=METRIC_KEYS, help="default: the data's selection metric")
    ap.add_argument("--above", type=float, metavar="X", help="also the share of resamples where A's mean >= X")
    ap.add_argument("--unit", choices=("conversation", "sample"), default="conversation")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = args.names.split(",")
    if len(names) != 2 or not all(names):
        raise RamerError(f"--names: two names separated by a comma, got '{args.names}'")
    if args.resamples < 1:
        raise RamerError(f"--resamples must be at least 1, got {args.resamples}")

    bundle = load_bundle(DataConfig(path=args.data))
    if args.split not in bundle.splits:
        raise RamerError(f"{args.data}: no split '{args.split}' (has {', '.join(bundle.splits)})")
    store = bundle.splits[args.split]
    metric = args.metric or SELECTION[bundle.task]
    gold = np.asarray(store.labels).astype(np.int64)
    ids = list(store.ids)
    groups = [np.stack([decisions(p, ids, store.label_names) for p in files]) for files in (args.a, args.b)]
    group_of = units(ids, args.unit)
    members = [np.flatnonzero(group_of == u) for u in range(group_of.max() + 1)]

    def score(pred: np.ndarray, idx: np.ndarray) -> float:
        return multilabel_metrics(gold[idx], pred[idx])[metric]

    every = np.arange(len(ids))
    grouped = f" in {len(members)} conversations" if args.unit == "conversation" else ""
    print(f"{args.data}, split {args.split}: {len(ids)} samples{grouped}; metric {metric}")
    for name, files, preds in zip(names, (args.a, args.b), groups):
        figures = [score(p, every) for p in preds]
        for path, f in zip(files, figures):
            print(f"  {name}  {path}: {f:.4f}")
        print(f"  {name}  mean of {len(figures)}: {np.mean(figures):.4f}")

    rng = np.random.default_rng(args.seed)
    means = np.zeros((args.resamples, 2))
    for r in range(args.resamples):
        idx = np.concatenate([members[u] for u in rng.integers(0, len(members), len(members))])
        means[r] = [np.mean([score(p, idx) for p in preds]) for preds in groups]
    diff = means[:, 0] - means[:, 1]

    def interval(x: np.ndarray) -> str:
        lo, hi = np.percentile(x, [2.5, 97.5])
        return f"[{lo:.4f}, {hi:.4f}]"

    print(f"bootstrap: {args.resamples} resamples of {args.unit}s (seed {args.seed}), 95 % percentile intervals")
    print(f"  {names[0]} mean {interval(means[:, 0])}")
    print(f"  {names[1]} mean {interval(means[:, 1])}")
    print(
        f"  {names[0]} - {names[1]} {interval(diff)}; "
        f"share of resamples with {names[0]} >= {names[1]}: {np.mean(diff >= 0):.3f}"
    )
    if args.above is not None:
        print(
            f"  share of resamples with {names[0]}'s mean >= {args.above:g}: {np.mean(means[:, 0] >= args.above):.3f}"
        )


if __name__ == "__main__":
    try:
        main()
    except RamerError as e:
        sys.exit(f"error: {e}")
