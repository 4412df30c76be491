"""Packed features in the native format (version 2): a split's text.npy, audio.npy and visual.npy
hold only the rows of the tokens each modality is present at; a loaded store reads them through a
token -> row map and gives the batches, fingerprint and finite-value check of the dense store it
was saved from, bit for bit. Version-1 folders (dense arrays) are still read."""

import json

import numpy as np
import pytest
import torch
from conftest import random_store

from ramer.batch import MODALITIES
from ramer.cli import main
from ramer.data import store as store_mod
from ramer.data.store import DataBundle, SceneStore, load_native
from ramer.errors import RamerError

pytestmark = pytest.mark.usefixtures("one_thread")

SPLITS = ("train", "valid", "test")
TINY = [
    "train.epochs=2",
    "train.batch_size=8",
    "model.hidden=16",
    "model.ffn=32",
    "model.heads=2",
    "train.threads=1",
    "model.name=late_fusion",
]


def dense_store(n: int = 9, seed: int = 0) -> SceneStore:
    """A random store with +0.0 under every False presence bit (what every loader writes) and a
    modality absent from a whole scene, so a batch may read none of its rows."""
    store = random_store(n=n, seed=seed)
    a, b = store.token_offsets[2], store.token_offsets[3]
    store.present[a:b, 2] = False
    for k, m in enumerate(MODALITIES):
        arr = getattr(store, m)
        arr[~store.present[:, k]] = 0.0  # +0.0: random_store's product with the mask leaves -0.0
    return store


def saved(tmp_path, store: SceneStore, name: str = "d") -> DataBundle:
    """``store`` as every split of a native folder, loaded back."""
    DataBundle(dict.fromkeys(SPLITS, store), store.label_names, "test", "mem").save(tmp_path / name)
    return load_native(tmp_path / name)


def assert_same_batch(a, b) -> None:
    """Every field of two batches equal, the features bit for bit (the sign of 0 too)."""
    for m in MODALITIES:
        assert a.features[m].dtype == b.features[m].dtype == torch.float32
        assert torch.equal(a.features[m].view(torch.int32), b.features[m].view(torch.int32)), m
        assert torch.equal(a.present[m], b.present[m]), m
    for name in ("valid", "person", "segment", "target", "scope", "labels", "role", "personality"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.personality_present, b.personality_present)
    assert a.grid == b.grid and a.ids == b.ids


def index_sets(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    sets = [list(range(n)), list(range(n))[::-1]] + [[i] for i in range(n)]
    return sets + [rng.choice(n, size=k, replace=False).tolist() for k in (2, 3, 5) for _ in range(3)]


def write_version_1(tmp_path, store: SceneStore) -> "Path":  # noqa: F821
    """A folder as ramer wrote it before packing: dense (T, d) feature arrays, version 1."""
    out = tmp_path / "v1"
    DataBundle(dict.fromkeys(SPLITS, store), store.label_names, "test", "mem").save(out)
    for split in SPLITS:
        for m in MODALITIES:
            np.save(out / split / f"{m}.npy", np.ascontiguousarray(getattr(store, m), dtype=np.float32))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    return out


# ------------------------------------------------------------------ on disk
def test_a_saved_split_holds_only_the_present_rows(tmp_path):
    store = dense_store()
    DataBundle(dict.fromkeys(SPLITS, store), store.label_names, "test", "mem").save(tmp_path / "d")
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["version"] == 2
    for k, m in enumerate(MODALITIES):
        on_disk = np.load(tmp_path / "d" / "train" / f"{m}.npy", allow_pickle=False)
        want = getattr(store, m)[store.present[:, k]]
        assert on_disk.dtype == np.float32 and on_disk.shape == (int(store.present[:, k].sum()), want.shape[1])
        assert np.array_equal(on_disk, want), m
    assert np.load(tmp_path / "d" / "train" / "present.npy").shape == (len(store.present), 3)


def test_a_packed_store_is_memory_mapped_and_keeps_its_row_map_through_with_missing(tmp_path):
    loaded = saved(tmp_path, dense_store()).splits["valid"]
    assert loaded.packed and all(isinstance(getattr(loaded, m), np.memmap) for m in MODALITIES)
    hidden = loaded.with_missing(0.5, seed=3)
    assert hidden.feature_rows is loaded.feature_rows  # not rebuilt from the mask with_missing changed
    assert hidden.present.sum() < loaded.present.sum()


# ------------------------------------------------------------------ batches, fingerprint, checks
def test_packed_batches_equal_the_dense_ones_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "_SCAN_ROWS", 7)  # chunked reads cross scenes
    store = dense_store()
    for k, m in enumerate(MODALITIES):  # -0.0 in present rows is kept as stored
        getattr(store, m)[np.flatnonzero(store.present[:, k])[::4], 0] = -0.0
    loaded = saved(tmp_path, store).splits["test"]
    for idx in index_sets(len(store)):
        assert_same_batch(loaded.collate(idx), store.collate(idx))
    dense_missing, packed_missing = store.with_missing(0.4, seed=5), loaded.with_missing(0.4, seed=5)
    assert np.array_equal(packed_missing.present, dense_missing.present)
    for idx in index_sets(len(store), seed=1):
        assert_same_batch(packed_missing.collate(idx), dense_missing.collate(idx))
    for m in MODALITIES:
        assert np.array_equal(loaded.token_features(m), store.token_features(m))
        for count in (0, 1, 5, 10_000):
            assert np.array_equal(loaded.first_present_rows(m, count), store.first_present_rows(m, count)), m


