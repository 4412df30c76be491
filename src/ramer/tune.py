"""``ramer tune``: search a model's settings with Optuna, each trial a normal training run.

- Space: ``ramer.models.spaces`` (the model's own entry, or the common one); a key the user sets
  with ``--set`` is kept at that value, not searched.
- Sampler: TPE, made anew before every trial and seeded by ``--seed`` and the number of trials the
  study holds, a failed one whose retry took its place not counted (``sampler_seed``): trial k draws
  the same point whether the study ran straight through or was stopped and continued (between
  trials, or in one), and a second process sharing the study draws new points. TPE reads
  its startup count and its model from the study's finished trials, not from the sampler. Pruner: median, on the
  validation selection score each epoch reports (micro-F1; weighted F1 on single-label data),
  once 5 trials have completed (from the 6th trial on, one at a time) and from epoch 3 on.
- Objective: the best validation selection score of the run (the epoch the checkpoint keeps), with
  early stopping (``train.patience``, 5 unless set). Test metrics are written to the trial's folder
  as by ``ramer train``, never read here. With ``--trial-seeds K`` a trial trains ``K`` runs, seeds
  ``train.seed`` to ``train.seed + K - 1``, one after the other, and its value is the mean of their
  best scores (on small or noisy data one seed's score is partly luck); the pruner reads the first
  run's epochs. A study keeps the ``K`` it was made with.
- Study: ``OUT/study.db`` (SQLite), or ``--storage URL`` (any database Optuna supports, not one held in
  memory: ``in_memory_sqlite``), study name = the model name. ``--trials N`` is the study's total:
  trials run until the study holds N finished (complete or pruned) trials, counting those it
  already has, so the same command continues an interrupted study, and several processes given one
  storage share the N. A trial that was running
  when its process died is marked failed (at once when the process ran on this machine, else after
  the heartbeat grace period), its folder is removed, and it does not count; a trial stopped by
  Ctrl-C is marked failed too. Either way its values are queued (``requeue``): the next trial tries
  them first. A retry whose process died is not queued again (a setting that kills its process,
  e.g. out of memory, is not tried for ever); one stopped by Ctrl-C is.
- Outputs in OUT: ``trial-NNNN/`` (a ``ramer train`` run folder per trial; with ``K`` seeds a
  folder ``trial-NNNN/seed-S`` per seed), ``best.yaml`` (the full config of the best trial: ``ramer
  train --config OUT/best.yaml``), ``trials.csv`` and ``trials.md`` (number, state, value, steps,
  seconds, values; with ``K`` seeds also each seed's score; steps, epochs and seconds are the ``K``
  runs' sum, steps to best and the best epoch their mean; a pruned trial's value is its first
  run's last reported score, and a note names the seed that diverged), ``tune.json`` (budget,
  counts, best trial, space). Rewritten after every trial.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from rich.console import Console

from ramer import checkpoint as ckpt
from ramer.config import (
    Config,
    as_today,
    build_config,
    check_flag_sets,
    check_generator_sets,
    dump_config,
    kept_from_file,
    result_differences,
    set_keys,
    with_values,
)
from ramer.console import plain_console, plural
from ramer.data import DataBundle, load_bundle, read_as_converted
from ramer.data.store import resolve_task
from ramer.errors import LossNotFinite, RamerError, first_line, first_of, is_finite, is_whole
from ramer.metrics import METRIC_NAMES, SELECTION, markdown_table
from ramer.models import CLASSICAL, is_known, set_model
from ramer.models.spaces import Param, format_value, space_for, suggest
from ramer.paths import atomic_write_text, make_folders, read_json, remove_made, work_folder
from ramer.train import run_training
from ramer.train.inputs import bench_notes
from ramer.train.recipe import (
    check_loss_weights,
    check_training_values,
    foreign_run_files,
    progress,
    selection_score,
)
from ramer.version import __version__, version_note

STUDY_FILE = "study.db"
TRIAL_FOLDER = "trial-{:04d}"
SEED_FOLDER = re.compile(r"seed-\d+")  # a run of a trial of --trial-seeds 2 or more
DEFAULT_TRIALS = 20
DEFAULT_SETS = ("train.patience=5",)  # before the user's --set: each trial trains to convergence
TPE_STARTUP = 5  # random trials before TPE models the results
PRUNER_STARTUP, PRUNER_WARMUP = 5, 3  # median pruning once 5 trials have completed, from epoch 3 on
HEARTBEAT, GRACE = 60, 180  # seconds: a trial without a heartbeat for GRACE is stale (another machine)
LOCK_NOTE_AFTER = 5  # seconds the study file may stay locked before the user is told the command waits
HOST = socket.gethostname()


def require_optuna():
    """The ``optuna`` module, or a clear error when the optional extra is missing."""
    try:
        import optuna
    except ImportError:
        raise RamerError("ramer tune needs Optuna: pip install 'ramer[tune]'") from None
    return optuna


class BudgetTaken(Exception):
    """Raised in a trial that other processes' trials leave no budget for (the trial is not run)."""


@dataclass
class TuneResult:
    out: Path
    summary: dict  # what tune.json holds


def tune_config(
    model: str, config: str | Path | None, overrides: list[str] | tuple[str, ...] = (), data: str | None = None
) -> Config:
    """The config every trial starts from: the YAML file, ``DEFAULT_SETS`` (but a key a user's
    config file sets), ``--set``, the model, the data."""
    owned = [key for key in set_keys(overrides) if key in ("model.name", "model.ablations")]
    if owned:
        raise RamerError(f"--set {owned[0]}: --model names the model (an ablation preset: --model ramer-no_shuffle)")
    check_flag_sets(overrides, {"--data": ("data.path",)} if data is not None else {})
    cfg = build_config(config, [*kept_from_file(config, DEFAULT_SETS), *overrides])
    set_model(cfg, model)
    if data is not None:
        cfg.data.path = data
    check_generator_sets(cfg, overrides)
    return cfg


