"""What ``ramer reproduce``, ``view``, ``tune``, ``bench`` and ``export`` do that no other test
pinned: each test fails when the behaviour it names is changed (its docstring names the smallest
change that breaks it). Tiny data and few steps: the tune tests read studies made by hand or by
a scripted stand-in for training, the bench report tests hand-made records and run folders."""

from __future__ import annotations

import json

import pytest
from fixtures_writers import write_memor, write_mosei_aligned
from test_reproduce import TINY as REPRODUCE_TINY

from ramer.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


# ---------------------------------------------------------------------- ramer reproduce
def reproduce(bench: str, data, out, seeds: int) -> int:
    argv = ["reproduce", bench, "--data", str(data), "--seeds", str(seeds), "--out", str(out)]
    return main(argv + sum((["--set", s] for s in REPRODUCE_TINY), []))


def test_reproduce_tables_every_seed_also_those_read_back(tmp_path):
    """The table is the mean ± std of every seed's test metrics, and a second call, which reads the
    finished seeds back instead of training them, writes the same table and records. (Summarising
    the first seed alone; leaving a seed read back out of the results.)"""
    from ramer.metrics import format_mean_std, mean_std

    data = tmp_path / "train_valid_test.pt"
    write_mosei_aligned(data)
    out = tmp_path / "out"
    assert reproduce("mosei", data, out, seeds=2) == 0
    seeds = [json.loads((out / f"seed{k}" / "test_metrics.json").read_text()) for k in (1, 2)]
    overall = next(ln for ln in (out / "results.md").read_text().splitlines() if ln.startswith("| overall |"))
    cells = [c.strip() for c in overall.strip("|").split("|")]
    want = format_mean_std(*mean_std(s["overall"]["micro_f1"] for s in seeds), digits=4)
    assert cells[6] == want and " ± " in want  # miF1: the mean over both seeds, with their std
    first = {name: (out / name).read_text() for name in ("results.md", "results.json")}
    assert json.loads(first["results.json"])["runs"] == seeds
    assert reproduce("mosei", data, out, seeds=2) == 0  # both seeds read back, none trained
    assert {name: (out / name).read_text() for name in first} == first


def test_reproduce_memor_fine_has_the_memor_columns_and_checks_them(tmp_path, capsys):
    """Both MEmoR benchmarks (memor_primary, memor_fine) report Top-1 accuracy and weighted F1, and
    a finished seed read back without them is one line naming its file, not a KeyError in the
    table. (Giving the MEmoR columns to memor_primary alone; ``metrics_problem`` called with
    ``memor=False``.)"""
    data = tmp_path / "memor"
    write_memor(data)
    out = tmp_path / "out"
    assert reproduce("memor_fine", data, out, seeds=1) == 0
    text = (out / "results.md").read_text()
    assert "| Top-1 | wF1 |" in text
    path = out / "seed1" / "test_metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["overall"]["top1_acc"]
    path.write_text(json.dumps(metrics))
    capsys.readouterr()
    assert reproduce("memor_fine", data, out, seeds=1) == 2
    err = capsys.readouterr().err
    assert f"{path}: unreadable" in err and "'overall' has no number for 'top1_acc'" in err, err


def test_a_seed_part_with_no_targets_needs_no_figures():
    """A part that scored no target (n = 0) needs only its ``n``: a finished seed whose non-speaker
    part is ``{"n": 0}`` is read back. (``metrics["n"] > 0`` made ``>= 0``.)"""
    from ramer.reproduce import COLUMNS, metrics_problem

    part = {"n": 4, **{key: 0.5 for key, _ in COLUMNS}}
    assert metrics_problem({"overall": part, "nonspeaker": {"n": 0}}, memor=False) is None
    assert "'speaker' has no number for 'acc'" in metrics_problem({"overall": part, "speaker": {"n": 3}}, False)


# ---------------------------------------------------------------------- ramer tune: outputs
TUNE_TINY = ["model.hidden=16", "model.ffn=32", "model.heads=2", "train.epochs=2", "train.batch_size=32"]


