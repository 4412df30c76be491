"""The training recipe, in named phases: setup -> train (epochs: fit, validate, save) -> test.

- AdamW (no decay on biases / LayerNorm), linear warm-up then linear decay, grad-norm clipping.
- Seeded and deterministic on CPU: the epoch's sample order comes from a generator seeded with
  (seed, epoch); all other randomness from torch's global RNG, whose state is checkpointed.
- After each epoch: scores on validation, decision threshold tuned on validation, best
  checkpoint kept by validation's selection score (``selection_score``: micro-F1; single-label
  data (``data.task``, ``resolve_task``): the decision is the arg-max, nothing tuned, and the
  score is weighted F1, ``metrics.SELECTION``). Test runs once, on the best checkpoint.
- ``train.epochs`` is a cap; with ``train.patience = k`` training stops once the selection score
  has not improved for ``k`` epochs (early stopping). The learning-rate schedule spans the cap
  (``epochs * steps_per_epoch`` steps) either way, so a run that stops early ends before its
  learning rate has decayed to 0, and the epochs it trains are exactly the first epochs of the same
  run without patience. A resumed run stops where the uninterrupted one would have (the decision
  reads only the checkpointed best epoch), and one that had stopped trains no further.
- With ``train.ema_decay``, validation, the best checkpoint and test use an exponential moving
  average of the weights (``ramer.train.ema``); training steps the live weights, and
  ``train_state.pt`` keeps both.
- Evaluation never shuffles or drops a sample (the count is asserted).
- Files are written by rank 0 only, each atomically.
- Distributed (``torchrun --nproc_per_node=N -m ramer train ...``, see ``ramer.dist`` and
  docs/SCALING.md): DDP, gloo on CPU, nccl on CUDA. ``train.batch_size`` is the global batch; each
  of the ``N`` processes takes ``batch_size / N`` of it: every rank walks the same seeded
  permutation, padded by repetition like ``DistributedSampler`` and strided by rank, so step ``k``
  of the ``N`` ranks reads exactly the samples of step ``k`` of one process. Evaluation gives
  every rank a contiguous block (no duplicates) and gathers the scores in order. The contrastive
  queue, the prototypes and the contrastive keys are shared across ranks by the model itself (see
  ``RAMer._share_items``, ``RAMer._enqueue``, ``RAMer._update_prototypes``).
- ``train.precision: bf16`` runs forward and loss under ``torch.autocast(bfloat16)`` (CPU or CUDA);
  weights, gradients and the optimiser stay float32.

Run directory: ``config.yaml``, ``model.safetensors`` (best), ``train_state.pt`` (last, for
``--resume``), ``metrics.jsonl`` (one line per epoch, then the test line), ``test_metrics.json``.
Every epoch line has ``step`` (optimiser steps done so far) and ``best_step`` (steps done at the
end of the best epoch); the test line has ``best_epoch``, ``best_step``, ``epochs_run`` and
``stopped_early``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from ramer import checkpoint as ckpt
from ramer import dist
from ramer.config import SAME_RESULTS, Config, as_today, differences, dump_config, load_yaml_text, read_run_config
from ramer.console import LOG_EVERY, live, plain_console
from ramer.data import DataBundle, load_bundle
from ramer.data.store import resolve_task
from ramer.dist import is_main
from ramer.errors import (
    FileUnreadable,
    LossNotFinite,
    RamerError,
    ScoresNotFinite,
    first_line,
    first_of,
    is_number,
    unreadable,
)
from ramer.infer import Predictions, apply_missing, autocast, predict, resolve_device
from ramer.metrics import METRIC_NAMES, SELECTION, choose_threshold, describe_threshold, report
from ramer.models import CLASSICAL, DataSpec, build_model, check_model
from ramer.models.base import LossResult, checked_loss, distribution_scores, package_of
from ramer.models.parts.encoders import check_segments, modality_encoders
from ramer.models.ramer_authors import LOSS_WEIGHTS as AUTHORS_WEIGHTS
from ramer.paths import (
    LOCK_NAME,
    RUN_FILES,
    append_line,
    argument,
    atomic_write_text,
    clear_folder,
    is_temporary,
    loads_json,
    need_regular_file,
    remove_temporaries,
    shell_join,
    shell_quote,
    work_folder,
)
from ramer.train.ema import WeightAverage
from ramer.train.inputs import (
    ablations_note,
    kept_note,
    loss_not_finite,
    model_notes,
    threshold_note,
    unseen_modality_notes,
    untrained_note,
    valid_note,
    weights_not_finite,
)
from ramer.train.optim import build_optimizer
from ramer.train.tensorboard import FOLDER as CURVES_FOLDER
from ramer.train.tensorboard import CurveWriter, require_tensorboard

# DDP must not overwrite the buffers (queue, prototypes) with rank 0's at every forward: the model
# keeps them equal itself. Newer torch spells the switch ``forward_sync_buffers``.
NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


# The smallest model.temperature a run trains with: SupCon's logits are cosines / temperature, in
# float32, whose rounding error nears 1 below it (the term is infinite near 1e-11); the paper's 0.07
MIN_TEMPERATURE = 1e-4
SUPCON_MODELS = ("ramer", "ramer-authors")  # the models whose loss reads model.temperature


def check_training_values(cfg: Config) -> None:
    """Settings no run trains with, refused before any work; checked here, not in the config, so that a
    model file saved with them still loads (a RamerError naming the keys and the allowed range)."""
    t = cfg.train
    if t.lr * t.weight_decay >= 1:
        raise RamerError(
            f"train.lr {t.lr:g} x train.weight_decay {t.weight_decay:g} is {t.lr * t.weight_decay:g}; AdamW scales "
            "the weights by 1 - lr x weight_decay at each step, so the product must be below 1 (typically about "
            "0.001 x 0.01)"
        )
    if cfg.model.name in SUPCON_MODELS and cfg.model.temperature < MIN_TEMPERATURE:
        raise RamerError(
            f"model.temperature {cfg.model.temperature:g} is below {MIN_TEMPERATURE:g}: SupCon's logits are cosines "
            f"divided by it, in float32, and lose their precision (the paper's 0.07); use {MIN_TEMPERATURE:g} or more"
        )


def check_loss_weights(cfg: Config) -> None:
    """ramer-authors weights every term of its loss by a ``loss.w_*`` key (``AUTHORS_WEIGHTS``; the
    other models have a classification term of weight 1): with all of them 0 its loss and every
    gradient are 0, and the run learns nothing (weight decay alone moves the weights), refused before
    any work. Not in ``check_training_values``, which a search checks its config with: a search checks
    it with the weights it searches at their top (``tune.check_space``), so that only those --set
    fixes at 0 are refused."""
    if cfg.model.name != "ramer-authors":
        return
    keys = [f"loss.{k}" for k in sorted(set(AUTHORS_WEIGHTS.values()))]
    if not any(getattr(cfg.loss, k.split(".")[1]) for k in keys):
        raise RamerError(
            f"{', '.join(keys)} are all 0: every term of ramer-authors' loss is weighted by one of them, so its "
            "loss and every gradient are 0 and the run learns nothing; set one above 0 (loss.w_beta_cls: 1 by default)"
        )


def check_splits(bundle: DataBundle) -> None:
    """Training needs a train, a valid and a test split, and samples to fit and to choose on; a
    split no loader has read (made in memory, or swapped into a loaded bundle) has its values
    checked as a loaded one's (``DataBundle.check``: finite features)."""
    bundle.check()
    for split in ("train", "valid", "test"):
        if split not in bundle.splits:
            raise RamerError(f"{bundle.source}: no '{split}' split")
    hint = ""  # why an import (``ramer data import``) has no samples there
    if bundle.format == "conversations" and bundle.labelled:
        hint = " (an import makes samples only of target rows: no row of this split has target 1)"
    elif bundle.format == "conversations":
        hint = " (an unlabelled import puts every conversation in test: it is for predict)"
    for split in ("train", "valid"):
        if len(bundle.splits[split]) == 0:
            raise RamerError(
                f"{bundle.source}: the {split} split is empty; nothing to "
                f"{'train on' if split == 'train' else 'choose the best epoch and threshold on'}" + hint
            )
    if not bundle.labelled:  # an unlabelled import with a split column: every label 0
        raise RamerError(
            f"{bundle.source}: the data has no annotations (an unlabelled import); nothing to train on "
            "(ramer predict is for such data)"
        )


