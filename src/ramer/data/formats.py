"""Which dataset layout a path holds, and one entry point that loads any of them.

``detect_format(path)`` recognises a layout without running anything from the file: a folder is
the native format (``meta.json``) or a MEmoR release (``anno.json`` + ``data.json``); a file is
sniffed through the first opcodes of its pickle (``pickletools``, nothing is called) and, when
that is not conclusive, read with the allow-list loader (``safe_load``) and recognised by shape.

``load_dataset(path, fmt, data_cfg)`` returns a ``DataBundle`` with splits train / valid / test;
``load_bundle(data_cfg)`` does the same for the dataset a config names. This is the one place that
sends a path to its loader: the loaders live in ``mosei.py``, ``m3ed.py``, ``memor.py``,
``synthetic.py`` and ``store.py`` (native), and share ``readers.py``.
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ramer.config import DataConfig
from ramer.data import synthetic
from ramer.data.m3ed import iter_m3ed_carat, iter_m3ed_pickle
from ramer.data.memor import CHARACTERS, iter_memor
from ramer.data.mosei import iter_mosei_aligned, iter_mosei_unaligned
from ramer.data.readers import SPLITS, SplitStream
from ramer.data.safe_load import ZIP_ERRORS, is_torch_file, safe_load
from ramer.data.store import DataBundle, is_native, load_native, native_info, native_source_format, save_cut_off
from ramer.errors import RamerError, unreadable
from ramer.paths import argument, held_elsewhere, need_regular_file, shell_join

FORMATS = ("mosei_aligned", "mosei_unaligned", "m3ed_pickle", "m3ed_carat", "memor", "native", "synthetic")


_MEMO_OPS = {"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT", "FRAME", "PROTO"}


def _sniff_pickle(fh, max_ops: int = 400) -> str | None:
    """Guess a layout from the first opcodes of a pickle stream. Nothing is executed, and the guess
    is made before the first feature array's bytes are read; ``None`` when not conclusive."""
    top = None  # the first container opcode: a dict or a list at the top level
    after_src = False  # the previous opcode was a 'src-*' key of a split
    try:
        for n, (op, arg, _pos) in enumerate(pickletools.genops(fh)):
            name = op.name
            if n >= max_ops or name == "STOP":
                return None
            if name in _MEMO_OPS:
                continue
            if top is None:
                if name in ("EMPTY_LIST", "LIST"):
                    return "m3ed_pickle"  # a top-level list: only M3ED's 10-item pickle is one
                if name in ("EMPTY_DICT", "DICT"):
                    top = "dict"
                    continue
                return None
            is_str = isinstance(arg, str) and "UNICODE" in name
            if after_src:
                after_src = False
                if name in ("EMPTY_LIST", "LIST", "MARK"):
                    return "m3ed_carat"  # a list of per-dialogue arrays
                if name in ("GLOBAL", "BINGET", "LONG_BINGET", "GET") or (
                    is_str and arg.startswith(("numpy", "torch"))
                ):
                    return "mosei_aligned"  # one (N, L, d) array (or tensor)
                return None
            if is_str:
                if arg == "len_list":
                    return "m3ed_carat"
                if arg in ("vision", "text"):
                    return "mosei_unaligned"
                after_src = arg in ("src-text", "src-audio", "src-visual")
    except Exception:
        return None
    return None


