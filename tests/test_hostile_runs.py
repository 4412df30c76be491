"""Run files a user got from someone else (a colleague's run folder, model file or training state),
damaged or made to harm: reading them runs no code, takes no more memory than the file's size
asks for, and a problem is one RamerError naming the file, with nothing of the run changed."""

import json
import re
import shutil
import sqlite3
import warnings
import zipfile

import pytest
import torch
from conftest import pipe_at
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_recipe import Recipe, tiny_cfg

import ramer
from ramer import api
from ramer import checkpoint as ckpt
from ramer.data.store import resolve_task
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.models import build_model
from ramer.models.base import DataSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def files_of(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def copy_of(stopped_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    return out


def rewrite_model(path, tensors=None, **meta_changes):
    """``path``'s model file written again, its tensors changed by ``tensors(state)`` and its metadata
    fields replaced by ``meta_changes`` (each a JSON text, or a function of the parsed field)."""
    state = load_file(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    for key, change in meta_changes.items():
        meta[key] = json.dumps(change(json.loads(meta[key]))) if callable(change) else change
    save_file(tensors(state) if tensors else state, path, metadata=meta)


def with_sizes(sizes):
    def change(tree):
        tree["model"].update(sizes)
        return tree

    return change


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"hidden": 4096}, "{path}: .*weights do not fit the model \\(.*has shape"),
        # past what any memory holds: refused by the config's bounds, before anything is built
        (
            {"hidden": 10**9, "ffn": 10**12},
            "invalid config \\({path} metadata\\): 'model.hidden': Input should be less",
        ),
    ],
)
def test_a_model_file_whose_config_asks_for_another_size_is_refused_before_the_model_is_built(
    stopped_run, tmp_path, monkeypatch, sizes, message
):
    """The config in a model file's metadata says how large a model to build; one that its weights do
    not fit (``model.hidden`` 30000: tens of gigabytes) was built, taking all memory, before the
    weights were found not to fit; past what memory can hold, torch's allocation error came out as a
    traceback. Now the config is checked against the weights on the meta device first."""
    out = copy_of(stopped_run, tmp_path)
    rewrite_model(out / "model.safetensors", config=with_sizes(sizes))

    def never(cfg, spec):
        raise AssertionError(f"the model of model.hidden {cfg.model.hidden} was built")

    monkeypatch.setattr(api, "build_model", never)
    with pytest.raises(RamerError, match="^" + message.replace("{path}", re.escape(str(out / "model.safetensors")))):
        ramer.load(out)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_a_model_file_of_integer_or_boolean_weights_is_refused_not_cast(stopped_run, tmp_path, dtype):
    """torch's load_state_dict casts an int8 or boolean tensor into a float weight without a word: the
    model then scored with weights of 0 and 1."""
    out = copy_of(stopped_run, tmp_path)
    rewrite_model(out / "model.safetensors", tensors=lambda state: {k: v.to(dtype) for k, v in state.items()})
    with pytest.raises(RamerError, match=f"is {dtype}, the model torch.float32"):
        ramer.load(out)


def test_a_model_file_naming_a_label_twice_is_malformed(stopped_run, tmp_path):
    out = copy_of(stopped_run, tmp_path)

    def twice(spec):
        spec["label_names"][1] = spec["label_names"][0]
        return spec

    rewrite_model(out / "model.safetensors", spec=twice)
    with pytest.raises(RamerError, match="metadata 'spec' is malformed \\('label_names' names a label twice"):
        ckpt.read_spec(out / "model.safetensors")


def test_a_model_file_whose_label_name_holds_a_control_character_is_malformed(stopped_run, tmp_path):
    """Label names are printed (eval's table, predict's legend): ESC in one is the file's command to
    the terminal."""
    out = copy_of(stopped_run, tmp_path)

    def escape(spec):
        spec["label_names"][1] = "\x1b]0;owned\x07joy"
        return spec

    rewrite_model(out / "model.safetensors", spec=escape)
    with pytest.raises(
        RamerError, match=r"malformed \('label_names' holds .*, a name with the control character \\x1b \(names are"
    ):
        ckpt.read_spec(out / "model.safetensors")