def _classical_run(out: Path) -> bool:
    """The run in ``out`` is of a classical model (it never writes train_state.pt; --resume fits it again)."""
    try:
        return read_run_config(out / "config.yaml").model.name in CLASSICAL
    except RamerError:
        return False


def start_run_folder(out: Path, cfg: Config, resume: bool = False) -> None:
    """Make the run folder ``out`` (refused when it holds another command's work, or a run unless
    ``resume``: ``existing_run``) and write its config and an empty log. Both recipes start a run here."""
    work_folder(out, "run")
    held = None if resume else existing_run(out)
    if held:
        raise RamerError(held)
    remove_temporaries(out, RUN_FILES)  # what a run killed in a write left
    (out / "metrics.jsonl").write_text("")  # first: a config.yaml without a log beside it is not a run's
    atomic_write_text(out / "config.yaml", dump_config(cfg))


def foreign_run_files(run_dir: Path, also: tuple[str, ...] = (), names: list[str] | None = None) -> list[str]:
    """The names in ``run_dir`` (or of ``names``, read from it) that no run writes (nor ``also``: a
    command's own files beside it), sorted: the user's own files, which nothing that clears the
    folder may remove."""
    ours = (*RUN_FILES, CURVES_FOLDER, LOCK_NAME, *also)
    names = [p.name for p in run_dir.iterdir()] if names is None else names
    return sorted(name for name in names if name not in ours and not is_temporary(name))


def clear_run_folder(run_dir: Path, why: str, also: tuple[str, ...] = ()) -> bool:
    """Remove what a run wrote in ``run_dir`` (held by this process), and ``also`` (a command's own
    files beside it), for the run to start again; returns whether there was anything. Anything else
    there (the user's own files, ``foreign_run_files``) is a RamerError naming it, after ``why`` (the
    folder's state), and nothing is removed."""
    names = [p.name for p in run_dir.iterdir()]
    if foreign := foreign_run_files(run_dir, also, names):
        said = f"{why}, and files a run does not write ({first_of(foreign, 5)})"
        raise RamerError(f"{run_dir}: {said}; move them, or give another --out")
    clear_folder(run_dir)
    return any(name != LOCK_NAME for name in names)


def existing_run(out: Path) -> str | None:
    """Why a new run must not be started in ``out``: the message when it already holds a run (a
    training state, a model file, test metrics or a non-empty log; starting anew would replace them)
    or a ``config.yaml`` no run started there wrote (``foreign_config``), else None. Both recipes
    refuse through it."""
    log = out / "metrics.jsonl"
    held = [name for name in ("model.safetensors", "test_metrics.json") if (out / name).exists()]
    held += ["metrics.jsonl"] if log.is_dir() or (log.exists() and log.stat().st_size > 0) else []
    if (out / "train_state.pt").exists() or (held and _classical_run(out)):
        return f"{out} already holds a run; use --resume {shell_quote(argument(out))} or another --out"
    if held:
        return (
            f"{out} holds a run's {', '.join(held)} but no train_state.pt to resume from (stopped before its first "
            "state was saved, or the state was removed); remove them to train there again, or use another --out"
        )
    return foreign_config(out)


def foreign_config(out: Path) -> str | None:
    """Why the ``config.yaml`` in ``out`` must not be replaced by a new run's resolved config: it is
    not one a run started there wrote (a resolved config, unedited, as ``dump_config`` writes it, with
    the run's log beside it; a run stopped before its first state leaves such a folder, and is started
    again there), but a file of the user's, or a link (the write would go to what it points to)."""
    path = out / "config.yaml"
    if not (path.exists() or path.is_symlink()):
        return None
    if path.is_symlink():
        return (
            f"{path}: is a link (to {os.readlink(path)}); a new run writes its resolved config to that name, which "
            "would write over what it points to: remove the link, or use another --out"
        )
    try:
        text = path.read_text(encoding="utf-8")
        tree = load_yaml_text(text)  # as every config is read: aliases refused, deep nesting an error
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        tree = text = None
    written = isinstance(tree, dict) and set(tree) == set(Config.model_fields)
    if written and yaml.safe_dump(tree, sort_keys=False) == text and (out / "metrics.jsonl").is_file():
        return None
    return (
        f"{path}: not a config a run wrote there (a new run writes its resolved config to that name, replacing "
        "the file): move your config elsewhere (and give it with --config), or use another --out"
    )


