"""Malformed native directories (meta.json, ids.json, target.npy, feature sizes) and output paths:
each is a one-line RamerError naming the file or folder, never a traceback."""

import json

import numpy as np
import pytest
import torch
from conftest import random_store

from ramer.data.commands import convert
from ramer.data.conversations import import_conversations
from ramer.data.store import DataBundle, SceneStore, load_native
from ramer.errors import RamerError


def native(tmp_path, personality_dim: int | None = 7):
    """A small native directory with train / valid / test; returns its path."""
    store = random_store(n=4, personality_dim=personality_dim)
    out = tmp_path / "d"
    DataBundle({s: store for s in ("train", "valid", "test")}, store.label_names, "test", "mem").save(out)
    return out


def edit_meta(d, **changes) -> None:
    meta = json.loads((d / "meta.json").read_text())
    meta.update(changes)
    (d / "meta.json").write_text(json.dumps(meta))


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------ 1. meta.json types
@pytest.mark.parametrize(
    "key, value, match",
    [
        ("splits", ["train", "valid", "test"], "'splits' is a list, expected an object mapping split names"),
        ("splits", {"train": "x", "valid": 4}, r"'splits' gives 'train' a string \(\"x\"\), expected a scene count"),
        (
            "splits",
            {"train": -1, "valid": 4, "test": 4},
            r"'splits' gives 'train' a number \(-1\), expected a scene count",
        ),
        (
            "splits",
            {"train": 4.5},
            r"'splits' gives 'train' a number \(4.5\), expected a scene count \(an integer >= 0\)",
        ),
        ("splits", {"train": True}, "'splits' gives 'train' a boolean, expected a scene count"),
        ("splits", {}, "'splits' is an empty object, expected an object mapping split names"),
        ("splits", {"../train": 4}, "'splits' names '../train', expected a folder name"),
        ("label_names", "l0,l1", r"'label_names' is a string \(\"l0,l1\"\), expected a list of strings"),
        ("label_names", ["l0", 1, "l2", "l3", "l4"], r"'label_names' holds a number \(1\), expected a list of strings"),
        ("label_names", ["l0", "l1", None, "l3", "l4"], "'label_names' holds null, expected a list of strings"),
        ("label_names", {"l0": 0}, "'label_names' is an object, expected a list of strings"),
        ("info", [1], "'info' is a list, expected an object"),
        (
            "label_names",
            ["l0", "l1", "l0", "l3", "l4"],
            "'label_names' names 'l0' twice; each label needs its own name",
        ),
        ("version", 3, r"'version' is a number \(3\); this ramer reads native directories up to version 2"),
        ("version", "1", r"'version' is a string \(\"1\"\); this ramer reads native directories up to version 2"),
    ],
)
def test_meta_splits_and_label_names_must_have_their_types(tmp_path, key, value, match):
    d = native(tmp_path)
    edit_meta(d, **{key: value})
    with pytest.raises(RamerError, match=match) as e:
        load_native(d)
    assert one_line(e).startswith(str(d / "meta.json") + ": ")


def test_meta_dims_must_be_sizes(tmp_path):
    d = native(tmp_path)
    edit_meta(d, dims=[16, 8, 12])
    with pytest.raises(RamerError, match="'dims' is a list, expected an object of feature sizes"):
        load_native(d)
    edit_meta(d, dims={"text": "16", "audio": 8, "visual": 12, "personality": 7})
    with pytest.raises(RamerError, match=r"'dims' gives 'text' a string \(\"16\"\), expected a size"):
        load_native(d)


def test_meta_nested_too_deeply(tmp_path):
    d = native(tmp_path)
    (d / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RamerError, match="meta.json: not valid JSON \\(nested too deeply\\)"):
        load_native(d)


@pytest.mark.parametrize(
    "name, column, value", [("text", 0, np.nan), ("audio", 1, np.inf), ("personality", None, -np.inf)]
)
def test_non_finite_features_are_refused(tmp_path, name, column, value):
    """NaN or inf in a present row is named at load (split, file, count), not left to training,
    whose 'loss is not finite' would blame the learning rate; under a False presence mask it is
    ignored, as the models ignore it."""
    d = native(tmp_path)
    path = d / "valid" / f"{name}.npy"
    arr = np.load(path)
    present = np.load(d / "valid" / ("personality_present.npy" if column is None else "present.npy"))
    if column is not None:  # a packed feature file holds present rows only (version 2): its first row
        present = np.ones(len(arr), dtype=bool)
    if not present.all():  # the random store has every personality present
        arr[np.flatnonzero(~present)[0]] = value
        np.save(path, arr)
        load_native(d)
    arr[np.flatnonzero(present)[0], :2] = value
    np.save(path, arr)
    with pytest.raises(RamerError) as e:
        load_native(d)
    assert one_line(e) == (
        f"{path}: split 'valid' holds 2 non-finite values (NaN or inf) in present rows; "
        "features must be finite numbers (write 0 for a missing value)"
    )