# ---------------------------------------------------------------------- the study
@contextlib.contextmanager
def storage_errors(optuna, url: str):
    """Errors of opening a study's storage (Optuna's, and SQLAlchemy's as they are: a bad URL, an
    unreachable server, a damaged file) as one RamerError naming ``url``."""
    try:
        yield
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as e:
        raise RamerError(f"cannot open the study at {url}: {first_line(e)}") from None
    except Exception as e:
        if type(e).__module__.startswith("sqlalchemy"):
            raise RamerError(f"cannot open the study at {url}: {first_line(e)}") from None
        raise


def check_folder_model(out: Path, model: str, studies: list[str]) -> None:
    """One folder holds the search of one model: another model's trials would write over its trial
    folders, ``best.yaml`` and ``tune.json``. Its model is read from ``tune.json`` and ``studies``
    (the study names of its ``study.db``)."""
    found = set(studies)
    if (out / "tune.json").is_file():
        summary = read_json(out / "tune.json")
        if isinstance(summary, dict) and isinstance(summary.get("model"), str):
            found.add(summary["model"])
    others = sorted(found - {model})
    if others:
        raise RamerError(
            f"{out} holds the search of {', '.join(others)}; searching {model} there would write over its trial "
            "folders and best.yaml: use another --out"
        )


def check_folder_study(out: Path, study_id: str, url: str) -> None:
    """One folder holds the trials of one study: a study in another storage (``--storage``) that
    searched there would remove the trial folders of the same numbers as its own and write over
    ``best.yaml`` and ``tune.json``. The folder's study is the ``study_id`` its ``tune.json``
    records (a folder written before ramer recorded it: not checked)."""
    summary = read_json(out / "tune.json") if (out / "tune.json").is_file() else None
    held = summary.get("study_id") if isinstance(summary, dict) else None
    if isinstance(held, str) and held != study_id:
        raise RamerError(
            f"{out} holds the trials of another study than the one {url} holds; searching there would remove its "
            f"trial folders and write over its best.yaml: use another --out, or the storage it was made with"
        )


def open_study(
    optuna,
    out: Path,
    storage: str | None,
    base: Config,
    seed: int,
    pruner=None,
    trial_seeds: int = 1,
    bundle: DataBundle | None = None,
    console: Console | None = None,
    searched: list[str] | None = None,
):
    """Create or load the study (``study_name``) and check it was made with ``base``,
    ``trial_seeds`` runs per trial and the ``searched`` keys (the space less the keys ``--set``
    fixes; ``None``: not checked), and that ``out`` holds no other model's search. A new study
    records the fingerprints of ``bundle`` (the data at ``data.path``); a study that recorded them
    takes the same data under another spelling of its path (``ds``, ``./ds``, ``/abs/ds``).
    ``console`` hears that the command waits when ``study.db`` is locked by another process."""
    url = storage or study_url(out)
    if storage is None:
        check_study_file(out / STUDY_FILE, console)
    with storage_errors(optuna, url):
        rdb = _storage(optuna, url)
    try:
        return _open_study(optuna, rdb, url, out, storage, base, seed, pruner, trial_seeds, bundle, searched)
    except BaseException:  # refused: the storage's connections are closed, not left to the garbage collector
        close_storage(rdb)
        raise


def study_name(optuna, rdb, base: Config, studies: list[str]) -> str:
    """The study's name in its storage: the model's, a RAMer preset's own (``ramer-no_shuffle``), so
    that full RAMer and each preset are studies of their own in one storage. A preset's study that
    the storage (``studies``: the names it holds) holds under the model's name, as ramer named it
    before, is continued under that name."""
    if not base.model.ablations:
        return base.model.name
    name = "-".join([base.model.name, *base.model.ablations])
    if name not in studies and base.model.name in studies:
        held = optuna.load_study(study_name=base.model.name, storage=rdb).user_attrs.get("config")
        model = held.get("model") if isinstance(held, dict) else None
        if isinstance(model, dict) and model.get("ablations") == list(base.model.ablations):
            return base.model.name
    return name