class StepNotFinite(FloatingPointError):
    """What ``training_step`` found not finite: ``what`` ("loss" or "gradient") and its ``value``;
    with a gradient, ``scores``: what is wrong with the model's scores of the batch where they are not
    finite too (the cause to name: a model that scores NaN)."""

    def __init__(self, value, what: str = "loss", scores: str | None = None):
        super().__init__(value)
        self.value, self.what, self.scores = value, what, scores


def scores_not_finite(model: nn.Module, out) -> str | None:
    """ "model NAME: N of M scores are NaN or infinite" for a forward's ``out`` whose probs are not all
    finite; None where they are (or where ``out`` has no probs tensor)."""
    probs = getattr(out, "probs", None)
    if not isinstance(probs, torch.Tensor):
        return None
    bad = int((~torch.isfinite(probs.detach())).sum())
    return f"model {type(model).__name__}: {bad} of {probs.numel()} scores are NaN or infinite" if bad else None


def training_step(
    forward: nn.Module,
    model: nn.Module,
    batch,
    optimizer: torch.optim.Optimizer,
    scheduler,
    grad_clip: float,
    precision: str = "fp32",
) -> LossResult:
    """One optimiser step: forward through ``forward`` (the DDP wrapper, or ``model`` itself), the
    loss of the unwrapped ``model``, backward, clipping, step. Returns the (finite-checked) loss. A
    gradient norm that is not finite (a finite loss can have one: an overflow in the backward pass)
    stops before the step, as a loss that is not finite does: clipping would scale an infinite
    gradient by 0 and make every weight NaN."""
    with autocast(batch.labels.device, precision):
        out = forward(batch)
        loss = checked_loss(model, model.loss(out, batch))
    if not dist.all_true(torch.isfinite(loss.total.detach())):  # every rank stops together
        raise StepNotFinite(float(loss.total.detach()))
    optimizer.zero_grad(set_to_none=True)
    dist.collective(loss.total.backward)()  # DDP's gradient sync: a peer that ended is one line
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if not dist.all_true(torch.isfinite(norm)):  # the weights stay as they were
        value = f"norm {float(norm)}, loss {float(loss.total.detach()):.6g}"
        raise StepNotFinite(value, "the gradient", scores_not_finite(model, out))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss


def progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=True,
        disable=not live(console) or not is_main(),
    )


def selection_score(valid_report: dict, task: str = "multi_label") -> float:
    """The validation score that chooses the best epoch and drives early stopping (higher is better):
    micro-F1, or weighted F1 on single-label data (``metrics.SELECTION``)."""
    return float(valid_report["overall"][SELECTION[task]])


def write_test_result(
    out: Path,
    pred: Predictions,
    threshold,
    epoch: int,
    label_names,
    run_info: dict | None = None,
    curves: CurveWriter | None = None,
    step: int = 1,
) -> dict:
    """Test metrics at the stored threshold; rank 0 writes the final log line (``run_info``: the
    run's ``best_step``, ``epochs_run`` and ``stopped_early``, added to that line), then
    test_metrics.json, which marks the run finished (``bench.cache_state``), and, with ``curves``,
    the line's scalars at ``step``."""
    thr = np.asarray(threshold) if isinstance(threshold, list) else threshold
    rep = report(pred.labels, pred.scores, thr, pred.role, label_names)
    result = {k: rep[k] for k in ("overall", "speaker", "nonspeaker") if k in rep}
    per_label = {k: rep[k] for k in ("per_label", "per_label_by_role") if k in rep}
    if is_main():
        line = {
            "final": "test",
            "best_epoch": epoch,
            **(run_info or {}),
            "threshold": threshold,
            "test": result,
            **per_label,
        }
        # first, on the disk: test_metrics.json marks the run finished (bench)
        append_line(out / "metrics.jsonl", json.dumps(line))
        atomic_write_text(out / "test_metrics.json", json.dumps(result, indent=1))
        if curves is not None:
            curves.write(line, step)
    return result


# Keys a resumed run may change in its config.yaml: where the data and the work are and how much memory
# it takes, not what is learnt (train.device and train.eval_batch_size may change validation scores in
# their last bits; SAME_RESULTS train the same to the bit, so a run out of memory resumes with recompute).
# data.path and data.format (a file, or its converted folder): the split fingerprints say whether the
# data is the one the run started on (a resume and reproduce compare them).
RESUME_MAY_CHANGE = (
    "data.path",
    "data.format",
    "train.device",
    "train.threads",
    "train.eval_batch_size",
    "train.tensorboard",
)
RESUME_MAY_CHANGE += SAME_RESULTS


def changed_settings(stored: dict, tree: dict) -> list[str]:
    """The dotted keys in which config tree ``tree`` changes a run's ``stored`` one, but for
    ``RESUME_MAY_CHANGE``."""
    return [k for k in differences(stored, tree) if k not in RESUME_MAY_CHANGE]


def resume_state(out: Path, cfg: Config) -> dict:
    """The training state of the run ``out`` that ``cfg`` (its config) resumes, checked as far as it
    can be without its model and data: there, readable, saved by a run of this config, not past its
    ``train.epochs``. Read by the resume itself and, before N processes start, by ``ramer train
    --resume RUN --nproc N`` (each would refuse it alike)."""
    path = out / "train_state.pt"
    if not (path.exists() or path.is_symlink()):  # stopped before its first state: say what to do
        again = shell_join(["ramer", "train", "--config", argument(out / "config.yaml"), "--out", argument(out)])
        raise RamerError(
            existing_run(out)
            or f"{path}: not found; cannot resume: the run stopped before its first training state was saved, "
            f"so nothing of it is kept; train it again ({again})"
        )
    state = ckpt.load_train_state(path)
    check_resumed_config(state.get("config"), cfg, out)
    if state.get("config") is not None and state["epoch"] > cfg.train.epochs:  # the same on a resume
        raise RamerError(
            f"{path}: not a ramer training state ('epoch' {state['epoch']!r:.40} is past the run's train.epochs "
            f"{cfg.train.epochs})"
        )
    return state


