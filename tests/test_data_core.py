"""Config validation, the scene store and its collation, the native format, the embedded benchmark."""

import numpy as np
import pytest
import torch
from conftest import random_store

from ramer.batch import MODALITIES
from ramer.config import DataConfig, SynthConfig, build_config
from ramer.data import load_bundle
from ramer.data.store import DataBundle, load_native
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
    for name in ("text", "audio", "visual", "present", "grid", "labels", "target", "role", "personality"):
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name)), getattr(store, name))
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
