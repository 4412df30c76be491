"""Config validation, the scene store and its collation, the native format, the embedded benchmark."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import random_store

from ramer.batch import MODALITIES
from ramer.config import DataConfig, SynthConfig, build_config
from ramer.data import load_bundle
from ramer.data.commands import convert
from ramer.data.store import DataBundle, SceneStore, load_native
from ramer.data.synthetic import generate, statistics
from ramer.errors import RamerError


# ------------------------------------------------------------------ config
def test_unknown_key_is_named():
    with pytest.raises(RamerError, match="unknown key 'model.nonexistent'"):
        build_config(overrides=["model.nonexistent=1"])
    with pytest.raises(RamerError, match="unknown key 'nope'"):
        build_config(overrides=["nope.x=1"])


def test_overrides_are_typed_and_validated(tmp_path):
    cfg = build_config(overrides=["train.epochs=3", "model.ablations=[no_shuffle]", "train.lr=5e-4"])
    assert cfg.train.epochs == 3 and cfg.model.ablations == ["no_shuffle"] and cfg.train.lr == 5e-4
    with pytest.raises(RamerError, match="train.epochs"):
        build_config(overrides=["train.epochs=zero"])
    with pytest.raises(RamerError, match="unknown ablation"):
        build_config(overrides=["model.ablations=[no_such_part]"])
    with pytest.raises(RamerError, match="KEY=VALUE"):
        build_config(overrides=["train.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(RamerError, match="not valid YAML"):
        build_config(bad)
    bad.write_text("train:\n  lr: 1e-3\n\tepochs: 2\n")  # a tab: where it is, not only that YAML failed
    with pytest.raises(RamerError, match=r"bad.yaml is not valid YAML: found character '\\t' .* \(line 3, column 1\)$"):
        build_config(bad)


# ------------------------------------------------------------------ store and batch
def test_collate_pads_and_places_every_token():
    store = random_store(n=9, seed=4)
    idx = [3, 0, 7]
    batch = store.collate(idx)
    P, S = batch.grid
    assert P == store.grid[idx, 0].max() and S == store.grid[idx, 1].max()
    for b, i in enumerate(idx):
        Pi, Si = store.grid[i]
        off = store.token_offsets[i]
        for p in range(P):
            for s in range(S):
                n = p * S + s
                real = p < Pi and s < Si
                assert bool(batch.valid[b, n]) == real
                assert batch.person[b, n] == p and batch.segment[b, n] == s
                for k, m in enumerate(MODALITIES):
                    if real:
                        row = off + p * Si + s
                        assert bool(batch.present[m][b, n]) == bool(store.present[row, k])
                        np.testing.assert_array_equal(batch.features[m][b, n].numpy(), getattr(store, m)[row])
                    else:
                        assert not batch.present[m][b, n] and not batch.features[m][b, n].any()
        tp, ts = store.target[i]
        assert batch.target[b] == tp * S + ts
        assert batch.scope[b].tolist() == [bool(batch.valid[b, n]) and n // S == tp for n in range(P * S)]
        assert batch.personality_present[b].tolist() == [p < Pi for p in range(P)]
    np.testing.assert_array_equal(batch.labels.numpy(), store.labels[idx])
    assert batch.ids == [store.ids[i] for i in idx]


def test_batch_check_needs_person_major_tokens():
    """Tokens are person-major (n = p * S + s) in every row, padding included. The same scenes laid
    out segment-major (whole samples: no target to move), every per-token field permuted alike, passed
    ``Batch.check`` and RAMer scored them otherwise (it reads the grid by reshaping; 0.024 apart);
    a padded token's segment changed passed too."""
    store = random_store(n=9, persons=(2, 3), segments=(3, 4), with_target=False, seed=4)
    batch = store.collate([3, 0, 7])
    batch.check()
    P, S = batch.grid
    assert not bool(batch.valid.all())  # padding, whose person and segment are the grid's too
    perm = torch.tensor([p * S + s for s in range(S) for p in range(P)])  # segment-major: new slot -> token
    g = lambda x: x[:, perm]  # noqa: E731
    segment_major = dataclasses.replace(
        batch,
        features={m: g(x) for m, x in batch.features.items()},
        present={m: g(x) for m, x in batch.present.items()},
        **{k: g(getattr(batch, k)) for k in ("valid", "person", "segment", "scope")},
    )
    said = r"^b: person of row 0 is not the person-major order of the grid \(\d+, \d+\): token n is person n // S"
    with pytest.raises(RamerError, match=said):
        segment_major.check("b")
    b, n = (~batch.valid).nonzero()[0].tolist()  # a padded token
    segment = batch.segment.clone()
    segment[b, n] = (segment[b, n] + 1) % S
    with pytest.raises(RamerError, match=rf"^b: segment of row {b} is not the person-major order"):
        dataclasses.replace(batch, segment=segment).check("b")