def _open_study(
    optuna, rdb, url: str, out: Path, storage, base: Config, seed: int, pruner, trial_seeds, bundle, searched
):
    """``open_study`` in the storage ``rdb`` opened at ``url``."""
    with storage_errors(optuna, url):
        studies = optuna.get_all_study_names(storage=rdb)
        name = study_name(optuna, rdb, base, studies)
    check_folder_model(out, name, studies if storage is None else [])  # a shared storage holds many
    with storage_errors(optuna, url):
        study = optuna.create_study(
            storage=rdb,
            study_name=name,
            direction="maximize",
            load_if_exists=True,
            pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP, n_warmup_steps=PRUNER_WARMUP),
        )
    check_stored_study(study, url)
    if (study_id := study.user_attrs.get("study_id")) is None:  # a new study, or one made before the key
        study_id = uuid.uuid4().hex
        study.set_user_attr("study_id", study_id)
    check_folder_study(out, study_id, url)
    stored = study.user_attrs.get("config")
    mine = base.model_dump(mode="json")
    made_with = study.user_attrs.get("trial_seeds", 1 if stored is not None else None)  # 1: made before the key
    if made_with is not None and made_with != trial_seeds:
        raise RamerError(
            f"{url} holds a study of {name} whose trials train {made_with} seed(s) each; continue it "
            f"with --trial-seeds {made_with} (ramer tune, or ramer bench --tune-trials), or use another --out "
            "(or ramer tune's --storage)"
        )
    if made_with is None:
        study.set_user_attr("trial_seeds", trial_seeds)
    was = study.user_attrs.get("searched")  # None: made before the key (or not checked)
    if searched is not None and was is not None and sorted(was) != sorted(searched):
        gone, new = sorted(set(was) - set(searched)), sorted(set(searched) - set(was))
        what = [f"this command's --set fixes {', '.join(gone)}, which it searches"] if gone else []
        what += [f"it fixed {', '.join(new)}, which this command searches"] if new else []
        raise RamerError(
            f"{url} holds a study of {name} that searches other keys ({'; '.join(what)}); continue it "
            "with the --set keys it was made with, or use another --out (or ramer tune's --storage)"
        )
    if searched is not None and was is None:
        study.set_user_attr("searched", sorted(searched))
    task = None if bundle is None else resolve_task(bundle, base.data.task)
    if stored is None:
        study.set_user_attr("config", mine)
        study.set_user_attr("ramer_version", __version__)  # named where a later ramer cannot continue it
        if bundle is not None:
            study.set_user_attr("data", bundle.fingerprints())
            study.set_user_attr("task", task)
        differ = []
    else:
        differ = sorted(result_differences(as_today(stored, url), mine))
    recorded = study.user_attrs.get("data") or {}  # empty: a study made before it was recorded
    if differ in ([], ["data.path"]) and bundle is not None and recorded:
        if not ckpt.same_data(recorded, bundle):  # the data made again at its path, or other data
            other = ckpt.changed_splits(recorded, bundle) + sorted(set(bundle.splits) - set(recorded))
            raise RamerError(
                f"{url} holds a study of {name} scored on other data than {base.data.path} holds now "
                f"(split {', '.join(other)} differs: made again since?); its trials' scores are of that data: "
                "use another --out (or ramer tune's --storage) to search on this data"
            )
        differ = []  # the same data, its path spelled another way or not
    if task is not None and study.user_attrs.get("task", task) != task:  # the same arrays, another --task
        raise RamerError(
            f"{url} holds a study of {name} on {study.user_attrs['task']} data, and {base.data.path} is "
            f"{task} now (imported again with another --task?): its trials' scores are another metric; use "
            "another --out (or ramer tune's --storage) to search on this data"
        )
    if differ:
        raise RamerError(
            f"{url} holds a study of {name} with another config (differs in "
            f"{', '.join(differ[:6])}{', ...' if len(differ) > 6 else ''}); use another --out (or ramer "
            f"tune's --storage), or the study's own --config/--set{_made_by(study)}"
        )
    fresh_sampler(optuna, study, seed)
    return study, url


def close_storage(rdb) -> None:
    """Close the database connections of Optuna's ``rdb`` storage (``_storage``), or of a study's. Optuna
    keeps them pooled (the main thread's and the heartbeat thread's) until the storage is garbage
    collected: each ``tune`` in one process (``ramer bench --tune-trials``, a notebook's loop) left its
    ``study.db`` open twice after it returned, file descriptors that piled up between collections."""
    rdb = getattr(rdb, "_storage", rdb)  # a study's storage
    rdb = getattr(rdb, "_backend", rdb)  # Optuna wraps an RDBStorage in a cache
    if hasattr(rdb, "engine"):
        rdb.remove_session()
        rdb.engine.dispose()


def _made_by(study) -> str:
    """``"; the study was written by ramer X; ..."`` where another ramer made ``study`` (its
    ``ramer_version``), whose config may hold keys this one lacks; nothing for this version's or
    one from before the attribute (``check_stored_study`` holds it to one short line)."""
    written = study.user_attrs.get("ramer_version")
    if not isinstance(written, str) or written == __version__:
        return ""
    return f"; the study was {version_note(written)}"


