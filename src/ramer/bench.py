"""``ramer bench``: every model on the same data, seeds and missing-modality masks; one report.

- Models: the classical baselines (``br``, ``cc``, ``lp``), the deep baselines, ``ramer``, and
  ``ramer-<ablation>`` presets (``ramer`` with ``model.ablations`` += ``[<ablation>]``). Groups:
  ``all`` (baselines + ramer), ``ablations`` (ramer + one preset per ablation).
- Protocol: the dataset is built once; run (model, seed, rate) gets ``train.seed = seed`` and
  ``data.missing_rate = rate``, so each (seed, rate) pair has identical splits and identical
  hidden modalities for every model. Training stops early once validation has not improved for
  ``train.patience`` epochs (``train.epochs`` is the cap). Best epoch and threshold are chosen on
  validation; test once. Single-label data (``data.task``): arg-max decisions, best epoch by
  validation weighted F1, and the report leads with accuracy and weighted F1 (``COLUMNS``).
- Complete-input reference (embedded benchmark only, ``--complete``): each listed model is also
  trained once per seed on the same scenes with every modality present for every person
  (``data.synthetic.complete``, missing rate 0); its row repeats under every missing-rate table.
- Cache: ``DIR/runs/<model>/missing-<rate>/seed-<seed>/`` (complete inputs:
  ``DIR/runs/<model>@complete/missing-0/seed-<seed>/``) is a normal run directory. It is reused
  when its ``test_metrics.json`` exists, its ``config.yaml`` equals the run's config (but for
  ``data.path``, where the run records every split's fingerprint: they decide), its data has the
  fingerprints it records and its files read back whole (``read_run``); a deep run stopped
  mid-training is resumed from its ``train_state.pt`` (if that fails, a line says why and it
  starts again); anything else there (a partial or corrupt run: a line names the file) is removed
  and the run starts again. So an interrupted bench resumes where it stopped.
- Tuned settings (``--tuned DIR``, ``--tune-trials N``): each deep model runs with the values its
  search space (``ramer.models.spaces``) chose, read from ``DIR/<model>/best.yaml`` (as ``ramer tune
  --out DIR/<model>`` writes it); every other setting is the bench's, the same for every model.
  ``--tune-trials N`` first tunes every deep model with the same budget of N trials into
  ``OUT/tune/<model>`` (on the first seed, at the config's missing rate); with ``--trial-seeds K``
  each trial trains K seeds from the first and scores their mean (``ramer tune --trial-seeds``).
- Outputs: ``DIR/results.json`` (one record per run, test split; rewritten after every run, keeping
  the records it held of runs not yet read again, but for stale ones: a run folder gone, unfinished
  or of another config),
  ``DIR/report.md`` and ``DIR/plots/*.png`` (written at the end).
"""

from __future__ import annotations

import functools
import json
import os
import time
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console

from ramer import checkpoint as ckpt
from ramer.config import (
    CONFIG_DIR,
    MISSING_AT,
    Config,
    DataConfig,
    build_config,
    check_corpus_config_has_data,
    check_flag_sets,
    check_generator_sets,
    config_from_dict,
    kept_from_file,
    load_yaml_text,
    result_differences,
    set_keys,
    with_todays_defaults,
    with_values,
)
from ramer.console import plain_console, plural
from ramer.data import DataBundle, complete_data, load_bundle, read_as_converted
from ramer.data.formats import shown
from ramer.data.store import first_repeat, resolve_task
from ramer.dist import die_with_parent, sigterm_as_interrupt
from ramer.errors import FileUnreadable, RamerError, readable
from ramer.metrics import (
    METRIC_NAMES,
    SELECTION,
    format_mean_std,
    markdown_table,
    mean_std,
    oracle_report,
    scored_parts,
)
from ramer.models import (
    BASELINES,
    CLASSICAL,
    PRESETS,
    DataSpec,
    check_options,
    is_known,
    known_models,
    meta_model,
    nearest_model,
    set_model,
)
from ramer.models.spaces import SEARCHED, format_values, space_for
from ramer.paths import (
    argument,
    atomic_write,
    atomic_write_text,
    hold,
    make_folder,
    read_json,
    remove_if_empty,
    remove_temporaries,
    resolved,
    shell_join,
    work_folder,
)
from ramer.train import run_training
from ramer.train.inputs import bench_notes
from ramer.train.recipe import check_loss_weights, check_training_values, clear_run_folder, read_log
from ramer.version import __version__, newer_writer

GROUPS = {
    "all": (*BASELINES, "ramer"),
    "ablations": ("ramer", *PRESETS),
}
PARTS = ("overall", "speaker", "nonspeaker")
DEFAULT_CONFIG = CONFIG_DIR / "synthetic.yaml"

# Bench defaults, applied before the user's --set (docs/BENCH.md says why). Every deep model
# trains until validation has not improved for 5 epochs, at most 40 epochs: models are compared
# trained to convergence, not at one fixed budget. One torch thread per run, runs in parallel
# (``--jobs``): on a busy machine two threads per process were measured 50x slower than one.
DEFAULT_SETS = (
    "train.threads=1",
    "data.synthetic.n_train=2000",
    "data.synthetic.n_valid=300",
    "data.synthetic.n_test=1000",
    "train.epochs=40",
    "train.patience=5",
)
DEFAULT_SEEDS, DEFAULT_RATES = 3, (0.0, 0.3, 0.6)
QUICK_SETS = (
    "train.threads=1",
    "data.synthetic.n_train=500",
    "data.synthetic.n_valid=200",
    "data.synthetic.n_test=400",
    "train.epochs=3",
    "train.patience=1",  # can stop at epoch 2: the stopping path runs within the smoke cap
)
QUICK_SEEDS, QUICK_RATES = 1, (0.0, 0.6)
# --seeds N at most: each seed trains every model at every rate (N is also a list of seeds and of
# planned runs, made before any run: a mistyped 10**30 would fill memory and write nothing).
MAX_SEEDS = 1000


# ---------------------------------------------------------------------- settings
@dataclass
class BenchSettings:
    out: Path
    models: list[str]
    seeds: list[int]
    rates: list[float]
    missing_at: str = "all"
    data: str | None = None
    config: str | Path | None = None  # a YAML file; None: the bundled synthetic config
    overrides: list[str] = field(default_factory=list)  # the user's --set
    quick: bool = False
    jobs: int = 1  # runs trained at the same time, each in its own process
    complete: list[str] = field(default_factory=list)  # models also trained on complete inputs (reference rows)
    base: Config | None = None  # the resolved config every run starts from (``resolve_settings``)
    tuned: Path | None = None  # --tuned DIR: DIR/<model>/best.yaml per deep model
    tune_trials: int | None = None  # --tune-trials N: tune every deep model first, N trials each
    trial_seeds: int = 1  # --trial-seeds K: each of those trials trains K seeds, scored by their mean
    tuned_values: dict[str, dict] = field(default_factory=dict)  # model -> the searched keys' chosen values
    # --tuned: model -> the settings its study ran with other than this bench's (``study_otherwise``)
    tuned_otherwise: dict[str, list[str]] = field(default_factory=dict)

    @property
    def deep_models(self) -> list[str]:
        """The models that train (and are tuned): every run name but the classical fits."""
        return [m for m in dict.fromkeys([*self.models, *self.complete]) if m not in CLASSICAL]

    @property
    def base_sets(self) -> tuple[str, ...]:
        """The bench's settings over the config file: ``--quick``'s smoke settings, or the defaults
        but those a user's config file sets (its value is kept)."""
        return QUICK_SETS if self.quick else kept_from_file(self.config, DEFAULT_SETS)

    def command(self) -> str:
        """An equivalent ``ramer bench`` command line with every setting written out."""
        parts = ["ramer", "bench"]
        if self.data:
            parts += ["--data", argument(self.data)]
        if self.config:
            parts += ["--config", argument(self.config)]
        parts += [
            "--models",
            ",".join(self.models),
            "--seeds",
            str(len(self.seeds)),
            "--missing-rates",
            ",".join(f"{r:g}" for r in self.rates),
            "--missing-at",
            self.missing_at,
            "--complete",
            ",".join(self.complete),
            "--jobs",
            str(self.jobs),
            "--out",
            argument(self.out),
        ]
        if self.tuned is not None and self.tune_trials is None:
            parts += ["--tuned", argument(self.tuned)]
        if self.tune_trials is not None:
            parts += ["--tune-trials", str(self.tune_trials)]
            if self.trial_seeds > 1:
                parts += ["--trial-seeds", str(self.trial_seeds)]
        if self.quick:
            parts.append("--quick")
        for s in self.overrides:
            parts += ["--set", s]
        return shell_join(parts)


