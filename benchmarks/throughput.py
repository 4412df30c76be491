"""Training and inference throughput (samples/s) and peak RSS of RAMer on CPU.

Settings (``--settings``, comma list; default all):

- ``synthetic``: ``configs/synthetic.yaml`` as it is (hidden 64, 4 heads, layers 2/1/1, queue 1024,
  batch 64) on scenes of the embedded benchmark (2-6 persons x 3-10 segments, personality 118-d).
- ``mosei``: the CMU-MOSEI shape: batch 64, 60 tokens (P = 1, S = 60, every modality present),
  dims text/visual/audio 300/35/74, 6 labels, no personality; hidden 256, 8 heads, FFN 256,
  layers 6/3/3, queue 8192, code size 64, dropout 0.3 (the authors' defaults, spec MODEL.md §2.1).
- ``carat``: the same data and model with CARAT's layers 6/4/4.
- ``text-only`` (by name only): ``synthetic`` with audio and visual absent from every token, as a
  text corpus imported with ``ramer data import``.

Each (setting, mode) is measured in a fresh subprocess, so the peak RSS (``ru_maxrss``) is that of
one mode alone (it includes Python, torch and the data). Modes:

- ``train``: ``ramer.train.recipe.training_step`` (collate, forward, loss, backward, clipping,
  AdamW step) after ``--warmup`` steps (enough to fill the 8192-entry queue), ``--steps`` timed;
- ``infer``: eval forward under ``torch.inference_mode`` in fp32, then ``infer-bf16`` the same with
  the model cast whole to bfloat16 (``ramer predict --precision bf16``; CPUs with AVX-512 BF16 /
  AMX), with its accuracy against fp32 on the same batches (max abs difference of the
  probabilities, agreement of the 0.5 decisions).
  ``--procs K`` runs K inference processes at once and adds their samples/s (independent workers).
  ``--workers N`` instead scores the setting's ``--scenes`` scenes (default 512) as ``ramer predict
  --workers N`` does (``ramer.infer.predict``: N forked processes sharing the threads),
  timing whole passes; each pass forks its workers, so larger passes spread that cost thinner.

A first line calibrates the machine (matrix products and a memory-bound op, ``machine_speed``).
Every line also gives the model's parameter count (M = millions). samples/s is the mean over the
timed steps; ``best`` is the fastest single step (the figure to
compare across loads on a shared machine). ``--threads`` (default 2) sets torch's intra-op threads.
The load average is printed with every figure. The measured processes run with
``OMP_WAIT_POLICY=PASSIVE`` unless ``--omp-wait-policy`` says otherwise: on a machine shared with
other jobs, OpenMP threads that spin at every barrier lose whole scheduler slices whenever their
partner thread is preempted (docs/PERFORMANCE.md).

Usage: ``python benchmarks/throughput.py [--json] [--settings carat] [--modes train,infer]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("synthetic", "mosei", "carat")  # the default list; "text-only" is asked for by name
MODES = ("train", "infer", "infer-bf16")
MOSEI_DIMS = {"text": 300, "audio": 74, "visual": 35}
MOSEI_MODEL = [
    "model.hidden=256", "model.heads=8", "model.ffn=256", "model.dropout=0.3", "model.proj_size=64",
    "model.queue_size=8192", "train.batch_size=64",
]  # fmt: skip
LAYERS = {"mosei": "{text: 6, audio: 3, visual: 3}", "carat": "{text: 6, audio: 4, visual: 4}"}


# ---------------------------------------------------------------------- settings
def mosei_store(n: int, seed: int = 0, segments: int = 60, n_labels: int = 6):
    """``n`` random scenes in the CMU-MOSEI layout: one person, ``segments`` steps, all present."""
    import numpy as np

    from ramer.batch import ROLE_NONE
    from ramer.data.store import SceneStore

    rng = np.random.default_rng(seed)
    T = n * segments
    feats = {m: rng.normal(size=(T, d)).astype(np.float32) for m, d in MOSEI_DIMS.items()}
    return SceneStore(
        **feats,
        present=np.ones((T, 3), dtype=bool),
        token_offsets=np.arange(n + 1, dtype=np.int64) * segments,
        grid=np.tile([1, segments], (n, 1)).astype(np.int32),
        labels=(rng.random((n, n_labels)) < 0.3).astype(np.uint8),
        target=np.full((n, 2), -1, dtype=np.int32),
        role=np.full(n, ROLE_NONE, dtype=np.int8),
        person_offsets=np.arange(n + 1, dtype=np.int64),
        character=np.zeros(n, dtype=np.int32),
        label_names=tuple(f"l{j}" for j in range(n_labels)),
        ids=[f"s{i}" for i in range(n)],
    )


def make_setting(name: str, overrides: list[str] = (), n: int = 512):
    """(config, train store) of a named setting."""
    from ramer.config import build_config

    if name in ("synthetic", "text-only"):
        from ramer.data.synthetic import generate

        cfg = build_config(
            ROOT / "configs" / "synthetic.yaml",
            [f"data.synthetic.n_train={n}", "data.synthetic.n_valid=1", "data.synthetic.n_test=1", *overrides],
        )
        store = generate(cfg.data.synthetic).splits["train"]
        if name == "text-only":  # the same scenes with text alone, as a text corpus imported with `ramer data import`
            store.present[:, 1:] = False
            store.audio[:] = 0.0
            store.visual[:] = 0.0
        return cfg, store
    if name not in LAYERS:
        raise SystemExit(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}, text-only")
    cfg = build_config(ROOT / "configs" / "synthetic.yaml", [*MOSEI_MODEL, f"model.layers={LAYERS[name]}", *overrides])
    return cfg, mosei_store(n)


def build(cfg, store):
    from ramer.models import DataSpec, build_model

    spec = DataSpec(
        dims=store.dims,
        n_labels=len(store.label_names),
        label_names=store.label_names,
        personality_dim=store.dims["personality"],
    )
    return build_model(cfg, spec)


def batches(store, batch_size: int, seed: int = 0):
    """An endless stream of random batches (collated on the fly, as in training)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    while True:
        yield store.collate(rng.choice(len(store), batch_size, replace=False))