def test_a_model_file_with_an_empty_label_name_is_malformed(stopped_run, tmp_path):
    """An empty label name is a legend entry and a table row of nothing."""
    out = copy_of(stopped_run, tmp_path)

    def empty(spec):
        spec["label_names"][1] = ""
        return spec

    rewrite_model(out / "model.safetensors", spec=empty)
    with pytest.raises(RamerError, match=r"malformed \('label_names' holds an empty name \(names are printed"):
        ckpt.read_spec(out / "model.safetensors")


def edit_state(out, edit):
    state = torch.load(out / "train_state.pt", weights_only=True)
    edit(state)
    torch.save(state, out / "train_state.pt")


@pytest.mark.parametrize("fill", [0, 255])
def test_a_random_state_of_the_right_size_that_no_generator_takes_is_refused(stopped_run, tmp_path, fill):
    """``torch.set_rng_state`` of 5056 bytes that are no Mersenne Twister state raised ("Invalid
    mt19937 state") as a traceback, after the weights and optimiser state were loaded."""
    out = copy_of(stopped_run, tmp_path)
    edit_state(out, lambda s: s.__setitem__("rng", torch.full_like(s["rng"], fill)))
    with pytest.raises(RamerError, match="not a ramer training state \\('rng' must be a random generator state"):
        ckpt.load_train_state(out / "train_state.pt")


def inflated(path, extra: int) -> None:
    """``path``, a torch.save zip, written again with its pickle compressed and ``extra`` zero bytes
    after it (a few kilobytes in the file, ``extra`` bytes in memory)."""
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                z.writestr(info.filename, data + bytes(extra), compress_type=zipfile.ZIP_DEFLATED)
            else:
                z.writestr(info, data)


def test_a_training_state_with_a_compressed_entry_is_refused_before_it_is_inflated(stopped_run, tmp_path):
    """torch.save stores its entries as they are; torch.load inflates a compressed one whole into
    memory: a 3 MB file took 6.7 GB to resume."""
    out = copy_of(stopped_run, tmp_path)
    inflated(out / "train_state.pt", 1 << 20)
    before = files_of(out)
    with pytest.raises(RamerError, match="its entry .*data.pkl is compressed, which torch.save never writes"):
        ckpt.load_train_state(out / "train_state.pt")
    assert files_of(out) == before


def test_a_training_state_past_the_runs_epochs_is_refused_and_loses_nothing(stopped_run, tmp_path):
    """A state of epoch 10**18 of a run of 3 epochs said the run had trained all its epochs, tested it
    and logged 10**18 epochs run."""
    out = copy_of(stopped_run, tmp_path)
    edit_state(out, lambda s: s.__setitem__("epoch", 10**18))
    before = files_of(out)
    cfg = tiny_cfg()
    with pytest.raises(RamerError, match="'epoch' 1000000000000000000 is past the run's train.epochs 3"):
        Recipe(cfg, out, bundle=generate(cfg.data.synthetic), resume=True).run()
    assert files_of(out) == before


def test_a_model_file_with_a_threshold_above_1_is_refused(stopped_run, tmp_path):
    """A stored threshold of 1.5 decides no label for any sample: refused as malformed, one line
    naming the file, not a model that predicts nothing."""
    out = copy_of(stopped_run, tmp_path)
    rewrite_model(out / "model.safetensors", threshold="1.5")
    with pytest.raises(RamerError) as e:
        ckpt.read_model_file(out / "model.safetensors")
    assert str(e.value).startswith(f"{out / 'model.safetensors'}: stored threshold 1.5 is malformed")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"epoch": 0, "best": {"epoch": 0}}, "'epoch' must be a whole number of at least 1, not 0"),
        ({"best": {"epoch": 2}}, "best 'epoch' must be a whole number from 0 to the state's epoch 1, not 2"),
    ],
    ids=["state-epoch-0", "best-epoch-past-the-state"],
)
def test_a_training_state_with_impossible_epochs_is_refused(stopped_run, tmp_path, edit, message):
    """A state saved after epoch 0 (no epoch trained), or whose best epoch comes after the epoch it
    was saved at, is no state a run writes: refused in one line naming the file, not resumed."""
    out = copy_of(stopped_run, tmp_path)

    def change(state):
        state["epoch"] = edit.get("epoch", state["epoch"])
        state["best"].update(edit["best"])

    edit_state(out, change)
    with pytest.raises(RamerError) as e:
        ckpt.load_train_state(out / "train_state.pt")
    assert str(e.value).startswith(f"{out / 'train_state.pt'}: not a ramer training state ({message}")
    assert "\n" not in str(e.value)