def check_study_file(path: Path, console: Console | None = None) -> None:
    """A ``study.db`` that is an SQLite database of other tables than Optuna's is not a study: Optuna
    would add its tables to it (a database of the user's, not written by ``ramer tune``). A file that
    does not open as SQLite is left to Optuna, which says so. A file another process keeps locked for
    ``LOCK_NOTE_AFTER`` seconds is said to ``console``: Optuna then waits for it, silently."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=LOCK_NOTE_AFTER)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError as e:
        if "locked" in str(e) and console is not None:
            console.print(
                f"note: {path} is locked by another process; waiting until it is released",
                highlight=False,
                soft_wrap=True,
            )
        return
    except sqlite3.Error:
        return
    if tables and "studies" not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise RamerError(
            f"{path}: an SQLite database of other tables ({shown}), not an Optuna study; ramer tune keeps its "
            "study in study.db: use another --out"
        )


# What ``Objective`` and ``requeue`` record of a trial (``trial.user_attrs``), and the value each holds.
TRIAL_ATTRS = {
    "worker": lambda v: (
        isinstance(v, dict) and isinstance(v.get("host"), str) and is_whole(v.get("pid"), 1) and v["pid"] < 2**31
    ),
    "run": lambda v: isinstance(v, str),
    "note": lambda v: isinstance(v, str),
    "seconds": lambda v: is_finite(v) and v >= 0,
    "seed_values": lambda v: isinstance(v, list) and all(map(is_finite, v)),
    "retry_of": is_whole,
    **{key: is_whole for key in ("best_epoch", "best_step", "epochs_run", "steps")},
}


def check_stored_study(study, url: str) -> None:
    """The study a storage holds, as ``ramer tune`` writes it: its ``trial_seeds`` a count, its
    ``config`` and ``data`` objects, its ``searched`` a list of keys, each trial's values finite and
    its records (``TRIAL_ATTRS``) of their kinds. A study Optuna cannot read back (a value nested too
    deeply, an unknown distribution), or one of other values, is a RamerError naming ``url``;
    nothing is written."""
    try:
        attrs = study.user_attrs
        trials = study.get_trials(deepcopy=False)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise RamerError(f"cannot read the study at {url}: {first_line(e) or type(e).__name__}") from None
    problem = _study_problem(attrs, trials)
    if problem:
        raise RamerError(
            f"{url} holds a study ramer tune did not write: {problem}; use another --out (or ramer tune's --storage)"
        )


def _study_problem(attrs: dict, trials) -> str | None:
    """The first record of a study (its ``attrs``, its ``trials``) that ``ramer tune`` would not have
    written, or None."""
    if "trial_seeds" in attrs and not is_whole(attrs["trial_seeds"], 1):
        return f"its 'trial_seeds' {attrs['trial_seeds']!r:.40} is not a count of 1 or more"
    for key in ("config", "data"):
        if key in attrs and not isinstance(attrs[key], dict):
            return f"its '{key}' is not an object, but {type(attrs[key]).__name__}"
    if "searched" in attrs and not (
        isinstance(attrs["searched"], list) and all(isinstance(k, str) for k in attrs["searched"])
    ):
        return f"its 'searched' {attrs['searched']!r:.40} is not a list of keys"
    if "ramer_version" in attrs and "ramer_version" not in ckpt.written_by(attrs):
        return f"its 'ramer_version' {attrs['ramer_version']!r:.40} is not a version"
    if "study_id" in attrs and not (isinstance(attrs["study_id"], str) and attrs["study_id"]):
        return f"its 'study_id' {attrs['study_id']!r:.40} is not an identifier"
    for t in trials:
        bad = [k for k, ok in TRIAL_ATTRS.items() if k in t.user_attrs and not ok(t.user_attrs[k])]
        if bad:
            return f"trial {t.number}'s '{bad[0]}' {t.user_attrs[bad[0]]!r:.40} is not what ramer tune records"
        if t.values is not None and not all(map(is_finite, t.values)):
            return f"trial {t.number}'s value {t.values[0]!r:.40} is not a finite score"
    return None


def sampler_seed(seed: int, n: int) -> int:
    """The TPE seed of the trial drawn when the study holds ``n`` trials: a hash of ``--seed`` and
    ``n`` (not their sum, which two processes given seeds 0 and 1 would share at counts 2 and 1)."""
    return int.from_bytes(hashlib.blake2b(f"{seed} {n}".encode(), digest_size=4).digest(), "big")


def fresh_sampler(optuna, study, seed: int) -> None:
    """Give ``study`` a new TPE sampler seeded by ``seed`` and the trials the study holds: set
    before every trial, so what trial k draws depends on the study's earlier trials, not on whether
    this process drew them (a sampler kept across trials continues its random stream; one made when
    a stopped study is continued does not). A failed trial (stopped by Ctrl-C, or its process gone)
    that has a retry (``requeue``), or that was stopped before it drew all its values, is not counted:
    the retry takes its place, and the trials after draw what they would have drawn had it not been
    stopped. One that drew and has no retry (a retry that failed too) is counted, so the next trial
    draws anew rather than the setting that failed twice."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    fail = optuna.trial.TrialState.FAIL
    searched = study.user_attrs.get("searched")  # read from the storage once, not per trial
    n = sum(not (t.state == fail and (t.number in retried or not drew_all(t, searched))) for t in trials)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, n), n_startup_trials=TPE_STARTUP)


def _storage(optuna, url: str, attempts: int = 5):
    """Optuna's RDB storage at ``url``, with heartbeats. Two processes that create a new database at
    the same moment race to make its tables (the loser sees "table ... already exists" or a unique
    constraint fail): try again, and the tables are there."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # wait for the other writer
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT, grace_period=GRACE
                )
        except Exception as e:
            if type(e).__name__ not in ("OperationalError", "IntegrityError") or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def in_memory_sqlite(url: str) -> bool:
    """Whether ``url`` names an SQLite database in memory (``sqlite://``, ``sqlite:///:memory:``,
    ``sqlite:///file::memory:?uri=true``, ``...?mode=memory``): a study there is gone when the command
    ends, and each thread's connection (the heartbeat thread's) opens a database of its own. Read as
    SQLAlchemy reads an SQLite URL: ``sqlite[+DRIVER]://`` then ``/DATABASE`` and ``?QUERY``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].strip().lower() != "sqlite":
        return False
    db, _, query = rest.partition("?")
    db = db[1:] if db.startswith("/") else db
    return db in ("", ":memory:") or db.startswith("file::memory:") or "memory" in parse_qs(query).get("mode", [])


