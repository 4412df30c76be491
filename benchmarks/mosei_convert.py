"""Time and memory of converting a full-size aligned CMU-MOSEI file to the native format.

Writes a random file in the exact layout of ``train_valid_test.pt`` (16326 / 1871 / 4659 samples,
text (60, 300), visual (60, 35), audio (60, 74) float32 with -inf in audio, ``tgt`` lists,
``dict`` and ``settings``), then, each in a fresh process so the figures do not mix:

1. ``convert``: ``ramer.data.commands.convert`` to a native folder (time, peak RSS);
2. ``iterate``: ``load_native`` (memory-mapped) and one pass over every split with
   ``SceneStore.collate`` in batches of 64 (time, peak RSS, peak anonymous RSS: pages of the
   memory-mapped files count in RSS but are page cache the kernel can drop).

Usage: ``python benchmarks/mosei_convert.py [--out DIR] [--keep]``. Needs about 3.4 GB of disk
for the file and 2.3 GB for the native copy, and about 10 GB of free RAM to write the file
(torch.save builds the whole pickle in memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"train": 16326, "valid": 1871, "test": 4659}
STEPS, DIMS = 60, {"src-text": 300, "src-visual": 35, "src-audio": 74}
NAMES = ("happy", "sad", "anger", "surprise", "disgust", "fear")


def write_file(path: Path, seed: int = 0, scale: float = 1.0) -> None:
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    obj: dict = {}
    for split, n in SIZES.items():
        n = max(1, int(n * scale))
        part = {key: rng.standard_normal((n, STEPS, d), dtype=np.float32) for key, d in DIMS.items()}
        part["src-audio"][:, :2, 0] = -np.inf  # COVAREP's -inf
        tgt = []
        for i in range(n):
            k = int(rng.integers(0, 3))
            tgt.append([2, *(4 + rng.choice(6, size=k, replace=False)).tolist(), 3])
        part["tgt"] = tgt
        obj[split] = part
    obj["dict"] = {
        "src": None,
        "tgt": {"<blank>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{n: 4 + j for j, n in enumerate(NAMES)}},
    }
    obj["settings"] = argparse.Namespace(max_text_seq_len=STEPS, max_visual_seq_len=STEPS, max_audio_seq_len=STEPS)
    torch.save(obj, path)


def _rss_now() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon", "RssFile", "VmRSS")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def stage_convert(src: Path, out: Path) -> dict:
    from ramer.data.commands import convert

    base = _peak_rss()
    t = time.perf_counter()
    convert(str(src), out)
    return {"seconds": time.perf_counter() - t, "peak_rss": _peak_rss(), "rss_after_imports": base}


def stage_iterate(native: Path, batch: int = 64) -> dict:
    import numpy as np

    from ramer.data.store import load_native

    base = _peak_rss()
    t = time.perf_counter()
    bundle = load_native(native)
    t_load = time.perf_counter() - t
    peak_anon, batches = 0, 0
    for store in bundle.splits.values():
        idx = np.arange(len(store))
        for start in range(0, len(idx), batch):
            b = store.collate(idx[start : start + batch])
            batches += 1
            assert b.size == len(idx[start : start + batch])
            if batches % 20 == 0:
                peak_anon = max(peak_anon, _rss_now().get("RssAnon", 0))
    peak_anon = max(peak_anon, _rss_now().get("RssAnon", 0))
    return {
        "seconds": time.perf_counter() - t,
        "load_seconds": t_load,
        "batches": batches,
        "peak_rss": _peak_rss(),
        "peak_rss_anon_sampled": peak_anon,
        "rss_after_imports": base,
    }


def _run_stage(stage: str, *paths: str) -> dict:
    """Run one stage in a fresh interpreter (its own peak RSS) and read its JSON line."""
    cmd = [sys.executable, __file__, "--stage", stage, *paths]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "RAMER_BENCH_STAGE": "1"})
    if res.returncode:
        raise SystemExit(f"stage {stage} failed (exit {res.returncode}):\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for the file and the native copy (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full sizes (smoke runs)")
    ap.add_argument("--stage", choices=["write", "convert", "iterate"], help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage == "write":
        t = time.perf_counter()
        write_file(Path(args.paths[0]), scale=float(os.environ.get("RAMER_BENCH_SCALE", "1")))
        print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss": _peak_rss()}))
        return
    if args.stage == "convert":
        print(json.dumps(stage_convert(Path(args.paths[0]), Path(args.paths[1]))))
        return
    if args.stage == "iterate":
        print(json.dumps(stage_iterate(Path(args.paths[0]))))
        return

    if os.environ.get("RAMER_BENCH_STAGE"):
        raise SystemExit("a benchmark stage must be given --stage")  # never start a nested run
    os.environ["RAMER_BENCH_SCALE"] = str(args.scale)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ramer_mosei_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    src, native = root / "train_valid_test.pt", root / "native"
    try:
        if not src.exists():
            w = _run_stage("write", str(src))
            print(f"wrote {src}: {src.stat().st_size / 1e9:.2f} GB in {w['seconds']:.1f} s")
        size = src.stat().st_size
        c = _run_stage("convert", str(src), str(native))
        native_size = sum(f.stat().st_size for f in native.rglob("*") if f.is_file())
        it = _run_stage("iterate", str(native))
        gb = 1e9
        n_total = sum(max(1, int(n * args.scale)) for n in SIZES.values())
        print(f"file                 {size / gb:.2f} GB ({n_total} samples, float32)")
        print(
            f"convert              {c['seconds']:.1f} s, peak RSS {c['peak_rss'] / gb:.2f} GB "
            f"({c['peak_rss'] / size:.2f}x the file; {c['rss_after_imports'] / gb:.2f} GB after imports)"
        )
        print(f"native copy          {native_size / gb:.2f} GB")
        print(
            f"load + iterate       {it['seconds']:.1f} s for {it['batches']} batches of 64 "
            f"(load_native {it['load_seconds'] * 1000:.0f} ms), peak RSS {it['peak_rss'] / gb:.2f} GB, "
            f"peak anonymous RSS {it['peak_rss_anon_sampled'] / gb:.2f} GB"
        )
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(root, ignore_errors=True)
        elif not args.keep:
            shutil.rmtree(native, ignore_errors=True)


if __name__ == "__main__":
    main()