def test_nan_under_a_false_presence_mask_never_reaches_a_batch(tmp_path):
    """What lies under a False mask is ignored (the load check skips it), and the batch holds zeros
    there, as docs/DATA.md says: a product with the mask would keep NaN (NaN * 0 is NaN)."""
    store = random_store(n=6, seed=3)
    for k, m in enumerate(("text", "audio", "visual")):
        getattr(store, m)[~store.present[:, k]] = np.nan
    store.personality_present[::2] = False
    store.personality[::2] = np.nan
    DataBundle({s: store for s in ("train", "valid", "test")}, store.label_names, "test", "mem").save(tmp_path / "d")
    loaded = load_native(tmp_path / "d").splits["train"]
    batch = loaded.collate(list(range(len(loaded))))
    for m, x in batch.features.items():
        assert torch.isfinite(x).all(), m
        assert (x[~batch.present[m]] == 0).all() and x[batch.present[m]].abs().sum() > 0
    assert torch.isfinite(batch.personality).all()
    assert (batch.personality[~batch.personality_present] == 0).all()


# ------------------------------------------------------------------ 2. feature sizes across splits
def test_split_with_other_feature_size_is_refused(tmp_path):
    d = native(tmp_path)
    text = np.load(d / "test" / "text.npy")
    np.save(d / "test" / "text.npy", np.ascontiguousarray(text[:, :10]))
    edit_meta(d, dims=None)  # only the splits disagree
    with pytest.raises(RamerError) as e:
        load_native(d)
    assert one_line(e) == (
        f"{d / 'test'}: text size is 10, but 16 in split 'train'; every split must have the same feature sizes"
    )


def test_split_against_meta_dims(tmp_path):
    d = native(tmp_path)
    edit_meta(d, dims={"text": 64, "audio": 8, "visual": 12, "personality": 7})
    with pytest.raises(RamerError) as e:
        load_native(d)
    assert one_line(e) == f"{d / 'train'}: text size is 16, but meta.json 'dims' says 64"


def test_split_with_other_personality_size_is_refused(tmp_path):
    assert load_native(native(tmp_path / "none", personality_dim=None)).dims["personality"] is None
    d = native(tmp_path)
    assert load_native(d).dims == {"text": 16, "audio": 8, "visual": 12, "personality": 7}
    (d / "valid" / "personality.npy").unlink()
    (d / "valid" / "personality_present.npy").unlink()
    edit_meta(d, dims=None)
    with pytest.raises(RamerError) as e:
        load_native(d)
    assert one_line(e) == (
        f"{d / 'valid'}: personality size is none (no personality.npy), but 7 in split 'train'; "
        "every split must have the same feature sizes"
    )
    edit_meta(d, dims={"text": 16, "audio": 8, "visual": 12, "personality": 7})
    with pytest.raises(RamerError, match=r"valid: personality size is none \(no personality.npy\), but meta.json"):
        load_native(d)


# ------------------------------------------------------------------ 3. ids.json
@pytest.mark.parametrize(
    "ids, match",
    [
        (5, r"ids.json: is a number \(5\), expected a list of strings"),
        ({"a": 1}, "ids.json: is an object, expected a list of strings"),
        (["s0", 1, "s2", "s3"], r"ids.json: holds a number \(1\), expected a list of strings"),
        (["s0", None, "s2", "s3"], "ids.json: holds null, expected a list of strings"),
    ],
)
def test_ids_must_be_a_list_of_strings(tmp_path, ids, match):
    d = native(tmp_path)
    (d / "valid" / "ids.json").write_text(json.dumps(ids))
    with pytest.raises(RamerError, match=match) as e:
        load_native(d)
    assert one_line(e).startswith(str(d / "valid" / "ids.json") + ": ")


@pytest.mark.parametrize(
    "array, row, value, match",
    [
        ("labels", 1, 5, r"labels row 1 holds 5; expected 0 or 1 \(multi-hot\)"),
        ("role", 2, 7, r"role row 2 is 7; expected 1 \(speaker\), 0 \(non-speaker\) or -1 \(none\)"),
    ],
)
def test_labels_and_roles_hold_only_their_values(tmp_path, array, row, value, match):
    d = native(tmp_path)
    arr = np.load(d / "test" / f"{array}.npy")
    arr[row] = value
    np.save(d / "test" / f"{array}.npy", arr)
    with pytest.raises(RamerError, match=match) as e:
        load_native(d)
    assert one_line(e).startswith(f"{d / 'test'}: ")


