"""Scoring a run's split with attention's weights made in one pass and in blocks (``SCORE_BYTES`` in
ramer/models/parts/attention.py): peak RSS and seconds of each, each in a fresh process, the two
alternating, and how far their scores differ.

    python benchmarks/attention_blocks.py RUN_DIR [--split valid] [--repeats 2] [--threads 1] [--batch-size N]

Blocks are what ``ramer predict`` does; one pass sets ``SCORE_BYTES`` past any call's weights (the
package's code before it made blocks). Long scenes show the difference: a run on data of tens of
persons x hundreds of segments (docs/PERFORMANCE.md §5 has the commands that make one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODES = {"one pass": 2**62, "blocks": None}  # SCORE_BYTES for each mode; None: the package's own


def worker(args: argparse.Namespace) -> None:
    import resource
    import time

    import torch

    import ramer
    from ramer.api import load_data_for
    from ramer.models.parts import attention

    torch.set_num_threads(args.threads)
    if MODES[args.mode] is not None:
        attention.SCORE_BYTES = MODES[args.mode]
    predictor = ramer.load(args.run)
    store = load_data_for(predictor).splits[args.split]
    t0 = time.perf_counter()
    scores = predictor.predict(store, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    np.save(args.scores, scores)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "n": len(store)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--split", default="valid")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, help="scenes at once (default: the run's train.eval_batch_size)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--scores", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for mode in MODES:  # alternating: the machine's drift falls on both
                cmd = [sys.executable, __file__, args.run, "--worker", "--mode", mode, "--split", args.split]
                cmd += ["--threads", str(args.threads), "--scores", str(Path(tmp) / f"{mode}.npy")]
                cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
                rows[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        one, blocks = (np.load(Path(tmp) / f"{mode}.npy") for mode in MODES)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.run} [{args.split}]: {rows['blocks'][0]['n']} scenes, {args.threads} thread(s), load {load:.2f}")
    print(f"{'mode':<9} {'peak RSS MB':>24} {'seconds':>20}")
    for mode, runs in rows.items():
        peaks = ", ".join(f"{r['peak_mb']:.0f}" for r in runs)
        seconds = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(f"{mode:<9} {peaks:>24} {seconds:>20}")
    print(f"scores equal: {np.array_equal(one, blocks)}, largest difference {np.abs(one - blocks).max():.3g}")


if __name__ == "__main__":
    main()
