"""One long process doing many units of work (``ramer tune``'s trials, ``ramer bench --jobs 1``'s
runs, the Python API called in a loop): what a unit leaves behind in the process (file descriptors,
threads, children, torch's thread count) does not grow with the units. The service case (load,
predict, drop) is tests/test_api_service.py's."""

import gc
import multiprocessing
import os
import threading
from pathlib import Path

import pytest
import torch
from rich.console import Console

from ramer.config import build_config
from ramer.errors import LossNotFinite, RamerError
from ramer.train import run_training
from ramer.train.recipe import Recipe

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd"),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

TINY = [
    "data.synthetic.n_train=48",
    "data.synthetic.n_valid=24",
    "data.synthetic.n_test=24",
    "model.hidden=16",
    "model.ffn=32",
    "model.heads=2",
    "train.epochs=2",
    "train.batch_size=16",
    "train.threads=1",
]
QUIET = Console(stderr=True, quiet=True)


def open_files(under: Path) -> list[str]:
    """The files under ``under`` this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own descriptor)
            continue
        if target.startswith(str(under)):
            found.append(target)
    return found


def process_state() -> tuple:
    """What a unit must leave as it found it: descriptors, threads, children, torch's thread count."""
    return (
        len(os.listdir("/proc/self/fd")),
        threading.active_count(),
        len(multiprocessing.active_children()),
        torch.get_num_threads(),
    )


@pytest.fixture
def no_collection():
    """The cyclic garbage collector off: what a unit leaves open stays open until the process closes it
    (a long loop collects now and then, so a leak piles up between collections, not always)."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_tune_leaves_its_study_db_closed_call_after_call(tmp_path, no_collection):
    """``tune`` called again and again in one process (``ramer bench --tune-trials`` tunes each model
    so, a notebook a grid of studies): each call left its ``study.db`` open twice after it returned
    (Optuna's pooled connections, the main thread's and the heartbeat thread's), 2 more descriptors a
    call until a garbage collection, and the file open where the user moves or removes the folder."""
    pytest.importorskip("optuna")
    from ramer.tune import tune, tune_config

    base = tune_config("late_fusion", None, TINY)
    tune(base, tmp_path / "warm", trials=1, console=QUIET)  # imports, first-use caches
    before = process_state()
    for k in range(3):
        tune(base, tmp_path / f"s{k}", trials=1, console=QUIET)
        assert open_files(tmp_path) == [], k
    tune(base, tmp_path / "s0", trials=2, console=QUIET)  # the same study continued
    assert open_files(tmp_path) == []
    assert process_state() == before


def test_a_refused_study_leaves_its_storage_closed(tmp_path, no_collection):
    """A study refused once its storage is open (a folder of another model's search) closes it too."""
    pytest.importorskip("optuna")
    from ramer.tune import tune, tune_config

    tune(tune_config("late_fusion", None, TINY), tmp_path, trials=1, console=QUIET)
    before = open_files(tmp_path)  # none: tune_leaves_its_study_db_closed
    for _ in range(2):
        with pytest.raises(RamerError, match="holds the search of late_fusion"):
            tune(tune_config("mult", None, TINY), tmp_path, trials=1, console=QUIET)
        assert open_files(tmp_path) == before


def live(kind) -> int:
    """Objects of ``kind`` alive or waiting for the garbage collector."""
    return sum(issubclass(type(o), kind) for o in gc.get_objects())  # type(): no deprecated getattr


def test_a_trial_leaves_no_run_behind_however_it_ends(tmp_path, monkeypatch, no_collection):
    """Each trial's run (its model, optimiser state, scores: on the GPU too) stayed in a reference
    cycle after the trial, until a garbage collection, which GPU memory does not prompt: the trial
    kept the recipe, whose hook kept the trial's records; a pruned trial's, and a diverged one's,
    in the exception Optuna keeps. A trial completed, one pruned, one diverged: no run, no tensor left."""
    optuna = pytest.importorskip("optuna")
    from ramer.tune import tune, tune_config

    class PruneTrialOne(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number == 1

    real_epoch = Recipe.train_epoch

    def train_epoch(self, epoch, bar):
        if self.out.name == "trial-0002" and epoch == 2:
            raise LossNotFinite(f"epoch {epoch} step 0: loss is not finite (nan); lower train.lr?")
        return real_epoch(self, epoch, bar)

    monkeypatch.setattr(Recipe, "train_epoch", train_epoch)
    base = tune_config("late_fusion", None, TINY)
    tune(base, tmp_path / "warm", trials=1, console=QUIET)  # imports (module-level tensors among them)
    gc.collect()
    before = live(Recipe), live(torch.Tensor)
    summary = tune(base, tmp_path / "study", trials=3, console=QUIET, pruner=PruneTrialOne())
    assert (summary.summary["complete"], summary.summary["pruned"]) == (1, 2)
    assert (live(Recipe), live(torch.Tensor)) == before


def test_run_training_in_a_loop_leaves_nothing_open(tmp_path):
    """``run_training`` over a grid in one process (the API's loop, ``bench --jobs 1``), with TensorBoard
    curves: after the first run, each further run leaves no descriptor, thread, child or torch thread
    count of its own."""
    pytest.importorskip("tensorboard")

    def one(k):
        cfg = build_config(None, [*TINY, "train.tensorboard=true", "train.threads=2", f"train.seed={k}"])
        cfg.model.name = "late_fusion"
        run_training(cfg, tmp_path / f"r{k}", console=QUIET)

    one(0)  # imports, first-use caches
    before = process_state()
    for k in range(1, 4):
        one(k)
    gc.collect()
    assert open_files(tmp_path) == []
    assert process_state() == before
