"""Safe checkpoints (written atomically, ``paths.atomic_write``).

- ``model.safetensors``: the best weights, with the resolved config, the data spec (with its task)
  and the decision threshold (a number, one per label, or ``"argmax"`` for single-label data) in
  its metadata, so ``ramer eval RUN_DIR`` needs no other flag. Safetensors holds
  tensors only: loading it runs no code.
- ``train_state.pt``: what resuming needs (last weights, optimiser, scheduler, RNG, epoch, best so
  far), loaded with ``torch.load(weights_only=True)``.
Every file is written to a temporary name in the same folder and renamed over the old one, so a
kill during a save never leaves a half-written file as the latest.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ramer.config import Config, config_from_dict
from ramer.errors import RamerError, first_line, readable
from ramer.models.base import DataSpec
from ramer.paths import atomic_write


def save_model(path: str | Path, model: nn.Module, cfg: Config, spec: DataSpec, threshold, epoch: int) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    thr = threshold.tolist() if hasattr(threshold, "tolist") else threshold
    meta = {
        "format": "ramer-model",
        "config": json.dumps(cfg.model_dump(mode="json")),
        "spec": json.dumps(spec.to_dict()),
        "threshold": json.dumps(thr),
        "epoch": str(epoch),
    }
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def read_spec(path: str | Path) -> DataSpec:
    """The data spec of a ``model.safetensors`` (its metadata only, no tensors read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return DataSpec.from_dict(json.loads((f.metadata() or {})["spec"]))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise RamerError(f"{path}: no readable data spec ({e!r}); was it written by ramer?") from None


# Config keys added with a change of behaviour, and the value that keeps what a model file written
# before the key existed was trained with (its weights fit that model and no other).
BEFORE_THE_KEY = {
    ("model", "stand_in"): "prototype",
    ("model", "target_prior"): None,
    ("loss", "detach_targets"): False,
}


def fill_older_config(tree: dict) -> dict:
    """A stored config with the keys of ``BEFORE_THE_KEY`` it lacks set to their earlier behaviour."""
    for (section, key), value in BEFORE_THE_KEY.items():
        part = tree.get(section)
        if isinstance(part, dict) and key not in part:
            part[key] = value
    return tree


def read_model_file(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], Config, DataSpec, float | list[float] | str, int]:
    """Tensors and metadata of a ``model.safetensors``; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise RamerError(f"model file not found: {path}")
    readable(path)
    try:
        state = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise RamerError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    try:
        cfg = config_from_dict(fill_older_config(json.loads(meta["config"])), f"{path} metadata")
        spec = DataSpec.from_dict(json.loads(meta["spec"]))
        threshold = json.loads(meta["threshold"])
        epoch = int(meta.get("epoch", -1))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise RamerError(f"{path}: metadata is missing or malformed ({e!r}); was it written by ramer?") from None
    return state, cfg, spec, threshold, epoch


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        own = model.state_dict()
        problems = [f"missing {k}" for k in own if k not in state] + [f"unexpected {k}" for k in state if k not in own]
        problems += [f"{k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}" for k, v in state.items()
                     if k in own and tuple(v.shape) != tuple(own[k].shape)]  # fmt: skip
        detail = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise RamerError(
            f"{source}: weights do not fit the model ({detail or first_line(e)}); a model file written by an "
            f"older ramer whose layers have changed since must be trained again"
        ) from None


TRAIN_STATE_KEYS = ("epoch", "model", "optimizer", "scheduler", "rng", "best")  # what every resume reads


def save_train_state(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_train_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RamerError(f"cannot resume: {path} not found")
    readable(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise RamerError(f"{path}: not a readable training state ({first_line(e)})") from None
    missing = [k for k in TRAIN_STATE_KEYS if k not in state] if isinstance(state, dict) else list(TRAIN_STATE_KEYS)
    if missing:
        raise RamerError(f"{path}: not a ramer training state (it lacks {', '.join(missing)})")
    return state