def study_url(out: Path) -> str:
    """The SQLite URL of ``out``'s study file; its path quoted, since the URL parser reads a ``?`` there
    as the start of its options (the database went to a file beside the folder) and ``%41`` as ``A``."""
    return "sqlite:///" + str((out / STUDY_FILE).resolve()).replace("%", "%25").replace("?", "%3F")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie, killed but not yet reaped, does not).
    Windows has no signal 0 (``os.kill(pid, 0)`` sends Ctrl-C there): taken as alive, so the trial is
    failed after the heartbeat grace period, as one of another machine is."""
    if sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def fail_stale(optuna, study) -> list[int]:
    """Mark failed every running trial whose process is gone: on this machine at once (its pid),
    elsewhere after the heartbeat grace period; queue the values of each (``requeue``). Returns the
    numbers of the trials it marked."""
    states = optuna.trial.TrialState
    running = {t.number for t in study.get_trials(deepcopy=False, states=(states.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") == HOST and worker.get("pid") != os.getpid() and not _alive(worker.get("pid", -1)):
            study.tell(t.number, state=states.FAIL, skip_if_finished=True)
        elif not worker and t.datetime_start and (now - t.datetime_start).total_seconds() > GRACE:
            # made by Optuna's ask, then its process stopped before the objective began (no worker)
            study.tell(t.number, state=states.FAIL, skip_if_finished=True)
    stopped = [t for t in study.get_trials(deepcopy=False, states=(states.FAIL,)) if t.number in running]
    for t in stopped:
        requeue(study, t)
    return [t.number for t in stopped]


def fail_own(optuna, study, before: dict[int, object]) -> None:
    """After a Ctrl-C: mark failed the trial this process left running, and queue its values
    (``requeue``). Optuna's ask makes a trial (or takes a queued one) before the objective names its
    worker, so a Ctrl-C in between leaves a running trial without one: a trial that was not in the
    study, or was queued, in ``before`` (each trial's state before this process asked) and has no
    worker is taken as this process's. Left running, it held a place of the budget until
    ``fail_stale`` failed it."""
    states = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        worker = t.user_attrs.get("worker")
        asked = before.get(t.number, states.WAITING) == states.WAITING
        if worker.get("host") == HOST and worker.get("pid") == os.getpid() if worker else asked:
            study.tell(t.number, state=states.FAIL, skip_if_finished=True)
            requeue(study, study.get_trials(deepcopy=False)[t.number], interrupted=True)


def interrupted(error: BaseException | None) -> bool:
    """A Ctrl-C, or an error raised while handling one: Optuna 5's trial loop, stopped while it
    records a finished trial, raises an UnboundLocalError from its ``finally``."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__context__
    return False


def say_stopped(console: Console, numbers: list[int]) -> None:
    """One line for the trials ``fail_stale`` marked: a study that went on without a word trained
    their values again (the README says so; the command did not)."""
    if numbers:
        which = ", ".join(map(str, numbers))
        console.print(
            f"note: trial{'s' if len(numbers) > 1 else ''} {which} stopped before the end (killed or interrupted): "
            "marked failed, its run folder removed if this --out holds it; the values of a first stop are tried "
            "again first",
            soft_wrap=True,
        )


def drew_all(trial, searched: list[str] | None) -> bool:
    """``trial`` drew a value for every key its study searches (its ``searched``; None, a study made
    before it was recorded: any value). One stopped part-way through its draw holds some of them,
    which a retry would have completed with other draws: a point no straight run tries."""
    return bool(trial.params) and (searched is None or set(searched) <= set(trial.params))


def requeue(study, trial, interrupted: bool = False) -> None:
    """Queue the values of ``trial``, stopped before it finished (Ctrl-C, or its process gone), so
    that the study's next trial (in any process) tries them first. Not for a trial that did not draw
    them all (``drew_all``: the next trial draws them anew, the same), or whose values are queued
    already (two processes may both see it stop); nor for a retry whose process died (once: a
    setting that kills its process, out of memory say, is not tried for ever). ``interrupted``: it
    was stopped in this process, by Ctrl-C or SIGTERM, which says nothing of its values: a retry so
    stopped is queued again. A retry stopped before it drew its queued values (between Optuna's ask
    and the objective) is queued again."""
    fixed, retry_of = trial.system_attrs.get("fixed_params"), trial.user_attrs.get("retry_of")
    drew = drew_all(trial, study.user_attrs.get("searched"))
    if not drew and fixed and retry_of is not None:
        waiting = study.get_trials(deepcopy=False, states=(type(trial.state).WAITING,))
        if not any(t.user_attrs.get("retry_of") == retry_of for t in waiting):
            study.enqueue_trial(fixed, user_attrs={"retry_of": retry_of})
        return
    if not drew or ("retry_of" in trial.user_attrs and not interrupted):
        return
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def remove_trial_folder(folder: Path, why: str, remove: bool = True) -> None:
    """Remove ``folder``, a trial's: what its run wrote, or its runs' folders ``seed-S`` (``--trial-seeds``).
    One that holds a file no run writes (the user's own, ``foreign_run_files``) is a RamerError naming
    it, after ``why`` (the folder's state), and nothing is removed. ``remove`` False: the check alone."""
    if folder.is_symlink() or not folder.is_dir():
        raise RamerError(f"{folder}: {why}, and not a folder of ramer's; move it, or give another --out")
    seeds = [p.name for p in folder.iterdir() if SEED_FOLDER.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    foreign = [f"{name}/{f}" for name in seeds for f in foreign_run_files(folder / name)]
    foreign += foreign_run_files(folder, also=tuple(seeds))
    if foreign:
        said = f"{why}, but it holds files no run writes ({first_of(sorted(foreign), 5)})"
        raise RamerError(f"{folder}: {said}; move them, or give another --out")
    if remove:
        shutil.rmtree(folder)


def remove_failed_folders(optuna, study, out: Path) -> None:
    """A failed trial's run folder (killed or interrupted mid-training, or its run raised an error,
    which its note in trials.md gives) is of no use: remove it (``remove_trial_folder``)."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        folder = out / TRIAL_FOLDER.format(t.number)
        if folder.exists() or folder.is_symlink():
            remove_trial_folder(folder, f"trial {t.number} failed, and its folder is removed before the search goes on")


def check_earlier_folders(study, out: Path) -> None:
    """The trial folders in ``out`` of numbers the study has not reached (an earlier search's, whose
    study is gone), which its trials remove as they reach them, are checked before any trial starts
    (``remove_trial_folder``): a file of the user's there stops the command, not a trial."""
    reached = len(study.get_trials(deepcopy=False))
    for folder in sorted(out.glob("trial-*")):
        number = folder.name.removeprefix("trial-")
        if number.isdigit() and folder.name == TRIAL_FOLDER.format(int(number)) and int(number) >= reached:
            remove_trial_folder(
                folder, f"trial {int(number)} will train here, in place of an earlier search's folder", False
            )


def counts(optuna, study) -> dict[str, int]:
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    n = {name: sum(t.state == getattr(states, name.upper()) for t in trials) for name in ("complete", "pruned")}
    n["failed"] = sum(t.state == states.FAIL for t in trials)
    n["running"] = sum(t.state == states.RUNNING for t in trials)
    n["finished"] = n["complete"] + n["pruned"]
    return n


# ---------------------------------------------------------------------- one trial
@dataclass
class RunFacts:
    """What a trial records of one seed's run, as of its last reported epoch. Kept in place of the
    run's Recipe, which holds the trial's hook: the cycle kept each trial's model, optimiser state and
    data views in memory (on the GPU too) after the trial, until a garbage collection."""

    best: dict
    steps_per_epoch: int
    epochs_run: int


class Objective:
    """Train one trial's config into ``OUT/trial-NNNN``; the value is its best validation score."""

    def __init__(
        self, optuna, study, base: Config, space, out: Path, budget: int, bundle: DataBundle, on_epoch, trial_seeds=1
    ):
        self.optuna, self.study, self.base, self.space = optuna, study, base, space
        self.out, self.budget, self.bundle, self.on_epoch = out, budget, bundle, on_epoch
        self.trial_seeds = trial_seeds
        self.number: int | None = None
        self.quiet = Console(stderr=True, quiet=True)

    def __call__(self, trial) -> float:
        optuna = self.optuna
        self.number = trial.number  # the trial this process runs (a Ctrl-C stops it: ``tune``)
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        ahead = [t for t in running if t.number < trial.number]  # started before this one, elsewhere
        if counts(optuna, self.study)["finished"] + len(ahead) >= self.budget:
            trial.set_user_attr("note", "not run: other processes' trials took the rest of the budget")
            raise BudgetTaken
        trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid()})
        values = suggest(trial, self.space)
        cfg = with_values(self.base, values, f"trial {trial.number}")
        run = self.out / TRIAL_FOLDER.format(trial.number)
        trial.set_user_attr("run", run.name)
        if run.exists() or run.is_symlink():  # a folder of an earlier study in this folder, under the same number
            remove_trial_folder(run, f"trial {trial.number} trains here, in place of an earlier search's folder")
        t0 = time.perf_counter()
        done: list = []  # what record reads of each seed's run trained so far (``RunFacts``; the current one last)

        def record(note: str | None = None) -> None:
            steps = [r.best["epoch"] * r.steps_per_epoch for r in done]
            attrs = {
                "best_epoch": round(sum(r.best["epoch"] for r in done) / len(done)),
                "best_step": round(sum(steps) / len(steps)),
                "epochs_run": sum(r.epochs_run for r in done),
                "steps": sum(r.epochs_run * r.steps_per_epoch for r in done),
                "seconds": time.perf_counter() - t0,
            }
            if self.trial_seeds > 1:
                attrs["seed_values"] = [float(r.best["score"]) for r in done]
            for key, value in {**attrs, **({"note": note} if note else {})}.items():
                trial.set_user_attr(key, value)

        def hook(index: int):
            first = index == 0

            def report(recipe, epoch: int) -> None:
                facts = RunFacts(dict(recipe.best), recipe.steps_per_epoch, recipe.epochs_run)
                done[index:] = [facts]  # this seed's, as of this epoch
                score = selection_score(recipe.log[-1]["valid"], recipe.spec.task)  # validation only
                self.on_epoch(trial.number, epoch, recipe.cfg.train.epochs, score)
                if not first:  # the pruner compares the first seed's epochs across trials
                    return
                trial.report(score, epoch)
                if trial.should_prune():
                    record(f"pruned after epoch {epoch}")
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")

            return report

        seed = cfg.train.seed
        for i in range(self.trial_seeds):
            one = cfg if i == 0 else with_values(cfg, {"train.seed": seed + i}, f"trial {trial.number}")
            folder = run if self.trial_seeds == 1 else run / f"seed-{seed + i}"
            # Raised without the run's frames: Optuna keeps a trial's exception in a reference cycle, and the
            # frames held the run (its model, optimiser state, scores; on the GPU too) until a garbage collection.
            diverged = None
            try:
                run_training(one, folder, bundle=self.bundle, console=self.quiet, hooks=(hook(i),))
            except optuna.TrialPruned as e:  # the hook's
                raise e.with_traceback(None) from None
            except LossNotFinite as e:  # a setting that diverges is a bad setting: pruned, not failed
                diverged = e.cause if self.trial_seeds == 1 else f"seed {seed + i}: {e.cause}"
            except Exception as e:  # the search stops on it; the trial's note says what it was, not "killed"
                if not interrupted(e):
                    trial.set_user_attr("note", f"failed: {type(e).__name__}: {first_line(e)}")
                raise
            if diverged is not None:
                if done:
                    record()
                trial.set_user_attr("note", diverged)
                raise optuna.TrialPruned(diverged)
        record()
        return sum(float(r.best["score"]) for r in done) / len(done)


