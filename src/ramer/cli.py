"""The ``ramer`` command line. It only wires config, data, recipe and reports together."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ramer.config import (
    MISSING_AT,
    TASKS,
    Config,
    build_config,
    check_corpus_config_has_data,
    check_flag_sets,
    check_generator_sets,
    resolve_config,
    set_keys,
)
from ramer.console import PLAIN, PlainConsole, plural, printable
from ramer.errors import InterruptedAfter, RamerError, env_count, first_line, first_of, shown, unwritable
from ramer.paths import (
    LOCK_NAME,
    USE_ANOTHER,
    argument,
    hold,
    need_regular_file,
    remove_if_empty,
    shell_quote,
    signal_answered_by,
    write_stderr,
    write_stdout,
)
from ramer.version import __version__


class PipeConsole(PlainConsole):
    """A rich ``Console`` that leaves a closed pipe to ``main``: rich's own answer ends the process
    with exit code 1 (``ramer eval RUN | head -1``), where ``main`` says 141, as for ``print``."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(f"{'stderr' if self.stderr else 'stdout'}: its reader has gone")

    def _check_buffer(self) -> None:
        """rich's write of what was printed (a method of rich's own, rich>=13 to 15 at least); a stream
        the system will not write (``> FILE`` on a full disk) is a one-line error, not a traceback (a
        closed stdout is ``write_stdout``'s, through ``StreamFile``)."""
        try:
            super()._check_buffer()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise unwritable("stderr" if self.stderr else "stdout", e) from None


class StreamFile:
    """The ``file`` of ``OUT`` and ``ERR``: today's ``sys.stdout`` or ``sys.stderr`` (``name``:
    pytest's capture, a redirect), written through ``write_stdout`` or ``write_stderr``, whose loop
    of ``os.write`` makes a reader that leaves partway a BrokenPipeError; ``sys.stdout.write`` and
    ``flush`` drop what a partial write left, so a last print larger than the pipe holds (the
    timelines of ``ramer predict``, an error naming many files) was cut short, exit 0."""

    def __init__(self, name: str):
        self.name = name

    def write(self, text: str) -> int:
        (write_stdout if self.name == "stdout" else write_stderr)(text)
        return len(text)

    def flush(self) -> None:  # written it all
        pass

    def __getattr__(self, name: str):  # isatty, encoding, fileno: the stream's
        if "name" not in self.__dict__:  # copy or pickle, before they set it: not self.name, which recursed
            raise AttributeError(name)
        return getattr(getattr(sys, self.name), name)


# results go to stdout; wide tables in logs (and where stdout is closed, `ramer ... >&-`: None)
OUT = PipeConsole(file=StreamFile("stdout"), width=None if sys.stdout and sys.stdout.isatty() else 160, **PLAIN)
ERR = PipeConsole(file=StreamFile("stderr"), stderr=True, **PLAIN)  # progress and messages go to stderr


STDOUT = "-"  # an --out that means stdout


def file_only(flag: str, value: str) -> None:
    """A ``-`` given where only a file is written (``--out -`` is stdout for ``ramer predict`` alone):
    refused, rather than a file named ``-`` made."""
    if value == STDOUT:
        raise RamerError(f"{flag} -: this command writes a file, not stdout; give a file name")


# what each command writes, and the file name endings that say so
WRITES = {
    "predict": ("JSON lines (one object per prediction)", (".jsonl", ".ndjson")),
    "view": ("an HTML page", (".html", ".htm")),
    "export": ("an ONNX graph", (".onnx",)),
}
# endings that name a format a tool opens such a file as (another command's included); any other ending
# (``preds.seed1``, ``page.v2``) names none, and is taken as it is
FORMAT_ENDINGS = (
    *(e for _, endings in WRITES.values() for e in endings),
    *(".json", ".csv", ".tsv", ".txt", ".md", ".xlsx", ".xls", ".parquet", ".yaml", ".yml", ".xml"),
    *(".pt", ".pth", ".pkl", ".pickle", ".npy", ".npz", ".safetensors", ".png", ".jpg", ".pdf", ".zip", ".gz"),
)


def fitting_name(command: str, flag: str, value: str) -> None:
    """An output name whose ending names another format (``predict --out preds.csv``, or ``.json``,
    which a tool reads as one JSON document) is refused: the file would hold what ``command`` writes
    under a name that says otherwise, and a tool opening it by its name reads it wrong."""
    what, endings = WRITES[command]
    suffix = Path(value).suffix.lower()
    if value != STDOUT and suffix in FORMAT_ENDINGS and suffix not in endings:
        raise RamerError(
            f"{flag} {value}: ramer {command} writes {what}, not a '{suffix}' file; give a name ending "
            f"{' or '.join(endings)}"
        )


def default_out(cfg: Config) -> Path:
    """A new folder ``runs/<model>-<date>-<time>``, made here and only here: of two runs started in
    the same second, the second gets ``...-2`` (the same folder would mix their files)."""
    from ramer.paths import make_folder

    base = make_folder("runs") / f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RamerError(f"{path}: cannot create the folder ({e.strerror})") from None
    raise RamerError(f"{base}: a thousand runs of this name were started this second; give --out")


