"""Safe checkpoints (written atomically, ``paths.atomic_write``).

- ``model.safetensors``: the best weights, with the resolved config, the data spec (with its task)
  and the decision threshold (a number, one per label, or ``"argmax"`` for single-label data) in
  its metadata, so ``ramer eval RUN_DIR`` needs no other flag. Safetensors holds
  tensors only: loading it runs no code.
- ``train_state.pt``: what resuming needs (last weights, optimiser, scheduler, RNG, epoch, best so
  far), loaded with ``torch.load(weights_only=True)``.
Both record the ramer and torch versions that wrote them (``written_by``; a file from before they
did records none and still loads), so an error about a file another version wrote can say so.
Every file is written to a temporary name in the same folder and renamed over the old one, so a
kill during a save never leaves a half-written file as the latest.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ramer.config import TASKS, Config, config_from_dict, fill_older_config, read_run_config, unknown_keys
from ramer.data.safe_load import refuse_compressed, refused_global
from ramer.errors import (
    FileUnreadable,
    RamerError,
    first_line,
    first_of,
    is_finite,
    is_int,
    is_probability,
    is_whole,
    readable,
    unprintable_name,
)
from ramer.metrics import ARGMAX
from ramer.models.base import DataSpec, package_of
from ramer.paths import atomic_write, loads_json, not_a_regular_file
from ramer.version import __version__, newer_writer, version_note

MODEL_FORMAT = "ramer-model"  # a model file's metadata 'format'


def save_model(
    path: str | Path, model: nn.Module, cfg: Config, spec: DataSpec, threshold, epoch: int, data: dict | None = None
) -> None:
    """``data``: the fingerprint of each split the run was made on (``SceneStore.fingerprint``)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    thr = threshold.tolist() if hasattr(threshold, "tolist") else threshold
    meta = {
        "format": MODEL_FORMAT,
        "config": json.dumps(cfg.model_dump(mode="json")),
        "spec": json.dumps(spec.to_dict()),
        "threshold": json.dumps(thr),
        "epoch": str(epoch),
        **({"data": json.dumps(data)} if data else {}),
        **versions(),
    }

    def write(tmp: str) -> None:
        save_file(state, tmp, metadata=meta)
        sort_metadata(tmp)

    atomic_write(path, write)


def sort_metadata(path: str | Path) -> None:
    """Rewrite the safetensors file ``path`` with its metadata keys in sorted order: safetensors writes
    them in the order of a hash map, another at every call, so one model saved twice gave other bytes.
    The header is JSON padded with spaces to a multiple of 8 bytes; tensor offsets count from its end."""
    data = Path(path).read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" not in header:  # nothing to order: the file stays as written
        return
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])


def versions() -> dict[str, str]:
    """What a model file's metadata and a training state record of the software that wrote them."""
    return {"ramer_version": __version__, "torch_version": str(torch.__version__)}


def written_by(meta) -> dict[str, str]:
    """The versions a model file's metadata or a training state records (``versions``), those that
    are one short line of text; none for a file written before they were recorded."""
    if not isinstance(meta, dict):
        return {}
    return {
        k: v
        for k in ("ramer_version", "torch_version")
        if isinstance(v := meta.get(k), str) and 0 < len(v) <= 64 and v.isprintable()
    }


def metadata(path: str | Path) -> dict[str, str]:
    """A ``model.safetensors``'s metadata, its header only (no tensors read); a ``SafetensorError`` or
    an ``OSError`` where it does not read."""
    from safetensors import safe_open

    with _readable_name(path) as name, safe_open(name, framework="pt") as f:
        return f.metadata() or {}


@contextlib.contextmanager
def _readable_name(path: str | Path) -> Iterator[str]:
    """A name of ``path`` that safetensors' reader opens: ``path`` where it is UTF-8 text; else
    ``/dev/fd/N`` of the file opened here (a name of other bytes, Latin-1 ``été`` on Linux, holds
    lone surrogates in Python, which the reader cannot take)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield str(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        yield f"/dev/fd/{fd}" if os.path.isdir("/dev/fd") else str(path)
    finally:
        os.close(fd)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path`` (``load_file``, by a name it opens: ``_readable_name``)."""
    with _readable_name(path) as name:
        return load_file(name)


def read_written_by(path: str | Path) -> dict[str, str]:
    """The versions a ``model.safetensors`` records (``written_by``; empty where it records none or
    does not read)."""
    try:
        return written_by(metadata(path))
    except (SafetensorError, OSError):
        return {}


