"""ONNX export: ``ramer export RUN_DIR --onnx OUT.onnx --check`` on a tiny trained run.

The ONNX graph, run by onnxruntime at batch and scene sizes other than the export example's,
gives the probabilities of ``ramer.load(RUN_DIR).predict`` (max abs difference <= 1e-4), on random
grids and on a real collated batch. Without the optional packages the command says how to get them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ramer
from ramer.cli import main
from ramer.errors import RamerError
from ramer.export import ONNX_PACKAGES, missing_onnx_packages, require_onnx
from ramer.models import BUILDERS

needs_onnx = pytest.mark.skipif(
    bool(missing_onnx_packages()),
    reason=f"ONNX export needs the optional packages {', '.join(missing_onnx_packages())} (pip install 'ramer[onnx]')",
)

TINY = [
    "data.synthetic.n_train=48",
    "data.synthetic.n_valid=16",
    "data.synthetic.n_test=24",
    "train.batch_size=16",
    "train.epochs=1",
    "model.hidden=16",
    "model.ffn=16",
    "model.heads=2",
    "model.proj_size=8",
    "model.queue_size=32",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ramer.config import build_config
    from ramer.train.recipe import Recipe

    out = tmp_path_factory.mktemp("export") / "run"
    Recipe(build_config("src/ramer/configs/synthetic.yaml", TINY), out).run()
    return out


def test_missing_packages_give_one_clear_line(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ONNX_PACKAGES else real(name, *a))
    with pytest.raises(RamerError, match=r"pip install 'ramer\[onnx\]'"):
        require_onnx()
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "ramer[onnx]" in err and "Traceback" not in err


@needs_onnx
def test_cli_export_and_check(run, tmp_path, capsys):
    import onnxruntime as ort

    from ramer.api import load, load_data_for
    from ramer.export import EXAMPLE_SHAPE, batch_to_grid

    path = tmp_path / "ramer.onnx"
    assert main(["export", str(run), "--onnx", str(path), "--check"]) == 0
    printed = capsys.readouterr().out
    assert path.is_file() and printed.count("check:") == 2 and "ok" in printed

    # A real batch of the test split (its own grid, not the export example's) through both.
    predictor = load(run)
    store = load_data_for(predictor, None).splits["test"]
    batch = store.collate(np.arange(7))
    assert (batch.size, *batch.grid) != EXAMPLE_SHAPE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    stored = session.get_modelmeta().custom_metadata_map  # the run's own decision, written by the command
    assert json.loads(stored["ramer.threshold"]) == pytest.approx(predictor.threshold)
    feed = batch_to_grid(batch, personality=True)
    assert {i.name for i in session.get_inputs()} == set(feed)
    got = session.run(["probs"], feed)[0]
    ref = predictor.predict(batch)
    assert got.shape == ref.shape == (7, len(predictor.label_names))
    assert np.abs(got - ref).max() <= 1e-4


@needs_onnx
def test_export_without_personality_single_person_scenes(tmp_path):
    """The MOSEI layout: no personality input, one person per scene (checked at P = 1 too)."""
    from ramer.config import LossConfig, ModelConfig
    from ramer.export import CHECK_SHAPES, check_onnx, export_onnx
    from ramer.models.base import DataSpec
    from ramer.models.ramer import RAMer

    torch.manual_seed(0)
    spec = DataSpec(dims={"text": 12, "audio": 6, "visual": 5}, n_labels=4, label_names=("a", "b", "c", "d"))
    model = RAMer(ModelConfig(hidden=16, heads=2, ffn=16, proj_size=8, queue_size=16), LossConfig(), spec).eval()
    model.reconstruction.prototypes.normal_()  # as after training: the hard prototype choice matters
    path = tmp_path / "m.onnx"
    wrapper = export_onnx(model, spec, path)
    assert wrapper.input_names() == ["text", "audio", "visual", "present", "valid", "target"]
    results = check_onnx(wrapper, spec, path)
    assert [r.shape for r in results] == list(CHECK_SHAPES) and any(r.shape[1] == 1 for r in results)
    assert all(r.max_abs_diff <= 1e-4 for r in results)


# RAMer is exported by the tests above; every other deep model of the package by this one, so a change
# that makes one untraceable (a Python branch on a value, an op without an ONNX form) fails here
OTHER_DEEP_MODELS = sorted(set(BUILDERS) - {"ramer"})


@needs_onnx
@pytest.mark.slow
@pytest.mark.parametrize("name", OTHER_DEEP_MODELS)
def test_every_deep_model_exports_and_matches_torch(name, tmp_path):
    from ramer.config import Config, ModelConfig
    from ramer.export import CHECK_SHAPES, check_onnx, export_onnx
    from ramer.models import build_model
    from ramer.models.base import DataSpec

    torch.manual_seed(0)
    spec = DataSpec(
        dims={"text": 12, "audio": 6, "visual": 5}, n_labels=4, label_names=("a", "b", "c", "d"), personality_dim=5
    )
    cfg = Config(model=ModelConfig(name=name, hidden=16, heads=2, ffn=16, proj_size=8, queue_size=16))
    model = build_model(cfg, spec).eval()
    path = tmp_path / f"{name}.onnx"
    wrapper = export_onnx(model, spec, path)
    results = check_onnx(wrapper, spec, path)
    assert [r.shape for r in results] == list(CHECK_SHAPES)
    assert all(r.max_abs_diff <= 1e-4 for r in results)


@needs_onnx
def test_export_refuses_classical_models_and_folders(run, tmp_path, capsys):
    """A scikit-learn baseline has no torch graph: refused before any export; a folder as the
    output file is refused too. One clear line each."""
    sets = sum((["--set", s] for s in TINY), [])
    assert main(["train", "--model", "br", "--out", str(tmp_path / "br"), *sets]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "br"), "--onnx", str(tmp_path / "br.onnx")]) == 2
    err = capsys.readouterr().err
    assert "ONNX export is for the deep models, not 'br'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "br.onnx").exists()
    assert main(["export", str(run), "--onnx", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert main(["export", str(run), "--onnx", str(tmp_path / "model.pt")]) == 2  # a name of another format
    err = capsys.readouterr().err
    assert "ramer export writes an ONNX graph, not a '.pt' file; give a name ending .onnx" in err
    assert not (tmp_path / "model.pt").exists()


@needs_onnx
def test_a_failed_export_leaves_the_earlier_file(run, tmp_path, monkeypatch, capsys):
    """The exporter writes a temporary file that is renamed only when it is done: an export that
    fails part-way leaves the file at --onnx as it was, and no temporary file beside it."""
    earlier = tmp_path / "model.onnx"
    earlier.write_bytes(b"an earlier export")

    def cut_off(model, args, f, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half a graph")
        raise RuntimeError("cut off")

    monkeypatch.setattr(torch.onnx, "export", cut_off)
    assert main(["export", str(run), "--onnx", str(earlier)]) == 2
    err = capsys.readouterr().err
    assert f"ONNX export of {run} failed: cut off" in err and "bf16" not in err  # an fp32 run: no note
    assert earlier.read_bytes() == b"an earlier export" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_ctrl_c_that_the_exporter_wraps_is_an_interrupt(run, tmp_path, monkeypatch, capsys):
    """A Ctrl-C inside the exporter (in a lazy import, say) comes out wrapped in an error of its own:
    the command says "interrupted" and exits 130, not that the model cannot be exported (2)."""
    earlier = tmp_path / "model.onnx"
    earlier.write_bytes(b"an earlier export")

    def wrapped(model, args, f, **kwargs):  # as torch's exporter did, Ctrl-C in a lazy import
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:  # the half-made module's next use: an ordinary error
                raise AttributeError("module 'torch._dynamo' has no attribute 'exc'") from None
        except AttributeError as inner:  # the interrupt is its context, and it the exporter's error's cause
            raise RuntimeError("Failed to export the model with torch.export") from inner

    monkeypatch.setattr(torch.onnx, "export", wrapped)
    assert main(["export", str(run), "--onnx", str(earlier)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "failed" not in err
    assert earlier.read_bytes() == b"an earlier export"


def test_a_bf16_run_is_exported_with_a_note(tmp_path, monkeypatch, capsys):
    """The graph is fp32 and predict scores a bf16-trained run under bf16 autocast: the command
    says so for such a run, and not for an fp32 one."""
    sets = sum((["--set", s] for s in TINY), [])
    assert main(["train", "--out", str(tmp_path / "bf"), *sets, "--set", "train.precision=bf16"]) == 0

    def cut_off(model, args, f, **kwargs):
        raise RuntimeError("cut off")

    monkeypatch.setattr(torch.onnx, "export", cut_off)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "bf"), "--onnx", str(tmp_path / "bf.onnx")]) == 2
    assert "trained with train.precision=bf16" in capsys.readouterr().err


def test_the_exporters_warnings_are_quiet_during_export(caplog):
    """The exporter's logger (a child of torch.onnx) gives its warnings outside ``quiet_log`` only."""
    import logging

    from ramer.export import quiet_log

    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    with quiet_log("torch.onnx"):
        log.warning("torchvision is not installed. Skipping torchvision::nms")
    assert not caplog.records
    log.warning("torchvision is not installed. Skipping torchvision::nms")
    assert [r.getMessage() for r in caplog.records] == ["torchvision is not installed. Skipping torchvision::nms"]


