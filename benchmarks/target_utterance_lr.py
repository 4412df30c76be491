"""The floor for single-label conversation data: a multinomial logistic regression on the frozen
text features of the target utterance alone (no context, no other modality), its inverse
regularisation C chosen on the valid split, scored once on test. With `--context K`, the model
also gets the mean text features of the (up to) K utterances before the target in its sample's
window and of the K after it, as two more blocks (zeros where there are none): does the scene's
other talk add anything a linear model can use?

    python benchmarks/target_utterance_lr.py DIR               # DIR: a `ramer data import` of a single-label table
    python benchmarks/target_utterance_lr.py DIR --context 3   # the target utterance and its neighbours

Prints, for each C of the grid, the valid weighted F1 of the arg-max, then the test accuracy,
weighted F1 and macro F1 at the C chosen on valid (averaged over every label of the data, a label
neither true nor predicted counting 0, as ``ramer.metrics`` averages the reports they are set
beside). (EmoryNLP: docs/RESULTS.md.)
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from ramer.batch import MODALITIES
from ramer.config import DataConfig
from ramer.data import load_bundle

TEXT = MODALITIES.index("text")  # its column of a store's present
GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def target_text(store, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) text features of each sample's target token and (n,) its one label; with `context`,
    (n, 3d): the target's, then the mean over the utterances (present text rows) of the `context`
    tokens before it, then of the `context` tokens after it."""
    if (np.asarray(store.target) < 0).any():
        raise SystemExit(f"{store.source}: every sample needs a target token")
    rows = store.token_offsets[:-1] + store.target[:, 0].astype(np.int64) * store.grid[:, 1] + store.target[:, 1]
    labels = np.asarray(store.labels)
    if (labels.sum(1) != 1).any():
        raise SystemExit(f"{store.source}: single-label data expected (one label per sample)")
    text = np.stack([store.token_features("text", r, r + 1)[0] for r in rows.tolist()])  # dense or packed
    if context:
        text = np.concatenate([text, neighbours(store, context)], 1)
    return text.astype(np.float64), labels.argmax(1)


def neighbours(store, context: int) -> np.ndarray:
    """(n, 2d): per sample, the mean of the present text rows at the `context` tokens before its
    target token, then at the `context` tokens after it (zeros where there are none)."""
    out = []
    for i, (p, t) in enumerate(store.target.tolist()):
        persons, tokens = store.grid[i].tolist()
        start = int(store.token_offsets[i])
        feats = store.token_features("text", start, start + persons * tokens).reshape(persons, tokens, -1)
        present = np.asarray(store.present[start : start + persons * tokens, TEXT], bool).reshape(persons, tokens)
        sides = []
        for span in (range(max(0, t - context), t), range(t + 1, min(tokens, t + 1 + context))):
            cols = list(span)
            rows = feats[:, cols][present[:, cols]]
            sides.append(rows.mean(0) if len(rows) else np.zeros(feats.shape[-1], feats.dtype))
        out.append(np.concatenate(sides))
    return np.stack(out)


def main(path: str, context: int = 0) -> None:
    bundle = load_bundle(DataConfig(path=path))
    (xt, yt), (xv, yv), (xs, ys) = (target_text(bundle.splits[s], context) for s in ("train", "valid", "test"))
    mean, scale = xt.mean(0), xt.std(0) + 1e-8
    xt, xv, xs = ((x - mean) / scale for x in (xt, xv, xs))
    # every label of the data, as ramer.metrics averages (scikit-learn's default: those in y or pred)
    every = np.arange(len(bundle.label_names))
    best = None
    for C in GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=C, max_iter=2000).fit(xt, yt)
        score = f1_score(yv, model.predict(xv), average="weighted", labels=every, zero_division=0)
        print(f"C={C:<5g} valid weighted F1 {score:.4f}")
        if best is None or score > best[0]:
            best = (score, C, model)
    _, C, model = best
    pred = model.predict(xs)
    print(
        f"test at C={C:g} (chosen on valid): accuracy {accuracy_score(ys, pred):.4f}, "
        f"weighted F1 {f1_score(ys, pred, average='weighted', labels=every, zero_division=0):.4f}, "
        f"macro F1 {f1_score(ys, pred, average='macro', labels=every, zero_division=0):.4f}"
        f" ({len(ys)} samples)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a `ramer data import` of a single-label table (a native dataset folder)")
    parser.add_argument(
        "--context", type=int, default=0, metavar="K",
        help="also the mean features of the K utterances before and the K after the target (default 0: none)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.context < 0:
        parser.error("--context must be 0 or more")
    main(args.data, args.context)