def run_config(run: str | Path) -> Config:
    """A run folder's ``config.yaml`` as it was made (``config.read_run_config``); one that does not
    read, of a run whose model file a newer ramer wrote, says so (a key or a value this ramer lacks:
    not a typo to correct), and of one this very version wrote, that another build of it may have
    (``skew_note``)."""
    try:
        return read_run_config(Path(run) / "config.yaml")
    except FileUnreadable:
        raise
    except RamerError as e:
        written = read_written_by(Path(run) / "model.safetensors").get("ramer_version")
        there = os.path.lexists(Path(run) / "config.yaml")  # a file gone is not one another version wrote
        if there and (newer_writer(written) or written == __version__):
            raise RamerError(f"{e} ({skew_note(written)})") from None
        raise


def skew_note(written: str | None) -> str:
    """``version_note`` for a config that does not read: a file of this very version is of another
    build of it (a source tree of another commit, with other settings) or was edited."""
    note = version_note(written)
    return f"{note}, so by another build of it with other settings, or edited" if written == __version__ else note


def looks_like_safetensors(path: str | Path) -> bool:
    """Whether a file starts as a safetensors file does: an 8-byte header length, then a JSON object
    (a model file renamed, ``model.safetensors.bak``, is one; a config or a predictions file is not)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = f.seek(0, os.SEEK_END)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 9 <= int.from_bytes(head[:8], "little") + 8 <= size


def read_data_fingerprints(path: str | Path) -> dict[str, str]:
    """The split fingerprints a ``model.safetensors`` records (empty for a file written before they
    were, or one that does not say)."""
    try:
        tree = loads_json(metadata(path).get("data", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError, TypeError, ValueError):
        return {}
    ok = isinstance(tree, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in tree.items())
    return tree if ok else {}


def changed_splits(recorded: dict[str, str], bundle, splits=None, fingerprints: dict | None = None) -> list[str]:
    """The splits (of ``splits``, default all) whose data differs from what ``recorded`` says a run
    was made on; a split the record does not name is not compared. A run made before format
    version 2 recorded the hash of the arrays as held (``SceneStore.held_fingerprint``): either
    hash matching is the same data. ``fingerprints``: the bundle's, where already computed (a split
    of arrays made in memory is hashed again at each ``fingerprint``)."""
    names = bundle.splits if splits is None else splits

    def changed(name: str) -> bool:
        store, want = bundle.splits[name], recorded[name]
        now = fingerprints[name] if fingerprints else store.fingerprint()
        return now != want and store.held_fingerprint() != want

    return [n for n in names if n in recorded and n in bundle.splits and changed(n)]


def same_data(recorded: dict[str, str], bundle) -> bool:
    """Whether ``recorded`` names every split of ``bundle`` and none has changed: the same data,
    whatever its path is called (``ds``, ``./ds``, ``/abs/ds``)."""
    return set(bundle.splits) <= set(recorded) and not changed_splits(recorded, bundle)


def other_task(path: str | Path, task: str) -> str | None:
    """The task the model file ``path`` was trained for where it is not ``task`` (the same arrays
    imported again with the other ``--task`` have the same fingerprints); ``None`` where it is, or
    where there is no readable file (what a run lacks is said where it is read)."""
    try:
        trained = read_spec(path).task
    except RamerError:
        return None
    return trained if trained != task else None


def read_spec(path: str | Path) -> DataSpec:
    """The data spec of a ``model.safetensors`` (its metadata only, no tensors read)."""
    try:
        tree = loads_json(metadata(path)["spec"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise RamerError(f"{path}: no readable data spec ({e!r}); was it written by ramer?") from None
    return spec_from_meta(tree, path)


def _spec_problem(tree) -> str | None:
    """What is wrong with a stored data spec (``DataSpec.to_dict``), or None."""
    if not isinstance(tree, dict):
        return f"an object expected, not {type(tree).__name__}"
    dims, names, n = tree.get("dims"), tree.get("label_names"), tree.get("n_labels")
    if not isinstance(dims, dict) or not all(isinstance(k, str) and is_whole(v, 0) for k, v in dims.items()):
        return f"'dims' must map each modality to a feature size of 0 or more, not {dims!r:.60}"
    if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
        return f"'label_names' must be a non-empty list of names, not {names!r:.60}"
    if (odd := unprintable_name(names)) is not None:
        return f"'label_names' {odd}"
    twice = sorted(name for name, n in Counter(names).items() if n > 1)
    if twice:
        return f"'label_names' names a label twice ({', '.join(twice)[:60]})"
    if not is_whole(n, 1) or n != len(names):
        return f"'n_labels' {n!r:.20} does not count the {len(names)} label names"
    pers = tree.get("personality_dim")
    if pers is not None and not is_whole(pers, 0):
        return f"'personality_dim' must be a size of 0 or more or null, not {pers!r:.20}"
    if tree.get("task", "multi_label") not in TASKS:
        return f"'task' {tree.get('task')!r:.30} is not one of {', '.join(TASKS)}"
    return None


def spec_from_meta(tree, path) -> DataSpec:
    """The data spec stored in a model file's metadata, checked: a bad one is a RamerError naming ``path``."""
    problem = _spec_problem(tree)
    if problem:
        raise RamerError(f"{path}: metadata 'spec' is malformed ({problem}); was it written by ramer?")
    return DataSpec.from_dict(tree)