def parse_models(text: str | None, option: str = "--models") -> list[str]:
    """``all``, ``ablations`` or a comma list (groups may appear in it); unknown names are errors
    (naming ``option``)."""
    names: list[str] = []
    items = [item.strip() for item in ("all" if text is None else text).split(",")]
    twice = first_repeat(item for item in items if item)
    if twice is not None:  # a group and a name in it (all,ramer), or two groups, overlap: taken once
        raise RamerError(f"{option}: {twice} named twice; name each once")
    for item in items:
        for name in GROUPS.get(item, (item,)):
            if name and name not in names:
                names.append(name)
    unknown = [n for n in names if not is_known(n)]
    if unknown or not names:
        what = f"unknown {', '.join(unknown)}" if unknown else "empty list"
        near = nearest_model(unknown[0]) if len(unknown) == 1 else ""
        raise RamerError(f"{option}: {what}; {near}known: {', '.join(GROUPS)}, {known_models()}")
    return names


def parse_rates(text: str | None, quick: bool = False) -> list[float]:
    if text is None:
        return list(QUICK_RATES if quick else DEFAULT_RATES)
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RamerError(f"--missing-rates: expected numbers like 0,0.3,0.6, got '{text}'") from None
    if not rates:
        raise RamerError("--missing-rates: empty list; give rates like 0,0.3,0.6")
    if any(not 0.0 <= r < 1.0 for r in rates):
        raise RamerError(f"--missing-rates: each rate must be in [0, 1), got '{text}'")
    rates = [r + 0.0 for r in rates]  # + 0.0: -0 is 0
    twice = first_repeat(rates)
    if twice is not None:
        raise RamerError(f"--missing-rates: {twice:g} given twice in '{text}'; give each rate once")
    rates = sorted(rates)
    named: dict[str, float] = {}  # folder name (``run_dir``) and report heading -> rate
    for r in rates:
        if f"{r:g}" in named:
            raise RamerError(
                f"--missing-rates: {named[f'{r:g}']!r} and {r!r} would share the run folders missing-{r:g} and the "
                f"report's table 'Missing rate {r:g}'; give rates that differ within 6 significant digits"
            )
        named[f"{r:g}"] = r
    return rates


# Settings the bench gives every run from its own options (a --config file's values are replaced).
BENCH_OWNS = {
    "model.name": "--models",
    "model.ablations": "--models (an ablation preset: ramer-no_shuffle, ...)",
    "train.seed": "--seeds",
    "data.missing_rate": "--missing-rates",
    "data.missing_at": "--missing-at (all or test)",
}


def resolve_settings(
    out: str | None = None,
    models: str | None = None,
    seeds: int | None = None,
    rates: str | None = None,
    missing_at: str = "all",
    data: str | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    quick: bool = False,
    jobs: int | None = None,
    complete: str | None = None,
    tuned: str | Path | None = None,
    tune_trials: int | None = None,
    trial_seeds: int | None = None,
) -> BenchSettings:
    """Settings from the command line's values (None: the default, or the quick default)."""
    if jobs is not None and jobs < 1:
        raise RamerError(f"--jobs must be at least 1, got {jobs}")
    if missing_at not in MISSING_AT:  # the CLI's choices
        raise RamerError(f"--missing-at must be {' or '.join(MISSING_AT)}, got {missing_at!r:.40}")
    if tuned is not None and tune_trials is not None:
        raise RamerError("--tuned reads tuned configs, --tune-trials makes them: give one of them")
    if tune_trials is not None and tune_trials < 1:
        raise RamerError(f"--tune-trials must be at least 1, got {tune_trials}")
    if trial_seeds is not None and tune_trials is None:
        raise RamerError(
            "--trial-seeds sets how many seeds each trial of --tune-trials N trains: give --tune-trials too"
        )
    if trial_seeds is not None and trial_seeds < 1:
        raise RamerError(f"--trial-seeds must be at least 1, got {trial_seeds}")
    check_flag_sets(overrides or [], {"--data": ("data.path",)} if data is not None else {})
    owned = [key for key in set_keys(overrides or []) if key in BENCH_OWNS]
    if owned:
        raise RamerError(f"--set {owned[0]}: the bench sets it for every run; give {BENCH_OWNS[owned[0]]} instead")
    if tune_trials is not None:
        from ramer.tune import require_optuna

        require_optuna()  # before any work
    n_seeds = seeds if seeds is not None else (QUICK_SEEDS if quick else DEFAULT_SEEDS)
    if n_seeds < 1:
        raise RamerError(f"--seeds must be at least 1, got {n_seeds}")
    if n_seeds > MAX_SEEDS:
        raise RamerError(
            f"--seeds must be at most {MAX_SEEDS} (each seed trains every model at every missing rate), got {n_seeds}"
        )
    s = BenchSettings(
        out=Path(out or ("runs/bench-quick" if quick else "runs/bench")),
        models=parse_models(models),
        seeds=[],
        rates=parse_rates(rates, quick),
        missing_at=missing_at,
        data=data,
        config=config,
        overrides=list(overrides or []),
        quick=quick,
        jobs=jobs or default_jobs(),
    )
    s.base = base_config(s)
    s.seeds = [s.base.train.seed + k for k in range(n_seeds)]
    s.complete = parse_complete(complete, s.base)
    s.tune_trials = tune_trials
    s.trial_seeds = trial_seeds or 1
    if tune_trials is not None and not s.deep_models:
        raise RamerError(f"--tune-trials: --models {','.join(s.models)} has no deep model to tune")
    if tuned is not None:
        s.tuned = Path(tuned)
        if not s.tuned.is_dir():
            raise RamerError(f"--tuned {tuned}: no such folder (a folder of ramer tune folders, one per model)")
        if not s.deep_models:
            raise RamerError(f"--tuned: --models {','.join(s.models)} has no deep model to take tuned settings")
        s.tuned_values = {m: load_tuned(s, m) for m in s.deep_models}
    return s


# ---------------------------------------------------------------------- tuned settings
def tune_base(s: BenchSettings, model: str) -> Config:
    """The config a model is tuned with (and its searched keys are read for): the bench's run on the
    first seed at the config's missing rate."""
    base = s.base or base_config(s)
    return run_config(base, model, s.seeds[0], base.data.missing_rate)


def load_tuned(s: BenchSettings, model: str) -> dict:
    """The values ``s.tuned/<model>/best.yaml`` holds for the keys ``model``'s space searches (less
    the keys the user fixed with ``--set``, which keep the user's value)."""
    path = s.tuned / model / "best.yaml"
    if not path.is_file():
        tune = ["ramer", "tune", "--model", model, "--out", argument(s.tuned / model)]
        raise RamerError(
            f"--tuned: no tuned config for {model}: {path} not found (make it with: {shell_join(tune)}, or bench "
            "with --tune-trials N)"
        )
    tuned = build_config(path)
    cfg = tune_base(s, model)
    if (tuned.model.name, tuned.model.ablations) != (cfg.model.name, cfg.model.ablations):
        raise RamerError(f"--tuned: {path} is a config of {tuned.model.name}, not of {model}")
    tune_summary(s, model)  # read now, not after every run has trained
    s.tuned_otherwise[model] = study_otherwise(tuned, cfg)
    return {p.key: p.value(tuned) for p in space_for(cfg, set_keys(s.overrides))}


# Settings of where and how fast a run is computed, not of what it learns (but for float rounding)
HOW_IT_RUNS = ("train.threads", "train.device", "train.eval_batch_size", "train.tensorboard")


def study_otherwise(tuned: Config, cfg: Config) -> list[str]:
    """``KEY VALUE (here VALUE)`` for each setting a tuned config (a study's ``best.yaml``) holds
    otherwise than ``cfg``, the config the bench would tune the model with (``tune_base``): other
    data, another budget, another task. The model's searched keys (what the study chose), the seed,
    the keys of how a run is computed (``HOW_IT_RUNS``), the embedded benchmark's test size (a search
    reads no test) and the data's path spelled another way are not counted."""
    searched = {p.key for p in space_for(cfg, set())} | set(HOW_IT_RUNS) | {"data.synthetic.n_test"}  # test: not read
    a, b = tuned.model_dump(mode="json"), cfg.model_dump(mode="json")
    found = []
    for key in result_differences(a, b):
        if key in searched or key == "train.seed":
            continue
        held, here = (_dotted(tree, key) for tree in (a, b))
        if key == "data.path" and None not in (held, here) and resolved(held) == resolved(here):
            continue
        found.append(f"{key} {shown(held)} (here {shown(here)})")
    return found


