"""Process-group facts and the few collectives training needs (single process: rank 0 of 1).

Launch: ``torchrun --nproc_per_node=N -m ramer train ...`` (or ``ramer train --nproc N``, which
runs that as ``python -m ramer.dist ...``: ``launch``, torchrun ending with an exit code and
without a traceback). torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; ``init_from_env`` joins the group from them (backend gloo on CPU, nccl on CUDA).
Without those variables everything here is a no-op and the run is one process.

Sharding (``shard_indices``, ``eval_slice``) and the gathers are plain functions of
``rank()``/``world_size()``, so they are tested without a launcher.

A collective here that fails because another process of the run has ended (gloo: the connection to
it closed) raises a ``RamerError`` (``collective``): one line after that process's own error, not
this process's traceback of the broken connection.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import os
import signal
import sys

import numpy as np
import torch
import torch.distributed as dist

from ramer.errors import RamerError, env_count
from ramer.paths import signal_answered_by


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return env_count("LOCAL_RANK", 0)


def launched() -> bool:
    """True inside a torchrun (or equivalent) launch with more than one process."""
    return env_count("WORLD_SIZE", 1) > 1 and "RANK" in os.environ


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's, a container's or systemd's stop) read as Ctrl-C (``sigterm_as_interrupt``)."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """``Terminated`` on SIGTERM while the block runs, in the main thread of a process torchrun did
    not start (its agent stops workers with SIGTERM, and a worker waiting in a collective would not
    run the handler); elsewhere nothing changes. The handler found is put back after."""
    if launched():
        yield
        return

    def terminated(signum, frame) -> None:
        raise Terminated

    with signal_answered_by(signal.SIGTERM, terminated):
        yield


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group torchrun describes; returns this process's device.

    On CUDA each process takes GPU ``LOCAL_RANK`` (``cuda`` without an index means that one).
    Idempotent: an already initialised group is kept.
    """
    if device.type == "cuda":
        index = local_rank() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise RamerError(f"LOCAL_RANK {index} but only {torch.cuda.device_count()} CUDA device(s) here")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if launched() and not is_dist():
        backend = backend_for(device)
        if backend == "nccl" and not dist.is_nccl_available():
            raise RamerError("distributed CUDA training needs NCCL, which this torch build lacks")
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        # a process that ends while the others connect to it (its error right after the start) is the
        # same one line as in a collective
        collective(dist.init_process_group)(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return device


def shutdown() -> None:
    if is_dist():
        dist.destroy_process_group()


# What gloo says when the process at the other end of a connection has ended (exited, killed).
PEER_ENDED = ("Connection closed by peer", "Connection reset by peer")


def peer_ended(error: BaseException) -> bool:
    """Whether ``error`` is a collective's failure because another process of the group ended."""
    return isinstance(error, RuntimeError) and any(text in str(error) for text in PEER_ENDED)


# Set when a collective of this process found that another process had ended (``collective``).
_peer_gone = False


def collective(fn):
    """``fn`` (which waits for the other processes) with a lost peer as one ``RamerError`` line: the
    process that ended has said why (its own error, or torchrun's line naming its exit code)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _peer_gone
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            if not peer_ended(e):
                raise
            _peer_gone = True
            who = (
                (rank(), world_size())
                if is_dist()
                else (os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1"))
            )
            raise RamerError(
                f"process {who[0]} of {who[1]}: another process of this run ended first (its error, or "
                "torchrun's line naming its exit code, says why); this one stops too"
            ) from None

    return wrapper


@collective
def barrier() -> None:
    if is_dist():
        dist.barrier()


# ---------------------------------------------------------------------- sharding
def shard_indices(order: np.ndarray, batch_size: int, steps: int | None = None) -> np.ndarray:
    """This rank's share of one epoch's sample order (the same ``order`` on every rank).

    Like ``DistributedSampler(shuffle=True)``: the order is padded by repeating its start so that
    every rank gets the same number of samples, then rank ``r`` takes every ``world``-th sample
    from ``r``. Step ``k`` of every rank then reads samples ``k*B*world ... (k+1)*B*world`` of
    the (padded) order, so ``world`` processes at per-rank batch ``B`` see the samples that one
    process at batch ``B*world`` would. ``steps`` caps the number of per-rank batches.
    """
    world, r = world_size(), rank()
    n = len(order)
    if world == 1:
        out = order
    else:
        per_rank = -(-n // world)
        total = per_rank * world
        padded = np.concatenate([order, np.resize(order, total - n)]) if total > n else order
        out = padded[r:total:world]
    if steps is not None:
        out = out[: steps * batch_size]
    return out


def eval_slice(n: int) -> slice:
    """This rank's contiguous, non-overlapping block of ``n`` evaluation samples (no duplicates)."""
    world, r = world_size(), rank()
    per_rank, extra = divmod(n, world)
    start = r * per_rank + min(r, extra)
    return slice(start, start + per_rank + (1 if r < extra else 0))


# ---------------------------------------------------------------------- collectives
@collective
def gather_arrays(part: np.ndarray) -> np.ndarray:
    """Concatenate every rank's array along axis 0, in rank order (rows may differ per rank)."""
    if not is_dist():
        return part
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, part)
    return np.concatenate(parts)