def hand_study(optuna, trial_seeds: int):
    """A study in memory as ``ramer tune`` leaves it, its trials made by hand: 0 and 1 complete with
    the same value, 2 failed (killed), 3 pruned, 4 a retry of 2."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("trial_seeds", trial_seeds)
    lr = {"train.lr": FloatDistribution(1e-4, 1e-2, log=True)}

    def add(state, value, x, **attrs):
        study.add_trial(
            create_trial(state=state, value=value, params={"train.lr": x}, distributions=lr, user_attrs=attrs)
        )

    facts = {"epochs_run": 4, "best_epoch": 2, "seconds": 3.0}
    seeds = {"seed_values": [0.4, 0.6]} if trial_seeds > 1 else {}
    add(TrialState.COMPLETE, 0.5, 1e-3, best_step=6, steps=20, **facts, **seeds)
    add(TrialState.COMPLETE, 0.5, 2e-3, best_step=9, steps=30, **facts, **seeds)
    add(TrialState.FAIL, None, 3e-3)
    add(TrialState.PRUNED, 0.2, 4e-3, note="pruned after epoch 1", best_step=3, steps=5, **facts)
    add(TrialState.COMPLETE, 0.4, 3e-3, retry_of=2, best_step=4, steps=8, **facts, **seeds)
    return study


@pytest.mark.parametrize("trial_seeds", [1, 2])
def test_tune_outputs_name_the_first_best_trial_and_each_trials_record(tmp_path, trial_seeds):
    """trials.csv / trials.md / tune.json / best.yaml of a study: the best trial is the first of
    those with the best value; each column holds its own record; a failed trial's note says it was
    killed or interrupted; the budget is the one asked, the finished count complete + pruned; a
    seed column only with several seeds. (The tie broken to the later trial; best_step and steps
    swapped; the failed note dropped; budget or finished miscounted; tune.json's values emptied;
    the seed column or the seed range of a one-seed study.)"""
    from ramer.config import build_config
    from ramer.tune import tune_config, write_outputs

    optuna = pytest.importorskip("optuna")
    base = tune_config("late_fusion", None, TUNE_TINY)
    summary = write_outputs(optuna, hand_study(optuna, trial_seeds), tmp_path, base, 7, "multi_label", {})
    assert summary["best"]["trial"] == 0 and summary["best"]["values"] == {"train.lr": 1e-3}
    assert (summary["budget"], summary["finished"], summary["complete"], summary["pruned"]) == (7, 4, 3, 1)
    assert json.loads((tmp_path / "tune.json").read_text()) == json.loads(json.dumps(summary))
    assert build_config(tmp_path / "best.yaml").train.lr == 1e-3
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:8] == ["number", "state", "value", "best_step", "steps", "epochs", "seconds", "train.lr"]
    assert header[8:] == (["seed_values", "note"] if trial_seeds > 1 else ["note"])
    cells = [dict(zip(header, r.split(","))) for r in rows[1:]]
    assert [(c["best_step"], c["steps"], c["epochs"]) for c in cells[:2]] == [("6", "20", "4"), ("9", "30", "4")]
    assert [c["state"] for c in cells] == ["complete", "complete", "fail", "pruned", "complete"]
    notes = ["", "", "killed or interrupted", "pruned after epoch 1", "the values of trial 2 again"]
    assert [c["note"] for c in cells] == notes
    if trial_seeds > 1:
        assert cells[0]["seed_values"] == "0.4000 0.6000"
    md = (tmp_path / "trials.md").read_text()
    first = base.train.seed
    seeds = f"the mean over 2 seeds (train.seed {first} to {first + 1})"
    assert (seeds in md) == (trial_seeds > 1) and "Best: trial 0, 0.5000" in md
    assert "Budget 7 trials; the study holds 4 finished (3 complete, 1 pruned), 1 failed, 0 running." in md


# ---------------------------------------------------------------------- ramer tune: one trial
TUNE_DATA = ["data.synthetic.n_train=24", "data.synthetic.n_valid=12", "data.synthetic.n_test=12"]
SCRIPTED = {1: [0.2, 0.6, 0.4], 2: [0.1, 0.3, 0.5]}  # each seed's validation micro-F1 by epoch


def scripted_training(seen: list):
    """A stand-in for ``run_training``: each seed's epochs report the ``SCRIPTED`` scores to the
    trial's hook, 10 steps an epoch; ``seen`` gets (seed, folder name) of every run."""
    from types import SimpleNamespace

    def run_training(cfg, out, bundle=None, console=None, hooks=()):
        seed = cfg.train.seed
        seen.append((seed, out.name))
        recipe = SimpleNamespace(cfg=cfg, spec=SimpleNamespace(task="multi_label"), steps_per_epoch=10, log=[])
        for epoch, score in enumerate(SCRIPTED[seed], 1):
            recipe.log.append({"epoch": epoch, "valid": {"overall": {"micro_f1": score}}})
            best = max(range(epoch), key=lambda e: SCRIPTED[seed][e])
            recipe.best, recipe.epochs_run = {"epoch": best + 1, "score": SCRIPTED[seed][best]}, epoch
            for hook in hooks:
                hook(recipe, epoch)
        return {}

    return run_training


def test_a_trial_of_two_seeds_records_their_means_and_sums(tmp_path, monkeypatch):
    """A trial of ``--trial-seeds 2`` trains seeds 1 and 2; its value and steps to best are their
    means, its steps their sum, its best epoch their rounded mean; the pruner hears the first seed's
    epochs only. Seed 1 peaks at epoch 2 (0.6), seed 2 at epoch 3 (0.5). (The value their maximum;
    steps to best their sum, or counted to the start of the best epoch; steps the first seed's; the
    best epoch their maximum; the pruner told every seed's epochs; both runs trained with seed 1.)"""
    import ramer.tune as tune_mod
    from ramer.data.synthetic import generate

    optuna = pytest.importorskip("optuna")
    from rich.console import Console

    asked = []

    class Recording(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            asked.append((trial.number, max(trial.intermediate_values)))
            return False

    seen: list = []
    monkeypatch.setattr(tune_mod, "run_training", scripted_training(seen))
    base = tune_mod.tune_config("late_fusion", None, [*TUNE_TINY, *TUNE_DATA])
    quiet = Console(stderr=True, quiet=True)
    bundle = generate(base.data.synthetic)
    tune_mod.tune(base, tmp_path, trials=1, bundle=bundle, console=quiet, pruner=Recording(), trial_seeds=2)
    assert seen == [(1, "seed-1"), (2, "seed-2")]
    assert asked == [(0, 1), (0, 2), (0, 3)]
    (trial,) = optuna.load_study(study_name="late_fusion", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert trial.value == pytest.approx(0.55) and trial.user_attrs["seed_values"] == [0.6, 0.5]
    a = trial.user_attrs
    assert (a["best_step"], a["steps"], a["best_epoch"], a["epochs_run"]) == (25, 60, 2, 6)


def test_a_budget_running_elsewhere_starts_no_trial_here(tmp_path, monkeypatch, capsys):
    """A study of 1 finished trial and 1 running in another live process, asked for 2: this process
    says the rest runs elsewhere and adds no trial. (Leaving the running trials out of that check:
    a trial was asked, then stopped by the objective's own check, and stayed in the study, failed.)"""
    import os

    import ramer.tune as tune_mod
    from ramer.data.synthetic import generate

    optuna = pytest.importorskip("optuna")
    from optuna.trial import TrialState, create_trial
    from rich.console import Console

    seen: list = []
    monkeypatch.setattr(tune_mod, "run_training", scripted_training(seen))
    base = tune_mod.tune_config("late_fusion", None, [*TUNE_TINY, *TUNE_DATA])
    bundle = generate(base.data.synthetic)
    tune_mod.tune(base, tmp_path, trials=1, bundle=bundle, console=Console(stderr=True, quiet=True))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="late_fusion", storage=storage)
    other = {"worker": {"host": tune_mod.HOST, "pid": os.getppid()}}  # alive, not this process
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs=other))
    capsys.readouterr()
    tune_mod.tune(base, tmp_path, trials=2, bundle=bundle, console=Console(file=None, force_terminal=False))
    assert "the rest of the budget is running in other processes (1 trial)" in capsys.readouterr().out
    study = optuna.load_study(study_name="late_fusion", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING] and len(seen) == 1


