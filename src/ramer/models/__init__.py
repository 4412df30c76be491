"""Model registry: every model name a run takes (``--model NAME``): the deep models' builders (among
them ``ramer-authors``, the authors' own design), the classical baselines, and the
``ramer-<ablation>`` presets (RAMer with one part switched off)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ramer.config import ABLATIONS, Config
from ramer.errors import RamerError
from ramer.models.base import DataSpec, LossResult


def _late_fusion(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.late_fusion import LateFusion

    return LateFusion(cfg.model, cfg.loss, spec)


def _ramer(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.ramer import RAMer

    return RAMer(cfg.model, cfg.loss, spec)


def _ramer_authors(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.ramer_authors import RAMerAuthors

    return RAMerAuthors(cfg.model, cfg.loss, spec)


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
    "ramer-authors": _ramer_authors,  # the authors' released design (docs/MODEL.md)
    "mult": _mult,
    "mlgcn": _mlgcn,
    "hhmpn": _hhmpn,
    "amp": _amp,
}

# Not nn.Modules: scikit-learn baselines, see ramer.models.classical.ClassicalModel.
CLASSICAL: tuple[str, ...] = ("br", "cc", "lp")


BASELINES: tuple[str, ...] = ("br", "cc", "lp", "mlgcn", "late_fusion", "mult", "hhmpn", "amp")
PRESETS: dict[str, str] = {f"ramer-{a}": a for a in ABLATIONS}  # preset name -> the part it switches off
KNOWN: set[str] = {*BUILDERS, *CLASSICAL, *PRESETS}


def known_models() -> str:
    """The model names a run takes, for error messages."""
    return f"{', '.join(sorted({*BUILDERS, *CLASSICAL}))}, ramer-<ablation> ({', '.join(ABLATIONS)})"


def set_model(cfg: Config, name: str) -> None:
    """Set ``cfg.model`` to a model name or a ``ramer-<ablation>`` preset, in place."""
    if name not in KNOWN:
        raise RamerError(f"unknown model '{name}'; known: {known_models()}")
    if name in PRESETS:
        cfg.model.name = "ramer"
        if PRESETS[name] not in cfg.model.ablations:
            cfg.model.ablations = [*cfg.model.ablations, PRESETS[name]]
    else:
        cfg.model.name = name


def build_model(cfg: Config, spec: DataSpec) -> nn.Module:
    name = cfg.model.name
    if name not in BUILDERS:
        raise RamerError(f"unknown model '{name}'; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](cfg, spec)


__all__ = [
    "BASELINES",
    "BUILDERS",
    "CLASSICAL",
    "KNOWN",
    "PRESETS",
    "DataSpec",
    "LossResult",
    "build_model",
    "known_models",
    "set_model",
]
