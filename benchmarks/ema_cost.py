"""What ``train.ema_decay`` (the moving average of the weights) costs a RAMer training run.

In one process, per step: the recipe's training step, then the average's update, each timed on its
own (so the two share the machine's state of the moment); and, as at every validation, moving the
average into the model and back (``WeightAverage.swapped_in``). Settings are those of
``benchmarks/throughput.py`` (synthetic, mosei, carat).

Usage: ``python benchmarks/ema_cost.py [--setting synthetic] [--steps 30] [--warmup 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (docs/PERFORMANCE.md)

import torch  # noqa: E402
from throughput import batches, build, make_setting  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="synthetic")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decay", type=float, default=0.995)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from ramer.train.ema import WeightAverage
    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import training_step

    cfg, store = make_setting(args.setting)
    model = build(cfg, store).train()
    opt, sched = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, 10_000, 0.01)
    ema = WeightAverage(model, args.decay)
    stream = batches(store, cfg.train.batch_size)
    step_s, update_s, swap_s = [], [], []
    for i in range(args.warmup + args.steps):
        batch = next(stream)
        t0 = time.perf_counter()
        training_step(model, model, batch, opt, sched, cfg.train.grad_clip)
        t1 = time.perf_counter()
        ema.update()
        t2 = time.perf_counter()
        with ema.swapped_in():
            pass
        t3 = time.perf_counter()
        if i >= args.warmup:
            step_s.append(t1 - t0)
            update_s.append(t2 - t1)
            swap_s.append(t3 - t2)
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = sum(1 for _ in model.parameters())
    step, update, swap = (statistics.median(x) for x in (step_s, update_s, swap_s))
    print(
        f"{args.setting}: {n_params / 1e6:.2f} M parameters in {n_tensors} tensors, batch {cfg.train.batch_size}, "
        f"{args.threads} threads, median of {args.steps} steps"
    )
    print(f"training step          {step * 1e3:9.2f} ms")
    print(f"average update         {update * 1e3:9.2f} ms  ({100 * update / step:.2f} % of the step)")
    print(f"swap in and out        {swap * 1e3:9.2f} ms  (once per validation)")


if __name__ == "__main__":
    main()
