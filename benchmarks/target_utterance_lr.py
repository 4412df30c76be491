"""The floor for single-label conversation data: a multinomial logistic regression on the frozen
text features of the target utterance alone (no context, no other modality), its inverse
regularisation C chosen on the valid split, scored once on test.

    python benchmarks/target_utterance_lr.py DIR     # DIR: a `ramer data import` of a single-label table

Prints, for each C of the grid, the valid weighted F1 of the arg-max, then the test accuracy,
weighted F1 and macro F1 at the C chosen on valid. (EmoryNLP: docs/RESULTS.md.)
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from ramer.config import DataConfig
from ramer.data import load_bundle

GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def target_text(store) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) text features of each sample's target token and (n,) its one label."""
    if (np.asarray(store.target) < 0).any():
        raise SystemExit(f"{store.source}: every sample needs a target token")
    rows = store.token_offsets[:-1] + store.target[:, 0].astype(np.int64) * store.grid[:, 1] + store.target[:, 1]
    labels = np.asarray(store.labels)
    if (labels.sum(1) != 1).any():
        raise SystemExit(f"{store.source}: single-label data expected (one label per sample)")
    text = np.stack([store.token_features("text", r, r + 1)[0] for r in rows.tolist()])  # dense or packed
    return text.astype(np.float64), labels.argmax(1)


def main(path: str) -> None:
    bundle = load_bundle(DataConfig(path=path))
    (xt, yt), (xv, yv), (xs, ys) = (target_text(bundle.splits[s]) for s in ("train", "valid", "test"))
    mean, scale = xt.mean(0), xt.std(0) + 1e-8
    xt, xv, xs = ((x - mean) / scale for x in (xt, xv, xs))
    best = None
    for C in GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=C, max_iter=2000).fit(xt, yt)
        score = f1_score(yv, model.predict(xv), average="weighted")
        print(f"C={C:<5g} valid weighted F1 {score:.4f}")
        if best is None or score > best[0]:
            best = (score, C, model)
    _, C, model = best
    pred = model.predict(xs)
    print(
        f"test at C={C:g} (chosen on valid): accuracy {accuracy_score(ys, pred):.4f}, "
        f"weighted F1 {f1_score(ys, pred, average='weighted'):.4f}, macro F1 {f1_score(ys, pred, average='macro'):.4f}"
        f" ({len(ys)} samples)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a `ramer data import` of a single-label table (a native dataset folder)")
    main(parser.parse_args().data)
