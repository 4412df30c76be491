"""Files another ramer version wrote: a model file and a training state record the ramer and torch
versions that wrote them, and what this version cannot read is one line naming the file, the
problem and both versions (a newer writer is told apart from an older one)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_recipe import Stop, one_error_line, stop_after, tiny_cfg

import ramer
from ramer import bench
from ramer import checkpoint as ckpt
from ramer.cli import main
from ramer.config import build_config, read_run_config, with_values
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.train.recipe import Recipe

NEWER = "99.0.0"  # a ramer later than this one


def copy_with(run, dst, tensors=None, **meta):
    """A copy of run folder ``run`` at ``dst`` whose model file has its tensors changed by
    ``tensors(state)`` and its metadata entries replaced by ``meta`` (a function of the parsed JSON
    field, a text, or None to drop the entry)."""
    shutil.copytree(run, dst)
    path = dst / "model.safetensors"
    state = load_file(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    for key, change in meta.items():
        if change is None:
            metadata.pop(key, None)
        else:
            metadata[key] = json.dumps(change(json.loads(metadata[key]))) if callable(change) else change
    save_file(tensors(state) if tensors else state, str(path), metadata=metadata)
    return dst


def with_new_key(tree):
    tree["model"]["new_knob"] = 3  # a setting a newer ramer has
    return tree


def renamed(state):
    name = sorted(state)[0]
    return {**{k: v for k, v in state.items() if k != name}, name + "_v2": state[name]}


def refused(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert one_error_line(err), err
    return err


def test_a_run_records_the_versions_that_wrote_it(tiny_run):
    out, _ = tiny_run
    want = {"ramer_version": ramer.__version__, "torch_version": str(torch.__version__)}
    assert ckpt.read_written_by(out / "model.safetensors") == want
    assert ramer.load(out).written_by == want
    assert ckpt.written_by(ckpt.load_train_state(out / "train_state.pt")) == want


def test_a_model_file_from_before_versions_were_recorded_loads_as_before(tiny_run, tmp_path):
    out, _ = tiny_run
    old = copy_with(out, tmp_path / "old", ramer_version=None, torch_version=None)
    assert ckpt.read_written_by(old / "model.safetensors") == {}
    predictor = ramer.load(old)
    assert predictor.written_by == {} and predictor.epoch == ramer.load(out).epoch


@pytest.mark.parametrize(
    ("written", "says"),
    [
        (
            NEWER,
            ": its config has key 'model.new_knob' that this ramer does not know (written by ramer "
            f"{NEWER}, newer than this ramer {ramer.__version__}: read it with ramer {NEWER} or later)",
        ),
        (None, f"unknown key 'model.new_knob' (the file records no ramer version; this is ramer {ramer.__version__})"),
        (  # a development tree with a setting this one lacks: not only 'unknown key', as if a typo
            ramer.__version__,
            f"unknown key 'model.new_knob' (written by this ramer version, {ramer.__version__}, so by another build "
            "of it with other settings, or edited)",
        ),
    ],
)
def test_a_config_key_this_ramer_lacks_is_named_with_the_versions(tiny_run, tmp_path, capsys, written, says):
    """A key of a newer ramer's config: the file says which ramer wrote it (a file from before
    versions were recorded is of an older ramer, or edited: the key is named, and that it records none)."""
    out, _ = tiny_run
    run = copy_with(out, tmp_path / "run", config=with_new_key, ramer_version=written)
    for argv in (
        ["eval", str(run)],
        ["predict", str(run), "--out", str(tmp_path / "p.jsonl")],
        ["export", str(run), "--onnx", str(tmp_path / "m.onnx")],
    ):
        err = refused(argv, capsys)
        assert f"{run / 'model.safetensors'}" in err and says in err, err
    with pytest.raises(RamerError, match=re.escape(says)):
        ramer.load(run)
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "m.onnx").exists()


def test_a_value_a_newer_ramer_allows_names_both_versions(tiny_run, tmp_path, capsys):
    out, _ = tiny_run

    def fp16(tree):
        tree["train"]["precision"] = "fp16"
        return tree

    run = copy_with(out, tmp_path / "run", config=fp16, ramer_version=NEWER)
    err = refused(["eval", str(run)], capsys)
    assert "'train.precision': " in err and f"(written by ramer {NEWER}, newer than this ramer" in err, err


def test_weights_of_a_newer_ramer_are_not_called_an_older_ones(tiny_run, tmp_path, capsys):
    """Weights that do not fit today's layers were always blamed on an older ramer ("must be trained
    again"); a file a newer ramer wrote needs that ramer instead."""
    out, _ = tiny_run
    newer = copy_with(out, tmp_path / "newer", tensors=renamed, ramer_version=NEWER)
    err = refused(["eval", str(newer)], capsys)
    assert "weights do not fit the model (missing " in err and f"written by ramer {NEWER}, newer than this" in err
    assert "trained again" not in err, err
    older = copy_with(out, tmp_path / "older", tensors=renamed, ramer_version="0.0.1")
    err = refused(["eval", str(older)], capsys)
    assert f"must be trained again (written by ramer 0.0.1; this is ramer {ramer.__version__})" in err, err


