"""Scoring a trained model: ``predict`` (every scene of a split, in order, no shuffle, no drop),
the forked scoring pool, devices and precisions. Used by training (validation, test) and by
everything that scores a trained run (``api``, ``ramer eval``/``predict``/``export``, the
benchmarks); it knows nothing of training.

``apply_missing`` gives a run's splits with its extra missing rate applied, the same masks for
training and for a later evaluation of the run. ``prediction_records`` / ``read_predictions``:
the predictions file (JSON lines) that ``ramer predict`` writes and ``ramer view --preds`` reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ramer import dist
from ramer.config import Config, DataConfig
from ramer.data import DataBundle, SceneStore, check_complete
from ramer.errors import RamerError, ScoresNotFinite, first_line, is_probability
from ramer.metrics import ARGMAX, finite_scores
from ramer.models.base import output_probs, package_of, unit_scores
from ramer.paths import loads_json

SPLIT_SALT = {"train": 1, "valid": 2, "test": 3}


@dataclass
class Predictions:
    scores: np.ndarray  # (n, C) probabilities
    labels: np.ndarray  # (n, C) 0/1
    role: np.ndarray  # (n,)
    ids: list[str]


def resolve_device(name: str, instead: str = "use --set train.device=cpu", what: str = "train.device") -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device, checked against this machine; ``instead``
    says what to do where CUDA is missing or another device is asked for (Apple's ``mps``: the models
    and the classical baselines' float64 arrays are not tested there), and it differs for training
    and for a trained run; ``what`` names where the device was asked for."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RamerError(f"{what}: unknown device '{name}' (cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise RamerError(f"{what} is '{name}': ramer runs on cpu or cuda, not {dev.type}; {instead}")
    if dev.type == "cpu" and dev.index not in (None, 0):  # torch takes cpu:1 and runs on the one CPU device
        raise RamerError(f"{what}: unknown device '{name}' (cpu, cuda or cuda:N; the CPU is one device, cpu)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RamerError(f"{what} is '{name}' but CUDA is not available here; {instead}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise RamerError(f"{what} is '{name}' but this machine has {count} CUDA device(s)")
    return dev


def extra_missing_rate(data: DataConfig, split: str) -> float:
    """The extra missing rate the config ``data`` applies to ``split`` (``data.missing_at``: every
    split, or test only); 0 where it applies none."""
    return data.missing_rate if data.missing_at == "all" or split == "test" else 0.0


def apply_missing(bundle: DataBundle, cfg: Config) -> dict[str, SceneStore]:
    """The splits with the config's extra missing rate applied (seeded per split)."""
    check_complete(cfg.data)  # complete inputs take no extra missing rate
    out = {}
    for name, store in bundle.splits.items():
        rate = extra_missing_rate(cfg.data, name)
        out[name] = store.with_missing(rate, cfg.train.seed * 7919 + SPLIT_SALT.get(name, 9)) if rate > 0 else store
    return out


def autocast(device: torch.device, precision: str = "fp32"):
    """``torch.autocast`` to bfloat16 for ``precision == "bf16"``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating type of a model's weights (float32 for a model without any)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def to_inference_precision(model: nn.Module, precision: str) -> nn.Module:
    """``bf16``: the whole model cast to bfloat16 for inference (weights and buffers; ``predict``
    then casts the inputs too). Faster on CPU than autocast, which converts activations back and
    forth around every matrix product and normalisation (docs/PERFORMANCE.md); its scores are
    checked against fp32 in ``benchmarks/throughput.py`` and the tests. ``fp32``: unchanged."""
    return model.to(torch.bfloat16) if check_precision(precision) == "bf16" else model


def check_precision(precision: str) -> str:
    """``precision`` if it is one ramer knows (fp32, bf16), else a RamerError."""
    if precision not in ("fp32", "bf16"):
        raise RamerError(f"unknown precision '{precision}' (fp32 or bf16)")
    return precision


# how torch words an operation given a float32 and a bfloat16 operand (the last: an RNN's ValueError)
BF16_MIXED = ("must have the same dtype", "expected scalar type", "BFloat16", "does not match weight dtype")


def not_bf16_safe(model: nn.Module, error: Exception) -> RamerError | None:
    """The one line for a model of another package that makes float32 where its weights and features
    are bfloat16 (``--precision bf16``), from torch's ``error`` (a RuntimeError; an RNN's ValueError);
    None for anything else, a bug of ramer's own models included, which keeps its traceback."""
    ours = package_of(model) == "ramer"
    if ours or model_dtype(model) != torch.bfloat16 or not any(w in str(error) for w in BF16_MIXED):
        return None
    return RamerError(
        f"model {type(model).__name__}: failed with its weights and features in bfloat16 (--precision bf16): "
        f"{first_line(error)}; make its masks and constants in the features' type (x.dtype), not float(), or "
        "score without --precision bf16"
    )


