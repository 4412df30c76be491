"""Print the ablation table (mean ± std over seeds of micro-F1 and macro-F1, overall and for
non-speaker targets) from a `ramer bench --models ablations` results.json.

    python benchmarks/ablation_table.py runs/ablations/results.json
"""

import json
import sys
from collections import defaultdict

import numpy as np


def main(path: str) -> None:
    records = json.load(open(path))
    by_model = defaultdict(list)
    for r in records:
        name = r["model"] + (", complete inputs" if r.get("inputs") == "complete" else "")  # a reference run
        by_model[name].append(r["metrics"])
    cols = [("overall", "micro_f1"), ("overall", "macro_f1"), ("nonspeaker", "micro_f1"), ("nonspeaker", "macro_f1")]
    print("| model | seeds | micro-F1 | macro-F1 | non-speaker micro-F1 | non-speaker macro-F1 |")
    print("|:--|--:|--:|--:|--:|--:|")
    for model, runs in by_model.items():
        cells = []
        for part, key in cols:
            v = np.array([m[part][key] for m in runs])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}")
        print(f"| {model} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/ablations/results.json")