# ---------------------------------------------------------------------- the search
def _tune(
    base: Config,
    out: str | Path,
    trials: int = DEFAULT_TRIALS,
    timeout: float | None = None,
    storage: str | None = None,
    seed: int = 0,
    fixed: set[str] | frozenset[str] = frozenset(),
    console: Console | None = None,
    bundle: DataBundle | None = None,
    pruner=None,
    trial_seeds: int = 1,
) -> TuneResult:
    """Run trials of ``base.model.name`` until the study holds ``trials`` finished trials (or
    ``timeout`` seconds have passed: no trial starts after it); write the outputs; return them.
    ``fixed``: keys left out of the search (the user's ``--set``). ``pruner``: an Optuna pruner
    (default: the median pruner above). ``trial_seeds``: runs per trial, the value their mean."""
    optuna = require_optuna()
    console = console or plain_console()
    if trials < 1:
        raise RamerError(f"--trials must be at least 1, got {trials}")
    if trial_seeds < 1:
        raise RamerError(f"--trial-seeds must be at least 1, got {trial_seeds}")
    if timeout is not None and not timeout >= 0:  # also NaN; 0 starts no trial and writes the outputs again
        raise RamerError(f"--timeout must be a number of seconds, 0 or more, got {timeout:g}")
    if base.model.name in CLASSICAL:
        raise RamerError(
            f"'{base.model.name}' is a classical model: one logistic-regression fit, nothing to tune; tune a deep model"
        )
    if storage is not None and not storage.strip():  # taken for OUT/study.db, but as a shared storage
        raise RamerError(
            "--storage: empty; give a database URL (sqlite:///FILE), or leave --storage out for OUT/study.db"
        )
    if storage is not None and in_memory_sqlite(storage):
        raise RamerError(
            f"--storage {storage}: an in-memory database holds no study after the command (and Optuna's "
            "heartbeat thread cannot share it); give sqlite:///FILE"
        )
    is_known(base.model.name)  # an installed model's module, which may register its space as it is imported
    space = space_for(base, set(fixed))
    check_space(base, space)
    out = work_folder(out, "study", make=False)
    made = make_folders(out)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial, ours (also in bench workers)
    try:
        if bundle is None:  # given by a bench, which has said its notes
            read_as_converted(base.data)
            bundle = load_bundle(base.data)
            for note in bench_notes(bundle, [base], resolve_task(bundle, base.data.task)):  # the trials are quiet
                console.print(f"note: {note}", highlight=False, soft_wrap=True)
        study, url = open_study(
            optuna, out, storage, base, seed, pruner, trial_seeds, bundle, console, [p.key for p in space]
        )
    except BaseException:
        remove_made(made)  # data or a storage that would not open: no empty folder left behind
        raise
    try:
        say_stopped(console, fail_stale(optuna, study))
        remove_failed_folders(optuna, study, out)
        check_earlier_folders(study, out)
        task = resolve_task(bundle, base.data.task)
        metric = METRIC_NAMES[SELECTION[task]]
        info = {
            "sampler": f"TPE (seed {seed}, {TPE_STARTUP} random trials first)",
            "pruner": f"median (once {PRUNER_STARTUP} trials have completed, from epoch {PRUNER_WARMUP})"
            if pruner is None
            else type(pruner).__name__,
            "space": [p.describe() for p in space],
            "fixed": sorted(fixed),
            "trial_seeds": trial_seeds,
            "study": url,
        }
        states = optuna.trial.TrialState
        t_start = time.perf_counter()
        try:
            with progress(console) as bar:
                n = counts(optuna, study)
                task_id = bar.add_task(
                    f"tune {base.model.name}", total=trials, completed=min(n["finished"], trials), info=""
                )
                console.print(
                    f"tune {base.model.name}: {trials} trials (the study holds {n['finished']} finished) -> {out}",
                    highlight=False,
                    soft_wrap=True,
                )

                def on_epoch(number: int, epoch: int, epochs: int, score: float) -> None:
                    best = _best(optuna, study)
                    so_far = f"  best {best.value:.4f} (trial {best.number})" if best else ""
                    bar.update(task_id, info=f"trial {number} epoch {epoch}/{epochs} valid {score:.4f}{so_far}")

                def after_trial(study, t) -> None:
                    n = counts(optuna, study)
                    bar.update(task_id, completed=min(n["finished"], trials))
                    if t.state in (states.COMPLETE, states.PRUNED):
                        best = _best(optuna, study)
                        a = t.user_attrs
                        value = f"{t.value:.4f}" if t.value is not None else "–"
                        so_far = f"  best {best.value:.4f} (trial {best.number})" if best else ""
                        each = " ".join(f"{v:.4f}" for v in a.get("seed_values", []))
                        each = f" (seeds {each})" if each else ""
                        console.print(
                            f"[{n['finished']}/{trials}] trial {t.number} {t.state.name.lower()}: valid {metric} "
                            f"{value}{each}{so_far}  {a.get('steps', 0)} steps  {a.get('seconds', 0.0):.1f}s",
                            highlight=False,
                            soft_wrap=True,
                        )
                    write_outputs(optuna, study, out, base, trials, task, info)

                objective = Objective(optuna, study, base, space, out, trials, bundle, on_epoch, trial_seeds)
                while True:
                    say_stopped(console, fail_stale(optuna, study))
                    n = counts(optuna, study)
                    if n["finished"] >= trials:
                        break
                    if timeout is not None and time.perf_counter() - t_start >= timeout:
                        console.print(f"--timeout {timeout:g}s reached; no new trial", highlight=False)
                        break
                    if n["finished"] + n["running"] >= trials:
                        console.print(
                            f"the rest of the budget is running in other processes ({plural(n['running'], 'trial')})",
                            highlight=False,
                        )
                        break
                    fresh_sampler(optuna, study, seed)  # this trial's draw: the same however the study was stopped
                    before = {t.number: t.state for t in study.get_trials(deepcopy=False)}
                    try:
                        study.optimize(objective, n_trials=1, callbacks=[after_trial])
                    except BudgetTaken:
                        break
                    except BaseException as e:
                        if not interrupted(e):
                            raise
                        # Optuna marks a trial stopped in the objective failed; one stopped before or
                        # after it is still running: failed here. Its values go first next time.
                        stopped = [t for t in study.get_trials(deepcopy=False) if t.number == objective.number]
                        if stopped and stopped[0].state == states.FAIL:
                            requeue(study, stopped[0], interrupted=True)
                        fail_own(optuna, study, before)
                        raise KeyboardInterrupt from None
        finally:
            summary = write_outputs(optuna, study, out, base, trials, task, info)
        return TuneResult(out=out, summary=summary)
    finally:
        close_storage(study)  # study.db is not left open after the command