def _dotted(tree: dict, key: str):
    """The value at dotted ``key`` of a config tree (None where a level is missing)."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def tuned_notes(s: BenchSettings) -> list[str]:
    """``--tuned``: a line per model whose study ran with other settings than this bench's
    (``study_otherwise``) or stopped short of its budget of trials (a tune killed or timed out)."""
    if s.tuned is None or s.tune_trials is not None:  # a bench's own studies are of its settings, run to the end
        return []
    notes = []
    for m in s.deep_models:
        if otherwise := s.tuned_otherwise.get(m):
            notes.append(
                f"{m}'s study ({s.tuned / m}) ran with other settings than this bench's: {', '.join(otherwise)}; "
                "its values were chosen for those (tune it with this bench's settings for a like-for-like search)"
            )
        summary = tune_summary(s, m) or {}
        budget, finished = summary.get("budget"), summary.get("finished")
        if isinstance(budget, int) and finished < budget:
            notes.append(
                f"{m}'s study ({s.tuned / m}) stopped at {finished} of its {budget} trials (killed or timed out; "
                f"run its ramer tune again to finish it)"
            )
    return notes


def tune_summary(s: BenchSettings, model: str) -> dict | None:
    """The ``tune.json`` beside a model's ``best.yaml`` (budget, counts, best trial), if any; one that
    does not read back as ``ramer tune`` writes it is a RamerError naming it."""
    path = s.tuned / model / "tune.json" if s.tuned else None
    if path is None or not path.is_file():
        return None
    summary = read_json(path)
    best = summary.get("best") if isinstance(summary, dict) else None
    if not isinstance(summary, dict) or not all(isinstance(summary.get(k), int) for k in ("finished", "pruned")):
        raise RamerError(f"{path}: not a tune summary as ramer tune writes it (no trial counts)")
    if best is not None and not (isinstance(best, dict) and isinstance(best.get("value"), (int, float))):
        raise RamerError(f"{path}: not a tune summary as ramer tune writes it (its best trial has no value)")
    return summary


def tune_fixed(summary: dict | None) -> set[str]:
    """The keys a model's tune kept at a ``--set`` value (``fixed`` of its ``tune.json``, ``summary``
    as ``tune_summary`` reads it): its ``best.yaml`` holds them, but its search did not choose them."""
    fixed = (summary or {}).get("fixed")
    return {k for k in fixed if isinstance(k, str)} if isinstance(fixed, list) else set()


def _tune_worker(cfg_tree: dict, out: str, trials: int, fixed: list[str], trial_seeds: int) -> tuple[str, dict]:
    from ramer.tune import tune

    cfg = config_from_dict(cfg_tree, "bench tune")
    quiet = Console(stderr=True, quiet=True)
    result = tune(cfg, Path(out), trials=trials, fixed=set(fixed), console=quiet, trial_seeds=trial_seeds)
    return cfg.model.name, result.summary


def tune_models(s: BenchSettings, bundle: DataBundle, console: Console) -> None:
    """``--tune-trials N``: tune every deep model with N trials into ``OUT/tune/<model>`` (a
    finished study is reused, an interrupted one continued), then read the chosen values."""
    from ramer.tune import require_optuna, tune

    require_optuna()
    s.tuned = s.out / "tune"
    fixed = sorted(set_keys(s.overrides))
    jobs = [(m, tune_base(s, m), s.tuned / m) for m in s.deep_models]
    seeds_each = f" of {s.trial_seeds} seeds" if s.trial_seeds > 1 else ""
    console.print(
        f"tuning {len(jobs)} models, {s.tune_trials} trials each{seeds_each}, {min(s.jobs, len(jobs))} at a time "
        f"-> {s.tuned}",
        highlight=False,
    )
    if s.jobs <= 1 or len(jobs) <= 1:
        for model, cfg, out in jobs:
            tune(
                cfg,
                out,
                trials=s.tune_trials,
                fixed=set(fixed),
                console=console,
                bundle=bundle,
                trial_seeds=s.trial_seeds,
            )
    else:
        from concurrent.futures import as_completed

        with worker_pool(min(s.jobs, len(jobs))) as pool:
            futures = [
                pool.submit(_tune_worker, cfg.model_dump(mode="json"), str(out), s.tune_trials, fixed, s.trial_seeds)
                for _, cfg, out in jobs
            ]
            for future in as_completed(futures):
                model, summary = future.result()
                best = summary["best"]
                console.print(
                    f"tuned {model}: {summary['finished']} trials, best valid "
                    f"{METRIC_NAMES[summary['metric']]} {best['value']:.4f} (trial {best['trial']})"
                    if best
                    else f"tuned {model}: no trial completed",
                    highlight=False,
                )
    for model, _, out in jobs:
        if not (out / "best.yaml").is_file():
            raise RamerError(f"tuning {model} completed no trial (every one pruned or failed): see {out / 'trials.md'}")
    s.tuned_values = {m: load_tuned(s, m) for m in s.deep_models}


def parse_complete(text: str | None, base: Config) -> list[str]:
    """``--complete``: the models to train on complete inputs too. Default: ``ramer`` on the
    embedded benchmark, none on other data; ``''``: none; a list on other data is an error."""
    embedded = base.data.path is None
    if text is None:
        return ["ramer"] if embedded else []
    if not text.strip():
        return []
    names = parse_models(text, "--complete")
    if not embedded:
        raise RamerError(
            f"--complete: complete inputs exist only for the embedded benchmark, not for "
            f"{base.data.path}; use --complete ''"
        )
    return names


def base_config(s: BenchSettings) -> Config:
    """The config every run starts from: the YAML file, then the bench defaults, then ``--set``
    (a converted folder's reading for the loader options they leave out: ``read_as_converted``)."""
    cfg = build_config(s.config or DEFAULT_CONFIG, [*s.base_sets, *s.overrides])
    if s.data is not None:
        cfg.data.path = s.data
    check_corpus_config_has_data(cfg)
    check_generator_sets(cfg, s.overrides)
    cfg.data.missing_at = s.missing_at
    read_as_converted(cfg.data)
    check_options(cfg)  # settings of ramer's own or of no model: before any run, not at the first it reaches
    return cfg


def run_config(base: Config, model: str, seed: int, rate: float, tuned: dict | None = None) -> Config:
    """The config of one run: ``base`` with the model (or preset), its tuned values (``tuned``: key
    -> value), seed and missing rate set."""
    cfg = base.model_copy(deep=True)
    set_model(cfg, model)
    if tuned:
        cfg = with_values(cfg, tuned, f"tuned values of {model}")
    cfg.train.seed = seed
    cfg.data.missing_rate = rate
    return cfg


COMPLETE = "@complete"  # suffix of a run name on complete inputs: ``ramer@complete``


def plan_config(base: Config, name: str, seed: int, rate: float, tuned: dict[str, dict] | None = None) -> Config:
    """The config of one planned run: ``run_config`` (with the model's values in ``tuned``: model ->
    key -> value), or for ``MODEL@complete`` the model's run at missing rate 0 on complete inputs."""
    tuned = tuned or {}
    if name.endswith(COMPLETE):
        model = name[: -len(COMPLETE)]
        cfg = run_config(base, model, seed, 0.0, tuned.get(model))
        cfg.data = complete_data(cfg.data)
        return cfg
    return run_config(base, name, seed, rate, tuned.get(name))


def run_name(record: dict) -> str:
    """A results.json record's run name: the model, with ``@complete`` for complete inputs."""
    return record["model"] + (COMPLETE if record.get("inputs") == "complete" else "")


def run_dir(out: Path, model: str, rate: float, seed: int) -> Path:
    return out / "runs" / model / f"missing-{rate:g}" / f"seed-{seed}"


# ---------------------------------------------------------------------- runs and cache
def _config_changes(run: Path, cfg: Config) -> list[str] | None:
    """The dotted keys in which the run's config differs from ``cfg`` (None: no config that reads
    back), ``SAME_RESULTS`` left out. The stored config is read back with today's defaults for keys
    added since (a new option at its default does not retrain every cached run)."""
    path = run / "config.yaml"
    readable(path)
    try:
        stored = with_todays_defaults(load_yaml_text(path.read_text()), str(path))  # aliases refused, not expanded
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RamerError):
        return None
    return result_differences(stored, cfg.model_dump(mode="json"))


def _epoch_seconds(log: list[dict]) -> float:
    """Sum of the per-epoch seconds of a run's ``metrics.jsonl`` records."""
    return sum(float(rec.get("seconds", 0.0)) for rec in log if "epoch" in rec)


def cache_state(run: Path, cfg: Config, bundle: DataBundle | None = None, stale: list | None = None) -> str:
    """``done``, ``resume`` or ``fresh`` (a ``fresh`` run's stale directory has been removed). A run
    of another config, or made on other data than ``bundle`` (its recorded split fingerprints), is
    stale: ``stale`` (where given) gets what differed, the config keys or ``"the data"``. ``data.path``
    is not compared where the run records the fingerprint of every split of ``bundle``: they say
    whether the data is the same (``ds``, ``./ds`` and ``/abs/ds`` are one dataset; other data at the
    same path is not)."""
    if not run.exists():
        return "fresh"
    with hold(run, "ramer bench"):  # a run another command is writing is neither reused nor removed
        state = _cache_state(run, cfg, bundle, stale)
    if state == "fresh":
        remove_if_empty(run)  # cleared: its lock file is gone now
    return state


