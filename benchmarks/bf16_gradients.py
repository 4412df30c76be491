"""How far bf16 autocast training's gradients are from fp32's, for one source tree of ramer.

The same model (same seed) takes ``--steps`` training forward/backward passes on the same batches
with the same dropout draws, once in fp32 and once under ``torch.autocast(bfloat16)``
(``train.precision: bf16``); no optimiser step, so every pass starts from the same weights.
Prints, per pass, the relative error ``|g_bf16 - g_fp32| / |g_fp32|`` of the whole gradient
vector. Run it on two trees (``git worktree add /tmp/old REV``, ``--src /tmp/old/src``) to see
whether a change to the bf16 arithmetic moves its gradients away from fp32.

Usage: ``python benchmarks/bf16_gradients.py [--src src] [--setting carat] [--steps 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from ab_trees import import_tree

ROOT = Path(__file__).resolve().parents[1]


def gradients(throughput, setting: str, precision: str, steps: int) -> list:
    """The flat gradient of each of ``steps`` training passes (no optimiser step) under ``precision``."""
    from ramer.infer import autocast

    cfg, store = throughput.make_setting(setting)
    torch.manual_seed(0)
    model = throughput.build(cfg, store).train()
    stream = throughput.batches(store, cfg.train.batch_size, seed=3)
    out = []
    for step in range(steps):
        batch = next(stream)
        torch.manual_seed(100 + step)  # the same dropout draws in both precisions
        model.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), precision):
            loss = model.loss(model(batch), batch)
        loss.total.backward()
        out.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=ROOT / "src", help="the src folder of the tree to measure")
    p.add_argument("--setting", default="carat", help="a setting of throughput.py")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    throughput = import_tree(args.src)
    torch.set_num_threads(args.threads)
    fp32, bf16 = (gradients(throughput, args.setting, precision, args.steps) for precision in ("fp32", "bf16"))
    for step, (ref, got) in enumerate(zip(fp32, bf16)):
        print(
            f"{args.src}  setting {args.setting}  pass {step}: |g_bf16 - g_fp32| / |g_fp32| = "
            f"{float((got - ref).norm() / ref.norm()):.4f}"
        )


if __name__ == "__main__":
    main()
