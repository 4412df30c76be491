"""Datasets: the embedded synthetic benchmark, the public benchmarks, the native format.

``formats`` sends a path (or a config) to its loader; ``store`` holds the in-memory scenes.
"""

from __future__ import annotations

from ramer.data.formats import check_data_options, load_bundle, load_dataset
from ramer.data.store import DataBundle, SceneStore, load_native
from ramer.data.synthetic import check_complete, complete_data

__all__ = [
    "DataBundle",
    "SceneStore",
    "check_complete",
    "check_data_options",
    "complete_data",
    "load_bundle",
    "load_dataset",
    "load_native",
]
