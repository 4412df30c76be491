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

import torch
from throughput import add_paired_args, batches, make_setting, make_step, paired_line, paired_rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_paired_args(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import ramer.models.parts.attention as attention

    on_value = attention.FEW_KEYS
    cfg, store = make_setting(args.setting)
    stream = batches(store, cfg.train.batch_size)
    step = make_step(cfg, store, args.mode, args.precision)
    for _ in range(3):  # warm-up (and a filled queue)
        step(next(stream))

    def prepare(value):
        def set_and_fetch(_round):
            attention.FEW_KEYS = value
            return next(stream)

        return set_and_fetch

    times, _ = paired_rounds({"off": (prepare(0), step), "on": (prepare(on_value), step)}, args.rounds)
    attention.FEW_KEYS = on_value
    print(paired_line(args, cfg.train.batch_size, times, {"off": "off", "on": f"on (FEW_KEYS={on_value})"}))


if __name__ == "__main__":
    main()