def check_resumed_config(stored: dict | None, cfg: Config, out: Path, source: Path | None = None) -> None:
    """A resumed run continues with the settings its training state (``source``, default
    ``train_state.pt``; a classical fit's ``model.safetensors``) was made with (``stored``, read
    with today's defaults for keys added since): other settings, but for ``RESUME_MAY_CHANGE``, are
    an error naming the keys, and ``config.yaml`` where it was edited. A state written before states
    kept their config (``stored`` None) is not checked."""
    if stored is None:
        return
    stored = as_today(stored, f"{source or out / 'train_state.pt'} config")
    given = changed_settings(stored, cfg.model_dump(mode="json"))
    if not given:
        return
    path = out / "config.yaml"
    try:
        edited = changed_settings(stored, read_run_config(path).model_dump(mode="json")) if path.is_file() else []
    except RamerError:
        edited = ["(it no longer reads as a config)"]
    if edited:
        raise RamerError(
            f"{path} differs from the config this run was trained with ({', '.join(edited)}); a resumed run "
            "continues with its own settings: restore them, or start a new run in another folder"
        )
    raise RamerError(
        f"the settings given differ from those {out} was trained with ({', '.join(given)}; its config.yaml "
        "holds them): resume it with its own settings, or use another output folder"
    )


def check_resumed_data(out: Path, cfg: Config, bundle: DataBundle, task: str, fingerprints: dict | None = None) -> None:
    """A resumed run goes on with the data its ``model.safetensors`` records (split fingerprints)
    and the task it started as: other data would train (or fit) one run on two data sets.
    ``fingerprints``: the bundle's, where the run has them (``bundle.fingerprints``)."""
    recorded = ckpt.read_data_fingerprints(out / "model.safetensors")
    changed = ckpt.changed_splits(recorded, bundle, fingerprints=fingerprints)
    if changed:
        raise RamerError(
            f"cannot resume {out}: the data at data.path ({cfg.data.path}) is not what the run started "
            f"on ({', '.join(changed)} changed since); resume with that data, or start a new run"
        )
    if was := ckpt.other_task(out / "model.safetensors", task):  # the same arrays
        raise RamerError(
            f"cannot resume {out}: the run started as {was}, and the data at data.path ({cfg.data.path}) "
            f"is {task} now (imported again with another --task?); its losses, decision and best "
            "epoch would change kind midway: resume with that data, or start a new run"
        )


def read_log(path: Path, cut_ok: bool = True) -> list[tuple[str, dict]]:
    """The lines of a run's ``metrics.jsonl`` with their records (none without the file). With
    ``cut_ok`` (a run stopped mid-training) a last line cut off without its newline, by a kill while
    it was written, is dropped; any other line that is not a JSON object is a RamerError naming the
    file and the line."""
    if not path.exists():
        return []
    need_regular_file(path)  # a pipe there made a resume wait for ever
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise unreadable(path, e) from None
    except UnicodeDecodeError as e:
        raise RamerError(f"{path}: run log is not UTF-8 text ({first_line(e)})") from None
    lines = text.splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = loads_json(line)
        except json.JSONDecodeError as e:
            if cut_ok and n == len(lines) and not text.endswith("\n"):
                continue  # a write cut off by a kill
            raise RamerError(
                f"{path}: line {n} is not JSON ({e.msg}); a run log holds one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise RamerError(f"{path}: line {n} is not a JSON object; a run log holds one JSON object per line")
        epoch = record.get("epoch")
        if "epoch" in record and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1):
            raise RamerError(f"{path}: line {n} has epoch {json.dumps(epoch)[:40]}; an epoch is a whole number from 1")
        out.append((line, record))
    return out


# What torch says when an allocation fails (on the CPU, a GPU) or its size does not even fit a count.
ALLOCATION_FAILED = ("can't allocate memory", "out of memory", "size calculation overflowed")


def out_of_memory(e: BaseException) -> bool:
    """``e`` says an allocation failed: a MemoryError (numpy's too) or torch's (``ALLOCATION_FAILED``)."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and any(s in str(e) for s in ALLOCATION_FAILED))


def _asked(e: BaseException) -> str:
    """How much the failed allocation ``e`` asked for, as its message says it."""
    text = str(e)
    found = re.search(r"allocate (\d+) bytes", text)
    if found:
        size = int(found.group(1))
        return f"{size / 2**30:,.0f} GiB asked for" if size >= 2**30 else f"{size / 2**20:,.0f} MiB asked for"
    found = re.search(r"allocate ([\d.]+) ?([KMGTPE]?i?B)", text)
    return f"{float(found.group(1)):g} {found.group(2)} asked for" if found else first_line(e)[:100]


@contextlib.contextmanager
def memory_named(what: str, sizes: str | None, other: str | None = None):
    """Within: a failed allocation (``out_of_memory``) is one line: ``what`` does not fit in memory,
    and (when given) the size settings that make it so and ``other``, a remedy besides lowering them."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        why = f": its sizes are too large ({sizes}); lower them" if sizes else ""
        why += f", or {other}" if sizes and other else ""
        raise RamerError(f"{what} does not fit in memory ({_asked(e)}){why}") from None


def model_sizes(cfg: Config, spec: DataSpec) -> str:
    """The model's size settings and the data's feature sizes, for ``memory_named``."""
    m = cfg.model
    dims = ", ".join(f"{k} {v}" for k, v in spec.dims.items())
    return (
        f"model.hidden {m.hidden}, model.ffn {m.ffn}, model.heads {m.heads}, model.proj_size {m.proj_size}, "
        f"model.queue_size {m.queue_size}, model.max_segments {m.max_segments}; the data's feature sizes {dims}"
    )


def data_sizes(cfg: Config) -> tuple[str, str | None]:
    """What the data is and, for the embedded benchmark, its size settings, for ``memory_named``."""
    if cfg.data.path is not None:
        return f"{cfg.data.path}: the data", None
    keys = ("n_train", "n_valid", "n_test", "persons_max", "segments_max", "text_dim", "audio_dim", "visual_dim")
    s = cfg.data.synthetic
    sizes = ", ".join(f"data.synthetic.{k} {getattr(s, k)}" for k in (*keys, "personality_dim"))
    return "the synthetic data", sizes


_ONE_RUN = threading.RLock()  # held by the run under way in this process (``RunSteps.run``)


