"""The training recipe, in named phases: setup -> train (epochs: fit, validate, save) -> test.

- AdamW (no decay on biases / LayerNorm), linear warm-up then linear decay, grad-norm clipping.
- Seeded and deterministic on CPU: the epoch's sample order comes from a generator seeded with
  (seed, epoch); all other randomness from torch's global RNG, whose state is checkpointed.
- After each epoch: scores on validation, decision threshold tuned on validation, best
  checkpoint kept by validation micro-F1. Test runs once, on the best checkpoint.
- Evaluation never shuffles or drops a sample (the count is asserted).
- Files are written by rank 0 only, each atomically.

Run directory: ``config.yaml``, ``model.safetensors`` (best), ``train_state.pt`` (last, for
``--resume``), ``metrics.jsonl`` (one line per epoch, then the test line), ``test_metrics.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from ramer.config import Config, dump_config
from ramer.data import DataBundle, SceneStore, load_bundle
from ramer.errors import RamerError
from ramer.metrics import report, tune_threshold
from ramer.models import DataSpec, build_model
from ramer.train import checkpoint as ckpt
from ramer.train.dist import is_main
from ramer.train.optim import build_optimizer

SPLIT_SALT = {"train": 1, "valid": 2, "test": 3}


@dataclass
class Predictions:
    scores: np.ndarray  # (n, C) probabilities
    labels: np.ndarray  # (n, C) 0/1
    role: np.ndarray  # (n,)
    ids: list[str]


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RamerError(f"train.device is '{name}' but CUDA is not available here; use --set train.device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RamerError(f"train.device: unknown device '{name}'") from None


def apply_missing(bundle: DataBundle, cfg: Config) -> dict[str, SceneStore]:
    """The splits with the config's extra missing rate applied (seeded per split)."""
    rate, at = cfg.data.missing_rate, cfg.data.missing_at
    out = {}
    for name, store in bundle.splits.items():
        hit = rate > 0 and (at == "all" or name == "test")
        out[name] = store.with_missing(rate, cfg.train.seed * 7919 + SPLIT_SALT.get(name, 9)) if hit else store
    return out


@torch.inference_mode()
def predict(model: nn.Module, store: SceneStore, batch_size: int, device: torch.device) -> Predictions:
    """Scores for every scene of ``store``, in order: no shuffle, no drop."""
    was_training = model.training
    model.eval()
    scores = []
    n = len(store)
    for start in range(0, n, batch_size):
        batch = store.collate(np.arange(start, min(n, start + batch_size))).to(device)
        scores.append(model(batch).probs.float().cpu().numpy())
    model.train(was_training)
    out = np.concatenate(scores) if scores else np.zeros((0, len(store.label_names)), dtype=np.float32)
    assert len(out) == n, f"evaluation produced {len(out)} scores for {n} samples"
    return Predictions(out, np.asarray(store.labels), np.asarray(store.role), list(store.ids))


def progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


