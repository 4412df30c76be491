"""A short RAMer run on the embedded benchmark lowers its loss and beats any constant predictor."""

import json

import numpy as np

from ramer.config import build_config
from ramer.data.synthetic import generate
from ramer.metrics import multilabel_metrics
from ramer.train.recipe import Recipe

SHORT = [  # the demo's model and recipe on a quarter of the data
    "data.synthetic.n_train=1000",
    "data.synthetic.n_valid=200",
    "data.synthetic.n_test=300",
    "train.epochs=6",
    "train.batch_size=16",
]


def best_constant_micro_f1(train_labels, test_labels):
    """The best micro-F1 on test of predicting one fixed label set, chosen by train frequency."""
    freq = train_labels.mean(0)
    best = 0.0
    for t in np.unique(freq):
        pred = np.broadcast_to(freq >= t, test_labels.shape).astype(int)
        best = max(best, multilabel_metrics(test_labels, pred)["micro_f1"])
    return best


def test_short_ramer_run_learns(tmp_path):
    cfg = build_config("src/ramer/configs/synthetic.yaml", SHORT)
    bundle = generate(cfg.data.synthetic)
    result = Recipe(cfg, tmp_path / "run", bundle=bundle).run()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    losses = [x["train"]["loss"] for x in lines]
    assert losses[-1] < losses[0]
    assert {"cls", "supcon", "shuffle", "com", "spec", "rec_adv", "pers", "ae", "cross"} <= set(lines[0]["train"])
    constant = best_constant_micro_f1(bundle.splits["train"].labels, bundle.splits["test"].labels)
    assert result["overall"]["micro_f1"] > constant + 0.05, (result["overall"]["micro_f1"], constant)
