"""Datasets: the embedded synthetic benchmark, the public benchmarks, the native format."""

from __future__ import annotations

from pathlib import Path

from ramer.config import DataConfig
from ramer.data.store import DataBundle, SceneStore, is_native, load_native
from ramer.errors import RamerError


def check_complete(cfg: DataConfig) -> None:
    """``data.synthetic.complete`` means complete: only the embedded benchmark has it, and no extra
    modality is hidden from it (``data.missing_rate`` must be 0)."""
    if not cfg.synthetic.complete:
        return
    if cfg.path is not None:
        raise RamerError(f"data.synthetic.complete is for the embedded benchmark; data.path is set ({cfg.path})")
    if cfg.missing_rate > 0:
        raise RamerError(f"data.synthetic.complete: complete inputs hide nothing, but data.missing_rate is "
                         f"{cfg.missing_rate:g}; set it to 0")


def complete_data(cfg: DataConfig) -> DataConfig:
    """A copy of ``cfg`` with complete inputs: the same scenes, every modality present, no extra hiding."""
    out = cfg.model_copy(deep=True)
    out.synthetic.complete = True
    out.missing_rate = 0.0
    return out


def load_bundle(cfg: DataConfig) -> DataBundle:
    """The dataset a config names: synthetic when ``path`` is None, else a file or directory."""
    check_complete(cfg)
    if cfg.path is None:
        if cfg.format not in ("auto", "synthetic"):
            raise RamerError(f"data.format is '{cfg.format}' but no data path was given")
        from ramer.data.synthetic import generate

        return generate(cfg.synthetic)
    path = Path(cfg.path)
    if not path.exists():
        raise RamerError(f"data path not found: {path}")
    if cfg.format in ("auto", "native") and is_native(path):
        return load_native(path)
    from ramer.data.formats import load_dataset

    return load_dataset(path, cfg.format, cfg, **loader_options(cfg))


def loader_options(cfg: DataConfig) -> dict:
    """The keyword options of ``formats.load_dataset`` / ``open_dataset`` that a config sets."""
    return {
        "aligned_path": cfg.aligned_path,
        "unaligned_layout": cfg.unaligned_layout,
        "memor_character_order": cfg.memor_character_order,
        "valid_fraction": cfg.valid_fraction,
        "valid_seed": cfg.valid_seed,
    }


__all__ = [
    "DataBundle", "SceneStore", "check_complete", "complete_data", "load_bundle", "load_native", "loader_options",
]