# ---------------------------------------------------------------------- ramer view
def memory_bundle(store):
    from ramer.data import DataBundle

    return DataBundle({"test": store}, store.label_names, "native", "<memory>")


def test_view_shows_the_predicted_samples_of_a_split_predicted_in_part(tmp_path):
    """A predictions file of some of the split's samples: the page holds those, counts them, and
    its figures are theirs. (Every member taken as predicted: a KeyError; the count of the split.)"""
    from conftest import random_store
    from test_view import records_for

    from ramer.view import page_data

    store = random_store(n=6)
    data = page_data(memory_bundle(store), "test", records_for(store)[:2])
    assert (data["n_samples"], data["n_predicted"], data["summary"]["parts"]["all"]["n"]) == (6, 2, 2)
    assert [len(c["samples"]) for c in data["conversations"]] == [1, 1, 0, 0, 0, 0]


def test_view_figures_split_speaker_and_non_speaker_targets_by_role(tmp_path):
    """Speaker and non-speaker figures count the targets of role 1 and of role 0; a scene of no role
    (-1) is in neither, and a split of no roles has the overall figures alone. (Non-speaker read as
    every role but 1; the parts made whatever the roles.)"""
    from conftest import random_store
    from test_view import records_for

    from ramer.view import page_data

    store = random_store(n=8)
    store.role[:] = [1, 0, -1, 1, 0, 0, -1, 1]
    parts = page_data(memory_bundle(store), "test", records_for(store))["summary"]["parts"]
    assert {name: part["n"] for name, part in parts.items()} == {"all": 8, "speaker": 3, "non-speaker": 3}
    store.role[:] = -1
    parts = page_data(memory_bundle(store), "test", records_for(store))["summary"]["parts"]
    assert list(parts) == ["all"]


def test_view_threshold_is_the_files_own_only_when_every_line_agrees(tmp_path):
    """With no run's threshold the page shows the predictions file's own, when its lines agree; lines
    of other thresholds show none. A threshold per label lists them in the labels' order, whatever
    the order of the file's keys. (The first line's taken; the keys' order taken.)"""
    from conftest import random_store
    from test_view import records_for

    from ramer.view import page_data

    store = random_store(n=4)
    bundle = memory_bundle(store)
    records = records_for(store, threshold=0.5)
    assert page_data(bundle, "test", records)["threshold"] == 0.5
    records[1] = records_for(store, threshold=0.3)[1]
    assert page_data(bundle, "test", records)["threshold"] is None
    names = list(store.label_names)
    per_label = {n: 0.1 * (k + 1) for k, n in reversed(list(enumerate(names)))}
    assert page_data(bundle, "test", records, threshold=per_label)["threshold"] == [per_label[n] for n in names]


def test_view_marks_a_voice_without_words_as_speaking(tmp_path):
    """Where the data names no speaker, a cell with words or voice speaks: an audio-only cell that
    is not the target's is drawn speaking. (Speaking read from the text alone.)"""
    from conftest import random_store
    from test_view import records_for

    from ramer.view import AUDIO, SPEAKS, TEXT, page_data

    store = random_store(n=1, persons=(2, 2), segments=(3, 3), seed=1)
    p, s = (int(v) for v in store.target[0])
    q, t = next((q, t) for q in range(2) for t in range(3) if (q, t) != (p, s))
    store.present[q * 3 + t, :2] = (False, True)  # voice, no words
    cells = page_data(memory_bundle(store), "test", records_for(store))["conversations"][0]["cells"]
    assert cells[q][t] & (TEXT | AUDIO | SPEAKS) == AUDIO | SPEAKS