def test_a_model_file_of_another_format_is_refused(tiny_run, tmp_path, capsys):
    """A newer ramer that changes what a model file means changes its 'format': read as this one's, it
    was scored silently."""
    out, _ = tiny_run
    run = copy_with(out, tmp_path / "run", format="ramer-model-v2", ramer_version=NEWER)
    err = refused(["eval", str(run)], capsys)
    assert f"{run / 'model.safetensors'}: metadata 'format' is 'ramer-model-v2', not 'ramer-model'" in err, err
    assert f"written by ramer {NEWER}" in err


def test_a_training_state_a_newer_ramer_wrote_says_so(tmp_path):
    ckpt.save_train_state(tmp_path / "train_state.pt", {"epoch": 3})
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    torch.save({**state, "ramer_version": NEWER}, tmp_path / "train_state.pt")
    with pytest.raises(RamerError, match=f"it lacks model, .*; written by ramer {NEWER}, newer than this ramer"):
        ckpt.load_train_state(tmp_path / "train_state.pt")


def test_resuming_a_run_whose_best_model_a_newer_ramer_wrote_names_it(stopped_run, tmp_path, capsys):
    run = copy_with(stopped_run, tmp_path / "run", tensors=renamed, ramer_version=NEWER)
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    err = refused(["train", "--resume", str(run)], capsys)
    assert f"{run / 'model.safetensors'}: weights do not fit" in err and f"written by ramer {NEWER}" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name in kept} == kept


def test_resuming_a_training_state_a_newer_ramer_wrote_names_it(stopped_run, tmp_path, capsys):
    """The weights of a newer ramer's training state that do not fit: the line names the version the
    state records, not "no ramer version" and an older ramer."""
    run = copy_with(stopped_run, tmp_path / "run")
    state = torch.load(run / "train_state.pt", weights_only=True)
    torch.save({**state, "model": renamed(state["model"]), "ramer_version": NEWER}, run / "train_state.pt")
    err = refused(["train", "--resume", str(run)], capsys)
    assert f"{run / 'train_state.pt'}: weights do not fit" in err and f"written by ramer {NEWER}, newer" in err, err
    assert "trained again" not in err, err


def test_weights_this_very_version_wrote_are_not_called_an_older_ones(tiny_run, tmp_path, capsys):
    """A model file recording this ramer's version whose weights do not fit was edited, or made by
    another build of the version: not "written by an older ramer (written by this ramer version)"."""
    out, _ = tiny_run
    run = copy_with(out, tmp_path / "run", tensors=renamed)
    err = refused(["eval", str(run)], capsys)
    assert f"written by this ramer version, {ramer.__version__}, so it was changed since" in err, err
    assert "older ramer" not in err, err