# ---------------------------------------------------------------------- tables
METRIC_COLUMNS = {  # per task: (report key, header); single-label leads with accuracy and weighted F1
    "multi_label": (("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("acc", "Acc"), ("hamming_loss", "HL")),
    "single_label": (("top1_acc", "Acc"), ("weighted_f1", "weighted-F1"), ("macro_f1", "macro-F1")),
}


def metrics_table(title: str, rows: dict[str, dict], task: str = "multi_label") -> Table:
    """Rows: name -> {"overall": {...}, "speaker": {...}, "nonspeaker": {...}}; one line per part.
    The columns follow the task (``METRIC_COLUMNS``)."""
    columns = METRIC_COLUMNS[task]
    table = Table(title=title)
    for col in ("model", "targets", "n", *(label for _, label in columns)):
        table.add_column(col, justify="left" if col in ("model", "targets") else "right")
    for name, rep in rows.items():
        for part in ("overall", "speaker", "nonspeaker"):
            if part in rep:
                m = rep[part]
                empty = m.get("n") == 0  # e.g. no non-speaker target in the split: no score, not 0
                table.add_row(
                    name if part == "overall" else "",
                    part,
                    str(m.get("n", "")),
                    *("–" if empty else f"{m[key]:.4f}" for key, _ in columns),
                )
    captions = []
    unroled = [_without_a_role(rep) for rep in rows.values()]
    if any(unroled):  # a split of targets of both kinds: the parts do not add up to overall without a word
        captions.append(
            f"overall also counts {max(unroled)} sample(s) without a role (a whole-scene target): neither "
            "speaker nor non-speaker"
        )
    if unseen := _labels_without_a_sample(rows):  # a small split: macro-F1 is pulled down by them
        many = len(unseen) > 1
        captions.append(
            f"no sample of the split has the label{'s' * many} {', '.join(unseen)}: {'their' if many else 'its'} "
            f"F1 is 0, and macro-F1 counts {'them' if many else 'it'}"
        )
    table.caption = "; ".join(captions) or None
    return table


def _labels_without_a_sample(rows: dict[str, dict]) -> list[str]:
    """The labels no sample of the split has (support 0 in a row's ``per_label``; rows are of one
    split), in the label order."""
    for rep in rows.values():
        per_label = rep.get("per_label")
        if isinstance(per_label, dict) and per_label and rep.get("overall", {}).get("n"):
            return [name for name, m in per_label.items() if isinstance(m, dict) and m.get("support") == 0]
    return []


def _without_a_role(rep: dict) -> int:
    """The samples of ``rep``'s overall part in neither its speaker nor its non-speaker part."""
    counts = [rep.get(part, {}).get("n") for part in ("overall", "speaker", "nonspeaker")]
    return 0 if None in counts else counts[0] - counts[1] - counts[2]


PRECISION_HELP = (
    "bf16: cast the model to bfloat16 (faster on CPUs with AVX-512 BF16 / AMX and on GPUs; "
    "scores differ from fp32 by a few thousandths, which flips some decisions near the threshold: 0.12 %% "
    "of them on a trained run of the embedded benchmark, 0.6-2.4 %% with random weights, docs/PERFORMANCE.md). "
    "Default fp32: float32 weights, under bfloat16 autocast for a run trained with train.precision=bf16 "
    "(as its validation and test line were scored)"
)
LOADER_SET_HELP = (
    "a loader option, e.g. data.max_utterances=80, data.m3ed_protocol=utterance, data.unaligned_layout=pad, "
    "data.aligned_path=FILE (repeatable; docs/DATA.md)"
)
DEVICE_HELP = "cpu, cuda or cuda:N (default: the run's train.device)"
# data.formats.FORMATS (not imported here: it loads every reader; tests/test_docs.py checks the list)
FORMAT_HELP = (
    "the data's format (default: auto, detected): mosei_aligned, mosei_unaligned, m3ed_pickle, m3ed_carat, "
    "memor, native or synthetic"
)
BATCH_HELP = (
    "scenes scored at once (default: the run's train.eval_batch_size); lower it where long scenes do not fit "
    "in memory. The scores change only by float rounding (about 1e-7)"
)
WORKERS_HELP = (
    "score in N forked processes (CPU, Linux) of one thread each; can be faster than one process with "
    "several threads (docs/PERFORMANCE.md). Default 1"
)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---------------------------------------------------------------------- commands
def launch_distributed(args: argparse.Namespace) -> int:
    """``ramer train --nproc N ...``: run ``python -m ramer.dist --standalone --nproc_per_node N -m
    ramer train ...`` (torchrun with the same arguments, minus ``--nproc``; ``ramer.dist.launch``)
    and wait; returns its exit code: the workers' (2 after an error each printed), 130 after Ctrl-C."""
    import subprocess

    from ramer.dist import PARENT_ENV

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RamerError("--nproc launches the processes itself; under torchrun leave it out")
    # What one process would refuse at once is refused here, once, before N processes start.
    cfg = planned_config(args)
    check_processes(cfg, args.nproc, Path(args.resume) if args.resume else None)
    if args.resume:
        from ramer.train.recipe import resume_state

        resume_state(Path(args.resume), cfg)  # read here and dropped: each process reads it again
    else:
        check_new_run(cfg, Path(args.out) if args.out else None)
    rest: list[str] = []
    for flag in ("model", "config", "data", "resume"):
        if getattr(args, flag):
            rest += [f"--{flag}", str(getattr(args, flag))]
    made = None  # the run folder made up here, if any
    runs_made = not (args.out or args.resume) and not Path("runs").exists()
    if not args.resume:  # every process must write to the same run directory: fix it here
        made = None if args.out else default_out(cfg)
        rest += ["--out", args.out or str(made)]
    for assignment in args.set or []:
        rest += ["--set", assignment]
    cmd = [
        sys.executable,
        "-m",
        "ramer.dist",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "ramer",
        "train",
        *rest,
    ]
    ERR.print("launching: " + " ".join(cmd[1:]))
    try:
        with sigint_waits():  # Ctrl-C reaches the launcher too, which stops the workers and exits 130
            return subprocess.call(cmd, env={**os.environ, PARENT_ENV: str(os.getpid())})
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        return 130
    finally:
        if made is not None:  # no process wrote a run: neither it nor a runs/ made for it stays
            remove_unstarted_run(made, cfg, parent_too=runs_made)


@contextlib.contextmanager
def sigint_waits():
    """A context in which the first SIGINT (Ctrl-C) raises nothing, so that this process goes on
    waiting for the processes it started, which take the same Ctrl-C and end in their own time;
    a second one raises ``KeyboardInterrupt``. Outside the main thread, nothing changes."""

    seen = []

    def on_sigint(signum, frame):
        seen.append(signum)
        if len(seen) > 1:
            raise KeyboardInterrupt

    with signal_answered_by(signal.SIGINT, on_sigint):
        yield


def check_processes(cfg: Config, nproc: int, resumed: Path | None = None) -> None:
    """What every one of ``nproc`` processes would refuse alike, refused once before they start:
    a classical model (fitted in one process), a batch that does not divide, a device there is not
    one of per process, TensorBoard missing. ``resumed``: the run folder of a ``--resume``, whose
    config.yaml is where its device changes (it takes no --set)."""
    from ramer.infer import resolve_device
    from ramer.models import CLASSICAL

    if cfg.model.name in CLASSICAL:
        raise RamerError(
            f"'{cfg.model.name}' is fitted by scikit-learn in one process; --nproc is for the deep models: leave it out"
        )
    if cfg.train.batch_size % nproc:
        raise RamerError(
            f"train.batch_size {cfg.train.batch_size} is the global batch and must divide by the {nproc} processes"
        )
    where = {"instead": f"set train.device: cpu in {resumed / 'config.yaml'}"} if resumed is not None else {}
    device = resolve_device(cfg.train.device, **where)
    if device.type == "cuda":
        import torch

        if device.index is not None:
            raise RamerError(
                f"train.device is '{cfg.train.device}': {nproc} processes would share one GPU; use "
                "--set train.device=cuda (process r takes GPU r)"
            )
        if nproc > torch.cuda.device_count():
            raise RamerError(
                f"--nproc {nproc} on cuda takes a GPU per process; this machine has {torch.cuda.device_count()}"
            )
    if cfg.train.tensorboard:
        from ramer.train.tensorboard import require_tensorboard

        require_tensorboard()


def remove_unstarted_run(out: Path, cfg: Config, parent_too: bool = False) -> None:
    """Remove the run folder ``out`` (made for this command) when it holds nothing but what the run
    started it with, its ``config.yaml`` and an empty ``metrics.jsonl`` (stopped before the first
    epoch ended), or nothing at all; with ``parent_too``, a ``runs/`` made for it that is then empty."""
    from ramer.config import dump_config

    config, log = out / "config.yaml", out / "metrics.jsonl"
    try:
        started = (
            {p.name for p in out.iterdir()} - {LOCK_NAME} == {config.name, log.name}
            and log.is_file()
            and log.stat().st_size == 0
            and config.is_file()
            and config.read_text(encoding="utf-8") == dump_config(cfg)
        )
    except (OSError, UnicodeDecodeError):
        started = False
    if started:
        config.unlink()
        log.unlink()
    remove_if_empty(out, parent_too=parent_too)


def train_config(args: argparse.Namespace) -> Config:
    """The config of a new run: ``--config`` and ``--set``, then ``--model`` and ``--data``."""
    # model.ablations: --model adds a preset's to them
    flags = {"--model": ("model.name",), "--data": ("data.path",)}
    check_flag_sets(args.set or [], {flag: keys for flag, keys in flags.items() if getattr(args, flag[2:])})
    cfg = build_config(resolve_config(args.config), args.set or [])
    if args.model:
        from ramer.models import set_model

        set_model(cfg, args.model)  # a model name or a ramer-<ablation> preset
    if args.data:
        cfg.data.path = args.data
    check_corpus_config_has_data(cfg)
    check_generator_sets(cfg, args.set or [])
    return cfg


def check_new_run(cfg: Config, out: Path | None) -> None:
    """What a new run would refuse only after loading its data: a data path that is not there or
    holds no dataset, a loader option set otherwise than a converted folder holds, a model it cannot build (name,
    model.options), an --out that holds a run or another command's work. Checked first, in the
    process that was asked (before torchrun starts N)."""
    from ramer.data import read_as_converted
    from ramer.data.formats import check_dataset_path
    from ramer.models import CLASSICAL, check_model, check_options
    from ramer.paths import held_elsewhere, other_work
    from ramer.train.recipe import check_training_values, existing_run

    if cfg.data.path is not None and not Path(cfg.data.path).exists():
        raise RamerError(f"{cfg.data.path}: data path not found")
    check_dataset_path(cfg.data.path)  # a folder of no dataset, a table not yet imported
    read_as_converted(cfg.data)  # a loader option the config sets otherwise than a converted folder holds
    if cfg.model.name in CLASSICAL:
        check_options(cfg)
    else:
        check_model(cfg)
        check_training_values(cfg)
    if out is not None:
        # under torchrun rank 0 alone holds the folder: another rank would find its lock
        held = held_elsewhere(out) if env_count("RANK", 0) == 0 else None
        why = held or other_work(out, "run") or (existing_run(out) if out.is_dir() else None)
        if why:
            raise RamerError(why)


def planned_config(args: argparse.Namespace) -> Config:
    """The config of the run ``ramer train`` starts (``train_config``) or resumes (its folder's own,
    with its data path checked)."""
    if not args.resume:
        return train_config(args)
    if args.config or args.set or args.data or args.model or args.out:
        raise RamerError("--resume takes the run directory's own config; drop --config/--set/--data/--model/--out")
    out = Path(args.resume)
    if not out.exists():  # a mistyped name: no folder to look into
        raise RamerError(f"{out}: no such run folder; nothing to resume")
    if not out.is_dir():
        raise RamerError(f"{out}: is a file, not a run folder (what ramer train --out writes)")
    if (out / "meta.json").is_file() and not (out / "config.yaml").exists():
        raise RamerError(f"{out}: is a dataset (meta.json), not a run folder (what ramer train --out writes)")
    if [p.name for p in out.iterdir()] == [LOCK_NAME]:  # a command killed before it wrote anything
        raise RamerError(f"{out}: holds nothing of a run (stopped before its config was written); train it anew")
    if not (out / "config.yaml").exists():
        why = f"{out / 'config.yaml'}: not found; cannot resume"
        kept = [name for name in ("model.safetensors", "train_state.pt") if (out / name).is_file()]
        if kept:  # a run that trained, whose config was removed since
            why += f": the folder holds the run's {' and '.join(kept)}, but not the config they were made with"
        elif (out / "metrics.jsonl").is_file():  # written first: the run was stopped before its config
            why += ": the run stopped as it began, so nothing of it is kept; run the command that started it again"
        raise RamerError(why)
    from ramer.api import check_run_data
    from ramer.checkpoint import run_config

    if not (out / "config.yaml").is_dir():  # a folder there is read_yaml's to name
        need_regular_file(out / "config.yaml")  # a pipe there made the resume wait for ever
    cfg = run_config(out)

    check_run_data(cfg.data.path, f"run from that folder, or set data.path in {out / 'config.yaml'}")
    return cfg


# What an empty value of a flag would be taken for (the flag left out) and what to give instead.
EMPTY_FLAGS = {
    "data": "give the data's path (or leave --data out for the embedded benchmark)",
    "model": "give a model name (or leave --model out for the config's)",
    "resume": "give the run folder to go on with",
}


def refuse_empty(args: argparse.Namespace, *names: str, out: str | None = "a new folder under runs/") -> None:
    """A RamerError for the first flag of ``names`` given an empty (or blank) value, which the
    command would take for the flag left out (``--data "$UNSET"`` trained on the embedded benchmark),
    or an ``--out`` for the current folder. ``out``: where the command writes without ``--out``
    (None: it takes none)."""
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            if name == "out":
                raise RamerError("--out: empty; give a folder" + (f" (or leave --out out for {out})" if out else ""))
            raise RamerError(f"--{name}: empty; {EMPTY_FLAGS[name]}")


def cmd_train(args: argparse.Namespace) -> int:
    from ramer.train import run_training

    refuse_empty(args, "data", "model", "out", "resume")
    if args.nproc and args.nproc > 1:
        return launch_distributed(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (args.out or args.resume):
        raise RamerError("under torchrun every process must write to one run directory: give --out (or --resume)")
    cfg = planned_config(args)
    made_up = not (args.out or args.resume)
    if not args.resume:  # at once, before the data loads; checked again below, with the folder held
        check_new_run(cfg, Path(args.out) if args.out else None)
    runs_made = made_up and not Path("runs").exists()
    out = Path(args.resume or args.out) if not made_up else default_out(cfg)
    rank0 = env_count("RANK", 0) == 0
    made_here = made_up  # made for this command: removed again where no epoch ended
    from ramer.dist import Terminated, sigterm_as_interrupt

    stopping = sigterm_as_interrupt()  # in one process: SIGTERM is read as Ctrl-C, ending 143
    try:
        # rank 0 holds the folder for the whole run (another command there is refused), then decides
        with (
            stopping,
            hold(out, "ramer train", make=not args.resume, remedy="wait for it to end" if args.resume else USE_ANOTHER)
            if rank0
            else contextlib.nullcontext() as held,
        ):
            made_here = made_up or (held is not None and held.made)  # its mkdir made it, no other's
            if not args.resume and rank0:
                check_new_run(cfg, out)
            bundle = None
            if cfg.data.path is None:  # the embedded benchmark, made once: trained on, and its oracle printed
                from ramer.data import load_bundle
                from ramer.train.recipe import data_sizes, memory_named

                with memory_named(*data_sizes(cfg)):
                    bundle = load_bundle(cfg.data)
            try:  # a folder name made up here is said before the work (to --resume it after a stop)
                result = run_training(cfg, out, bundle=bundle, console=ERR, resume=bool(args.resume), announce=made_up)
            finally:
                if made_here:  # stopped before an epoch ended: neither it nor a runs/ made for it stays
                    remove_unstarted_run(out, cfg, parent_too=runs_made)
    except KeyboardInterrupt as e:
        code = 143 if isinstance(e, Terminated) else 130
        if env_count("RANK", 0) != 0:  # one hint, not one per process
            return code
        ERR.print(interrupted_hint(out, env_count("WORLD_SIZE", 1)))
        return code
    finally:
        if made_here:  # its lock file is gone now
            remove_if_empty(out, parent_too=runs_made)
    if env_count("RANK", 0) == 0:  # one table, not one per process
        from ramer.checkpoint import read_spec
        from ramer.train.recipe import read_log

        task = read_spec(out / "model.safetensors").task
        final = [rec for _, rec in read_log(out / "metrics.jsonl") if rec.get("final") == "test"]
        last = final[-1] if final else {}
        # the log's test line holds the labels' support too: the table says which no test sample has
        rows = {cfg.model.name: {**result, **({"per_label": last["per_label"]} if "per_label" in last else {})}}
        if bundle is not None:  # the embedded benchmark: its ceiling beside the run (docs/DATA.md)
            from ramer.bench import ORACLE_ROW
            from ramer.metrics import oracle_report

            if (oracle := oracle_report(bundle.info, "test")) is not None:  # as eval and bench show it
                rows[ORACLE_ROW] = oracle
        OUT.print(
            metrics_table(f"test metrics ({cfg.model.name}, {out}{tested_with(out)})", rows, task), soft_wrap=False
        )
        no_test = result.get("overall", {}).get("n", 1) == 0  # the commands it names refuse an empty split
        ERR.print(next_steps(out, "valid" if no_test else None))
    return 0


def next_steps(run: Path | str, split: str | None = None) -> str:
    """The line after a finished run: where it is and the commands that use it, ready to paste;
    on ``split`` (``valid`` after a run whose test split is empty: those commands refuse an empty one)."""
    q = shell_quote(argument(run)) + (f" --split {split}" if split else "")
    return (
        f"run folder: {run}; next: ramer eval {q}, ramer predict {q} --out preds.jsonl, "
        f"ramer view {q} --out scenes.html"
    )


def interrupted_hint(out: Path, processes: int = 1) -> str:
    """What to run after Ctrl-C stopped a run in ``out``, from what the folder then holds: resume
    from a saved state (naming its epoch, which the last epoch line printed may not be), in as many
    ``processes`` as it trained in (``--nproc``: in another count it trains on otherwise); a command
    that a new run there would refuse names what to do instead."""
    from ramer.checkpoint import saved_epoch
    from ramer.train.recipe import existing_run

    if (out / "train_state.pt").exists():  # written at the end of every epoch
        epoch = saved_epoch(out / "train_state.pt")  # Ctrl-C may land after its save, before its line
        saved = f"; epoch {epoch} is saved" if epoch else ""
        nproc = f" --nproc {processes}" if processes > 1 else ""
        return f"interrupted{saved}; resume with: ramer train --resume {shell_quote(argument(out))}{nproc}"
    held = existing_run(out) if out.is_dir() else None
    if held:  # a classical fit's model file (--resume keeps it), a deep run's first best model
        return f"interrupted before a state to resume from was saved: {held}"
    return "interrupted before anything was saved to resume from: run the command again"


def cmd_export(args: argparse.Namespace) -> int:
    import io

    from ramer.export import check_onnx, export_onnx, require_onnx

    file_only("--onnx", args.onnx)
    require_onnx(runtime=args.check)
    from ramer.models import CLASSICAL
    from ramer.paths import file_folder, output_file

    predictor = load_predictor(args.run_dir, device="cpu")
    if predictor.cfg.model.name in CLASSICAL:
        raise RamerError(f"{args.run_dir}: ONNX export is for the deep models, not '{predictor.cfg.model.name}'")
    output_file(args.onnx, reads=(model_file(args.run_dir),), make=False)
    fitting_name("export", "--onnx", args.onnx)  # after the checks above, whose messages say more
    log = io.StringIO()
    t0 = time.perf_counter()
    ERR.print(f"exporting {args.run_dir} to ONNX (tens of seconds)")

    if predictor.cfg.train.precision == "bf16":
        ERR.print(
            "note: this run was trained with train.precision=bf16, and ramer predict scores it under bf16 "
            "autocast; the graph computes in fp32, so its probabilities differ a little from predict's, "
            "and a decision near the threshold can differ"
        )
    checked = []  # --check: of the written file, before it replaces the one at --onnx (a failed check keeps it)
    check = (lambda wrapper, tmp: checked.extend(check_onnx(wrapper, predictor.spec, tmp))) if args.check else None
    try:
        # the exporter prints the partial graph of a failed trace to stderr (a hundred lines): kept out
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            with file_folder(args.onnx):  # the folder made for the file is removed again if the export fails
                wrapper = export_onnx(
                    predictor.model, predictor.spec, args.onnx, threshold=predictor.threshold, check=check
                )
    except RamerError:
        raise
    except Exception as e:  # the exporter raises many types; keep its first line, its cause's and the log tail
        # Ctrl-C, which the exporter wrapped in an error of its own (in one of the hundreds of modules it
        # imports as it goes, the interrupt leaves the module half made, and its next use fails)
        if interrupt := _interrupt_within(e):
            raise interrupt from None
        plain = lambda text: re.sub(r"\x1b\[[0-9;]*m", "", text).strip()  # noqa: E731  (no colour codes)
        line_of = lambda err: plain(first_line(err))  # noqa: E731
        tail = " | ".join(plain(log.getvalue()).splitlines()[-3:])
        first = re.sub(r"\s*Next steps:$", "", line_of(e))  # torch's line ends on a list it gives below
        root, seen = e, {id(e)}
        while root.__cause__ is not None and id(root.__cause__) not in seen:  # the innermost cause: what the model did
            root = root.__cause__
            seen.add(id(root))
        if root is not e:
            first = f"{first.rstrip('.')}; cause: {type(root).__name__}: {line_of(root)}"
        raise RamerError(f"ONNX export of {args.run_dir} failed: {first}" + (f" ({tail})" if tail else "")) from None
    size = Path(args.onnx).stat().st_size / 2**20
    said = wrote_to()
    said.print(
        f"wrote {args.onnx} ({size:.1f} MiB) in {time.perf_counter() - t0:.0f}s; inputs: "
        f"{', '.join(wrapper.input_names())}; output: probs (B, {len(predictor.label_names)}); "
        "dynamic: batch, persons, segments"
    )
    for r in checked:
        B, P, S = r.shape
        said.print(
            f"check: onnxruntime vs torch at B={B}, P={P}, S={S}: max abs difference "
            f"{r.max_abs_diff:.2e} (limit 1e-4) ok"
        )
    return 0


def tested_with(run: Path) -> str:
    """``, best epoch N, threshold 0.43`` (or ``arg-max``, or the per-label range): the checkpoint and
    decision the test line of ``run`` used, from its model file's header, as ``ramer eval`` titles
    them; empty where the header does not say."""
    from ramer.checkpoint import metadata
    from ramer.paths import loads_json

    try:
        meta = metadata(run / "model.safetensors")
        return f", {checkpoint_words(int(meta['epoch']), loads_json(meta['threshold']))}"
    except Exception:  # a title's detail: the table is the output
        return ""


def checkpoint_words(epoch: int, threshold) -> str:
    """``best epoch N, threshold 0.43`` (or ``arg-max``, or the per-label range): the titles of
    ``ramer train``'s and ``ramer eval``'s tables."""
    from ramer.metrics import describe_threshold

    return f"best epoch {epoch}, {describe_threshold(threshold, 'threshold')}"


def _interrupt_within(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt among ``error``'s causes and contexts, if any (None: none)."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, KeyboardInterrupt):
            return e
        todo += [e.__cause__, e.__context__]
    return None


def model_file(run_dir: str) -> Path:
    """The model file a RUN_DIR argument names (a run folder, or the file itself): a file the
    command reads, which its output may not replace."""
    path = Path(run_dir)
    return path / "model.safetensors" if path.is_dir() else path


def load_predictor(run_dir: str, device: str | None = None, precision: str = "fp32"):
    """``ramer.load`` for a command: a run that has not finished is said in a ``note:`` line, not
    as a Python warning with its source line; so is a model file another ramer version wrote (its
    figures are that version's)."""
    from ramer.api import RunNotFinished, load
    from ramer.version import version_note

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunNotFinished)
        predictor = load(run_dir, device=device, precision=precision)
    for w in caught:
        if issubclass(w.category, RunNotFinished):
            ERR.print(f"note: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    written = predictor.written_by.get("ramer_version")
    if written and written != __version__:
        ERR.print(f"note: {run_dir}: {version_note(written)}")
    return predictor


def score_split(predictor, store, args: argparse.Namespace, bundle):
    """``predictor.predict`` of ``store`` (``bundle``'s split ``--split``) with ``--workers`` and
    ``--batch-size``; a batch that does not fit in memory is one line naming ``--batch-size``. The
    data is checked first (``check_data``, with ``bundle.info`` for an error where the store's sizes
    are not the model's); then, for ``--data`` other than the run's own, a note says what its other
    splits hold, which the command does not read."""
    from ramer.train.recipe import memory_named

    predictor.check_data(store.label_names, store.dims, store.source, store.labels, bundle.info)
    for note in predictor.data_notes(bundle):
        ERR.print(f"note: {note}")
    # other data (a new table, split by seed) is read one split at a time: say what the rest holds. Not for
    # the run's own data, whose other splits are what it was trained and validated on
    if args.data is not None and not is_run_data(args.data, predictor):
        if note := other_splits_note(bundle, args.split):
            ERR.print(f"note: {note}")
    batch = args.batch_size or predictor.cfg.train.eval_batch_size
    with memory_named(f"scoring split '{args.split}' ({batch} scenes at once)", f"--batch-size {batch}"):
        return predictor.predict(store, workers=args.workers, batch_size=batch)


def load_run_and_data(args: argparse.Namespace):
    """``eval`` / ``predict``: the run's predictor (at ``--precision``) and the dataset of ``--data``
    (default: the run's own), checked to have ``--split``."""
    from ramer.api import OtherImport, load_data_for

    predictor = load_predictor(args.run_dir, device=args.device, precision=args.precision)
    with warnings.catch_warnings():  # score_split says it as a note, once the data is checked
        warnings.simplefilter("ignore", OtherImport)
        bundle = load_data_for(predictor, args.data, compare=())  # the note below says it for --split
    if args.split not in bundle.splits:
        raise RamerError(f"{bundle.source}: no split '{args.split}' (has {', '.join(bundle.splits)})")
    if args.data is None:  # the run's own data: is it still what the run was made on?
        from ramer.checkpoint import changed_splits

        if changed_splits(predictor.data_fingerprints, bundle, [args.split]):
            path = predictor.cfg.data.path
            if path is None:  # made again since, or the run was trained on a bundle made in Python
                where = "the embedded benchmark (or the run was trained on data made in Python: give that data)"
            elif not Path(path).is_absolute():  # another folder's data of that name may be read
                where = f"{path}, read from {Path.cwd()} (the run's data.path is relative to where it was trained)"
            else:
                where = path
            ERR.print(
                f"note: split '{args.split}' of {where} has changed since the run was made on it; what follows is "
                "of the data as it is now"
            )
    if len(bundle.splits[args.split]) == 0:
        sizes = ", ".join(f"{name} {len(store)}" for name, store in bundle.splits.items())
        raise RamerError(f"{bundle.source}: split '{args.split}' has no samples ({sizes}); choose another --split")
    return predictor, bundle


def is_run_data(path: str, predictor) -> bool:
    """Whether ``--data`` names the folder or file the run was trained on (its ``data.path``, a relative
    one read from this folder as ``load_data_for`` reads it)."""
    own = predictor.cfg.data.path
    return own is not None and os.path.realpath(os.path.expanduser(path)) == os.path.realpath(os.path.expanduser(own))


def other_splits_note(bundle, split: str) -> str | None:
    """What the splits other than ``split`` hold, and the flag that reads them, where any holds a
    sample: ``predict``, ``eval`` and ``view`` read one split, and the rest of ``--data`` goes unread."""
    others = {name: len(store) for name, store in bundle.splits.items() if name != split and len(store)}
    if not others:
        return None
    n = len(bundle.splits[split])
    held = ", ".join(f"{name} {k}" for name, k in others.items())
    flags = ", ".join(f"--split {name}" for name in others)
    return (
        f"split '{split}' holds {n} of the {n + sum(others.values())} samples of {bundle.source}; the others are in "
        f"{held} ({flags} read{'s' * (len(others) == 1)} them)"
    )


def data_files(bundle, path: str | None) -> tuple:
    """The files a dataset was read from: its path (a file, or a folder whose own files
    ``output_file`` knows) and what its loader records (``info.source_files``: an imported table,
    its personality file, a corpus file)."""
    return (path, *(f for f in bundle.info.get("source_files", []) if Path(f).is_absolute()))  # older: relative


def cmd_eval(args: argparse.Namespace) -> int:
    from ramer.infer import apply_missing
    from ramer.metrics import confusion, oracle_report, report

    predictor, bundle = load_run_and_data(args)
    if not bundle.labelled:  # its labels are all 0: metrics of them would look real and mean nothing
        raise RamerError(f"{bundle.source}: the data has no annotations (an unlabelled import); use ramer predict")
    store = apply_missing(bundle, predictor.cfg)[args.split]  # the same extra missingness as in training
    # predict's check (other labels, sizes), before the single-label one
    predictor.check_data(store.label_names, store.dims, store.source, store.labels, bundle.info)
    if predictor.spec.single_label:  # one label out: its accuracy is accuracy only with one label in
        from ramer.data.store import not_one_label

        if problem := not_one_label(store.labels, args.split):
            raise RamerError(
                f"{bundle.source}: the run is single-label (it predicts one label per sample), but {problem}; "
                "its figures would not mean what they say: use ramer predict, or a multi-label run"
            )
    scores = score_split(predictor, store, args, bundle)
    rep = report(store.labels, scores, predictor.threshold, store.role, bundle.label_names)
    if predictor.spec.single_label:  # one gold label, one decided: which emotions are taken for which
        matrix = confusion(store.labels, predictor.decide(scores))
        rep["confusion"] = {"labels": list(bundle.label_names), "gold_by_decided": matrix.tolist()}
    if args.json:
        write_stdout(json.dumps(rep, indent=1) + "\n")
        return 0
    name = predictor.cfg.model.name
    title = f"{args.split} metrics ({name}, {checkpoint_words(predictor.epoch, predictor.threshold)})"
    rows = {name: rep}
    if (oracle := oracle_report(bundle.info, args.split)) is not None:  # the embedded benchmark's ceiling
        from ramer.bench import ORACLE_ROW

        rows[ORACLE_ROW] = oracle
    OUT.print(metrics_table(title, rows, predictor.spec.task), soft_wrap=False)
    if args.per_label:
        table = per_label_table(f"{args.split}, per label ({name})", rep["per_label"], rep.get("per_label_by_role"))
        OUT.print(table, soft_wrap=False)
        if "confusion" in rep:
            OUT.print(
                confusion_table(f"{args.split}, gold (rows) by decided (columns)", rep["confusion"]), soft_wrap=False
            )
    return 0


def per_label_table(title: str, per_label: dict[str, dict], by_role: dict[str, dict] | None = None) -> Table:
    """One line per label: its support, precision, recall and F1 (``metrics.per_label_metrics``),
    then, where the targets have roles (``report``'s ``per_label_by_role``), its F1 and support
    among each role's targets: where both roles have some (where all are speakers, as in an
    import, that column would be the F1 column again)."""
    by_role = by_role if by_role and len(by_role) > 1 else {}
    table = Table(title=title)
    roles = [f"F1 {role} (support)" for role in by_role]  # the parts' names, as the metrics table's targets
    for col in ("label", "support", "P", "R", "F1", *roles):  # a long label folds, whole, not cut to "label-nu…"
        table.add_column(col, justify="left" if col == "label" else "right", overflow="fold")
    for label, m in per_label.items():
        among = [f"{part[label]['f1']:.4f} ({part[label]['support']})" for part in by_role.values()]
        table.add_row(label, str(m["support"]), *(f"{m[k]:.4f}" for k in ("p", "r", "f1")), *among)
    return table


def confusion_table(title: str, matrix: dict) -> Table:
    """``eval``'s ``confusion`` (``labels``, ``gold_by_decided``) as counts, a row per gold label. A
    name too long for its column folds onto more lines, whole: cut short ("label-nu…") labels that
    begin alike were one name for every row and column."""
    table = Table(title=title)
    table.add_column("gold \\ decided", justify="left", overflow="fold")
    for label in matrix["labels"]:
        table.add_column(label, justify="right", overflow="fold")
    for label, counts in zip(matrix["labels"], matrix["gold_by_decided"]):
        table.add_row(label, *map(str, counts))
    return table


def wrote_to() -> Console:
    """Where ``predict --out FILE``, ``view`` and ``export`` say what they wrote: stdout (``OUT``). With
    stdout closed (``>&-``, a cron line) nowhere: the file is the command's output, written, and
    a line about it that has nowhere to go fails nothing (a script's ``&& next`` goes on)."""
    return OUT if sys.stdout is not None else PipeConsole(file=StreamFile("stdout"), quiet=True, **PLAIN)


def cmd_predict(args: argparse.Namespace) -> int:
    from ramer.infer import prediction_records
    from ramer.paths import atomic_write_text, file_folder, output_file

    to_stdout = args.out == STDOUT  # the lines are the output (ramer predict RUN --out - | jq): the rest to stderr
    if to_stdout and sys.stdout is None:  # before the work, which would go nowhere
        raise RamerError(
            "stdout: closed; the predictions have nowhere to go (redirect it to a file, or give --out FILE)"
        )
    reads = (model_file(args.run_dir),)
    if not to_stdout:
        output_file(args.out, reads=reads, make=False)  # before the work: a folder or an unusable path fails now
    with contextlib.nullcontext() if to_stdout else file_folder(args.out):  # made now, removed if nothing is written
        predictor, bundle = load_run_and_data(args)
        if not to_stdout:
            data_from = data_files(bundle, args.data or predictor.cfg.data.path)
            output_file(args.out, reads=reads, data_from=data_from, make=False)
            fitting_name("predict", "--out", args.out)  # after the checks above, whose messages say more
        store = bundle.splits[args.split]
        probs = score_split(predictor, store, args, bundle)
        records = prediction_records(store, probs, predictor.decide(probs), predictor.threshold)
        text = "".join(json.dumps(record) + "\n" for record in records)
        if to_stdout:
            write_stdout(text)
        else:
            atomic_write_text(args.out, text)
    said = ERR if to_stdout else wrote_to()
    said.print(f"wrote {len(records)} predictions to {'stdout' if to_stdout else args.out}")
    if bundle.format == "conversations":  # an imported set: a timeline per conversation
        from ramer.data.conversations import format_timelines

        said.print(format_timelines(bundle, args.split, probs, predictor.threshold))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from ramer.infer import extra_missing_rate, prediction_records, read_predictions
    from ramer.paths import atomic_write_text, file_folder, output_file
    from ramer.view import page_data, render_page

    if args.run_dir is None and args.preds is None:
        raise RamerError("give RUN_DIR (its predictions are made now) or --preds FILE (written by ramer predict)")
    if args.run_dir is None and args.data is None:
        raise RamerError("--preds without RUN_DIR needs --data PATH: the dataset the predictions were made on")
    if args.set and args.run_dir is not None:
        raise RamerError("--set is for --preds with --data (a run reads its data with its own options)")
    if args.preds is not None:
        unused = [
            f
            for f, on in (
                ("--device", args.device),
                ("--precision", args.precision != "fp32"),
                ("--workers", args.workers > 1),
                ("--batch-size", args.batch_size is not None),
            )
            if on
        ]
        if unused:
            raise RamerError(
                f"{'/'.join(unused)}: for predictions made now from RUN_DIR; --preds {args.preds} is shown as it is"
            )
    file_only("--out", args.out)
    reads = (args.preds,) if args.run_dir is None else (args.preds, model_file(args.run_dir))
    output_file(args.out, reads=reads, make=False)
    with file_folder(args.out):  # made now, removed again if the page is not written
        if args.run_dir is not None:
            predictor, bundle = load_run_and_data(args)
            threshold = predictor.threshold if args.preds is None else None  # None: the file's own (its records')
        else:
            from ramer.view import load_data

            bundle, threshold = load_data(args.data, args.set or []), None
            if args.split not in bundle.splits:
                raise RamerError(f"{bundle.source}: no split '{args.split}' (has {', '.join(bundle.splits)})")
        path = args.data if args.run_dir is None else (args.data or predictor.cfg.data.path)
        output_file(args.out, reads=reads, data_from=data_files(bundle, path), make=False)  # before the work
        fitting_name("view", "--out", args.out)  # after the checks above, whose messages say more
        store = bundle.splits[args.split]
        if args.preds is not None:
            records = read_predictions(args.preds, store.label_names)
        else:
            probs = score_split(predictor, store, args, bundle)
            records = prediction_records(store, probs, predictor.decide(probs), threshold)
        title = f"{args.preds or args.run_dir} on {bundle.source} [{args.split}]"
        notes: list[str] = []
        data = page_data(bundle, args.split, records, threshold, title, str(args.preds or args.run_dir), notes)
        run_data = predictor.cfg.data if args.run_dir is not None else None
        if run_data is not None and extra_missing_rate(run_data, args.split) > 0 and data["summary"]:
            data["figures_aside"] = (
                f"the run scores its {args.split} split with data.missing_rate {run_data.missing_rate:g} (missing_at "
                f"{run_data.missing_at}), as ramer eval does; this page scores the data as it is, as ramer predict "
                "does, so its figures are not eval's"
            )
            notes.append(data["figures_aside"])
        page = render_page(data)
        atomic_write_text(args.out, page)
    for note in notes:
        ERR.print(f"note: {note}")
    n, k = len(data["conversations"]), data["n_predicted"]
    wrote_to().print(
        f"wrote {args.out} ({len(page.encode()) / 1024:.0f} KiB): {plural(n, 'conversation')}, "
        f"{plural(k, 'predicted sample')}"
    )
    return 0


def print_synth_report(bundle, console: Console) -> None:
    from ramer.data.synthetic import statistics

    stats = statistics(bundle)
    table = Table(title=f"embedded benchmark {bundle.source}")
    for col in (
        "split",
        "scenes",
        "persons",
        "segments",
        "labels/sample",
        "empty",
        "text",
        "audio",
        "visual",
        "speaker targets",
    ):
        table.add_column(col, justify="right")
    for name, s in stats.items():
        pres = s["presence"]
        table.add_row(
            name,
            str(s["scenes"]),
            f"{s['persons_mean']:.2f}",
            f"{s['segments_mean']:.2f}",
            f"{s['label_cardinality']:.2f}",
            f"{s['empty_label_share']:.3f}",
            f"{pres['text']:.3f}",
            f"{pres['audio']:.3f}",
            f"{pres['visual']:.3f}",
            f"{s['speaker_target_share']:.3f}",
        )
    console.print(table, soft_wrap=False)
    freq = stats["train"]["label_freq"]
    console.print("label frequencies (train): " + ", ".join(f"{k} {v:.3f}" for k, v in freq.items()), highlight=False)
    console.print(
        metrics_table(
            "oracle ceiling (latent state before annotator noise)",
            {f"oracle ({k})": v for k, v in bundle.info["oracle"].items()},
        ),
        soft_wrap=False,
    )


def cmd_data_synth(args: argparse.Namespace) -> int:
    from ramer.data.store import check_dataset_folder
    from ramer.data.synthetic import generate

    refuse_empty(args, "out", out=None)  # the current folder
    # n_train=1000, or in the form of the other commands: data.synthetic.n_train=1000
    for s in args.set or []:
        key = s.split("=", 1)[0].strip()
        if "." in key and not key.startswith("data.synthetic."):  # prefixed, it would name a key never typed
            raise RamerError(
                f"--set {key}: data synth takes the keys of data.synthetic (n_train=1000, or "
                "data.synthetic.n_train=1000), not other config keys"
            )
    sets = [s if s.startswith("data.synthetic.") else f"data.synthetic.{s}" for s in (args.set or [])]
    cfg = build_config(resolve_config(args.config), sets)
    check_dataset_folder(args.out)  # before the work
    with hold(args.out, "ramer data synth", make=True):  # another writer there is refused, not mixed in
        bundle = generate(cfg.data.synthetic)
        bundle.save(args.out)
    print_synth_report(bundle, OUT)
    OUT.print(f"wrote {args.out}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from ramer.data.commands import run_info

    run_info(args.path, fmt=args.format, labels=args.labels, as_json=args.json, sets=args.set or [])
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from ramer.data.commands import run_convert

    refuse_empty(args, "out", out=None)  # the current folder
    with hold(args.out, "ramer data convert", make=True):
        run_convert(args.path, args.out, fmt=args.format, labels=args.labels, sets=args.set or [])
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from ramer.data.conversations import import_conversations, note_lines, summary_lines

    refuse_empty(args, "out", out=None)  # the current folder
    if args.labels is not None and ";" in args.labels and "," not in args.labels:  # the labels column's separator
        comma = shell_quote(args.labels.replace(";", ","))
        raise RamerError(f"--labels is comma-separated (got '{args.labels}'): --labels {comma}")
    labels = args.labels.split(",") if args.labels is not None else None
    try:
        with hold(args.out, "ramer data import", make=True):
            meta = import_conversations(
                args.file,
                args.out,
                labels=labels,
                personality=args.personality,
                context=args.context,
                seed=args.seed,
                console=ERR,
                targets=args.targets,
                task=args.task,
            )
    except KeyboardInterrupt as e:
        cache = Path(args.out) / "cache"
        kept = any(cache.glob("*/*.npz"))  # the entries FeatureCache keeps (a temporary file is not one)
        if isinstance(e, InterruptedAfter) or not kept:
            raise  # the dataset written, or nothing kept: main's one line
        ERR.print(
            f"interrupted; the features computed so far are kept in {cache}: run the same command again "
            "to go on from there"
        )
        return 130
    for line in summary_lines(meta, notes=False):
        OUT.print(line)
    for line in note_lines(meta):  # a script reads stdout: notes go beside the progress lines
        ERR.print(line)
    OUT.print(f"wrote {args.out}")
    q = shell_quote(argument(args.out))
    after = f"ramer train --data {q}"
    if not meta["info"]["conversations"]["labelled"]:
        after = f"ramer predict RUN_DIR --data {q} --out preds.jsonl (RUN_DIR: a run trained on these labels)"
    ERR.print(f"next: {after}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ramer.reproduce import reproduce

    refuse_empty(args, "out", out=f"runs/reproduce-{args.bench}")
    out = args.out or f"runs/reproduce-{args.bench}"
    try:
        text = reproduce(args.bench, args.data, args.seeds, out, args.set or [], ERR)
    except KeyboardInterrupt:
        ERR.print("interrupted; run the same command again to resume (finished seeds are read back)")
        return 130
    write_stdout(printable(text) + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ramer.bench import resolve_settings, run_bench

    refuse_empty(args, "data", "out", out="runs/bench, or with --quick runs/bench-quick")
    settings = resolve_settings(
        out=args.out,
        models=args.models,
        seeds=args.seeds,
        rates=args.missing_rates,
        missing_at=args.missing_at,
        data=args.data,
        config=resolve_config(args.config) if args.config else None,
        overrides=args.set or [],
        quick=args.quick,
        jobs=args.jobs,
        complete=args.complete,
        tuned=args.tuned,
        tune_trials=args.tune_trials,
        trial_seeds=args.trial_seeds,
    )
    reference = f" (+ {', '.join(settings.complete)} on complete inputs)" if settings.complete else ""
    counts = ((settings.models, "model"), (settings.seeds, "seed"), (settings.rates, "missing rate"))
    sizes = " x ".join(plural(len(items), noun) for items, noun in counts)
    ERR.print(f"bench: {sizes}{reference}, {settings.jobs} at a time -> {settings.out}")
    try:
        run_bench(settings, console=ERR)
    except KeyboardInterrupt:
        ERR.print("interrupted; run the same command again to resume (finished runs are cached)")
        return 130
    OUT.print(f"report: {settings.out / 'report.md'}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ramer.config import set_keys
    from ramer.metrics import METRIC_NAMES
    from ramer.models.spaces import format_values
    from ramer.tune import require_optuna, tune, tune_config

    require_optuna()  # before the data: a missing extra is the first thing to say
    refuse_empty(args, "data", "out", out=f"runs/tune-{args.model}")
    overrides = args.set or []
    cfg = tune_config(args.model, resolve_config(args.config), overrides, args.data)
    check_corpus_config_has_data(cfg)
    out = Path(args.out or f"runs/tune-{args.model}")
    try:
        result = tune(
            cfg,
            out,
            trials=args.trials,
            timeout=args.timeout,
            storage=args.storage,
            seed=args.seed,
            fixed=set_keys(overrides),
            console=ERR,
            trial_seeds=args.trial_seeds,
        )
    except KeyboardInterrupt:
        if not (out / "study.db").exists() and args.storage is None:  # stopped before its study was made
            raise
        ERR.print(f"interrupted; run the same command again to continue (finished trials are kept in {out})")
        return 130
    best = result.summary["best"]
    if best is None:
        OUT.print(f"no trial completed; trials: {out / 'trials.md'}")
    else:
        values = format_values(best["values"], digits=4, short=False)
        OUT.print(
            f"best: trial {best['trial']}, valid {METRIC_NAMES[result.summary['metric']]} {best['value']:.4f} "
            f"({values})\n"
            f"config: {out / 'best.yaml'} (ramer train --config {shell_quote(argument(out / 'best.yaml'))}); "
            f"trials: {out / 'trials.md'}"
        )
    return 0


DEMO_FILE = "demo.json"  # in the demo's --out: the run folders the demo made there
DEMO_RUNS = ("ramer", "late_fusion", "ramer-complete")  # the demo's run folders


def demo_runs(out: Path) -> set[str]:
    """The run folders an earlier ``ramer demo`` made in ``out``: those its ``demo.json`` lists (a
    run folder of that name which another command made is not the demo's, whatever it holds).
    ``out`` is made; a folder holding another command's work (a bench, a study...) is refused."""
    from ramer.paths import read_json, work_folder

    work_folder(out, "demo")
    if not (out / DEMO_FILE).exists():
        return set()
    runs = read_json(out / DEMO_FILE)
    if not isinstance(runs, dict) or not isinstance(runs.get("runs"), list):
        raise RamerError(f"{out / DEMO_FILE}: not a list of the demo's runs ({{'runs': [...]}})")
    return {str(r) for r in runs["runs"]}


def cmd_demo(args: argparse.Namespace) -> int:

    from ramer.data import complete_data
    from ramer.data.synthetic import generate
    from ramer.paths import atomic_write_text
    from ramer.train import run_training

    t0 = time.perf_counter()
    if not args.out.strip():  # Path("") is the current folder: the demo's runs were written there
        raise RamerError("--out: empty; give a folder (or leave --out out for runs/demo)")
    owned = [key for key in set_keys(args.set or []) if key in ("model.name", "model.ablations")]
    if owned:  # each run's model is the demo's: a --set of it trained RAMer all the same
        raise RamerError(
            f"--set {owned[0]}: ramer demo trains ramer, late fusion and ramer on complete inputs; "
            "for another model use ramer train --model NAME (or ramer bench --models)"
        )
    cfg = build_config(resolve_config("synthetic"), args.set or [])
    if cfg.data.path is not None:
        raise RamerError(
            f"ramer demo trains on the embedded benchmark, and data.path is set ({cfg.data.path}); "
            "for your data use ramer train --data or ramer bench --data"
        )
    from ramer.train.recipe import check_training_values, clear_run_folder, foreign_run_files

    def run_config(model: str, complete: bool = False) -> Config:
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.model.name = model
        if complete:  # the same scenes with every modality present, nothing hidden
            run_cfg.data = complete_data(run_cfg.data)
        return run_cfg

    plan = (  # (row, run folder, config), the folders in DEMO_RUNS order
        ("ramer", "ramer", run_config("ramer")),
        ("late_fusion", "late_fusion", run_config("late_fusion")),
        ("ramer, complete inputs (reference)", "ramer-complete", run_config("ramer", complete=True)),
    )
    for _, _, run_cfg in plan:  # a setting no run trains with: before the data and the folder
        check_training_values(run_cfg)
    out = Path(args.out)
    made = demo_runs(out)  # the run folders an earlier demo made here: the only ones it replaces
    for folder in DEMO_RUNS:
        theirs = (
            sorted(p.name for p in (out / folder).iterdir() if p.name != LOCK_NAME) if (out / folder).is_dir() else []
        )
        if folder not in made and theirs:  # a lock file a killed command left is no one's work
            raise RamerError(
                f"{out / folder}: holds files that ramer demo did not write ({first_of(theirs, 3)}); give another --out"
            )
        if folder in made and (foreign := foreign_run_files(out / folder, names=theirs)):  # before the work
            raise RamerError(
                f"{out / folder}: an earlier demo's run, and files a run does not write ({first_of(foreign, 3)}); "
                "move them, or give another --out"
            )
    bundle = generate(cfg.data.synthetic)
    ERR.print(f"generated the embedded benchmark in {time.perf_counter() - t0:.1f}s")
    print_synth_report(bundle, OUT)

    rows = {}
    try:
        for row, folder, run_cfg in plan:
            data = generate(run_cfg.data.synthetic) if run_cfg.data.synthetic != cfg.data.synthetic else bundle
            run_dir = out / folder
            if folder in made and run_dir.exists():
                ERR.print(f"replacing the earlier demo's {run_dir}")
                clear_run_folder(run_dir, "an earlier demo's run")
            made.add(folder)
            atomic_write_text(out / DEMO_FILE, json.dumps({"runs": sorted(made)}, indent=1))
            ERR.print(f"training {row} -> {run_dir}")
            rows[row] = run_training(run_cfg, run_dir, bundle=data, console=ERR)
    except KeyboardInterrupt:
        ERR.print(f"interrupted; run the same command again to start the demo over (it replaces its runs in {out})")
        return 130
    from ramer.bench import ORACLE_ROW
    from ramer.metrics import oracle_report

    if (oracle := oracle_report(bundle.info, "test")) is not None:  # as eval and bench show it
        rows[ORACLE_ROW] = oracle
    OUT.print(metrics_table("test metrics on the embedded benchmark (same scenes and seed)", rows), soft_wrap=False)
    OUT.print(f"run directories under {out}; total {time.perf_counter() - t0:.0f}s")
    ERR.print(next_steps(out / "ramer"))
    return 0


# ---------------------------------------------------------------------- parser
class Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage line on a command-line error goes to stderr or nowhere:
    argparse's own goes to stdout where stderr is closed (``ramer predict RUN --out - --bad 2>&-``),
    into the output that a pipe reads. The error line writes control characters out (``shown``),
    as every error line does: it repeats the arguments given."""

    def error(self, message: str):
        if sys.stderr is not None:
            self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {shown(message)}\n")

    def _print_message(self, message: str, file=None) -> None:
        """Help, usage, version and error text, written as every command's output is
        (``write_stdout``, ``write_stderr``): argparse's own ignores an OSError, so ``ramer --help
        >/dev/full`` ended 0 having printed nothing."""
        if not message:
            return
        if file is None and sys.stderr is not None:  # argparse asked for sys.stdout, which is closed (>&-)
            write_stdout(message)  # the closed-stdout error
        elif file is None or file is sys.stderr:
            write_stderr(message)
        elif file is sys.stdout:
            write_stdout(message)
        else:
            file.write(message)


class NotSeeds(argparse.Action):
    """``--seed`` of a command whose flag is ``--seeds N``, a count, which argparse would take for an
    abbreviation of ``--seeds`` (in ``tune`` and ``data import``, ``--seed`` is one seed): an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"--seed is not a flag of {parser.prog}: --seeds N is the number of seeds, each run's own")


class CommandParser(Parser):
    """The parser of a command (``ramer train``, ``ramer data import``): an argument it does not
    know is its own error, under its own usage line, with the nearest of its flags or the config key
    a flag names (``unrecognized``); argparse leaves it to the top-level parser, whose usage names
    no command and which knows none of the command's flags. Prefix matching (``--da`` for
    ``--data``) is argparse's, as before."""

    set_prefix = ""  # the config keys this command's --set takes (data synth: data.synthetic.*)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized(self, extras))
        return namespace, extras


def unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's message for the arguments ``parser`` did not take, with a hint for each flag
    among them (``flag_hint``)."""
    hints = [flag_hint(parser, arg, extras[k + 1 : k + 2]) for k, arg in enumerate(extras)]
    return "; ".join([f"unrecognized arguments: {' '.join(extras)}", *filter(None, hints)])


def flag_hint(parser: argparse.ArgumentParser, arg: str, after: list[str]) -> str | None:
    """What a flag ``arg`` that ``parser`` does not know was likely meant as: a config key of that
    name for a command with ``--set`` (``--epochs 2``: ``use --set train.epochs=2``; ``after``, the
    argument that follows, is its value), else the command's nearest flag (``--date``: ``did you
    mean --data?``), else a config key of a near name (``--epoch``); None for anything else."""
    from difflib import get_close_matches

    from ramer.config import config_keys

    if not arg.startswith("--") or arg == "--":
        return None
    flag, eq, value = arg.partition("=")
    if not eq:
        value = after[0] if after and not after[0].startswith("-") else ""
    options = parser._option_string_actions  # argparse keeps no public list of a parser's flags
    keys = [k for k in config_keys(Config) if k.startswith(parser.set_prefix)] if "--set" in options else []
    leaves = {}
    for key in keys:
        leaves.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    leaf = flag[2:].replace("-", "_")  # --batch-size: train.batch_size
    shown_flags = [o for o, a in options.items() if o.startswith("--") and a.help != argparse.SUPPRESS]
    near_flag = get_close_matches(flag, shown_flags, n=1, cutoff=0.75)
    if leaf not in leaves and near_flag:
        return f"did you mean {near_flag[0]}?"
    near_leaf = [leaf] if leaf in leaves else get_close_matches(leaf, leaves, n=1, cutoff=0.8)
    if not near_leaf:
        return None
    sets = [f"--set {shell_quote(f'{key}={value}') if value else f'{key}=VALUE'}" for key in leaves[near_leaf[0]]]
    return "use " + " or ".join(sets)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="ramer",
        description="Multi-party, multi-modal, multi-label emotion recognition: RAMer and its baselines.",
        epilog="First steps: ramer demo (trains on the embedded benchmark; about 6 minutes on 2 CPU cores), "
        "then ramer data import YOUR.csv --out DIR (your own conversations, docs/DATA.md) and ramer train "
        "--data DIR. ramer COMMAND --help says more.",
    )
    p.add_argument("--version", action="version", version=f"ramer {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)

    d = sub.add_parser(
        "demo",
        help="generate the embedded benchmark, train RAMer, late fusion and RAMer on complete inputs, "
        "print test metrics",
        description="Generate the embedded synthetic benchmark, train RAMer and the late-fusion baseline "
        "on it (same data and seed), and RAMer again on complete inputs (the same scenes "
        "with every modality present: a reference), and print their test metrics beside "
        "the oracle, which sees the latent state (the ceiling).",
    )
    d.add_argument("--out", default="runs/demo", help="where the run folders go (default: runs/demo)")
    d.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="config override, e.g. train.epochs=2 (repeatable)"
    )
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser(
        "train",
        help="train a model (best by validation micro-F1, weighted F1 on single-label data), then test it once",
        description="Train a model with the recipe (AdamW, warm-up + linear decay, best checkpoint by "
        "validation micro-F1, threshold tuned on validation) and test the best checkpoint once. "
        "Single-label data (data.task, recorded by data import): softmax cross-entropy, "
        "arg-max decision, best checkpoint by validation weighted F1. "
        "train.epochs is the cap; --set train.patience=K stops once validation has not "
        "improved for K epochs. "
        "Without --data it trains on the embedded synthetic benchmark.",
    )
    t.add_argument(
        "--model",
        help="model name, e.g. br, late_fusion, ramer, a preset ramer-<ablation>, or an installed model "
        "(docs/ARCHITECTURE.md, Adding a model) (default: the config's, ramer)",
    )
    t.add_argument("--config", help="a YAML file or a bundled config name (default: synthetic)")
    t.add_argument(
        "--data",
        help="dataset: a native directory (ramer data import, synth or convert) or a public benchmark "
        "file/directory (default: the embedded synthetic benchmark)",
    )
    t.add_argument("--out", help="run folder (default: runs/MODEL-TIMESTAMP)")
    t.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="config override, e.g. train.epochs=5 (repeatable)"
    )
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    t.add_argument(
        "--nproc",
        type=positive_int,
        metavar="N",
        help="train with N processes on this machine (DDP, started by torchrun's launcher with --standalone "
        "--nproc_per_node N; 1: this process alone); see docs/SCALING.md",
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a trained run on a split with its stored threshold",
        description="Evaluate the best checkpoint of RUN_DIR (config and threshold are read from it).",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or its model.safetensors")
    e.add_argument("--data", help="dataset to evaluate on (default: the one the run was trained on)")
    e.add_argument("--split", default="test", help="split to evaluate (default: test)")
    e.add_argument(
        "--json",
        action="store_true",
        help="print the full report as JSON (per label; on single-label data also the confusion counts)",
    )
    e.add_argument(
        "--per-label",
        action="store_true",
        help="also a table per label (support, P, R, F1) and, on single-label data, the confusion counts",
    )
    e.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help=PRECISION_HELP)
    e.add_argument("--workers", type=positive_int, default=1, metavar="N", help=WORKERS_HELP)
    e.add_argument("--batch-size", type=positive_int, metavar="N", help=BATCH_HELP)
    e.add_argument("--device", help=DEVICE_HELP)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser(
        "predict",
        help="write per-sample probabilities and labels of a trained run as JSON lines",
        description="Apply the best checkpoint of RUN_DIR to a dataset split; one JSON line per sample "
        "with its id, target, role, probs (label -> probability), labels and the threshold that chose them.",
    )
    pr.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or its model.safetensors")
    pr.add_argument("--data", help="dataset (default: the one the run was trained on)")
    pr.add_argument("--split", default="test", help="split to predict (default: test)")
    pr.add_argument(
        "--out", required=True, help="output .jsonl file, or - for stdout (what it says then goes to stderr)"
    )
    pr.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help=PRECISION_HELP)
    pr.add_argument("--workers", type=positive_int, default=1, metavar="N", help=WORKERS_HELP)
    pr.add_argument("--batch-size", type=positive_int, metavar="N", help=BATCH_HELP)
    pr.add_argument("--device", help=DEVICE_HELP)
    pr.set_defaults(func=cmd_predict)

    vw = sub.add_parser(
        "view",
        help="one self-contained HTML page of a split's predictions, conversation by conversation",
        description="Write one HTML file (everything inlined: no server, no network) that shows, per "
        "conversation, the persons x segments grid: which modalities each cell has, who speaks, the "
        "predicted emotions (strength = probability), the annotated ones and where they differ; a cell "
        "shows every label's probability, the threshold and the utterance's text (imported tables). "
        "Predictions come from RUN_DIR (made now) or from --preds (a ramer predict file, with --data).",
    )
    vw.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory or its model.safetensors")
    vw.add_argument("--preds", metavar="FILE", help="a predictions file of ramer predict (instead of predicting now)")
    vw.add_argument("--data", help="dataset (default: the one the run was trained on; required with --preds alone)")
    vw.add_argument("--split", default="test", help="split to show (default: test)")
    vw.add_argument("--out", required=True, help="output .html file")
    vw.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help=LOADER_SET_HELP + ", or data.format=F; with --preds alone"
    )
    vw.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help=PRECISION_HELP)
    vw.add_argument("--workers", type=positive_int, default=1, metavar="N", help=WORKERS_HELP)
    vw.add_argument("--batch-size", type=positive_int, metavar="N", help=BATCH_HELP)
    vw.add_argument("--device", help=DEVICE_HELP)
    vw.set_defaults(func=cmd_view)
    vw.set_prefix = "data."  # loader options only

    x = sub.add_parser(
        "export",
        help="export a trained run to ONNX (dynamic batch and scene size)",
        description="Export the eval forward of RUN_DIR's best checkpoint to ONNX with the dynamo "
        "exporter; batch, persons and segments are dynamic. Inputs and layout: "
        "ramer.export. Needs the optional extra: pip install 'ramer[onnx]'.",
    )
    x.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or its model.safetensors")
    x.add_argument("--onnx", required=True, metavar="OUT.onnx", help="output file")
    x.add_argument(
        "--check",
        action="store_true",
        help="run onnxruntime at other batch and scene sizes and compare with torch (max abs diff <= 1e-4)",
    )
    x.set_defaults(func=cmd_export)

    rp = sub.add_parser(
        "reproduce",
        help="the paper protocol on a public benchmark over seeds, with a results table",
        description="Train the benchmark's named config once per seed (best by validation micro-F1, "
        "threshold on validation, test once) and write a mean ± std table. With --set "
        "data.task=single_label (data of one label a sample): best by weighted F1, the arg-max decides, "
        "and the table gives accuracy, weighted F1 and macro-F1.",
    )
    rp.add_argument(
        "bench", choices=("mosei", "mosei_unaligned", "mosei_authors", "m3ed", "memor_primary", "memor_fine")
    )
    rp.add_argument("--data", required=True, help="the benchmark file or directory (or a converted directory)")
    rp.add_argument("--seeds", type=int, default=3, metavar="N", help="number of seeds (default: 3)")
    rp.add_argument("--seed", nargs="?", action=NotSeeds, help=argparse.SUPPRESS)
    rp.add_argument("--out", help="output folder (default: runs/reproduce-BENCH)")
    rp.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    rp.set_defaults(func=cmd_reproduce)

    b = sub.add_parser(
        "bench",
        help="every model on the same data, seeds and missing rates; results, report, plots",
        description="Train and test the models of --models (by default the group all: the classical and "
        "deep baselines and RAMer; the group ablations: RAMer and its ramer-<ablation> presets) on identical "
        "splits, seeds and missing-modality masks; deep models train "
        "until validation stops improving (patience 5, at most 40 epochs); thresholds on "
        "validation (single-label data: the arg-max), test once. Finished runs are cached under "
        "OUT/runs, so an interrupted bench resumes where it stopped. Writes OUT/results.json, OUT/report.md and "
        "OUT/plots/*.png. Defaults and their reasons: docs/BENCH.md.",
    )
    b.add_argument("--data", help="dataset path (default: the embedded synthetic benchmark)")
    b.add_argument("--config", help="a YAML file or a bundled config name (default: synthetic)")
    b.add_argument(
        "--models",
        help="all (default), ablations, or a comma list, e.g. br,late_fusion,ramer,ramer-no_shuffle; installed "
        "models too (docs/ARCHITECTURE.md, Adding a model)",
    )
    b.add_argument("--seeds", type=int, metavar="N", help="number of seeds (default: 3; --quick: 1)")
    b.add_argument("--seed", nargs="?", action=NotSeeds, help=argparse.SUPPRESS)
    b.add_argument("--missing-rates", help="comma list of extra missing rates (default: 0,0.3,0.6; --quick: 0,0.6)")
    b.add_argument(
        "--missing-at",
        choices=MISSING_AT,
        default="all",
        help="hide modalities in all splits (default) or only at test (clean training)",
    )
    b.add_argument("--out", help="output folder (default: runs/bench, --quick: runs/bench-quick)")
    b.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="runs trained at once, one process and one torch thread each "
        "(default: the number of CPU cores, at most 8)",
    )
    b.add_argument(
        "--complete",
        metavar="MODELS",
        help="models also trained once per seed on complete inputs (the same scenes, every modality "
        "present, missing rate 0), shown as a reference row under every table; embedded benchmark "
        "only (default: ramer there, none on other data; '' for none)",
    )
    b.add_argument(
        "--quick", action="store_true", help="small smoke settings (fewer scenes and epochs, 1 seed, rates 0 and 0.6)"
    )
    b.add_argument(
        "--tuned",
        metavar="DIR",
        help="run each deep model with the values its search space chose, from DIR/<model>/best.yaml "
        "(ramer tune --out DIR/<model>); a deep model without one is an error",
    )
    b.add_argument(
        "--tune-trials",
        type=positive_int,
        metavar="N",
        help="first tune every deep model with the same budget of N trials (ramer tune, into OUT/tune/<model>), "
        "then run the bench with the tuned values; needs 'ramer[tune]'",
    )
    b.add_argument(
        "--trial-seeds",
        type=positive_int,
        metavar="K",
        help="with --tune-trials: train each trial K times, seeds from the first bench seed on, and score it by "
        "the mean of their best validation scores (ramer tune --trial-seeds K; default: 1)",
    )
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every run (repeatable)")
    b.set_defaults(func=cmd_bench)

    tu = sub.add_parser(
        "tune",
        help="search a model's settings with Optuna (TPE, median pruning); writes best.yaml",
        description="Search the model's space (ramer.models.spaces: learning rate, weight decay, hidden "
        "size, dropout, layers, and the model's own settings: loss weights, temperature, modality dropout, "
        "AMP's ratio, masked-pass weight and size, ML-GCN's threshold, MulT's kernels) with Optuna's "
        "seeded TPE sampler; each trial is a ramer train run in OUT/trial-NNNN, stopped early (train.patience, 5 "
        "unless --set or your own --config file sets it) and pruned by the median pruner on the "
        "per-epoch validation score. The value "
        "is the best validation micro-F1 (weighted F1 on single-label data), or with --trial-seeds K "
        "the mean over K seeds' runs; the search never reads test (each trial folder holds the test line "
        "ramer train writes: do not choose a trial by it). "
        "The study lives in OUT/study.db (or --storage), so running the same command again "
        "continues it. Writes OUT/best.yaml (ramer train --config OUT/best.yaml), "
        "OUT/trials.md, OUT/trials.csv and OUT/tune.json. A key given with --set is kept, not "
        "searched. Needs the optional extra: pip install 'ramer[tune]'.",
    )
    tu.add_argument(
        "--model",
        required=True,
        help="a deep model, e.g. ramer, mult, amp, a ramer-<ablation> preset, or an installed model (its own "
        "search space where it registers one: docs/ARCHITECTURE.md, Adding a model)",
    )
    tu.add_argument("--data", help="dataset (default: the embedded synthetic benchmark)")
    tu.add_argument("--config", help="a YAML file or a bundled config name (default: synthetic)")
    tu.add_argument(
        "--trials",
        type=positive_int,
        default=20,
        metavar="N",
        help="the study's budget: run trials until it holds N finished ones, counting those it has (default: 20)",
    )
    tu.add_argument("--timeout", type=float, metavar="S", help="start no trial after S seconds")
    tu.add_argument("--out", help="output folder (default: runs/tune-MODEL)")
    tu.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override for every trial; fixes that key (repeatable)",
    )
    tu.add_argument(
        "--storage",
        metavar="URL",
        help="an Optuna database URL (sqlite:///F, postgresql://..., mysql://...) instead of OUT/study.db: "
        "processes on several machines given the same URL share one study (docs/SCALING.md)",
    )
    tu.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    tu.add_argument(
        "--trial-seeds",
        type=positive_int,
        default=1,
        metavar="K",
        help="train each trial K times, seeds train.seed to train.seed+K-1 (OUT/trial-NNNN/seed-S), and score "
        "it by the mean of their best validation scores: on small or noisy data one seed's score is partly "
        "luck. Costs K times the training (default: 1)",
    )
    tu.set_defaults(func=cmd_tune)

    data = sub.add_parser(
        "data",
        help="import your own conversations; generate, inspect and convert datasets",
        description="Import your own conversations, generate the embedded benchmark, inspect a dataset, "
        "convert to the native format.",
    )
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser(
        "synth",
        help="write the embedded synthetic benchmark in the native format",
        description="Generate the embedded benchmark (seeded, deterministic) into DIR and print its "
        "statistics and oracle ceiling.",
    )
    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    s.add_argument("--config", help="config whose data.synthetic section to use (default: synthetic)")
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="generator setting, e.g. seed=3 or n_train=1000 (keys of data.synthetic, with or without the "
        "data.synthetic. prefix; repeatable)",
    )
    s.set_defaults(func=cmd_data_synth)
    s.set_prefix = "data.synthetic."
    i = dsub.add_parser(
        "info",
        help="describe a dataset: format, labels, dims, split statistics",
        description="Read a dataset (any supported format) and print what it holds.",
    )
    i.add_argument("path", metavar="PATH", help="a dataset: a native folder or a public benchmark file or folder")
    i.add_argument("--format", default="auto", help=FORMAT_HELP)
    i.add_argument("--labels", choices=("primary", "fine_grained"), help="MEmoR label set (default: primary)")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--set", action="append", metavar="KEY=VALUE", help=LOADER_SET_HELP)
    i.set_prefix = "data."  # loader options only
    i.set_defaults(func=cmd_data_info)
    c = dsub.add_parser(
        "convert",
        help="convert a dataset to the native (memory-mapped) format",
        description="Convert any supported dataset to the native format for fast loading.",
    )
    c.add_argument("path", metavar="PATH", help="a public benchmark file or folder, or a native folder (written again)")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder")
    c.add_argument("--format", default="auto", help=FORMAT_HELP)
    c.add_argument("--labels", choices=("primary", "fine_grained"), help="MEmoR label set (default: primary)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help=LOADER_SET_HELP)
    c.set_prefix = "data."  # loader options only
    c.set_defaults(func=cmd_data_convert)
    im = dsub.add_parser(
        "import",
        help="import your own conversations (CSV/JSONL of utterances, optional media)",
        description="Read a table (CSV, TSV or JSON lines) with one row per utterance (conversation, index, "
        "speaker, text; optional start, end, media, present, labels, target, split; "
        "docs/DATA.md), compute text / audio / visual features offline and write the "
        "native format. Features are cached per conversation in DIR/cache, so importing "
        "again only computes what changed. Needs: pip install 'ramer[import]'; face "
        "features also 'ramer[face]'.",
    )
    im.add_argument(
        "file", metavar="FILE", help="the utterance table: .csv, .tsv or .txt, or JSON lines (.jsonl, .json, .ndjson)"
    )
    im.add_argument("--out", required=True, metavar="DIR", help="output folder (native format, plus its feature cache)")
    im.add_argument(
        "--labels",
        metavar="A,B,C",
        help="label names in order (default: the sorted names in the labels column; required when the "
        "file has none: use the names of the model you will predict with)",
    )
    im.add_argument("--personality", metavar="FILE", help="CSV of per-person trait vectors: person,trait_1,...")
    im.add_argument(
        "--context",
        type=int,
        default=8,
        metavar="N",
        help="utterances before and after the target in each sample's scene (default: 8)",
    )
    im.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the 80/10/10 split by conversation when the file has no split column (default: 0)",
    )
    im.add_argument(
        "--targets",
        choices=("rows", "all"),
        default="rows",
        help="rows: a sample per target row, its speaker (default); all: at each target row a sample "
        "for every person of the conversation, listeners included (unlabelled files, for predict)",
    )
    im.add_argument(
        "--task",
        choices=("auto", *TASKS),
        default="auto",
        help="what meta.json records: single_label (exactly one label per sample: softmax, arg-max "
        "decision, best epoch by weighted F1) or multi_label; auto (default): single_label when "
        "every sample of a labelled file has exactly one label",
    )
    im.set_defaults(func=cmd_data_import)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with interrupts_kept():
            return int(args.func(args) or 0)
    except RamerError as e:
        return said(f"error: {e}", 2)
    except InterruptedAfter as e:  # once work that could not stop half-way was done
        return said(f"interrupted once the write was done: {e.done}", 130)
    except KeyboardInterrupt:
        return said("interrupted", 130)
    except BrokenPipeError:
        gone = [stream for stream in (sys.stdout, sys.stderr) if reader_gone(stream)]
        if not gone:
            raise  # another pipe (a worker, a database connection): a real error
        # the reader of stdout or stderr went away (ramer ... | head): not an error of ours
        for stream in gone:
            to_nothing(stream)
        return 141
    except OSError as e:  # after BrokenPipeError, one of them
        if e.errno != errno.ENAMETOOLONG or not e.filename:
            raise
        # a path the system will not look up, at whichever check first asks about it (Path.exists too)
        return said(f"error: {e.filename}: a name in the path is longer than the file system allows", 2)


@contextlib.contextmanager
def interrupts_kept():
    """Within it, a Ctrl-C (or SIGTERM read as one, ``dist.Terminated``) that Python could not raise,
    since it came while a finaliser ran (a weakref's callback, a ``__del__``: "Exception ignored in"),
    is delivered again to the main thread, by the signal it came from, a few hundredths of a second
    later (from another thread: delivered at once, it came while this hook ran, and was lost again);
    the command stops, where it went on to its end and exit code 0 (a command that ends first is
    not sent it). Other exceptions Python cannot raise are reported as before."""
    import _thread
    import threading

    before = sys.unraisablehook

    def send(signum: int) -> None:  # a real signal wakes a wait (a sleep), as Ctrl-C does
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(threading.main_thread().ident, signum)
        else:
            _thread.interrupt_main(signum)

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            return before(unraisable)
        dist = sys.modules.get("ramer.dist")  # not imported: nothing read SIGTERM as Ctrl-C
        terminated = dist is not None and isinstance(unraisable.exc_value, dist.Terminated)
        again = threading.Timer(0.05, send, (signal.SIGTERM if terminated else signal.SIGINT,))
        again.daemon = True
        pending.append(again)
        again.start()

    pending: list[threading.Timer] = []
    sys.unraisablehook = hook
    try:
        yield
    finally:
        if sys.unraisablehook is hook:  # not one that a command in another thread set since
            sys.unraisablehook = before
        for again in pending:  # the command has ended: no signal after it (a caller's own code); one
            again.cancel()  # sending now is waited for, and its Ctrl-C raised here, in main
            again.join()


def said(line: str, code: int) -> int:
    """Print ``line`` to stderr, its control characters escaped (``errors.shown``), and return the
    exit code ``code``; where stderr will not take it (``2>/dev/full``: a traceback that could not be
    printed either, exit 1) there is nowhere to say it, and the code stays, or is 141 where stderr's
    reader has gone (``ramer ... 2>&1 | head``)."""
    try:
        ERR.print(shown(line))
    except BrokenPipeError:
        code = 141
    except RamerError:  # stderr: cannot write (...)
        pass
    else:
        return code
    to_nothing(sys.stderr)
    return code


def to_nothing(stream) -> None:
    """Point the descriptor of ``stream`` (stdout, stderr) at the null device, so that Python's own
    flush at exit does not fail again on what a failed write left in its buffer (exit 120, or 1 and a
    traceback); a stream without a descriptor (pytest's capture) is left as it is."""
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):
        return
    os.dup2(devnull, fd)
    os.close(devnull)


def reader_gone(stream) -> bool:
    """Whether ``stream`` is a pipe whose reading end is closed (poll reports an error on its writing
    end); where that cannot be asked (no poll, no file descriptor), assume it is."""
    import select

    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


if __name__ == "__main__":
    sys.exit(main())
