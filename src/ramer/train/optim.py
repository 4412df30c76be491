"""AdamW without decay on biases, normalisation weights and 1-d parameters, and a warm-up-then-linear-decay LR."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on weight matrices only: no decay on biases, LayerNorm weights or 1-d parameters."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.BatchNorm1d, nn.GroupNorm)):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in no_decay_ids or p.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_linear(total_steps: int, warmup: float):
    """LR multiplier: linear from 0 to 1 over ``warmup`` of the steps, then linear to 0."""
    warm = max(1, int(round(total_steps * warmup)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return factor


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, total_steps: int, warmup: float):
    groups = param_groups(model, weight_decay)
    try:
        # One fused kernel for all parameters instead of ~10 ops per parameter tensor: on 2 CPU
        # threads a RAMer step spends far less time in the optimiser (torch >= 2.4 on CPU).
        opt = torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the kernel
        opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(total_steps, warmup))
    return opt, sched
