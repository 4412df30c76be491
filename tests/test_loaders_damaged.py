"""The public-benchmark loaders fed files damaged as users' files get damaged (a container of the
wrong type, a tensor type numpy lacks, a byte-order mark, a reversed segment) or whose last split
is bad: each is read as it should be or refused in one line naming the file, and a failing
``ramer data convert`` leaves the dataset already in ``--out`` as it was."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import warnings
import zipfile
import zlib
from pathlib import Path

import fixtures_writers as fw
import numpy as np
import pytest
import torch

from ramer.cli import main
from ramer.data.commands import convert
from ramer.data.features import FeatureCache
from ramer.data.formats import load_dataset
from ramer.data.store import load_native

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("damaged")
    (d / "mosei").mkdir()
    out = {"aligned": d / "mosei" / "train_valid_test.pt", "unaligned": d / "mosei" / "mosei_senti_data_noalign.pkl"}
    fw.write_mosei_aligned(out["aligned"])
    fw.write_mosei_unaligned(out["unaligned"])
    out["m3ed"] = d / "m3ed" / "m3ed.pkl"
    out["m3ed"].parent.mkdir()
    out["m3ed_fx"] = fw.write_m3ed_pickle(out["m3ed"])
    fw.write_m3ed_annotation(out["m3ed"].with_name("annotation.json"), out["m3ed_fx"])
    out["carat"] = d / "m3ed_data_60.pt"
    fw.write_m3ed_carat(out["carat"])
    out["memor"] = d / "memor"
    fw.write_memor(out["memor"])
    return out


def _copy(src: Path, dst: Path) -> Path:
    """``src`` (a file or a folder) copied to ``dst``."""
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def _rewrite_torch(path: Path, change) -> None:
    obj = torch.load(path, weights_only=False)
    change(obj)
    torch.save(obj, path)


def _rewrite_pickle(path: Path, change) -> None:
    with open(path, "rb") as fh:
        obj = pickle.load(fh)
    change(obj)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def _rewrite_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def _one_line_error(argv: list[str], capsys) -> str:
    """The CLI's exit code 2 and its one ``error:`` line, returned."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------- tensors
def test_a_bfloat16_tensor_is_read_as_float32(files, tmp_path: Path) -> None:
    """torch.save files of bfloat16 tensors (features saved at half the size): numpy has no
    bfloat16, so ``tensor.numpy()`` raised a TypeError (a traceback); they read widened to float32."""
    aligned = _copy(files["aligned"], tmp_path / "train_valid_test.pt")
    half = {}

    def to_bf16(obj):
        for split in SPLITS:
            half[split] = torch.from_numpy(obj[split]["src-audio"]).bfloat16()
            obj[split]["src-audio"] = half[split]

    _rewrite_torch(aligned, to_bf16)
    bundle = load_dataset(aligned)
    for split in SPLITS:
        want = half[split].float().numpy()
        want = np.where(np.isfinite(want), want, 0).reshape(-1, want.shape[-1])
        np.testing.assert_array_equal(np.asarray(bundle.splits[split].audio), want)
    assert bundle.info["nonfinite_replaced"]["audio"] > 0  # the fixture's -inf, counted as before

    root = _copy(files["memor"], tmp_path / "memor")
    face = root / "features/visual_features/face_features/c1.pt"
    torch.save(torch.load(face).bfloat16(), face)
    got = load_dataset(root).splits["train"]
    assert np.asarray(got.present)[:, 2].any() and np.isfinite(np.asarray(got.visual)).all()


def test_a_sparse_tensor_is_refused_before_it_is_made_dense(files, tmp_path: Path, capsys) -> None:
    """A sparse tensor is refused naming the file, split and key (densifying it allocates its
    declared size, not what the file holds); it was a TypeError traceback."""
    aligned = _copy(files["aligned"], tmp_path / "train_valid_test.pt")
    _rewrite_torch(
        aligned, lambda o: o["test"].update({"src-text": torch.from_numpy(o["test"]["src-text"]).to_sparse()})
    )
    err = _one_line_error(["data", "info", str(aligned)], capsys)
    assert f"{aligned}: split 'test' key 'src-text': a sparse tensor" in err