class TraitsReader(torch.nn.Module):
    """A model of another package that reads personality through a part not called `personality`."""

    def __init__(self, spec, reads: bool):
        super().__init__()
        self.reads = reads
        self.text = torch.nn.Linear(spec.dims["text"], spec.n_labels)
        self.trait_proj = torch.nn.Linear(spec.personality_dim, spec.n_labels)

    def forward(self, batch):
        from types import SimpleNamespace

        logits = self.text(batch.features["text"].sum(1))
        if self.reads:
            shown = batch.personality_present.unsqueeze(-1).to(logits.dtype)
            logits = logits + self.trait_proj(batch.personality * shown).sum(1)
        return SimpleNamespace(probs=logits.sigmoid())


def test_personality_inputs_follow_what_the_model_reads():
    """Read off the scores, not off an attribute named `personality`: a model that reads it through
    another part kept no personality input, and its ONNX scores differed from predict by 0.29."""
    from ramer.config import LossConfig, ModelConfig
    from ramer.export import uses_personality
    from ramer.models.base import DataSpec
    from ramer.models.late_fusion import LateFusion
    from ramer.models.ramer import RAMer

    torch.manual_seed(0)
    spec = DataSpec(
        dims={"text": 6, "audio": 4, "visual": 3}, n_labels=3, label_names=("a", "b", "c"), personality_dim=5
    )
    cfg = ModelConfig(hidden=16, heads=2, ffn=16, proj_size=8, queue_size=16)
    assert uses_personality(TraitsReader(spec, reads=True), spec)
    assert not uses_personality(TraitsReader(spec, reads=False), spec)
    assert uses_personality(RAMer(cfg, LossConfig(), spec).eval(), spec)
    assert not uses_personality(LateFusion(cfg, LossConfig(), spec).eval(), spec)  # it reads no personality
    no_traits = DataSpec(dims=spec.dims, n_labels=3, label_names=spec.label_names)
    assert not uses_personality(TraitsReader(spec, reads=True), no_traits)


