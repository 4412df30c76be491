"""How much of each RAMer training step each loss term asks for: the norm of the gradient of every
weighted term alone, on one fixed batch of the embedded benchmark, at initialisation and after some
optimiser steps (grad-norm clipping scales the whole step when the sum exceeds `train.grad_clip`).

    python benchmarks/term_gradients.py [--steps 0,10,32,96,160] [--set loss.w_cl=0.1 ...]

Prints, per checkpoint step, the norm of the whole gradient, of the classification term `cls`
alone, and of each other weighted term alone (`w * dterm`), then the unweighted term values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ramer.config import build_config
from ramer.data.synthetic import generate
from ramer.models import DataSpec, build_model
from ramer.train.optim import build_optimizer
from ramer.train.recipe import training_step

CONFIG = Path(__file__).resolve().parents[1] / "src" / "ramer" / "configs" / "synthetic.yaml"
WEIGHTS = (
    "w_lsr",
    "w_aug",
    "w_ae",
    "w_cross",
    "w_cl",
    "w_agg",
    "w_shuf",
    "w_adv",
    "w_orth",
    "w_cml",
    "w_radv",
    "w_pers",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="0,10,32,96,160")
    ap.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    args = ap.parse_args()
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    torch.set_num_threads(1)
    cfg = build_config(
        CONFIG, ["data.synthetic.n_train=2000", "data.synthetic.n_valid=100", "data.synthetic.n_test=100", *args.set]
    )
    torch.manual_seed(cfg.train.seed)
    bundle = generate(cfg.data.synthetic)
    store = bundle.splits["train"]
    model = build_model(cfg, DataSpec.from_bundle(bundle))
    steps_per_epoch = len(store) // cfg.train.batch_size
    optimizer, scheduler = build_optimizer(
        model, cfg.train.lr, cfg.train.weight_decay, steps_per_epoch * cfg.train.epochs, cfg.train.warmup
    )
    params = [p for p in model.parameters() if p.requires_grad]
    weights = model.weights.model_copy()
    probe = store.collate(list(range(cfg.train.batch_size)))
    order = torch.randperm(len(store), generator=torch.Generator().manual_seed(5))

    def gradient(update: dict, out) -> tuple[torch.Tensor, dict]:
        model.weights = weights.model_copy(update=update)
        result = model.loss(out, probe)
        model.weights = weights
        grads = torch.autograd.grad(result.total, params, retain_graph=True, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
        return flat, result.terms

    for step in range(checkpoints[-1] + 1):
        if step in checkpoints:
            model.train()
            torch.manual_seed(0)  # the same dropout and modality dropout at every checkpoint
            out = model(probe)
            zero = {w: 0.0 for w in WEIGHTS}
            every, terms = gradient({}, out)
            cls, _ = gradient(zero, out)
            parts = [f"step {step:3d}  |g| {every.norm():.3f}  cls {cls.norm():.3f}"]
            for w in WEIGHTS:
                if getattr(weights, w):
                    alone, _ = gradient({**zero, w: getattr(weights, w)}, out)
                    parts.append(f"{w[2:]} {(alone - cls).norm():.3f}")
            print("  ".join(parts))
            print("          terms: " + ", ".join(f"{k} {float(v):.3f}" for k, v in terms.items()))
        start = (step * cfg.train.batch_size) % max(1, len(store) - cfg.train.batch_size + 1)  # a whole batch
        batch = store.collate(order[start : start + cfg.train.batch_size].numpy())
        training_step(model, model, batch, optimizer, scheduler, cfg.train.grad_clip)


if __name__ == "__main__":
    main()