def test_view_of_an_imported_split_holds_its_own_conversations(tmp_path, fake_text):
    """An imported data set of two splits: the page of one holds its own conversations only, each
    sample on its own utterance. (The split of a conversation not checked: the other split's
    conversations drawn from this split's samples.)"""
    from test_conversations import base_rows, write_table
    from test_view import records_for

    from ramer.data.conversations import import_conversations
    from ramer.data.store import load_native
    from ramer.view import page_data

    rows = base_rows()
    for r in rows:
        r["split"] = "train" if r["conversation"] == "c1" else "test"
    import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds", context=1)
    bundle = load_native(tmp_path / "ds")
    store = bundle.splits["test"]
    convs = page_data(bundle, "test", records_for(store))["conversations"]
    assert [c["name"] for c in convs] == ["c2", "c3"]
    assert sorted(x["id"] for c in convs for x in c["samples"]) == sorted(store.ids)


def test_view_memor_clip_rows_follow_each_samples_characters(tmp_path):
    """MEmoR's target protocol (also a folder whose meta.json predates the protocol key): a clip's
    samples share a grid of every character of any of them, in id order, and each sample's persons
    land on their own characters' rows. (Each sample's persons taken as the grid's first rows; a
    missing protocol read as another.)"""
    from conftest import random_store
    from test_view import records_for

    from ramer.data import DataBundle
    from ramer.view import page_data

    store = random_store(n=2, persons=(2, 2), segments=(2, 2), seed=3)
    store.character[:] = [3, 1, 1, 5]  # sample 0: characters 3 and 1; sample 1: 1 and 5
    store.ids[:] = ["a0:clip:x", "a1:clip:y"]
    names = [f"char{c}" for c in range(8)]
    bundle = DataBundle({"test": store}, store.label_names, "memor", "<memory>", {"memor": {"character_order": names}})
    (conv,) = page_data(bundle, "test", records_for(store))["conversations"]
    assert conv["name"] == "clip" and conv["persons"] == ["char1", "char3", "char5"]
    for i, x in enumerate(conv["samples"]):
        p, s = (int(v) for v in store.target[i])
        assert conv["persons"][x["at"][0]] == names[store.character[2 * i + p]] and x["at"][1] == s


def test_a_stopped_trial_is_queued_once_and_two_seeds_draw_apart():
    """Two processes that both see a trial stop queue its values once; the TPE seeds of ``--seed 0``
    and ``--seed 1`` differ at every count (their sum would give seed 0 at 2 trials and seed 1 at
    1 trial one stream). (The check for values already queued; the seed made of the sum.)"""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from ramer.tune import requeue, sampler_seed

    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(direction="maximize")
    lr = {"train.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    study.add_trial(create_trial(state=TrialState.FAIL, params={"train.lr": 1e-3}, distributions=lr))
    for _ in range(2):
        requeue(study, study.trials[0])
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs, t.system_attrs["fixed_params"]) for t in waiting] == [({"retry_of": 0}, {"train.lr": 1e-3})]
    assert sampler_seed(0, 2) != sampler_seed(1, 1) and sampler_seed(0, 1) != sampler_seed(1, 0)


# ---------------------------------------------------------------------- ramer bench: the report
def bench_record(model, seed, rate, f1, hl, inputs="observed", seconds=2.0, best_step=10, params=100):
    part = {"micro_f1": f1, "macro_f1": f1, "acc": f1, "hamming_loss": hl, "n": 10}
    metrics = {"overall": part, "speaker": part, "nonspeaker": part}
    return {"model": model, "inputs": inputs, "seed": seed, "missing_rate": rate, "metrics": metrics,
            "seconds": seconds, "best_step": best_step, "params": params}  # fmt: skip


def report_rows(lines: list[str]) -> dict[str, list[str]]:
    return {ln.strip("| ").split(" | ")[0]: ln.strip("| ").split(" | ")[1:] for ln in lines[2:]}


def test_bench_rate_table_reads_its_rate_and_bolds_the_best_of_each_column(tmp_path):
    """One missing rate's table: each model's mean over its seeds at that rate (not at another),
    its steps to best and seconds their means; bold the best model per column, the lowest for HL;
    the complete-input reference and the oracle rows take no part in the bold. (The rate not
    filtered; HL's best taken as its highest; the first seed's steps; the seconds summed; the
    reference row bolded; the oracle row left out.)"""
    from ramer import bench as bench_mod

    results = [
        bench_record("late_fusion", 1, 0.0, 0.60, 0.10, seconds=2.0, best_step=10),
        bench_record("late_fusion", 2, 0.0, 0.70, 0.20, seconds=4.0, best_step=20),
        bench_record("br", 1, 0.0, 0.50, 0.30, best_step=None),
        bench_record("br", 2, 0.0, 0.50, 0.30, best_step=None),
        bench_record("late_fusion", 1, 0.5, 0.10, 0.90),
        bench_record("late_fusion", 2, 0.5, 0.10, 0.90),
        bench_record("late_fusion", 1, 0.0, 0.65, 0.15, inputs="complete"),  # ties the best: not bold
    ]
    s = bench_mod.BenchSettings(out=tmp_path, models=["br", "late_fusion"], seeds=[1, 2], rates=[0.0, 0.5])
    s.complete = ["late_fusion"]
    oracle = {"overall": {"micro_f1": 0.95, "macro_f1": 0.9, "acc": 0.9, "hamming_loss": 0.05}}
    lines = bench_mod.rate_table(results, s, 0.0, oracle)
    header = lines[0].strip("| ").split(" | ")
    assert header[:5] == ["model", "micro-F1", "macro-F1", "Acc", "HL ↓"]
    rows = report_rows(lines)
    assert list(rows) == ["br", "late_fusion", "late_fusion, complete inputs (reference)", bench_mod.ORACLE_ROW]
    lf, br, ref = rows["late_fusion"], rows["br"], rows["late_fusion, complete inputs (reference)"]
    assert lf[0] == "**0.650 ± 0.071**" and br[0] == "0.500 ± 0.000"  # rate 0.5's 0.1 not averaged in
    assert lf[3] == "**0.150 ± 0.071**" and br[3] == "0.300 ± 0.000"  # HL: lower is better
    assert lf[-3:] == ["100", "15", "3.0"] and br[-2] == "–"  # params, steps to best, s/run: means
    assert "**" not in "".join(ref) and (ref[0], ref[3]) == ("0.650", "0.150")
    assert rows[bench_mod.ORACLE_ROW][:4] == ["0.950", "0.900", "0.900", "0.050"]


