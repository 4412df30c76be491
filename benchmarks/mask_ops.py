"""How fast CPU applies a dropout mask, by how the mask is read (``_apply_mask`` in
``ramer/models/parts/attention.py``): a product with the bool mask (torch first casts it to the
data's dtype, without vectorising), ``torch.where``, and the uint8 view cast first (vectorised).

Usage: ``python benchmarks/mask_ops.py [--threads 2]``. Prints ms per call (best of 7 x 20) on the
CARAT shapes: activations (64, 61, 256) and attention weights (64, 8, 61, 61).
"""

from __future__ import annotations

import argparse

import torch
from throughput import best_time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scale = 1 / 0.7
    print(f"threads {args.threads}; ms per call of (x * keep * scale)")
    for shape in ((64, 61, 256), (64, 8, 61, 61)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, dtype=dtype)
            keep = torch.rand(shape) > 0.3
            forms = {
                "bool product": lambda: x.mul(keep).mul_(scale),
                "where": lambda: torch.where(keep, x, 0.0).mul_(scale),
                "uint8 view": lambda: x.mul(keep.view(torch.uint8).to(dtype)).mul_(scale),
            }
            ref = forms["bool product"]()
            assert all(torch.equal(f(), ref) for f in forms.values())
            row = "  ".join(f"{name} {1e3 * best_time(f, reps=20, rounds=7):6.3f}" for name, f in forms.items())
            print(f"{str(tuple(shape)):16s} {str(dtype).replace('torch.', ''):8s}  {row}")


if __name__ == "__main__":
    main()
