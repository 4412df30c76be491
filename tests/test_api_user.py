"""The Python API as a notebook uses it: ``ramer.load`` given what a user has at hand (a torch
device, a folder of runs, a run not finished), and what loading and predicting leave behind in the
process (random state, threads, grad mode, default dtype)."""

import inspect
import os
import random
import shlex
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import ramer
import ramer.api
from ramer.api import load_data_for
from ramer.data.synthetic import generate
from ramer.errors import RamerError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_ramer_load_is_the_documented_function():
    """``ramer.load?`` in a notebook shows ``api.load``'s docstring and types (a wrapper showed one
    line and no types)."""
    assert ramer.load is ramer.api.load
    assert "load" in dir(ramer)
    # the API's other names too; dir lists the package's names, not the modules its file imports
    assert (ramer.Predictor, ramer.RunNotFinished, ramer.load_data_for) == (
        ramer.api.Predictor,
        ramer.api.RunNotFinished,
        ramer.api.load_data_for,
    )
    assert {"Predictor", "__version__"} <= set(dir(ramer)) and not {"importlib", "TYPE_CHECKING"} & set(dir(ramer))
    params = inspect.signature(ramer.load).parameters
    assert params["device"].annotation != inspect.Parameter.empty
    assert "precision" in ramer.load.__doc__ and "device" in ramer.load.__doc__


def test_load_leaves_the_global_random_state_as_it_was(run):
    """Building the model draws its initial weights from torch's generator: a notebook's next draw
    depended on whether it had loaded a run."""
    out, _ = run
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    alone = (torch.rand(4), np.random.rand(4), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    ramer.load(out)
    after = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(alone[0], after[0])
    np.testing.assert_array_equal(alone[1], after[1])
    assert alone[2] == after[2]


FIRST_LOAD = """
import os, random, sys
random.seed(0)
alone = random.random()
random.seed(0)
env = dict(os.environ)
import ramer
predictor = ramer.load(sys.argv[1])
predictor.predict(ramer.api.load_data_for(predictor))
print(random.random() == alone, "torch._dynamo" in sys.modules, sorted(set(os.environ.items()) ^ set(env.items())))
"""


def test_the_first_load_in_a_process_leaves_it_as_it_was(run):
    """The first ``ramer.load`` of a process imports what a load needs: rich drew from Python's random
    generator as it was imported (also where ``ramer.cli`` imports it), and building the model on the
    meta device (to check the file's weights against its config) imported PyTorch's compiler (1 to
    2 s), which set an environment variable (TORCHINDUCTOR_CACHE_DIR). In a fresh process, as a
    script's first load."""
    out, _ = run
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_LOAD, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "True False []"
    # a command's modules import rich before ramer.console: the state is put back by ramer's own import
    script = "import random; random.seed(0); import ramer.cli; print(random.random())"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout == f"{alone()}\n"


def alone() -> float:
    random.seed(0)
    return random.random()


def test_load_takes_a_torch_device(run):
    """``device=torch.device("cpu")`` was a pydantic ValidationError; another type is one line."""
    out, _ = run
    predictor = ramer.load(out, device=torch.device("cpu"))
    assert predictor.device == torch.device("cpu") and predictor.cfg.train.device == "cpu"
    with pytest.raises(
        RamerError, match=r"^device must be a str such as 'cpu' or 'cuda:0' \(or a torch.device\), not 5$"
    ):
        ramer.load(out, device=5)


def test_predict_takes_numpys_integers_for_workers(run):
    """``workers=np.int64(2)`` (from a numpy computation) was refused as 'got 2'."""
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]
    np.testing.assert_allclose(predictor.predict(test, workers=np.int64(2)), predictor.predict(test), atol=1e-6)


def test_an_unfinished_run_loads_with_a_warning(run, tmp_path):
    """A run still training, or stopped before its test, gave its best model so far without a word."""
    out, _ = run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ramer.load(out)  # finished: no warning
    shutil.copytree(out, tmp_path / "stopped")
    (tmp_path / "stopped" / "test_metrics.json").unlink()
    with pytest.warns(
        UserWarning, match=r"stopped: the run has not finished \(no test_metrics.json\).*epoch \d"
    ) as seen:
        predictor = ramer.load(tmp_path / "stopped")
    assert seen[0].filename == __file__  # it points at the caller's line
    np.testing.assert_array_equal(
        predictor.predict(generate(run[1].data.synthetic)), ramer.load(out).predict(generate(run[1].data.synthetic))
    )
    (tmp_path / "model").mkdir()
    shutil.copy(out / "model.safetensors", tmp_path / "model")  # a model file on its own: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ramer.load(tmp_path / "model" / "model.safetensors")


def test_the_unfinished_runs_resume_command_pastes_with_a_space_in_the_folder(run, tmp_path):
    """The warning's ``ramer train --resume RUN`` quotes a folder as ramer train's own Ctrl-C hint does:
    unquoted, a folder with a space pasted as two arguments."""
    stopped = tmp_path / "my runs" / "stopped"
    shutil.copytree(run[0], stopped)
    (stopped / "test_metrics.json").unlink()
    with pytest.warns(ramer.api.RunNotFinished) as seen:
        ramer.load(stopped)
    command = str(seen[0].message).split("; ramer train --resume ", 1)[1].removesuffix(" finishes a stopped run")
    assert shlex.split(command) == [str(stopped)]


