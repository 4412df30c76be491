"""Training throughput of RAMer on a CUDA device, per epoch, by precision and attention kernels.

Each variant ``PRECISION:KERNELS`` trains in a fresh subprocess (so no kernel or plan cache carries
over) on ``--scenes`` scenes of the embedded benchmark with ``configs/synthetic.yaml``: ``--epochs``
epochs of ``ramer.train.recipe.training_step`` over a new random order of batches each epoch (the
shapes of a batch vary with its scenes, as in training). PRECISION is ``fp32`` or ``bf16``
(autocast); KERNELS sets ``ramer.models.parts.attention.SDPA_BACKENDS``, the kernels
``F.scaled_dot_product_attention`` may choose from: ``all`` (torch's own choice), ``default`` (the
package's setting), ``no-cudnn`` (flash, memory-efficient, math), ``efficient`` (memory-efficient,
math) or ``math``. Prints one line per epoch: seconds and samples/s (the device synchronised at the
end of each epoch). ``--profile VARIANT`` adds ``torch.profiler``'s top operators over a few steps
of that variant after its epochs.

Usage: ``python benchmarks/cuda_train.py [--variants fp32:default,bf16:default,bf16:all] [--scenes 1024]
[--epochs 3] [--profile bf16:all]``. Needs a CUDA device (docs/PERFORMANCE.md §7); ``--device cpu``
runs the same loop on CPU, to check the script (the attention kernels matter only off CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

KERNELS = ("all", "default", "no-cudnn", "efficient", "math")


def backends(kernels: str):
    from torch.nn.attention import SDPBackend

    from ramer.models.parts import attention

    return {
        "all": None,
        "default": attention.SDPA_BACKENDS,
        "no-cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        "math": [SDPBackend.MATH],
    }[kernels]


def worker(variant: str, scenes: int, epochs: int, profile: bool, device: str) -> None:
    import numpy as np
    import torch
    from throughput import build, make_setting

    from ramer.models.parts import attention
    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import training_step

    precision, kernels = variant.split(":")
    attention.SDPA_BACKENDS = backends(kernels)
    cfg, store = make_setting("synthetic", n=scenes)
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(0)
    model = build(cfg, store).to(device).train()
    opt, sched = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, 100_000, 0.01)
    bs = cfg.train.batch_size
    rng = np.random.default_rng(0)

    def epoch_batches():
        order = rng.permutation(len(store))
        return [order[i : i + bs] for i in range(0, len(order) - bs + 1, bs)]

    def step(idx):
        batch = store.collate(idx).to(device)
        training_step(model, model, batch, opt, sched, cfg.train.grad_clip, precision)

    for epoch in range(1, epochs + 1):
        chunks = epoch_batches()
        sync()
        t0 = time.perf_counter()
        for idx in chunks:
            step(idx)
        sync()
        seconds = time.perf_counter() - t0
        n = len(chunks) * bs
        line = {"variant": variant, "epoch": epoch, "seconds": round(seconds, 3)}
        line["samples_per_s"] = round(n / seconds, 1)
        print(json.dumps(line))
        sys.stdout.flush()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        chunks = epoch_batches()[:8]
        gpu = device.type == "cuda"
        with torch_profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * gpu) as prof:
            for idx in chunks:
                step(idx)
            sync()
        table = prof.key_averages()
        print(table.table(sort_by="self_cpu_time_total", row_limit=12))
        if gpu:
            print(table.table(sort_by="self_cuda_time_total", row_limit=12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="fp32:default,bf16:default,bf16:all")
    p.add_argument("--scenes", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--profile", default="", help="a variant to profile after its epochs")
    p.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu only to check the script")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.scenes, args.epochs, args.worker == args.profile, args.device)
        return
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("benchmarks/cuda_train.py: no CUDA device on this machine (--device cpu checks the script)")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"# torch {torch.__version__}, {name}, {args.scenes} scenes, batch 64")
    for variant in args.variants.split(","):
        precision, _, kernels = variant.partition(":")
        if precision not in ("fp32", "bf16") or kernels not in KERNELS:
            raise SystemExit(f"bad variant {variant!r}: PRECISION:KERNELS, fp32|bf16 : {'|'.join(KERNELS)}")
        argv = [sys.executable, __file__, "--worker", variant, "--scenes", str(args.scenes)]
        argv += ["--epochs", str(args.epochs), "--profile", args.profile, "--device", args.device]
        subprocess.run(argv, check=True)


if __name__ == "__main__":
    main()