# ---------------------------------------------------------------------------------------- containers
def _tgt_int(obj):
    obj["test"]["tgt"] = 5


CONTAINERS = {  # what is damaged -> (file to damage, how, the error's words)
    "unaligned: the aligned file's tgt is a number": (
        "aligned",
        lambda p: _rewrite_torch(p, _tgt_int),
        "train_valid_test.pt: split 'test': 'tgt' is a int, expected a list of id lists",
    ),
    "unaligned: text is a number": (
        "unaligned",
        lambda p: _rewrite_pickle(p, lambda o: o["test"].update({"text": np.float32(3)})),
        "mosei_senti_data_noalign.pkl: split 'test' key 'text' has shape (), expected (N, steps, dim)",
    ),
    "carat: tgt is a number": (
        "carat",
        lambda p: _rewrite_torch(p, _tgt_int),
        "m3ed_data_60.pt: split 'test' key 'tgt' is a int, expected a list with one entry per sample",
    ),
    "carat: src-audio is a number": (
        "carat",
        lambda p: _rewrite_torch(p, lambda o: o["train"].update({"src-audio": 7})),
        "m3ed_data_60.pt: split 'train' key 'src-audio' is a int, expected a list with one entry per sample",
    ),
    "memor: the label set is a number": (
        "memor",
        lambda p: _rewrite_json(p / "anno.json", lambda a: a.update(primary=5)),
        "anno.json: 'primary' is a int, expected a list of annotations",
    ),
    "memor: speakers is an object": (
        "memor",
        lambda p: _rewrite_json(p / "data.json", lambda d: d["c1"].update(speakers={"a": 0, "b": -1, "c": 4})),
        "data.json: clip 'c1' key 'speakers' is a dict, expected a list",
    ),
}


@pytest.mark.parametrize("case", CONTAINERS)
def test_a_container_of_the_wrong_type_is_a_one_line_error(files, tmp_path: Path, capsys, case: str) -> None:
    """Each was a TypeError or KeyError traceback (``len()`` of a number, an error message that
    indexed a dict by position)."""
    which, damage, words = CONTAINERS[case]
    if which in ("aligned", "unaligned"):  # the unaligned pickle reads its labels from the aligned file beside it
        folder = _copy(files["aligned"].parent, tmp_path / "mosei")
        path, target = folder / files["unaligned"].name, folder / files[which].name
    else:
        path = target = _copy(files[which], tmp_path / files[which].name)
    damage(target)
    err = _one_line_error(["data", "info", str(path)], capsys)
    assert words in err


# ---------------------------------------------------------------------------------------- convert
def _bad_last_split(files, tmp_path: Path, layout: str) -> tuple[Path, list[str]]:
    """A copy of ``layout``'s file whose test split is bad (the train and valid splits are fine),
    and the ``--set`` options that read it."""
    if layout == "mosei_aligned":
        p = _copy(files["aligned"], tmp_path / "train_valid_test.pt")
        _rewrite_torch(p, lambda o: o["test"]["tgt"].__setitem__(0, [2, 12, 3]))
        return p, []
    if layout == "mosei_unaligned":
        folder = _copy(files["aligned"].parent, tmp_path / "mosei")
        p = folder / files["unaligned"].name
        _rewrite_pickle(p, lambda o: o["test"].update({"vision": o["test"]["vision"].astype(str)}))
        return p, []
    if layout in ("m3ed_pickle", "m3ed_utterance"):
        folder = _copy(files["m3ed"].parent, tmp_path / "m3ed")
        p = folder / files["m3ed"].name
        d = files["m3ed_fx"]["splits"]["test"][1]
        if layout == "m3ed_pickle":
            _rewrite_pickle(p, lambda o: o[2][d].__setitem__(0, 9))
            return p, []

        def glee(a):
            for dialogues in a.values():
                if d in dialogues:
                    first = next(iter(dialogues[d]["Dialog"].values()))
                    first["EmoAnnotation"]["final_mul_emo"] = "Glee"

        _rewrite_json(folder / "annotation.json", glee)
        return p, ["--set", "data.m3ed_protocol=utterance"]
    p = _copy(files["carat"], tmp_path / "m3ed_data_60.pt")
    _rewrite_torch(p, lambda o: o["test"]["src-text"].__setitem__(1, o["test"]["src-text"][1].astype(str)))
    return p, []