def test_bench_ablation_table_leaves_out_complete_inputs_and_unpaired_presets():
    """A preset's paired differences are against full RAMer on observed inputs: the complete-input
    run of RAMer (same rate 0, same seed) is no partner; a preset none of whose seeds full RAMer
    finished has no row. (Complete runs taken as RAMer's; presets listed without a shared seed.)"""
    from ramer import bench as bench_mod

    results = [
        bench_record("ramer", 1, 0.0, 0.50, 0.2),
        bench_record("ramer", 1, 0.0, 0.90, 0.1, inputs="complete"),
        bench_record("ramer-no_stack", 1, 0.0, 0.52, 0.2),
        bench_record("ramer-no_shuffle", 2, 0.0, 0.40, 0.2),
    ]
    lines = bench_mod.ablation_table(results, 0.0)
    assert list(report_rows(lines)) == ["ramer-no_stack"]
    assert report_rows(lines)["ramer-no_stack"][:2] == ["1", "+0.020"]


def test_a_folder_whose_tune_json_names_another_model_is_refused(tmp_path):
    """With ``--storage`` the folder has no study.db to name its model: its tune.json does, and
    another model's search there is refused. (tune.json not read.)"""
    from ramer.errors import RamerError
    from ramer.tune import check_folder_model

    (tmp_path / "tune.json").write_text(json.dumps({"model": "ramer", "budget": 2}))
    check_folder_model(tmp_path, "ramer", [])
    with pytest.raises(RamerError, match="holds the search of ramer; searching late_fusion there"):
        check_folder_model(tmp_path, "late_fusion", [])


def test_bench_report_says_when_models_were_tuned_with_other_budgets(tmp_path):
    """Two models whose studies hold 5 and 3 trials: the report's tuning line says they were tuned
    with different numbers of trials, naming each; one budget for both, no such warning. (The
    warning kept for three budgets or more.)"""
    from ramer import bench as bench_mod
    from ramer.config import build_config

    s = bench_mod.BenchSettings(out=tmp_path, models=["late_fusion", "mult"], seeds=[1], rates=[0.0])
    s.tuned = tmp_path / "tuned"
    for model, finished in (("late_fusion", 5), ("mult", 3)):
        (s.tuned / model).mkdir(parents=True)
        best = {"trial": 0, "value": 0.5, "best_step": 4}
        (s.tuned / model / "tune.json").write_text(json.dumps({"finished": finished, "pruned": 0, "best": best}))
    base = build_config()
    (line,) = bench_mod.tuning_lines(s, base, "multi_label")
    assert "**The models were tuned with different numbers of trials** (late_fusion 5, mult 3)." in line
    (s.tuned / "mult" / "tune.json").write_text((s.tuned / "late_fusion" / "tune.json").read_text())
    (line,) = bench_mod.tuning_lines(s, base, "multi_label")
    assert "different numbers" not in line


def test_tune_refuses_heads_that_divide_only_some_searched_sizes():
    """``model.heads=64`` divides the searched hidden sizes 64 and 128 but not 32: refused before any
    trial (a trial drawing 32 would fail). (Refused only when no searched size divides.)"""
    from ramer.errors import RamerError
    from ramer.models.spaces import space_for
    from ramer.tune import check_space, tune_config

    base = tune_config("late_fusion", None, ["model.heads=64"])
    with pytest.raises(RamerError, match="model.heads=64 does not divide every searched model.hidden"):
        check_space(base, space_for(base))


def test_a_study_refuses_other_searched_keys_of_the_same_number(tmp_path):
    """A study made searching train.lr and model.dropout, continued by a command searching train.lr
    and model.hidden (as many keys, other ones) is refused. (The keys compared by their number.)"""
    from ramer.errors import RamerError
    from ramer.tune import open_study, tune_config

    optuna = pytest.importorskip("optuna")
    base = tune_config("late_fusion", None, TUNE_TINY)
    study, _ = open_study(optuna, tmp_path, None, base, 0, searched=["train.lr", "model.dropout"])
    study, _ = open_study(optuna, tmp_path, None, base, 0, searched=["model.dropout", "train.lr"])
    with pytest.raises(RamerError, match="searches other keys"):
        open_study(optuna, tmp_path, None, base, 0, searched=["train.lr", "model.hidden"])


def test_a_trial_asked_a_moment_ago_by_another_process_is_not_failed():
    """A running trial without a worker (another process between Optuna's ask and the objective) is
    failed only once it is older than the heartbeat grace period. (Any such trial failed at once.)"""
    import datetime

    from optuna.trial import TrialState, create_trial

    from ramer.tune import GRACE, fail_stale

    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(direction="maximize")
    old = datetime.datetime.now() - datetime.timedelta(seconds=GRACE + 60)
    study.add_trial(create_trial(state=TrialState.RUNNING))
    older = create_trial(state=TrialState.RUNNING)
    older.datetime_start = old
    study.add_trial(older)
    assert fail_stale(optuna, study) == [1]
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL]