def _sniff_file(path: Path) -> str | None:
    """``_sniff_pickle`` on a pickle or on the ``data.pkl`` of a ``torch.save`` zip. A file that
    cannot be read this way (a damaged zip: its directory, a member's header, a file name that is
    not UTF-8) is not conclusive: ``safe_load`` then reads it and names the file and the damage."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if len(names) != 1:
                    return None
                with zf.open(names[0]) as fh:
                    return _sniff_pickle(fh)
        if is_torch_file(path):
            return None  # legacy torch layout: decided after loading
        with open(path, "rb") as fh:
            return _sniff_pickle(fh)
    except ZIP_ERRORS:
        return None


_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".json", ".ndjson")


def _refuse_table(path: Path) -> None:
    """A conversation table (what ``ramer data import`` reads) given where a dataset is expected:
    named by its suffix, unless its first byte says pickle (protocol 2+) or zip (torch.save)."""
    if path.suffix.lower() not in _TABLE_SUFFIXES:
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as e:
        raise unreadable(path, e) from None
    if head[:1] != b"\x80" and head != b"PK":
        raise RamerError(
            f"{path}: not a dataset; for a conversation table (.csv, .tsv, .jsonl) run `ramer data import` first"
        )


def classify_object(obj: Any, source: str) -> str:
    """The layout of an already (safely) loaded pickle / torch.save object."""
    if isinstance(obj, (list, tuple)):
        if len(obj) == 10:
            return "m3ed_pickle"
        raise RamerError(
            f"{source}: a {type(obj).__name__} of {len(obj)} items; an M3ED feature pickle is a list of 10 "
            "(videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence, "
            "trainVid, valVid, testVid)"
        )
    if isinstance(obj, dict) and all(s in obj for s in SPLITS):
        part = obj["train"]
        if isinstance(part, dict):
            if "len_list" in part:
                return "m3ed_carat"
            if "src-text" in part:
                return "mosei_aligned"
            if "vision" in part or ("text" in part and "audio" in part):
                return "mosei_unaligned"
    keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    raise RamerError(
        f"{source}: unknown layout ({keys}); expected MOSEI train_valid_test.pt, MulT's mosei_senti_data_noalign.pkl, "
        "an M3ED feature pickle or CARAT's m3ed_data_60.pt (see docs/DATA.md)"
    )


def _detect(path: str | Path | None) -> tuple[str, Any]:
    """(format, the loaded object when detection had to load the file, else None)."""
    if path is None or str(path) == "synthetic":
        return "synthetic", None
    p = Path(path)
    if not p.exists():
        raise RamerError(f"{p}: no such file or directory")
    if p.is_dir():
        if is_native(p):
            return "native", None
        need_regular_file(p / "meta.json")  # a folder, a pipe or a link to nothing there: named, not "unknown"
        if (held := held_elsewhere(p, "its dataset is being written: wait for it to end")) is not None:
            raise RamerError(held)  # not yet a dataset, nor an unknown folder
        if os.path.lexists(p / "anno.json") and os.path.lexists(p / "data.json"):
            return "memor", None  # its loader names what is wrong with either (a folder, a link to nothing)
        if save_cut_off(p):
            raise RamerError(
                f"{p}: a dataset whose write was cut off (meta.json, written last, is missing; or it is being "
                "written now): write it again with the command that made it "
                f"(ramer data synth|convert|import --out {p})"
            )
        run = (
            " (it is a run folder: its model is read by ramer.load or ramer eval)"
            if (p / "model.safetensors").exists()
            else ""
        )
        raise RamerError(
            f"{p}: unknown dataset folder: expected a native folder (meta.json) or a MEmoR release "
            f"(anno.json, data.json, train_id.txt, test_id.txt, features/){run}"
        )
    _refuse_table(p)
    guess = _sniff_file(p)
    if guess is not None:
        return guess, None
    obj = safe_load(p)
    return classify_object(obj, str(p)), obj


def detect_format(path: str | Path | None) -> str:
    """The layout at ``path`` (one of ``FORMATS``); ``None`` means the synthetic benchmark.
    Nothing in the file is executed; most files are recognised from their first bytes."""
    return _detect(path)[0]


def check_dataset_path(path: str | Path | None) -> None:
    """What ``detect_format`` refuses of ``path`` without reading a file's content: a path not
    there, a folder that holds no dataset (or one being written, or cut off), a conversation table
    given as a dataset. A file's layout is read with the file, by its loader."""
    if path is None or str(path) == "synthetic":
        return
    p = Path(path)
    if p.is_dir() or not p.exists():
        _detect(p)
    else:
        _refuse_table(p)


