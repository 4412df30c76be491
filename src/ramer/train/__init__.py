"""Training: one entry, ``run_training``, for every model. It sends a config to the deep-model
:class:`~ramer.train.recipe.Recipe` or, for ``br``/``cc``/``lp``, to
:class:`~ramer.train.classical.ClassicalRecipe`; both write the same run folder (``config.yaml``,
``model.safetensors`` by ``checkpoint.save_model``, ``metrics.jsonl``, ``test_metrics.json``), which
``ramer eval``/``predict``, ``ramer.load`` and the bench read alike. ``ramer train``, ``demo``,
``reproduce`` and ``bench`` all train through it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

from rich.console import Console

from ramer.config import Config, check_corpus_config_has_data
from ramer.data import DataBundle, read_as_converted
from ramer.errors import RamerError, env_count
from ramer.models import CLASSICAL
from ramer.paths import hold
from ramer.train.recipe import Recipe


def run_training(
    cfg: Config,
    out: str | Path,
    bundle: DataBundle | None = None,
    console: Console | None = None,
    resume: bool = False,
    hooks: tuple[Callable[[Recipe, int], None], ...] = (),
    announce: bool = False,
) -> dict:
    """Train and test ``cfg.model.name`` into run directory ``out``; returns the test report.
    ``bundle``: the data to train on (default: loaded from ``cfg.data``; a converted folder's
    loader options that ``cfg.data`` leaves at their defaults take the folder's values, in
    ``cfg``, and one it sets otherwise is refused: ``ramer.data.read_as_converted``). The run records ``cfg``
    and a fingerprint of each split of the data it was trained on; ``ramer eval RUN`` and
    ``ramer.api.load_data_for`` read ``cfg.data`` again and say when it is not that data, so give
    data made otherwise to the predictor yourself (``ramer.load(RUN).predict(bundle)``).
    ``resume``: go on with the run in ``out`` from its last saved epoch (``ramer train --resume``).
    ``console``: a ``rich`` console for the progress and the summary (default: standard error).
    ``hooks`` (deep models): called as ``hook(recipe, epoch)`` after each epoch is logged and saved
    (``ramer tune`` reports the validation score there and may stop the run). ``announce``: print
    where the run goes once its setup has passed (for a folder name made up by the caller)."""
    if not isinstance(cfg, Config):
        raise RamerError(
            f"run_training takes a ramer.config.Config (build_config(FILE, ['key=value', ...])), not "
            f"{type(cfg).__name__}"
        )
    if not isinstance(out, (str, os.PathLike)):
        raise RamerError(f"run_training: out is the run folder's path (a str or Path), not {type(out).__name__}")
    out = Path(out).expanduser()
    if bundle is None and not resume:  # the data comes from cfg.data: a corpus's config names none
        check_corpus_config_has_data(cfg)
    if bundle is not None and not isinstance(bundle, DataBundle):
        raise RamerError(
            f"run_training: bundle is a DataBundle with train, valid and test splits (ramer.data.load_dataset(PATH)), "
            f"not {type(bundle).__name__} (leave it out to load cfg.data)"
        )
    if not isinstance(hooks, (tuple, list)) or not all(callable(h) for h in hooks):
        raise RamerError(
            f"run_training: hooks is a tuple of functions hook(recipe, epoch) (hooks=(my_hook,)), not {hooks!r:.80}"
        )
    if not isinstance(resume, bool):
        raise RamerError(f"run_training: resume is True or False, not {resume!r:.80}")
    if console is not None and not isinstance(console, Console):
        raise RamerError(f"run_training: console is a rich.console.Console, not {type(console).__name__}")
    if cfg.model.name in CLASSICAL and hooks:
        raise RamerError(f"'{cfg.model.name}' fits once: it has no epochs to call hooks after")
    if bundle is None and not resume:  # before the run folder is made
        read_as_converted(cfg.data)
    # Rank 0 holds the run folder while the run lasts: a second command there is refused, not mixed in.
    held = hold(out, "ramer train", make=True) if env_count("RANK", 0) == 0 else contextlib.nullcontext()
    with held:
        if cfg.model.name in CLASSICAL:
            from ramer.train.classical import ClassicalRecipe  # scikit-learn (slow to import): these only

            recipe = ClassicalRecipe(cfg, out, resume=resume, console=console, bundle=bundle)
        else:
            recipe = Recipe(cfg, out, resume=resume, console=console, bundle=bundle, hooks=hooks)
        recipe.announce = announce
        return recipe.run()