def _cache_state(run: Path, cfg: Config, bundle: DataBundle | None, stale: list | None = None) -> str:
    changes = _config_changes(run, cfg)
    recorded = ckpt.read_data_fingerprints(run / "model.safetensors") if bundle is not None else {}
    if changes == ["data.path"] and bundle is not None and ckpt.same_data(recorded, bundle):
        changes = []
    if (
        changes == []
        and bundle is not None
        and ckpt.other_task(run / "model.safetensors", resolve_task(bundle, cfg.data.task))
    ):
        changes = ["the task"]  # the same arrays imported again with the other --task
    other_data = bool(changes == [] and bundle is not None and ckpt.changed_splits(recorded, bundle))
    if changes == [] and not other_data:
        if (run / "test_metrics.json").exists():
            return "done"
        if (
            cfg.model.name not in CLASSICAL
            and (run / "train_state.pt").exists()
            and (run / "model.safetensors").exists()
        ):
            return "resume"
    elif stale is not None and any((run / f).exists() for f in ("test_metrics.json", "train_state.pt")):
        # a run of other settings or data, finished or under way: removed below
        stale.append(changes or (["the data"] if other_data else ["its config.yaml, which does not read back"]))
    written = ckpt.read_written_by(run / "model.safetensors").get("ramer_version")
    if newer_writer(written):  # a newer ramer's work is not this one's to remove
        raise RamerError(
            f"{run}: a run made by ramer {written}, newer than this ramer {__version__}, and not one this "
            f"bench can reuse; it is kept: run the bench with ramer {written} or later, or give another --out"
        )
    clear_run_folder(run, "a run this bench trains again (unfinished, or of other settings or data)", ("bench.json",))
    return "fresh"


def read_run(run: Path) -> dict:
    """A finished run's fields of its results.json record (``metrics``, ``seconds``, ``PROGRESS_KEYS``,
    ``params``), read from its directory. A file that is missing, not JSON or cut short (a log
    without its final test line) is a RamerError naming the file; a ``bench.json`` (only the timing)
    that does not read back counts as missing: the seconds are the log's."""
    path = run / "test_metrics.json"
    metrics = read_json(path)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("overall"), dict):
        raise RamerError(f"{path}: no overall test metrics")
    log = _read_jsonl(run)
    if not log or log[-1].get("final") != "test":
        raise RamerError(f"{run / 'metrics.jsonl'}: does not end with the run's test line (cut short?)")
    seconds = None
    if (run / "bench.json").exists():
        try:
            timing = read_json(run / "bench.json")
            seconds = timing.get("seconds") if isinstance(timing, dict) else None
        except RamerError:
            pass
    if not isinstance(seconds, (int, float)):  # not yet timed by the bench (or made by ``ramer train``)
        seconds = _epoch_seconds(log)
    return {
        "metrics": scored_parts(metrics),
        "seconds": seconds,
        **run_progress(run),
        "params": parameter_count(run),
    }


def reuse(run: Path, notes: list[str]) -> dict | None:
    """A cached finished run's fields (``read_run``), or None when one of its files is corrupt: then
    a note names the file and why, and the directory is removed so the run trains again. A file the
    system will not read (``FileUnreadable``) stops the bench instead; nothing is removed."""
    with hold(run, "ramer bench"):
        remove_temporaries(run, ("bench.json",))  # what a bench killed in its write left (a run it cached)
        try:
            return read_run(run)
        except FileUnreadable:
            raise
        except RamerError as e:
            clear_run_folder(run, "a cached run that does not read back", ("bench.json",))
            notes.append(f"cached run unusable, training it again: {e}")
    remove_if_empty(run)
    return None


def execute(cfg: Config, run: Path, bundle: DataBundle, console: Console, state: str) -> tuple[dict, str, list[str]]:
    """Train one run (``state``: ``resume`` or ``fresh``, from ``cache_state``); its results.json
    fields (``read_run``), final state and notes (a resume that failed; ``console`` is the
    training's, quiet in the bench)."""
    notes: list[str] = []
    if cfg.model.name in CLASSICAL:  # scikit-learn's import is not the run's cost (s/run)
        import ramer.train.classical  # noqa: F401
    t0 = time.perf_counter()
    try:  # the seconds logged before an interruption (a last line cut off by the kill is dropped)
        before = _epoch_seconds(_read_jsonl(run, cut_ok=True)) if state == "resume" else 0.0
        run_training(cfg, run, bundle=bundle, console=console, resume=state == "resume")
    except RamerError as e:
        if state != "resume" or isinstance(e, FileUnreadable):
            raise
        with hold(run, "ramer bench"):
            clear_run_folder(run, "a run that cannot resume", ("bench.json",))
        notes.append(f"cannot resume {run} ({e}); starting it again")
        state, before, t0 = "fresh", 0.0, time.perf_counter()
        run_training(cfg, run, bundle=bundle, console=console)
    atomic_write_text(run / "bench.json", json.dumps({"seconds": before + time.perf_counter() - t0}))
    return read_run(run), state, notes


# Worker processes (``--jobs`` > 1) load each dataset (observed, complete) once, on first use.
_WORKER: dict = {}


def _init_worker(data: dict) -> None:
    _WORKER.clear()
    _WORKER["data"] = data


def _start_worker(parent: int, initializer=None, initargs: tuple = ()) -> None:
    """A worker's first step: it ends with the bench process (``dist.die_with_parent``), then runs
    ``initializer``."""
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def _worker_execute(cfg_tree: dict, run: str, state: str) -> tuple[dict, str, list[str]]:
    cfg = config_from_dict(cfg_tree, "bench run")
    complete = cfg.data.synthetic.complete
    if complete not in _WORKER:
        data = DataConfig.model_validate(_WORKER["data"])
        _WORKER[complete] = load_bundle(complete_data(data) if complete else data)
    return execute(cfg, Path(run), _WORKER[complete], Console(stderr=True, quiet=True), state)


@contextmanager
def naming_the_run(key: tuple[str, int, float], run: Path, console: Console):
    """Errors of one run name it: a RamerError gets the run in front of its line; any other error
    (a bug, its traceback follows) is preceded by a line naming the run."""
    name, seed, rate = key
    where = f"{name}, missing rate {rate:g}, seed {seed} ({run})"
    try:
        yield
    except RamerError as e:
        raise type(e)(f"{where}: {e}") from None
    except BrokenProcessPool:  # a worker killed: which run it held is not known (worker_pool says it)
        raise
    except Exception:
        console.print(f"failed: {where}", highlight=False, soft_wrap=True)
        raise


@contextmanager
def worker_pool(jobs: int, initializer=None, initargs: tuple = ()):
    """A pool of ``jobs`` spawned worker processes. However the bench stops (Ctrl-C, an error, or
    SIGTERM sent to this process alone, which is read as Ctrl-C here), it cancels what has not
    started and stops the workers, so none outlives the command (killed by SIGKILL too, on Linux:
    ``dist.die_with_parent``); a run stopped mid-way resumes from its last checkpoint when the
    command is run again. A worker that ended abruptly is one line, not a traceback."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import active_children, get_context

    start = (os.getpid(), initializer, initargs)  # each worker ends with this process, even one killed
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_start_worker, initargs=start)
    try:
        with sigterm_as_interrupt():
            yield pool
    except BaseException as e:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in active_children():  # the workers (this process starts no other)
            child.terminate()
        if isinstance(e, BrokenProcessPool):  # a worker killed (for memory, say): not one run's error
            raise RamerError(
                "a worker process of the bench ended abruptly (killed: out of memory?); the finished runs are "
                "kept: run the same command again to go on (fewer runs at once: --jobs N)"
            ) from None
        raise
    else:
        pool.shutdown()


def load_average() -> float | None:
    """The system's 1-minute load average, for the report; ``None`` where it has none (Windows)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the system has one: a container's or
    taskset's share), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_jobs() -> int:
    """One single-threaded run per core (at most 8): small models do not scale with threads, and
    several torch threads on a busy machine are far slower than one."""
    return max(1, min(8, usable_cores()))


def check_settings(s: BenchSettings, base: Config, model: str) -> None:
    """Refuse, before any work, settings no run of ``model`` trains with (``check_training_values``,
    ``check_loss_weights``); with ``--tune-trials``, those of the search instead (``tune.check_space``:
    its runs train with the searched values, not the config's own train.lr or train.weight_decay,
    which a search replaces)."""
    if s.tune_trials is None:
        cfg = plan_config(base, model, s.seeds[0], 0.0, tuned=s.tuned_values)
        check_training_values(cfg)
        check_loss_weights(cfg)
        return
    from ramer.tune import check_space

    cfg = tune_base(s, model)
    check_space(cfg, space_for(cfg, set_keys(s.overrides)))