# ---------------------------------------------------------------------- ramer bench: settings
def test_bench_rates_are_below_1_and_seeds_start_at_the_configs_seed(tmp_path):
    """A missing rate of 1 (every modality hidden) is refused; the seeds of a config file whose
    train.seed is 7 are 7, 8 (the bench owns train.seed on the command line, not in the file).
    (The rate bound made inclusive; the seeds counted from 1.)"""
    from ramer import bench as bench_mod
    from ramer.errors import RamerError

    with pytest.raises(RamerError, match=r"--missing-rates: each rate must be in \[0, 1\)"):
        bench_mod.parse_rates("0,1")
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  seed: 7\n")
    s = bench_mod.resolve_settings(models="br", seeds=2, rates="0", config=mine)
    assert s.seeds == [7, 8] and bench_mod.run_config(s.base, "br", s.seeds[1], 0.0).train.seed == 8


def test_tune_refuses_a_budget_of_no_trial(tmp_path):
    """``--trials 0`` is an error before anything is made (it ran nothing and said nothing). (The
    bound made ``trials < 0``.)"""
    from ramer.errors import RamerError
    from ramer.tune import tune, tune_config

    pytest.importorskip("optuna")
    with pytest.raises(RamerError, match="--trials must be at least 1, got 0"):
        tune(tune_config("late_fusion", None, [*TUNE_TINY, *TUNE_DATA]), tmp_path / "t", trials=0)
    assert not (tmp_path / "t").exists()


def test_a_study_whose_seed_count_is_not_a_count_is_refused_as_not_ramers(tmp_path):
    """A study whose ``trial_seeds`` reads "2" (a string: not what ramer tune writes) is refused as
    such, not told to continue with ``--trial-seeds 2``, which would be refused again. (The
    check of the stored count removed.)"""
    from ramer.errors import RamerError
    from ramer.tune import open_study, tune_config

    optuna = pytest.importorskip("optuna")
    base = tune_config("late_fusion", None, TUNE_TINY)
    study, _ = open_study(optuna, tmp_path, None, base, 0)
    study.set_user_attr("trial_seeds", "2")
    with pytest.raises(
        RamerError, match="holds a study ramer tune did not write: its 'trial_seeds' '2' is not a count"
    ):
        open_study(optuna, tmp_path, None, base, 0)