def test_whole_sample_scope_without_target():
    store = random_store(n=4, with_target=False, personality_dim=None)
    batch = store.collate([0, 1, 2, 3])
    assert (batch.target == -1).all() and torch.equal(batch.scope, batch.valid)
    assert batch.personality is None and (batch.role == -1).all()


def test_store_validation_names_the_problem():
    store = random_store(n=3)
    with pytest.raises(RamerError, match="labels has shape"):
        type(store)(**{**store.__dict__, "labels": store.labels[:, :2]})
    with pytest.raises(RamerError, match="token_offsets"):
        bad = store.token_offsets.copy()
        bad[1] += 1
        type(store)(**{**store.__dict__, "token_offsets": bad})


def test_native_round_trip(tmp_path):
    store = random_store(n=6)
    bundle = DataBundle({"train": store, "valid": store, "test": store}, store.label_names, "test", "mem")
    bundle.save(tmp_path / "d")
    back = load_native(tmp_path / "d")
    assert back.label_names == store.label_names
    loaded = back.splits["valid"]
    for name in ("present", "grid", "labels", "target", "role", "personality"):
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name)), getattr(store, name))
    for k, m in enumerate(("text", "audio", "visual")):  # packed: the rows of present tokens
        np.testing.assert_array_equal(np.asarray(getattr(loaded, m)), getattr(store, m)[store.present[:, k]])
    assert loaded.ids == store.ids
    assert isinstance(loaded.text, np.memmap)


def test_native_errors_name_the_file(tmp_path):
    store = random_store(n=3)
    DataBundle({"train": store}, store.label_names, "test", "mem").save(tmp_path / "d")
    (tmp_path / "d" / "train" / "labels.npy").write_bytes(b"garbage")
    with pytest.raises(RamerError, match="labels.npy"):
        load_native(tmp_path / "d")
    with pytest.raises(RamerError, match="data path not found"):
        load_bundle(build_config(overrides=[f"data.path={tmp_path / 'missing'}"]).data)


def test_missing_rate_hides_present_modalities_only():
    store = random_store(n=30)
    hidden = store.with_missing(0.5, seed=1)
    assert not (hidden.present & ~store.present).any()
    share = hidden.present.sum() / store.present.sum()
    assert 0.35 < share < 0.65
    np.testing.assert_array_equal(store.with_missing(0.5, seed=1).present, hidden.present)


def test_missing_rate_hides_that_share_of_present_entries():
    """``with_missing(0.2)`` hides about a fifth of the present (token, modality) entries and keeps
    the rest: the rate is the share hidden, not the share kept."""
    store = random_store(n=30)
    hidden = store.with_missing(0.2, seed=3)
    assert not (hidden.present & ~store.present).any()
    kept = hidden.present.sum() / store.present.sum()
    assert 0.75 <= kept <= 0.85


