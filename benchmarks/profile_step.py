"""Profile one RAMer training step (or one inference batch) with ``torch.profiler`` and print the
top entries by self CPU time.

Usage: ``python benchmarks/profile_step.py [--setting carat] [--mode train|infer] [--precision fp32|bf16]
[--top 10] [--threads 2] [--sort self_cpu_time_total] [--shapes] [--flops]``; ``--flops`` prints the
floating-point operations of one step instead (``torch.utils.flop_counter``: matrix products,
convolutions and attention kernels; elementwise work is not counted).
Settings are those of ``benchmarks/throughput.py`` (synthetic, mosei, carat). Warm-up steps run
first (the contrastive queue is full when the profiled step runs).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (docs/PERFORMANCE.md)

import torch  # noqa: E402
from throughput import batches, build, eval_model, make_setting  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="carat")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--steps", type=int, default=1, help="profiled steps")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--sort", default="self_cpu_time_total")
    p.add_argument("--shapes", action="store_true", help="group by input shape")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument(
        "--loop-check",
        action="store_true",
        help="instead: count the ATen ops of one training step at several batch sizes, label counts "
        "and persons (equal counts: no Python loop over samples, labels or persons)",
    )
    p.add_argument("--flops", action="store_true", help="instead: the GFLOP of one step (matrix products)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.loop_check:
        return loop_check()
    cfg, store = make_setting(args.setting, args.set or [])
    torch.manual_seed(0)  # the same weights and modality dropout each run, so the same GFLOP
    # eval: unit prototypes, and cast as `ramer predict --precision` casts (bf16: the whole model and its inputs)
    model = build(cfg, store) if args.mode == "train" else eval_model(cfg, store, args.precision)
    stream = batches(store, cfg.train.batch_size)
    from ramer.infer import model_dtype
    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import training_step

    dev = torch.device("cpu")
    if args.mode == "train":
        model.train()
        opt, sched = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, 10_000, 0.01)

        def step():
            training_step(model, model, next(stream), opt, sched, cfg.train.grad_clip, args.precision)
    else:
        dtype = model_dtype(model)

        def step():
            with torch.inference_mode():
                model(next(stream).to(dev, dtype))

    for _ in range(args.warmup):
        step()
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        print(
            f"setting {args.setting}, mode {args.mode}, precision {args.precision}, batch {cfg.train.batch_size}: "
            f"{counter.get_total_flops() / 1e9:.1f} GFLOP per step"
        )
        return
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for _ in range(args.steps):
            with record_function("step"):
                step()
    table = prof.key_averages(group_by_input_shape=args.shapes).table(
        sort_by=args.sort, row_limit=args.top, max_name_column_width=48, max_shapes_column_width=70
    )
    print(
        f"setting {args.setting}, mode {args.mode}, precision {args.precision}, threads {torch.get_num_threads()}, "
        f"batch {cfg.train.batch_size}, load {os.getloadavg()[0]:.2f}"
    )
    print(table)


def count_ops(batch_size: int, n_labels: int, persons: int, segments: int = 6) -> int:
    """ATen ops dispatched by one training step of the synthetic-config RAMer on full P x S grids."""
    from scaling import grid_store
    from torch.utils._python_dispatch import TorchDispatchMode

    from ramer.config import build_config
    from ramer.models import DataSpec, build_model
    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import training_step

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    store = grid_store(batch_size, persons, segments, n_labels=n_labels)
    spec = DataSpec(
        dims={m: store.dims[m] for m in ("text", "audio", "visual")},
        n_labels=n_labels,
        label_names=store.label_names,
        personality_dim=store.dims["personality"],
    )
    cfg = build_config(Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml")
    torch.manual_seed(0)
    model = build_model(cfg, spec).train()
    opt, sched = build_optimizer(model, 1e-3, 0.01, 100, 0.1)
    batch = store.collate(range(batch_size))
    training_step(model, model, batch, opt, sched, 1.0)  # first step: optimiser state, queue
    with Count():
        training_step(model, model, batch, opt, sched, 1.0)
    return Count.n


def loop_check() -> None:
    """The only loops that grow with the data are over blocks of 256 SupCon anchors (items =
    2 x batch x modalities x labels, the queue is 1024) and the random subset taken when a batch
    has more items than the queue; both are printed beside the counts."""
    cases = [(16, 9, 2), (64, 9, 2), (16, 5, 2), (16, 14, 2), (16, 9, 4), (16, 9, 8)]
    print("batch labels persons  SupCon blocks  queue subset  ATen ops per training step")
    for b, c, p in cases:
        items = 2 * b * 3 * c
        print(
            f"{b:>5} {c:>6} {p:>7}  {-(-items // 256):>13}  {'yes' if items > 1024 else 'no':>12}  {count_ops(b, c, p)}"
        )


if __name__ == "__main__":
    main()
