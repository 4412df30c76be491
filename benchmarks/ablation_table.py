"""The ablation table of a `ramer bench --models ablations` run: per missing rate, each model's test
micro-F1 and macro-F1, overall and on non-speaker targets (mean ± sample std over seeds), and each
preset's difference to full RAMer, paired by seed (the same data, hidden modalities and seed):
mean ± std over seeds of (preset − ramer). A negative difference: the part helps.

    python benchmarks/ablation_table.py runs/ablations/results.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np

COLUMNS = (
    ("overall", "micro_f1", "micro-F1"),
    ("overall", "macro_f1", "macro-F1"),
    ("nonspeaker", "micro_f1", "non-speaker micro-F1"),
    ("nonspeaker", "macro_f1", "non-speaker macro-F1"),
)


def _pm(values: np.ndarray, signed: bool = False) -> str:
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():+.3f} ± {std:.3f}" if signed else f"{values.mean():.3f} ± {std:.3f}"


def main(path: str) -> None:
    records = json.load(open(path))
    runs: dict[tuple[str, float], dict[int, dict]] = defaultdict(dict)
    for r in records:
        name = r["model"] + (", complete inputs" if r.get("inputs") == "complete" else "")  # a reference run
        runs[(name, r["missing_rate"])][r["seed"]] = r["metrics"]
    for rate in sorted({rate for _, rate in runs}):
        print(f"\nmissing rate {rate:g}\n")
        print(
            "| model | seeds | "
            + " | ".join(c[2] for c in COLUMNS)
            + " | "
            + " | ".join(f"Δ {c[2]}" for c in COLUMNS)
            + " |"
        )
        print("|:--|--:|" + "--:|" * (2 * len(COLUMNS)))
        full = runs.get(("ramer", rate), {})
        for (name, r), by_seed in runs.items():
            if r != rate:
                continue
            seeds = sorted(by_seed)
            cells = [_pm(np.array([by_seed[s][part][key] for s in seeds])) for part, key, _ in COLUMNS]
            paired = [s for s in seeds if s in full]
            if name.startswith("ramer-") and not name.endswith(", complete inputs") and paired:
                cells += [
                    _pm(np.array([by_seed[s][part][key] - full[s][part][key] for s in paired]), signed=True)
                    for part, key, _ in COLUMNS
                ]
            else:
                cells += ["–"] * len(COLUMNS)
            print(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/ablations/results.json")