# ---------------------------------------------------------------------------------------- loading
def open_dataset(
    path: str | Path | None,
    fmt: str = "auto",
    data_cfg: DataConfig | None = None,
    *,
    aligned_path: str | Path | None = None,
    unaligned_layout: str | None = None,
    memor_character_order: tuple[str, ...] | list[str] | None = None,
    memor_protocol: str | None = None,
    valid_fraction: float | None = None,
    valid_seed: int | None = None,
    m3ed_protocol: str | None = None,
    m3ed_annotation: str | Path | None = None,
) -> SplitStream | DataBundle:
    """A ``SplitStream`` for the public layouts (read split by split), a ``DataBundle`` for the
    native and synthetic ones. See ``load_dataset`` for the arguments."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise RamerError(
            f"the data's path is a str or Path (or None: the embedded benchmark), not {type(path).__name__}"
        )
    if data_cfg is not None and not isinstance(data_cfg, DataConfig):
        raise RamerError(
            f"data_cfg is a ramer.config.DataConfig (a run config's cfg.data), not {type(data_cfg).__name__}"
        )
    given = {
        "aligned_path": aligned_path,
        "unaligned_layout": unaligned_layout,
        "memor_character_order": memor_character_order,
        "memor_protocol": memor_protocol,
        "valid_fraction": valid_fraction,
        "valid_seed": valid_seed,
        "m3ed_protocol": m3ed_protocol,
        "m3ed_annotation": m3ed_annotation,
    }  # a keyword option given to the call wins over data_cfg's
    given = {k: v for k, v in given.items() if v is not None}
    for key, value in given.items():  # checked as --set data.KEY checks it; valid_fraction 0: no valid split
        try:
            checked = os.fspath(value) if isinstance(value, os.PathLike) else value
            DataConfig.model_validate({key: checked} if (key, value) != ("valid_fraction", 0) else {})
        except ValidationError as e:
            raise RamerError(f"{key}={value!r}: {e.errors()[0]['msg']}") from None
    cfg = (data_cfg or DataConfig()).model_copy(update=given)
    if fmt == "auto":
        fmt = cfg.format
    synthetic.check_complete(cfg)
    if fmt not in ("auto",) + FORMATS:
        raise RamerError(f"unknown data format '{fmt}'; known: auto, {', '.join(FORMATS)}")
    if fmt == "synthetic" and path is not None and str(path) != "synthetic":
        raise RamerError(
            f"data format 'synthetic' is the embedded benchmark and reads no path, but the path {path} "
            "is given; leave data.format at auto or name the layout of that path (ramer data info shows it)"
        )
    if fmt == "synthetic" or (fmt == "auto" and path is None):
        _refuse_unread_keywords(given, "synthetic", path)
        return synthetic.generate(cfg.synthetic)
    if path is None:
        raise RamerError(f"data format '{fmt}' needs a path")
    p = Path(path).expanduser()
    if not p.exists():
        raise RamerError(f"{p}: data path not found")
    if not p.is_file() and not p.is_dir():  # a pipe or a device: reading it could wait forever or never end
        raise RamerError(f"{p}: not a file or a folder (a pipe or a device?); give a dataset file or folder")
    explicit = fmt != "auto"
    obj = None
    if p.is_file():
        _refuse_table(p)
    if not explicit:
        fmt, obj = _detect(p)
    elif fmt in ("native", "memor") and p.is_file():
        what = "a native dataset (meta.json, train/, valid/, test/)" if fmt == "native" else "a MEmoR release"
        raise RamerError(f"{p}: is a file; format '{fmt}' is {what}, a folder")
    if fmt in ("native", "memor"):
        _refuse_unread_keywords(given, fmt, p)
    if fmt == "native":
        return load_native(p)
    if fmt == "memor":
        return iter_memor(
            p,
            labels=cfg.labels,
            character_order=cfg.memor_character_order,
            protocol=cfg.memor_protocol,
            valid_fraction=cfg.valid_fraction,
            valid_seed=cfg.valid_seed,
        )
    if p.is_dir():
        raise RamerError(f"{p}: is a folder; format '{fmt}' expects a file")
    guessed = explicit or obj is None  # fmt was named, or sniffed from the first opcodes
    if obj is None:
        obj = safe_load(p)
    try:
        actual = classify_object(obj, str(p))
    except RamerError:
        if not guessed:
            raise
        actual = fmt  # malformed: the named (or sniffed) format's loader says precisely what is wrong
    if not explicit:
        fmt = actual  # the loaded object's structure overrides the sniffed guess
    elif actual != fmt:
        raise RamerError(f"{p}: holds the '{actual}' layout, not '{fmt}'")
    _refuse_unread_keywords(given, fmt, p)
    if cfg.m3ed_protocol == "utterance" and fmt == "m3ed_carat":
        raise RamerError(
            f"{p}: CARAT's M3ED file has no speakers or utterance labels; the M3ED utterance protocol reads the "
            "original feature pickle and annotation.json (or use data.m3ed_protocol=dialogue)"
        )
    return _stream_from_object(fmt, obj, p, cfg)


def _refuse_unread_keywords(given: dict[str, Any], held: str, path: str | Path | None) -> None:
    """A RamerError for a keyword option of ``load_dataset`` (``given``) that reading ``held`` data
    at ``path`` does not read (``LOADER_OPTIONS``): ignored, it would leave the caller believing the
    data was read with it (as ``--set data.KEY`` does for ``ramer data info``)."""
    for key, value in given.items():
        if (why := unread_option(f"{key}={value!r}", key, held, path)) is not None:
            raise RamerError(why)


def unread_option(given: str, key: str, held: str, path: str | Path | None) -> str | None:
    """Why the loader option ``key`` (``given``: as the user gave it, ``--set data.KEY`` or
    ``KEY=VALUE``) is refused for ``held`` data at ``path``, whose loader would ignore it; None
    where that loader reads it. A native folder reads none (those it was converted with are
    applied already)."""
    if key in LOADER_OPTIONS[held]:
        return None
    if held == "native":
        return (
            f"{given}: {path} is a native folder, which reads no loader option (those it was converted "
            f"with are applied already), so it would be ignored; give it to the data convert that made the folder"
        )
    readers = read_by(key)
    applies = f"it applies to {' and '.join(readers)} data" if readers else "no loader reads it"
    where = path if path is not None else "the embedded benchmark"
    return f"{given}: {where} holds {held} data, whose loader would ignore it; {applies}"


def _stream_from_object(fmt: str, obj: Any, p: Path, cfg: DataConfig) -> SplitStream:
    if fmt == "mosei_aligned":
        return iter_mosei_aligned(obj, str(p))
    if fmt == "mosei_unaligned":
        return iter_mosei_unaligned(obj, str(p), aligned_path=cfg.aligned_path, layout=cfg.unaligned_layout)
    if fmt == "m3ed_pickle":
        return iter_m3ed_pickle(
            obj, str(p), max_utterances=cfg.max_utterances, protocol=cfg.m3ed_protocol, annotation=cfg.m3ed_annotation
        )
    if fmt == "m3ed_carat":
        return iter_m3ed_carat(obj, str(p))
    raise RamerError(f"data format '{fmt}' cannot be read from a single file")


def load_dataset(
    path: str | Path | None,
    fmt: str = "auto",
    data_cfg: DataConfig | None = None,
    *,
    aligned_path: str | Path | None = None,
    unaligned_layout: str | None = None,
    memor_character_order: tuple[str, ...] | list[str] | None = None,
    memor_protocol: str | None = None,
    valid_fraction: float | None = None,
    valid_seed: int | None = None,
    m3ed_protocol: str | None = None,
    m3ed_annotation: str | Path | None = None,
) -> DataBundle:
    """Load a dataset in any supported layout as a ``DataBundle`` (splits train / valid / test).

    ``fmt``: ``auto`` (then ``data_cfg.format``, itself ``auto`` by default: detected) or one of
    ``FORMATS``. ``data_cfg`` gives ``labels`` (MEmoR primary / fine_grained), ``max_utterances``
    (M3ED), the synthetic settings and every keyword option below that is not given (None): the
    call reads the data as ``--data PATH`` with that config's ``--set data.*`` would. Keyword options:
    ``aligned_path`` (unaligned MOSEI: the aligned ``train_valid_test.pt`` whose ``tgt`` gives the
    emotion labels; default: that file name next to the pickle), ``unaligned_layout`` (``pool`` or
    ``pad``, see docs/DATA.md), ``memor_character_order`` (8 names, default the MEmoR code's
    order), ``memor_protocol`` (``target``: a sample per annotated (clip, character, moment);
    ``clip``: a sample per clip, the authors' reading), ``valid_fraction`` / ``valid_seed`` (MEmoR's
    validation split of train; ``valid_fraction=0``, which a config refuses: no validation split),
    ``m3ed_protocol`` (``dialogue`` or ``utterance``) and
    ``m3ed_annotation`` (the utterance protocol's ``annotation.json``; default: that file name next
    to the pickle). A keyword option that the data's loader does not read (``LOADER_OPTIONS``; a
    native folder reads none, its options were applied when it was converted) is a RamerError.
    """
    opened = open_dataset(
        path,
        fmt,
        data_cfg,
        aligned_path=aligned_path,
        unaligned_layout=unaligned_layout,
        memor_character_order=memor_character_order,
        memor_protocol=memor_protocol,
        valid_fraction=valid_fraction,
        valid_seed=valid_seed,
        m3ed_protocol=m3ed_protocol,
        m3ed_annotation=m3ed_annotation,
    )
    return opened if isinstance(opened, DataBundle) else opened.to_bundle()


def load_bundle(cfg: DataConfig) -> DataBundle:
    """The dataset a config names: the embedded benchmark when ``path`` is None, else a file or folder."""
    return load_dataset(cfg.path, cfg.format, cfg)


# The loader options (data.KEY) that reading each format reads: another one given to ``data info``
# or ``data convert`` would be ignored, so it is refused, and so is one that a training config sets
# to other than its default (refuse_unread). CARAT's M3ED file reads m3ed_protocol to
# refuse the utterance protocol; a native folder reads none (its loader options were applied when
# it was converted, and meta.json records them).
LOADER_OPTIONS = {
    "mosei_aligned": (),
    "mosei_unaligned": ("aligned_path", "unaligned_layout"),
    "m3ed_pickle": ("max_utterances", "m3ed_protocol", "m3ed_annotation"),
    "m3ed_carat": ("m3ed_protocol",),
    "memor": ("labels", "memor_character_order", "memor_protocol", "valid_fraction", "valid_seed"),
    "native": (),
    "synthetic": ("synthetic",),
}


# The loader options a converted folder's meta.json records (info.SECTION.NAME) and the data.* key of
# each: a native folder is read as it was converted, whatever these keys of a config say.
CONVERTED_WITH = {
    "memor": {
        "labels": "labels",
        "protocol": "memor_protocol",
        "valid_fraction": "valid_fraction",
        "valid_seed": "valid_seed",
        "character_order": "memor_character_order",
    },
    "m3ed": {"protocol": "m3ed_protocol", "max_utterances": "max_utterances"},
    "mosei": {"unaligned_layout": "unaligned_layout"},
}


def converted_otherwise(info, data: DataConfig) -> list[tuple[str, Any, Any]]:
    """``(KEY, recorded, asked)`` for each loader option ``data.KEY`` that a converted folder's
    ``info`` (its meta.json's) records with another value than ``data`` gives. A key a folder does
    not record (converted before it was recorded, or of another corpus) is not compared."""
    info = info if isinstance(info, dict) else {}
    found = []
    for section, names in CONVERTED_WITH.items():
        recorded = info.get(section)
        for name, key in names.items() if isinstance(recorded, dict) else ():
            if name not in recorded:
                continue
            asked = getattr(data, key)
            if key == "memor_character_order":  # None: the MEmoR code's order, as the loader reads it
                asked = [str(c).lower() for c in (asked or CHARACTERS)]
            if recorded[name] != asked:
                found.append((key, recorded[name], asked))
    return found


def shown(value) -> str:
    """A loader option's value as ``--set`` takes it (a list as ``[a,b]``, None as ``null``)."""
    if value is None:
        return "null"
    return f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)