def check_threshold(threshold, spec: DataSpec, path) -> None:
    """A stored decision threshold: ``"argmax"`` for a single-label model, a probability or one
    probability per label (each finite, in [0, 1]) for a multi-label one; anything else is a
    RamerError naming ``path``."""
    if not _threshold_form(threshold, spec.n_labels):
        raise RamerError(
            f"{path}: stored threshold {threshold!r:.80} is malformed (expected '{ARGMAX}', a number in [0, 1], or "
            f"{spec.n_labels} of them, one per label); was it written by ramer?"
        )
    if (threshold == ARGMAX) != spec.single_label:
        want = f"'{ARGMAX}'" if spec.single_label else "a number or one per label"
        raise RamerError(f"{path}: stored threshold {threshold!r} does not fit a {spec.task} model (expected {want})")


def _threshold_form(threshold, n_labels: int | None = None) -> bool:
    """``threshold`` is ``"argmax"``, a probability, or a list of probabilities (``n_labels`` of them
    when given)."""
    if isinstance(threshold, str):
        return threshold == ARGMAX
    if isinstance(threshold, list):
        return bool(threshold) and n_labels in (None, len(threshold)) and all(map(is_probability, threshold))
    return is_probability(threshold)


def read_model_file(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], Config, DataSpec, float | list[float] | str, int]:
    """Tensors and metadata of a ``model.safetensors``; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a model file" if path.is_dir() else not_a_regular_file(path) or "model file not found"
        raise RamerError(f"{path}: {what}")
    readable(path)
    try:
        state = load_tensors(path)
        meta = metadata(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise RamerError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    written = written_by(meta).get("ramer_version")
    if meta.get("format", MODEL_FORMAT) != MODEL_FORMAT:
        raise RamerError(
            f"{path}: metadata 'format' is {meta['format']!r:.40}, not '{MODEL_FORMAT}' ({version_note(written)})"
        )
    try:
        tree = loads_json(meta["config"])
        if not isinstance(tree, dict):
            kind = type(tree).__name__
            raise RamerError(
                f"{path}: metadata 'config' is malformed (an object expected, not {kind}); was it written by ramer?"
            )
        if newer_writer(written) and (unknown := unknown_keys(tree)):  # settings this ramer does not have
            keys = first_of([f"'{k}'" for k in unknown], 3)
            raise RamerError(
                f"{path}: its config has key{'s' if len(unknown) > 1 else ''} {keys:.200} that this ramer does not "
                f"know ({version_note(written)})"
            )
        try:
            cfg = config_from_dict(fill_older_config(tree), f"{path} metadata")
        except RamerError as e:  # the config's own line ('did you mean'), then which ramer wrote it
            raise RamerError(f"{e} ({skew_note(written)})") from None
        spec_tree = loads_json(meta["spec"])
        threshold = loads_json(meta["threshold"])
        epoch = int(meta.get("epoch", -1))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise RamerError(f"{path}: metadata is missing or malformed ({e!r}); was it written by ramer?") from None
    spec = spec_from_meta(spec_tree, path)
    check_threshold(threshold, spec, path)
    check_config_fits(cfg, spec, state, path, written)
    return state, cfg, spec, threshold, epoch


def check_config_fits(
    cfg: Config, spec: DataSpec, state: dict[str, torch.Tensor], path, written: str | None = None
) -> None:
    """The deep model the stored config builds for ``spec`` has the weights the file holds: built on
    the meta device (no memory taken), so a config of another size than its weights (a
    ``model.hidden`` of 10**9) is a RamerError naming ``path`` before the real model is built, not an
    allocation that fails or takes all memory. A classical model, or one that does not build (an
    unknown model: its loader says so), is not checked here."""
    from ramer.models import CLASSICAL, meta_model

    if cfg.model.name in CLASSICAL:
        return
    try:
        model = meta_model(cfg, spec)
        own = model.state_dict()
    except RuntimeError as e:
        if "overflow" not in str(e):  # sizes past what any memory holds
            return  # the real build, by the caller, reports it as it does today
        raise RamerError(
            f"{path}: its stored config builds a model too large for any memory ({first_line(e)}); was it written "
            "by ramer?"
        ) from None
    except Exception:  # the real build, by the caller, reports it as it does today
        return
    problems = fit_problems(own, state)
    if problems:
        raise not_fitting(path, problems, written, model)


def fit_problems(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """How the weights ``state`` do not fit a model of state dict ``own``: each missing and unexpected
    name, each tensor of another shape, each of another kind of number (an integer or boolean tensor
    for a floating-point weight, or the reverse; floating-point tensors of another precision are
    cast, as torch loads them)."""
    problems = [f"missing {k}" for k in own if k not in state] + [f"unexpected {k}" for k in state if k not in own]
    for k, v in state.items():
        if k not in own or torch.nn.parameter.is_lazy(own[k]):  # a lazy module's sizes come from the file
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            problems.append(f"{k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
        elif v.is_floating_point() != own[k].is_floating_point() or (
            not own[k].is_floating_point() and v.dtype != own[k].dtype
        ):
            problems.append(f"{k} is {v.dtype}, the model {own[k].dtype}")
    return problems


def not_fitting(source, problems: list[str], written: str | None = None, model: nn.Module | None = None) -> RamerError:
    """The error of weights that do not fit the model (``fit_problems``), naming ``source`` and the
    ramer version that wrote it (``written``, where the file records it); for a ``model`` of another
    package (a plugin), that package, whose code is what changed."""
    detail = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    package = package_of(model) if model is not None else "ramer"
    if package != "ramer":
        return RamerError(
            f"{source}: weights do not fit the model ({detail}); the model is {type(model).__name__} of the package "
            f"'{package}', not ramer's: its code has changed since the file was written (or another version of it is "
            "installed): train it again, or install the version it was trained with"
        )
    if newer_writer(written):  # not an older ramer's model: training it again is not the remedy
        return RamerError(f"{source}: weights do not fit the model ({detail}); {version_note(written)}")
    if written == __version__:  # not an older ramer's either: another build of this version, or edited
        return RamerError(
            f"{source}: weights do not fit the model ({detail}); {version_note(written)}, so it was changed since, "
            "or made by another build of it whose layers differ: it must be trained again"
        )
    return RamerError(
        f"{source}: weights do not fit the model ({detail}); a model file written by an older ramer whose layers "
        f"have changed since must be trained again ({version_note(written)})"
    )


def load_state_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, written: str | None = None, assign: bool = False
) -> None:
    """Load ``state`` into ``model``; weights that do not fit (``fit_problems``: torch would cast an
    int8 or boolean tensor into a weight silently) are a RamerError naming ``source`` (and ``written``,
    the ramer version that wrote it, where known). ``assign``: the model takes the tensors of
    ``state`` themselves (``load_state_dict(assign=True)``: a model on the meta device)."""
    problems = fit_problems(model.state_dict(), state)
    try:
        if not problems:
            model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        problems = [first_line(e)]
    if problems:
        raise not_fitting(source, problems, written, model) from None


TRAIN_STATE_KEYS = ("epoch", "model", "optimizer", "scheduler", "rng", "best")  # what every resume reads


def save_train_state(path: str | Path, state: dict) -> None:
    """Write a training state, with the versions that wrote it (``versions``)."""
    state = {**state, **versions()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file, not its name: torch names the zip's entries archive/..., not after tmp
            torch.save(state, f)

    atomic_write(path, write)


def saved_epoch(path: str | Path) -> int | None:
    """The epoch whose end the training state ``path`` holds, its tensors mapped, not read (a state is
    as large as the model and its optimiser), for a line saying what is saved; ``None`` where it
    holds no readable state (``load_train_state`` says what is wrong at a resume)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a line of help, not a check
        return None
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return epoch if is_int(epoch) and epoch >= 1 else None