# ---------------------------------------------------------------------- measurements
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_step(cfg, store, mode: str, precision: str):
    """One step of ``mode`` on a batch, as the benchmarks time it: ``train`` is
    ``ramer.train.recipe.training_step`` under ``precision`` (autocast for bf16) and returns the
    loss, shape (1,); ``infer`` is the eval forward of ``eval_model`` cast whole to ``precision``
    (as ``ramer predict --precision``) and returns the probabilities in float32."""
    import torch

    from ramer.infer import model_dtype
    from ramer.train.recipe import training_step

    if mode == "train":
        from ramer.train.optim import build_optimizer

        model = build(cfg, store).train()
        opt, sched = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, 10_000, 0.01)

        def step(batch):
            loss = training_step(model, model, batch, opt, sched, cfg.train.grad_clip, precision)
            return loss.total.detach().reshape(1)

        return step
    model = eval_model(cfg, store, precision)
    dtype = model_dtype(model)

    def step(batch):
        with torch.inference_mode():
            return model(batch.to(torch.device("cpu"), dtype)).probs.float()

    return step


def measure_train(cfg, store, steps: int, warmup: int, precision: str) -> dict:
    step = make_step(cfg, store, "train", precision)
    stream = batches(store, cfg.train.batch_size)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step(next(stream))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return summary(times, cfg.train.batch_size)


def eval_model(cfg, store, precision: str = "fp32"):
    """A model in eval mode with unit prototypes, as after training (the prototypes matter), cast
    to ``precision`` as ``ramer predict --precision`` does (``bf16``: the whole model)."""
    import torch

    from ramer.infer import to_inference_precision

    model = build(cfg, store).eval()
    if getattr(model, "reconstruction", None) is not None:
        g = torch.Generator().manual_seed(0)
        protos = model.reconstruction.prototypes
        protos.copy_(torch.nn.functional.normalize(torch.randn(protos.shape, generator=g), dim=-1))
    return to_inference_precision(model, precision)


def measure_predict(cfg, store, precision: str, workers: int, infer_batch: int | None, passes: int = 3) -> dict:
    """``ramer predict --workers N``: the whole store scored by ``ramer.infer.predict``
    (forked workers, the threads shared out among them), one untimed pass, then ``passes`` timed."""
    import torch

    from ramer.infer import predict

    model = eval_model(cfg, store, precision)
    batch_size = infer_batch or cfg.train.batch_size
    times = []
    for i in range(passes + 1):
        t0 = time.perf_counter()
        predict(model, store, batch_size, torch.device("cpu"), workers=workers)
        if i:
            times.append(time.perf_counter() - t0)
    out = summary(times, len(store))
    out.update(workers=workers, step_s_mean=out["step_s_mean"] * batch_size / len(store))  # per batch
    return out