def test_load_says_which_path_to_give_instead(run, tmp_path):
    """A folder of runs (``ramer demo --out``) and a run with no model yet said only 'model file not
    found'."""
    out, _ = run
    for name in ("ramer", "late_fusion"):
        shutil.copytree(out, tmp_path / "demo" / name)
    with pytest.raises(RamerError, match=r"demo: a folder of runs, not a run .*: \S+demo/late_fusion, \S+demo/ramer$"):
        ramer.load(tmp_path / "demo")
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(out / "config.yaml", started)
    (started / "metrics.jsonl").touch()
    with pytest.raises(RamerError, match=r"started: the run has no model.safetensors yet \(still being trained"):
        ramer.load(started)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RamerError, match=r"\S+empty/model.safetensors: model file not found$"):
        ramer.load(tmp_path / "empty")


def test_predict_leaves_the_process_as_it_was_and_repeats_itself(run):
    """Threads, grad mode, default dtype, random state and the model's mode are what they were after
    predicting a store (one process and forked), a bundle, a batch and at bf16; a second call gives
    the same scores (to float32 rounding: with several threads a matrix product may sum in another
    order from one call to the next)."""
    out, cfg = run
    bundle = generate(cfg.data.synthetic)
    test = bundle.splits["test"]

    def state():
        return (
            torch.get_num_threads(),
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
            torch.get_default_dtype(),
            torch.random.get_rng_state(),
            np.random.get_state()[1].copy(),
            random.getstate(),
        )

    def same(a, b):
        return a[:4] == b[:4] and torch.equal(a[4], b[4]) and np.array_equal(a[5], b[5]) and a[6] == b[6]

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for precision in ("fp32", "bf16"):
            predictor = ramer.load(out, precision=precision)
            predictor.cfg.train.eval_batch_size = 16  # several batches: workers=2 forks two processes
            before = state()
            first = predictor.predict(test)
            for call in (
                lambda: predictor.predict(test),
                lambda: predictor.predict(test, workers=2),
                lambda: predictor.predict(bundle, split="test"),
            ):
                np.testing.assert_allclose(call(), first, rtol=0, atol=1e-6)  # threads may sum in another order
            np.testing.assert_allclose(predictor.predict(test.collate(np.arange(len(test)))), first, atol=1e-5)
            assert not predictor.model.training
            assert same(before, state())
    finally:
        torch.set_num_threads(threads)


def test_load_data_for_compares_the_splits_it_is_given(run):
    """``compare="test"`` was read letter by letter and a misspelt split was skipped: no split was
    compared, and a changed one went without a warning."""
    out, _ = run
    predictor = ramer.load(out)
    predictor.data_fingerprints["test"] = "0" * 64  # as if the data had changed since the run
    with pytest.warns(UserWarning, match=r"split 'test' of the embedded benchmark differs"):
        load_data_for(predictor, compare="test")
    with pytest.raises(
        RamerError, match=r"^load_data_for: compare names 'tset', not a split of .* \(has train, valid, test\)$"
    ):
        load_data_for(predictor, compare=("tset",))
    with pytest.raises(RamerError, match=r"^load_data_for: compare must be a split name or a tuple of them, not 3$"):
        load_data_for(predictor, compare=3)


def test_predict_scores_in_eval_mode_and_gives_the_mode_back(run):
    """A model put in training mode (to fine-tune it) is scored in eval mode, and stays in training
    mode: a batch left it in eval mode, a store did not."""
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]
    batch = test.collate(np.arange(len(test)))
    evaluated = predictor.predict(batch)
    predictor.model.train()
    for data in (test, batch):
        np.testing.assert_allclose(predictor.predict(data), evaluated, rtol=0, atol=1e-6)
        assert predictor.model.training


def test_the_cli_says_a_run_is_not_finished_in_a_note(run, tmp_path, capsys):
    """``ramer eval``, ``predict`` and ``export`` load through ``ramer.load``: its warning of a run not
    finished came out as a Python warning with cli.py's source line; it is a ``note:`` line now."""
    from ramer.cli import main

    stopped = tmp_path / "stopped"
    shutil.copytree(run[0], stopped)
    (stopped / "test_metrics.json").unlink()
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        assert main(["eval", str(stopped)]) == 0
    err = capsys.readouterr().err
    assert f"note: {stopped}: the run has not finished (no test_metrics.json)" in err, err
    assert not [w for w in escaped if issubclass(w.category, ramer.api.RunNotFinished)]


def test_a_run_folder_given_as_data_and_no_spec_given_to_build_model_say_what_they_are(run, capsys):
    """``load_dataset(RUN_DIR)`` said only "unknown dataset folder"; ``build_model(cfg, None)`` gave
    the builder's AttributeError."""
    from ramer.data.formats import load_dataset
    from ramer.models import build_model

    with pytest.raises(
        RamerError, match=r"unknown dataset folder: .*\(it is a run folder: its model is read by ramer.load"
    ):
        load_dataset(run[0])
    with pytest.raises(
        RamerError, match=r"^build_model takes a DataSpec \(DataSpec.from_bundle\(bundle, task\)\), not NoneType$"
    ):
        build_model(run[1], None)


def test_a_store_is_scored_in_eval_mode_whatever_mode_the_model_is_in(run):
    """``infer.predict`` puts the model in eval mode for the pass (dropout off) and gives its mode
    back: a model left in training mode scores a store as one in eval mode does."""
    predictor = ramer.load(run[0])
    store = generate(run[1].data.synthetic).splits["test"]
    want = predictor.predict(store)
    predictor.model.train()
    np.testing.assert_array_equal(predictor.predict(store), want)
    assert predictor.model.training
