"""Validation curves of training variants on the embedded benchmark: how fast each learns.

Each variant is a name and a list of `--set` overrides; each is trained with `ramer train` for every
seed (one torch thread per run, `--jobs` runs at a time) on the same data, and the script prints,
per variant, the mean validation micro-F1 after each epoch, the best epoch, and the steps it took to
reach its plateau (the first epoch within `--within` of the run's best validation score). It also
writes a plot of the mean curves. Test is not read.

    python benchmarks/learning_speed.py --out runs/speed --seeds 1,2 \
        --variant ramer= --variant late_fusion=model.name=late_fusion \
        --variant attached=loss.detach_targets=false [--set train.epochs=8 ...]

A variant is NAME=SET[,SET...] (an empty list: the defaults). Runs already in OUT are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ramer.bench import DEFAULT_SETS

BENCH_DATA = tuple(s for s in DEFAULT_SETS if s.startswith("data.synthetic."))  # the bench's scenes


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition("=")
    if not name:
        raise SystemExit(f"--variant {text!r}: expected NAME=SET[,SET...]")
    return name, [s for s in sets.split(",") if s]


def train(out: Path, sets: list[str]) -> Path:
    if (out / "test_metrics.json").exists():
        return out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ramer", "train", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    with open(str(out) + ".log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out


def curve(run: Path) -> tuple[list[int], list[float], list[float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    epochs = [x for x in lines if "epoch" in x]
    steps = [x["step"] for x in epochs]
    overall = [x["valid"]["overall"]["micro_f1"] for x in epochs]
    nonspeaker = [x["valid"].get("nonspeaker", {}).get("micro_f1", float("nan")) for x in epochs]
    return steps, overall, nonspeaker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", action="append", required=True, help="NAME=SET[,SET...]")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--set", action="append", default=[], help="override for every run")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--within", type=float, default=0.01, help="plateau: first epoch within this of the best")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(v) for v in args.variant]
    seeds = [int(s) for s in args.seeds.split(",")]
    common = [*BENCH_DATA, "train.threads=1", *args.set]
    jobs = [
        (out / name / f"seed-{seed}", [*common, f"train.seed={seed}", *sets])
        for name, sets in variants
        for seed in seeds
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: train(*job), jobs))

    print(f"validation micro-F1 per epoch, mean over seeds {seeds} ({' '.join(common)})")
    print("| variant | best (mean) | best epoch | steps to plateau | non-speaker at best | curve |")
    print("|:--|--:|--:|--:|--:|:--|")
    curves = {}
    for name, _ in variants:
        runs = [curve(out / name / f"seed-{seed}") for seed in seeds]
        n = min(len(r[1]) for r in runs)
        steps = runs[0][0][:n]
        mean = np.mean([r[1][:n] for r in runs], 0)
        best = [int(np.argmax(r[1])) for r in runs]
        plateau = [r[0][next(i for i, v in enumerate(r[1]) if v >= max(r[1]) - args.within)] for r in runs]
        ns = [r[2][b] for r, b in zip(runs, best)]
        curves[name] = (steps, mean)
        print(
            f"| {name} | {np.mean([max(r[1]) for r in runs]):.4f} | {np.mean(best) + 1:.1f} | {np.mean(plateau):.0f} | "
            f"{np.nanmean(ns):.4f} | {' '.join(f'{v:.3f}' for v in mean)} |"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, (steps, mean) in curves.items():
        ax.plot(steps, mean, marker="o", markersize=3, label=name)
    ax.set(
        xlabel="optimiser steps",
        ylabel="validation micro-F1 (mean over seeds)",
        title="Learning speed on the embedded benchmark",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_speed.png", dpi=110)
    print(f"plot: {out / 'learning_speed.png'}")


if __name__ == "__main__":
    main()