def measure_infer(cfg, store, steps: int, warmup: int, precision: str, infer_batch: int | None = None) -> dict:
    """Eval forward as ``ramer predict`` runs it: fp32, or (``bf16``) the model cast whole to
    bfloat16 by ``ramer.infer.to_inference_precision`` with its inputs cast to match; the
    bf16 scores are compared with the fp32 model's on the same batches."""
    import copy

    import numpy as np
    import torch

    from ramer.infer import to_inference_precision

    reference = eval_model(cfg, store)
    # the fp32 reference is kept beside the bf16 model only to compare scores; fp32 measures it alone
    model = reference if precision == "fp32" else to_inference_precision(copy.deepcopy(reference), precision).eval()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    batch_size = infer_batch or cfg.train.batch_size
    stream = batches(store, batch_size, seed=1)
    times, timed = [], []
    dev = torch.device("cpu")
    with torch.inference_mode():
        for i in range(warmup + steps):
            batch = next(stream)
            t0 = time.perf_counter()
            probs = model(batch.to(dev, dtype)).probs.float()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                timed.append((batch, probs))
        # the fp32 reference runs after the timed batches, so that it does not disturb them
        diffs, agree = [], []
        for batch, probs in timed if precision != "fp32" else ():
            ref = reference(batch).probs
            diffs.append(float((probs - ref).abs().max()))
            agree.append(float(((probs > 0.5) == (ref > 0.5)).float().mean()))
    out = summary(times, batch_size)
    if diffs:
        out["max_abs_diff_vs_fp32"] = max(diffs)
        out["decision_agreement_vs_fp32"] = float(np.mean(agree))
    return out


def summary(times: list[float], batch_size: int) -> dict:
    total = sum(times)
    return {
        "samples_per_s": batch_size * len(times) / total,
        "best_samples_per_s": batch_size / min(times),
        "step_s_mean": total / len(times),
        "step_s_min": min(times),
        "steps": len(times),
    }


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    cfg, store = make_setting(args.setting, args.set or [], n=args.scenes)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if args.mode == "train":
        res = measure_train(cfg, store, args.steps, args.warmup, args.precision)
    else:
        precision = "bf16" if args.mode == "infer-bf16" else "fp32"
        if args.workers:
            res = measure_predict(cfg, store, precision, args.workers, args.infer_batch)
        else:
            res = measure_infer(cfg, store, args.infer_steps, 2, precision, args.infer_batch)
    n_params = sum(p.numel() for p in build(cfg, store).parameters())
    res.update(
        setting=args.setting,
        mode=args.mode,
        threads=torch.get_num_threads(),
        parameters=n_params,
        batch=(args.infer_batch or cfg.train.batch_size) if args.mode != "train" else cfg.train.batch_size,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "unset"),
        precision=args.precision if args.mode == "train" else ("bf16" if args.mode == "infer-bf16" else "fp32"),
        peak_rss_mb=peak_rss_mb(),
        load_before=load_before,
        load_after=os.getloadavg()[0],
        seconds=time.perf_counter() - t0,
    )
    print(json.dumps(res), flush=True)


def run_one(setting: str, mode: str, args) -> dict:
    """One (setting, mode) in fresh processes: ``--procs`` of them at once for inference (their
    samples/s add up: independent workers, e.g. two single-threaded servers), one for training."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.omp_wait_policy != "unset":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--setting",
        setting,
        "--mode",
        mode,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--infer-steps",
        str(args.infer_steps),
        "--precision",
        args.precision,
        "--infer-batch",
        str(args.infer_batch or 0),
        "--workers",
        str(args.workers),
        "--scenes",
        str(args.scenes),
    ]
    for s in args.set or []:
        cmd += ["--set", s]
    n = args.procs if mode != "train" else 1
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for _ in range(n)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{setting}/{mode} failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    res = dict(results[0])
    if n > 1:
        res.update(
            processes=n,
            samples_per_s=sum(r["samples_per_s"] for r in results),
            best_samples_per_s=sum(r["best_samples_per_s"] for r in results),
            peak_rss_mb=max(r["peak_rss_mb"] for r in results),
            load_after=max(r["load_after"] for r in results),
        )
    return res


def best_time(fn, reps: int = 10, rounds: int = 5) -> float:
    """Seconds per call of ``fn``: the best of ``rounds`` timings of ``reps`` calls, after one."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps)
    return min(times)


def add_paired_args(p: argparse.ArgumentParser) -> None:
    """The options of the paired A/B script ``ab_trees.py``."""
    p.add_argument("--setting", default="carat")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="bf16", help="train: autocast; infer: the model cast whole"
    )
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)


def paired_rounds(runs: dict, rounds: int) -> tuple[dict, dict]:
    """Time two runs step by step, alternating (A B, then B A, ...), so that both see the same
    minutes of a machine whose speed drifts. ``runs``: name -> (prepare, step); ``prepare(r)``
    (untimed) returns round r's batch, ``step(batch)`` is timed. Returns (seconds, results) per name."""
    a, b = runs
    times, results = {a: [], b: []}, {a: [], b: []}
    for r in range(rounds):
        for name in (a, b) if r % 2 else (b, a):
            prepare, step = runs[name]
            batch = prepare(r)
            t0 = time.perf_counter()
            results[name].append(step(batch))
            times[name].append(time.perf_counter() - t0)
    return times, results