def predict(
    model: nn.Module,
    store: SceneStore,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    shard: bool = False,
    workers: int = 1,
) -> Predictions:
    """Scores for every scene of ``store``, in order: no shuffle, no drop.

    ``shard``: in a distributed run each rank scores one contiguous block of the scenes and the
    blocks are gathered in rank order (no padding, so no duplicate), giving every rank all scores.
    ``workers``: CPU only, the scenes are split into at most that many contiguous blocks of whole
    batches, each scored by a forked process of one thread (``_score_forked``).
    """
    if workers > 1:
        if shard or device.type != "cpu":
            raise RamerError("scoring with several worker processes is for CPU, outside distributed runs")
        check_fork(workers)  # refused on a system without a safe fork, whatever the number of batches
    was_training = model.training
    model.eval()
    n = len(store)
    part = dist.eval_slice(n) if shard else slice(0, n)
    if model_dtype(model) != torch.float32:  # a model cast whole (``to_inference_precision``): no autocast
        precision = "fp32"
    blocks = _batch_blocks(part, batch_size, workers)
    try:  # the model's mode back even when scoring stops (an error, Ctrl-C in a notebook)
        if len(blocks) > 1:
            out = _score_forked(model, store, blocks, batch_size, device, precision)
        else:
            out = _score_range(model, store, part.start, part.stop, batch_size, device, precision)
    except (RuntimeError, ValueError) as e:
        if (said := not_bf16_safe(model, e)) is None:
            raise
        raise said from None
    finally:
        model.train(was_training)
    if shard:
        out = dist.gather_arrays(out)
    if len(out) != n:  # no figure on more or fewer samples than the split holds (an assert: gone under -O)
        raise RamerError(f"model {type(model).__name__}: scoring gave {len(out)} rows of scores for {n} samples")
    try:  # NaN scores (a diverged model) are refused before anything uses or writes them
        finite_scores(out)
    except ScoresNotFinite as e:
        raise ScoresNotFinite(f"model {type(model).__name__}: {e}") from None
    return Predictions(out, np.asarray(store.labels), np.asarray(store.role), list(store.ids))


@torch.inference_mode()
def _score_range(
    model: nn.Module, store: SceneStore, start: int, stop: int, batch_size: int, device: torch.device, precision: str
) -> np.ndarray:
    """Scores ``(stop - start, C)`` of scenes ``start..stop`` of ``store``, batch by batch, in order."""
    dtype = model_dtype(model)
    scores = [np.zeros((0, len(store.label_names)), dtype=np.float32)]
    for first in range(start, stop, batch_size):
        batch = store.collate(np.arange(first, min(stop, first + batch_size))).to(device, dtype)
        with autocast(device, precision):
            scores.append(batch_scores(model, batch))
    return np.concatenate(scores)


def batch_scores(model: nn.Module, batch) -> np.ndarray:
    """``model``'s probabilities for ``batch`` as a float32 array ``(B, C)``, its output checked
    against the model contract (``base.output_probs``, ``base.unit_scores``). The model is given
    the batch with its labels zeroed, as the exported graph is (``export``): scores never see the
    annotations they are measured against, whatever a model's forward reads (a model of another
    package that feeds its labels forward while training, and forgets to stop)."""
    batch = dataclasses.replace(batch, labels=torch.zeros_like(batch.labels))
    probs = output_probs(model, model(batch), batch.size, len(batch.label_names))
    return unit_scores(model, probs.float().cpu().numpy())