def run_bench(s: BenchSettings, console: Console | None = None) -> list[dict]:
    """Run (or reuse) every (model, seed, rate) and write results.json, report.md and the plots."""
    console = console or plain_console()
    t_start = time.perf_counter()
    load_start = load_average()
    base = s.base or base_config(s)
    # the run folders below hold their own locks; a bench refused before its first run, or stopped
    # before it wrote anything, leaves no empty --out (nor a runs/ made for it)
    with hold(work_folder(s.out, "bench", make=False), "ramer bench", make=True):
        return _run_bench(s, base, console, t_start, load_start)


def _run_bench(
    s: BenchSettings, base: Config, console: Console, t_start: float, load_start: float | None
) -> list[dict]:
    t0 = time.perf_counter()
    remove_temporaries(s.out, ("results.json", "report.md"))  # what a bench killed in a write left
    remove_temporaries(s.out / "plots", ("*.png",), holder=s.out)
    for m in s.deep_models:  # a setting no run trains with: before any run, not at that model's first
        check_settings(s, base, m)
    bundle = load_bundle(base.data)
    if "test" in bundle.splits and len(bundle.splits["test"]) == 0:  # else every run trains, then no figure
        raise RamerError(f"{bundle.source}: the test split is empty; ramer bench compares models on the test split")
    task = resolve_task(bundle, base.data.task)
    metric = SELECTION[task]
    console.print(
        f"data {bundle.source}: {', '.join(f'{k} {len(v)}' for k, v in bundle.splits.items())}"
        f" ({time.perf_counter() - t0:.1f}s)",
        highlight=False,
    )
    configs = [run_config(base, m, s.seeds[0], 0.0) for m in dict.fromkeys([*s.models, *s.complete])]
    for note in bench_notes(bundle, configs, task):  # the runs' consoles are quiet
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if said := one_modality(bundle, s.rates):
        console.print(f"note: {bundle.source}: {said}", highlight=False, soft_wrap=True)
    if s.tune_trials is not None:
        tune_models(s, bundle, console)
    for note in tuned_notes(s):
        console.print(f"note: --tuned: {note}", highlight=False, soft_wrap=True)
    plan = [(m, seed, rate) for rate in s.rates for seed in s.seeds for m in s.models]
    plan += [(m + COMPLETE, seed, 0.0) for seed in s.seeds for m in s.complete]
    bundles = {False: bundle}
    if s.complete:
        bundles[True] = load_bundle(complete_data(base.data))
    records: dict[tuple[str, int, float], dict] = {}
    counts = {"done": 0, "resume": 0, "fresh": 0}
    # results.json is rewritten after every run; a record the file held stays until its run is read
    # again (or found stale: its folder gone, unfinished or of another config), and those of runs this
    # bench does not plan until the end, so a bench that stops on an error loses none of them.
    earlier = read_results(s.out, console)
    planned = set(plan)

    def say(notes: list[str]) -> None:
        for note in notes:
            console.print(note, highlight=False, soft_wrap=True)

    def record(key: tuple[str, int, float], fields: dict, state: str, notes: list[str] = ()) -> None:
        """Hold a run's record and say so; results.json is written by the caller (``keep``)."""
        say(notes)
        name, seed, rate = key
        counts[state] += 1
        complete = name.endswith(COMPLETE)
        records[key] = {
            "model": name[: -len(COMPLETE)] if complete else name,
            "inputs": "complete" if complete else "observed",
            "seed": seed,
            "missing_rate": rate,
            **fields,
        }
        how = {"done": "cached", "resume": "resumed", "fresh": "trained"}[state]
        console.print(
            f"[{len(records)}/{len(plan)}] {name:<24} missing {rate:<4g} seed {seed}: test "
            f"{METRIC_NAMES[metric]} {fields['metrics']['overall'][metric]:.4f}  {how} ({fields['seconds']:.1f}s)",
            highlight=False,
            soft_wrap=True,
        )

    def keep() -> None:  # results.json: the runs read so far, and the records still standing
        others = [r for k, r in earlier.items() if k not in planned]
        write_results(s.out, _ordered({**earlier, **records}, s) + others)

    todo, stale = [], []
    for key in plan:
        cfg = plan_config(base, *key, tuned=s.tuned_values)
        run = run_dir(s.out, key[0], key[2], key[1])
        notes: list[str] = []
        state = cache_state(run, cfg, bundles[cfg.data.synthetic.complete], stale)
        fields = reuse(run, notes) if state == "done" else None
        say(notes)
        if fields is not None:
            record(key, fields, "done")
        else:  # its folder is gone, unfinished or of another config: the record the file held is stale
            earlier.pop(key, None)
            todo.append((key, cfg, run, "fresh" if state == "done" else state))
    keep()  # once for every cached run
    if stale:  # finished runs replaced: a bench of another --set into the same --out trains them again
        what = ", ".join(dict.fromkeys(k for keys in stale for k in keys))
        one = len(stale) == 1
        console.print(
            f"note: {plural(len(stale), 'run')} under {s.out} {'was' if one else 'were'} made with other settings or "
            f"data ({what}): {'it was' if one else 'they were'} removed and {'is' if one else 'are'} trained again "
            "(a bench of other settings into another --out keeps the earlier runs)",
            highlight=False,
            soft_wrap=True,
        )
    quiet = Console(stderr=True, quiet=True)
    if s.jobs <= 1 or len(todo) <= 1:
        for key, cfg, run, state in todo:
            with naming_the_run(key, run, console):
                done = execute(cfg, run, bundles[cfg.data.synthetic.complete], quiet, state)
            record(key, *done)
            keep()
    else:
        from concurrent.futures import as_completed

        with worker_pool(
            min(s.jobs, len(todo)), initializer=_init_worker, initargs=(base.data.model_dump(mode="json"),)
        ) as pool:
            futures = {
                pool.submit(_worker_execute, cfg.model_dump(mode="json"), str(run), state): (key, run)
                for key, cfg, run, state in todo
            }
            for future in as_completed(futures):
                key, run = futures[future]
                with naming_the_run(key, run, console):
                    done = future.result()
                record(key, *done)
                keep()
    results = _ordered(records, s)
    write_results(s.out, results)  # every planned run read: the file holds this bench's runs alone
    info = {
        "wall_seconds": time.perf_counter() - t_start,
        "load": (load_start, load_average()),
        "counts": counts,
        "bundle": bundle,
        "task": task,
    }
    write_report(s, base, results, info)
    console.print(
        f"wrote {s.out / 'results.json'}, {s.out / 'report.md'} and {s.out / 'plots'}/ "
        f"({counts['fresh']} trained, {counts['resume']} resumed, {counts['done']} cached; "
        f"{info['wall_seconds']:.0f}s)",
        highlight=False,
        soft_wrap=True,
    )
    return results


def _ordered(records: dict, s: BenchSettings) -> list[dict]:
    keys = [(m, seed, r) for m in s.models for r in s.rates for seed in s.seeds]
    keys += [(m + COMPLETE, seed, 0.0) for m in s.complete for seed in s.seeds]
    return [records[k] for k in keys if k in records]


PROGRESS_KEYS = ("best_epoch", "best_step", "epochs_run", "stopped_early")


def run_progress(run: Path) -> dict:
    """``best_epoch``, ``best_step``, ``epochs_run`` and ``stopped_early`` from a finished run's test
    line in ``metrics.jsonl`` (None where the run's log lacks them)."""
    final = next((rec for rec in reversed(_read_jsonl(run)) if rec.get("final") == "test"), {})
    return {k: final.get(k) for k in PROGRESS_KEYS}


def parameter_count(run: Path) -> int:
    """A run's size: a deep model's trainable parameters; a classical model's fitted coefficients
    (weights and intercepts)."""
    state, cfg, spec, _, _ = ckpt.read_model_file(run / "model.safetensors")
    if cfg.model.name in CLASSICAL:
        return sum(state[k].numel() for k in ("coef", "intercept"))
    tree = cfg.model_dump(mode="json")
    return _deep_parameter_count(json.dumps({"model": tree["model"], "loss": tree["loss"], "spec": spec.to_dict()}))


@functools.lru_cache(maxsize=None)
def _deep_parameter_count(model_and_spec: str) -> int:
    """Trainable parameters of the model a config builds for a data spec: the same for every seed
    and missing rate, so built once per distinct model (a bench records every run's size)."""
    tree = json.loads(model_and_spec)
    cfg = config_from_dict({"model": tree["model"], "loss": tree["loss"]}, "parameter count")
    model = meta_model(cfg, DataSpec.from_dict(tree["spec"]))  # shapes only: no weights drawn from the generator
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def write_results(out: Path, results: list[dict]) -> None:
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))