@functools.wraps(_tune)
def tune(*args, **kwargs):
    # optuna's own log is quiet while the study runs (one line per trial, ramer's); afterwards, the
    # caller's process logs at the level it had (a notebook's own studies)
    try:
        import optuna
    except ImportError:  # _tune says what to install
        return _tune(*args, **kwargs)
    verbosity = optuna.logging.get_verbosity()
    try:
        return _tune(*args, **kwargs)
    finally:
        optuna.logging.set_verbosity(verbosity)


def check_space(base: Config, space: tuple[Param, ...]) -> None:
    """Every searched hidden size must divide into ``model.heads`` attention heads; the settings no run
    trains with (``check_training_values``) are refused before a study is made, for ``base`` with each
    searched key at its end farthest from a refusal and at its end nearest one: a trial that met one
    would fail, and the study keep the config that made it. ramer-authors' loss weights all 0
    (``check_loss_weights``, each searched one at its top) are refused so too: every trial would fail."""
    for p in space:
        if p.key == "model.hidden" and any(h % base.model.heads for h in p.choices or ()):
            raise RamerError(
                f"model.heads={base.model.heads} does not divide every searched model.hidden "
                f"({', '.join(map(str, p.choices))}); set model.heads (e.g. 4) or fix model.hidden with --set"
            )
    ends, far = {}, {}  # the searched values nearest to those it refuses, and farthest from them
    for p in space:
        values = p.choices or (p.low, p.high)
        if p.key in ("train.lr", "train.weight_decay"):
            ends[p.key], far[p.key] = max(values), min(values)
        elif p.key == "model.temperature":
            ends[p.key], far[p.key] = min(values), max(values)
    # what no trial can escape: base's own value of a searched key is not one a trial trains with
    check_training_values(with_values(base, far, "the search space"))
    # ramer-authors' loss weights all 0 (set with --set, so none searched): every trial learns nothing
    weights = {p.key: max(p.choices or (p.low, p.high)) for p in space if p.key.startswith("loss.w_")}
    check_loss_weights(with_values(base, weights, "the search space"))
    try:
        check_training_values(with_values(base, ends, "the search space"))
    except RamerError as e:
        searched = ", ".join(p.describe() for p in space if p.key in ends)
        raise RamerError(
            f"the search ({searched}) reaches a setting no run trains with: {e}; fix it with --set"
        ) from None