def listed(differences: list[tuple[str, Any, Any]], recorded: bool) -> str:
    """``data.KEY VALUE, ...`` of ``differences`` (``converted_otherwise``): their recorded values,
    else the asked ones."""
    return ", ".join(f"data.{key} {shown(held if recorded else asked)}" for key, held, asked in differences)


def convert_again(info, differences: list[tuple[str, Any, Any]]) -> str:
    """The ``ramer data convert`` command that makes a folder read with the asked values of
    ``differences`` (``converted_otherwise``), from the source file the folder's ``info`` names."""
    sources = info.get("source_files") if isinstance(info, dict) else None
    source = sources[0] if isinstance(sources, list) and sources and isinstance(sources[0], str) else "SOURCE"
    command = ["ramer", "data", "convert", argument(source)]
    for key, _, to in differences:
        command += ["--labels", str(to)] if key == "labels" else ["--set", f"data.{key}={shown(to)}"]
    return shell_join([*command, "--out", "DIR"])  # to paste: a path with a space stays one argument


def read_by(key: str) -> list[str]:
    """The formats whose loader reads the loader option ``data.KEY`` (``LOADER_OPTIONS``)."""
    return [f for f, names in LOADER_OPTIONS.items() if key in names]


def refuse_unread(data: DataConfig, made_from: str | None = None) -> None:
    """A RamerError for a loader option (``LOADER_OPTIONS``) that ``data`` sets, in its file or by
    ``--set``, to other than its default while the format of ``data.path`` does not read it; one
    at its default (a bundled config's) is no choice. The data is looked at only when one is set.
    ``made_from``: a native folder's source format, whose loader's options alone it may carry
    (``read_as_converted`` compares their values with the folder's)."""
    default = DataConfig()
    chosen = [
        key
        for key in sorted(data.model_fields_set)
        if key != "synthetic"  # the generator's settings, which the bundled synthetic config sets for any data
        and read_by(key)
        and getattr(data, key) != getattr(default, key)
    ]
    if not chosen:
        return
    if made_from is not None:
        held, what = made_from, f"is a native folder made from {made_from} data, whose loader does not read it"
    else:
        held = "synthetic" if data.path is None else data.format if data.format != "auto" else detect_format(data.path)
        what = f"holds {held} data, whose loader would ignore it"
    for key in chosen:
        if key in LOADER_OPTIONS.get(held, () if made_from is not None else (key,)):
            continue
        readers = read_by(key)
        where = data.path or "the embedded benchmark"
        raise RamerError(
            f"data.{key}={shown(getattr(data, key))}: {where} {what}; it applies to {' and '.join(readers)} data (a "
            f"config for other data? leave the key out of your config and --set, or give --set "
            f"data.{key}={shown(getattr(default, key))})"
        )


