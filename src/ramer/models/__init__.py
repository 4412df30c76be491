"""Model registry: one name -> builder table for the CLI (``--model NAME``)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ramer.config import Config
from ramer.errors import RamerError
from ramer.models.base import DataSpec, LossResult


def _late_fusion(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.late_fusion import LateFusion

    return LateFusion(cfg.model, cfg.loss, spec)


def _ramer(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.ramer import RAMer

    return RAMer(cfg.model, cfg.loss, spec)


def _mult(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.mult import MulT

    return MulT(cfg.model, cfg.loss, spec)


def _mlgcn(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.mlgcn import MLGCN

    return MLGCN(cfg.model, cfg.loss, spec)


def _hhmpn(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.hhmpn import HHMPN

    return HHMPN(cfg.model, cfg.loss, spec)


def _amp(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.amp import AMP

    return AMP(cfg.model, cfg.loss, spec)


BUILDERS: dict[str, Callable[[Config, DataSpec], nn.Module]] = {
    "late_fusion": _late_fusion,
    "ramer": _ramer,
    "mult": _mult,
    "mlgcn": _mlgcn,
    "hhmpn": _hhmpn,
    "amp": _amp,
}

# Not nn.Modules: scikit-learn baselines, see ramer.models.classical.ClassicalModel.
CLASSICAL: tuple[str, ...] = ("br", "cc", "lp")


def build_model(cfg: Config, spec: DataSpec) -> nn.Module:
    name = cfg.model.name
    if name not in BUILDERS:
        raise RamerError(f"unknown model '{name}'; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](cfg, spec)


__all__ = ["BUILDERS", "CLASSICAL", "DataSpec", "LossResult", "build_model"]
