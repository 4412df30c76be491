"""CUDA: RAMer trains and predicts with ``train.device=cuda`` in fp32 and under bf16 autocast.

Every test here is skipped on a machine without CUDA; the 2-GPU DDP test needs two devices.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import random_store

from ramer.config import LossConfig, ModelConfig, build_config
from ramer.models.base import DataSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")

DIMS = (16, 8, 12)
C = 5
TINY = [
    "data.synthetic.n_train=96",
    "data.synthetic.n_valid=32",
    "data.synthetic.n_test=40",
    "train.batch_size=32",
    "train.epochs=2",
    "model.hidden=32",
    "model.ffn=32",
    "model.heads=2",
    "model.proj_size=8",
    "model.queue_size=64",
    "train.device=cuda",
]


def tiny_model(seed: int = 0):
    from ramer.models.ramer import RAMer

    spec = DataSpec(
        dims=dict(zip(("text", "audio", "visual"), DIMS)),
        n_labels=C,
        label_names=tuple(f"l{j}" for j in range(C)),
        personality_dim=7,
    )
    torch.manual_seed(seed)
    return RAMer(ModelConfig(hidden=16, heads=2, ffn=16, proj_size=8, queue_size=32), LossConfig(), spec)


def batch(n: int = 6):
    return random_store(n=n, dims=DIMS, n_labels=C, persons=(1, 3), segments=(2, 4), seed=1).collate(list(range(n)))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_step_on_cuda(precision):
    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import training_step

    model = tiny_model().cuda().train()
    opt, sched = build_optimizer(model, 1e-3, 0.01, 10, 0.1)
    b = batch().to("cuda")
    loss = training_step(model, model, b, opt, sched, 1.0, precision)
    assert torch.isfinite(loss.total) and loss.total.device.type == "cuda"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.memory.queue.device.type == "cuda" and (model.memory.queue_classes >= 0).any()


def test_bf16_training_keeps_off_cudnn_attention():
    """cuDNN's attention builds a plan for every new shape (attention.SDPA_BACKENDS); torch picks it
    for bfloat16 on Hopper GPUs, so on others this test cannot tell."""
    from torch.profiler import ProfilerActivity, profile

    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import training_step

    model = tiny_model().cuda().train()
    opt, sched = build_optimizer(model, 1e-3, 0.01, 10, 0.1)
    b = batch().to("cuda")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        training_step(model, model, b, opt, sched, 1.0, "bf16")
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    assert any("scaled_dot_product" in n for n in names)  # the step did go through SDPA
    assert not [n for n in names if "cudnn_attention" in n]


def test_eval_on_cuda_matches_cpu():
    model = tiny_model().eval()
    b = batch()
    with torch.inference_mode():
        cpu = model(b).probs
        gpu = model.cuda()(b.to("cuda")).probs.cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(b.to("cuda")).probs.float().cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)
    assert (half - cpu).abs().max() < 0.05


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_recipe_runs_on_cuda(tmp_path, precision):
    from ramer.api import load
    from ramer.train.recipe import Recipe

    cfg = build_config("src/ramer/configs/synthetic.yaml", TINY + [f"train.precision={precision}"])
    result = Recipe(cfg, tmp_path / "run").run()
    assert 0.0 <= result["overall"]["micro_f1"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x["train"]["loss"]) for x in lines if "epoch" in x)
    predictor = load(tmp_path / "run", device="cuda")
    assert predictor.device.type == "cuda"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpu_ddp_run(tmp_path):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "ramer", "train", "--nproc", "2", "--out", str(tmp_path / "run")]
    for s in TINY:
        argv += ["--set", s]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "test_metrics.json").is_file()