@pytest.mark.parametrize("layout", ["mosei_aligned", "mosei_unaligned", "m3ed_pickle", "m3ed_utterance", "m3ed_carat"])
def test_a_bad_last_split_fails_convert_before_the_dataset_in_out_is_touched(
    files, tmp_path: Path, capsys, layout: str
) -> None:
    """``ramer data convert`` writes each split as it is built; the loaders checked a split only
    when they built it, so a bad test split failed after train and valid had replaced the
    dataset already in ``--out`` (and its meta.json was gone): a dataset of the user's destroyed
    by a command that failed. Every split is now checked before the first is built."""
    good = files["carat"] if layout != "mosei_aligned" else files["aligned"]
    out = tmp_path / "ds"
    convert(str(good), out)
    before = load_native(out)
    prints = {s: before.splits[s].fingerprint() for s in SPLITS}
    (tmp_path / "in").mkdir()
    bad, options = _bad_last_split(files, tmp_path / "in", layout)
    err = _one_line_error(["data", "convert", str(bad), "--out", str(out), *options], capsys)
    assert "split 'test'" in err or "seriestest_1" in err, err
    after = load_native(out)
    assert after.format == before.format and {s: after.splits[s].fingerprint() for s in SPLITS} == prints


# ---------------------------------------------------------------------------------------- MEmoR values
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_memor_a_moment_that_is_no_time_is_refused(files, tmp_path: Path, capsys, value: str) -> None:
    """A NaN moment lay in no segment and silently got the first one as its target (counted only
    as "outside segments"); an infinite one the last."""
    root = _copy(files["memor"], tmp_path / "memor")
    anno = root / "anno.json"
    anno.write_text(anno.read_text().replace('"moment": 103.0', f'"moment": {value}', 1))
    err = _one_line_error(["data", "info", str(root)], capsys)
    assert f"{anno}: 'primary'[1]: moment" in err and "is not a time in seconds" in err


def test_memor_a_segment_that_ends_before_it_starts_is_refused(files, tmp_path: Path, capsys) -> None:
    """A reversed segment holds no moment and no frame: its targets went to the nearest segment
    and its visual was silently absent. It is named instead."""
    root = _copy(files["memor"], tmp_path / "memor")
    _rewrite_json(root / "data.json", lambda d: d["c2"].update(seg_start=[11.0, 11.0], seg_end=[10.0, 13.0]))
    err = _one_line_error(["data", "info", str(root)], capsys)
    assert f"{root / 'data.json'}: clip 'c2' segment 0 ends before it starts (seg_start 11.0, seg_end 10.0)" in err


def test_memor_text_files_with_a_byte_order_mark_read_as_without(files, tmp_path: Path) -> None:
    """Windows editors write a byte-order mark first; ``int`` and ``float`` refused the first line
    (the personality table's error even said "no header expected")."""
    root = _copy(files["memor"], tmp_path / "memor")
    for name in (
        "train_id.txt",
        "test_id.txt",
        "features/character_features.csv",
        "features/visual_features/face_names/c1.txt",
    ):
        p = root / name
        p.write_text("\ufeff" + p.read_text(encoding="utf-8"), encoding="utf-8")
    got, want = load_dataset(root), load_dataset(files["memor"])
    for split in SPLITS:
        assert got.splits[split].fingerprint() == want.splits[split].fingerprint(), split


def test_memor_a_nested_list_in_a_feature_file_is_refused(files, tmp_path: Path, capsys) -> None:
    """A file the fast index cannot read is parsed whole; there a vector given as a list of lists
    was flattened silently (``[[1, 2], [3, 4]]`` read as 4 numbers)."""
    root = _copy(files["memor"], tmp_path / "memor")
    text = root / "features/text_features.json"
    vectors = json.loads(text.read_text())
    text.write_text(json.dumps({k: [v[:3], v[3:]] for k, v in vectors.items()}))
    err = _one_line_error(["data", "info", str(root)], capsys)
    assert f"{text}: key 'c1+0' does not hold a list of numbers" in err


