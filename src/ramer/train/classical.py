"""The recipe for the scikit-learn baselines (``br``, ``cc``, ``lp``).

Same run directory as the deep recipe, so ``ramer eval`` / the bench read both alike:
``config.yaml``, ``model.safetensors`` (the fitted arrays as float64 tensors; config, data spec,
threshold and epoch in the metadata, as ``checkpoint.save_model`` writes them), ``metrics.jsonl``
(one "epoch" line: train log-loss and validation report, then the test line) and
``test_metrics.json``. The log has the deep recipe's keys; a fit takes no optimiser steps, so
``step`` and ``best_step`` are null (``best_epoch`` and ``epochs_run`` 1, ``stopped_early``
false). Phases: setup -> train (fit once, tune the threshold on validation, save) -> test (once).
Fitting takes seconds, so resuming simply fits again. Single-label data: the same fits; each
sample's label probabilities are divided by their sum (so they sum to 1, like the deep models'
softmax) and the decision is the arg-max.

:class:`~ramer.models.classical.ClassicalModule` puts a fitted model behind the deep models'
interface (``forward(batch).probs``), so validation, test and evaluation all go through
``infer.predict``: the same pooled features, the same float32 scores, the same threshold.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from threadpoolctl import threadpool_limits

from ramer import checkpoint as ckpt
from ramer.config import Config
from ramer.console import plain_console
from ramer.data import DataBundle, load_bundle
from ramer.data.store import resolve_task
from ramer.dist import is_main, launched, world_size
from ramer.errors import RamerError
from ramer.infer import apply_missing, predict
from ramer.metrics import METRIC_NAMES, SELECTION, choose_threshold, describe_threshold, report
from ramer.models import CLASSICAL, DataSpec, check_options
from ramer.models.classical import ClassicalModel, ClassicalModule
from ramer.paths import RUN_FILES, append_line, atomic_write_text, remove_temporaries
from ramer.train.recipe import (
    RunSteps,
    check_resumed_config,
    check_resumed_data,
    read_log,
    start_run_folder,
    write_test_result,
)
from ramer.train.tensorboard import CurveWriter, require_tensorboard


def log_loss(labels: np.ndarray, probs: np.ndarray, single_label: bool = False) -> float:
    """Mean binary cross-entropy over the (n, C) entries; single-label: mean cross-entropy of the
    true label over the samples."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    if single_label:
        return float(-(y * np.log(p)).sum(1).mean())
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


