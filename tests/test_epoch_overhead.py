"""What a run spends outside the optimiser step (benchmarks/epoch_overhead.py): ``SceneStore.collate``
reads only the feature rows it places, the present tokens of real scenes, and writes 0 everywhere
else, so a padded slot or an absent modality costs no read (a text-only import stores its absent
audio and visual features as rows of zeros, two thirds of its bytes), and a batch is what it was;
a run hashes each split once (``SceneStore.fingerprint``), a resumed one too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_store

from ramer.batch import MODALITIES
from ramer.config import build_config, resolve_config
from ramer.data import DataBundle, SceneStore, load_native
from ramer.train import run_training

TINY = [
    "data.synthetic.n_train=48", "data.synthetic.n_valid=24", "data.synthetic.n_test=24", "train.epochs=1",
    "model.name=late_fusion", "model.hidden=16", "model.ffn=32", "model.heads=2", "train.batch_size=16",
    "train.threads=1",
]  # fmt: skip


class ReadRows(np.ndarray):
    """A feature array that records the rows of each read by an array of row numbers (a collate's)."""

    def __getitem__(self, key):
        if isinstance(key, np.ndarray) and key.dtype.kind in "iu":
            self.rows.extend(key.tolist())
        return np.asarray(super().__getitem__(key))


def recording(store):
    """``store`` with each feature array replaced by a ``ReadRows`` view of it (the same values)."""
    for m in MODALITIES:
        arr = getattr(store, m).view(ReadRows)
        arr.rows = []
        setattr(store, m, arr)
    return store


def present_rows(store, indices, k: int) -> list[int]:
    """The rows of modality ``k`` that are present in the scenes ``indices``."""
    rows = [np.arange(store.token_offsets[i], store.token_offsets[i + 1]) for i in indices]
    rows = np.concatenate(rows)
    return sorted(rows[store.present[rows, k]].tolist())


def test_collate_reads_only_the_present_rows_of_real_tokens():
    store = recording(random_store(n=10, seed=3))
    idx = [4, 0, 9, 2]
    assert len({tuple(store.grid[i]) for i in idx}) > 1  # scenes of other sizes: the batch has padded slots
    batch = store.collate(idx)
    for k, m in enumerate(MODALITIES):
        expected = present_rows(store, idx, k)
        assert 0 < len(expected) < sum(int(np.prod(store.grid[i])) for i in idx)  # some tokens lack m
        assert sorted(getattr(store, m).rows) == expected, m
        assert int(batch.present[m].sum()) == len(expected)


def test_collate_reads_nothing_of_a_modality_absent_from_the_batch():
    store = random_store(n=8, seed=1)
    store.present[:, 1:] = False  # text only, as an import of a transcript
    store.audio[:] = 0.0
    store.visual[:] = 0.0
    store = recording(store)
    batch = store.collate([5, 1, 6])
    assert store.audio.rows == [] and store.visual.rows == []
    assert len(store.text.rows) == int(batch.present["text"].sum()) > 0
    for m in ("audio", "visual"):
        assert not batch.features[m].any() and not batch.present[m].any()


@pytest.mark.parametrize("mmap", [False, True])
def test_collate_zeroes_what_it_does_not_read(tmp_path, mmap):
    """Values under a False presence bit (NaN here) and padded slots come out as +0.0, bit for bit;
    present values come out as stored, -0.0 too; from memory and from a memory-mapped folder."""
    store = random_store(n=9, seed=2)
    for k, m in enumerate(MODALITIES):
        arr = getattr(store, m)
        arr[~store.present[:, k]] = np.nan
        arr[np.flatnonzero(store.present[:, k])[::5], 0] = -0.0
    if mmap:
        DataBundle({"train": store, "valid": store, "test": store}, store.label_names, "t", "mem").save(tmp_path / "d")
        store = load_native(tmp_path / "d").splits["valid"]
    idx = [8, 3, 0, 5]
    batch = store.collate(idx)
    P, S = batch.grid
    for k, m in enumerate(MODALITIES):
        arr, want = getattr(store, m), np.zeros((len(idx), P * S, getattr(store, m).shape[1]), np.float32)
        for b, i in enumerate(idx):
            Pi, Si = store.grid[i]
            for p in range(Pi):
                for s in range(Si):
                    row = store.token_offsets[i] + p * Si + s
                    if store.present[row, k]:  # a loaded (packed) array holds present rows only, in token order
                        want[b, p * S + s] = arr[store.present[:row, k].sum() if mmap else row]
        got = batch.features[m]
        assert got.dtype == torch.float32
        assert torch.equal(got.view(torch.int32), torch.from_numpy(want).view(torch.int32)), (
            m
        )  # the bits, sign of 0 too


def test_a_run_and_its_resume_hash_each_split_once(tmp_path, monkeypatch):
    """A split is hashed (its arrays read whole) once per run: the fingerprint the run records is the
    one a resume compares the data with, not a second pass over the data."""
    hashed = []
    stored_arrays = SceneStore._stored_arrays

    def counted(store, *args):
        hashed.append(id(store))
        return stored_arrays(store, *args)

    monkeypatch.setattr(SceneStore, "_stored_arrays", counted)
    cfg = build_config(resolve_config("synthetic"), TINY)
    run_training(cfg, tmp_path / "run")
    assert len(hashed) == 3 == len(set(hashed))  # train, valid, test
    hashed.clear()
    run_training(cfg, tmp_path / "run", resume=True)  # the data made again, as in a new process
    assert len(hashed) == 3 == len(set(hashed))
