"""What a loaded dataset holds: sizes, labels, presence per modality, persons, targets.

``dataset_info(bundle)`` returns a JSON-safe dict (``ramer data info --json``);
``format_info_table(info)`` renders it for people.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ramer.batch import MODALITIES, ROLE_NONSPEAKER, ROLE_SPEAKER
from ramer.data.store import DataBundle, SceneStore

DETAIL_KEYS = ("mosei", "m3ed", "memor", "conversations", "source_files")


def split_info(store: SceneStore) -> dict[str, Any]:
    """Statistics of one split (reads its arrays once; works on memory maps)."""
    n = len(store)
    labels = np.asarray(store.labels)
    grid = np.asarray(store.grid).astype(np.int64)
    role = np.asarray(store.role)
    target = np.asarray(store.target)
    several = store.marks_targets()  # (n,) scenes whose targets are marked tokens (target_tokens)
    T = len(store.present)
    presence = {}
    chunk = 1 << 22
    sums = np.zeros(3, dtype=np.int64)
    for start in range(0, T, chunk):  # present is (T, 3) bool; sum it in pieces (memory maps)
        sums += np.asarray(store.present[start : start + chunk]).sum(0, dtype=np.int64)
    for k, m in enumerate(MODALITIES):
        presence[m] = round(float(sums[k]) / T, 6) if T else 0.0
    tokens = grid[:, 0] * grid[:, 1] if n else np.zeros(0, dtype=np.int64)
    return {
        "n": int(n),
        "label_counts": labels.sum(0, dtype=np.int64).tolist() if n else [0] * labels.shape[1],
        "empty_label_samples": int((labels.sum(1) == 0).sum()) if n else 0,
        "presence": presence,
        "persons_mean": round(float(grid[:, 0].mean()), 4) if n else 0.0,
        "segments_mean": round(float(grid[:, 1].mean()), 4) if n else 0.0,
        "tokens_mean": round(float(tokens.mean()), 4) if n else 0.0,
        "tokens": int(T),
        "nonspeaker_targets": int((role == ROLE_NONSPEAKER).sum()),
        "speaker_targets": int((role == ROLE_SPEAKER).sum()),
        "whole_sample_targets": int(((target[:, 0] < 0) & ~several).sum()) if n else 0,
        "several_target_samples": int(several.sum()),
        "has_personality": store.personality is not None,
    }


def _nonfinite(info: dict) -> dict[str, int]:
    got = info.get("nonfinite_replaced") or {}
    return {m: int(got.get(m, 0)) for m in MODALITIES}


def assemble_info(
    fmt: str,
    source: str,
    label_names,
    dims: dict,
    splits: dict[str, dict],
    bundle_info: dict,
    task: str = "multi_label",
) -> dict:
    loader_splits = bundle_info.get("splits") or {}
    for name, stats in splits.items():
        if isinstance(loader_splits.get(name), dict):  # what the loader counted (truncations, missing keys)
            stats["loader"] = {
                k: v
                for k, v in loader_splits[name].items()
                if k != "nonfinite_replaced" and isinstance(v, (int, float, str, bool, dict))
            }
    return {
        "format": fmt,
        "source": source,
        "label_names": list(label_names),
        "task": task,
        "feature_dims": {m: (None if dims.get(m) is None else int(dims[m])) for m in (*MODALITIES, "personality")},
        "nonfinite_replaced": _nonfinite(bundle_info),
        "splits": splits,
        "details": {k: bundle_info[k] for k in DETAIL_KEYS if k in bundle_info},
    }


def dataset_info(bundle: DataBundle) -> dict[str, Any]:
    """``format``, ``label_names``, ``feature_dims``, ``nonfinite_replaced`` and per split ``n``,
    ``label_counts``, ``empty_label_samples``, ``presence`` (share of the stored, unpadded tokens
    where each modality is present), ``persons_mean``, ``tokens_mean``, ``nonspeaker_targets``
    (plus a few more); ``details`` holds what the loader reported (text-key convention, ...)."""
    splits = {name: split_info(store) for name, store in bundle.splits.items()}
    return assemble_info(
        bundle.format, bundle.source, bundle.label_names, bundle.dims, splits, bundle.info, bundle.task
    )


NOT_COUNTS = ("empty_label_samples", "steps", "source_steps")  # in the table above, or settings


def _loader_counts(loader: dict) -> list[str]:
    """``key value`` for each non-zero figure a loader counted in a split (truncations, renamed
    ids, ...); a dict of figures as ``key a=1 b=2``. Samples without a label are in the table."""
    out = []
    for key, value in loader.items():
        if key in NOT_COUNTS or isinstance(value, bool):
            continue
        if isinstance(value, dict):
            parts = [f"{k}={v}" for k, v in value.items() if v]
            if parts:
                out.append(f"{key} {' '.join(parts)}")
        elif value:
            out.append(f"{key} {value}")
    return out


def _format(info: dict[str, Any]) -> str:
    """The layout ``data.format`` names, and the format a native folder was made from."""
    layout = info.get("layout", info["format"])
    return layout if layout == info["format"] else f"{layout} (made from {info['format']})"


def format_info_table(info: dict[str, Any]) -> str:
    """A readable multi-line summary of ``dataset_info`` output."""
    dims = info["feature_dims"]
    nf = info["nonfinite_replaced"]
    names = info["label_names"]
    splits = info["splits"]
    lines = [
        f"format        {_format(info)}   ({info.get('source', '')})",
        f"labels ({len(names)})    {', '.join(names)}",
        f"task          {info.get('task', 'multi_label')}",
        "feature dims  " + ", ".join(f"{k} {v if v is not None else '-'}" for k, v in dims.items()),
        "non-finite    "
        + (", ".join(f"{m} {nf[m]}" for m in MODALITIES) + "  (replaced by 0)" if any(nf.values()) else "none"),
        "",
    ]
    head = (
        f"{'split':<8}{'n':>8}{'tokens':>9}{'persons':>9}{'segments':>10}{'text':>8}{'audio':>8}{'visual':>8}"
        f"{'no-label':>10}{'non-spk tgt':>13}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for name, s in splits.items():
        pr = s["presence"]
        lines.append(
            f"{name:<8}{s['n']:>8}{s['tokens_mean']:>9.1f}{s['persons_mean']:>9.2f}{s.get('segments_mean', 0):>10.1f}"
            f"{pr['text']:>8.2f}{pr['audio']:>8.2f}{pr['visual']:>8.2f}{s['empty_label_samples']:>10}{s['nonspeaker_targets']:>13}"
        )
    lines.append("(tokens, persons, segments: means per sample; text/audio/visual: share of tokens where present)")
    lines.append("")
    width = max([len(x) for x in names] + [5])
    lines.append(f"{'label':<{width}}" + "".join(f"{name:>10}" for name in splits))
    untrained = "train" in splits and splits["train"]["n"] > 0
    for j, label in enumerate(names):
        row = f"{label:<{width}}" + "".join(f"{s['label_counts'][j]:>10}" for s in splits.values())
        if untrained and splits["train"]["label_counts"][j] == 0:
            row += "   no train sample: a run cannot learn it"
        lines.append(row)
    counted = {name: _loader_counts(s.get("loader") or {}) for name, s in splits.items()}
    if any(counted.values()):
        lines.append("")
        lines.append("what the loader counted (0 left out):")
        lines += [f"  {name:<8}{', '.join(items)}" for name, items in counted.items() if items]
    details = info.get("details") or {}
    for key in ("mosei", "m3ed", "memor"):
        if key in details:
            lines.append("")
            lines.append(f"{key}: " + ", ".join(f"{k}={v}" for k, v in details[key].items() if k != "settings"))
    return "\n".join(lines)