class RunSteps:
    """``run()``: setup, train, test, then ``close()`` (also after an error), for both recipes. With
    ``announce`` set, rank 0 says where the run goes once setup has passed (before the work)."""

    curves: CurveWriter | None = None
    announce = False

    def run(self) -> dict:
        """The run; the process's torch thread count and global random state as they were before
        (``train.threads`` and ``train.seed`` set them for the run only: a later run or a notebook
        cell in the same process starts from its own). One run at a time in a process: runs called
        from several threads wait their turn (they would draw from one random generator, and set one
        thread count, for each other). The caller's torch modes do not reach the run: gradients on,
        no inference mode, no autocast but the run's own, float32 the default dtype."""
        threads = torch.get_num_threads()
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        dtype = torch.get_default_dtype()
        with _ONE_RUN, torch.random.fork_rng(devices=cuda), contextlib.ExitStack() as modes:
            modes.enter_context(torch.inference_mode(False))
            modes.enter_context(torch.enable_grad())
            for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                modes.enter_context(torch.autocast(device, enabled=False))
            torch.set_default_dtype(torch.float32)
            try:
                return self._run(threads)
            finally:
                torch.set_default_dtype(dtype)

    def _run(self, threads: int) -> dict:
        try:
            self.setup()
            if self.announce and is_main():
                self.console.print(f"training {self.cfg.model.name} -> {self.out}", highlight=False, soft_wrap=True)
            self.train()
            return self.test()
        finally:
            try:
                self.close()
            finally:
                torch.set_num_threads(threads)

    def close(self) -> None:
        if self.curves is not None:
            self.curves.close()

    def data_notes(self, model: nn.Module | None = None) -> None:
        """Rank 0 says what the data lets the run not do: multi-label validation without a single
        positive label scores every epoch and threshold 0, so nothing is chosen there; a label no
        training sample has (``untrained_note``); a modality no training token has
        (``unseen_modality_notes``); ablations set for a model other than RAMer
        (``ablations_note``); ``train.per_label_threshold`` on single-label data (``threshold_note``);
        what a deep ``model`` of this package cannot read in the training split and
        ``train.recompute`` asked of a model it does not reach (``model_notes``)."""
        if not is_main():
            return
        notes = [
            valid_note(self.bundle, self.spec.single_label),
            untrained_note(self.bundle),
            ablations_note(self.cfg),
            threshold_note(self.cfg, self.spec.single_label),
        ]
        notes = [n for n in notes if n] + unseen_modality_notes(self.bundle)
        if model is not None:
            notes += model_notes(self.splits["train"], model, self.cfg, self.bundle.source)
        for note in notes:
            self.console.print(f"note: {note}", highlight=False, soft_wrap=True)

    def check_data(self) -> None:
        """``check_splits``, and a note where the test split is empty: the run trains and chooses
        its epoch on train and valid, and its test line reports no figures."""
        check_splits(self.bundle)
        if len(self.bundle.splits["test"]) == 0 and is_main():
            self.console.print(
                f"note: {self.bundle.source}: the test split is empty; the run reports no test figures",
                highlight=False,
                soft_wrap=True,
            )


