"""Where an epoch's wall time goes outside the optimiser step: a real training run (``Recipe``, as
``ramer train`` runs it) with timers around its parts.

The parts, each timed by its own time (a part inside another is not counted twice):

- ``train step``: ``recipe.training_step`` (forward, loss, backward, clipping, AdamW);
- ``train collate``: ``SceneStore.collate`` of the training batches; ``train loop``: the rest of
  ``Recipe.train_epoch`` (moving the batch, the loss terms read back, the progress bar);
- ``valid forward``: ``infer.predict`` on validation without its collate; ``valid collate``;
- ``threshold``: ``metrics.choose_threshold``; ``metrics``: ``metrics.report`` on validation;
- ``save model``: ``checkpoint.save_model`` (the best epoch's ``model.safetensors``);
- ``train state``: ``Recipe._save_train_state`` (gathering the state, ``torch.save``, fsync);
- ``epoch other``: the rest of ``Recipe.train`` (the log line, the console, the weight swap);

and, once per run, ``setup`` (loading and checking the data, building the model) with
``fingerprint`` (``SceneStore.fingerprint``, the hash of each split that the run records), and
``test`` (the test split scored on the best checkpoint, its metrics and files).

Each model (``--models``) trains ``--epochs`` epochs in a fresh run folder under a temporary one, on
``configs/synthetic.yaml`` (``--set`` overrides it; ``--data PATH`` trains on a dataset folder, such
as an import of EmoryNLP). ``--quick``: tiny data and model, for the smoke test. Prints one table
per model: seconds per epoch of each part and its share of the epoch, then the once-per-run parts.

``--old SRC`` compares two source trees instead (``git worktree add /tmp/old REV``, then ``--old
/tmp/old/src``), in one process as ``ab_trees.py`` does: each tree loads the data and builds the
model from the same seed, then per round both collate the same training batch and take the training
step on it (timed together, so that what a collate leaves the step to do is counted), the trees
alternating (A B, then B A, ...); then both score the whole validation split (``infer.predict``,
collate included), alternating. Prints samples/s of each, the median ratio of paired times (A / B:
above 1, the new tree is faster) and the largest difference of the losses and of the validation
scores (0: the same to the bit).

Usage: ``python benchmarks/epoch_overhead.py [--models ramer,late_fusion] [--epochs 2] [--data PATH]
[--threads 1] [--set key=value ...] [--quick] [--old SRC [--rounds 20] [--valid-rounds 6]]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (docs/PERFORMANCE.md)

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "data.synthetic.n_train=48", "data.synthetic.n_valid=24", "data.synthetic.n_test=24", "model.hidden=16",
    "model.ffn=32", "model.heads=2", "train.batch_size=16",
]  # fmt: skip
EPOCH_PARTS = (
    "train step",
    "train collate",
    "train loop",
    "valid forward",
    "valid collate",
    "threshold",
    "metrics",
    "save model",
    "train state",
    "epoch other",
)
RUN_PARTS = ("setup", "fingerprint", "test")


class Timers:
    """Self time per part: a timed call inside another is taken out of the outer one's time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list] = []  # [part, seconds of the timed calls inside it]
        self.undo: list = []

    def wrap(self, owner, name: str, part) -> None:
        """Time ``owner.name``; ``part`` is the part's name, or a function of the enclosing part's."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            label = part(self.stack[-1][0] if self.stack else None) if callable(part) else part
            self.stack.append([label, 0.0])
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                took = time.perf_counter() - t0
                inner = self.stack.pop()[1]
                self.seconds[label] += took - inner
                self.calls[label] += 1
                if self.stack:
                    self.stack[-1][1] += took

        setattr(owner, name, timed)
        self.undo.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)
        self.undo.clear()


# The part a collate is counted in, by the part it runs in (anything else: ``epoch other``).
COLLATE_IN = {
    "train loop": "train collate",
    "valid other": "valid collate",
    "valid forward": "valid collate",
    "test": "test",
    "setup": "setup",
}


def timed_run(cfg, out: Path) -> tuple[Timers, float, int]:
    """Train ``cfg`` into ``out`` with the timers in place; (timers, seconds of ``Recipe.train``, epochs)."""
    from rich.console import Console

    from ramer import checkpoint
    from ramer.data.store import SceneStore
    from ramer.train import recipe

    t = Timers()
    in_test = lambda name: lambda enclosing: "test" if enclosing == "test" else name  # noqa: E731
    t.wrap(recipe.Recipe, "setup", "setup")
    t.wrap(recipe.Recipe, "train", "epoch other")
    t.wrap(recipe.Recipe, "train_epoch", "train loop")
    t.wrap(recipe, "training_step", "train step")
    t.wrap(recipe.Recipe, "validate", "valid other")
    t.wrap(recipe, "predict", in_test("valid forward"))
    t.wrap(SceneStore, "collate", lambda enclosing: COLLATE_IN.get(enclosing, "epoch other"))
    t.wrap(recipe, "choose_threshold", "threshold")
    t.wrap(recipe, "report", in_test("metrics"))
    t.wrap(checkpoint, "save_model", "save model")
    t.wrap(recipe.Recipe, "_save_train_state", "train state")
    t.wrap(SceneStore, "fingerprint", "fingerprint")
    t.wrap(recipe.Recipe, "test", "test")
    try:
        run = recipe.Recipe(cfg, out, console=Console(quiet=True))
        run.run()
    finally:
        t.restore()
    t.seconds["valid forward"] += t.seconds.pop("valid other", 0.0)
    train_s = sum(t.seconds[p] for p in EPOCH_PARTS)
    return t, train_s, run.epochs_run


def table(model: str, t: Timers, train_s: float, epochs: int, steps: int) -> list[str]:
    lines = [f"{model}: {epochs} epoch{'s' * (epochs != 1)} of {steps} steps, {train_s / epochs:.2f} s per epoch"]
    for part in EPOCH_PARTS:
        s = t.seconds.get(part, 0.0)
        lines.append(f"  {part:<14} {s / epochs:8.3f} s/epoch  {100 * s / train_s:5.1f} %")
    outside = train_s - t.seconds.get("train step", 0.0)
    lines.append(f"  {'outside step':<14} {outside / epochs:8.3f} s/epoch  {100 * outside / train_s:5.1f} %")
    once = ", ".join(f"{part} {t.seconds.get(part, 0.0):.2f} s" for part in RUN_PARTS)
    lines.append(f"  once per run: {once} (fingerprint calls {t.calls.get('fingerprint', 0)})")
    return lines


def load_tree(src: Path, cfg_args: list[str], model: str):
    """Import ramer from ``src`` (``ab_trees.import_tree``), load the data and build ``model`` as a
    run does (seeded); returns (train store, step, score, batch size, validation scenes)."""
    from ab_trees import import_tree

    import_tree(src)
    from ramer.config import build_config
    from ramer.data import load_bundle
    from ramer.data.store import resolve_task
    from ramer.infer import predict
    from ramer.models import DataSpec, build_model
    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import training_step

    cfg = build_config(ROOT / "configs" / "synthetic.yaml", [f"model.name={model}", *cfg_args])
    bundle = load_bundle(cfg.data)
    spec = DataSpec.from_bundle(bundle, resolve_task(bundle, cfg.data.task))
    torch.manual_seed(cfg.train.seed)
    net = build_model(cfg, spec)
    train, valid = bundle.splits["train"], bundle.splits["valid"]
    if hasattr(net, "prepare"):
        net.prepare(train)
    opt, sched = build_optimizer(net, cfg.train.lr, cfg.train.weight_decay, 10_000, cfg.train.warmup)
    t = cfg.train

    def step(indices):
        net.train()
        loss = training_step(net, net, train.collate(indices), opt, sched, t.grad_clip, t.precision)
        return float(loss.total.detach())

    def score():
        return predict(net, valid, t.eval_batch_size, torch.device("cpu"), t.precision).scores

    return train, step, score, t.batch_size, len(valid)


def paired(args, cfg_args: list[str]) -> None:
    """``--old``: collate + training step, then the validation pass, of two trees alternating."""
    import numpy as np
    from throughput import paired_rounds, paired_summary

    for model in args.models.split(","):
        trees = {"A": load_tree(args.old, cfg_args, model), "B": load_tree(ROOT / "src", cfg_args, model)}
        n, bs, n_valid = len(trees["A"][0]), trees["A"][3], trees["A"][4]
        order = np.random.default_rng(0).permutation(n)
        pick = lambda r: order[(r * bs) % max(n - bs + 1, 1) :][:bs]  # noqa: E731

        def prepare(r):
            torch.manual_seed(1000 + r)  # both trees draw the same randomness in round r
            return pick(r)

        for i, name in enumerate("AABB"):  # warm-up
            torch.manual_seed(i % 2)
            trees[name][1](pick(i % 2))
        runs = {name: (prepare, tree[1]) for name, tree in trees.items()}
        times, losses = paired_rounds(runs, args.rounds)
        runs = {name: (lambda r: None, lambda _, tree=tree: tree[2]()) for name, tree in trees.items()}
        valid_times, scores = paired_rounds(runs, args.valid_rounds)
        for what, t, size in (("collate + train step", times, bs), ("validation pass", valid_times, n_valid)):
            print(f"{model}, {what}, {len(t['A'])} rounds: {paired_summary(t, size)}")
        loss_diff = max(abs(a - b) for a, b in zip(losses["A"], losses["B"]))
        score_diff = max(float(np.abs(a - b).max()) for a, b in zip(scores["A"], scores["B"]))
        print(
            f"{model}: largest |A - B| of the loss of each step: {loss_diff:.3g}; of the validation scores: "
            f"{score_diff:.3g}",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="ramer,late_fusion")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data", default=None, help="a dataset folder (default: the embedded benchmark)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny data and model (the smoke test)")
    p.add_argument("--old", type=Path, default=None, help="the src folder of a tree to pair this one with")
    p.add_argument("--rounds", type=int, default=20, help="with --old: paired training steps")
    p.add_argument("--valid-rounds", type=int, default=6, help="with --old: paired validation passes")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    sets = [*(QUICK if args.quick else []), f"train.epochs={args.epochs}", "train.patience=null"]
    sets += [f"train.threads={args.threads}", *([f"data.path={args.data}"] if args.data else []), *args.set]
    print(f"threads {args.threads}, load {os.getloadavg()[0]:.2f}, data {args.data or 'the embedded benchmark'}")
    if args.old is not None:
        return paired(args, sets)
    with tempfile.TemporaryDirectory(prefix="epoch_overhead.") as tmp:
        from ramer.config import build_config

        for model in args.models.split(","):
            cfg = build_config(ROOT / "configs" / "synthetic.yaml", [f"model.name={model}", *sets])
            t, train_s, epochs = timed_run(cfg, Path(tmp) / model)
            steps = t.calls.get("train step", 0) // max(epochs, 1)
            print("\n".join(table(model, t, train_s, epochs, steps)), flush=True)


if __name__ == "__main__":
    main()
