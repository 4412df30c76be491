"""A short RAMer run on the embedded benchmark lowers its loss and beats any constant predictor."""

import json

import numpy as np
import torch

from ramer.config import build_config
from ramer.data.synthetic import generate
from ramer.metrics import multilabel_metrics
from ramer.train.recipe import Recipe

SHORT = [  # the demo's model and recipe on an eighth of the training data, 4 epochs
    "data.synthetic.n_train=500",
    "data.synthetic.n_valid=200",
    "data.synthetic.n_test=300",
    "train.epochs=4",
    "train.batch_size=16",
]


def best_constant_micro_f1(train_labels, test_labels):
    """The best micro-F1 on test of predicting one fixed label set, chosen by train frequency."""
    freq = train_labels.mean(0)
    best = 0.0
    for t in np.unique(freq):
        pred = np.broadcast_to(freq >= t, test_labels.shape).astype(int)
        best = max(best, multilabel_metrics(test_labels, pred)["micro_f1"])
    return best


def test_short_ramer_run_learns(tmp_path):
    cfg = build_config("src/ramer/configs/synthetic.yaml", SHORT)
    bundle = generate(cfg.data.synthetic)
    result = Recipe(cfg, tmp_path / "run", bundle=bundle).run()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    losses = [x["train"]["loss"] for x in lines]
    assert losses[-1] < losses[0]
    assert {"cls", "supcon", "shuffle", "com", "spec", "rec_adv", "pers", "ae", "cross"} <= set(lines[0]["train"])
    constant = best_constant_micro_f1(bundle.splits["train"].labels, bundle.splits["test"].labels)
    assert result["overall"]["micro_f1"] > constant + 0.05, (result["overall"]["micro_f1"], constant)


def test_training_steps_repeat_bit_for_bit_with_two_threads():
    """Seeded training is deterministic on CPU with several intra-op threads, not only with one:
    no gradient is accumulated in a thread-dependent order (advanced indexing with repeated indices
    did this in SupCon and the stack shuffle; both use index_select now)."""
    import torch

    from ramer.models import DataSpec, build_model
    from ramer.train.optim import build_optimizer
    from ramer.train.recipe import training_step

    cfg = build_config(
        "src/ramer/configs/synthetic.yaml",
        ["data.synthetic.n_train=128", "data.synthetic.n_valid=1", "data.synthetic.n_test=1"],
    )
    store = generate(cfg.data.synthetic).splits["train"]
    spec = DataSpec(
        dims=store.dims,
        n_labels=len(store.label_names),
        label_names=store.label_names,
        personality_dim=store.dims["personality"],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        states = []
        for _ in range(2):
            torch.manual_seed(0)
            model = build_model(cfg, spec).train()
            opt, sched = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, 100, 0.1)
            for step in range(4):
                batch = store.collate(np.arange(step * 32, step * 32 + 32))
                training_step(model, model, batch, opt, sched, cfg.train.grad_clip, "fp32")
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    finally:
        torch.set_num_threads(threads)
    differ = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    assert not differ, f"{len(differ)} tensors differ between two identical runs, e.g. {differ[:3]}"


def test_weight_decay_only_on_weight_matrices():
    """Spec §7: no weight decay on biases or LayerNorm; the target-token bonus (M, C) takes it as
    the weight matrices do (docs/MODEL.md decision 3)."""
    from ramer.models import DataSpec, build_model
    from ramer.train.optim import param_groups

    cfg = build_config("src/ramer/configs/synthetic.yaml", [])
    spec = DataSpec(dims={"text": 6, "audio": 5, "visual": 4}, n_labels=3, label_names=("a", "b", "c"))
    model = build_model(cfg, spec)
    decay, no_decay = param_groups(model, 0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): name for name, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(kept) and decayed | kept == set(names.values())
    norms = {
        f"{m}.{n}"
        for m, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm)
        for n in ("weight", "bias")
    }
    biases = {n for n in names.values() if n.endswith(".bias")}
    assert norms and biases and not (norms | biases) & decayed
    assert "labelwise.target_bias" in decayed
    assert all(p.ndim >= 2 for p in decay["params"])
