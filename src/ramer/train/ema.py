"""An exponential moving average of the weights (``train.ema_decay``).

Training steps the live weights; validation, the saved checkpoint and test use the average. After
optimiser step ``t`` (from 1) each average moves towards its weight by ``1 - d_t`` with
``d_t = min(decay, (1 + t) / (10 + t))``: early on the average follows the weights closely, so an
early best epoch is not scored on weights near the initial ones. This warm-up reaches ``decay``
only after ``(10 * decay - 1) / (1 - decay)`` steps (about 1,790 for 0.995): until then the average
remembers roughly the last ninth of the steps taken, after it the plain exponential average with
``decay`` (about ``1 / (1 - decay)`` steps of memory). Floating-point parameters are averaged;
buffers (the contrastive queue, the prototypes, normalisation statistics) are not: evaluation uses
the live ones.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ramer.errors import RamerError


class WeightAverage:
    """The average of ``model``'s parameters, kept beside them on the same device."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise RamerError(f"train.ema_decay must lie between 0 and 1, got {decay}")
        self.decay = decay
        self.steps = 0
        named = [(name, p) for name, p in model.named_parameters() if p.is_floating_point()]
        self.names = [name for name, _ in named]
        self.live = [p for _, p in named]
        self.average = [p.detach().clone() for p in self.live]

    def rate(self) -> float:
        """The decay of the step just taken (``d_t`` above)."""
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self) -> None:
        """Call after each optimiser step."""
        self.steps += 1
        # One call for every tensor (one kernel launch per tensor on CUDA otherwise).
        torch._foreach_lerp_(self.average, [p.detach() for p in self.live], 1.0 - self.rate())

    @contextmanager
    def swapped_in(self):
        """The model holds the averaged weights inside the block, its live ones again after it."""
        with torch.no_grad():
            kept = [p.detach().clone() for p in self.live]
            for avg, p in zip(self.average, self.live):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in zip(kept, self.live):
                    p.copy_(k)

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "average": {name: avg.detach().cpu() for name, avg in zip(self.names, self.average)},
        }

    def load_state_dict(self, state: dict, source: str, steps: int | None = None) -> None:
        """Restore a saved average; ``source`` (the file) names the problem when it does not fit, or when
        its step count (which sets its warm-up) is not ``steps``, the optimiser steps of the state's epochs."""
        if state is None:
            raise RamerError(
                f"{source}: holds no weight average; the run was trained without train.ema_decay, so resume it "
                "with its own config (without train.ema_decay)"
            )
        saved = state.get("average") if isinstance(state, dict) else None
        if not isinstance(saved, dict) or not isinstance(state.get("steps"), int):
            raise RamerError(f"{source}: the weight average (train.ema_decay) is malformed")
        if steps is not None and state["steps"] != steps:
            raise RamerError(
                f"{source}: not a ramer training state (the weight average has {state['steps']} steps, but its "
                f"epochs end at step {steps})"
            )
        if set(saved) != set(self.names):
            raise RamerError(f"{source}: the weight average holds other parameters than the model")
        for name, avg in zip(self.names, self.average):
            value = saved[name]
            if not isinstance(value, torch.Tensor) or value.shape != avg.shape:
                raise RamerError(f"{source}: the weight average of '{name}' does not fit the model")
            avg.copy_(value)
        self.steps = state["steps"]