def test_an_integer_buffer_of_another_integer_type_is_refused_not_cast(tmp_path):
    """RAMer's queue of class ids is an int64 buffer; torch would cast an int32 one into it without a
    word. A model file holding another integer type is refused, naming the tensor and both types."""
    cfg = tiny_cfg("ramer")
    bundle = generate(cfg.data.synthetic)
    spec = DataSpec.from_bundle(bundle, resolve_task(bundle, cfg.data.task))
    path = tmp_path / "model.safetensors"
    ckpt.save_model(path, build_model(cfg, spec), cfg, spec, 0.5, 1)
    key = "memory.queue_classes"
    rewrite_model(path, tensors=lambda state: {**state, key: state[key].to(torch.int32)})
    with pytest.raises(RamerError) as e:
        ckpt.read_model_file(path)
    assert str(e.value).startswith(f"{path}: weights do not fit the model ({key} is torch.int32, the model torch.int64")
    assert "\n" not in str(e.value)


def test_a_pickle_of_another_protocol_is_refused_without_torchs_warning(tmp_path):
    """torch warned of the pickle protocol (two lines of its source) before the one-line refusal."""
    path = tmp_path / "train_state.pt"
    path.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RamerError, match="not a ramer training state"):
            ckpt.load_train_state(path)
    assert [str(w.message) for w in caught] == []


# ------------------------------------------------------------------ a study continued (ramer tune --out STUDY)
def study_with(out, edit_sql=None, study_attrs=(), **trial_attrs):
    """``out/study.db``: a study of late_fusion as ramer tune makes it, with one complete trial whose
    records are ``trial_attrs``; ``study_attrs`` replace the study's; ``edit_sql`` is run on the file."""
    optuna = pytest.importorskip("optuna")
    from ramer import tune

    out.mkdir()
    base = tiny_cfg()
    study, _ = tune.open_study(optuna, out, None, base, 0)
    for key, value in study_attrs:
        study.set_user_attr(key, value)
    dist = optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)
    attrs = {"worker": {"host": "elsewhere", "pid": 7}, "steps": 6, "seconds": 1.5, **trial_attrs}
    trial = optuna.trial.create_trial(params={"train.lr": 1e-3}, distributions={"train.lr": dist}, value=0.3)
    trial.user_attrs.update(attrs)
    study.add_trial(trial)
    if edit_sql:
        with sqlite3.connect(out / "study.db") as db:
            db.execute(edit_sql)
    return optuna, tune, base


@pytest.mark.parametrize(
    ("attrs", "study_attrs", "edit_sql", "message"),
    [
        ({"seconds": "x"}, (), None, "trial 0's 'seconds' 'x' is not what ramer tune records"),
        ({"worker": "x"}, (), None, "trial 0's 'worker' 'x' is not what ramer tune records"),
        ({"worker": {"host": "h", "pid": 10**20}}, (), None, "trial 0's 'worker' {'host': 'h', 'pid': 1"),
        ({}, (("trial_seeds", "2"),), None, "its 'trial_seeds' '2' is not a count of 1 or more"),
        ({}, (("config", "x"),), None, "its 'config' is not an object, but str"),
        ({}, (), "UPDATE trial_values SET value = 1e999", "trial 0's value inf is not a finite score"),
        ({}, (), 'UPDATE trial_params SET distribution_json = \'{"name": "x"}\'', "Unknown distribution class: x"),
        ({}, (), f"UPDATE trial_user_attributes SET value_json = '{'[' * 10**5}{']' * 10**5}'", "maximum recursion"),
    ],
)
def test_a_study_ramer_tune_did_not_write_is_refused_when_opened(tmp_path, attrs, study_attrs, edit_sql, message):
    """A study of records of other kinds (a worker's pid of 'x' or 10**20, seconds of 'x', a value of
    inf, a distribution Optuna does not know, JSON nested too deeply) was opened, and a trial run,
    then failed with a traceback in fail_stale or write_outputs (the run's trial written into it)."""
    out = tmp_path / "study"
    optuna, tune, base = study_with(out, edit_sql, study_attrs, **attrs)
    before = (out / "study.db").read_bytes()
    with pytest.raises(RamerError, match=re.escape(message)):
        tune.open_study(optuna, out, None, base, 0)
    assert (out / "study.db").read_bytes() == before


