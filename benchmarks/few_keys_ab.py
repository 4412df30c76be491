"""Paired A/B of the broadcast-product attention for tiny problems (``FEW_KEYS`` in
``ramer/models/parts/attention.py``): off (every attention as batched matrix products) against on,
alternating step by step in one process, so that both see the same minutes of a machine whose
speed drifts.

Usage: ``python benchmarks/few_keys_ab.py [--setting carat] [--mode train|infer] [--precision bf16]
[--rounds 10] [--threads 2]``. Prints samples/s of each and the median ratio of paired step times
(off / on: above 1 means the broadcast form is faster). Settings are those of ``throughput.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from throughput import add_paired_args, batches, build, eval_model, make_setting


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_paired_args(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import ramer.models.parts.attention as attention
    from ramer.train.recipe import model_dtype, to_inference_precision, training_step

    on_value = attention.FEW_KEYS
    cfg, store = make_setting(args.setting)
    stream = batches(store, cfg.train.batch_size)
    if args.mode == "train":
        from ramer.train.optim import build_optimizer

        model = build(cfg, store).train()
        opt, sched = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, 10_000, 0.01)

        def step(batch):
            training_step(model, model, batch, opt, sched, cfg.train.grad_clip, args.precision)
    else:
        model = to_inference_precision(eval_model(cfg, store), args.precision)
        dtype = model_dtype(model)

        def step(batch):
            with torch.inference_mode():
                model(batch.to(torch.device("cpu"), dtype))

    for _ in range(3):  # warm-up (and a filled queue)
        step(next(stream))
    times = {"off": [], "on": []}
    for r in range(args.rounds):
        for name in ("off", "on") if r % 2 else ("on", "off"):
            attention.FEW_KEYS = on_value if name == "on" else 0
            batch = next(stream)
            t0 = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - t0)
    attention.FEW_KEYS = on_value
    ratios = [a / b for a, b in zip(times["off"], times["on"])]
    n = cfg.train.batch_size
    print(f"setting {args.setting}, mode {args.mode}, precision {args.precision}, threads {args.threads}, "
          f"{args.rounds} rounds: off {n * args.rounds / sum(times['off']):.1f} samples/s, "
          f"on (FEW_KEYS={on_value}) {n * args.rounds / sum(times['on']):.1f} samples/s, "
          f"median off/on {statistics.median(ratios):.3f} ({min(ratios):.3f}..{max(ratios):.3f})")


if __name__ == "__main__":
    main()