def test_a_packed_store_has_the_fingerprint_of_the_dense_one(tmp_path, monkeypatch):
    """Runs recorded on a dense dataset still match it once it is saved packed, with_missing too;
    whatever the dense store held under a False mask (NaN, -0.0) is not part of it."""
    monkeypatch.setattr(store_mod, "_SCAN_ROWS", 5)
    store = dense_store()
    want = store.fingerprint()
    loaded = saved(tmp_path, store).splits["train"]
    assert loaded.fingerprint() == want
    assert loaded.with_missing(0.3, seed=2).fingerprint() == store.with_missing(0.3, seed=2).fingerprint()
    again = saved(tmp_path, loaded, "again").splits["valid"]  # a packed store saved again
    assert again.fingerprint() == want
    for m in MODALITIES:
        assert np.array_equal(np.asarray(getattr(again, m)), np.asarray(getattr(loaded, m)))
    messy = random_store(n=9, seed=0)  # -0.0 under False masks
    messy.text[~messy.present[:, 0]] = np.nan
    assert saved(tmp_path, messy, "messy").splits["test"].fingerprint() == messy.fingerprint()


def test_a_packed_store_saved_after_with_missing_keeps_what_it_shows(tmp_path):
    loaded = saved(tmp_path, dense_store()).splits["train"]
    hidden = loaded.with_missing(0.5, seed=9)
    back = saved(tmp_path, hidden, "hidden").splits["train"]
    assert back.fingerprint() == hidden.fingerprint()
    for k, m in enumerate(MODALITIES):
        assert len(getattr(back, m)) == int(hidden.present[:, k].sum())
    idx = list(range(len(back)))
    assert_same_batch(back.collate(idx), hidden.collate(idx))


def test_non_finite_values_in_packed_rows_are_named_at_load(tmp_path):
    store = dense_store()
    DataBundle(dict.fromkeys(SPLITS, store), store.label_names, "test", "mem").save(tmp_path / "d")
    path = tmp_path / "d" / "valid" / "audio.npy"
    arr = np.load(path)
    arr[-1, :3] = np.inf
    np.save(path, arr)
    with pytest.raises(RamerError) as e:
        load_native(tmp_path / "d")
    assert str(e.value) == (
        f"{path}: split 'valid' holds 3 non-finite values (NaN or inf) in present rows; "
        "features must be finite numbers (write 0 for a missing value)"
    )


def test_a_packed_file_with_the_wrong_row_count_is_named(tmp_path):
    store = dense_store()
    DataBundle(dict.fromkeys(SPLITS, store), store.label_names, "test", "mem").save(tmp_path / "d")
    path = tmp_path / "d" / "test" / "text.npy"
    R = int(store.present[:, 0].sum())
    np.save(path, np.load(path)[:-1])
    with pytest.raises(RamerError) as e:
        load_native(tmp_path / "d")
    assert str(e.value) == (
        f"{path}: has shape ({R - 1}, 16), but present.npy marks text present at {R} tokens; "
        f"a packed feature file (version 2) holds one row per present token, ({R}, d)"
    )
    np.save(path, store.text)  # a dense array in a version-2 folder
    with pytest.raises(RamerError, match=rf"^{path}: has shape \({len(store.text)}, 16\), but present.npy marks"):
        load_native(tmp_path / "d")


# ------------------------------------------------------------------ version 1
def test_a_version_1_folder_still_loads_and_trains(tmp_path, capsys):
    store = dense_store()
    out = write_version_1(tmp_path, store)
    back = load_native(out)
    loaded = back.splits["train"]
    assert not loaded.packed and isinstance(loaded.text, np.memmap) and loaded.text.shape == store.text.shape
    assert loaded.fingerprint() == store.fingerprint()
    for idx in index_sets(len(store)):
        assert_same_batch(loaded.collate(idx), store.collate(idx))
    sets = sum((["--set", s] for s in TINY), [])
    assert main(["train", "--data", str(out), "--out", str(tmp_path / "run"), *sets]) == 0
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"epoch"') == 2
    assert main(["data", "convert", str(out), "--out", str(tmp_path / "v2")]) == 0  # written packed
    assert json.loads((tmp_path / "v2" / "meta.json").read_text())["version"] == 2
    assert len(np.load(tmp_path / "v2" / "train" / "visual.npy")) == int(store.present[:, 2].sum())
    assert load_native(tmp_path / "v2").fingerprints() == back.fingerprints()


