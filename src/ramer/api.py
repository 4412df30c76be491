"""Python API for trained runs: ``ramer.load(RUN_DIR).predict(data)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ramer import checkpoint as ckpt
from ramer.batch import Batch
from ramer.config import Config
from ramer.data import DataBundle, SceneStore, load_bundle
from ramer.errors import RamerError
from ramer.infer import batch_scores, check_precision, model_dtype, resolve_device, to_inference_precision
from ramer.infer import predict as predict_store
from ramer.metrics import ARGMAX, decide
from ramer.models import CLASSICAL, DataSpec, UnknownModel, build_model


@dataclass
class Predictor:
    """A trained model with its config, data spec and decision threshold (``"argmax"`` for
    single-label data: each sample gets its top label)."""

    model: nn.Module
    cfg: Config
    spec: DataSpec
    threshold: float | np.ndarray | str
    device: torch.device
    epoch: int
    data_fingerprints: dict[str, str] = field(default_factory=dict)  # of the data the run was made on

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.spec.label_names

    def _check_data(self, names, dims: dict[str, int | None], source: str) -> None:
        """The data's labels and feature sizes must be the model's (a personality size only where
        both have personality: a model without it ignores it, one with it does without)."""
        if tuple(names) != tuple(self.spec.label_names):
            raise RamerError(f"{source}: labels {list(names)} differ from the model's {list(self.spec.label_names)}")
        expected = {**self.spec.dims, "personality": self.spec.personality_dim}
        for key, size in dims.items():
            if size is not None and expected.get(key) is not None and size != expected[key]:
                raise RamerError(f"{source}: {key} features have size {size}, the model expects {expected[key]}")

    def predict(self, data: SceneStore | DataBundle | Batch, split: str = "test", workers: int = 1) -> np.ndarray:
        """Probabilities ``(n, C)`` for a split store, a bundle's ``split``, or one batch.

        ``workers`` (CPU, a store or bundle): score in that many forked processes, the threads of
        this one shared out among them; can be faster than one process with several threads."""
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise RamerError(f"workers must be an integer of at least 1, got {workers!r}")
        if not isinstance(data, (SceneStore, DataBundle, Batch)):
            raise RamerError(
                f"predict takes a SceneStore, a DataBundle or a Batch, not {type(data).__name__} "
                "(load one with ramer.data.load_dataset(PATH), or the run's own with "
                "ramer.api.load_data_for(predictor))"
            )
        if isinstance(data, DataBundle):
            if split not in data.splits:
                raise RamerError(f"{data.source}: no split '{split}' (has {', '.join(data.splits)})")
            data = data.splits[split]
        if isinstance(data, Batch):
            self._check_data(data.label_names, data.dims, "batch")
            self.model.eval()
            with torch.inference_mode():
                return batch_scores(self.model, data.to(self.device, model_dtype(self.model)))
        self._check_data(data.label_names, data.dims, data.source)
        return predict_store(self.model, data, self.cfg.train.eval_batch_size, self.device, workers=workers).scores

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """0/1 predictions ``(n, C)`` with the stored decision (``metrics.decide``): ``probs > threshold``,
        or for single-label data exactly one label per sample, its highest-scoring one; ``probs`` (n, C)."""
        probs = np.asarray(probs)
        if probs.ndim != 2 or probs.shape[1] != len(self.label_names):
            raise RamerError(
                f"probabilities of shape {probs.shape}, expected (n, {len(self.label_names)}) "
                f"for the labels {list(self.label_names)}"
            )
        return decide(probs, self.threshold)


def load(run_dir: str | Path, device: str | None = None, precision: str = "fp32") -> Predictor:
    """Load the best checkpoint of a run directory (or a ``model.safetensors`` file).

    ``precision="bf16"`` casts a deep model to bfloat16 for faster inference on CPUs with bf16
    support (AVX-512 BF16, AMX) and on GPUs; scores then differ from fp32 by a few thousandths, which
    flips the decisions near the threshold (2-3 % of them at the bundled settings, docs/PERFORMANCE.md).
    ``device``: where to run (``cpu``, ``cuda``, ``cuda:N``); default: the run's ``train.device``."""
    check_precision(precision)  # before the checkpoint is read and a classical model refuses bf16
    path = Path(run_dir)
    if not path.exists():
        raise RamerError(f"run folder not found: {path} (a run folder, or its model.safetensors)")
    model_file = path / "model.safetensors" if path.is_dir() else path
    if path.is_file() and path.suffix != ".safetensors" and not ckpt.looks_like_safetensors(path):  # run/config.yaml
        run = f"; the run is {path.parent}" if (path.parent / "model.safetensors").is_file() else ""
        raise RamerError(f"{path}: a file, not a run folder (or its model.safetensors){run}")
    state, cfg, spec, threshold, epoch = ckpt.read_model_file(model_file)
    if device is not None:
        cfg.train.device = device
    if cfg.model.name in CLASSICAL:
        from ramer.models.classical import ClassicalModule

        model = ClassicalModule.from_state(cfg.model.name, spec, state)
    else:
        try:
            model = build_model(cfg, spec)
        except UnknownModel as e:  # a model of another package, not (or no longer) installed here
            hint = "registered in Python? register it in this process first, or install it: docs/ARCHITECTURE.md"
            raise RamerError(f"{model_file}: {e} ({hint})") from None
        except RamerError as e:
            raise RamerError(f"{model_file}: {e}") from None
        ckpt.load_state_into(model, state, str(model_file))
    asked = "the device asked for (--device)" if device is not None else "the run's train.device"
    dev = resolve_device(cfg.train.device, "load it with device='cpu' (ramer eval / predict --device cpu)", asked)
    if precision != "fp32" and cfg.model.name in CLASSICAL:
        raise RamerError(f"{model_file}: precision {precision} applies to the deep models, not '{cfg.model.name}'")
    model = to_inference_precision(model.to(dev), precision).eval()
    fingerprints = ckpt.read_data_fingerprints(model_file)
    return Predictor(model, cfg, spec, _decision(threshold), dev, epoch, fingerprints)


def _decision(threshold) -> float | np.ndarray | str:
    """The stored threshold (checked against the model's task by ``read_model_file``) as ``decide`` takes it."""
    if isinstance(threshold, list):
        return np.asarray(threshold, dtype=np.float64)
    return threshold if threshold == ARGMAX else float(threshold)


def load_data_for(predictor: Predictor, data: str | None = None) -> DataBundle:
    """The dataset a run was trained on, or another one given by path."""
    cfg = predictor.cfg.model_copy(deep=True)
    if data is not None:
        cfg.data.path = data
    else:
        check_run_data(cfg.data.path, "give the data with --data PATH")
    return load_bundle(cfg.data)


def check_run_data(path: str | None, remedy: str) -> None:
    """A run's ``data.path`` must be found from here; else a RamerError saying how it was stored
    and ``remedy``."""
    if path is not None and not Path(path).exists():
        raise RamerError(
            f"data path not found: {path} (the run's data.path, as given when it was trained, relative "
            f"to the folder it was trained in if not absolute); {remedy}"
        )