def _best(optuna, study):
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


# ---------------------------------------------------------------------- outputs
def write_outputs(optuna, study, out: Path, base: Config, budget: int, task: str, info: dict) -> dict:
    """trials.csv, trials.md, best.yaml (once a trial completed) and tune.json, from the whole study."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    n_seeds = study.user_attrs.get("trial_seeds", 1)
    seeded = n_seeds > 1  # a column of each seed's score
    header = ["number", "state", "value", "best_step", "steps", "epochs", "seconds", *keys]
    header += ["seed_values", "note"] if seeded else ["note"]
    rows = []
    for t in trials:
        a = t.user_attrs
        value = "" if t.value is None else t.value
        note = a.get("note", "killed or interrupted" if t.state.name == "FAIL" else "")
        if "retry_of" in a:  # queued by ``requeue``
            note = "; ".join(filter(None, [f"the values of trial {a['retry_of']} again", note]))
        rows.append(
            [t.number, t.state.name.lower(), value, a.get("best_step", ""), a.get("steps", ""), a.get("epochs_run", "")]
            + [round(a["seconds"], 1) if "seconds" in a else ""]
            + [t.params.get(k, "") for k in keys]
            + ([" ".join(f"{v:.4f}" for v in a.get("seed_values", []))] if seeded else [])
            + [note]
        )
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    atomic_write_text(out / "trials.csv", text.getvalue())

    n = counts(optuna, study)
    best = _best(optuna, study)
    metric = METRIC_NAMES[SELECTION[task]]
    first = base.train.seed
    seeds_text = f"s, the mean over {n_seeds} seeds (train.seed {first} to {first + n_seeds - 1})" if seeded else ""
    short = [k.split(".", 1)[1] for k in keys]  # train.lr -> lr, model.layers.text -> layers.text
    md_header = ["trial", "state", f"valid {metric}", "steps to best", "steps", "s", *short]
    md_header += ["per seed", "note"] if seeded else ["note"]
    md_rows = [
        [str(r[0]), r[1], f"{r[2]:.4f}" if r[2] != "" else "–", *(str(c) if c != "" else "–" for c in r[3:5])]
        + [f"{r[6]:.0f}" if r[6] != "" else "–"]
        + [format_value(c) if c != "" else "–" for c in r[7 : 7 + len(keys)]]
        + ([r[-2] or "–"] if seeded else [])
        + [str(r[-1])]
        for r in rows
    ]
    lines = [
        f"# Tuning {base.model.name}",
        "",
        f"Budget {budget} trials; the study holds {n['finished']} finished ({n['complete']} complete, "
        f"{n['pruned']} pruned), {n['failed']} failed, {n['running']} running. Value: the best validation "
        f"{metric} of the trial's run{seeds_text} (early stopping: train.patience {base.train.patience}, at most "
        f"{base.train.epochs} epochs)"
        + (". Steps to best: the seeds' mean; steps and s: their sum. " if seeded else ". ")
        + (f"Best: trial {best.number}, {best.value:.4f} (`best.yaml`)." if best else "No trial has completed."),
        "",
        *markdown_table(md_header, md_rows),
    ]
    atomic_write_text(out / "trials.md", "\n".join(lines) + "\n")

    best_info = None
    if best is not None:
        chosen = with_values(base, best.params, f"trial {best.number}")
        if chosen.data.path is not None:  # `ramer train --config OUT/best.yaml` works from any folder
            chosen.data.path = os.path.abspath(chosen.data.path)  # a link stays a link
        atomic_write_text(out / "best.yaml", dump_config(chosen))
        a = best.user_attrs
        best_info = {
            "trial": best.number,
            "value": best.value,
            "values": best.params,
            "best_epoch": a.get("best_epoch"),
            "best_step": a.get("best_step"),
            **({"seed_values": a.get("seed_values")} if seeded else {}),
            "seconds": a.get("seconds"),
            "run": a.get("run"),
        }
    summary = {
        "model": study.study_name,  # a preset's own name (ramer-no_shuffle), as its folder's study holds it
        "study_id": study.user_attrs.get("study_id"),  # which study the folder's trials are (check_folder_study)
        "metric": SELECTION[task],
        "budget": budget,
        **n,
        "best": best_info,
        **info,
    }
    atomic_write_text(out / "tune.json", json.dumps(summary, indent=1))
    return summary