def read_results(out: Path, console: Console) -> dict[tuple[str, int, float], dict]:
    """The records ``out/results.json`` holds, by (run name, seed, missing rate); none when it is
    missing, or unreadable (a line says so; the bench writes it again from the runs)."""
    path = out / "results.json"
    if not path.exists():
        return {}
    try:
        records = read_json(path)
        if not isinstance(records, list):
            raise RamerError(f"{path}: not a list of records")
        return {
            (run_name(r), r["seed"], r["missing_rate"]): {**r, "metrics": scored_parts(r["metrics"])} for r in records
        }
    except FileUnreadable:
        raise  # it may hold records of runs this bench does not plan: not rewritten from the runs
    except RamerError as e:
        problem = str(e)
    except (TypeError, KeyError) as e:
        problem = f"{path}: a record without model, seed or missing_rate ({type(e).__name__}: {e})"
    console.print(f"{problem}; writing it again from the runs", highlight=False, soft_wrap=True)
    return {}


# ---------------------------------------------------------------------- aggregation
def summarise(results: list[dict], model: str, rate: float, part: str, key: str) -> tuple[float, float, int]:
    """Mean, sample std (0 for one seed) and count of a metric over seeds (``model``: a run name,
    ``MODEL@complete`` for the complete-input runs)."""
    return mean_std(
        r["metrics"][part][key]
        for r in results
        if run_name(r) == model and r["missing_rate"] == rate and part in r["metrics"]
    )


def _read_jsonl(run: Path, cut_ok: bool = False) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (``recipe.read_log``; ``cut_ok`` for a run stopped
    mid-training, whose last line a kill may have cut off)."""
    return [record for _, record in read_log(run / "metrics.jsonl", cut_ok)]


def per_label_f1(out: Path, model: str, rate: float, seeds: list[int]) -> dict[str, float]:
    """Test F1 per label, averaged over the seeds that finished."""
    sums: dict[str, list[float]] = {}
    for seed in seeds:
        for rec in _read_jsonl(run_dir(out, model, rate, seed)):
            if rec.get("final") == "test":
                for label, m in rec["per_label"].items():
                    sums.setdefault(label, []).append(m["f1"])
    return {label: float(np.mean(v)) for label, v in sums.items()}


# ---------------------------------------------------------------------- report
ORACLE_ROW = "oracle (sees the latent state)"  # the reference row of the embedded benchmark's oracle
COLUMNS = {  # per task: (part, key, header, higher is better)
    "multi_label": (
        ("overall", "micro_f1", "micro-F1", True),
        ("overall", "macro_f1", "macro-F1", True),
        ("overall", "acc", "Acc", True),
        ("overall", "hamming_loss", "HL ↓", False),
        ("speaker", "micro_f1", "speaker micro-F1", True),
        ("nonspeaker", "micro_f1", "non-speaker micro-F1", True),
    ),
    "single_label": (  # accuracy = top-1 = subset accuracy for arg-max decisions
        ("overall", "top1_acc", "Acc", True),
        ("overall", "weighted_f1", "weighted-F1", True),
        ("overall", "macro_f1", "macro-F1", True),
        ("speaker", "weighted_f1", "speaker weighted-F1", True),
        ("nonspeaker", "weighted_f1", "non-speaker weighted-F1", True),
    ),
}


def rate_table(
    results: list[dict], s: BenchSettings, rate: float, oracle: dict | None, task: str = "multi_label"
) -> list[str]:
    """One missing rate's table: a row per model (bold: best per column), then the reference rows
    (each complete-input model at rate 0, the oracle), which take no part in the bold."""
    models = [m for m in s.models if any(run_name(r) == m and r["missing_rate"] == rate for r in results)]
    cols = [c for c in COLUMNS[task] if any(c[0] in r["metrics"] for r in results)]
    header = ["model", *(c[2] for c in cols), "params", "steps to best", "s/run"]
    best = {}
    for part, key, _, higher in cols:
        means = [round(summarise(results, m, rate, part, key)[0], 3) for m in models]
        means = [v for v in means if not np.isnan(v)]
        if means:
            best[(part, key)] = max(means) if higher else min(means)

    def row(name: str, label: str, at: float, bold: bool) -> list[str]:
        cells = [label]
        for part, key, _, _ in cols:
            mean, std, n = summarise(results, name, at, part, key)
            text = format_mean_std(mean, std, n)
            cells.append(f"**{text}**" if bold and n and round(mean, 3) == best.get((part, key)) else text)
        runs = [r for r in results if run_name(r) == name and r["missing_rate"] == at]
        sizes = [r["params"] for r in runs if r.get("params") is not None]
        cells.append(f"{sizes[0]:,}" if sizes else "–")
        steps = [r["best_step"] for r in runs if r.get("best_step") is not None]  # none for a classical fit
        cells.append(f"{np.mean(steps):.0f}" if steps else "–")
        secs = np.mean([r["seconds"] for r in runs])
        cells.append(f"{secs:.1f}" if secs < 10 else f"{secs:.0f}")
        return cells

    rows = [row(m, m, rate, True) for m in models]
    rows += [
        row(m + COMPLETE, f"{m}, complete inputs (reference)", 0.0, False)
        for m in s.complete
        if any(run_name(r) == m + COMPLETE for r in results)
    ]
    if oracle is not None:
        rows.append([ORACLE_ROW] + [f"{oracle[p][k]:.3f}" if p in oracle else "–" for p, k, _, _ in cols] + ["–"] * 3)
    return markdown_table(header, rows)


def ablation_table(results: list[dict], rate: float, task: str = "multi_label") -> list[str]:
    """Each ``ramer-<ablation>`` preset against full RAMer at one missing rate: the difference of
    every report column, paired by seed (the same data, hidden modalities and seed), mean ± std
    over the seeds both finished. Positive: better without the part (HL: worse). Empty when the
    run has no preset or no full RAMer at that rate."""
    by_seed: dict[str, dict[int, dict]] = {}
    for r in results:
        if r["missing_rate"] == rate and r.get("inputs", "observed") != "complete":
            by_seed.setdefault(r["model"], {})[r["seed"]] = r["metrics"]
    full = by_seed.get("ramer", {})
    presets = [m for m in PRESETS if m in by_seed and set(by_seed[m]) & set(full)]
    if not presets:
        return []
    cols = [c for c in COLUMNS[task] if any(c[0] in m for m in full.values())]
    rows = []
    for name in presets:
        seeds = sorted(set(by_seed[name]) & set(full))
        cells = []
        for part, key, _, _ in cols:
            diffs = [by_seed[name][s][part][key] - full[s][part][key] for s in seeds if part in by_seed[name][s]]
            cells.append(format_mean_std(*mean_std(diffs), signed=True))
        rows.append([name, str(len(seeds)), *cells])
    return markdown_table(["preset − ramer", "seeds", *(f"Δ {c[2]}" for c in cols)], rows)


def tuning_lines(s: BenchSettings, base: Config, task: str) -> list[str]:
    """The report header's line on tuned settings (none when the bench runs the config as it is)."""
    if s.tuned is None:
        return []
    metric = METRIC_NAMES[SELECTION[task]]
    fixed = sorted(set_keys(s.overrides) & SEARCHED)
    kept = f" (but {', '.join(fixed)}, which --set keeps)" if fixed else ""
    first = s.seeds[0]
    runs = (
        f"one training run under the budget above on seed {first}"
        if s.trial_seeds == 1
        else f"{s.trial_seeds} training runs under the budget above, seeds {first} to {first + s.trial_seeds - 1}"
    )
    value = (
        f"its best validation {metric}"
        if s.trial_seeds == 1
        else f"the mean of their best validation {metric}; the pruner reads seed {first}"
    )
    summaries = {m: tune_summary(s, m) for m in s.deep_models}
    budgets = {m: (summary or {}).get("finished") for m, summary in summaries.items()}  # what the studies hold
    unknown = [m for m, n in budgets.items() if n is None]  # a best.yaml without its tune.json
    held = {n for n in budgets.values() if n is not None}
    same = len(held) == 1 and not unknown
    budget = f"with the same budget, {next(iter(held))} trials " if same else ""
    how = (
        f"every deep model tuned first {budget}"
        f"(`ramer tune`, into `{s.tuned}/<model>`: Optuna TPE, median pruning; each trial {runs} "
        f"at missing rate {base.data.missing_rate:g}; value: {value}; test never read)"
        if s.tune_trials is not None
        else f"read from `{s.tuned}/<model>/best.yaml` (`ramer tune --out {s.tuned}/<model>`)"
    )
    asked = f"--tune-trials {s.tune_trials}"
    if len(held) > 1:
        warning = (
            " **The models were tuned with different numbers of trials** ("
            + ", ".join(f"{m} {n if n is not None else '?'}" for m, n in budgets.items())
            + (f"; {asked}" if s.tune_trials is not None else "")
            + ")."
        )
    elif s.tune_trials is not None and held and held != {s.tune_trials}:
        warning = (
            f" **The studies hold {next(iter(held))} trials each, not the {s.tune_trials} of {asked}**: studies "
            "of an earlier command, reused (a study stops adding trials once it holds as many as asked)."
        )
    else:
        warning = ""
    if unknown:
        warning += f" The trials of {_spoken(unknown)} are not known (no `tune.json` beside `best.yaml`)."
    warning += "".join(f" **--tuned:** {note}." for note in tuned_notes(s))
    in_tune = sorted(set().union(*(tune_fixed(summaries[m]) & set(s.tuned_values.get(m, {})) for m in s.deep_models)))
    also = f" or that its tune kept at a `--set` value ({', '.join(in_tune)})" if in_tune else ""
    return [
        f"- Tuned settings: {how}; each deep model runs with the values its search space (`ramer.models.spaces`) "
        f"chose{kept}{also}, every other setting as above (table `Tuned settings`)." + warning
    ]


