"""Parameter counts of the deep models at the bundled configs' model settings.

Each model is built with the config's ``model`` section (hidden, heads, ffn, layers, dropout, ...)
and the feature sizes and label count of the config's data: the embedded benchmark's sizes from its
``data.synthetic`` section; MEmoR text / audio / visual / personality 1024 / 6373 / 4302 / 118 with
9 (primary) or 14 (fine-grained) labels; CMU-MOSEI 300 / 74 / 35 with 6 labels and no
personality; M3ED 768 / 342 / 1024 with 7 labels and no personality. Nothing is trained.

Usage: ``python benchmarks/param_counts.py [--configs synthetic,memor_primary] [--models mult,amp]``.
Prints a Markdown table: one row per model, one column per config (M = millions).
"""

from __future__ import annotations

import argparse

import torch

from ramer.config import CONFIG_DIR, build_config
from ramer.models import BUILDERS, build_model
from ramer.models.base import DataSpec

# config name -> (text, audio, visual, personality or None, labels); None: the synthetic section's
DATA = {
    "memor_primary": (1024, 6373, 4302, 118, 9),
    "memor_fine": (1024, 6373, 4302, 118, 14),
    "mosei": (300, 74, 35, None, 6),
    "authors_mosei": (300, 74, 35, None, 6),
    "m3ed": (768, 342, 1024, None, 7),
}


def spec_for(config: str, cfg) -> DataSpec:
    if config in DATA:
        t, a, v, p, c = DATA[config]
    else:
        s = cfg.data.synthetic
        t, a, v, p, c = s.text_dim, s.audio_dim, s.visual_dim, s.personality_dim, s.n_labels
    names = tuple(f"label{j}" for j in range(c))
    return DataSpec(dims={"text": t, "audio": a, "visual": v}, n_labels=c, label_names=names, personality_dim=p)


def count(model_name: str, config: str) -> int:
    cfg = build_config(CONFIG_DIR / f"{config}.yaml", [f"model.name={model_name}"])
    torch.manual_seed(0)
    model = build_model(cfg, spec_for(config, cfg))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="synthetic,memor_primary")
    parser.add_argument("--models", default=",".join(BUILDERS))
    args = parser.parse_args()
    configs, models = args.configs.split(","), args.models.split(",")
    print("| model | " + " | ".join(configs) + " |")
    print("|:--|" + "--:|" * len(configs))
    for name in models:
        print(f"| {name} | " + " | ".join(f"{count(name, c) / 1e6:.3f} M" for c in configs) + " |")


if __name__ == "__main__":
    main()