# ------------------------------------------------------------------ a store and a bundle made in memory
def files(folder):
    """Every file under ``folder`` (relative names) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def bundle_of(store, **kw):
    return DataBundle({"train": store, "valid": store, "test": store}, store.label_names, "test", "mem", **kw)


def made(store, **changes):
    return SceneStore(**{**store.__dict__, **changes})


@pytest.mark.parametrize(
    "change, match",
    [
        ({"labels": lambda s: np.full(s.labels.shape, 0.6)}, r"<memory>: labels row 0 holds 0.6; expected 0 or 1"),
        ({"labels": lambda s: np.full(s.labels.shape, np.nan)}, r"<memory>: labels row 0 holds nan; expected 0 or 1"),
        ({"labels": lambda s: -s.labels.astype(np.int64)}, r"labels row \d+ holds -1; expected 0 or 1 \(multi-hot\)"),
        ({"ids": lambda s: list(range(len(s)))}, r"<memory>: ids holds a number \(0\), expected a list of strings"),
        ({"ids": lambda s: list(np.arange(len(s)))}, r"<memory>: ids holds a number \(0\), expected a list of strings"),
        (
            {"personality_present": lambda s: s.personality_present.astype(np.int64)},
            r"<memory>: personality_present has dtype int64, expected bool$",
        ),
        (
            {"token_offsets": lambda s: s.token_offsets.astype(np.float64)},
            r"<memory>: token_offsets has dtype float64, expected integers \(stored as int64\)",
        ),
        ({"present": lambda s: s.present.astype(np.uint8)}, r"<memory>: present has dtype uint8, expected bool$"),
        ({"target": lambda s: s.target + 0.5}, r"<memory>: target has dtype float64, expected integers"),
        ({"text": lambda s: s.text.astype(str)}, r"<memory>: text has dtype <U\d+, expected real numbers"),
        ({"character": lambda s: s.character + 2**40}, r"<memory>: character holds \d+, beyond what int32"),
        ({"label_names": lambda s: "l0l1l"}, r"<memory>: label_names is a string \(\"l0l1l\"\), expected a list"),
        ({"label_names": lambda s: ("l0", "l1", "l0", "l3", "l4")}, r"label_names names 'l0' twice"),
        ({"label_names": lambda s: (0, 1, 2, 3, 4)}, r"label_names holds a number \(0\), expected a list of strings"),
        ({"text": lambda s: [[1.0, 2.0], [3.0]]}, r"<memory>: text is not an array \("),
        (
            {"personality": lambda s: None},
            r"<memory>: personality_present is given without personality; personality and personality_present "
            r"must both be arrays, or both None$",
        ),
    ],
    ids=[
        *("labels-0.6", "labels-nan", "labels-minus-1", "ids-int", "ids-numpy-int", "personality_present-int"),
        *("token_offsets-float", "present-uint8", "target-float", "text-str", "character-beyond-int32"),
        *("label_names-str", "label_names-repeated", "label_names-int", "text-ragged", "personality_present-alone"),
    ],
)
def test_a_store_made_in_memory_is_checked_as_a_loaded_one(change, match):
    """What the native loader refuses (a dtype, a label other than 0/1, ids that are not strings) is
    refused where a store is made, naming the array; it was trained on (0.6 as a soft target, scored
    as 0), written as something else (-1 as 255) or failed later with a raw TypeError."""
    store = random_store(n=4)
    with pytest.raises(RamerError, match=match) as e:
        made(store, **{k: f(store) for k, f in change.items()})
    assert "\n" not in str(e.value)


def test_a_store_with_one_id_too_few_is_refused():
    """Each scene needs its sample id (predictions and the page are keyed by it): one id too few
    is a RamerError naming the counts, not a store whose last scene has none."""
    store = random_store(n=4)
    with pytest.raises(RamerError, match="<memory>: 3 ids for 4 scenes"):
        made(store, ids=store.ids[:-1])


def test_lists_become_arrays_and_round_trip(tmp_path):
    """Lists where arrays belong are taken as arrays (they raised AttributeError: 'list' object has no
    attribute 'ndim'); labels of another number type hold 0 and 1 and are written as such."""
    store = random_store(n=4)
    listed = made(store, text=store.text.tolist(), grid=store.grid.tolist(), labels=store.labels.astype(np.float32))
    assert isinstance(listed.grid, np.ndarray) and listed.fingerprint() == store.fingerprint()
    bundle_of(listed).save(tmp_path / "d")
    assert load_native(tmp_path / "d").splits["train"].fingerprint() == store.fingerprint()


def test_save_checks_what_was_changed_after_the_store_was_made(tmp_path):
    """A save checks the values again before it writes anything: an array edited in place, or ids
    replaced, are named, and no folder is left behind (ids of numpy integers raised TypeError after
    the arrays were written, leaving ``train.tmp``)."""
    store = random_store(n=4)
    store.ids = list(np.arange(4))
    with pytest.raises(RamerError, match=r"^mem, split 'train': ids holds a number \(0\), expected a list of strings"):
        bundle_of(store).save(tmp_path / "d")
    store = made(random_store(n=4), labels=random_store(n=4).labels.astype(np.float32))
    store.labels[2, 1] = 0.6
    with pytest.raises(RamerError, match=r"^<memory>: labels row 2 holds 0.6; expected 0 or 1"):
        store.save(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_a_store_of_arrays_in_memory_is_hashed_and_checked_again_after_an_edit_in_place(tmp_path, monkeypatch):
    """A store holds its arrays as given; their owner may change them in place between two runs (a
    notebook's rescaling). Its fingerprint and value check were kept from the first call: the second
    run recorded the old data's fingerprint and trained on a NaN unchecked. A split read from a
    folder (read-only) is hashed and checked once."""
    store = random_store(n=6, seed=3)
    bundle = bundle_of(store)
    before = store.fingerprint()
    bundle.check()
    assert not store.fixed() and not store.values_checked
    store.text *= 100  # in place, through the store
    assert store.fingerprint() != before
    store.text[np.flatnonzero(store.present[:, 0])[0], 0] = np.nan  # through the user's own reference too
    with pytest.raises(RamerError, match="mem, split 'train': text holds 1 non-finite values"):
        bundle.check()

    store.text[np.isnan(store.text)] = 0.0
    bundle.save(tmp_path / "d")
    loaded = load_native(tmp_path / "d").splits["train"]
    saved = store.fingerprint()
    assert loaded.fixed() and loaded.fingerprint() == saved
    loaded.check()
    monkeypatch.setattr(SceneStore, "_stored_arrays", lambda *a: pytest.fail("hashed again"))
    monkeypatch.setattr("ramer.data.store.non_finite_features", lambda *a: pytest.fail("checked again"))
    assert loaded.fingerprint() == saved and loaded.values_checked
    DataBundle({"train": loaded}, loaded.label_names, "test", "mem").check()


def test_non_finite_features_are_refused_on_save_and_by_check(tmp_path):
    """NaN or inf in a present row of a store made in memory is named on save, before anything is
    written, and by ``check`` (what training on an in-memory bundle calls), with the split; under a
    False presence mask it is ignored, as on load. A finite float64 beyond float32's range is inf once
    stored: said as such (it was "non-finite values (NaN or inf)", which the user's array does not hold)."""
    store = random_store(n=6, seed=2)
    text = store.text.copy()
    text[~store.present[:, 0]] = np.nan
    masked = dataclasses.replace(store, text=text)
    bundle_of(masked).check()
    bundle_of(masked).save(tmp_path / "ok")
    text[np.flatnonzero(store.present[:, 0])[0], :3] = np.inf
    pers = store.personality.astype(np.float64)
    pers[1, 0] = 1e39
    audio = store.audio.astype(np.float64)
    audio[np.flatnonzero(store.present[:, 1])[:2], 0] = [np.nan, -1e39]
    nan = "non-finite values (NaN or inf) in present rows; features must be finite numbers (write 0 for a missing "
    nan += "value)"
    beyond = (
        "values in present rows beyond float32's range (±3.4e38), the type features are stored and batched in; "
        "features must be finite numbers within it (rescale them; write 0 for a missing value)"
    )
    for bad, match in (
        (dataclasses.replace(store, text=text), f"text holds 3 {nan}"),
        (dataclasses.replace(store, personality=pers), f"personality holds 1 {beyond}"),
        (dataclasses.replace(store, audio=audio), f"audio holds 1 non-finite values (NaN or inf) and 1 {beyond}"),
    ):
        with pytest.raises(RamerError) as e:
            bundle_of(bad).check()
        assert str(e.value) == f"mem, split 'train': {match}"
        with pytest.raises(RamerError) as e:
            bundle_of(bad).save(tmp_path / "d")
        assert str(e.value) == f"mem, split 'train': {match}"
        with pytest.raises(RamerError) as e:
            bad.save(tmp_path / "s")
        assert str(e.value) == f"<memory>: {match}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


# ------------------------------------------------------------------ a bundle and the folder it is saved in
@pytest.mark.parametrize(
    "splits, label_names, task, match",
    [
        ("same", ("l2", "l1", "l0", "l3", "l4"), "multi_label", r"split 'train' has label_names \['l0', 'l1', 'l2', "),
        ("same", ("a", "b", "c", "d", "e"), "multi_label", r"the bundle \['a', 'b', 'c', 'd', 'e'\]; a split's label"),
        ({}, None, "multi_label", r"^mem: splits is an empty dict, expected a dict mapping split names to SceneStores"),
        ("list", None, "multi_label", r"^mem: splits is a list, expected a dict mapping split names"),
        ({"../escape": "store"}, None, "multi_label", r"^mem: split name '../escape' is not a folder name"),
        ({"train": "store", "meta.json": "store"}, None, "multi_label", r"split name 'meta.json' is one a dataset"),
        ({"train.tmp": "store"}, None, "multi_label", r"split name 'train.tmp' is one a dataset folder keeps"),
        ({"train": "store", "test": "other dims"}, None, "multi_label", r"split 'test' has text size 9, but 16 in"),
        ({"train": "store", "test": None}, None, "multi_label", r"split 'test' is null, expected a SceneStore"),
        ("same", None, "multilabel", r"^mem: task is 'multilabel', expected multi_label or single_label$"),
    ],
    ids=["order", "other-names", "empty", "list", "escape", "meta.json", "tmp", "dims", "not-a-store", "task"],
)
def test_a_bundle_is_checked_where_it_is_made(tmp_path, splits, label_names, task, match):
    """A bundle's label names must be its splits' in their order: ``save`` wrote the bundle's into
    meta.json and the splits' columns unchanged, relabelling every column without a word. An empty or
    non-dict ``splits`` (StopIteration, AttributeError), a split name that is a path ('../escape' was
    written beside the folder), different feature sizes and an unknown task are named where made."""
    store = random_store(n=4)
    other = random_store(n=4, dims=(9, 8, 12))
    stores = {"store": store, "other dims": other, None: None}
    if splits == "same":
        splits = {"train": store, "valid": store, "test": store}
    elif splits == "list":
        splits = [store]
    else:
        splits = {name: stores[what] for name, what in splits.items()}
    with pytest.raises(RamerError, match=match) as e:
        DataBundle(splits, label_names or store.label_names, "test", "mem", task=task)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_bundle_changed_after_it_was_made_is_checked_on_save(tmp_path):
    """``save`` checks the bundle again before anything is written or deleted."""
    store = random_store(n=4)
    bundle = bundle_of(store)
    bundle.splits["../escape"] = store
    with pytest.raises(RamerError, match="split name '../escape' is not a folder name"):
        bundle.save(tmp_path / "d" / "inner")
    assert list(tmp_path.iterdir()) == []


def test_store_save_refuses_a_folder_holding_the_users_files(tmp_path):
    """``SceneStore.save`` wrote over whatever folder it was given (``rmtree``); now only a split
    folder written before (and a temporary folder a save left) is written over."""
    store = random_store(n=4)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    (tmp_path / "split.tmp").mkdir()
    (tmp_path / "split.tmp" / "notes.txt").write_text("mine too")
    before = files(tmp_path)
    with pytest.raises(RamerError) as e:
        store.save(mine)
    assert str(e.value) == (
        f"{mine}: holds precious.txt, which a split folder does not; give a new or empty folder "
        "(a split folder written before is written over)"
    )
    with pytest.raises(RamerError, match=r"split.tmp: holds notes.txt, which a split folder does not"):
        store.save(tmp_path / "split")
    assert files(tmp_path) == before
    store.save(tmp_path / "new")
    random_store(n=5, seed=1).save(tmp_path / "new")  # written over
    assert SceneStore.load(tmp_path / "new", store.label_names).ids == [f"s{i}" for i in range(5)]


def test_bundle_save_refuses_a_run_and_the_users_files(tmp_path):
    """``DataBundle.save`` follows the rule of a dataset ``--out``: a run folder, or a split folder
    holding a file of the user's, is refused before anything is written or deleted (it wrote the
    dataset into the run, and deleted ``proj/train/notes.txt``)."""
    bundle = bundle_of(random_store(n=4))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "model.safetensors", "metrics.jsonl"):
        (run / name).write_text(name)
    proj = tmp_path / "proj"
    (proj / "valid").mkdir(parents=True)
    (proj / "valid" / "notes.txt").write_text("keep")
    before = files(tmp_path)
    with pytest.raises(RamerError, match=r"run: holds config.yaml, metrics.jsonl, model.safetensors, which a dataset"):
        bundle.save(run)
    with pytest.raises(RamerError, match=r"proj/valid: holds notes.txt, which a split folder does not"):
        bundle.save(proj)
    assert files(tmp_path) == before


def test_a_dataset_written_before_is_written_over_and_the_users_files_beside_it_stay(tmp_path):
    """A dataset folder is saved again (in place from its own memory maps too, and by ``data convert``,
    which removes meta.json before it saves); a file of the user's beside it is kept."""
    d, src = tmp_path / "d", tmp_path / "src"
    bundle_of(random_store(n=4)).save(d)
    bundle_of(random_store(n=6, seed=1)).save(src)
    (d / "notes.txt").write_text("mine")
    load_native(d).save(d)
    convert(str(src), d)
    assert (d / "notes.txt").read_text() == "mine"
    assert load_native(d).fingerprints() == load_native(src).fingerprints()


# ------------------------------------------------------------------ embedded benchmark
SMALL = SynthConfig(n_train=60, n_valid=20, n_test=30)


def test_synthetic_is_deterministic_and_seeded():
    a, b, c = generate(SMALL), generate(SMALL), generate(SMALL.model_copy(update={"seed": 1}))
    for name in ("train", "test"):
        for arr in ("text", "audio", "visual", "present", "labels", "grid", "target"):
            assert getattr(a.splits[name], arr).tobytes() == getattr(b.splits[name], arr).tobytes()
    assert a.splits["train"].text.tobytes() != c.splits["train"].text.tobytes()


def test_synthetic_follows_the_missing_pattern():
    bundle = generate(SMALL)
    st = bundle.splits["train"]
    pres = st.present
    # Text and audio only for the one speaker of a segment: at most one person per segment.
    for i in range(len(st)):
        P, S = st.grid[i]
        block = pres[st.token_offsets[i] : st.token_offsets[i + 1]].reshape(P, S, 3)
        assert (block[..., 0] == block[..., 1]).all()
        assert (block[..., 0].sum(0) <= 1).all()
        p, s = st.target[i]
        assert st.role[i] == int(block[p, s, 0])
    assert not st.text[~pres[:, 0]].any() and not st.visual[~pres[:, 2]].any()
    stats = statistics(bundle)["train"]
    assert 0.3 < stats["speaker_target_share"] < 0.7
    assert 0.5 < stats["presence"]["visual"] < 0.9
    assert stats["presence"]["text"] < 0.4
    oracle = bundle.info["oracle"]["test"]["overall"]
    assert 0.8 < oracle["micro_f1"] < 1.0  # annotator noise keeps the ceiling below 1
    assert set(bundle.info["oracle"]["test"]) == {"overall", "speaker", "nonspeaker"}


def test_the_generators_missing_rate_hides_and_changes_nothing_else():
    """data.synthetic.missing_rate hides present modalities from a stream of its own: the scenes
    (grids, labels, targets, roles, features where present) are those of rate 0, and a higher rate
    hides a superset of what a lower one hides."""
    runs = [generate(SMALL.model_copy(update={"missing_rate": r})).splits["test"] for r in (0.0, 0.1, 0.3)]
    for st in runs[1:]:
        for arr in ("grid", "labels", "target", "role"):
            assert getattr(st, arr).tobytes() == getattr(runs[0], arr).tobytes(), arr
        kept = st.present[:, 0]
        assert (st.text[kept] == runs[0].text[kept]).all()
    zero, low, high = (st.present for st in runs)
    assert (high <= low).all() and (low <= zero).all() and high.sum() < low.sum() < zero.sum()


def test_synthetic_personality_is_a_stable_trait():
    st = generate(SMALL).splits["train"]
    by_char = {}
    for c, vec in zip(st.character, st.personality):
        if c in by_char:
            np.testing.assert_array_equal(by_char[c], vec)
        by_char[c] = vec
    assert len(by_char) > 1


def test_data_synth_takes_generator_keys_in_either_form(tmp_path, capsys):
    """`ramer data synth --set n_train=40` and `--set data.synthetic.n_train=40` (the form of every
    other command) make the same data."""
    from ramer.cli import main
    from ramer.data import load_bundle

    sizes = ["n_train=40", "n_valid=20", "n_test=20"]
    assert main(["data", "synth", "--out", str(tmp_path / "a"), *(x for s in sizes for x in ("--set", s))]) == 0
    long = [f"data.synthetic.{s}" for s in sizes]
    assert main(["data", "synth", "--out", str(tmp_path / "b"), *(x for s in long for x in ("--set", s))]) == 0
    a, b = (load_bundle(DataConfig(path=str(tmp_path / k))) for k in "ab")
    assert len(a.splits["train"]) == len(b.splits["train"]) == 40
    assert (a.splits["train"].text == b.splits["train"].text).all()


@pytest.mark.parametrize(
    "indices, message",
    [
        ([], r"collate takes a non-empty list of scene indices \(integers\), got shape \(0,\)"),
        ([[0, 1]], r"got shape \(1, 2\)"),
        ([0.0, 1.0], "got dtype float64"),
        ([True, False], "got dtype bool"),
        ([-1], "scene index -1 is outside 0..4"),
        ([0, 5], "scene index 5 is outside 0..4"),
    ],
)
def test_collate_refuses_indices_that_name_no_scene(indices, message):
    """-1 read the last scene and True the second without a word; the others were numpy errors."""
    store = random_store(n=5)
    with pytest.raises(RamerError, match=message):
        store.collate(indices)
    assert store.collate(np.array([4, 0], dtype=np.int32)).ids == [store.ids[4], store.ids[0]]


def test_store_save_into_the_current_folder_or_a_link(tmp_path, monkeypatch):
    """``save(".")`` writes into the current folder (it raised ValueError: no name for the temporary
    folder beside it); a link as the split folder is refused before anything is written (rmtree
    raised OSError on it, after the temporary folder was written)."""
    store = random_store(n=3)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    store.save(".")
    assert SceneStore.load(tmp_path / "here", store.label_names).ids == store.ids
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(RamerError, match="link: is a link; a split folder is written over"):
        store.save(tmp_path / "link")
    assert not (tmp_path / "link.tmp").exists() and not any((tmp_path / "real").iterdir())
