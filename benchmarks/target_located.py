"""Which models can tell the moments of a silent, unseen target apart.

A non-speaker target whose face is out of view has no modality at its target token. A model that
reads the target token only through what is present there (a learned stand-in for an absent token)
gets the same input whichever of that person's silent, unseen moments is asked about: its scores
cannot depend on the moment. This script measures both sides on the embedded benchmark at the
bench's sizes and missing rates:

- per missing rate, the share of the test split's non-speaker targets whose target token has no
  modality present (after the rate's extra missing modalities, as ``ramer bench`` applies them);
- per model (untrained, seeded; the invariance is of the architecture, not of the weights), the
  largest change of any probability when the target of such a sample moves to another silent,
  unseen token of the same person in the same scene (the scope unchanged). Exactly 0: the model
  cannot locate the moment.

Usage: ``python benchmarks/target_located.py [--rates 0,0.3,0.6] [--models late_fusion,mult,...]``.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from ramer.batch import MODALITIES
from ramer.bench import DEFAULT_SETS
from ramer.config import build_config, resolve_config
from ramer.data.synthetic import generate
from ramer.infer import apply_missing
from ramer.models import CLASSICAL, build_model
from ramer.models.base import DataSpec
from ramer.models.classical import ClassicalModel, ClassicalModule

DEEP = ("late_fusion", "mult", "mlgcn", "hhmpn", "amp", "ramer", "ramer-authors")


def unseen_at_target(batch) -> torch.Tensor:
    """``(B,)``: the target token has no modality present."""
    at = torch.arange(batch.valid.shape[1]).unsqueeze(0) == batch.target.unsqueeze(1)
    seen = torch.zeros_like(batch.valid)
    for m in MODALITIES:
        seen |= batch.present[m]
    return ~(seen & at).any(1)


def moved_targets(batch) -> tuple[list[int], list[int]]:
    """Rows whose target token has no modality, and for each another token of the same person (the
    same scope) that is valid and has no modality either; rows without one are left out."""
    persons, segments = batch.grid
    seen = torch.zeros_like(batch.valid)
    for m in MODALITIES:
        seen |= batch.present[m]
    rows, targets = [], []
    for i in torch.nonzero(unseen_at_target(batch)).flatten().tolist():
        t = int(batch.target[i])
        if t < 0:
            continue
        person = t // segments
        for s in range(segments):
            n = person * segments + s
            if n != t and bool(batch.valid[i, n]) and not bool(seen[i, n]):
                rows.append(i)
                targets.append(n)
                break
    return rows, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="0,0.3,0.6")
    parser.add_argument("--models", default=",".join((*DEEP, *CLASSICAL)))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = build_config(resolve_config(None), list(DEFAULT_SETS))
    bundle = generate(cfg.data.synthetic)
    print(f"embedded benchmark at the bench's sizes ({', '.join(s for s in DEFAULT_SETS if 'n_' in s)}); test split")
    print("| missing rate | non-speaker targets | with no modality at the target token | share |")
    print("|--:|--:|--:|--:|")
    for rate in (float(r) for r in args.rates.split(",")):
        cfg.data.missing_rate = rate
        test = apply_missing(bundle, cfg)["test"]
        batch = test.collate(np.arange(len(test)))
        nonspeaker = batch.role == 0
        blind = unseen_at_target(batch) & nonspeaker
        share = float(blind.sum() / nonspeaker.sum())
        print(f"| {rate:g} | {int(nonspeaker.sum())} | {int(blind.sum())} | {share:.1%} |")

    test = bundle.splits["test"]
    batch = test.collate(np.arange(len(test)))
    rows, targets = moved_targets(batch)
    here = batch.select(torch.tensor(rows))
    there = dataclasses.replace(here, target=torch.tensor(targets))
    there.check("moved targets")
    spec = DataSpec.from_bundle(bundle)
    print(f"\nmissing rate 0: {len(rows)} test samples whose silent, unseen target has another such moment")
    print("| model | largest change of a probability when the target moves to that moment |")
    print("|:--|--:|")
    for name in args.models.split(","):
        if name in CLASSICAL:
            fitted = ClassicalModel(name, spec.label_names).fit(bundle.splits["train"])
            model = ClassicalModule(name, spec, fitted.to_arrays())
        else:
            model_cfg = build_config(resolve_config(None), [*DEFAULT_SETS, f"model.name={name}"])
            torch.manual_seed(0)
            model = build_model(model_cfg, spec)
            if hasattr(model, "prepare"):  # ML-GCN's label graph, from the training labels (as a run makes it)
                model.prepare(bundle.splits["train"])
        model.eval()
        with torch.no_grad():
            change = (model(here).probs.double() - model(there).probs.double()).abs().max()
        print(f"| {name} | {float(change):.2e} |")


if __name__ == "__main__":
    main()