def test_a_study_db_of_other_tables_is_not_made_a_study(tmp_path):
    """Optuna added its tables to an SQLite database of the user's at OUT/study.db and ran the study in it."""
    optuna = pytest.importorskip("optuna")
    from ramer import tune

    out = tmp_path / "study"
    out.mkdir()
    with sqlite3.connect(out / "study.db") as db:
        db.execute("CREATE TABLE mine (x TEXT)")
    before = (out / "study.db").read_bytes()
    with pytest.raises(RamerError, match=r"study.db: an SQLite database of other tables \(mine\), not an Optuna study"):
        tune.open_study(optuna, out, None, tiny_cfg(), 0)
    assert (out / "study.db").read_bytes() == before


def test_weights_for_a_lazy_module_are_not_checked_against_its_unknown_sizes():
    """A module of another package may be lazy (``nn.LazyLinear``: its sizes come from the first input,
    or from the file); its uninitialised parameters have no shape to compare, which crashed the check."""
    from torch import nn

    own = nn.LazyLinear(3).state_dict()
    assert ckpt.fit_problems(own, {"weight": torch.zeros(3, 5), "bias": torch.zeros(3)}) == []


def test_a_study_db_locked_by_another_process_is_said_before_the_wait(tmp_path, monkeypatch):
    """An exclusive lock of another process on OUT/study.db made ramer tune wait for minutes without a word."""
    from rich.console import Console

    from ramer import tune

    path = tmp_path / "study.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE studies (study_id INTEGER)")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(tune, "LOCK_NOTE_AFTER", 0.05)
    console = Console(record=True, width=300)
    try:
        tune.check_study_file(path, console)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert f"note: {path} is locked by another process; waiting until it is released" in console.export_text()
    console = Console(record=True, width=300)
    tune.check_study_file(path, console)  # released: nothing to say
    assert console.export_text() == ""


def test_ramer_tune_says_its_study_db_is_locked_before_it_waits(tmp_path, monkeypatch, capsys):
    """The note reaches the user of ``ramer tune`` (tune hands its console to the check), and the
    search goes on once the other process lets go."""
    import threading

    pytest.importorskip("optuna")
    from ramer import tune
    from ramer.cli import main

    sets = ["train.epochs=1", "model.hidden=16", "model.ffn=32", "model.heads=2", "train.batch_size=16"]
    sets += ["train.threads=1", "data.synthetic.n_train=48", "data.synthetic.n_valid=24", "data.synthetic.n_test=24"]
    argv = ["tune", "--model", "late_fusion", "--out", str(tmp_path / "t"), *[x for s in sets for x in ("--set", s)]]
    assert main([*argv, "--trials", "1"]) == 0
    other = sqlite3.connect(tmp_path / "t" / "study.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    check = tune.check_study_file

    def let_go_after_the_check(path, console=None):  # not a second after main() starts: a slow machine
        check(path, console)  # got to the check after that, and there was no note; Optuna waits for it now
        threading.Timer(1.0, lambda: other.execute("ROLLBACK")).start()

    monkeypatch.setattr(tune, "check_study_file", let_go_after_the_check)
    monkeypatch.setattr(tune, "LOCK_NOTE_AFTER", 0.2)
    capsys.readouterr()
    assert main([*argv, "--trials", "2"]) == 0
    other.close()
    err = capsys.readouterr().err
    assert "study.db is locked by another process; waiting until it is released" in err, err


def test_a_pipe_given_as_the_run_is_named_for_what_it_is(tmp_path):
    """A pipe or a device given to ramer.load (ramer eval, predict, view) was looked into as a run
    folder: 'PIPE/model.safetensors: model file not found'."""
    with pipe_at(tmp_path / "fifo") as fifo:
        with pytest.raises(RamerError, match=rf"^{fifo}: not a file or a folder \(a pipe or a device\?\); give a run"):
            ramer.load(fifo)
