"""``ramer data info`` and ``ramer data convert``: the work behind the two CLI commands.

Both read the public layouts split by split (``open_dataset``), so a full-size file is never held
twice: ``convert`` writes each split as soon as it is built and drops it before the next.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from ramer.config import DataConfig, build_config
from ramer.console import printable
from ramer.data.formats import detect_format, open_dataset, unread_option
from ramer.data.info import assemble_info, dataset_info, format_info_table, split_info
from ramer.data.readers import SplitStream
from ramer.data.store import DataBundle, check_dataset_folder, staged_dataset, write_meta
from ramer.errors import RamerError
from ramer.paths import SPLITS, resolved, write_stdout

# data.* keys that are no loader option, and where each is given instead
NOT_LOADER_OPTIONS = {
    "path": "give the data's PATH",
    "format": "use --format",
    "task": "the task is a training setting (ramer train --set data.task=...; ramer data import --task records it)",
    "missing_rate": "extra missingness is a training and evaluation setting (ramer train, eval, bench)",
    "missing_at": "extra missingness is a training and evaluation setting (ramer train, eval, bench)",
}


def _key(assignment: str) -> str:
    """The key of a ``--set KEY=VALUE`` assignment."""
    return assignment.split("=", 1)[0].strip()


def data_config(labels: str | None, sets: list[str] | tuple[str, ...] = (), takes: tuple[str, ...] = ()) -> DataConfig:
    """The data config of ``--set data.KEY=VALUE`` (loader options such as ``data.max_utterances``)
    with the label set ``labels`` (``None``: the one ``sets`` gives, else the default); ``takes``:
    keys of ``NOT_LOADER_OPTIONS`` the command reads all the same (``view`` has no ``--format``)."""
    other = [s for s in sets if not s.startswith("data.")]
    if other:
        raise RamerError(f"--set {other[0]}: only data.* keys (loader options) apply here")
    for key in map(_key, sets):
        hint = NOT_LOADER_OPTIONS.get(key.split(".", 1)[1])
        if hint and key.split(".", 1)[1] not in takes:
            raise RamerError(f"--set {key}: not a loader option, and reading the data would ignore it; {hint}")
    data = build_config(None, list(sets)).data
    if labels is None:
        return data
    try:
        return DataConfig(**{**data.model_dump(), "labels": labels})
    except ValidationError:
        raise RamerError(f"--labels must be primary or fine_grained, got '{labels}'") from None


def _open(path: str | None, fmt: str, labels: str | None, sets, options: dict):
    """``labels``: MEmoR's label set; ``None`` (not asked for) the default."""
    if labels is not None or "data.labels" in map(_key, sets):
        held = (fmt if fmt != "auto" else detect_format(path)) or "synthetic"
        if held != "memor":
            where = path or "the embedded benchmark"
            raise RamerError(f"--labels chooses MEmoR's label set; {where} holds {held} data")
    cfg = data_config(labels, sets)
    opened = open_dataset(path, fmt, cfg, **options)  # cfg's loader options, those given winning
    try:
        _refuse_unread(opened, path, sets)
    except RamerError:
        if isinstance(opened, SplitStream):
            opened.close()  # the files a reader holds open (MEmoR's features)
        raise
    return opened


def _refuse_unread(opened, path: str | None, sets) -> None:
    """A RamerError for the first ``--set data.KEY`` of ``sets`` that reading ``opened`` (what
    ``open_dataset`` returned for ``path``) did not read (``LOADER_OPTIONS``): ignored, it would
    leave the user believing the data was read with it."""
    if not isinstance(opened, DataBundle):
        held = opened.format
    else:
        held = "synthetic" if path is None or str(path) == "synthetic" else "native"
    for key in map(_key, sets):
        if (why := unread_option(f"--set {key}", key.split(".")[1], held, path)) is not None:
            raise RamerError(why)


def collect_info(path: str | None, fmt: str = "auto", labels: str | None = None, sets=(), **options) -> dict:
    """``dataset_info`` of the dataset at ``path``, computed one split at a time; ``sets``: loader
    options as ``data.KEY=VALUE``, ``options``: keyword options of ``open_dataset`` (these win)."""
    opened = _open(path, fmt, labels, sets, options)
    if isinstance(opened, DataBundle):  # a native folder keeps the format it was made from
        info = dataset_info(opened)
        info["layout"] = "synthetic" if path is None or str(path) == "synthetic" else "native"
        return info
    splits, dims = {}, None
    for name, store in opened.splits:
        splits[name] = split_info(store)
        dims = dims or store.dims
        del store
    info = assemble_info(opened.format, opened.source, opened.label_names, dims or {}, splits, opened.info)
    info["layout"] = opened.format
    return info


def run_info(path: str, fmt: str = "auto", labels: str | None = None, as_json: bool = False, sets=()) -> None:
    """Print what the dataset at ``path`` holds: JSON (``as_json``) or a table."""
    info = collect_info(path, fmt, labels, sets)
    write_stdout((json.dumps(info, indent=1) if as_json else printable(format_info_table(info))) + "\n")


def convert(
    path: str | None, out: str | Path, fmt: str = "auto", labels: str | None = None, sets=(), **options
) -> dict:
    """Write the dataset at ``path`` in the native format to ``out``; returns the meta dict.
    ``sets`` and ``options`` as in ``collect_info``."""
    out = Path(out)
    if path is not None and resolved(path) == resolved(out):
        raise RamerError(f"{out}: the output folder must differ from the input")
    check_dataset_folder(out)  # the split folders too, before the work
    opened = _open(path, fmt, labels, sets, options)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(opened, DataBundle):  # staged, as below (DataBundle.save)
        opened.save(out)
        return json.loads((out / "meta.json").read_text())
    # Every split is built into a staging folder first: a file that fails while a later split is
    # built (a damaged feature file), or an interrupt, leaves the dataset already in ``out`` as it was.
    with staged_dataset(out, replaces=SPLITS) as staging:
        sizes, dims = {}, None
        for name, store in opened.splits:
            store.save(staging / name)
            sizes[name] = len(store)
            dims = dims or store.dims
            del store  # free this split before the next one is built
        meta = write_meta(staging, opened.format, opened.label_names, dims, sizes, opened.info)
    return meta


def run_convert(path: str, out: str, fmt: str = "auto", labels: str | None = None, sets=()) -> None:
    """Convert ``path`` to the native format in ``out`` and print a one-line summary."""
    meta = convert(path, out, fmt, labels, sets)
    sizes = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
    write_stdout(
        printable(
            f"wrote {out} ({meta['source_format']} -> native: {sizes}; labels {', '.join(meta['label_names'])})\n"
        )
    )