_STARTED = "started"  # a worker's first message: it runs Python code (``_score_forked`` waits for it)
_START_WAIT = 60.0  # seconds: a forked worker that has not started by then never will


def _score_block(
    send, model: nn.Module, store: SceneStore, bounds: tuple[int, int], *settings, parent: int, ends: list
) -> None:
    """In a forked worker: the scores of one block (``settings``: batch size, device, precision) on
    one thread, sent to the parent as ``(True, scores)`` or
    ``(False, the exception)``, which carries the worker's traceback (as ``multiprocessing.Pool``'s
    do: its ``__cause__`` when raised in the parent). It ends with its ``parent`` (killed, or
    stopped by a signal only it was sent), and closes the parent's ends of the pipes that the fork
    copied (``ends``), so a send that no one will read fails rather than waits: a worker left blocked
    in a send held its memory and the caller's output pipes for ever."""
    import gc
    import signal
    from multiprocessing.pool import ExceptionWithTraceback

    gc.freeze()  # what the fork copied, garbage of the parent's included, is never collected here
    gc.enable()  # the parent forked with its collector off (``_collector_off``): on for this worker's own
    send.send(_STARTED)  # past the fork's own clean-up, which some libraries' state can hang (``_START_WAIT``)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler (a server's) would keep it alive
    dist.die_with_parent(parent)
    for end in ends:
        end.close()
    # One thread: the OpenMP of torch's Linux builds (GNU libgomp) keeps the parent's pool of threads,
    # which the fork did not copy; a parallel region here waited for them for ever (two threads or more)
    torch.set_num_threads(1)
    try:
        result = (True, _score_range(model, store, *bounds, *settings))
    except BaseException as e:  # Ctrl-C too: the parent stops the other workers
        result = (False, ExceptionWithTraceback(e, e.__traceback__))
    try:
        send.send(result)
    except Exception as e:  # scores or an exception that do not pickle
        what = result[1].exc if not result[0] else e
        send.send((False, RamerError(f"a scoring process: {type(what).__name__}: {first_line(what)}")))