def load_train_state(path: str | Path) -> dict:
    """The training state of ``path`` (``torch.load(weights_only=True)``: no code runs), its fields checked
    (``train_state_problem``); a missing, unreadable, unsafe or malformed file is a RamerError naming it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a training state" if path.is_dir() else not_a_regular_file(path) or "not found"
        raise RamerError(f"{path}: {what}; cannot resume")
    readable(path)
    refuse_compressed(path, "a ramer training state")
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write: refused below
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global: name it, never suggest loading unsafely
        refused = refused_global(str(e))
        what = f"'{refused}'" if refused else "an object"
        raise RamerError(
            f"{path}: refusing to load {what}: a training state holds only tensors and plain values; "
            "not a ramer training state"
        ) from None
    except Exception as e:  # torch raises several types for corrupt files
        raise RamerError(f"{path}: not a readable training state ({first_line(e)})") from None
    missing = [k for k in TRAIN_STATE_KEYS if k not in state] if isinstance(state, dict) else list(TRAIN_STATE_KEYS)
    written = written_by(state).get("ramer_version")
    note = f"; {version_note(written)}" if written else ""  # a state without versions: maybe no ramer's at all
    if missing:
        raise RamerError(f"{path}: not a ramer training state (it lacks {', '.join(missing)}){note}")
    problem = train_state_problem(state)
    if problem:
        raise RamerError(f"{path}: not a ramer training state ({problem}){note}")
    return state


def _tensors(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items())


def _rng_state(value) -> bool:
    """A CPU generator state as ``torch.get_rng_state`` gives it, one a generator takes (tried on a
    new one: ``torch.set_rng_state`` of bytes of the right size that are no Mersenne Twister state
    raises)."""
    want = torch.get_rng_state()
    if not (torch.is_tensor(value) and value.dtype == want.dtype and value.shape == want.shape):
        return False
    try:
        torch.Generator().set_state(value)
    except (RuntimeError, ValueError):
        return False
    return True


def trained_processes(state: dict):
    """How many processes trained the training state ``state`` (its ``processes``; in a state written
    before it was recorded, one per random state it holds)."""
    ranks = state.get("rng_ranks")
    return state.get("processes", len(ranks) if isinstance(ranks, list) else 1)


def train_state_problem(state: dict) -> str | None:
    """What is wrong with the fields of a loaded training state (what ``Recipe._save_train_state``
    writes), or None."""
    epoch, best = state["epoch"], state["best"]
    if not is_whole(epoch, 1):
        return f"'epoch' must be a whole number of at least 1, not {epoch!r:.40}"
    if not _tensors(state["model"]):
        return "'model' must map parameter names to tensors"
    for key in ("optimizer", "scheduler"):
        if not isinstance(state[key], dict):
            return f"'{key}' must be a state dict, not {type(state[key]).__name__}"
    if not _rng_state(state["rng"]):
        return f"'rng' must be a random generator state (a {tuple(torch.get_rng_state().shape)} uint8 tensor)"
    ranks = state.get("rng_ranks")
    if ranks is not None and not (isinstance(ranks, list) and all(map(_rng_state, ranks))):
        return "'rng_ranks' must be a list of random generator states"
    processes = trained_processes(state)
    if type(processes) is not int or processes != (held := 1 if ranks is None else len(ranks)):
        return (
            f"'processes' must be the number of processes it trained in (one random state each), not "
            f"{processes!r:.40} (it holds {held} random state{'s' * (held != 1)})"
        )
    if "threads" in state and not (type(state["threads"]) is int and state["threads"] >= 1):
        return f"'threads' must be the number of threads it trained on, not {state['threads']!r:.40}"
    if "cuda_rng" in state and not torch.is_tensor(state["cuda_rng"]):
        return "'cuda_rng' must be a tensor"
    if state.get("config") is not None and not isinstance(state["config"], dict):
        return "'config' must be a config tree"
    if not isinstance(best, dict) or not {"score", "epoch", "threshold"} <= set(best):
        return f"'best' must hold score, epoch and threshold, not {best!r:.60}"
    score, thr = best["score"], best["threshold"]
    if not is_finite(score):
        return f"best 'score' must be a number, not {score!r:.40}"
    if not is_whole(best["epoch"], 0) or best["epoch"] > epoch:
        return f"best 'epoch' must be a whole number from 0 to the state's epoch {epoch}, not {best['epoch']!r:.40}"
    if not _threshold_form(thr):
        return f"best 'threshold' must be '{ARGMAX}', a number in [0, 1] or one per label, not {thr!r:.60}"
    return None


def _real(value) -> bool:
    """A finite number of 0 or more (an int or a float, not a bool)."""
    return is_finite(value) and value >= 0


def _like(saved, live) -> bool:
    """``saved`` is a number of the kind ``live`` is: a whole number where ``live`` is an int, else
    any finite number of 0 or more."""
    return is_whole(saved, 0) if isinstance(live, int) else _real(saved)


def _numbers_problem(saved, live: dict, where: str) -> str | None:
    """What is wrong with the fields of a saved optimiser group or scheduler state (``saved``), judged
    by the live one's (``live``): where the live field is a number, the saved one is a number of 0 or
    more (a whole number where the live one is); where a list, a list of the same length (of such
    numbers where the live one holds numbers); where a flag, true, false or null (or absent)."""
    if not isinstance(saved, dict):
        return f"{where} must be a state dict, not {type(saved).__name__}"
    for key, want in live.items():
        if key == "params":
            continue
        if key not in saved:  # a flag a state of another torch version lacks is filled in by torch
            if _real(want) or isinstance(want, (list, tuple)):
                return f"{where} lacks '{key}'"
            continue
        got = saved[key]
        if _real(want):
            if not _like(got, want):
                kind = "a whole number" if isinstance(want, int) else "a number"
                return f"{where} '{key}' must be {kind} of 0 or more, not {got!r:.40}"
        elif isinstance(want, (list, tuple)):
            numbers = bool(want) and all(_real(w) for w in want)
            fits = isinstance(got, (list, tuple)) and len(got) == len(want)
            if not fits or (numbers and not all(_like(g, w) for g, w in zip(got, want))):
                kind = f"{len(want)} numbers of 0 or more" if numbers else f"a list of {len(want)}"
                return f"{where} '{key}' must be {kind}, not {got!r:.40}"
        elif (want is None or isinstance(want, bool)) and not (got is None or isinstance(got, bool)):
            return f"{where} '{key}' must be true, false or null, not {got!r:.40}"
    return None


# What Adam (and AdamW, ramer's optimiser) keeps for each parameter it has stepped; a state without
# one fails at the first step.
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")


def check_optimizer_state(
    path, optimizer: torch.optim.Optimizer, scheduler, state: dict, names=None, steps_per_epoch: int | None = None
) -> None:
    """The optimiser and scheduler state of a training state (``state["optimizer"]``,
    ``state["scheduler"]``), checked against the live ``optimizer`` and ``scheduler`` before they load
    it (torch loads a wrong-shaped moment as it is, and the fused step then crashes the process): the
    parameters of each group, in order, by count; each state tensor (but the step count) of the shape
    and dtype of its parameter, finite; the numeric fields of each group (lr, betas, eps,
    weight_decay, ...) and of the scheduler. With ``steps_per_epoch``, the step counts agree with the
    state's epoch (``steps_problem``). ``names``: a parameter's name by ``id``, for the message.
    A problem is a RamerError naming ``path``."""
    saved, names = state["optimizer"], names or {}
    groups = saved.get("param_groups")
    indices = isinstance(groups, list) and all(
        isinstance(g, dict) and isinstance(g.get("params"), list) and all(is_whole(i, 0) for i in g["params"])
        for g in groups
    )
    if not indices:
        raise RamerError(f"{path}: not a ramer training state ('optimizer' lacks its list of parameter groups)")
    live_groups = optimizer.param_groups
    counts, live_counts = [len(g["params"]) for g in groups], [len(g["params"]) for g in live_groups]
    if counts != live_counts:
        raise RamerError(
            f"{path}: the optimiser state does not fit the model (parameters per group {counts}, the model's "
            f"{live_counts})"
        )
    for n, (group, live) in enumerate(zip(groups, live_groups)):
        problem = _numbers_problem(group, live, f"optimizer group {n}")
        if problem:
            raise RamerError(f"{path}: not a ramer training state ({problem})")
    problem = _numbers_problem(state["scheduler"], scheduler.state_dict(), "scheduler")
    if not problem and steps_per_epoch is not None:
        problem = steps_problem(state, scheduler, state["epoch"], steps_per_epoch)
    if problem:
        raise RamerError(f"{path}: not a ramer training state ({problem})")
    params = {}  # a saved parameter index -> the live parameter (torch maps them so, in group order)
    for group, live in zip(groups, live_groups):
        params.update(zip(group["params"], live["params"]))
    per_param = saved.get("state")
    if not isinstance(per_param, dict):
        raise RamerError(f"{path}: not a ramer training state ('optimizer' lacks its per-parameter state)")
    needed = ADAM_STATE if isinstance(optimizer, torch.optim.Adam) else ()
    steps = None if steps_per_epoch is None else state["epoch"] * steps_per_epoch
    for index, values in per_param.items():
        problem = _param_state_problem(index, values, params, names, needed, steps)
        if problem:
            raise RamerError(f"{path}: {problem}")


def steps_problem(state: dict, scheduler, epoch: int, steps_per_epoch: int) -> str | None:
    """What in a training state's scheduler (checked by ``_numbers_problem`` first) disagrees with its
    ``epoch`` of ``steps_per_epoch`` optimiser steps, or None: the step it is at (a hand-edited or
    another run's state goes on at another point of the schedule), and, for a ``LambdaLR`` (ramer's),
    its base learning rates and the groups' current one (what the next step uses), which must be the
    run's own at that step."""
    saved, steps = state["scheduler"], epoch * steps_per_epoch
    where = f"epoch {epoch} of {steps_per_epoch} optimiser steps ends at step {steps}"
    if saved["last_epoch"] != steps:
        return f"its scheduler is at step {saved['last_epoch']}, but {where}"
    if "_step_count" in saved and saved["_step_count"] != steps + 1:
        return f"scheduler '_step_count' must be {steps + 1} after step {steps}, not {saved['_step_count']!r:.40}"
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:
        return None
    if not all(math.isclose(s, b, rel_tol=1e-9) for s, b in zip(saved["base_lrs"], scheduler.base_lrs)):
        return f"scheduler 'base_lrs' {saved['base_lrs']!r:.60} are not the run's train.lr {scheduler.base_lrs[0]:g}"
    for n, (group, base, factor) in enumerate(zip(state["optimizer"]["param_groups"], scheduler.base_lrs, lambdas)):
        want = base * factor(steps)
        if not math.isclose(group["lr"], want, rel_tol=1e-9, abs_tol=1e-300):
            return f"optimizer group {n} 'lr' {group['lr']:g} is not the run's {want:g} at step {steps}"
    return None