def test_a_sample_id_names_one_scene(tmp_path):
    d = native(tmp_path)
    (d / "valid" / "ids.json").write_text(json.dumps(["s0", "s1", "s0", "s3"]))
    with pytest.raises(RamerError, match="sample id 's0' names two scenes; ids must be unique"):
        load_native(d)


# ------------------------------------------------------------------ 4. target rows (DATA.md: (-1, -1) = no target)
@pytest.mark.parametrize("row", [(0, -5), (-1, 3), (3, -1), (-2, -1), (-2, 0), (-1, -2), (0, 99), (99, 0)])
def test_impossible_target_rows_are_refused(tmp_path, row):
    d = native(tmp_path)
    target = np.load(d / "train" / "target.npy")
    target[2] = row
    np.save(d / "train" / "target.npy", target)
    P, S = np.load(d / "train" / "grid.npy")[2].tolist()
    with pytest.raises(RamerError) as e:
        load_native(d)
    assert one_line(e) == (
        f"{d / 'train'}: target row 2 is {row}, outside its scene's grid (P, S) = ({P}, {S}); "
        "expected 0 <= person < P and 0 <= segment < S, or (-1, -1) for no target (whole sample)"
    )


def test_in_memory_store_checks_targets_too():
    store = random_store(n=3)
    good = store.target.copy()
    good[0], good[1], good[2] = (-1, -1), store.grid[1] - 1, (0, 0)
    role = store.role.copy()
    role[0] = -1  # a whole sample has no target, so no role
    SceneStore(**{**store.__dict__, "target": good, "role": role})  # the edges of what is allowed
    bad = good.copy()
    bad[1] = (-1, 0)
    with pytest.raises(RamerError, match=r"<memory>: target row 1 is \(-1, 0\), outside its scene's grid"):
        SceneStore(**{**store.__dict__, "target": bad, "role": role})


@pytest.mark.parametrize("role", [1, 0])
def test_a_whole_sample_has_no_role(tmp_path, role):
    """``role`` is the target's: a whole-scene sample (target (-1, -1)) marked speaker or non-speaker
    was accepted, counted in the speaker / non-speaker metrics and printed by predict as target null
    with role speaker. Refused where the store is made and on load, naming the row."""
    store = random_store(n=3)
    target, roles = store.target.copy(), store.role.copy()
    target[1], roles[1] = (-1, -1), role
    said = (
        f"role row 1 is {role}, but its target is (-1, -1) (the whole sample); role is the target's role "
        "(1 speaker, 0 non-speaker), so a sample without a target has role -1"
    )
    with pytest.raises(RamerError) as e:
        SceneStore(**{**store.__dict__, "target": target, "role": roles})
    assert one_line(e) == f"<memory>: {said}"
    d = native(tmp_path)
    np.save(d / "valid" / "target.npy", np.full((4, 2), -1, dtype=np.int32))  # role.npy keeps 0 and 1
    with pytest.raises(RamerError) as e:
        load_native(d)
    assert one_line(e).startswith(f"{d / 'valid'}: role row 0 is ")


# ------------------------------------------------------------------ 5. output path that is a file
def test_save_to_a_file_is_an_error(tmp_path):
    store = random_store(n=3)
    bundle = DataBundle({"train": store}, store.label_names, "test", "mem")
    junk = tmp_path / "junk.txt"
    junk.write_text("keep me")
    with pytest.raises(RamerError) as e:
        bundle.save(junk)
    assert one_line(e) == f"{junk}: exists and is not a folder"
    with pytest.raises(RamerError) as e:
        bundle.save(junk / "sub")
    assert one_line(e) == f"{junk / 'sub'}: {junk} exists and is not a folder"
    assert junk.read_text() == "keep me"
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "train").write_text("")
    with pytest.raises(RamerError, match="ok/train: exists and is not a folder"):
        bundle.save(tmp_path / "ok")
    bundle.save(tmp_path / "d")
    with pytest.raises(RamerError) as e:  # ``data convert`` shares the check
        convert(str(tmp_path / "d"), junk)
    assert one_line(e) == f"{junk}: exists and is not a folder"


# ------------------------------------------------------------------ 6. conversations: the split error names the file
def test_too_few_conversations_names_the_file(tmp_path):
    src = tmp_path / "talk.csv"
    src.write_text("conversation,index,speaker,text,labels\nc1,0,ann,hello,joy\nc1,1,bob,hi,\n")
    with pytest.raises(RamerError) as e:
        import_conversations(src, tmp_path / "ds")
    assert one_line(e).startswith(
        f"{src}: 1 conversation(s): a train / valid / test split by conversation needs at least 3"
    )
