"""What the embedded benchmark gives a model that reads more than the target token: linear models
(one logistic regression per label, features standardised with the train split's statistics, the
inverse regularisation C chosen on valid micro-F1) on growing feature sets of each sample, scored
once on test, overall and on non-speaker targets:

- ``token``: the target token's text, audio and visual features (zeros where absent) and its three
  presence bits;
- ``+ personality``: and the target person's personality vector;
- ``+ context``: and, at the target's segment, the speaker's text and audio (zeros when the target
  speaks or nobody does), and the target's own tokens one segment before and after (zeros at the
  edges), with their presence bits;
- ``+ both``: all of the above.

    python benchmarks/synthetic_signal.py                      # generator seeds 0, 1, 2 of configs/synthetic.yaml
    python benchmarks/synthetic_signal.py --seeds 0 --set data.synthetic.n_train=400

Prints one row per generator seed and feature set: the C chosen on valid, test micro-F1 overall and
on non-speakers; then the mean over the seeds of each set's gain over ``token``. A model is told
nothing here but its features; the spec asks that the data make context, personality and
missingness worth reading (docs/RESULTS.md, "The embedded benchmark").
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from ramer.batch import ROLE_NONSPEAKER
from ramer.config import build_config, resolve_config
from ramer.data.synthetic import generate

GRID = (0.003, 0.03, 0.3)
SETS = {
    "token": ("token",),
    "+ personality": ("token", "personality"),
    "+ context": ("token", "context"),
    "+ both": ("token", "personality", "context"),
}


def blocks(store) -> dict[str, np.ndarray]:
    """Per sample, the feature blocks the module docstring names (float32 rows)."""
    offsets, grid, persons = (np.asarray(a) for a in (store.token_offsets, store.grid, store.person_offsets))
    present = np.asarray(store.present).astype(np.float32)
    feats = [np.asarray(store.text), np.asarray(store.audio), np.asarray(store.visual)]
    width = sum(f.shape[1] for f in feats) + 3

    def token(row: int | None) -> np.ndarray:
        if row is None:
            return np.zeros(width, np.float32)
        return np.concatenate([*(f[row] for f in feats), present[row]])

    out: dict[str, list[np.ndarray]] = {"token": [], "personality": [], "context": []}
    for i in range(len(store)):
        (p, s), (P, S) = store.target[i], grid[i]
        row = lambda q, t: int(offsets[i] + q * S + t)  # noqa: E731 (the token of person q at segment t)
        out["token"].append(token(row(p, s)))
        out["personality"].append(np.asarray(store.personality[persons[i] + p], np.float32))
        speakers = [q for q in range(P) if q != p and present[row(q, s), 0] > 0]
        spoken = [feats[0][row(speakers[0], s)], feats[1][row(speakers[0], s)]] if speakers else None
        spoken = np.concatenate(spoken) if spoken else np.zeros(feats[0].shape[1] + feats[1].shape[1], np.float32)
        before = token(row(p, s - 1) if s > 0 else None)
        after = token(row(p, s + 1) if s + 1 < S else None)
        out["context"].append(np.concatenate([spoken, before, after]))
    return {k: np.stack(v) for k, v in out.items()}


def fit_predict(x_train, y_train, x_other, c: float) -> np.ndarray:
    """0/1 predictions (n, C) for ``x_other`` of one logistic regression per label (a label constant
    in train: that constant)."""
    pred = np.zeros((len(x_other), y_train.shape[1]), dtype=np.int64)
    for j in range(y_train.shape[1]):
        if y_train[:, j].min() == y_train[:, j].max():
            pred[:, j] = y_train[0, j]
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=500).fit(x_train, y_train[:, j])
        pred[:, j] = model.predict(x_other)
    return pred


def micro(y, pred) -> float:
    return float(f1_score(y, pred, average="micro", zero_division=0)) if len(y) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="generator seeds (data.synthetic.seed), comma list")
    parser.add_argument("--set", action="append", default=[], help="config key=value (data.synthetic.*)")
    args = parser.parse_args()
    gains: dict[str, list[tuple[float, float]]] = {name: [] for name in SETS if name != "token"}
    configs = {
        seed: build_config(resolve_config("synthetic"), [*args.set, f"data.synthetic.seed={seed}"])
        for seed in (int(s) for s in args.seeds.split(","))
    }
    if any(cfg.data.synthetic.complete for cfg in configs.values()):  # the segment's speaker cannot be told
        raise SystemExit("synthetic_signal.py: data.synthetic.complete gives every person text; leave it out")
    print("| seed | features | C (valid) | test micro-F1 | non-speakers |")
    print("|--:|:--|--:|--:|--:|")
    for seed, cfg in configs.items():
        bundle = generate(cfg.data.synthetic)
        data = {split: (blocks(st), np.asarray(st.labels), np.asarray(st.role)) for split, st in bundle.splits.items()}
        base = None
        for name, keys in SETS.items():
            x = {split: np.hstack([b[k] for k in keys]) for split, (b, _, _) in data.items()}
            mean, std = x["train"].mean(0), x["train"].std(0) + 1e-6
            x = {split: (v - mean) / std for split, v in x.items()}
            y_train, (y_valid, y_test), role = data["train"][1], (data["valid"][1], data["test"][1]), data["test"][2]
            chosen = max(GRID, key=lambda c: micro(y_valid, fit_predict(x["train"], y_train, x["valid"], c)))
            pred = fit_predict(x["train"], y_train, x["test"], chosen)
            listener = role == ROLE_NONSPEAKER
            scores = micro(y_test, pred), micro(y_test[listener], pred[listener])
            print(f"| {seed} | {name} | {chosen:g} | {scores[0]:.4f} | {scores[1]:.4f} |", flush=True)
            if base is None:
                base = scores
            else:
                gains[name].append((scores[0] - base[0], scores[1] - base[1]))
    print("\nmean gain over 'token' (test micro-F1, overall / non-speakers):")
    for name, got in gains.items():
        overall, listeners = np.mean(got, 0)
        print(f"  {name}: {overall:+.4f} / {listeners:+.4f}")


if __name__ == "__main__":
    main()