class Recipe:
    """One training run. ``hooks`` are called as ``hook(recipe, epoch)`` after each saved epoch."""

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        resume: bool = False,
        console: Console | None = None,
        hooks: tuple[Callable[["Recipe", int], None], ...] = (),
        bundle: DataBundle | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.resume = resume
        self.console = console or Console(stderr=True)
        self.hooks = hooks
        self.bundle = bundle

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)
        if self.bundle is None:
            self.bundle = load_bundle(cfg.data)
        for split in ("train", "valid", "test"):
            if split not in self.bundle.splits:
                raise RamerError(f"{self.bundle.source}: no '{split}' split")
        self.splits = apply_missing(self.bundle, cfg)
        self.spec = DataSpec.from_bundle(self.bundle)
        self.model = build_model(cfg, self.spec)
        if hasattr(self.model, "prepare"):
            self.model.prepare(self.splits["train"])
        self.model.to(self.device)
        n_train = len(self.splits["train"])
        per_epoch = -(-n_train // cfg.train.batch_size)
        if cfg.train.max_train_batches:
            per_epoch = min(per_epoch, cfg.train.max_train_batches)
        self.steps_per_epoch = per_epoch
        self.optimizer, self.scheduler = build_optimizer(
            self.model, cfg.train.lr, cfg.train.weight_decay, per_epoch * cfg.train.epochs, cfg.train.warmup
        )
        self.start_epoch = 1
        self.best = {"score": -1.0, "epoch": 0, "threshold": 0.5}
        if self.resume:
            self._load_train_state()
        elif is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            if (self.out / "train_state.pt").exists():
                raise RamerError(f"{self.out} already holds a run; use --resume {self.out} or another --out")
            ckpt.atomic_write_text(self.out / "config.yaml", dump_config(cfg))
            (self.out / "metrics.jsonl").write_text("")

    def _load_train_state(self) -> None:
        state = ckpt.load_train_state(self.out / "train_state.pt")
        ckpt.load_state_into(self.model, state["model"], str(self.out / "train_state.pt"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.best = state["best"]
        self.start_epoch = int(state["epoch"]) + 1
        # Drop log lines of epochs after the checkpoint (written before a kill).
        lines = (self.out / "metrics.jsonl").read_text().splitlines() if (self.out / "metrics.jsonl").exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("epoch", 10**9) < self.start_epoch]
        if is_main():
            ckpt.atomic_write_text(self.out / "metrics.jsonl", "".join(ln + "\n" for ln in kept))

    # ------------------------------------------------------------------ train
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch)
        return torch.randperm(len(self.splits["train"]), generator=g)

    def train_epoch(self, epoch: int, bar: Progress) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        order = self._epoch_order(epoch).numpy()
        bs = cfg.train.batch_size
        sums: dict[str, float] = {}
        task = bar.add_task(f"epoch {epoch}", total=self.steps_per_epoch, info="")
        store = self.splits["train"]
        for step in range(self.steps_per_epoch):
            batch = store.collate(order[step * bs : (step + 1) * bs]).to(self.device)
            out = model(batch)
            loss = model.loss(out, batch)
            if not torch.isfinite(loss.total):
                raise RamerError(f"epoch {epoch} step {step}: loss is not finite ({loss.total.item()}); lower train.lr?")
            self.optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.total.detach())
            for k, v in loss.terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.update(task, advance=1, info=f"loss {sums['loss'] / (step + 1):.4f}")
        bar.remove_task(task)
        return {k: v / self.steps_per_epoch for k, v in sums.items()}

    def validate(self) -> tuple[dict, float | np.ndarray]:
        pred = predict(self.model, self.splits["valid"], self.cfg.train.eval_batch_size, self.device)
        threshold = tune_threshold(pred.labels, pred.scores, per_label=self.cfg.train.per_label_threshold)
        rep = report(pred.labels, pred.scores, threshold, pred.role)
        rep.pop("per_label")
        return rep, threshold

    def train(self) -> None:
        cfg = self.cfg
        epochs = cfg.train.epochs
        with progress(self.console) as bar:
            for epoch in range(self.start_epoch, epochs + 1):
                t0 = time.perf_counter()
                train_terms = self.train_epoch(epoch, bar)
                seconds_train = time.perf_counter() - t0
                valid, threshold = self.validate()
                score = valid["overall"]["micro_f1"]
                improved = score > self.best["score"]
                thr = threshold.tolist() if isinstance(threshold, np.ndarray) else threshold
                if improved:
                    self.best = {"score": score, "epoch": epoch, "threshold": thr}
                    if is_main():
                        ckpt.save_model(self.out / "model.safetensors", self.model, cfg, self.spec, thr, epoch)
                n_seen = min(len(self.splits["train"]), self.steps_per_epoch * cfg.train.batch_size)
                line = {
                    "epoch": epoch,
                    "train": train_terms,
                    "valid": valid,
                    "threshold": thr,
                    "best_epoch": self.best["epoch"],
                    "lr": self.scheduler.get_last_lr()[0],
                    "seconds": time.perf_counter() - t0,
                    "train_samples_per_s": n_seen / max(seconds_train, 1e-9),
                }
                if is_main():
                    self._save_train_state(epoch)
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(line) + "\n")
                self.console.print(
                    f"epoch {epoch}/{epochs}  loss {train_terms['loss']:.4f}  valid micro-F1 {score:.4f}"
                    f" (thr {np.mean(thr):.2f}){'  *best*' if improved else ''}  {line['seconds']:.1f}s",
                    highlight=False,
                )
                for hook in self.hooks:
                    hook(self, epoch)

    def _save_train_state(self, epoch: int) -> None:
        state = {
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "best": self.best,
        }
        ckpt.save_train_state(self.out / "train_state.pt", state)

    # ------------------------------------------------------------------ test
    def test(self) -> dict:
        state, _, _, threshold, epoch = ckpt.read_model_file(self.out / "model.safetensors")
        ckpt.load_state_into(self.model, state, str(self.out / "model.safetensors"))
        pred = predict(self.model, self.splits["test"], self.cfg.train.eval_batch_size, self.device)
        thr = np.asarray(threshold) if isinstance(threshold, list) else threshold
        rep = report(pred.labels, pred.scores, thr, pred.role, self.bundle.label_names)
        per_label = rep.pop("per_label")
        result = {k: rep[k] for k in ("overall", "speaker", "nonspeaker") if k in rep}
        if is_main():
            ckpt.atomic_write_text(self.out / "test_metrics.json", json.dumps(result, indent=1))
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"final": "test", "best_epoch": epoch, "threshold": threshold, "test": result, "per_label": per_label}) + "\n")
        return result

    def run(self) -> dict:
        self.setup()
        self.train()
        return self.test()