def _param_state_problem(
    index, values, params: dict, names: dict, needed: tuple, steps: int | None = None
) -> str | None:
    """What is wrong with the optimiser state ``values`` of saved parameter ``index`` (which, once the
    parameter has been stepped, holds each of ``needed``; at most ``steps`` times, the optimiser steps
    of the state's epochs, where given: a parameter without a gradient at a step is not stepped), or
    None."""
    bad = "not a ramer training state (optimizer state of parameter {} {})"
    if index not in params:
        return bad.format(f"{index!r:.20}", "names no parameter of a group")
    param = params[index]
    who = f"{index} ({names[id(param)]})" if id(param) in names else str(index)
    if not isinstance(values, dict):
        return bad.format(who, f"must be a dict, not {type(values).__name__}")
    if values and not all(k in values for k in needed):
        return bad.format(who, f"lacks {', '.join(k for k in needed if k not in values)}")
    for key, value in values.items():
        if key == "step":
            one = torch.is_tensor(value) and value.numel() == 1 and not value.is_complex()
            if not (_real(value) or (one and _real(float(value)))):
                return bad.format(who, f"'step' must be a count of 0 or more, not {value!r:.40}")
            count = float(value)
            if steps is not None and (count != int(count) or count > steps):
                return bad.format(who, f"'step' {count:g} must be a whole number of at most the state's {steps} steps")
            continue
        if not torch.is_tensor(value):
            return bad.format(who, f"'{key}' must be a tensor, not {type(value).__name__}")
        if tuple(value.shape) != tuple(param.shape) or value.dtype != param.dtype:
            return (
                f"the optimiser state does not fit the model ('{key}' of parameter {who} is a "
                f"{tuple(value.shape)} {value.dtype} tensor, the parameter {tuple(param.shape)} {param.dtype})"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return bad.format(who, f"'{key}' holds non-finite values")
    return None