def paired_summary(times: dict, size: int, labels: dict | None = None) -> str:
    """What ``paired_rounds`` timed: samples/s of each (``size`` samples a round; ``labels`` names
    them, default their keys) and the median ratio of paired times (first / second run; above 1:
    the second is faster), with its range."""
    (a, ta), (b, tb) = times.items()
    labels = labels or {a: a, b: b}
    ratios = [x / y for x, y in zip(ta, tb)]
    rate = lambda t: size * len(t) / sum(t)  # noqa: E731
    return (
        f"{labels[a]} {rate(ta):.1f} samples/s, {labels[b]} {rate(tb):.1f} samples/s, "
        f"median {a}/{b} {statistics.median(ratios):.3f} ({min(ratios):.3f}..{max(ratios):.3f})"
    )


def paired_line(args, batch_size: int, times: dict, labels: dict) -> str:
    """The summary of ``paired_rounds`` with the setting it ran (``paired_summary``)."""
    return (
        f"setting {args.setting}, mode {args.mode}, precision {args.precision}, threads {args.threads}, "
        f"{args.rounds} rounds: {paired_summary(times, batch_size, labels)}"
    )


def machine_speed(threads: int) -> dict:
    """This minute's speed of the machine, on ``threads`` threads: matrix products of an encoder's
    shape in fp32 and bf16 (GFLOP/s, best of 5) and a memory-bound op (float32 softmax over the
    CARAT attention scores, 64 x 8 x 61 x 61; ms, best of 5). The machine's speed drifts; figures
    from runs whose calibration differs are not comparable."""
    import torch

    torch.set_num_threads(threads)

    out = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, w = torch.randn(3904, 256, dtype=dtype), torch.randn(256, 256, dtype=dtype)
        out[f"gemm_{name}_gflops"] = 2 * 3904 * 256 * 256 / best_time(lambda: a @ w) / 1e9
    scores = torch.randn(64, 8, 61, 61)
    out["softmax_ms"] = best_time(lambda: scores.softmax(-1)) * 1e3
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed training steps")
    p.add_argument("--warmup", type=int, default=4, help="untimed training steps first (fill the queue)")
    p.add_argument("--infer-steps", type=int, default=8, help="timed inference batches")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="training precision")
    p.add_argument("--infer-batch", type=int, default=0, help="inference batch size (default: the training batch, 64)")
    p.add_argument(
        "--procs",
        type=int,
        default=1,
        help="inference only: run this many worker processes at once and add their samples/s "
        "(e.g. --procs 2 --threads 1: two single-threaded workers on 2 cores)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="inference only: score the setting's --scenes scenes as `ramer predict --workers N` does "
        "(N forked processes sharing --threads), three timed passes; samples/s per pass",
    )
    p.add_argument(
        "--scenes",
        type=int,
        default=512,
        help="scenes of each setting's data (training and inference draw batches from them; "
        "--workers scores all of them per pass)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every setting")
    p.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        choices=("PASSIVE", "ACTIVE", "unset"),
        help="OMP_WAIT_POLICY of the measured processes (default PASSIVE: see docs/PERFORMANCE.md)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--setting", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import platform

    import torch

    speed = machine_speed(args.threads)
    if not args.json:
        print(
            f"machine at {args.threads} threads: matmul fp32 {speed['gemm_fp32_gflops']:.0f} GFLOP/s, "
            f"bf16 {speed['gemm_bf16_gflops']:.0f} GFLOP/s; softmax of the CARAT scores "
            f"{speed['softmax_ms']:.2f} ms",
            flush=True,
        )
    rows = []
    for setting in args.settings.split(","):
        for mode in args.modes.split(","):
            res = run_one(setting, mode, args)
            rows.append(res)
            if not args.json:
                extra = ""
                if "max_abs_diff_vs_fp32" in res:
                    extra = (
                        f"  vs fp32: max|dp| {res['max_abs_diff_vs_fp32']:.1e}, "
                        f"decisions {100 * res['decision_agreement_vs_fp32']:.2f}% equal"
                    )
                who = f"{res.get('processes', 1)}x{res['threads']}t" + (
                    f" w{res['workers']}" if "workers" in res else ""
                )
                print(
                    f"{setting:9s} {res['parameters'] / 1e6:5.2f}M {mode:10s} {res['precision']:4s} {who:5s} "
                    f"{res['samples_per_s']:8.1f} samples/s "
                    f"(best {res['best_samples_per_s']:7.1f})  step {res['step_s_mean']:.3f}s  "
                    f"peak RSS {res['peak_rss_mb']:7.0f} MB  load {res['load_before']:.2f}->{res['load_after']:.2f}"
                    f"{extra}",
                    flush=True,
                )
    if args.json:
        print(
            json.dumps(
                {
                    "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "machine": platform.machine(),
                    "cpus": os.cpu_count(),
                    "threads": args.threads,
                    "speed": speed,
                    "results": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