def tiny_late_fusion(task: str = "multi_label"):
    from ramer.config import LossConfig, ModelConfig
    from ramer.models.base import DataSpec
    from ramer.models.late_fusion import LateFusion

    torch.manual_seed(0)
    dims = {"text": 6, "audio": 4, "visual": 3}
    spec = DataSpec(dims=dims, n_labels=3, label_names=("joy", "fear", "calm"), task=task)
    return LateFusion(ModelConfig(hidden=16, heads=2, ffn=16), LossConfig(), spec).eval(), spec


@needs_onnx
def test_the_file_names_its_labels_and_decision(tmp_path):
    """The output's columns are the run's labels, decided by its threshold: both in the file's
    metadata (the ONNX file alone had neither, so nothing said which column was which label)."""
    import onnx

    from ramer import export

    model, spec = tiny_late_fusion()
    path = tmp_path / "m.onnx"
    export.export_onnx(model, spec, path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["ramer.labels"]) == ["joy", "fear", "calm"] and props["ramer.task"] == "multi_label"
    assert props["ramer.version"] == ramer.__version__
    export.add_metadata(path, spec, threshold=np.array([0.3, 0.4, 0.5]))  # what export_onnx(threshold=) adds
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["ramer.threshold"]) == [0.3, 0.4, 0.5]
    export.add_metadata(path, spec, threshold=np.float32(0.5))  # one number, numpy's (a TypeError in json)
    assert json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["ramer.threshold"]) == 0.5
    _, single = tiny_late_fusion("single_label")
    export.add_metadata(path, single)  # single-label data: the arg-max, without a threshold given
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["ramer.task"] == "single_label" and json.loads(props["ramer.threshold"]) == "argmax"


@needs_onnx
def test_a_model_of_nan_scores_is_refused_before_anything_is_written(tmp_path):
    """NaN weights (a damaged or diverged model): one line, and no file; the graph was written, and
    --check then called it a NaN difference from torch."""
    from ramer.export import export_onnx

    model, spec = tiny_late_fusion()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = tmp_path / "m.onnx"
    with pytest.raises(RamerError, match=r"model LateFusion: its scores are NaN or infinite .*/m\.onnx not written"):
        export_onnx(model, spec, path)
    assert not path.exists()


