"""Which prototype the evaluation pass picks, by the rule the models use and by two others: after
some optimiser steps on the embedded benchmark, the weight ``w+`` of the positive prototype on a
validation batch, computed as the models compute it (the inner product of the unit code with the
EMA prototype, whose norm is below 1), with the cosine similarity (AUTHORS_CODE.md §4's word), and
with the Euclidean distance ("the nearer one", MODEL.md §4.2).

    python benchmarks/prototype_rule.py [--models ramer,ramer-authors] [--steps 192] [--set KEY=VALUE ...]
    python benchmarks/prototype_rule.py --run RUN_DIR [--split valid]

Prints, per model: the range of the prototypes' norms, how far ``w+`` lies from 1/2, the mean and
largest difference between the inner-product and the cosine ``w+``, and the share of evaluation
choices (``w+ > 1/2``, one per sample, modality and label) that the cosine (and, for
``ramer-authors``, the distance) makes otherwise. With ``--run``: a trained run's split scored with
the evaluation's choice of one prototype and with the training's mix instead, and how far the
probabilities and decisions move.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ramer.config import build_config
from ramer.data.synthetic import generate
from ramer.models import DataSpec, build_model
from ramer.train.optim import build_optimizer
from ramer.train.recipe import training_step

CONFIG = Path(__file__).resolve().parents[1] / "src" / "ramer" / "configs" / "synthetic.yaml"


def captured_weights(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One evaluation forward of ``model`` on ``batch``; returns what its reconstruction's
    ``positive_weight`` was given (unit codes, visible, prototypes) and what it returned."""
    rec = model.reconstruction
    seen = {}
    own = rec.positive_weight

    def spy(z_unit, visible, protos):
        seen["args"] = (z_unit.detach(), visible, protos.detach())
        seen["w"] = own(z_unit, visible, protos).detach()
        return seen["w"]

    rec.positive_weight = spy
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        del rec.positive_weight  # the instance attribute: the class's method again
    return (*seen["args"], seen["w"])


def mix_at_evaluation(run: str, split: str) -> None:
    """A trained run's ``split`` (with the run's extra missing rate, as ``ramer eval`` scores it) scored
    twice, its evaluation pass decoding the one prototype ``w+`` favours (as it does) and the mix
    training decodes: how far that moves probabilities and decisions."""
    import ramer
    from ramer.api import load_data_for
    from ramer.infer import apply_missing
    from ramer.models.parts.reconstruction import CrossReconstruction

    predictor = ramer.load(run)
    store = apply_missing(load_data_for(predictor), predictor.cfg)[split]  # as ramer eval scores it
    forward, probs = CrossReconstruction.forward, {}
    try:
        for hard in (True, False):
            CrossReconstruction.forward = lambda self, *a, hard_=hard, **k: forward(self, *a, **{**k, "hard": hard_})
            probs[hard] = predictor.predict(store)
    finally:
        CrossReconstruction.forward = forward
    one, mix = (predictor.decide(probs[h]) for h in (True, False))
    print(
        f"{run} [{split}]: the training mix decoded at evaluation moves probabilities by at most "
        f"{np.abs(probs[True] - probs[False]).max():.4f}; decisions changed {int((one != mix).sum())} of {one.size}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ramer,ramer-authors")
    ap.add_argument("--steps", type=int, default=192)
    ap.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--run", help="instead: a trained run, scored with either prototype rule at evaluation")
    ap.add_argument("--split", default="valid", help="with --run: the split scored (default valid)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.run:
        mix_at_evaluation(args.run, args.split)
        return
    for name in args.models.split(","):
        cfg = build_config(CONFIG, [f"model.name={name}", *args.set])
        torch.manual_seed(cfg.train.seed)
        bundle = generate(cfg.data.synthetic)
        model = build_model(cfg, DataSpec.from_bundle(bundle))
        train, valid = bundle.splits["train"], bundle.splits["valid"]
        optimizer, scheduler = build_optimizer(
            model, cfg.train.lr, cfg.train.weight_decay, max(1, args.steps), cfg.train.warmup
        )
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(5))
        size = min(cfg.train.batch_size, len(train))
        for step in range(args.steps):
            start = (step * size) % max(1, len(train) - size + 1)
            model.train()
            training_step(
                model,
                model,
                train.collate(order[start : start + size].numpy()),
                optimizer,
                scheduler,
                cfg.train.grad_clip,
            )
        z, visible, protos, w_dot = captured_weights(model, valid.collate(list(range(min(256, len(valid))))))
        rec = model.reconstruction
        w_cos = rec.positive_weight(z, visible, torch.nn.functional.normalize(protos, dim=-1))
        # the nearer prototype by distance: |z - p|^2 = 1 - 2<z, p> + |p|^2 for a unit z
        sim = torch.einsum("bmcp,mcyp->bmcy", z, protos) - protos.pow(2).sum(-1) / 2  # (B, M, C, 2)
        own_near = sim[..., 1] > sim[..., 0]  # (B, M, C): each code against its own prototypes
        hard_dot, hard_cos = w_dot > 0.5, w_cos > 0.5
        norms = protos.norm(dim=-1)
        line = (
            f"{name}: {args.steps} steps; prototype norms {norms.min():.3f} to {norms.max():.3f}; "
            f"|w+ - 1/2| mean {(w_dot - 0.5).abs().mean():.4f}; "
            f"|w+ inner product - w+ cosine| mean {(w_dot - w_cos).abs().mean():.4f}, "
            f"largest {(w_dot - w_cos).abs().max():.4f}; evaluation choices made otherwise by the "
            f"cosine {(hard_dot != hard_cos).float().mean():.3f}"
        )
        if rec.own_code:  # w+ of each code against its own prototypes: "nearer" has one meaning
            line += f", by the distance {(hard_dot != own_near).float().mean():.3f}"
        print(line, f"({hard_dot.numel()} choices)")


if __name__ == "__main__":
    main()