class Recipe(RunSteps):
    """One training run. ``hooks`` are called as ``hook(recipe, epoch)`` after each saved epoch (its
    log line is ``recipe.log[-1]``); an exception a hook raises ends the run there (``ramer tune``
    prunes a trial so)."""

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        resume: bool = False,
        console: Console | None = None,
        hooks: tuple[Callable[["Recipe", int], None], ...] = (),
        bundle: DataBundle | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.resume = resume
        self.console = console or plain_console()
        self.hooks = hooks
        self.bundle = bundle
        self.curves: CurveWriter | None = None  # TensorBoard (train.tensorboard), rank 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        check_training_values(cfg)
        check_loss_weights(cfg)
        if cfg.train.tensorboard:
            require_tensorboard()  # before any work
        check_model(cfg, options=not self.resume)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        # a resume takes no --set: its config.yaml is where the device changes
        where = {"instead": f"set train.device: cpu in {self.out / 'config.yaml'}"} if self.resume else {}
        self.device = resolve_device(cfg.train.device, **where)
        self.owns_group = dist.launched() and not dist.is_dist()
        self.device = dist.init_from_env(self.device)
        self.world = dist.world_size()
        if cfg.train.batch_size % self.world:
            raise RamerError(
                f"train.batch_size {cfg.train.batch_size} is the global batch and must divide by the "
                f"{self.world} processes"
            )
        self.rank_batch = cfg.train.batch_size // self.world
        self.log: list[dict] = []  # every epoch line, on every rank
        torch.manual_seed(cfg.train.seed)
        if self.bundle is None:
            with memory_named(*data_sizes(cfg)):
                self.bundle = load_bundle(cfg.data)
        self.check_data()
        self.fingerprints = self.bundle.fingerprints()
        self.splits = apply_missing(self.bundle, cfg)
        self.spec = DataSpec.from_bundle(self.bundle, resolve_task(self.bundle, cfg.data.task))
        with memory_named("the model", model_sizes(cfg, self.spec)):
            self.model = build_model(cfg, self.spec)
            if hasattr(self.model, "prepare"):
                self.model.prepare(self.splits["train"])
            self.model.to(self.device)
        self.check_segments()
        self.finite_buffers = {  # what check_weights checks besides the parameters
            name for name, b in self.model.named_buffers() if b.is_floating_point() and bool(torch.isfinite(b).all())
        }
        self.forward_model = self.model
        if self.world > 1:
            # Buffers (queue, prototypes) are kept equal by the model's own collectives.
            ids = [self.device.index] if self.device.type == "cuda" else None
            every_parameter = getattr(self.model, "uses_every_parameter", False)  # else DDP searches each step
            self.forward_model = dist.collective(nn.parallel.DistributedDataParallel)(  # it broadcasts the weights
                self.model, device_ids=ids, find_unused_parameters=not every_parameter, **NO_BUFFER_SYNC
            )
            torch.manual_seed(cfg.train.seed * 1_000_003 + dist.rank())  # own dropout etc. per rank
        n_train = len(self.splits["train"])
        per_rank = -(-n_train // self.world)  # padded like DistributedSampler
        per_epoch = -(-per_rank // self.rank_batch)
        if cfg.train.max_train_batches:
            per_epoch = min(per_epoch, cfg.train.max_train_batches)
        self.steps_per_epoch = per_epoch
        self.optimizer, self.scheduler = build_optimizer(
            self.model, cfg.train.lr, cfg.train.weight_decay, per_epoch * cfg.train.epochs, cfg.train.warmup
        )
        self.ema = WeightAverage(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        self.start_epoch = 1
        self.best = {"score": -1.0, "epoch": 0, "threshold": 0.5}
        if self.resume:
            self._load_train_state()
        else:
            error = self._new_run_folder(cfg) if is_main() else None
            error = dist.broadcast_object(error)  # every rank stops, not only rank 0
            if error:
                raise RamerError(error)
        self.epochs_run = self.start_epoch - 1  # epochs trained so far (a resumed run's too)
        self.data_notes(self.model)  # once the run folder is there: said of a run, not before an error
        if cfg.train.tensorboard and is_main():
            # nothing left to train (a finished run resumed): only its test line is written again, at its
            # last epoch's step, which is purged too (the test's events were there twice) and written again
            done = self.epochs_run > 0 and (self.epochs_run >= cfg.train.epochs or self.should_stop(self.epochs_run))
            resumed_from = self.epochs_run * self.steps_per_epoch + (0 if done else 1) if self.resume else None
            # switched on at this resume (its config.yaml edited): no events yet of the epochs logged
            earlier = self.resume and not any((self.out / CURVES_FOLDER).glob("events.out.tfevents.*"))
            self.curves = CurveWriter(self.out, resume_step=resumed_from)
            for _, line in read_log(self.out / "metrics.jsonl") if earlier or (self.resume and done) else []:
                if "epoch" in line and is_number(line.get("step")) and (earlier or line["epoch"] == self.epochs_run):
                    self.curves.write(line, int(line["step"]))

    def check_segments(self) -> None:
        """Every split's longest scene fits the model's segment-position tables (``model.max_segments``),
        checked before training: a test split of longer scenes was found only after the last epoch,
        by a model that could never score it."""
        tables = [m.position.num_embeddings for m in modality_encoders(self.model)]
        for name, store in self.splits.items():
            if tables and len(store):
                where = f"{self.bundle.source}: a scene of split '{name}'"
                check_segments(int(store.grid[:, 1].max()), min(tables), where)

    def sizes(self, split: str, batch: int, key: str) -> tuple[str, str, str | None]:
        """``memory_named``'s arguments for a batch of ``batch`` scenes of ``split`` (``key``: the
        setting that sizes it): its scenes' largest grid, the settings that make it large and, for a
        training step of a model whose encoders do not recompute yet, ``train.recompute``."""
        grid = self.splits[split].grid
        P, S = (int(x) for x in grid.max(0)) if len(grid) else (0, 0)
        what = "a training step" if split == "train" else f"scoring {split}"
        m = self.cfg.model
        encoders = modality_encoders(self.model)
        other = None
        if split == "train" and encoders and not any(part.recompute for part in encoders):
            other = "set train.recompute=true (the encoders' layers run again in backward: "
            other += "less memory with deep encoders)"
        return (
            f"{what} ({batch} scenes at once, up to {P} persons x {S} segments)",
            f"{key} {batch}, model.hidden {m.hidden}, model.heads {m.heads}, model.ffn {m.ffn}",
            other,
        )

    def _new_run_folder(self, cfg: Config) -> str | None:
        """Rank 0: make the run folder, write its config and an empty log; returns the error, if
        any, as text (raised by every rank, so that none waits for rank 0)."""
        try:
            start_run_folder(self.out, cfg)
        except RamerError as e:
            return str(e)
        return None

    def _load_train_state(self) -> None:
        path = self.out / "train_state.pt"
        state = resume_state(self.out, self.cfg)
        self._check_best_weights(state["best"]["epoch"])
        check_resumed_data(self.out, self.cfg, self.bundle, self.spec.task, self.fingerprints)
        ckpt.load_state_into(self.model, state["model"], str(path), ckpt.written_by(state).get("ramer_version"))
        if bad := [name for name, w in self.model.named_parameters() if not torch.isfinite(w).all()]:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise RamerError(  # a run stops at its first non-finite loss, before a state is saved: a damaged file
                f"{path}: weight '{bad[0]}'{more} holds NaN or infinite values, which no saved training state "
                "holds (the file was changed since it was written); train the run anew in another --out"
            )
        if self.ema is not None:
            self.ema.load_state_dict(state.get("ema"), str(path), state["epoch"] * self.steps_per_epoch)
        elif "ema" in state:  # evaluated on the average so far: going on without it would mix the two
            raise RamerError(
                f"{path}: the run was trained with a weight average (train.ema_decay); resume it with its own "
                "config (with train.ema_decay)"
            )
        names = {id(p): name for name, p in self.model.named_parameters()}
        ckpt.check_optimizer_state(path, self.optimizer, self.scheduler, state, names, self.steps_per_epoch)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise RamerError(f"{path}: the optimiser state does not fit the model ({first_line(e)})") from None
        ranks = state.get("rng_ranks")
        was = ckpt.trained_processes(state)
        if is_main() and was != self.world:

            def processes(n: int) -> str:
                return f"{n} process{'es' * (n != 1)}"

            how = f"with --nproc {was}" if was > 1 else "without --nproc"
            self.console.print(
                f"note: {self.out} trained in {processes(was)} so far and resumes in {processes(self.world)}: "
                "each process's random state and share of the batches are not those it had, so the run goes on "
                f"otherwise than it would have uninterrupted; resume {how} to go on as it was",
                highlight=False,
                soft_wrap=True,
            )
        threads = torch.get_num_threads()
        if is_main() and state.get("threads", threads) != threads:  # train.threads unset: the environment's
            self.console.print(
                f"note: {self.out} trained on {state['threads']} threads so far and resumes on {threads}: its sums "
                "are taken in another order, so the run goes on otherwise than it would have in its last digits, "
                f"and from them on (set train.threads: {state['threads']} in {self.out / 'config.yaml'} to go on "
                "as it was)",
                highlight=False,
                soft_wrap=True,
            )
        if self.world > 1 and ranks is not None and len(ranks) == self.world:
            torch.set_rng_state(ranks[dist.rank()])
        elif self.world == 1:
            torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda" and self.world == 1:
            try:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            except (RuntimeError, ValueError) as e:
                raise RamerError(f"{path}: not a ramer training state ('cuda_rng': {first_line(e)})") from None
        self.best = state["best"]
        self.start_epoch = int(state["epoch"]) + 1
        # Drop log lines of epochs after the checkpoint (written before a kill).
        log = read_log(self.out / "metrics.jsonl")
        kept = [ln for ln, rec in log if rec.get("epoch", 10**9) < self.start_epoch]
        if is_main():
            atomic_write_text(self.out / "metrics.jsonl", "".join(ln + "\n" for ln in kept))
            remove_temporaries(self.out, RUN_FILES)  # what a kill in a write left
            logged = {rec.get("epoch") for _, rec in log}
            if lost := [e for e in range(1, self.start_epoch) if e not in logged]:  # removed or edited since
                run = len(lost) > 2 and lost[-1] - lost[0] == len(lost) - 1
                which = f"{lost[0]} to {lost[-1]}" if run else ", ".join(map(str, lost))
                self.console.print(
                    f"note: {self.out / 'metrics.jsonl'} lacks the lines of epoch{'s' if len(lost) > 1 else ''} "
                    f"{which} that train_state.pt counts (removed or edited since); the resumed run's log lacks "
                    "them too",
                    highlight=False,
                    soft_wrap=True,
                )

    def _check_best_weights(self, best_epoch: int) -> None:
        """A run that has a best epoch is tested on its model file: one that is missing, unreadable or
        does not fit the model is refused before any training (the run could never be finished). The
        weights are loaded into the model, which the training state's then replace."""
        if best_epoch < 1:
            return
        path = self.out / "model.safetensors"
        try:
            weights = ckpt.read_model_file(path)[0]
            ckpt.load_state_into(self.model, weights, str(path))
        except FileUnreadable:
            raise
        except RamerError as e:
            raise RamerError(
                f"cannot resume {self.out}: {e}; the run is tested on that file's weights (its best so far, epoch "
                f"{best_epoch}), so it cannot be finished: train it again (remove {self.out}, or use another --out)"
            ) from None

    # ------------------------------------------------------------------ train
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch)
        return torch.randperm(len(self.splits["train"]), generator=g)

    def train_epoch(self, epoch: int, bar: Progress) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        bs = self.rank_batch
        order = dist.shard_indices(self._epoch_order(epoch).numpy(), bs, self.steps_per_epoch)
        sums: dict[str, float] = {}
        task = bar.add_task(f"epoch {epoch}", total=self.steps_per_epoch, info="")
        store = self.splits["train"]
        sizes = self.sizes("train", cfg.train.batch_size, "train.batch_size")
        log = not live(self.console) and is_main()  # a log file, CI: a plain line now and then
        started = said = time.perf_counter()
        for step in range(self.steps_per_epoch):
            batch = store.collate(order[step * bs : (step + 1) * bs]).to(self.device)
            try:
                with memory_named(*sizes):
                    loss = training_step(
                        self.forward_model,
                        model,
                        batch,
                        self.optimizer,
                        self.scheduler,
                        cfg.train.grad_clip,
                        cfg.train.precision,
                    )
            except StepNotFinite as e:
                said = (
                    f"epoch {epoch} step {step}: {e.scores} (did the model diverge?); its gradient is not finite"
                    if e.scores
                    else loss_not_finite(epoch, step, e.value, batch, e.what)
                )
                raise self.diverged(epoch, said) from None
            if self.ema is not None:
                self.ema.update()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.total.detach())
            for k, v in loss.terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.update(task, advance=1, info=f"loss {sums['loss'] / (step + 1):.4f}")
            if log and (now := time.perf_counter()) - said >= LOG_EVERY and step + 1 < self.steps_per_epoch:
                self.console.print(
                    f"epoch {epoch}: step {step + 1} of {self.steps_per_epoch} ({now - started:.0f} s, "
                    f"loss {sums['loss'] / (step + 1):.4f})",
                    highlight=False,
                )
                said = now
        bar.remove_task(task)
        return dist.mean_over_ranks({k: v / self.steps_per_epoch for k, v in sums.items()}, self.device)

    def validate_epoch(self, epoch: int) -> tuple[dict, float | np.ndarray | str]:
        """``validate`` after ``epoch``: scores that are not finite (the features are: ``check_splits``)
        are a model that diverged at the epoch's last step, a ``LossNotFinite`` as a diverged step's,
        with what the run keeps (not the metrics' ``ScoresNotFinite``: ``ramer tune`` prunes the trial)."""
        try:
            return self.validate()
        except ScoresNotFinite:
            said = (
                f"epoch {epoch}: the validation scores are NaN or infinite after its last step, whose loss and "
                "gradient were finite: the model diverged; lower train.lr?"
            )
            if (package := package_of(self.model)) != "ramer":  # a plugin's eval-mode forward may make them
                said += (
                    f" (or model {type(self.model).__name__}, of package {package}, makes NaN or infinite probs "
                    "in eval mode)"
                )
            raise self.diverged(epoch, said) from None

    def diverged(self, epoch: int, said: str) -> LossNotFinite:
        """The error of a run that diverged in ``epoch`` (``said``: how), with what its folder keeps
        of the epochs before it (``kept_note``)."""
        return LossNotFinite(said, kept_note(self.out, epoch - 1, self.best["epoch"]))

    def validate(self) -> tuple[dict, float | np.ndarray | str]:
        pred = self.score("valid")
        threshold = choose_threshold(pred.labels, pred.scores, self.spec.task, self.cfg.train.per_label_threshold)
        rep = report(pred.labels, pred.scores, threshold, pred.role, per_label=False)
        return rep, threshold

    def score(self, split: str) -> Predictions:
        """``predict`` of ``split`` by the model as it is, sharded over the processes; a batch that
        does not fit in memory is one line naming ``train.eval_batch_size``."""
        batch = self.cfg.train.eval_batch_size
        with memory_named(*self.sizes(split, batch, "train.eval_batch_size")):
            pred = predict(self.model, self.splits[split], batch, self.device, self.cfg.train.precision, shard=True)
        if self.spec.single_label:  # the arg-max decides, and predict's lines show the probabilities
            distribution_scores(self.model, pred.scores)
        return pred

    def should_stop(self, epoch: int) -> bool:
        """Early stopping after ``epoch``: ``train.patience`` epochs without a better validation
        score, and epochs left before the cap. Reads only the checkpointed best epoch, so a resumed
        run decides as the uninterrupted run did."""
        patience = self.cfg.train.patience
        return patience is not None and epoch < self.cfg.train.epochs and epoch - self.best["epoch"] >= patience

    def train(self) -> None:
        cfg = self.cfg
        epochs = cfg.train.epochs
        if self.epochs_run and self.should_stop(self.epochs_run):  # a resumed run that had stopped early
            if is_main():
                self.console.print(
                    f"the run stopped early after epoch {self.epochs_run}/{epochs}; nothing more to train",
                    highlight=False,
                )
            return
        if self.epochs_run >= epochs:  # a resumed run that had trained all its epochs
            if is_main():
                self.console.print(f"the run had trained all {epochs} epochs; nothing more to train", highlight=False)
            return
        if self.epochs_run and is_main():  # resumed: said before the first resumed epoch's minutes
            self.console.print(
                f"resuming {self.out} at epoch {self.start_epoch}/{epochs} (best so far "
                f"{self.best['score']:.4f} at epoch {self.best['epoch']})",
                highlight=False,
                soft_wrap=True,
            )
        with progress(self.console) as bar:
            for epoch in range(self.start_epoch, epochs + 1):
                t0 = time.perf_counter()
                train_terms = self.train_epoch(epoch, bar)
                seconds_train = time.perf_counter() - t0
                self.check_weights(epoch)
                with self.evaluated_weights():  # the weight average, with train.ema_decay
                    valid, threshold = self.validate_epoch(epoch)
                    score = selection_score(valid, self.spec.task)
                    improved = score > self.best["score"]
                    thr = threshold.tolist() if isinstance(threshold, np.ndarray) else threshold
                    if improved:
                        self.best = {"score": score, "epoch": epoch, "threshold": thr}
                        if is_main():
                            ckpt.save_model(
                                self.out / "model.safetensors",
                                self.model,
                                cfg,
                                self.spec,
                                thr,
                                epoch,
                                self.fingerprints,
                            )
                n_seen = min(len(self.splits["train"]), self.steps_per_epoch * cfg.train.batch_size)
                line = {
                    "epoch": epoch,
                    "train": train_terms,
                    "valid": valid,
                    "threshold": thr,
                    "best_epoch": self.best["epoch"],
                    "step": epoch * self.steps_per_epoch,
                    "best_step": self.best_step,
                    "lr": self.scheduler.get_last_lr()[0],
                    "seconds": time.perf_counter() - t0,
                    "train_samples_per_s": n_seen / max(seconds_train, 1e-9),
                }
                self.log.append(line)
                # The line first, then the state: a kill between the two (or while the line is written)
                # leaves a line of an epoch the state does not hold, which a resume drops and trains again.
                if is_main():
                    # on the disk before the state: a power cut loses no line the state holds
                    append_line(self.out / "metrics.jsonl", json.dumps(line))
                    if self.curves is not None:
                        self.curves.write(line, line["step"])
                self._save_train_state(epoch)
                if is_main():
                    metric = METRIC_NAMES[SELECTION[self.spec.task]]
                    self.console.print(
                        f"epoch {epoch}/{epochs}  loss {train_terms['loss']:.4f}  valid {metric} {score:.4f}"
                        f" ({describe_threshold(thr)}){'  *best*' if improved else ''}  {line['seconds']:.1f}s",
                        highlight=False,
                    )
                self.epochs_run = epoch
                for hook in self.hooks:
                    hook(self, epoch)
                if self.should_stop(epoch):
                    if is_main():
                        self.console.print(
                            f"stopping early after epoch {epoch}/{epochs}: no better validation score for "
                            f"{epoch - self.best['epoch']} epoch(s) (train.patience {cfg.train.patience}); best "
                            f"{self.best['score']:.4f} at epoch {self.best['epoch']}, step {self.best_step}",
                            highlight=False,
                        )
                    break

    def check_weights(self, epoch: int) -> None:
        """After ``epoch``'s last step, before it is validated and saved: weights that are not finite
        (an update that overflowed, though its loss and gradient were finite; the next step's loss
        finds it within an epoch) stop the run as a loss that is not finite does, with what is kept.
        The floating buffers (the contrastive queue, the prototypes; those finite as the model was
        built, not a mask of -inf of its own: ``finite_buffers``) and the weight average
        (``train.ema_decay``) are checked too: both are saved and evaluated."""
        named = list(self.model.named_parameters())
        named += [(name, b) for name, b in self.model.named_buffers() if name in self.finite_buffers]
        if self.ema is not None:
            named += [(f"{name} (weight average)", avg) for name, avg in zip(self.ema.names, self.ema.average)]
        finite = torch.stack([torch.isfinite(p).all() for _, p in named] or [torch.tensor(True, device=self.device)])
        if not dist.all_true(finite.all()):  # one read from a GPU, not one per parameter
            bad = [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
            said = weights_not_finite(epoch, bad or ["on another process"])
            raise self.diverged(epoch, said)

    def evaluated_weights(self):
        """A context in which the model holds the weights that are validated and saved: the weight
        average with ``train.ema_decay``, else the live weights."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    @property
    def best_step(self) -> int:
        """Optimiser steps done at the end of the best epoch."""
        return self.best["epoch"] * self.steps_per_epoch

    def _save_train_state(self, epoch: int) -> None:
        """Called on every rank (the RNG states are gathered); rank 0 writes."""
        rng = torch.get_rng_state()
        ranks = [torch.from_numpy(r) for r in dist.gather_arrays(rng.numpy()[None])] if self.world > 1 else None
        if not is_main():
            return
        state = {
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": self.cfg.model_dump(mode="json"),  # what a resume checks config.yaml against
            "rng": rng,
            "best": self.best,
            "processes": self.world,  # a resume in another count trains on otherwise: it says so
            "threads": torch.get_num_threads(),  # so does one on another number of threads
        }
        if ranks is not None:
            state["rng_ranks"] = ranks
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        ckpt.save_train_state(self.out / "train_state.pt", state)

    # ------------------------------------------------------------------ test
    def test(self) -> dict:
        dist.barrier()  # rank 0 has written the best checkpoint
        state, _, _, threshold, epoch = ckpt.read_model_file(self.out / "model.safetensors")
        ckpt.load_state_into(self.model, state, str(self.out / "model.safetensors"))
        pred = self.score("test")
        run_info = {
            "best_step": epoch * self.steps_per_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.epochs_run < self.cfg.train.epochs,
        }
        steps = self.epochs_run * self.steps_per_epoch
        return write_test_result(
            self.out, pred, threshold, epoch, self.bundle.label_names, run_info, self.curves, steps
        )

    def close(self) -> None:
        super().close()
        if getattr(self, "owns_group", False):
            dist.shutdown()
