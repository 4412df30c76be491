"""The Python API as a library user in a notebook meets it: what a wrong argument to the documented
entry points (``run_training``, ``build_model``, ``build_config``) says, and what the objects a cell
echoes (a predictor, a bundle, a store) print."""

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import ramer
from ramer.api import load_data_for
from ramer.config import build_config, resolve_config
from ramer.data import load_dataset
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.models import DataSpec, build_model
from ramer.train import run_training

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_run_training_names_a_wrong_out_bundle_or_console(run, tmp_path):
    """A split store (or a path) given as ``bundle``, a number as ``out`` or a name as ``console`` is
    one RamerError naming the argument, before any folder is made (an AttributeError inside the
    recipe, or a TypeError from pathlib, before)."""
    _, cfg = run
    store = generate(cfg.data.synthetic).splits["test"]
    for bundle in (store, str(tmp_path)):
        with pytest.raises(RamerError, match=r"run_training: bundle is a DataBundle .*not (SceneStore|str)"):
            run_training(cfg, tmp_path / "run", bundle=bundle)
    with pytest.raises(RamerError, match=r"run_training: out is the run folder's path .*not int"):
        run_training(cfg, 5)
    with pytest.raises(RamerError, match=r"run_training: console is a rich.console.Console, not str"):
        run_training(cfg, tmp_path / "run", console="stderr")
    assert not (tmp_path / "run").exists()


def test_a_data_spec_takes_the_configs_task_auto(run):
    """``DataSpec.from_bundle(bundle, cfg.data.task)`` as ``build_model``'s docstring has it, with the
    default ``data.task: auto``: the bundle's own task (a ValueError, task 'auto', before)."""
    _, cfg = run
    bundle = generate(cfg.data.synthetic)
    assert cfg.data.task == "auto"
    assert DataSpec.from_bundle(bundle, cfg.data.task) == DataSpec.from_bundle(bundle)


def test_run_training_refuses_a_hook_not_in_a_tuple_before_any_epoch(run, tmp_path):
    """``hooks=my_hook`` (one function, not a tuple of them): a RamerError before any work (a
    TypeError after the first epoch before, its folder left as a run to resume)."""
    _, cfg = run
    calls = []
    with pytest.raises(RamerError, match=r"run_training: hooks is a tuple of functions .*hooks=\(my_hook,\)"):
        run_training(cfg, tmp_path / "run", hooks=lambda recipe, epoch: calls.append(epoch))
    assert not (tmp_path / "run").exists() and not calls


def test_build_model_names_a_config_that_is_not_a_config(run):
    """A config's dict (``cfg.model_dump()``) given to ``build_model``: a RamerError saying what it
    takes (an AttributeError on ``dict.model`` before), as ``run_training`` says."""
    _, cfg = run
    spec = DataSpec.from_bundle(generate(cfg.data.synthetic))
    with pytest.raises(RamerError, match=r"build_model takes a ramer.config.Config .*not dict"):
        build_model(cfg.model_dump(), spec)
    assert build_model(cfg, spec) is not None


def test_build_config_names_a_dict_or_a_bundled_name_given_as_its_file():
    """A dict as the file points to ``config_from_dict`` (a TypeError from pathlib before); a
    bundled config's name, which ``ramer train --config`` takes, points to ``resolve_config``."""
    with pytest.raises(RamerError, match=r"build_config: file is a config file's path .*not dict .*config_from_dict"):
        build_config({"model": {"hidden": 16}})
    with pytest.raises(RamerError, match=r"resolve_config\('synthetic'\)"):
        build_config("synthetic", ["model.hidden=16"])


def test_the_data_loaders_name_an_argument_of_another_type(run):
    """``generate(cfg.data)`` (the run config's data section, not its ``synthetic``), a dict as
    ``load_dataset``'s ``data_cfg`` or a number as its path: a RamerError saying what each takes
    (an AttributeError or a TypeError from pathlib before)."""
    _, cfg = run
    with pytest.raises(RamerError, match=r"generate takes a SynthConfig .*not DataConfig .*cfg\.data\.synthetic"):
        generate(cfg.data)
    with pytest.raises(RamerError, match=r"data_cfg is a ramer\.config\.DataConfig .*not dict"):
        load_dataset(None, data_cfg={"synthetic": {"n_train": 8}})
    with pytest.raises(RamerError, match=r"the data's path is a str or Path .*not int"):
        load_dataset(5)