class ClassicalRecipe(RunSteps):
    """One run of a scikit-learn baseline: fit on train, threshold on validation, test once."""

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        resume: bool = False,
        console: Console | None = None,
        bundle: DataBundle | None = None,
    ) -> None:
        if cfg.model.name not in CLASSICAL:
            raise RamerError(f"'{cfg.model.name}' is not a classical model ({', '.join(CLASSICAL)})")
        self.cfg = cfg
        self.out = Path(out_dir)
        self.resume = resume
        self.console = console or plain_console()
        self.bundle = bundle
        self.curves: CurveWriter | None = None  # TensorBoard (train.tensorboard)
        self.fitted = False  # --resume of a run whose fit is saved: nothing more to fit (``check_resumed``)

    def setup(self) -> None:
        cfg = self.cfg
        if launched() or world_size() > 1:  # every process would fit and write the same run
            raise RamerError(
                f"'{cfg.model.name}' is fitted by scikit-learn in one process; run it without torchrun (or --nproc)"
            )
        if cfg.train.tensorboard:
            require_tensorboard()  # before any work
        if not self.resume:
            check_options(cfg)
        unused = [
            f"train.{k}={v}"
            for k, v, own in (("device", cfg.train.device, "cpu"), ("precision", cfg.train.precision, "fp32"))
            if v != own
        ]
        if unused and is_main():  # said, not refused: bench gives every model the same --set
            self.console.print(
                f"note: {cfg.model.name} is fitted by scikit-learn on the CPU; {', '.join(unused)} not used",
                highlight=False,
                soft_wrap=True,
            )
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if self.bundle is None:
            self.bundle = load_bundle(cfg.data)
        self.check_data()
        self.splits = apply_missing(self.bundle, cfg)
        self.spec = DataSpec.from_bundle(self.bundle, resolve_task(self.bundle, cfg.data.task))
        if not is_main():
            return
        self.fitted = self.resume and self.check_resumed()
        if self.fitted:  # its fit's log line kept, its test line written again by test()
            kept = [ln for ln, rec in read_log(self.out / "metrics.jsonl") if rec.get("epoch") == 1]
            atomic_write_text(self.out / "metrics.jsonl", "".join(ln + "\n" for ln in kept))
            remove_temporaries(self.out, RUN_FILES)  # what a kill in a write left
        else:
            start_run_folder(self.out, cfg, resume=self.resume)
        self.data_notes()
        if cfg.train.tensorboard:
            self.curves = CurveWriter(self.out)

    def check_resumed(self) -> bool:
        """``--resume`` of a run whose fit is saved (``model.safetensors``): True, once its settings
        (``config.yaml`` edited since) and data are those of the fit (a fit again on other settings or
        data replaced the finished run without a word); False where the run stopped before its fit
        was saved, which is then fitted."""
        path = self.out / "model.safetensors"
        if not (path.exists() or path.is_symlink()):
            return False
        fitted_with = ckpt.read_model_file(path)[1]
        check_resumed_config(fitted_with.model_dump(mode="json"), self.cfg, self.out, path)
        check_resumed_data(self.out, self.cfg, self.bundle, self.spec.task)
        return True

    def train(self) -> None:
        cfg, bs = self.cfg, self.cfg.train.eval_batch_size
        if self.fitted:
            self.console.print(f"{cfg.model.name}: the run's fit is saved; nothing more to fit", highlight=False)
            return
        t0 = time.perf_counter()
        # train.threads also caps the BLAS / OpenMP pools scikit-learn uses.
        limit = threadpool_limits(cfg.train.threads) if cfg.train.threads else contextlib.nullcontext()
        with limit:
            fitted = ClassicalModel(cfg.model.name, self.spec.label_names, seed=cfg.train.seed).fit(
                self.splits["train"]
            )
        self.model = ClassicalModule(cfg.model.name, self.spec, fitted.to_arrays())
        seconds_fit = time.perf_counter() - t0
        train_pred = predict(self.model, self.splits["train"], bs, torch.device("cpu"))
        valid_pred = predict(self.model, self.splits["valid"], bs, torch.device("cpu"))
        threshold = choose_threshold(
            valid_pred.labels, valid_pred.scores, self.spec.task, cfg.train.per_label_threshold
        )
        self.threshold = threshold.tolist() if isinstance(threshold, np.ndarray) else threshold
        valid = report(valid_pred.labels, valid_pred.scores, threshold, valid_pred.role, per_label=False)
        line = {
            "epoch": 1,
            "train": {"loss": log_loss(train_pred.labels, train_pred.scores, self.spec.single_label)},
            "valid": valid,
            "threshold": self.threshold,
            "best_epoch": 1,
            "step": None,  # a fit, not optimiser steps
            "best_step": None,
            "seconds": time.perf_counter() - t0,
            "train_samples_per_s": len(self.splits["train"]) / max(seconds_fit, 1e-9),
        }
        if is_main():
            model_file = self.out / "model.safetensors"
            ckpt.save_model(model_file, self.model, cfg, self.spec, self.threshold, 1, self.bundle.fingerprints())
            append_line(self.out / "metrics.jsonl", json.dumps(line))
            if self.curves is not None:
                self.curves.write(line, 1)  # a fit takes no optimiser steps: its one point is at 1
        metric = SELECTION[self.spec.task]
        self.console.print(
            f"{cfg.model.name}: fitted in {seconds_fit:.1f}s  train log-loss {line['train']['loss']:.4f}"
            f"  valid {METRIC_NAMES[metric]} {valid['overall'][metric]:.4f} ({describe_threshold(self.threshold)})",
            highlight=False,
        )

    def test(self) -> dict:
        state, _, _, threshold, epoch = ckpt.read_model_file(self.out / "model.safetensors")
        model = ClassicalModule.from_state(self.cfg.model.name, self.spec, state)
        pred = predict(model, self.splits["test"], self.cfg.train.eval_batch_size, torch.device("cpu"))
        run_info = {"best_step": None, "epochs_run": 1, "stopped_early": False}  # one fit, no optimiser steps
        return write_test_result(self.out, pred, threshold, epoch, self.bundle.label_names, run_info, self.curves)
