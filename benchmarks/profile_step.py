"""Profile one RAMer training step (or one inference batch) with ``torch.profiler`` and print the
top entries by self CPU time.

Usage: ``python benchmarks/profile_step.py [--setting carat] [--mode train|infer] [--precision fp32|bf16]
[--top 10] [--threads 2] [--sort self_cpu_time_total] [--shapes]``.
Settings are those of ``benchmarks/throughput.py`` (synthetic, mosei, carat). Warm-up steps run
first (the contrastive queue is full when the profiled step runs).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (docs/PERFORMANCE.md)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from throughput import batches, build, make_setting  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="carat")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--steps", type=int, default=1, help="profiled steps")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--sort", default="self_cpu_time_total")
    p.add_argument("--shapes", action="store_true", help="group by input shape")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg, store = make_setting(args.setting, args.set or [])
    model = build(cfg, store)
    stream = batches(store, cfg.train.batch_size)
    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import autocast, training_step

    dev = torch.device("cpu")
    if args.mode == "train":
        model.train()
        opt, sched = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, 10_000, 0.01)

        def step():
            training_step(model, model, next(stream), opt, sched, cfg.train.grad_clip, args.precision)
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast(dev, args.precision):
                model(next(stream))

    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for _ in range(args.steps):
            with record_function("step"):
                step()
    table = prof.key_averages(group_by_input_shape=args.shapes).table(
        sort_by=args.sort, row_limit=args.top, max_name_column_width=48, max_shapes_column_width=70
    )
    print(f"setting {args.setting}, mode {args.mode}, precision {args.precision}, threads {torch.get_num_threads()}, "
          f"batch {cfg.train.batch_size}, load {os.getloadavg()[0]:.2f}")
    print(table)


if __name__ == "__main__":
    main()
