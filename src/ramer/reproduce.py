"""``ramer reproduce BENCH``: the paper protocol on a public benchmark, over several seeds.

Per seed: train with the benchmark's named config, keep the best checkpoint by validation
micro-F1, tune the threshold on validation, test once. Then a table of mean ± std over seeds in
the layout the field uses (Acc, HL, micro P/R/F1, macro-F1; MEmoR also top-1 accuracy and
weighted F1), with speaker / non-speaker rows where the data has target roles. Single-label data
(``data.task=single_label`` on a benchmark read with one label a sample): best by weighted F1, the
arg-max decides, and the table is accuracy, weighted F1 and macro-F1. Run again into the
same ``--out``, it reads the seeds that finished (if they were made with the same settings; else
an error names the keys) and resumes the others.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from ramer import checkpoint as ckpt
from ramer.config import CONFIG_DIR, build_config, check_generator_sets, set_keys
from ramer.data import load_bundle
from ramer.data.formats import convert_again, converted_otherwise, listed, refuse_unread
from ramer.data.store import is_native, resolve_task
from ramer.errors import RamerError, is_number
from ramer.metrics import format_mean_std, markdown_table, mean_std, scored_parts
from ramer.paths import (
    argument,
    atomic_write_text,
    hold,
    read_json,
    shell_join,
    work_folder,
)
from ramer.train import run_training
from ramer.train.recipe import changed_settings, clear_run_folder

BENCHES = {
    # name: (bundled config, data format)
    "mosei": ("mosei", "mosei_aligned"),
    "mosei_unaligned": ("mosei", "mosei_unaligned"),
    "mosei_authors": ("authors_mosei", "mosei_aligned"),  # the authors' design and script values
    "m3ed": ("m3ed", "auto"),
    "memor_primary": ("memor_primary", "memor"),
    "memor_fine": ("memor_fine", "memor"),
}
# the layouts each benchmark's data may be in (a converted folder: the layout it was converted from)
LAYOUTS = {"m3ed": ("m3ed_pickle", "m3ed_carat"), "mosei_unaligned": ("mosei_unaligned",)}
COLUMNS = (
    ("acc", "Acc"),
    ("hamming_loss", "HL"),
    ("micro_p", "miP"),
    ("micro_r", "miR"),
    ("micro_f1", "miF1"),
    ("macro_f1", "maF1"),
)
MEMOR_COLUMNS = (("top1_acc", "Top-1"), ("weighted_f1", "wF1"))
# a single-label run (data.task): accuracy and weighted F1 first, as every ramer report of one; its
# micro P/R/F1 equal its accuracy, and its HL is 2 (1 - accuracy) / C
SINGLE_COLUMNS = (("top1_acc", "Acc"), ("weighted_f1", "wF1"), ("macro_f1", "maF1"))


def columns(memor: bool, task: str = "multi_label") -> tuple[tuple[str, str], ...]:
    """The table's (key, header) pairs: ``COLUMNS`` (and ``MEMOR_COLUMNS`` for MEmoR), or for a
    single-label task ``SINGLE_COLUMNS``."""
    if task == "single_label":
        return SINGLE_COLUMNS
    return COLUMNS + (MEMOR_COLUMNS if memor else ())


# How the authors' released code decides and which checkpoint it tests, where a benchmark is read as
# theirs (docs/MODEL.md, the "threshold and checkpoint" row): said under the heading, as the table differs
_MEMOR_PROTOCOL = " (the authors' code tests MEmoR's last epoch at a fixed threshold of 0.25: docs/MODEL.md)"
AUTHORS_PROTOCOL = {
    "mosei_authors": " (the authors' script decides at a fixed threshold of 0.25: docs/MODEL.md)",
    "memor_primary": _MEMOR_PROTOCOL,
    "memor_fine": _MEMOR_PROTOCOL,
}


def summarise(results: list[dict], memor: bool, task: str = "multi_label") -> str:
    """A markdown table of mean ± std over seeds, one row per target group (``columns``)."""
    cols = columns(memor, task)
    rows = []
    for part in ("overall", "speaker", "nonspeaker"):
        runs = [r[part] for r in results if part in scored_parts(r)]
        if runs:
            cells = [format_mean_std(*mean_std(r[key] for r in runs), digits=4) for key, _ in cols]
            rows.append([part, str(runs[0]["n"]), *cells])
    return "\n".join(markdown_table(["targets", "n", *(label for _, label in cols)], rows))


def metrics_problem(result, memor: bool, task: str = "multi_label") -> str | None:
    """What keeps a seed's read-back ``test_metrics.json`` out of ``summarise``'s table (None: nothing):
    an object whose ``overall`` part, and every other part it holds, has a number for ``n`` and, where
    it scored targets, for each column."""
    if not isinstance(result, dict):
        return f"a {type(result).__name__}, not an object of metrics"
    if "overall" not in result:
        return "no 'overall' metrics"
    keys = [key for key, _ in columns(memor, task)]
    for part in ("overall", "speaker", "nonspeaker"):
        if part not in result:
            continue
        metrics = result[part]
        if not isinstance(metrics, dict):
            return f"'{part}' is a {type(metrics).__name__}, not an object"
        for key in ("n", *keys) if is_number(metrics.get("n")) and metrics["n"] > 0 else ("n",):
            if not is_number(metrics.get(key)):
                return f"'{part}' has {'no number' if key not in metrics else repr(metrics[key])[:40]} for '{key}'"
    return None


def check_converted_with(bench: str, data: str, cfg, bundle) -> None:
    """A converted folder (``data``) holds the reading of the corpus it was converted with (its
    meta.json's ``info``): one other than the benchmark config's ``data.*`` (``cfg``) is an error
    naming the keys, both values and the convert command that makes the right folder."""
    differences = converted_otherwise(bundle.info, cfg.data)
    if differences:
        raise RamerError(
            f"{data}: converted with {listed(differences, True)}; ramer reproduce {bench} reads "
            f"{listed(differences, False)}: "
            f"convert the source again ({convert_again(bundle.info, differences)})"
        )


def reproduce(bench: str, data: str, seeds: int, out: str | Path, overrides: list[str], console: Console) -> str:
    if bench not in BENCHES:
        raise RamerError(f"unknown benchmark '{bench}'; known: {', '.join(BENCHES)}")
    if seeds < 1:
        raise RamerError("--seeds must be at least 1")
    config_name, fmt = BENCHES[bench]
    for o in overrides:  # the data is --data's, which the report names: a --set of it would go unused
        if set_keys([o]) == {"data.path"}:
            raise RamerError(f"--set {o}: ramer reproduce reads the data given with --data; give the path there")
    cfg = build_config(CONFIG_DIR / f"{config_name}.yaml", overrides)
    cfg.data.path = data
    check_generator_sets(cfg, overrides)
    if cfg.data.format == "auto" and not is_native(data):  # a converted directory loads as itself
        cfg.data.format = fmt
    if not is_native(data):  # a --set loader option this data's format does not read: recorded, never applied
        refuse_unread(cfg.data)
    bundle = load_bundle(cfg.data)
    layouts = LAYOUTS.get(bench, (fmt,))
    if bundle.format not in layouts:  # one corpus's protocol, config and table heading on another's data
        raise RamerError(f"{data}: holds {bundle.format} data; ramer reproduce {bench} reads {' or '.join(layouts)}")
    if is_native(data):  # loaded as it was converted, whatever the config's loader options say
        check_converted_with(bench, data, cfg, bundle)
    if "test" in bundle.splits and len(bundle.splits["test"]) == 0:  # else a table of no rows, exit 0
        raise RamerError(f"{data}: the test split is empty; ramer reproduce reports figures on the test split")
    out = work_folder(out, "reproduction", make=False)
    # held for the whole command: a second reproduce into it is refused at once (it took a seed folder
    # still being trained for one to start again, removed it, and both trained into it); a seed refused
    # before it wrote anything (a setting no run trains with) leaves no empty --out
    with hold(out, "ramer reproduce", make=True):
        return _reproduce(bench, data, seeds, out, overrides, console, cfg, bundle, config_name)


def _reproduce(
    bench: str, data: str, seeds: int, out: Path, overrides: list[str], console: Console, cfg, bundle, config_name: str
) -> str:
    """``reproduce`` into the folder ``out``, made: train (or read) each seed, write the tables."""
    results = []
    if (out / "results.json").is_file():  # one benchmark a folder: its report and seeds are not another's
        try:
            earlier = read_json(out / "results.json").get("bench")
        except (RamerError, AttributeError):
            earlier = None
        if isinstance(earlier, str) and earlier != bench:
            raise RamerError(f"{out}: holds the results of ramer reproduce {earlier}; give another --out for {bench}")
    task = resolve_task(bundle, cfg.data.task)  # data.task=single_label on data of one label a sample
    for k in range(seeds):
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.train.seed = cfg.train.seed + k
        run_dir = out / f"seed{run_cfg.train.seed}"
        if (run_dir / "test_metrics.json").exists():
            console.print(f"seed {run_cfg.train.seed}: done earlier, reading {run_dir}", highlight=False)
            try:
                made = ckpt.run_config(run_dir).model_dump(mode="json")
            except RamerError as e:
                raise RamerError(f"{e}; remove {run_dir} to train it again, or give another --out") from None
            changed = changed_settings(made, run_cfg.model_dump(mode="json"))
            if changed:  # one table, one setting
                raise RamerError(
                    f"{run_dir} was made with other settings ({', '.join(changed)}); give the --set it was made "
                    "with, or another --out"
                )
            model = run_dir / "model.safetensors"
            if not model.is_file():  # it records the data the seed was made on: without it, who can say
                raise RamerError(
                    f"{run_dir}: its model.safetensors, which records the data the seed was trained on, is "
                    f"gone, so whether it was made on {data} cannot be told; remove {run_dir} to train it "
                    "again, or give another --out"
                )
            recorded = ckpt.read_data_fingerprints(model)
            was = made.get("data", {}).get("path")
            same_path = Path(str(was)).resolve() == Path(data).resolve()
            if recorded:  # one table, one data set: a seed made on other data (or other files at this path)
                changed = ckpt.changed_splits(recorded, bundle)
            else:  # a run from before the fingerprints: its path
                changed = [] if same_path else ["its path"]
            if changed:
                whose = (
                    f"the files at {data} have changed since (splits {', '.join(changed)})"
                    if same_path
                    else f"data.path {was} there"
                )
                raise RamerError(
                    f"{run_dir} was made on other data than {data} ({whose}); give that data, or another --out"
                )
            path = run_dir / "test_metrics.json"
            try:
                result = read_json(path)
            except RamerError as e:
                raise RamerError(f"{path}: unreadable; remove {run_dir} to train it again ({e})") from None
            problem = metrics_problem(result, memor=bench.startswith("memor"), task=task)
            if problem:  # JSON, but not the metrics a table reads
                raise RamerError(f"{path}: unreadable; remove {run_dir} to train it again ({problem})")
            results.append(result)
            continue
        # held from here to the seed's end: a folder another command is training in is refused at once,
        # neither cleared nor trained into by both
        with hold(run_dir, "ramer reproduce", make=True):
            resume = (run_dir / "train_state.pt").exists()
            # stopped before its first state: started again
            if not resume and clear_run_folder(run_dir, "holds no training state to resume from"):
                console.print(
                    f"seed {run_cfg.train.seed}: {run_dir} holds no state to resume from; removing its files",
                    highlight=False,
                    soft_wrap=True,
                )
            console.print(
                f"seed {run_cfg.train.seed}: {'resuming' if resume else 'training'} in {run_dir}", highlight=False
            )
            results.append(run_training(run_cfg, run_dir, bundle=bundle, console=console, resume=resume))
    table = summarise(results, memor=bench.startswith("memor"), task=task)
    command = ["ramer", "reproduce", bench, "--data", argument(data), "--seeds", str(seeds), "--out", argument(out)]
    command = shell_join([*command, *(x for o in overrides for x in ("--set", o))])  # to paste as it is
    numbers = ", ".join(str(cfg.train.seed + k) for k in range(seeds))
    departures = (  # the heading names the benchmark: what was changed of its config is said under it
        f"Settings changed from config `{config_name}` (--set): {', '.join(f'`{o}`' for o in overrides)}.\n\n"
        if overrides
        else ""
    )
    text = (
        f"# {bench}: test metrics, mean ± std (sample std) over {seeds} seed(s): {numbers}\n\n"
        f"Command: `{command}`\n\n{departures}Data: `{bundle.source}` ({bundle.format}); config `{config_name}`; "
        + (
            "single-label (data.task): best checkpoint by validation weighted F1, the arg-max label decides"
            if task == "single_label"
            else "best checkpoint by validation micro-F1 and threshold tuned on validation"
        )
        + f", test once{AUTHORS_PROTOCOL.get(bench, '')}.\n\n{table}\n"
    )
    atomic_write_text(out / "results.md", text)
    atomic_write_text(out / "results.json", json.dumps({"bench": bench, "seeds": seeds, "runs": results}, indent=1))
    return text