def tuned_table(s: BenchSettings, task: str) -> list[str]:
    """Each tuned model: its trials, best validation score, the best trial's steps and the chosen values."""
    if s.tuned is None:
        return []
    metric = METRIC_NAMES[SELECTION[task]]
    rows = []
    for m in s.deep_models:
        summary = tune_summary(s, m) or {}
        best = summary.get("best") or {}
        finished = f"{summary['finished']} ({summary['pruned']} pruned)" if summary else "?"
        if summary.get("trial_seeds", 1) > 1:  # the value and the steps are the means over the seeds
            finished += f", {summary['trial_seeds']} seeds each (value and steps: their mean)"
        values, fixed = s.tuned_values.get(m, {}), tune_fixed(summary)
        chosen = format_values({k: v for k, v in values.items() if k not in fixed}) or "–"
        kept = format_values({k: v for k, v in values.items() if k in fixed})
        value = f"{best['value']:.4f}" if "value" in best else "–"
        own = summary.get("metric")  # a study of the other task (data.task) scored the other metric
        if "value" in best and own in METRIC_NAMES and own != SELECTION[task]:
            value += f" ({METRIC_NAMES[own]}: its study's metric)"
        rows.append(
            [
                m,
                finished,
                value,
                str(best.get("trial", "–")),
                str(best.get("best_step", "–")),
                chosen + (f"; kept at its tune's --set: {kept}" if kept else ""),
            ]
        )
    header = ["model", "trials", f"best valid {metric}", "trial", "its steps to best", "chosen values"]
    return ["", "## Tuned settings", "", *markdown_table(header, rows)]


def _spoken(items) -> str:
    """``0``, ``0 and 0.6``, ``0, 0.3 and 0.6``."""
    items = list(items)
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def unseen_labels(bundle: DataBundle) -> str:
    """The sentence of the report's table legend on labels no test sample has (a small test split):
    their F1 is 0 in every run and macro-F1 counts them; empty where every label has a test sample."""
    test = bundle.splits.get("test")
    if test is None or len(test) == 0:
        return ""
    none = [n for n, k in zip(bundle.label_names, np.asarray(test.labels).sum(0)) if k == 0]
    if not none:
        return ""
    many = len(none) > 1
    return (
        f" No test sample has the label{'s' * many} {', '.join(none)} (test: {len(test)} samples): "
        f"{'their' if many else 'its'} F1 is 0 in every run, and macro-F1 counts {'them' if many else 'it'}."
    )


def one_modality(bundle: DataBundle, rates) -> str | None:
    """What a missing rate above 0 means where the data has one modality only (an import without
    media: text): it hides that modality itself, the target's own among it, so the rate's columns
    measure a model without the words asked about, not without another stream. None otherwise."""
    has = bundle.modalities
    if len(has) != 1 or not any(r > 0 for r in rates):
        return None
    m = has[0]
    return (
        f"the data has {m} only: a missing rate hides {m} itself, at a rate r the target's own {m} in about r of "
        f"the samples, so those columns measure a model without the {m} asked about, not without another modality"
    )


def write_report(s: BenchSettings, base: Config, results: list[dict], info: dict) -> None:
    bundle = info["bundle"]
    oracle = oracle_report(bundle.info, "test")
    plots = make_plots(s, results, oracle, info["task"])
    syn = base.data.synthetic
    if base.data.path is None:
        data = (
            f"embedded synthetic benchmark ({bundle.source}; {syn.n_train} train / {syn.n_valid} valid / "
            f"{syn.n_test} test scenes, {syn.n_labels} labels)"
        )
    else:
        data = (
            f"`{base.data.path}` ({bundle.source}; "
            + ", ".join(f"{k} {len(v)}" for k, v in bundle.splits.items())
            + ")"
        )
    where = "train, validation and test" if s.missing_at == "all" else "test only (clean training)"
    t = base.train
    budget = (
        f"up to {t.epochs} epochs, stopping once validation {METRIC_NAMES[SELECTION[info['task']]]} has not "
        f"improved for {t.patience} "
        f"epoch{'s' if t.patience > 1 else ''}"
        if t.patience
        else f"{t.epochs} epochs"
    )
    if s.tuned and "train.lr" not in set_keys(s.overrides):
        in_tune = any("train.lr" in tune_fixed(tune_summary(s, m)) for m in s.deep_models)
        lr = "(lr of each model's tuned config)" if in_tune else "(lr tuned per model)"
    else:
        lr = f"lr {t.lr:g}"
    l1, l2 = info["load"]
    load = "" if l1 is None or l2 is None else f", load average {l1:.1f} at start, {l2:.1f} at end"
    c = info["counts"]
    if info["task"] == "single_label":
        decision = "single-label data: arg-max decision, best epoch chosen on validation weighted F1"
    else:
        decision = "best epoch chosen on validation micro-F1, the decision threshold on validation " + (
            "each label's F1 (one per label)" if t.per_label_threshold else "micro-F1 (one for every label)"
        )
    sets = [x for x in s.base_sets if base.data.path is None or not x.startswith("data.synthetic.")]  # what applies
    lines = [
        "# Benchmark: RAMer and its baselines" if "ramer" in s.models else f"# Benchmark: {', '.join(s.models)}",
        "",
        f"Command: `{s.command()}`",
        "",
        "- Mode: "
        + (
            f"**quick** (smoke settings: {', '.join(sets)}; {len(s.seeds)} seed{'s' * (len(s.seeds) > 1)}; "
            f"missing rate{'s' * (len(s.rates) > 1)} {_spoken(f'{r:g}' for r in s.rates)})"
            if s.quick
            else f"default ({', '.join(sets)})"
        )
        + (f"; overrides: {', '.join(s.overrides)}" if s.overrides else ""),
        f"- Data: {data}; the same splits for every model.",
        f"- Models: {', '.join(s.models)}.",
        f"- Seeds: {', '.join(map(str, s.seeds))} (`train.seed`); for a given seed and missing rate every model sees "
        "the same hidden modalities.",
        f"- Missing rates: {', '.join(f'{r:g}' for r in s.rates)}: extra probability of hiding each present "
        f"modality of each token, applied to {where}."
        + (f" {said[0].upper()}{said[1:]}." if (said := one_modality(bundle, s.rates)) else ""),
        f"- Training (every deep model alike): {budget}, batch {t.batch_size}, AdamW {lr}, "
        f"warm-up {t.warmup:g} (the schedule spans the cap); {decision}; test once on the best checkpoint. "
        "Classical models: one logistic-regression fit.",
        *tuning_lines(s, base, info["task"]),
        *(
            [
                f"- Complete-input reference: {', '.join(s.complete)} also trained and tested once per seed on the "
                "same scenes with every modality present for every person at every segment (`data.synthetic.complete`, "
                "missing rate 0); shown under every table as `MODEL, complete inputs (reference)`, outside the bold."
            ]
            if s.complete
            else []
        ),
        f"- Machine: {usable_cores()} of {os.cpu_count()} CPUs for this process, "
        f"torch threads {t.threads or 'default'}{load}. "
        f"This invocation: {info['wall_seconds']:.0f} s ({c['fresh']} runs trained, "
        f"{c['resume']} resumed, {c['done']} reused from the cache); all runs together: "
        f"{sum(r['seconds'] for r in results):.0f} s of training "
        "and testing.",
        "",
        "Test split; mean ± sample std over seeds (one seed: the value). **Bold**: best model per column"
        + (" (HL: lowest)" if any(not c[3] for c in COLUMNS[info["task"]]) else "")
        + ". `params`: trainable parameters of a deep model, fitted coefficients (weights and "
        "intercepts) of a classical one. `steps to best`: optimiser steps done at the end of the best epoch, mean "
        "over seeds (a classical fit takes none). `s/run`: mean seconds per run. Metric definitions: "
        "`ramer.metrics`."
        + (
            f" The `{ORACLE_ROW}` row reads the target's latent emotion state before annotator noise: the ceiling."
            if oracle
            else ""
        )
        + unseen_labels(bundle)
        + (
            " Every test target speaks: there is no non-speaker column."
            if "test" in bundle.splits and not (np.asarray(bundle.splits["test"].role) == 0).any()
            else ""
        ),
    ]
    lines += tuned_table(s, info["task"])
    for rate in s.rates:
        lines += ["", f"## Missing rate {rate:g}", ""]
        lines += rate_table(results, s, rate, oracle, info["task"])
        paired = ablation_table(results, rate, info["task"])
        if paired:
            lines += ["", f"Each ablation preset minus full RAMer at missing rate {rate:g}, paired by seed:", ""]
            lines += paired
    if plots:
        lines += ["", "## Plots", ""]
        for name, caption in plots:
            lines += [f"![{caption}](plots/{name})", ""]
    atomic_write_text(s.out / "report.md", "\n".join(lines).rstrip() + "\n")