def test_resuming_a_newer_ramers_run_whose_config_does_not_read_names_it(stopped_run, tmp_path, capsys):
    """A run folder's config.yaml with a key a newer ramer has (its model file records that ramer):
    ``--resume`` names the versions, as the model file's own config would, and keeps the run."""
    run = copy_with(stopped_run, tmp_path / "run", ramer_version=NEWER)
    (run / "config.yaml").write_text(yaml.safe_dump(with_new_key(yaml.safe_load((run / "config.yaml").read_text()))))
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    err = refused(["train", "--resume", str(run)], capsys)
    assert "unknown key 'model.new_knob'" in err and f"(written by ramer {NEWER}, newer than this ramer" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name in kept} == kept
    same = copy_with(stopped_run, tmp_path / "same")  # this ramer's run: another build's, or edited
    (same / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(RamerError, match=r"unknown key 'model.new_knob'$"):  # the file alone knows no writer
        read_run_config(same / "config.yaml")
    err = refused(["train", "--resume", str(same)], capsys)  # as eval says of the model file's config
    assert "unknown key 'model.new_knob' (written by this ramer version" in err, err
    assert "so by another build of it with other settings, or edited)" in err, err


def test_a_recorded_version_is_read_only_as_one_short_line():
    """What a file records of its writer goes into error lines: a value that is not one short line of
    text (a newline would make a second ``error:`` line) counts as not recorded."""
    assert ckpt.written_by({"ramer_version": "0.2.0", "torch_version": "2.5.1+cpu"}) == {
        "ramer_version": "0.2.0",
        "torch_version": "2.5.1+cpu",
    }
    for bad in ("1.0\nerror: forged", "", "9" * 65, 3, None):
        assert ckpt.written_by({"ramer_version": bad}) == {}
    assert ckpt.written_by(["ramer_version"]) == {}


def an_older_runs(run):
    """Remove ``model.stand_in`` from every config a run folder stores, as a ramer from before the key
    (whose behaviour was ``prototype``, ``config.BEFORE_THE_KEY``) wrote them."""
    tree = yaml.safe_load((run / "config.yaml").read_text())
    del tree["model"]["stand_in"]
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    state = torch.load(run / "train_state.pt", weights_only=True)
    del state["config"]["model"]["stand_in"]
    torch.save(state, run / "train_state.pt")
    path = run / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    stored = json.loads(metadata["config"])
    del stored["model"]["stand_in"]
    save_file(load_file(path), str(path), metadata={**metadata, "config": json.dumps(stored)})


def test_an_older_run_without_a_key_added_since_resumes_as_it_was_made(tmp_path, capsys):
    """A run of an older ramer lacks ``model.stand_in``, whose default has changed since: resumed, it
    goes on with the behaviour it was trained with, whose weights it has, not today's default."""
    cfg = tiny_cfg("ramer", extra=["model.stand_in=prototype", "train.epochs=2"])
    run = tmp_path / "run"
    with pytest.raises(Stop):
        Recipe(cfg, run, bundle=generate(cfg.data.synthetic), hooks=(stop_after(1),)).run()
    an_older_runs(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert ramer.load(run).cfg.model.stand_in == "prototype"
    assert read_run_config(run / "config.yaml").model.stand_in == "prototype"


def test_the_bench_does_not_reuse_an_older_run_made_with_another_behaviour(tmp_path):
    """A cached run whose config lacks a key added since with another default was made with the
    earlier behaviour: stale for today's default, reused where the bench asks for that behaviour."""
    cfg = build_config(overrides=["train.epochs=1"])
    for asked, state in (("prototype", "done"), ("gate", "fresh")):
        run = tmp_path / asked
        run.mkdir()
        stored = cfg.model_dump(mode="json")
        del stored["model"]["stand_in"]
        (run / "config.yaml").write_text(yaml.safe_dump(stored))
        (run / "test_metrics.json").write_text("{}")
        assert bench.cache_state(run, with_values(cfg, {"model.stand_in": asked})) == state


def test_the_bench_keeps_a_newer_ramers_run_it_cannot_reuse(tmp_path):
    """A cached run a newer ramer made, whose config this ramer cannot read (a key it lacks), is
    refused and kept, not removed and trained again without a word."""
    cfg = build_config(overrides=["train.epochs=1"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(with_new_key(cfg.model_dump(mode="json"))))
    (run / "test_metrics.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(run / "model.safetensors"), metadata={"ramer_version": NEWER})
    kept = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RamerError, match=f"{re.escape(str(run))}: a run made by ramer {NEWER}, newer than this"):
        bench.cache_state(run, cfg)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == kept


def test_a_command_says_when_another_ramer_wrote_the_run(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    older = copy_with(out, tmp_path / "older", ramer_version="0.0.9")
    for run, said in (
        (older, f"note: {older}: written by ramer 0.0.9; this is ramer {ramer.__version__}"),
        (out, ""),
    ):
        capsys.readouterr()
        assert main(["eval", str(run)]) == 0
        err = capsys.readouterr().err
        assert (said in err) if said else "written by ramer" not in err, err


def test_a_native_dataset_records_the_ramer_that_wrote_it_and_its_errors_name_it(tmp_path):
    """meta.json records the ramer that wrote it; a native version or a task this ramer does not
    read names that ramer and this one (a folder from before the key asks whether a newer one did)."""
    from test_native_checks import edit_meta, native

    from ramer.data.store import load_native

    d = native(tmp_path)
    assert json.loads((d / "meta.json").read_text())["ramer_version"] == ramer.__version__
    mine = ramer.__version__
    newer = rf"\(written by ramer {NEWER}, newer than this ramer {mine}: read it with ramer {NEWER} or later\)"
    edit_meta(d, version=3, ramer_version=NEWER)
    with pytest.raises(RamerError, match=rf"up to version 2 {newer}"):
        load_native(d)
    edit_meta(d, version=2, task="ranked")
    with pytest.raises(RamerError, match=rf"'task' is .* {newer}"):
        load_native(d)
    edit_meta(d, task="multi_label", version=3, ramer_version=None)  # from before the key: no version
    with pytest.raises(RamerError, match=r"\(the file records no ramer version; this is ramer "):
        load_native(d)
    for odd, kind in (({"major": 1}, "an object"), ("x" * 80, r'a string \("xxx')):  # there, but not a version
        edit_meta(d, ramer_version=odd)
        with pytest.raises(RamerError, match=rf"\(its 'ramer_version' is {kind}.*, not a ramer version; this is "):
            load_native(d)
