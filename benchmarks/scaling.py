"""How RAMer's cost per scene grows with the number of persons P (1-8) and segments S (4-32).

Model: ``configs/synthetic.yaml`` (hidden 64, 4 heads, layers 2/1/1, queue 1024). Scenes: a full
``P x S`` grid, one speaker per segment (text and audio only on the speaker's token), each face
visible with probability 0.7, personality known, a random target. For every grid point, in a
fresh subprocess (``--threads`` intra-op threads, ``OMP_WAIT_POLICY=PASSIVE``), a batch of
``--batch`` such scenes:

- train: the recipe's training step (forward, loss, backward, AdamW), fastest of ``--steps``;
- infer: the eval forward, fastest of ``--steps``;
- memory: the tensors autograd saves for backward in the training forward (exact), and the rise
  of the peak RSS over the process before the first step (allocator included).

Every figure is per scene. The end of the output fits ``cost ~ P^a`` at fixed S and ``cost ~ S^b``
at fixed P (least squares on logs) and states how cost grows.

Usage: ``python benchmarks/scaling.py [--json] [--persons 1,2,4,8] [--segments 4,8,16,32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def grid_store(
    n: int, persons: int, segments: int, seed: int = 0, dims=(64, 32, 48), n_labels: int = 9, pers: int = 118
):
    """``n`` scenes on a full ``persons x segments`` grid, multi-party presence as in the benchmark."""
    from ramer.batch import ROLE_NONSPEAKER, ROLE_SPEAKER
    from ramer.data.store import SceneStore

    rng = np.random.default_rng(seed)
    P, S = persons, segments
    N = P * S
    T = n * N
    present = np.zeros((n, P, S, 3), dtype=bool)
    speakers = rng.integers(0, P, (n, S))
    present[np.arange(n)[:, None], speakers, np.arange(S)[None, :], :2] = True
    present[..., 2] = rng.random((n, P, S)) < 0.7
    tp, ts = rng.integers(0, P, n), rng.integers(0, S, n)
    role = np.where(speakers[np.arange(n), ts] == tp, ROLE_SPEAKER, ROLE_NONSPEAKER).astype(np.int8)
    present = present.reshape(T, 3)
    feats = {
        m: rng.normal(size=(T, d)).astype(np.float32) * present[:, k : k + 1]
        for k, (m, d) in enumerate(zip(("text", "audio", "visual"), dims))
    }
    return SceneStore(
        **feats,
        present=present,
        token_offsets=np.arange(n + 1, dtype=np.int64) * N,
        grid=np.tile([P, S], (n, 1)).astype(np.int32),
        labels=(rng.random((n, n_labels)) < 0.2).astype(np.uint8),
        target=np.stack([tp, ts], 1).astype(np.int32),
        role=role,
        person_offsets=np.arange(n + 1, dtype=np.int64) * P,
        character=rng.integers(0, 8, n * P).astype(np.int32),
        label_names=tuple(f"l{j}" for j in range(n_labels)),
        ids=[f"s{i}" for i in range(n)],
        personality=rng.normal(size=(n * P, pers)).astype(np.float32),
        personality_present=np.ones(n * P, dtype=bool),
    )


def worker(args) -> None:
    import torch

    from ramer.config import build_config
    from ramer.models import DataSpec, build_model
    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import training_step

    torch.set_num_threads(args.threads)
    cfg = build_config(ROOT / "configs" / "synthetic.yaml", [f"train.batch_size={args.batch}"])
    store = grid_store(args.batch * 2, args.p, args.s)
    spec = DataSpec(
        dims={m: store.dims[m] for m in ("text", "audio", "visual")},
        n_labels=len(store.label_names),
        label_names=store.label_names,
        personality_dim=store.dims["personality"],
    )
    torch.manual_seed(0)
    model = build_model(cfg, spec)
    opt, sched = build_optimizer(model, 1e-3, 0.01, 1000, 0.01)
    batches = [store.collate(np.arange(i * args.batch, (i + 1) * args.batch)) for i in range(2)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # memory: what autograd keeps for backward
    saved: dict[int, int] = {}

    def pack(t):
        saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batches[0])
        model.loss(out, batches[0]).total.backward()
    model.zero_grad(set_to_none=True)
    del out
    train, infer = [], []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        training_step(model, model, batches[i % 2], opt, sched, 1.0)
        if i:
            train.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.eval()
    with torch.inference_mode():
        for i in range(args.steps + 1):
            t0 = time.perf_counter()
            model(batches[i % 2])
            if i:
                infer.append(time.perf_counter() - t0)
    B = args.batch
    print(
        json.dumps(
            {
                "P": args.p,
                "S": args.s,
                "N": args.p * args.s,
                "batch": B,
                "train_ms_per_scene": 1e3 * min(train) / B,
                "infer_ms_per_scene": 1e3 * min(infer) / B,
                "saved_mb_per_scene": sum(saved.values()) / 2**20 / B,
                "rss_rise_mb_per_scene": (rss1 - rss0) / 1024 / B,
                "load": os.getloadavg()[0],
            }
        )
    )


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--persons", default="1,2,4,8")
    p.add_argument("--segments", default="4,8,16,32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--p", type=int, help=argparse.SUPPRESS)
    p.add_argument("--s", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    persons = [int(x) for x in args.persons.split(",")]
    segments = [int(x) for x in args.segments.split(",")]
    env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    )
    rows = []
    if not args.json:
        print(
            f"{'P':>2} {'S':>3} {'N':>4}  {'train ms/scene':>14} {'infer ms/scene':>14} {'saved MB/scene':>14} "
            f"{'RSS rise MB/scene':>17}  load"
        )
    for P in persons:
        for S in segments:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--p",
                str(P),
                "--s",
                str(S),
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode:
                raise SystemExit(f"P={P} S={S} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            if not args.json:
                print(
                    f"{P:>2} {S:>3} {P * S:>4}  {r['train_ms_per_scene']:>14.2f} {r['infer_ms_per_scene']:>14.2f} "
                    f"{r['saved_mb_per_scene']:>14.2f} {r['rss_rise_mb_per_scene']:>17.2f}  {r['load']:.2f}",
                    flush=True,
                )
    fits = {}
    for key in ("train_ms_per_scene", "infer_ms_per_scene", "saved_mb_per_scene"):
        table = {(r["P"], r["S"]): r[key] for r in rows}
        along_p = [slope(persons, [table[(P, S)] for P in persons]) for S in segments] if len(persons) > 1 else []
        along_s = [slope(segments, [table[(P, S)] for S in segments]) for P in persons] if len(segments) > 1 else []
        big = [r for r in rows if r["N"] >= 32]
        fits[key] = {
            "exponent_in_P_at_fixed_S": dict(zip(map(str, segments), along_p)),
            "exponent_in_S_at_fixed_P": dict(zip(map(str, persons), along_s)),
            "exponent_in_N_overall": slope([r["N"] for r in rows], [r[key] for r in rows]),
            "exponent_in_N_for_N_ge_32": slope([r["N"] for r in big], [r[key] for r in big]) if len(big) > 2 else None,
        }
    if args.json:
        print(json.dumps({"rows": rows, "fits": fits}, indent=1))
        return
    print()
    for key, f in fits.items():
        ps = ", ".join(f"S={s}: {v:.2f}" for s, v in f["exponent_in_P_at_fixed_S"].items())
        ss = ", ".join(f"P={q}: {v:.2f}" for q, v in f["exponent_in_S_at_fixed_P"].items())
        print(
            f"{key}: ~P^a with a = [{ps}]; ~S^b with b = [{ss}]; ~N^{f['exponent_in_N_overall']:.2f} overall"
            + (f", ~N^{f['exponent_in_N_for_N_ge_32']:.2f} for N >= 32" if f["exponent_in_N_for_N_ge_32"] else "")
        )
    print("(exponent 0: cost per scene flat, i.e. total cost linear in scenes; 1: per-scene cost linear in that axis)")


if __name__ == "__main__":
    main()
