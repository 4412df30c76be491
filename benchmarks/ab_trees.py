"""Paired A/B of two source trees of ramer in one process: the same setting and mode built from
each, their steps alternating (A B, then B A, ...), so that both see the same minutes of a machine
whose speed drifts by ±20 % within minutes. Separate runs of ``throughput.py`` do not compare.

Usage: ``git worktree add /tmp/old REV`` then ``python benchmarks/ab_trees.py --old /tmp/old/src
[--new src] [--setting carat] [--mode train|infer] [--precision bf16] [--rounds 10] [--threads 2]``;
``--set-a KEY=VALUE`` / ``--set-b KEY=VALUE`` give one side a config override (two settings of one
tree: ``--old src --set-b train.recompute=true``).
Each tree builds its model from the same seed and reads its own stream of the same batches, and
both reseed torch before each step alike, so the two trees' results compare too. Prints samples/s
of each and the median ratio of paired step times (A / B: above 1 means the new tree is faster),
then the largest difference between the trees' results (training: the loss of every step;
inference: the probabilities); 0 means the two trees compute the same to the bit. Settings are
those of ``throughput.py``; ``--mode infer --precision bf16`` casts the model whole, as ``ramer
predict --precision bf16`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from throughput import add_paired_args, paired_line, paired_rounds

ROOT = Path(__file__).resolve().parents[1]


def import_tree(src: Path):
    """Import ramer from the src folder ``src`` (any ramer imported before is dropped; objects
    already built keep the code they were built with) and throughput.py with it; returns that
    throughput module. Exits with a one-line message where ``src`` holds no ramer package."""
    if not (src / "ramer" / "__init__.py").is_file():
        raise SystemExit(f"{src}: no ramer package there (give the src folder of a checkout)")
    for name in [k for k in sys.modules if k in ("ramer", "throughput") or k.startswith("ramer.")]:
        del sys.modules[name]
    sys.path[:0] = [str(src), str(ROOT / "benchmarks")]
    try:
        import throughput

        import ramer
    finally:
        del sys.path[:2]
    if not Path(ramer.__file__).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"ramer was imported from {ramer.__file__}, not from {src}")
    return throughput


def load(src: Path, args, overrides: list[str]):
    """Import ramer (and throughput.py) from ``src``, build the setting with ``overrides``; returns
    (step, batches, batch size)."""
    throughput = import_tree(src)
    cfg, store = throughput.make_setting(args.setting, overrides)
    torch.manual_seed(0)
    step = throughput.make_step(cfg, store, args.mode, args.precision)  # built with this tree's code
    return step, throughput.batches(store, cfg.train.batch_size, seed=1), cfg.train.batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, required=True, help="the src folder of tree A")
    p.add_argument("--new", type=Path, default=ROOT / "src", help="the src folder of tree B (default: this one)")
    for side in "ab":
        p.add_argument(
            f"--set-{side}", action="append", default=[], metavar="KEY=VALUE", help=f"config override of {side.upper()}"
        )
    add_paired_args(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trees = {"A": load(args.old, args, args.set_a), "B": load(args.new, args, args.set_b)}
    for i, name in enumerate("AABB"):  # warm-up (and a filled queue)
        step, stream, _ = trees[name]
        torch.manual_seed(i % 2)
        step(next(stream))

    def prepare(stream):
        def reseed_and_fetch(r):
            torch.manual_seed(1000 + r)  # both trees draw the same randomness in round r
            return next(stream)

        return reseed_and_fetch

    runs = {name: (prepare(stream), step) for name, (step, stream, _) in trees.items()}
    times, results = paired_rounds(runs, args.rounds)
    print(paired_line(args, trees["A"][2], times, {"A": "A", "B": "B"}))
    diff = max(float((a - b).abs().max()) for a, b in zip(results["A"], results["B"]))
    what = "loss of each step" if args.mode == "train" else "probabilities"
    print(f"largest |A - B| of the {what}: {diff:.3g}")


if __name__ == "__main__":
    main()