# ---------------------------------------------------------------------------------------- MOSEI values
def test_values_beyond_float32_are_counted_without_a_warning(files, tmp_path: Path) -> None:
    """float64 values beyond float32's range become inf and are replaced and counted; numpy also
    printed "RuntimeWarning: overflow encountered in cast" into the command's output."""
    aligned = _copy(files["aligned"], tmp_path / "train_valid_test.pt")

    def huge(obj):
        for split in SPLITS:
            obj[split]["src-text"] = obj[split]["src-text"].astype(np.float64)
        obj["test"]["src-text"][0, 0, :3] = 1e300

    _rewrite_torch(aligned, huge)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundle = load_dataset(aligned)
    assert bundle.info["splits"]["test"]["nonfinite_replaced"]["text"] == 3
    assert np.asarray(bundle.splits["test"].text)[0, :3].tolist() == [0.0, 0.0, 0.0]


def test_a_renamed_duplicate_id_does_not_take_another_samples_id(files, tmp_path: Path) -> None:
    """MulT's ids: a repeated id gets ``#`` and its position; when the file itself holds that name
    (``a``, ``a``, ``a#1``) two samples had one id and the whole split was refused."""
    folder = _copy(files["aligned"].parent, tmp_path / "mosei")
    p = folder / files["unaligned"].name
    ids = np.array([["a"], ["a"], ["a#1"], ["b"]], dtype=object)
    _rewrite_pickle(p, lambda o: o["test"].update({"id": ids}))
    test = load_dataset(p).splits["test"]
    assert test.ids[:2] == ["a", "a#1"] and len(set(test.ids)) == 4 and test.ids[3] == "b"
    assert test.extra["duplicate_ids_renamed"] == 2


# ---------------------------------------------------------------------------------------- import cache
def _cache_entry(cache, features: bytes) -> Path:
    """A cache entry for conversation ``c1`` whose key matches and whose ``features.npy`` member is
    ``features`` (the raw bytes of a .npy file)."""
    path = cache._path("text", "c1")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, value in (("key", "k"), ("name", "c1")):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(np.str_(value)))
            z.writestr(f"{name}.npy", buf.getvalue())
        z.writestr("features.npy", features, compress_type=zipfile.ZIP_DEFLATED)
    return path


