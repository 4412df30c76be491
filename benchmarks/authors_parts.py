"""Which of the authors' choices in ``ramer-authors`` matters: one training run of the variant with
one of them switched back to ``ramer``'s form (``--part``), or none, at the bench's default settings
(embedded benchmark, 2,000 / 300 / 1,000 scenes, cap 40 epochs, patience 5, one thread). Prints one
line: the part, validation micro-F1 at the best epoch, test micro-F1 overall and on non-speakers,
the best epoch and the epochs run. One part per process (run several side by side).

  python benchmarks/authors_parts.py --part scaled_attention --out runs/authors-parts/scaled_attention
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from ramer.models import ramer_authors as authors
from ramer.models.parts import labelwise, reconstruction, shuffle

PARTS = {  # name -> what goes back to ramer's form
    "none": "nothing (the variant as it is)",
    "scaled_attention": "label attention: scores / sqrt(H), queries from N(0, 0.02)",
    "classifier_bias": "label-wise classifiers with a bias",
    "batch_ema": "one prototype EMA step per batch towards the batch mean",
    "other_codes": "prototype weight from the other modalities' codes",
    "two_layer_cross": "F_m as 3H -> H -> H with ReLU",
    "gelu_aggregator": "aggregator Linear -> GELU -> Dropout -> Linear",
}
BENCH_SETTINGS = [
    "data.synthetic.n_train=2000",
    "data.synthetic.n_valid=300",
    "data.synthetic.n_test=1000",
    "train.epochs=40",
    "train.patience=5",
    "train.threads=1",
    "train.seed=1",
]


def switch_back(part: str) -> None:
    """Build ``ramer-authors`` from now on with ``part`` in ``ramer``'s form. Every part, ``none``
    included, reseeds after the model is built, so the runs differ only in that part."""
    init = authors.RAMerAuthors.__init__

    def patched(self, cfg, loss_cfg, spec):
        init(self, cfg, loss_cfg, spec)
        torch.manual_seed(12345)  # the replaced layers' own initial values
        M, C, H = 3, spec.n_labels, cfg.hidden
        if part == "scaled_attention":
            self.labelwise = labelwise.LabelWiseAttention(M, C, H, cfg.target_prior)
        elif part == "classifier_bias":
            self.classifier = labelwise.LabelWiseClassifier(M, C, H)
        elif part == "batch_ema":
            self._update_prototypes_in_order = lambda unit, avail, labels: (
                authors.QueueAndPrototypes._update_prototypes(
                    self, *self.reconstruction.prototype_sums(unit, avail, labels)
                )
            )
        elif part == "other_codes":
            self.reconstruction.own_code = False
        elif part == "two_layer_cross":
            self.reconstruction.cross = nn.ModuleList(reconstruction._mlp(M * H, H, H) for _ in range(M))
        elif part == "gelu_aggregator":
            self.aggregator = shuffle.Aggregator(C, H, cfg.dropout)

    authors.RAMerAuthors.__init__ = patched


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--part", required=True, choices=sorted(PARTS), help="\n".join(f"{k}: {v}" for k, v in PARTS.items())
    )
    ap.add_argument("--out", required=True, help="run folder (must not exist)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="after the bench's settings")
    args = ap.parse_args()
    switch_back(args.part)
    from ramer.cli import main as ramer

    argv = ["train", "--model", "ramer-authors", "--out", args.out]
    for item in BENCH_SETTINGS + args.set:
        argv += ["--set", item]
    code = ramer(argv)
    if code:
        return code
    log = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = [x for x in log if x.get("final") == "test"][-1]
    best = [x for x in log if x.get("epoch") == final["best_epoch"]][-1]
    test = final["test"]
    print(
        f"{args.part}: valid micro-F1 {best['valid']['overall']['micro_f1']:.4f}, test micro-F1 "
        f"{test['overall']['micro_f1']:.4f}, non-speakers {test['nonspeaker']['micro_f1']:.4f}, "
        f"best epoch {final['best_epoch']} of {final['epochs_run']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
