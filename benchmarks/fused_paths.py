"""What PyTorch's own fusing back-ends give over our eager bf16 evaluation at the CARAT setting,
and how steady the host is (docs/PERFORMANCE.md §1, session 6).

bf16 inference spends most of its time in memory passes between the matrix products
(``infer_parts.py``, ``profile_step.py --mode infer``), which only fused kernels remove. This
script measures the fused paths PyTorch offers on CPU, each paired with eager in one process
(``throughput.paired_rounds``: alternating steps on the same batches, so both see the same
minutes), on the whole eval forward of the model cast to bf16 (as ``ramer predict --precision
bf16``):

- ``--part onednn``: every encoder's layer stack (70 % of the forward) replaced by the same
  weights in the textbook layer form (``softmax(q k^T / sqrt(d) + bias) v`` in bfloat16, key bias
  0), traced and frozen by TorchScript with oneDNN Graph fusion on, for the batch shape of the
  setting (every key is allowed there). Our own layer form does not pass that fusion pass
  ("Stack values for LLGA partition must be Tensor type").
- ``--part inductor``: the whole model under ``torch.compile`` (inductor, weights frozen); compiling
  takes minutes on 2 cores.
- ``--part host``: the same eager forward on the same batch ``--rounds`` times, with the wall time
  and the process CPU time of each: on a steady host both would be flat.

Prints each pair's samples/s and the median ratio of paired step times (eager / fused: above 1,
the fused path is faster), the time it took to build the fused path and the largest difference of
its probabilities from eager's.

Usage: ``python benchmarks/fused_paths.py [--part onednn|inductor|host] [--rounds 16] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from throughput import batches, eval_model, make_setting, paired_line, paired_rounds
from torch import nn


class TextbookLayer(nn.Module):
    """A ``ramer.models.parts.encoders.TransformerLayer``'s own modules (pre-LN, GELU) in the
    textbook form that oneDNN Graph's fusion recognises: scores in the model's dtype plus a key
    bias (X, 1, 1, K)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2, self.heads = layer.norm1, layer.norm2, layer.attn.heads
        self.q, self.kv, self.out = layer.attn.q, layer.attn.kv, layer.attn.out
        self.ff1, self.ff2 = layer.ff[0], layer.ff[3]
        self.root_d = float(layer.attn.q.out_features // self.heads) ** 0.5

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        X, Q, H = x.shape
        y = self.norm1(x)
        split = lambda t: t.reshape(X, Q, self.heads, -1).transpose(1, 2)  # noqa: E731  (X, heads, Q, d)
        k, v = self.kv(y).chunk(2, -1)
        scores = torch.matmul(split(self.q(y)), split(k).transpose(-1, -2)) / self.root_d + bias
        a = torch.matmul(scores.softmax(-1), split(v)).transpose(1, 2).reshape(X, Q, H)
        x = x + self.out(a)
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


class Stack(nn.Module):
    def __init__(self, layers) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, bias)
        return h


class FusedStack(nn.Module):
    """Stands in for an encoder's ``layers`` (called as one layer with the key mask, which is all
    True at this setting): the traced, frozen, oneDNN-fused textbook stack."""

    def __init__(self, fn, bias: torch.Tensor) -> None:
        super().__init__()
        self.fn, self.bias = fn, bias

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert bool(mask.all()) and h.shape[:2] == self.bias.shape[::3], "built for one shape, every key allowed"
        return self.fn(h, self.bias)


def fuse_encoders(model: nn.Module, rows: int, tokens: int) -> None:
    """Replace every encoder's layer stack of ``model`` by a ``FusedStack`` for (rows, 1 + tokens)."""
    torch.jit.enable_onednn_fusion(True)
    bias = torch.zeros(rows, 1, 1, 1 + tokens, dtype=torch.bfloat16)
    for enc in model.encoders.values():
        example = torch.randn(rows, 1 + tokens, enc.proj.out_features).to(torch.bfloat16)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            fn = torch.jit.freeze(
                torch.jit.trace(Stack(TextbookLayer(layer) for layer in enc.layers).eval(), (example, bias))
            )
            for _ in range(3):  # the JIT profiles, then compiles its fused partitions
                fn(example, bias)
        enc.layers = nn.ModuleList([FusedStack(fn, bias)])


def compare(args, label: str, eager: nn.Module, fused, inputs: list, seconds: float) -> None:
    """Paired rounds of the two eval forwards on ``inputs`` (in turn); prints the summary."""

    def step(model):
        def run(batch):
            with torch.inference_mode():
                return model(batch).probs.float()

        return run

    batch = lambda r: inputs[r % len(inputs)]  # noqa: E731
    runs = {"eager": (batch, step(eager)), label: (batch, step(fused))}
    for _ in range(2):  # warm-up
        for prepare, run in runs.values():
            run(prepare(0))
    times, results = paired_rounds(runs, args.rounds)
    diff = max(float((a - b).abs().max()) for a, b in zip(results["eager"], results[label]))
    print(paired_line(args, inputs[0].labels.shape[0], times, {"eager": "eager", label: label}))
    print(f"  {label}: built in {seconds:.1f} s; largest |eager - {label}| of the probabilities {diff:.3g}", flush=True)


def setting_batches(cfg, store, n: int = 4) -> list:
    stream = batches(store, cfg.train.batch_size, seed=1)
    return [next(stream).to(torch.device("cpu"), torch.bfloat16) for _ in range(n)]


def part_onednn(args, cfg, store) -> None:
    eager = eval_model(cfg, store, "bf16")
    inputs = setting_batches(cfg, store)
    fused = copy.deepcopy(eager)
    t0 = time.perf_counter()
    fuse_encoders(fused, inputs[0].labels.shape[0], inputs[0].grid[1])
    compare(args, "onednn-graph", eager, fused, inputs, time.perf_counter() - t0)


def part_inductor(args, cfg, store) -> None:
    import torch._inductor.config as inductor_config

    eager = eval_model(cfg, store, "bf16")
    inputs = setting_batches(cfg, store)
    inductor_config.freezing = True
    compiled = torch.compile(copy.deepcopy(eager))
    t0 = time.perf_counter()
    with torch.inference_mode():
        compiled(inputs[0])
    compare(args, "inductor", eager, compiled, inputs, time.perf_counter() - t0)


def part_host(args, cfg, store) -> None:
    model = eval_model(cfg, store, "bf16")
    batch = setting_batches(cfg, store, 1)[0]
    walls, cpus = [], []
    with torch.inference_mode():
        model(batch)
        for r in range(args.rounds):
            w0, c0 = time.perf_counter(), time.process_time()
            model(batch)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            print(f"host round {r}: wall {walls[-1] * 1e3:.0f} ms, process CPU {cpus[-1] * 1e3:.0f} ms", flush=True)
    print(
        f"host: the same eager bf16 forward (batch {batch.labels.shape[0]}, {args.threads} threads), {args.rounds} "
        f"times: wall {min(walls) * 1e3:.0f}..{max(walls) * 1e3:.0f} ms (median {statistics.median(walls) * 1e3:.0f}), "
        f"process CPU {min(cpus) * 1e3:.0f}..{max(cpus) * 1e3:.0f} ms"
    )


PARTS = {"onednn": part_onednn, "inductor": part_inductor, "host": part_host}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=tuple(PARTS), default="onednn")
    p.add_argument("--setting", default="carat", help="a setting of throughput.py")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.mode, args.precision = "infer", "bf16"  # for paired_line
    cfg, store = make_setting(args.setting, [], n=256)
    PARTS[args.part](args, cfg, store)


if __name__ == "__main__":
    main()
