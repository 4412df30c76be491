"""Where an eval forward of RAMer spends its time, part by part (forward hooks, wall clock).

Builds a setting of ``throughput.py`` in eval mode (``--precision bf16``: the model cast whole, as
``ramer predict --precision bf16``), runs one untimed batch, then times ``--batches`` forwards of
the same batch under ``torch.inference_mode`` and prints the mean milliseconds per batch of the
whole forward and of each part of the model down to ``--depth`` (1: the model's children, such as
``context``; 2: also ``encoders.text``, ``context.completion``, ...; 3: also ``context.grid.0``,
...). Containers (``ModuleList``, ``ModuleDict``) are never called themselves, so they are left
out. Parts nest, so their times do not add up to the total.

Usage: ``python benchmarks/infer_parts.py [--setting carat] [--precision bf16] [--batches 5]
[--depth 2] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import collections
import time

import throughput
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="carat")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--depth", type=int, default=2, help="deepest part to time (1 = the model's children)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from ramer.infer import model_dtype

    torch.set_num_threads(args.threads)
    cfg, store = throughput.make_setting(args.setting)
    model = throughput.eval_model(cfg, store, args.precision)
    batch = next(throughput.batches(store, cfg.train.batch_size)).to(torch.device("cpu"), model_dtype(model))
    spent: dict[str, float] = collections.defaultdict(float)
    started: dict[str, float] = {}

    def before(name):
        return lambda module, inputs: started.__setitem__(name, time.perf_counter())

    def after(name):
        return lambda module, inputs, output: spent.__setitem__(name, spent[name] + time.perf_counter() - started[name])

    for name, module in model.named_modules():
        if name and name.count(".") < args.depth and not isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            module.register_forward_pre_hook(before(name))
            module.register_forward_hook(after(name))
    with torch.inference_mode():
        model(batch)
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(args.batches):
            model(batch)
        total = (time.perf_counter() - t0) / args.batches
    print(
        f"setting {args.setting}, {args.precision}, {args.threads} threads, batch {batch.size}: "
        f"{1e3 * total:.1f} ms per batch ({batch.size / total:.1f} samples/s)"
    )
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        share = seconds / args.batches
        if share >= 0.01 * total:
            print(f"  {name:30s} {1e3 * share:7.1f} ms  {100 * share / total:5.1f} %")


if __name__ == "__main__":
    main()