@collective
def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``x`` (n_r, ...) concatenated in rank order; ``n_r`` may differ.

    Sizes are exchanged first, then the rows are padded to the largest size, gathered and
    trimmed, so no padded row comes back. Not differentiable (queue and prototype updates).
    """
    if not is_dist():
        return x
    sizes = _row_counts(x)
    padded = _pad_rows(x, max(sizes))
    bufs = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(bufs, padded)
    return torch.cat([b[:s] for b, s in zip(bufs, sizes)])


def all_gather_rows_with_grad(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's rows of ``x`` (one tensor per rank); the gradient flows back to every rank's rows.

    The backward pass sums the gradient that every rank's loss sends to each row, so a loss that
    reads other ranks' rows trains them as one process on the joined batch would.
    """
    if not is_dist():
        return [x]
    sizes = _row_counts(x)
    parts = _GatherRows.apply(_pad_rows(x, max(sizes)))
    return [p[:s] for p, s in zip(parts, sizes)]


@collective
def _row_counts(x: torch.Tensor) -> list[int]:
    """Every rank's number of rows of ``x``, in rank order."""
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    return [int(s.item()) for s in sizes]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows`` (differentiable), contiguous for a collective."""
    if rows > x.shape[0]:
        x = torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])
    return x.contiguous()


class _GatherRows(torch.autograd.Function):
    """All-gather equal-sized tensors; backward: each rank's slice of the summed gradients."""

    @staticmethod
    @collective
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bufs = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(bufs, x)
        return tuple(bufs)

    @staticmethod
    @collective
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        total = torch.stack(grads).contiguous()  # (world, rows, ...): what each rank's loss sent
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[rank()]


@collective
def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@collective
def all_true(flag: torch.Tensor) -> bool:
    """A boolean tensor that is True on every rank (a per-rank check every rank must act on alike)."""
    if not is_dist():
        return bool(flag)
    t = flag.to(torch.int32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


@collective
def broadcast_from_main(x: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.broadcast(x, src=0)
    return x


@collective
def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@collective
def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over the ranks (logging)."""
    if not is_dist() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= world_size()
    return dict(zip(keys, t.tolist()))


# ---------------------------------------------------------------------- launcher
# The pid of the `ramer train --nproc` that starts the launcher, read by it (``launch``): taken by the
# parent itself, so a parent killed while the launcher starts is seen; a launcher run by hand has none.
PARENT_ENV = "RAMER_PARENT_PID"


def die_with_parent(parent: int) -> None:
    """Linux: this process is sent SIGTERM when ``parent`` (the process that started it) ends, by
    SIGKILL too, which gives the parent no chance to stop it; so no worker trains on unseen, holding
    its run's lock, after the command was killed. Elsewhere nothing. Called first thing by bench's
    workers and by the ``--nproc`` launcher (which then stops its workers as on Ctrl-C)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl to call: as elsewhere
        return
    if os.getppid() != parent:  # the parent ended before prctl could take effect
        os.kill(os.getpid(), signal.SIGTERM)


# Seconds between torchrun's looks at its workers (see ``launch``): at 0.1 s (torchrun's default) a
# loaded machine stopped a waiting process now and then before it had said why it stops.
MONITOR_S = 1.0


def end_process(code: int) -> None:
    """End a process that torchrun started with ``code`` by ``os._exit`` (after its command returned:
    files written, group destroyed; the interpreter's teardown aborted now and then). One that stopped
    because another process had ended first waits, up to a few of torchrun's looks at its workers, to
    be stopped by it: torchrun takes the failure it sees first as the run's (its line, the launcher's
    exit code), and the process that ended first is then the one it names (a worker killed by
    SIGKILL: 137, not this one's 2)."""
    import time

    sys.stdout.flush()
    sys.stderr.flush()
    if _peer_gone:
        try:
            interval = float(os.environ.get("PET_MONITOR_INTERVAL") or 0.1)  # set by launch; torchrun's own 0.1
        except ValueError:
            interval = 0.1
        time.sleep(min(3 * interval + 1.0, 30.0) if math.isfinite(interval) and interval >= 0 else 1.3)
    os._exit(code)


def launch(argv: list[str]) -> int:
    """torchrun (``torch.distributed.run``) with the arguments ``argv``; returns an exit code where
    torchrun raises and prints a traceback: the first failed worker's (its error is its own output;
    128 + S for one killed by signal S), 128 + S when this process got signal S (130: Ctrl-C).
    ``OMP_NUM_THREADS`` is 1 where unset, as torchrun would make it, without torchrun's banner.
    torchrun looks at its workers every ``MONITOR_S`` seconds (``--monitor-interval``, unless given).
    On Windows the rendezvous store is told not to use libuv (``USE_LIBUV=0``, unless set): torch's
    Windows builds lack it, yet torchrun's store asks for it, and every launch failed there."""
    import signal

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if PARENT_ENV in os.environ:  # started by `ramer train --nproc`: killed, torchrun stops the workers
        die_with_parent(int(os.environ.pop(PARENT_ENV)))
    if sys.platform == "win32":  # the workers inherit it: their process group's store is the same kind
        os.environ.setdefault("USE_LIBUV", "0")
    # torchrun sets it to 1 where unset, with a banner to tune it: train.threads sets each process's threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # how often torchrun looks for an ended worker, then stops the others (its --monitor-interval, 0.1 s
    # unless given): the others, waiting on the one that ended, have this long to say so in one line
    if not os.environ.get("PET_MONITOR_INTERVAL"):  # set and empty: as unset (torchrun refuses "")
        os.environ["PET_MONITOR_INTERVAL"] = str(MONITOR_S)
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code
    except SignalException as e:  # torchrun has stopped the workers
        return 128 + int(e.sigval)
    except KeyboardInterrupt:  # before torchrun's own handlers were set: no worker started
        return 128 + signal.SIGINT
    return 0


if __name__ == "__main__":  # python -m ramer.dist ARGS: what ramer train --nproc runs
    sys.exit(launch(sys.argv[1:]))
