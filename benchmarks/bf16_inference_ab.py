"""Paired A/B of the two bf16 inference paths at a throughput setting: autocast over the float32
model, against the model cast whole to bfloat16 (``ramer.infer.to_inference_precision``,
what ``ramer predict --precision bf16`` runs). Each round times both on the same batches, one after
the other, so drifts of a shared machine hit both alike; it prints samples/s per round and the
ratio of each pair.

Usage: ``python benchmarks/bf16_inference_ab.py [--setting carat] [--threads 2] [--rounds 8]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from throughput import batches, eval_model, make_setting


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="carat")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batches", type=int, default=4, help="batches of 64 per timing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from ramer.infer import to_inference_precision

    cfg, store = make_setting(args.setting)
    reference = eval_model(cfg, store)  # unit prototypes, as after training
    cast = to_inference_precision(copy.deepcopy(reference), "bf16")
    stream = batches(store, cfg.train.batch_size, seed=1)
    fp32_batches = [next(stream) for _ in range(args.batches)]
    bf16_batches = [b.to("cpu", torch.bfloat16) for b in fp32_batches]
    n = sum(b.size for b in fp32_batches)

    def autocast_rate() -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            t0 = time.perf_counter()
            for b in fp32_batches:
                reference(b)
            return n / (time.perf_counter() - t0)

    def cast_rate() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for b in bf16_batches:
                cast(b)
            return n / (time.perf_counter() - t0)

    autocast_rate(), cast_rate()  # warm-up
    pairs = [(autocast_rate(), cast_rate()) for _ in range(args.rounds)]
    print(f"setting {args.setting}, threads {args.threads}, {n} samples per timing")
    print("round  autocast  cast-bf16  ratio")
    for i, (a, c) in enumerate(pairs, 1):
        print(f"{i:5d}  {a:8.1f}  {c:9.1f}  {c / a:5.2f}")
    print(f"median ratio {statistics.median(c / a for a, c in pairs):.2f}")


if __name__ == "__main__":
    main()
