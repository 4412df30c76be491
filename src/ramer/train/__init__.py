"""Training: one entry, ``run_training``, for every model. It sends a config to the deep-model
:class:`~ramer.train.recipe.Recipe` or, for ``br``/``cc``/``lp``, to
:class:`~ramer.train.classical.ClassicalRecipe`; both write the same run folder (``config.yaml``,
``model.safetensors`` by ``checkpoint.save_model``, ``metrics.jsonl``, ``test_metrics.json``), which
``ramer eval``/``predict``, ``ramer.load`` and the bench read alike. ``ramer train``, ``demo``,
``reproduce`` and ``bench`` all train through it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ramer.config import Config
from ramer.data import DataBundle
from ramer.models import CLASSICAL
from ramer.train.classical import ClassicalRecipe
from ramer.train.recipe import Recipe


def run_training(
    cfg: Config,
    out: str | Path,
    bundle: DataBundle | None = None,
    console: Console | None = None,
    resume: bool = False,
) -> dict:
    """Train and test ``cfg.model.name`` into run directory ``out``; returns the test report."""
    if cfg.model.name in CLASSICAL:
        return ClassicalRecipe(cfg, out, resume=resume, console=console, bundle=bundle).run()
    return Recipe(cfg, out, resume=resume, console=console, bundle=bundle).run()