def test_a_damaged_import_cache_entry_is_computed_again(tmp_path: Path) -> None:
    """``ramer data import`` reads its cache back; an entry whose array header asks for 364 TiB
    raised MemoryError, and one whose deflate stream is damaged zlib.error (tracebacks). Both count
    as no entry, as a truncated one does."""
    cache = FeatureCache(tmp_path / "cache")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**7)})
    _cache_entry(cache, header.getvalue() + bytes(64))
    assert cache.get("text", "c1", "k") is None

    good = io.BytesIO()
    np.lib.format.write_array(good, np.random.default_rng(0).random((300, 384)).astype(np.float32))
    path = _cache_entry(cache, good.getvalue())
    good_bytes = path.read_bytes()
    info = zipfile.ZipFile(path).getinfo("features.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the deflate stream
    for offset in range(0, info.compress_size - 8, 97):  # the first damage that zlib itself refuses
        data = bytearray(good_bytes)
        data[start + offset : start + offset + 8] = b"\xff\x00\xfe\x01\xfd\x02\xfc\x03"
        path.write_bytes(bytes(data))
        try:
            with np.load(path, allow_pickle=False) as z:
                z["features"]
        except zlib.error:
            break
        except (ValueError, zipfile.BadZipFile):  # a damage caught as before (a CRC mismatch)
            continue
    else:
        pytest.fail("no damage of the deflate stream raised zlib.error")
    assert cache.get("text", "c1", "k") is None


# ---------------------------------------------------------------------------------------- unreadable files
UNREADABLE = Path("/proc/self/mem")  # a regular file whose first read fails (EIO), even for root


def _io_error_file() -> bool:
    try:
        with open(UNREADABLE, "rb") as fh:
            fh.read(4)
    except OSError:
        return UNREADABLE.is_file()
    return False


@pytest.mark.skipif(not _io_error_file(), reason="needs Linux's /proc/self/mem")
@pytest.mark.parametrize("where", ["data file", "memor face features", "m3ed annotation"])
def test_a_file_the_system_will_not_read_is_named(files, tmp_path: Path, capsys, where: str) -> None:
    """A data file that exists but fails to read (an I/O error, no permission) was an OSError
    traceback from the allow-list loader and from the M3ED annotation reader."""
    if where == "data file":
        path = link = tmp_path / "train_valid_test.pt"
    elif where == "memor face features":
        path = _copy(files["memor"], tmp_path / "memor")
        link = path / "features/visual_features/face_features/c1.pt"
    else:
        folder = _copy(files["m3ed"].parent, tmp_path / "m3ed")
        path, link = folder / files["m3ed"].name, folder / "annotation.json"
    link.unlink(missing_ok=True)
    link.symlink_to(UNREADABLE)
    options = ["--set", "data.m3ed_protocol=utterance"] if where == "m3ed annotation" else []
    err = _one_line_error(["data", "info", str(path), *options], capsys)
    assert err.startswith(f"error: {link}: unreadable (") and "Input/output error" in err, err


# ---------------------------------------------------------------------------------------- folders, links
def test_memor_a_folder_where_anno_json_belongs_is_named(files, tmp_path: Path, capsys) -> None:
    """Detection asked for anno.json as a file, so a release whose anno.json is a folder was "an
    unknown dataset folder"; the MEmoR loader now says what is wrong with it."""
    root = _copy(files["memor"], tmp_path / "memor")
    (root / "anno.json").unlink()
    (root / "anno.json").mkdir()
    err = _one_line_error(["data", "info", str(root)], capsys)
    assert err == f"error: {root / 'anno.json'}: is a folder, expected a file"


def test_memor_a_link_loop_where_a_feature_file_belongs_is_named(files, tmp_path: Path, capsys) -> None:
    """A link that leads nowhere (here to itself) was reported as "file not found", though the
    user sees the name in the folder."""
    root = _copy(files["memor"], tmp_path / "memor")
    text = root / "features/text_features.json"
    text.unlink()
    text.symlink_to(text)
    err = _one_line_error(["data", "info", str(root)], capsys)
    assert err == f"error: {text}: is a symbolic link that leads to no file (a loop, or its target is gone)"


def test_a_memor_feature_file_that_fails_while_a_split_is_built_leaves_out_as_it_was(files, tmp_path: Path, capsys):
    """MEmoR's feature files are read only while a split is built (checking them first would read
    each twice): ``convert`` builds every split in a temporary folder and moves them into ``--out``
    only after the last, so a damaged face file leaves the dataset already there as it was."""
    out = tmp_path / "ds"
    convert(str(files["memor"]), out)
    before = load_native(out)
    prints = {s: before.splits[s].fingerprint() for s in SPLITS}
    root = _copy(files["memor"], tmp_path / "memor")
    faces = sorted((root / "features" / "visual_features" / "face_features").glob("*.pt"))
    assert faces
    for face in faces:  # fewer rows than the clip's face names name
        torch.save(torch.load(face, weights_only=True)[:20].clone(), face)
    err = _one_line_error(["data", "convert", str(root), "--out", str(out)], capsys)
    assert "face_features" in err and "names" in err, err
    after = load_native(out)
    assert {s: after.splits[s].fingerprint() for s in SPLITS} == prints
    assert sorted(p.name for p in out.iterdir()) == sorted(["meta.json", *SPLITS])


def test_a_convert_killed_before_leaves_no_folder_of_splits_behind_the_next(files, tmp_path: Path, capsys):
    """A convert killed mid-way (SIGKILL, a power cut) leaves its temporary folder of splits inside
    --out; the next convert there, holding the folder, removes it."""
    out = tmp_path / "ds"
    convert(str(files["carat"]), out)
    stale = out / ".convert.k1ll3d.tmp"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "text.npy").write_bytes(bytes(1024))
    assert main(["data", "convert", str(files["carat"]), "--out", str(out)]) == 0
    assert not stale.exists() and sorted(p.name for p in out.iterdir()) == sorted(["meta.json", *SPLITS])
