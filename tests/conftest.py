"""Shared test helpers: small random scene stores in the project's layout."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from ramer.batch import ROLE_NONE, ROLE_NONSPEAKER, ROLE_SPEAKER
from ramer.data import features as F
from ramer.data.store import SceneStore

# `pytest -n N` (the Makefile's test command): each worker gets its share of the cores, in this
# process and in the CLI runs it starts (torch's default is every core, in every worker)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _SHARE = max(1, _CORES // _WORKERS)
    torch.set_num_threads(_SHARE)
    os.environ.setdefault("OMP_NUM_THREADS", str(_SHARE))

# a test that checks a reader closes what it opens when reading fails: a file left open is an error
# (a ResourceWarning when it is collected, raised in the collector: an unraisable exception)
CLOSES_WHAT_IT_OPENS = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


def for_data(sets) -> list[str]:
    """``--set`` arguments (``["--set", "k=v", ...]``) or ``k=v`` settings less the embedded
    benchmark's generator settings (``data.synthetic.*``), which a command reading data from a path
    refuses (``config.check_generator_sets``)."""
    sets = list(sets)
    if sets and sets[0] == "--set":
        kept = for_data(sets[1::2])
        return [x for s in kept for x in ("--set", s)]
    return [s for s in sets if not s.startswith("data.synthetic.")]


@contextmanager
def pipe_at(path: Path):
    """A named pipe at ``path`` whose writer closes it as soon as a reader opens it, for every reader:
    a load that reads it gets an empty file (so a test without the check fails on its message, not
    by hanging)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    done = threading.Event()

    def write():
        while not done.is_set():
            os.close(os.open(path, os.O_WRONLY))  # waits for a reader
            time.sleep(0.01)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield path
    finally:
        done.set()
        while writer.is_alive():  # waiting for a reader: be one, so that it sees it is done
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            writer.join(0.1)


LABELS9 = ("neutral", "joy", "anger", "disgust", "sadness", "surprise", "fear", "anticipation", "trust")


def random_store(
    n: int = 12,
    dims: tuple[int, int, int] = (16, 8, 12),
    n_labels: int = 5,
    persons: tuple[int, int] = (1, 4),
    segments: tuple[int, int] = (2, 5),
    personality_dim: int | None = 7,
    with_target: bool = True,
    seed: int = 0,
) -> SceneStore:
    """A store of ``n`` random multi-party scenes: one speaker per segment has text and audio,
    visual present with probability 0.7; a target (person, segment) per scene when asked."""
    rng = np.random.default_rng(seed)
    grid = np.stack([rng.integers(persons[0], persons[1] + 1, n), rng.integers(segments[0], segments[1] + 1, n)], 1)
    sizes = grid[:, 0] * grid[:, 1]
    T, Q = int(sizes.sum()), int(grid[:, 0].sum())
    present = np.zeros((T, 3), dtype=bool)
    target = np.full((n, 2), -1, dtype=np.int32)
    role = np.full(n, ROLE_NONE, dtype=np.int8)
    off = 0
    for i, (P, S) in enumerate(grid):
        speakers = rng.integers(0, P, S)
        for s in range(S):
            present[off + speakers[s] * S + s, :2] = True
        present[off : off + P * S, 2] = rng.random(P * S) < 0.7
        if with_target:
            p, s = int(rng.integers(0, P)), int(rng.integers(0, S))
            target[i] = (p, s)
            role[i] = ROLE_SPEAKER if speakers[s] == p else ROLE_NONSPEAKER
        off += P * S
    feats = [rng.normal(size=(T, d)).astype(np.float32) for d in dims]
    for k in range(3):
        feats[k] *= present[:, k : k + 1]
    labels = (rng.random((n, n_labels)) < 0.3).astype(np.uint8)
    pers = pers_present = None
    if personality_dim:
        pers = rng.normal(size=(Q, personality_dim)).astype(np.float32)
        pers_present = np.ones(Q, dtype=bool)
    return SceneStore(
        text=feats[0],
        audio=feats[1],
        visual=feats[2],
        present=present,
        token_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        grid=grid.astype(np.int32),
        labels=labels,
        target=target,
        role=role,
        person_offsets=np.concatenate([[0], np.cumsum(grid[:, 0])]).astype(np.int64),
        character=rng.integers(0, 8, Q).astype(np.int32),
        label_names=tuple(f"l{j}" for j in range(n_labels)),
        ids=[f"s{i}" for i in range(n)],
        personality=pers,
        personality_present=pers_present,
    )


@pytest.fixture
def store() -> SceneStore:
    return random_store()


# A stand-in for the text model of `ramer data import`: a unit vector drawn from the text's hash.
def fake_vector(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).normal(size=F.TEXT_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def fake_text(monkeypatch):
    """The text model replaced by ``fake_vector``; ``calls`` records every batch of texts asked for."""
    calls: list[list[str]] = []

    def embed(texts, advance=None):
        calls.append(list(texts))
        if advance is not None:
            advance(len(texts))
        return np.stack([fake_vector(t) for t in texts]) if texts else np.zeros((0, F.TEXT_DIM), np.float32)

    monkeypatch.setattr(F, "embed_texts", embed)
    return calls


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is fastest, and steadier on a shared machine
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a test module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run of 2 epochs on tiny synthetic data (``test_recipe.tiny_cfg``, late fusion):
    ``(folder, config)``."""
    from test_recipe import tiny_cfg

    from ramer.data.synthetic import generate
    from ramer.train.recipe import Recipe

    out = tmp_path_factory.mktemp("run") / "run"
    cfg = tiny_cfg(extra=["train.epochs=2"])
    Recipe(cfg, out, bundle=generate(cfg.data.synthetic)).run()
    return out, cfg


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped after epoch 1 of 3 (what ``train --resume`` continues): a model file and a
    training state."""
    from test_recipe import Stop, stop_after, tiny_cfg

    from ramer.data.synthetic import generate
    from ramer.train.recipe import Recipe

    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(Stop):
        Recipe(tiny_cfg(), out, bundle=generate(tiny_cfg().data.synthetic), hooks=(stop_after(1),)).run()
    return out