def read_as_converted(data: DataConfig) -> None:
    """A converted folder ``data.path`` is read as it was converted (its meta.json's ``info``):
    a loader option that the config ``data`` sets (in its file or by ``--set``: pydantic's
    ``model_fields_set``) otherwise is a RamerError, since the run would ignore it while its
    config.yaml recorded it; an option left at its default takes the folder's value, in place, so
    that config.yaml (and a tune's best.yaml) records the reading the run trained on and trains on
    the folder again as ``--config``. Other data: a loader option that the config sets to other
    than its default and the data's format does not read is a RamerError, for the same reason."""
    if data.path is None or not is_native(data.path):
        refuse_unread(data)
        return
    if (made_from := native_source_format(data.path)) is not None:  # an option of another corpus's loader
        refuse_unread(data, made_from)
    info = native_info(data.path)
    differences = converted_otherwise(info, data)
    if refused := [d for d in differences if d[0] in data.model_fields_set]:
        sets = " ".join(f"--set data.{key}={shown(value)}" for key, value, _ in refused)
        raise RamerError(
            f"{data.path}: converted with {listed(refused, True)}, but the config sets "
            f"{listed(refused, False)}; a converted folder is read as it was converted: {sets} (or leave "
            f"the key out), or convert the source again ({convert_again(info, refused)})"
        )
    for key, held, _ in differences:  # none of them set by the config
        try:  # a value this ramer's config would not take (a damaged meta.json) stays the loader's affair
            DataConfig.model_validate({**data.model_dump(), key: held})
        except ValidationError:
            continue
        setattr(data, key, held)