# ---------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(models: list[str]) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(models) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    _pyplot().close(fig)


def per_label_pair(ranked: list[str]) -> tuple[str | None, str | None, str]:
    """The two models of the per-label plot, of ``ranked`` (best first), and the second's role:
    RAMer and the best baseline (RAMer's ablations and the authors' RAMer are not baselines), else
    the best model and the runner-up (also where RAMer ran only beside its own variants)."""
    if "ramer" in ranked:
        baselines = [m for m in ranked if m != "ramer" and m not in PRESETS and m != "ramer-authors"]
        if baselines:
            return "ramer", baselines[0], "best baseline"
        ranked = ["ramer", *(m for m in ranked if m != "ramer")]
    focus = ranked[0] if ranked else None
    return focus, (ranked[1] if len(ranked) > 1 else None), "runner-up"


# every plot make_plots writes; one this run does not write is removed (the report links only its own)
PLOTS = (
    *(f"{key}_vs_missing.png" for key in SELECTION.values()),
    "per_label_f1.png",
    "speaker_vs_nonspeaker.png",
    "training_curves.png",
)


def make_plots(
    s: BenchSettings, results: list[dict], oracle: dict | None, task: str = "multi_label"
) -> list[tuple[str, str]]:
    """Write ``DIR/plots/*.png``; returns (file name, caption) of each plot written. Each plot
    shows the task's selection metric (micro-F1; weighted F1 on single-label data), the one the
    report leads with."""
    if not results:
        return []
    key = SELECTION[task]
    metric = METRIC_NAMES[key]
    plt = _pyplot()
    folder = s.out / "plots"
    make_folder(folder)
    models = [m for m in s.models if any(run_name(r) == m for r in results)]
    colors = _colors(models)
    written = []

    # 1. the metric vs missing rate
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m in models:
        pts = [(r, *summarise(results, m, r, "overall", key)[:2]) for r in s.rates]
        pts = [p for p in pts if not np.isnan(p[1])]
        if pts:
            x, y, e = zip(*pts)
            ax.errorbar(
                x, y, yerr=e, marker="o", capsize=3, color=colors[m], label=m, linewidth=2.5 if m == "ramer" else 1.3
            )
    for m in s.complete:
        mean, _, n = summarise(results, m + COMPLETE, 0.0, "overall", key)
        if n:
            ax.axhline(mean, color=colors.get(m, "grey"), linestyle=":", linewidth=1.5, label=f"{m}, complete inputs")
    if oracle is not None:
        ax.axhline(oracle["overall"][key], color="black", linestyle="--", linewidth=1, label="oracle ceiling")
    ax.set(
        title=f"Test {metric} vs missing-modality rate",
        xlabel=f"extra missing rate ({s.missing_at})",
        ylabel=f"{metric} (mean ± std over seeds)",
        xticks=s.rates,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, folder / f"{key}_vs_missing.png")
    written.append((f"{key}_vs_missing.png", f"test {metric} vs missing rate, per model"))

    # 2. per-label F1: RAMer (or the best model) vs the best baseline, at the lowest rate
    rate = s.rates[0]
    ranked = sorted(
        (m for m in models if summarise(results, m, rate, "overall", key)[2]),
        key=lambda m: -summarise(results, m, rate, "overall", key)[0],
    )
    focus, rival, rival_role = per_label_pair(ranked)
    if focus and rival:
        pair = [focus, rival]
        f1 = {m: per_label_f1(s.out, m, rate, s.seeds) for m in pair}
        labels = list(f1[focus])
        x = np.arange(len(labels))
        fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * len(labels) + 2), 4.5))
        for k, m in enumerate(pair):
            ax.bar(
                x + (k - 0.5) * 0.4,
                [f1[m].get(lb, 0.0) for lb in labels],
                0.4,
                color=colors[m],
                label=m if k == 0 else f"{m} ({rival_role})",
            )
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set(
            title=f"Per-label test F1 at missing rate {rate:g}: {focus} vs {rival_role}",
            xlabel="label",
            ylabel="F1 (mean over seeds)",
            ylim=(0, 1),
        )
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
        _save(fig, folder / "per_label_f1.png")
        written.append(("per_label_f1.png", f"per-label F1, {focus} vs {rival}"))

    # 3. speaker vs non-speaker, one panel per rate: where the test split has targets of both roles
    # (the parts a run scored; a split of speakers alone has no non-speaker part to set beside them)
    roles = (("speaker", "speaker", ""), ("nonspeaker", "non-speaker", "//"))
    if all(any(part in r["metrics"] for r in results) for part, _, _ in roles):
        fig, axes = plt.subplots(
            1, len(s.rates), figsize=(max(7.0, 0.55 * len(models) * len(s.rates) + 2), 4.8), sharey=True, squeeze=False
        )
        x = np.arange(len(models))
        for ax, rate in zip(axes[0], s.rates):
            for k, (part, _, hatch) in enumerate(roles):
                stats = [summarise(results, m, rate, part, key) for m in models]
                ax.bar(
                    x + (k - 0.5) * 0.4,
                    [v[0] for v in stats],
                    0.4,
                    yerr=[v[1] for v in stats],
                    capsize=2,
                    color=[colors[m] for m in models],
                    hatch=hatch,
                    edgecolor="black",
                    linewidth=0.5,
                )
            ax.set_xticks(x, models, rotation=45, ha="right", fontsize=8)
            ax.set(title=f"missing rate {rate:g}", xlabel="model")
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel(f"test {metric}")
        # the bars take each model's colour: the legend tells the roles apart by hatch alone
        from matplotlib.patches import Patch

        keys = [
            Patch(facecolor="white", edgecolor="black", hatch=hatch, label=f"{name} targets")
            for _, name, hatch in roles
        ]
        axes[0][0].legend(handles=keys, fontsize=8)
        fig.suptitle(f"Speaker vs non-speaker targets: test {metric}")
        _save(fig, folder / "speaker_vs_nonspeaker.png")
        written.append(("speaker_vs_nonspeaker.png", f"speaker vs non-speaker {metric}"))

    # 4. training curves (seed and rate of the first run; classical models fit once and are left out)
    curves = {}
    for m in models:
        lines = [rec for rec in _read_jsonl(run_dir(s.out, m, s.rates[0], s.seeds[0])) if "epoch" in rec]
        if len(lines) > 1:
            curves[m] = lines
    if curves:
        from matplotlib.ticker import MaxNLocator

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
        for m, lines in curves.items():
            ep = [ln["epoch"] for ln in lines]
            first = lines[0]["train"]["loss"] or 1.0
            ax1.plot(ep, [ln["train"]["loss"] / first for ln in lines], marker="o", color=colors[m], label=m)
            ax2.plot(ep, [ln["valid"]["overall"][key] for ln in lines], marker="o", color=colors[m], label=m)
        ax1.set(title="Training loss (each model's own objective)", xlabel="epoch", ylabel="train loss / epoch-1 loss")
        ax2.set(title=f"Validation {metric}", xlabel="epoch", ylabel=metric)
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.suptitle(f"Training curves (missing rate {s.rates[0]:g}, seed {s.seeds[0]})")
        _save(fig, folder / "training_curves.png")
        written.append(("training_curves.png", f"training loss and validation {metric} per epoch"))
    for name in set(PLOTS) - {name for name, _ in written}:  # an earlier run's, of another task or more data
        (folder / name).unlink(missing_ok=True)
    return written
