"""ramer called many times in one long process (a notebook, a service): what one call leaves to the
next, and calls from several threads."""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch
from test_recipe import TINY, tiny_cfg

from ramer import bench
from ramer.cli import main
from ramer.data.synthetic import generate
from ramer.paths import held_elsewhere, hold
from ramer.train.recipe import Recipe

SETS = [x for kv in (*TINY, "train.epochs=1") for x in ("--set", kv)]
pytest.importorskip("fcntl")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_folder_another_thread_holds_is_refused(tmp_path, capsys):
    """The process-wide record of held folders let a second thread into a folder the first held (and
    the first, on leaving, removed the lock while the second wrote): threads are refused as processes."""
    out = tmp_path / "run"
    held, leave = threading.Event(), threading.Event()

    def other_thread():
        with hold(out, "ramer train", make=True):
            held.set()
            leave.wait(60)

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        assert held.wait(60)
        assert "in use by another ramer command (ramer train" in (held_elsewhere(out) or "")
        assert main(["train", "--out", str(out), *SETS]) == 2
        assert "in use by another ramer command (ramer train" in capsys.readouterr().err
        assert not (out / "metrics.jsonl").exists()
    finally:
        leave.set()
        t.join()
    assert held_elsewhere(out) is None  # let go: this thread may now train there
    assert main(["train", "--out", str(out), *SETS]) == 0


def test_runs_in_threads_train_as_they_do_alone(tmp_path):
    """Two runs started together in two threads drew from one random generator for each other: each
    gave another model than alone. They now run one after the other, each as it does alone."""
    cfg = tiny_cfg(extra=["train.epochs=2"])
    bundle = generate(cfg.data.synthetic)
    Recipe(cfg, tmp_path / "alone", bundle=bundle).run()
    threads = [
        threading.Thread(target=lambda name=name: Recipe(cfg, tmp_path / name, bundle=bundle).run()) for name in "ab"
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = digest(tmp_path / "alone" / "model.safetensors")
    assert [digest(tmp_path / name / "model.safetensors") for name in "ab"] == [want, want]


@pytest.mark.parametrize(
    "mode",
    [torch.no_grad, torch.inference_mode, lambda: torch.autocast("cpu", dtype=torch.bfloat16), "float64"],
    ids=["no_grad", "inference_mode", "autocast", "float64"],
)
def test_the_callers_torch_modes_do_not_reach_a_run(tmp_path, mode):
    """A notebook that left gradients off, inference mode, autocast or float64 on: the run crashed
    with a traceback; it now trains as it does without them, and the caller's mode stays."""
    assert main(["train", "--out", str(tmp_path / "plain"), *SETS]) == 0
    if mode == "float64":
        torch.set_default_dtype(torch.float64)
        try:
            assert main(["train", "--out", str(tmp_path / "run"), *SETS]) == 0
            assert torch.get_default_dtype() == torch.float64
        finally:
            torch.set_default_dtype(torch.float32)
    else:
        with mode():
            assert main(["train", "--out", str(tmp_path / "run"), *SETS]) == 0
    assert digest(tmp_path / "run" / "model.safetensors") == digest(tmp_path / "plain" / "model.safetensors")


def test_counting_a_models_parameters_leaves_the_callers_random_state(tmp_path):
    """The bench counts each model's parameters by building it once; the build's initial weights drew
    from the caller's generator (a notebook's later draws depended on whether a bench ran before)."""
    assert main(["train", "--model", "late_fusion", "--out", str(tmp_path / "run"), *SETS]) == 0
    bench._deep_parameter_count.cache_clear()
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    assert bench.parameter_count(tmp_path / "run") > 0
    assert torch.equal(torch.rand(3), want)