def test_a_batch_of_several_target_tokens_is_refused_not_scored_as_the_whole_scene():
    """A scene whose scope is marked target tokens (MEmoR's clip protocol) has target -1 in the
    batch: its ONNX inputs were those of a whole-scene sample, and the graph scored the whole scene."""
    from conftest import random_store

    from ramer.export import batch_to_grid

    batch = random_store(n=4, persons=(2, 3), segments=(3, 4)).collate(np.arange(4))
    assert set(batch_to_grid(batch, personality=True)) >= {"target", "valid", "personality"}
    batch.target[1] = -1
    batch.scope[1] = batch.valid[1] & (batch.segment[1] == 0)  # the marked tokens: segment 0 of everyone
    with pytest.raises(RamerError, match=r"scene '.*' \(1 of 4\): its target is several marked tokens"):
        batch_to_grid(batch, personality=True)


def test_a_batch_without_personality_is_refused_for_a_graph_that_takes_it():
    """``personality=True`` (the graph's inputs name it) on data that holds none was an
    AttributeError on None; it is a RamerError saying what is missing. Without it, the grid is built."""
    from conftest import random_store

    from ramer.export import batch_to_grid

    batch = random_store(n=4, personality_dim=None).collate(np.arange(4))
    assert "personality" not in batch_to_grid(batch, personality=False)
    with pytest.raises(RamerError, match=r"the batch has no personality .*which the graph takes"):
        batch_to_grid(batch, personality=True)


@needs_onnx
def test_a_failed_check_leaves_the_earlier_file(run, tmp_path, monkeypatch, capsys):
    """``--check`` runs on the written file before it replaces the one at --onnx: a check that fails
    leaves the earlier file as it was, no temporary beside it, and no ``wrote`` line (the new graph
    had replaced it, and 'wrote' was printed, before the check ran). The exporter and the check are
    stand-ins here (test_cli_export_and_check runs both): what is tested is their order."""
    import ramer.export

    earlier = tmp_path / "model.onnx"
    earlier.write_bytes(b"an earlier export")
    checked = []

    def export(model, args, f, **kwargs):
        Path(f).write_bytes(b"a new graph")

    def check(wrapper, spec, path):
        checked.append(Path(path).read_bytes())  # the written temporary, not the file at --onnx
        raise RamerError("ONNX check at (B, P, S) = (5, 3, 7): max abs difference 0.5 > 0.0001")

    monkeypatch.setattr(torch.onnx, "export", export)
    monkeypatch.setattr(ramer.export, "add_metadata", lambda *args: None)
    monkeypatch.setattr(ramer.export, "check_onnx", check)
    assert main(["export", str(run), "--onnx", str(earlier), "--check"]) == 2
    assert checked == [b"a new graph"]
    assert earlier.read_bytes() == b"an earlier export" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == (
        f"error: ONNX check at (B, P, S) = (5, 3, 7): max abs difference 0.5 > 0.0001; {earlier} not written"
    )


@needs_onnx
def test_a_failed_export_leaves_no_folder_it_made(run, tmp_path, monkeypatch, capsys):
    """The folders made for --onnx are removed again when the export fails; one that was there stays."""

    def cut_off(model, args, f, **kwargs):
        raise RuntimeError("cut off")

    monkeypatch.setattr(torch.onnx, "export", cut_off)
    assert main(["export", str(run), "--onnx", str(tmp_path / "new" / "deeper" / "m.onnx")]) == 2
    assert "failed: cut off" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@needs_onnx
def test_a_model_that_cannot_be_traced_says_why_in_one_line(tmp_path, monkeypatch, capfd, caplog):
    """A forward that branches on a tensor's value cannot be traced: the exporter printed its partial
    graph to stderr (about a hundred lines), and the error line ended on torch's 'Next steps:' without
    the cause. One line after 'exporting', with the cause."""
    from ramer.config import build_config
    from ramer.export import GridModel
    from ramer.train.recipe import Recipe

    out = tmp_path / "run"
    Recipe(build_config("src/ramer/configs/synthetic.yaml", [*TINY, "model.name=late_fusion"]), out).run()
    traced = GridModel.forward

    def branchy(self, text, audio, visual, present, valid, target, personality=None, personality_present=None):
        probs = traced(self, text, audio, visual, present, valid, target, personality, personality_present)
        return probs * 2 if bool((probs > 0.5).any()) else probs  # a Python branch on a value

    monkeypatch.setattr(GridModel, "forward", branchy)
    capfd.readouterr()
    assert main(["export", str(out), "--onnx", str(tmp_path / "m.onnx")]) == 2
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("exporting"), captured.err[:2000]
    assert f"error: ONNX export of {out} failed: Failed to export the model with torch.export" in lines[1]
    assert "ONNX; cause: GuardOnDataDependentSymNode: Could not guard on data-dependent expression" in lines[1]
    assert "Next steps" not in lines[1] and captured.out == ""
    # torch.fx's warning naming the symbol (a line of its own on a terminal; pytest takes it here)
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("torch.fx")]