# ---------------------------------------------------------------------- ramer export
def test_the_export_graph_scores_whole_scenes_and_ignores_padding():
    """The graph's forward (``GridModel``, in torch) gives ``model(batch)``'s probabilities for a
    collated batch of targeted and whole-scene samples (target -1: the scope is the whole scene),
    and padding stays padding whatever presence or personality flags it carries. (The whole-scene
    scope dropped. Presence not masked by ``valid`` in ``grid_batch`` passes: RAMer masks padding
    itself.)"""
    import numpy as np
    import torch
    from conftest import random_store

    from ramer.config import LossConfig, ModelConfig
    from ramer.export import GridModel, batch_to_grid
    from ramer.models.base import DataSpec
    from ramer.models.ramer import RAMer

    torch.manual_seed(0)
    names = tuple(f"l{j}" for j in range(5))
    spec = DataSpec(dims={"text": 16, "audio": 8, "visual": 12}, n_labels=5, label_names=names, personality_dim=7)
    model = RAMer(ModelConfig(hidden=16, heads=2, ffn=16, proj_size=8, queue_size=16), LossConfig(), spec).eval()
    model.reconstruction.prototypes.normal_()
    wrapper = GridModel(model, names, personality=True).eval()
    for with_target in (True, False):
        batch = random_store(n=5, with_target=with_target, seed=2).collate(np.arange(5))
        grid = batch_to_grid(batch, personality=True)
        with torch.inference_mode():
            want = model(batch).probs
            got = wrapper(*(torch.from_numpy(grid[n]) for n in wrapper.input_names()))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            padded = {**grid, "present": grid["present"] | ~grid["valid"][..., None]}
            padded["personality_present"] = np.ones_like(grid["personality_present"])
            shift = np.float32(5.0) * ~grid["valid"].any(-1)[..., None]  # persons of padding only
            padded["personality"] = (grid["personality"] + shift).astype(np.float32)
            again = wrapper(*(torch.from_numpy(padded[n]) for n in wrapper.input_names()))
        torch.testing.assert_close(again, got, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- ramer bench: run folders
def fake_run(folder, f1: dict[str, float], final: bool = True, seconds=(1.5, 2.5)):
    """A run folder as a finished run leaves it, for what the bench reads of it: test_metrics.json
    and metrics.jsonl (an epoch line per entry of ``seconds``, then the test line)."""
    folder.mkdir(parents=True)
    part = {"micro_f1": 0.5, "n": 4}
    (folder / "test_metrics.json").write_text(json.dumps({"overall": part}))
    lines = [{"epoch": k + 1, "seconds": s, "valid": {"overall": part}} for k, s in enumerate(seconds)]
    if final:
        per_label = {name: {"f1": v, "support": 2} for name, v in f1.items()}
        lines.append({"final": "test", "test": {"overall": part}, "per_label": per_label, "seconds": 9.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_bench_reads_run_folders_as_runs_leave_them(tmp_path, monkeypatch):
    """Per-label F1 is the mean over the seeds; a run's seconds are its bench.json's (the bench timed
    it), else its epochs' (not its test line's); a run whose log stops before its test line is cut
    short, not reused. (The first seed's F1; bench.json not read; every line's seconds summed; the
    test line not required.)"""
    from ramer import bench as bench_mod
    from ramer.errors import RamerError

    monkeypatch.setattr(bench_mod, "parameter_count", lambda run: 0)  # no model file in these folders

    for seed, f1 in ((1, 0.2), (2, 0.6)):
        fake_run(bench_mod.run_dir(tmp_path, "late_fusion", 0.0, seed), {"joy": f1, "fear": 1 - f1})
    per_label = bench_mod.per_label_f1(tmp_path, "late_fusion", 0.0, [1, 2])
    assert per_label == pytest.approx({"joy": 0.4, "fear": 0.6})
    run = bench_mod.run_dir(tmp_path, "late_fusion", 0.0, 1)
    assert bench_mod.read_run(run)["seconds"] == 4.0
    (run / "bench.json").write_text(json.dumps({"seconds": 12.5}))
    assert bench_mod.read_run(run)["seconds"] == 12.5
    cut = tmp_path / "cut"
    fake_run(cut, {}, final=False)
    with pytest.raises(RamerError, match="does not end with the run's test line"):
        bench_mod.read_run(cut)


def test_a_resumed_bench_run_counts_the_seconds_before_its_stop(tmp_path, monkeypatch):
    """A run stopped after two epochs (1.5 s and 2.5 s) and resumed by the bench: its seconds are
    those epochs' plus the resumed part's, not the resumed part's alone. (``before`` dropped.)"""
    from rich.console import Console

    from ramer import bench as bench_mod
    from ramer.config import build_config

    run = tmp_path / "run"
    fake_run(run, {}, final=False)
    (run / "test_metrics.json").unlink()

    def finish(cfg, out, bundle=None, console=None, resume=False):  # the resumed run's last steps
        assert resume
        final = {"final": "test", "test": {"overall": {"micro_f1": 0.5, "n": 4}}, "per_label": {}}
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(final) + "\n")
        (out / "test_metrics.json").write_text(json.dumps({"overall": {"micro_f1": 0.5, "n": 4}}))

    monkeypatch.setattr(bench_mod, "run_training", finish)
    monkeypatch.setattr(bench_mod, "parameter_count", lambda run: 0)
    fields, state, notes = bench_mod.execute(build_config(), run, None, Console(quiet=True), "resume")
    assert (state, notes) == ("resume", []) and fields["seconds"] >= 4.0  # the two epochs, and more


def test_the_onnx_check_refuses_a_file_off_by_more_than_its_tolerance(tmp_path):
    """``check_onnx`` compares the file with torch at other sizes: a graph 0.01 off everywhere, or of
    another number of labels, is refused (one line), one that agrees passes. A hand-made graph (each
    scene's share of valid tokens, for 3 labels) and a torch twin stand in for an export. (The
    tolerance loosened a millionfold; the shape check removed: numpy's broadcast error.)"""
    from types import SimpleNamespace

    import torch

    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from ramer.errors import RamerError
    from ramer.export import check_onnx

    nodes = [
        helper.make_node("Cast", ["valid"], ["v"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["v"], ["per_person"], axes=[2], keepdims=0),
        helper.make_node("ReduceMean", ["per_person"], ["share"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["share", "ones"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "share",
        [helper.make_tensor_value_info("valid", TensorProto.BOOL, ["B", "P", "S"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", 3])],
        [helper.make_tensor("ones", TensorProto.FLOAT, [1, 3], [1.0, 1.0, 1.0])],
    )
    path = tmp_path / "share.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))

    class Twin(torch.nn.Module):
        personality = False

        def __init__(self, offset: float, labels: int = 3):
            super().__init__()
            self.offset, self.labels = offset, labels

        def input_names(self):
            return ["text", "audio", "visual", "present", "valid", "target"]

        def forward(self, text, audio, visual, present, valid, target):
            return valid.float().mean(2).mean(1, keepdim=True).expand(-1, self.labels) + self.offset

    spec = SimpleNamespace(dims={"text": 2, "audio": 2, "visual": 2}, personality_dim=None)
    assert all(r.max_abs_diff < 1e-6 for r in check_onnx(Twin(0.0), spec, path))
    with pytest.raises(RamerError, match=r"max abs difference 0\.01 > 0\.0001"):
        check_onnx(Twin(0.01), spec, path)
    with pytest.raises(RamerError, match=r"output shape \(5, 3\), torch \(5, 4\)"):
        check_onnx(Twin(0.0, labels=4), spec, path)


def test_a_finished_bench_leaves_results_json_with_its_own_runs(tmp_path, monkeypatch):
    """results.json keeps the records of runs a bench does not plan while it runs (a bench that
    stops loses none), and holds the bench's own runs alone once every planned run is read. (The
    last write made as the in-between ones.)"""
    from test_bench import SETS as BENCH_SETS

    from ramer import bench as bench_mod

    monkeypatch.setattr(bench_mod, "write_report", lambda *args: None)  # the tables and plots: tested above
    out = tmp_path / "b"
    argv = ["bench", "--models", "br", "--seeds", "1", "--missing-rates", "0", "--complete", "", "--jobs", "1"]
    assert main([*argv, *BENCH_SETS, "--out", str(out)]) == 0
    (own,) = json.loads((out / "results.json").read_text())
    other = {**own, "model": "late_fusion"}  # a run of an earlier bench in this folder
    (out / "results.json").write_text(json.dumps([own, other]))
    assert main([*argv, *BENCH_SETS, "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == [own]


def test_bench_tuned_settings_are_read_as_ramer_tune_writes_them(tmp_path):
    """``--tuned DIR``: a best.yaml of full RAMer is no config of the preset ramer-no_shuffle; a
    tune.json without its trial counts is refused (one line, not a KeyError in the report); tuned
    values no run trains with are refused before any run. (The preset's ablations not compared;
    the counts not checked; the tuned values left out of the check.)"""
    from test_bench import TINY as BENCH_TINY

    from ramer import bench as bench_mod
    from ramer.config import build_config, dump_config
    from ramer.errors import RamerError

    s = bench_mod.resolve_settings(models="ramer-no_shuffle", seeds=1, rates="0", overrides=BENCH_TINY, complete="")
    s.tuned = tmp_path
    (tmp_path / "ramer-no_shuffle").mkdir()
    (tmp_path / "ramer-no_shuffle" / "best.yaml").write_text(dump_config(build_config()))  # ramer's own
    with pytest.raises(RamerError, match="is a config of ramer, not of ramer-no_shuffle"):
        bench_mod.load_tuned(s, "ramer-no_shuffle")
    (tmp_path / "ramer-no_shuffle" / "tune.json").write_text(json.dumps({"best": None}))
    with pytest.raises(RamerError, match="not a tune summary as ramer tune writes it"):
        bench_mod.tune_summary(s, "ramer-no_shuffle")
    s.tuned_values = {"ramer-no_shuffle": {"train.lr": 100.0, "train.weight_decay": 1.0}}
    with pytest.raises(RamerError, match="train.lr 100 x train.weight_decay 1 is 100"):
        bench_mod.check_settings(s, s.base, "ramer-no_shuffle")


def test_an_export_takes_personality_only_where_the_model_reads_it(tmp_path, monkeypatch):
    """Data with personality and a model that reads none (late fusion): the graph takes no
    personality inputs, which a caller would have to feed for nothing. The exporter itself is
    stubbed: what it is given is the decision. (Personality inputs whenever the data has it.)"""
    import torch

    from ramer import export
    from ramer.config import LossConfig, ModelConfig
    from ramer.models.base import DataSpec
    from ramer.models.late_fusion import LateFusion

    pytest.importorskip("onnxscript")
    given = {}

    def fake_export(wrapper, args, path, input_names, **kwargs):
        given["names"] = input_names
        with open(path, "wb") as fh:
            fh.write(b"graph")

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    monkeypatch.setattr(export, "add_metadata", lambda *args, **kwargs: None)
    torch.manual_seed(0)
    dims = {"text": 6, "audio": 4, "visual": 3}
    spec = DataSpec(dims=dims, n_labels=3, label_names=("a", "b", "c"), personality_dim=5)
    model = LateFusion(ModelConfig(hidden=16, heads=2, ffn=16), LossConfig(), spec).eval()
    wrapper = export.export_onnx(model, spec, tmp_path / "m.onnx")
    assert given["names"] == wrapper.input_names() == ["text", "audio", "visual", "present", "valid", "target"]


def test_a_cached_run_at_another_path_without_fingerprints_is_not_reused(tmp_path):
    """A finished run of the same config but for ``data.path``, whose model file records no split
    fingerprints (made before they were): nothing says it is the same data, so it trains again.
    (The fingerprints' check on a path that differs dropped: an empty record passed.)"""
    from conftest import random_store

    from ramer import bench as bench_mod
    from ramer.config import build_config, dump_config, with_values

    run = tmp_path / "run"
    run.mkdir()
    made = with_values(build_config(), {"data.path": str(tmp_path / "old")})
    (run / "config.yaml").write_text(dump_config(made))
    (run / "test_metrics.json").write_text(json.dumps({"overall": {"micro_f1": 0.5, "n": 4}}))
    assert bench_mod.cache_state(run, made, memory_bundle(random_store(n=3))) == "done"
    now = with_values(made, {"data.path": str(tmp_path / "new")})
    assert bench_mod.cache_state(run, now, memory_bundle(random_store(n=3))) == "fresh" and not run.exists()


def test_a_tuned_bench_report_names_the_lr_its_set_fixed(tmp_path):
    """``--tuned DIR --set train.lr=0.003``: every model trained with lr 0.003, and the report's
    training line says so, not "lr tuned per model". (The ``--set`` not consulted.)"""
    from conftest import random_store

    from ramer import bench as bench_mod
    from ramer.config import build_config

    sets = ["train.lr=0.003"]
    s = bench_mod.BenchSettings(out=tmp_path, models=["late_fusion"], seeds=[1], rates=[0.0], overrides=sets)
    s.tuned, s.tuned_values = tmp_path / "tuned", {"late_fusion": {"model.dropout": 0.1}}
    (s.tuned / "late_fusion").mkdir(parents=True)
    counts = {"done": 0, "resume": 0, "fresh": 0}
    info = {"bundle": memory_bundle(random_store(n=3)), "task": "multi_label", "load": (None, None)}
    bench_mod.write_report(s, build_config(overrides=sets), [], {**info, "counts": counts, "wall_seconds": 1.0})
    training = next(ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.startswith("- Training"))
    assert ", AdamW lr 0.003, " in training