def _batch_blocks(part: slice, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """``part`` cut into at most ``workers`` non-empty contiguous blocks of whole batches (so every
    batch is the one a single process would score): one block per batch at most, however many
    workers are asked for (``--workers 10**30`` scores as ``--workers`` the number of batches)."""
    n_batches = -(-(part.stop - part.start) // batch_size)
    workers = min(workers, n_batches)  # no cut or process for a worker without a batch
    cuts = [part.start + batch_size * (n_batches * k // workers) for k in range(workers)] + [part.stop]
    return [(a, min(b, part.stop)) for a, b in zip(cuts, cuts[1:]) if a < min(b, part.stop)]


def check_fork(workers: int) -> None:
    """``workers`` > 1 score in forked processes: elsewhere than on Linux a RamerError naming the
    option. Windows has no fork; macOS has one, but a process forked there without ``exec`` may crash
    or hang in the system's frameworks (Python starts processes by spawn there since 3.8), and spawned
    workers would each load the model and the data again, which is what forking saves."""
    import multiprocessing
    import sys

    if sys.platform == "darwin" or "fork" not in multiprocessing.get_all_start_methods():
        raise RamerError(
            f"--workers {workers} (workers={workers}) scores in forked processes, which only Linux gives "
            f"(this is {sys.platform}); use --workers 1: one process, on all of its threads"
        )


def _score_forked(
    model: nn.Module,
    store: SceneStore,
    blocks: list[tuple[int, int]],
    batch_size: int,
    device: torch.device,
    precision: str,
) -> np.ndarray:
    """Scores of ``blocks`` from one forked process each, of one thread (``_score_block``: no more
    is safe after a fork), gathered in order.

    Threads of one process meet at every one of the many small ops of a batch; processes of one
    thread each never wait for each other (docs/PERFORMANCE.md has the measured gain). Forked, the
    workers inherit the model and the data without copying them (``check_fork``: Linux only): each
    call its own processes, so threads that score at once (a web server's) never share them. A
    worker that ends without its scores (killed: out of memory?) is a RamerError, not a wait without
    end (as ``multiprocessing.Pool`` waits for the task of a dead worker); an error in one, or in
    this process (Ctrl-C), stops the others at once. So is a worker that has not started
    (``_START_WAIT``): a fork from a thread frees the other threads' state in the child, and state of
    a library that waits there for threads the fork did not copy hangs it before any code of ours
    runs. A worker never collects the garbage it inherits (``_collector_off``)."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")  # predict checked it
    workers, parts = [], [None] * len(blocks)
    try:
        with _collector_off():
            for bounds in blocks:
                receive, send = ctx.Pipe(duplex=False)
                ends = [receive, *(r for _, r in workers)]  # this process's ends, which the fork copies
                worker = ctx.Process(
                    target=_score_block,
                    args=(send, model, store, bounds, batch_size, device, precision),
                    kwargs={"parent": os.getpid(), "ends": ends},
                    daemon=True,
                )
                worker.start()
                send.close()  # the worker's end
                workers.append((worker, receive))
        waiting, starting = set(range(len(blocks))), set(range(len(blocks)))
        forked = time.monotonic()
        while waiting:
            # scores sent wake this; a worker killed is seen by its exit code (its end of the pipe
            # may live on in a process that another thread forked meanwhile)
            wait([workers[i][1] for i in waiting], timeout=1.0)
            for i in sorted(waiting):
                worker, receive = workers[i]
                if receive.poll():  # started, scores, an exception, or the end of a pipe no process holds
                    try:
                        said = receive.recv()
                    except EOFError:
                        raise _worker_ended(worker, len(blocks)) from None
                    except Exception as e:  # an exception of the worker's that does not rebuild here
                        raise RamerError(f"a scoring process: {type(e).__name__}: {first_line(e)}") from None
                    if said == _STARTED:
                        starting.discard(i)
                        continue
                    ok, parts[i] = said
                    if not ok:
                        raise parts[i]
                    waiting.discard(i)
                elif worker.exitcode is not None and not receive.poll():  # ended without sending
                    raise _worker_ended(worker, len(blocks))
            if starting and time.monotonic() - forked > _START_WAIT:
                raise RamerError(
                    f"scoring in {len(blocks)} forked processes: {len(starting)} did not start within "
                    f"{_START_WAIT:g} s of the fork (state of a library in this process that a forked process "
                    "cannot free?); score in this process (--workers 1, workers=1)"
                )
    finally:
        for worker, _ in workers:
            if worker.is_alive():
                worker.terminate()
        for worker, receive in workers:
            worker.join(5.0)
            if worker.is_alive():  # still sending scores no one reads, say: it cannot stop on its own
                worker.kill()
                worker.join()
            receive.close()
    return np.concatenate(parts)


_FORKING = threading.Lock()  # one call's forks at a time: ``_collector_off`` turns off the process's collector


@contextlib.contextmanager
def _collector_off():
    """The forks of one call with this process's automatic garbage collection off, so each worker
    starts with it off and freezes what it inherited before anything collects (``_score_block``):
    garbage of this process in a cycle whose clean-up waits for its own threads (a PyAV stream or
    frame a user's code dropped) hung the worker whose collector freed it while it scored, the fork
    having copied none of those threads. Nothing is frozen here, so this process collects as before,
    and a freeze of its own (a server that freezes before it forks) stays as it made it."""
    import gc

    with _FORKING:
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if enabled:
                gc.enable()


def _worker_ended(worker, n: int) -> RamerError:
    """The error for a forked scoring process that ended without its scores."""
    worker.join()  # ended: its exit code
    code = worker.exitcode
    why = f"exit code {code}: killed, out of memory?" if code < 0 else f"exit code {code}"
    return RamerError(
        f"scoring in {n} forked processes: one ended before its scores came back ({why}); score with fewer "
        "workers, or in this process (--workers 1, workers=1)"
    )


# ---------------------------------------------------------------------- the predictions file
ROLE_WORDS = {1: "speaker", 0: "nonspeaker"}


def prediction_records(
    store: SceneStore, probs: np.ndarray, chosen: np.ndarray, threshold: float | np.ndarray | str
) -> list[dict]:
    """The lines of ``ramer predict`` (what ``ramer view --preds`` reads back): per sample of
    ``store``, in order, its id, target (person, segment; ``None`` for a whole-scene sample), role,
    probs (label -> probability, the exact value the decision compared: ``probs > threshold`` on the
    file's numbers gives its ``labels``), labels (the decision) and the run's threshold (a number,
    ``"argmax"``, or an object label -> number for per-label thresholds)."""
    names = store.label_names
    if isinstance(threshold, str):
        thr: float | str | dict[str, float] = threshold
    elif np.ndim(threshold) == 0:
        thr = float(threshold)
    else:
        thr = {n: float(v) for n, v in zip(names, threshold)}
    out = []
    for i, sample_id in enumerate(store.ids):
        out.append(
            {
                "id": sample_id,
                **_whom(store, i),
                "probs": dict(zip(names, probs[i].tolist())),
                "labels": [n for n, on in zip(names, chosen[i]) if on],
                "threshold": thr,
            }
        )
    return out


def _whom(store: SceneStore, i: int) -> dict:
    """Sample ``i``'s ``target`` and ``role`` as a predictions line gives them."""
    p, s = (int(v) for v in store.target[i])
    return {"target": {"person": p, "segment": s} if p >= 0 else None, "role": ROLE_WORDS.get(int(store.role[i]))}


def check_record_matches(store: SceneStore, i: int, rec: dict, source: str) -> None:
    """A predictions line matched to sample ``i`` by its id must be of the same target and role:
    predictions made on other data that reuses the ids (another seed of the generator, a table
    edited and imported again) would otherwise be shown as this data's."""
    for key, want in _whom(store, i).items():
        if key in rec and rec[key] != want:
            raise RamerError(
                f"{source}: sample '{rec['id']}' has {key} {json.dumps(rec[key])} there and {json.dumps(want)} "
                "in the data; were these predictions made on this data?"
            )


def _threshold_problem(threshold, label_names) -> str | None:
    """Why a predictions line's ``threshold`` is not one ``prediction_records`` writes (``None``:
    it is one, or it is absent)."""
    if threshold is None or threshold == ARGMAX or is_probability(threshold):
        return None
    if (
        isinstance(threshold, dict)
        and set(threshold) == set(label_names)
        and all(map(is_probability, threshold.values()))
    ):
        return None
    return f"'threshold' must be a number in [0, 1], \"{ARGMAX}\" or an object label -> number in [0, 1]"


def read_predictions(path: str | Path, label_names: tuple[str, ...]) -> list[dict]:
    """The records of a ``ramer predict`` file, checked line by line against ``label_names`` (the
    data's); a bad file is a RamerError naming it, the line and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise RamerError(
            f"{path}: " + ("is a folder, not a predictions file" if path.is_dir() else "predictions file not found")
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM an editor saved first is skipped, as data import does
    except (OSError, UnicodeDecodeError) as e:
        raise RamerError(f"{path}: unreadable predictions file ({e})") from None
    records, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            rec = loads_json(line)
        except json.JSONDecodeError as e:
            raise RamerError(
                f"{where}: not JSON ({e.msg}); expected one object per line, as ramer predict writes"
            ) from None
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
            raise RamerError(f"{where}: expected an object with a string 'id', 'probs' and 'labels' (ramer predict)")
        probs, labels = rec.get("probs"), rec.get("labels")
        if not isinstance(probs, dict) or not all(map(is_probability, probs.values())):
            raise RamerError(f"{where}: 'probs' must map each label to a probability in [0, 1]")
        if set(probs) != set(label_names):
            raise RamerError(
                f"{where}: labels {sorted(probs)} differ from the data's {sorted(label_names)}; "
                "were these predictions made on this dataset?"
            )
        if not isinstance(labels, list) or not all(isinstance(x, str) and x in probs for x in labels):
            raise RamerError(f"{where}: 'labels' must be a list of label names from 'probs'")
        if len(set(labels)) != len(labels):
            raise RamerError(f"{where}: 'labels' names a label twice")
        if problem := _threshold_problem(rec.get("threshold"), label_names):
            raise RamerError(f"{where}: {problem}")
        if rec["id"] in seen:
            raise RamerError(f"{where}: sample id '{rec['id']}' appears twice")
        seen.add(rec["id"])
        records.append(rec)
    if not records:
        raise RamerError(f"{path}: holds no predictions (an empty file)")
    return records