# ------------------------------------------------------------------ training
def without_timings(value):
    """A metrics record without what depends on the clock."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds" and not k.endswith("_per_s")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_training_on_a_saved_folder_logs_what_training_in_memory_logs(tmp_path, capsys):
    from ramer.config import build_config
    from ramer.train import run_training

    bundle = DataBundle(
        {s: dense_store(n=24, seed=i) for i, s in enumerate(SPLITS)}, random_store().label_names, "test", "mem"
    )
    bundle.save(tmp_path / "d")
    sets = sum((["--set", s] for s in TINY), [])
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "disk"), *sets]) == 0
    cfg = build_config(tmp_path / "disk" / "config.yaml", [])  # the command's settings, its defaults too
    run_training(cfg, tmp_path / "memory", bundle=bundle)
    logs = {
        run: [without_timings(json.loads(line)) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("memory", "disk")
    }
    assert len(logs["disk"]) >= 2 and logs["disk"] == logs["memory"]


def hash_as_version_1(store: SceneStore) -> str:
    """``SceneStore.fingerprint`` as ramer computed it before format version 2: every array as held,
    features included under a False presence mask."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([list(store.label_names), list(store.ids)]).encode())
    names = store_mod._ARRAYS + (("personality", "personality_present") if store.personality is not None else ())
    for name in names + (("target_tokens",) if store.target_tokens is not None else ()):
        array = np.ascontiguousarray(getattr(store, name), dtype=store_mod._DTYPES[name])
        h.update(f"{name}{array.shape}".encode())
        h.update(array)
    return h.hexdigest()


def test_runs_recorded_before_version_2_still_know_their_data(tmp_path):
    """The embedded benchmark holds -0.0 under its False masks, so its fingerprint changed with
    version 2: a run recorded before could not be resumed, bench trained its cached runs again and
    eval said the split had changed. A record of either hash is the same data; other data is not."""
    from ramer import checkpoint as ckpt
    from ramer.config import build_config
    from ramer.data.synthetic import generate

    sizes = ["data.synthetic.n_train=24", "data.synthetic.n_valid=12", "data.synthetic.n_test=12"]
    bundle = generate(build_config(None, sizes).data.synthetic)
    before = {name: hash_as_version_1(s) for name, s in bundle.splits.items()}
    assert before != bundle.fingerprints()  # -0.0 under False masks: the two hashes differ here
    assert ckpt.changed_splits(before, bundle) == [] and ckpt.same_data(before, bundle)
    bundle.save(tmp_path / "v2")  # packed: only the new hash, which a dense copy's record gives too
    assert ckpt.changed_splits(bundle.fingerprints(), load_native(tmp_path / "v2")) == []
    other = generate(build_config(None, [*sizes, "data.synthetic.seed=5"]).data.synthetic)
    assert ckpt.changed_splits(before, other) == ["train", "valid", "test"]


def test_a_record_lacking_a_split_is_not_the_same_data():
    """A record naming train and valid only does not vouch for the test split: it is not "the same
    data" as a bundle of three splits (bench and tune reuse a run made under another data.path only
    on the same data), though no split it names changed."""
    from ramer import checkpoint as ckpt

    store = random_store(n=4)
    bundle = DataBundle(dict.fromkeys(SPLITS, store), store.label_names, "test", "mem")
    recorded = {k: v for k, v in bundle.fingerprints().items() if k != "test"}
    assert ckpt.changed_splits(recorded, bundle) == []
    assert not ckpt.same_data(recorded, bundle)
    assert ckpt.same_data(bundle.fingerprints(), bundle)


def test_a_split_folder_on_its_own_is_read_in_the_layout_its_files_have(tmp_path):
    """``SceneStore.load`` without a version read every folder as packed: a version-1 split folder
    loaded from Python was an error about its row counts."""
    store = dense_store()
    old, new = write_version_1(tmp_path, store), tmp_path / "v2"
    DataBundle(dict.fromkeys(SPLITS, store), store.label_names, "test", "mem").save(new)
    dense, packed = SceneStore.load(old / "train", store.label_names), SceneStore.load(new / "train", store.label_names)
    assert not dense.packed and packed.packed
    assert dense.fingerprint() == packed.fingerprint() == store.fingerprint()


def test_what_a_packed_store_cannot_hold_is_refused_where_it_is_made(tmp_path):
    """A presence mask that shows a token without stored features failed only at the first read;
    a version below 1 was read as version 1."""
    import dataclasses

    packed = saved(tmp_path, dense_store()).splits["train"]
    every = np.ones_like(np.asarray(packed.present))
    with pytest.raises(RamerError, match=r"text is present at \d+ tokens whose features are not stored"):
        dataclasses.replace(packed, present=every)
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    (tmp_path / "d" / "meta.json").write_text(json.dumps({**meta, "version": 0}))
    with pytest.raises(RamerError, match=r"'version' is a number \(0\); this ramer reads native directories up to"):
        load_native(tmp_path / "d")


def test_features_read_from_a_dense_store_cannot_write_into_it():
    store = dense_store()
    a, b = store.token_offsets[0], store.token_offsets[1]
    store.present[a:b] = True
    view = store.token_features("text", a, b)
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = 1.0
