"""Datasets: the embedded synthetic benchmark, the public benchmarks, the native format.

``formats`` sends a path (or a config) to its loader; ``store`` holds the in-memory scenes.
"""

from __future__ import annotations

from ramer.data.formats import load_bundle, load_dataset, read_as_converted
from ramer.data.store import DataBundle, SceneStore, load_native
from ramer.data.synthetic import check_complete, complete_data

__all__ = [
    "DataBundle",
    "SceneStore",
    "check_complete",
    "complete_data",
    "load_bundle",
    "load_dataset",
    "load_native",
    "read_as_converted",
]