def test_a_predictor_bundle_store_and_batch_echo_one_line(run):
    """A cell ending in a predictor, a bundle, a store or a batch shows what it is on one line, not the
    module's layers or every array (190 lines, 35 000 characters before)."""
    folder, _ = run
    predictor = ramer.load(folder)
    bundle = load_data_for(predictor)
    store = bundle.splits["test"]
    for obj, parts in (
        (predictor, ["late_fusion", "epoch", "threshold", "device cpu", "precision fp32"]),
        (bundle, ["train: ", "test: ", f"labels ({len(bundle.label_names)})", "multi_label"]),
        (store, [f"{len(store)} samples", "tokens", "'text': "]),
        (store.collate([0, 1]), ["2 samples", "grid (", "device cpu"]),
    ):
        text = repr(obj)
        assert "\n" not in text and len(text) < 300, text
        assert all(part in text for part in parts), text
    assert "weights bfloat16" in repr(ramer.load(folder, precision="bf16"))  # cast at load: not the run's precision


def test_a_submodule_is_an_attribute_of_the_package_after_import_ramer():
    """README's ``ramer.infer.apply_missing(...)`` after ``import ramer`` alone, in a fresh process
    (an AttributeError before, where no other import had loaded ``ramer.infer``); an unknown name is
    still an AttributeError, and ``import ramer`` imports no submodule."""
    code = (
        "import sys, ramer\n"
        "assert not any(m.startswith('ramer.') and m != 'ramer.version' for m in sys.modules)\n"
        "print(ramer.infer.apply_missing.__name__, ramer.data.load_dataset.__name__)\n"
        "print(hasattr(ramer, 'no_such_module'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["apply_missing", "load_dataset", "False"]


def test_run_training_takes_resume_as_true_or_false(run, tmp_path):
    """``resume="no"`` is a RamerError before any folder is made (it counted as true before: the run
    looked for a training state to go on from)."""
    _, cfg = run
    with pytest.raises(RamerError, match=r"run_training: resume is True or False, not 'no'"):
        run_training(cfg, tmp_path / "run", resume="no")
    assert not (tmp_path / "run").exists()


def test_run_training_leaves_the_global_random_state_as_it_was(run, tmp_path):
    """A notebook's draws after a run go on from its own seed: the run seeds torch with
    ``train.seed`` for itself only (the generator was left at the run's last draw before)."""
    _, cfg = run
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_training(cfg, tmp_path / "run")
    assert torch.equal(torch.rand(3), expected)


def test_a_tilde_in_a_path_is_the_home_folder(run, tmp_path, monkeypatch):
    """``~/...`` as a shell reads it, where no shell expands it: a config file's or ``--set``'s
    ``data.path``, a config file (``build_config``, ``--config``), ``load_dataset``, ``ramer.load``
    and ``run_training``'s folder (each was a path named ``~`` in the working folder before: not
    found)."""
    folder, cfg = run
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(folder, tmp_path / "run")
    generate(cfg.data.synthetic).save(tmp_path / "data")
    (tmp_path / "small.yaml").write_text("data:\n  path: ~/data\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "run")  # no folder named ~ where the paths are read
    assert build_config("~/small.yaml").data.path == str(tmp_path / "data")
    assert resolve_config("~/small.yaml") == tmp_path / "small.yaml"  # --config "~/small.yaml", quoted
    assert build_config(None, ["data.path=~/data"]).data.path == str(tmp_path / "data")
    assert len(load_dataset("~/data").splits["test"]) == len(load_dataset(tmp_path / "data").splits["test"])
    assert ramer.load("~/run").label_names == ramer.load(folder).label_names
    run_training(cfg, "~/again")
    assert (tmp_path / "again" / "test_metrics.json").is_file()


def test_a_star_import_of_the_api_gives_what_a_user_calls():
    """``from ramer.api import *`` in a notebook: the predictor, its warnings, ``load`` and
    ``load_data_for``, not the module's own imports (numpy as np, torch, Path, ...)."""
    names: dict = {}
    exec("from ramer.api import *", names)
    want = ["OtherImport", "Predictor", "RunNotFinished", "load", "load_data_for"]
    assert sorted(set(names) - {"__builtins__"}) == want


def test_training_a_deep_model_does_not_import_scikit_learn(tmp_path):
    """``from ramer.train import run_training`` and a deep model's run leave scikit-learn unimported,
    in a fresh process: it takes most of a second to import, and sets ``KMP_DUPLICATE_LIB_OK`` and
    ``KMP_INIT_AT_FORK`` in the process's environment (both happened at ``import ramer.train``
    before); a classical model's run imports it."""
    code = (
        "import os, sys\n"
        "from test_recipe import tiny_cfg\n"
        "from ramer.train import run_training\n"
        "run_training(tiny_cfg(extra=['train.epochs=1']), sys.argv[1] + '/deep')\n"
        "print('sklearn' in sys.modules, os.environ.get('KMP_DUPLICATE_LIB_OK'))\n"
        "run_training(tiny_cfg('br'), sys.argv[1] + '/br')\n"
        "print('sklearn' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("KMP_")},
            "PYTHONPATH": str(Path(__file__).parent),
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "None", "True"], done.stdout


def test_predict_names_a_batch_that_is_not_one_collate_builds(run):
    """A batch made or edited by hand (``dataclasses.replace``): a target token outside the grid
    failed inside late fusion (this run's model; a RuntimeError) and RAMer scored it as another
    token (it takes the target's segment modulo S); a missing modality, numpy features, float
    presence masks or another grid failed inside the model (KeyError, TypeError,
    NotImplementedError, RuntimeError); a target moved to another person, its scope left, scored a
    mix of the two persons. Each is one RamerError naming the field."""
    out, _ = run
    predictor = ramer.load(out)
    batch = load_data_for(predictor).splits["test"].collate(np.arange(3))
    (P, S), N = batch.grid, batch.valid.shape[1]
    assert P > 1 and predictor.predict(batch).shape == (3, len(predictor.label_names))
    without = {k: v for k, v in batch.features.items() if k != "audio"}
    padded = batch.valid.clone()
    padded[torch.arange(3), batch.target.clamp_min(0)] = False  # each target token (or token 0) padding
    cases = [
        (dict(target=torch.full((3,), N)), rf"target holds token indices outside -1\.\.{N - 1} "),
        (dict(target=torch.full((3,), -5)), r"target holds token indices outside"),
        (
            dict(features=without),
            r"features must be a dict with the keys \['text', 'audio', 'visual'\], got \['text', 'visual'\]",
        ),
        (dict(present=None), r"present must be a dict with the keys .*, got NoneType"),
        (
            dict(features={**batch.features, "text": batch.features["text"].numpy()}),
            r"features\['text'\] is a ndarray, not",
        ),
        (
            dict(present={**batch.present, "text": batch.present["text"].float()}),
            r"present\['text'\] is of type float32, expected bool",
        ),
        (dict(valid=batch.valid[:, 1:]), rf"valid has shape \(3, {N - 1}\), expected \(3, {N}\)"),
        (dict(grid=(1, P * S)), r"person holds indices outside 0\.\.0"),
        (dict(grid=(P, S, 1)), r"grid is .*, expected \(P, S\)"),
        (dict(ids=batch.ids[:2]), r"ids must be a list of 3 sample ids"),
        (dict(personality_present=None), r"personality and personality_present must both be tensors"),
        (dict(valid=padded), r"a target is a padded token"),
        (
            dict(present={**batch.present, "audio": torch.ones_like(batch.valid)}),
            r"present\['audio'\] is True on a pad",
        ),
        (dict(role=torch.full((3,), 2)), r"role holds values other than -1, 0 and 1"),
        # the target moved to another person, its scope left: the models pooled over the old one's tokens
        (dict(target=(batch.target + S) % N), r"scope is not the target person's tokens"),
        (dict(target=torch.full((3,), -1), scope=torch.zeros_like(batch.scope)), r"a row's scope is empty"),
    ]
    for change, message in cases:
        with pytest.raises(RamerError, match=rf"^batch: {message}"):
            predictor.predict(replace(batch, **change))
    with pytest.raises(RamerError, match=r"^batch_size=1 cuts a SceneStore or DataBundle into batches"):
        predictor.predict(batch, batch_size=1)


def test_scores_made_nan_by_huge_finite_features_name_the_features(run):
    """Finite features of 1e30 make a float32 model's arithmetic overflow: the error blamed the
    model ("did the model diverge?"), for a batch and for a store alike; it names the features."""
    import dataclasses

    out, _ = run
    predictor = ramer.load(out)
    test = load_data_for(predictor).splits["test"]
    batch = test.collate(np.arange(3))
    text = torch.full_like(batch.features["text"], 1e30)
    huge = dataclasses.replace(batch, features={**batch.features, "text": text})
    said = r"scores are NaN or infinite: the model's arithmetic overflowed on features whose largest magnitudes are "
    said += r"text 1e\+30"
    with pytest.raises(RamerError, match=rf"^batch: {said}"):
        predictor.predict(huge)
    with pytest.raises(RamerError, match=rf": {said}"):
        predictor.predict(dataclasses.replace(test, text=np.full_like(test.text, 1e30)))
