"""Every script in benchmarks/ runs, at its smallest setting, and prints what benchmarks/README.md says
it prints. Figures are not checked: speed is measured by the scripts, never asserted in tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_store

from ramer.data import DataBundle
from ramer.metrics import multilabel_metrics

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TINY_DATA = ["data.synthetic.n_train=64", "data.synthetic.n_valid=32", "data.synthetic.n_test=32"]


def run(script: str, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def sets(*assignments: str) -> list[str]:
    return [a for kv in assignments for a in ("--set", kv)]


def test_every_script_has_a_smoke_test():
    scripts = {p.name for p in BENCH.glob("*.py")}
    tested = {name.removeprefix("test_").replace("_runs", "") + ".py" for name in globals() if name.endswith("_runs")}
    assert scripts == tested


def test_throughput_runs():
    out = run(
        "throughput.py", "--settings", "synthetic", "--modes", "train,infer", "--steps", "1", "--warmup", "0",
        "--infer-steps", "1", "--threads", "1",
    )  # fmt: skip
    assert "samples/s" in out and "synthetic" in out


def test_ab_trees_runs():
    one_tree = ["ab_trees.py", "--old", "src", "--setting", "synthetic", "--rounds", "2", "--threads", "1"]
    out = run(*one_tree)
    assert "median A/B" in out and "largest |A - B|" in out
    # two settings of one tree: the override reaches side B alone (another dropout, other losses) ...
    out = run(*one_tree, "--set-b", "model.dropout=0.5")
    assert "largest |A - B| of the loss of each step: 0\n" not in out, out
    # ... and recomputing the encoders' layers trains the same to the bit
    out = run(*one_tree, "--set-b", "train.recompute=true")
    assert "largest |A - B| of the loss of each step: 0\n" in out, out


def test_profile_step_runs():
    out = run("profile_step.py", "--setting", "synthetic", "--warmup", "0", "--top", "3", "--threads", "1")
    assert "Self CPU" in out
    out = run("profile_step.py", "--setting", "synthetic", "--warmup", "0", "--mode", "infer", "--flops")
    assert "GFLOP per step" in out


def test_cuda_train_runs():
    out = run("cuda_train.py", "--device", "cpu", "--scenes", "64", "--epochs", "1", "--variants", "fp32:default")
    assert '"samples_per_s"' in out and "fp32:default" in out


def test_ema_cost_runs():
    out = run("ema_cost.py", "--steps", "1", "--warmup", "0", "--threads", "1")
    assert "average update" in out and "% of the step" in out


def test_epoch_overhead_runs():
    out = run("epoch_overhead.py", "--quick", "--epochs", "1")
    assert "ramer: 1 epoch of" in out and "late_fusion: 1 epoch of" in out
    assert "valid forward" in out and "outside step" in out and "fingerprint" in out
    out = run("epoch_overhead.py", "--quick", "--old", "src", "--models", "late_fusion", "--rounds", "2",
              "--valid-rounds", "2")  # fmt: skip
    assert "median A/B" in out and "largest |A - B| of the loss of each step: 0;" in out


def test_scaling_runs():
    out = run("scaling.py", "--persons", "1,2", "--segments", "4", "--batch", "2", "--steps", "1", "--threads", "1")
    assert "train ms/scene" in out


def test_attention_blocks_runs(tmp_path):
    run_dir = tmp_path / "run"
    train = [sys.executable, "-m", "ramer", "train", "--model", "mult", "--out", str(run_dir)]
    train += sets(*TINY_DATA, "train.epochs=1", "model.hidden=16", "model.ffn=32", "model.heads=2")
    assert subprocess.run(train, cwd=ROOT, capture_output=True).returncode == 0
    out = run("attention_blocks.py", str(run_dir), "--repeats", "1", "--batch-size", "8")
    assert "one pass" in out and "blocks" in out and "scores equal: True" in out


def test_mosei_convert_runs():
    out = run("mosei_convert.py", "--scale", "0.001")
    assert "convert" in out and "iterate" in out


def test_learning_speed_runs(tmp_path):
    out = run(
        "learning_speed.py", "--out", str(tmp_path / "speed"), "--variant", "ramer=", "--jobs", "1",
        *sets(*TINY_DATA, "train.epochs=1"),
    )  # fmt: skip
    assert "| ramer |" in out and (tmp_path / "speed").is_dir()


def test_term_gradients_runs():
    out = run("term_gradients.py", "--steps", "0,1", *sets(*TINY_DATA))
    assert "cls" in out


def test_prototype_rule_runs():
    out = run("prototype_rule.py", "--steps", "2", *sets(*TINY_DATA))
    lines = out.splitlines()
    assert lines[0].startswith("ramer: 2 steps") and "by the distance" not in lines[0]
    assert lines[1].startswith("ramer-authors: 2 steps") and "by the distance" in lines[1]


def test_prototype_rule_on_a_run_scores_it_both_ways(tmp_path):
    from ramer.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "--out", str(run_dir), *sets(*TINY_DATA, "train.epochs=1")]) == 0
    out = run("prototype_rule.py", "--run", str(run_dir))
    assert out.startswith(f"{run_dir} [valid]: the training mix decoded at evaluation moves probabilities")
    assert "decisions changed" in out and "of 288" in out  # 32 valid scenes x 9 labels


def test_synthetic_signal_runs():
    out = run("synthetic_signal.py", "--seeds", "0", *sets(*TINY_DATA))
    assert "| 0 | + both |" in out and "mean gain over 'token'" in out


def test_synthetic_signal_blocks_are_the_target_persons_and_its_neighbours():
    """The feature blocks of `synthetic_signal.py`: the target token's row, the target person's
    personality, and the speaker of the target's segment with the target one segment before."""
    sys.path.insert(0, str(BENCH))
    try:
        from synthetic_signal import blocks
    finally:
        sys.path.remove(str(BENCH))
    from ramer.config import SynthConfig
    from ramer.data.synthetic import generate

    store = generate(SynthConfig(n_train=8, n_valid=4, n_test=4)).splits["train"]
    got = blocks(store)
    d_text, d_audio = store.text.shape[1], store.audio.shape[1]
    for i in range(len(store)):
        (p, s), (_, S) = store.target[i], store.grid[i]
        row = store.token_offsets[i] + p * S + s
        np.testing.assert_array_equal(got["token"][i][:d_text], store.text[row])
        np.testing.assert_array_equal(got["personality"][i], store.personality[store.person_offsets[i] + p])
        speaker = [
            q for q in range(store.grid[i][0]) if q != p and store.present[store.token_offsets[i] + q * S + s, 0]
        ]
        spoken = got["context"][i][:d_text]
        want = store.text[store.token_offsets[i] + speaker[0] * S + s] if speaker else np.zeros(d_text)
        np.testing.assert_array_equal(spoken, want)
        if s > 0:
            before = got["context"][i][d_text + d_audio : 2 * d_text + d_audio]
            np.testing.assert_array_equal(before, store.text[row - 1])


def test_target_utterance_lr_runs(tmp_path):
    stores = {}
    for k, split in enumerate(("train", "valid", "test")):
        store = random_store(n=30, n_labels=3, seed=k)
        one = np.random.default_rng(k).integers(0, 3, len(store))
        store.labels[:] = np.eye(3, dtype=store.labels.dtype)[one]  # one label per sample
        stores[split] = store
    DataBundle(stores, stores["train"].label_names, "test", "mem", task="single_label").save(tmp_path / "d")
    out = run("target_utterance_lr.py", str(tmp_path / "d"))
    assert "chosen on valid" in out
    assert "chosen on valid" in run("target_utterance_lr.py", str(tmp_path / "d"), "--context", "1")


def test_target_utterance_lr_context_reads_the_neighbouring_utterances():
    """`--context 1` adds the utterance just before the target and the one just after it: a label planted
    in the text of the token before the target is read back from the second block, not the third."""
    sys.path.insert(0, str(BENCH))
    try:
        from target_utterance_lr import target_text
    finally:
        sys.path.remove(str(BENCH))
    store = random_store(n=20, n_labels=3, segments=(3, 3), seed=0)
    gold = np.random.default_rng(1).integers(0, 3, len(store))
    store.labels[:] = np.eye(3, dtype=store.labels.dtype)[gold]
    for i, c in enumerate(gold):
        persons, tokens = store.grid[i].tolist()
        store.target[i] = (i % persons, 1)
        before = store.token_offsets[i] + np.arange(persons) * tokens  # token 0 of each person
        spoken = before[store.present[before, 0]]
        store.text[spoken, :3] = 0.0
        store.text[spoken, c] = 5.0
    text, labels = target_text(store, context=1)
    d = store.text.shape[1]
    assert text.shape == (len(store), 3 * d) and (labels == gold).all()
    assert (text[:, d : d + 3].argmax(1) == gold).all()
    assert not (text[:, 2 * d : 2 * d + 3].argmax(1) == gold).all()


def _planted(labels: np.ndarray, seed: int):
    """A single-label store of ``len(labels)`` scenes, 3 labels, whose target utterance's text holds
    its label (5.0 in that column, 0 elsewhere): a linear model separates it perfectly."""
    store = random_store(n=len(labels), n_labels=3, segments=(2, 3), seed=seed)
    store.labels[:] = np.eye(3, dtype=store.labels.dtype)[labels]
    for i, c in enumerate(labels):
        persons, tokens = store.grid[i].tolist()
        first = store.token_offsets[i] + np.arange(persons) * tokens  # token 0 of each person
        speaker = int(np.flatnonzero(store.present[first, 0])[0])  # the one who speaks at token 0
        store.target[i] = (speaker, 0)
        store.text[first[speaker]] = 0.0
        store.text[first[speaker], c] = 5.0
    return store


def test_target_utterance_lr_macro_f1_counts_every_label_as_ramer_metrics_does(tmp_path):
    """docs/RESULTS.md sets the script's test macro F1 beside RAMer's (``metrics.macro_f1``: the mean
    over every label, 0 for one neither true nor predicted). On a test split without the third label,
    perfect decisions score 2/3 there; scikit-learn's default averages over the labels present, 1."""
    train, valid = (np.arange(30) % 3 for _ in range(2))
    test = np.arange(20) % 2  # label 2 never occurs in test
    stores = {s: _planted(y, k) for k, (s, y) in enumerate((("train", train), ("valid", valid), ("test", test)))}
    DataBundle(stores, stores["train"].label_names, "test", "mem", task="single_label").save(tmp_path / "d")
    line = run("target_utterance_lr.py", str(tmp_path / "d")).strip().splitlines()[-1]
    onehot = np.eye(3, dtype=np.int64)[test]
    expected = multilabel_metrics(onehot, onehot)  # the perfect decisions the planted features give
    assert "accuracy 1.0000" in line, line
    assert f"weighted F1 {expected['weighted_f1']:.4f}" in line, line
    assert f"macro F1 {expected['macro_f1']:.4f}" in line, line


def test_paired_bootstrap_runs(tmp_path):
    """A group that predicts the gold label beats one that predicts another in every resample; a file
    that lacks a sample of the split is an error naming it."""
    store = random_store(n=40, n_labels=3, seed=0)
    gold = np.random.default_rng(0).integers(0, 3, len(store))
    store.labels[:] = np.eye(3, dtype=store.labels.dtype)[gold]
    DataBundle({"test": store}, store.label_names, "test", "mem", task="single_label").save(tmp_path / "d")
    names = store.label_names

    def write(path, chosen):
        lines = [
            json.dumps({"id": i, "probs": {n: 1.0 / 3 for n in names}, "labels": [names[c]]})
            for i, c in zip(store.ids, chosen)
        ]
        path.write_text("\n".join(lines) + "\n")

    write(tmp_path / "right.jsonl", gold)
    write(tmp_path / "wrong.jsonl", (gold + 1) % 3)
    # Resampled by conversation (the default): ids CONVERSATION/INDEX, four samples each.
    store.ids = [f"c{k // 4}/{k % 4}" for k in range(len(store))]
    DataBundle({"test": store}, names, "test", "mem", task="single_label").save(tmp_path / "conv")
    write(tmp_path / "conv_right.jsonl", gold)
    write(tmp_path / "conv_wrong.jsonl", (gold + 1) % 3)
    pair = ["--a", str(tmp_path / "conv_right.jsonl"), "--b", str(tmp_path / "conv_wrong.jsonl")]
    out = run("paired_bootstrap.py", str(tmp_path / "conv"), "--resamples", "20", *pair)
    assert "40 samples in 10 conversations" in out and "share of resamples with A >= B: 1.000" in out
    store.ids = [f"s{k}" for k in range(len(store))]
    args = [str(tmp_path / "d"), "--unit", "sample", "--resamples", "50", "--above", "0.99"]
    out = run("paired_bootstrap.py", *args, "--a", str(tmp_path / "right.jsonl"), "--b", str(tmp_path / "wrong.jsonl"))
    assert "right.jsonl: 1.0000" in out and "wrong.jsonl: 0.0000" in out
    assert "share of resamples with A >= B: 1.000" in out and "A's mean >= 0.99: 1.000" in out
    (tmp_path / "short.jsonl").write_text("\n".join((tmp_path / "right.jsonl").read_text().splitlines()[:-1]))
    proc = subprocess.run(
        [sys.executable, str(BENCH / "paired_bootstrap.py"), *args, "--a", str(tmp_path / "short.jsonl")]
        + ["--b", str(tmp_path / "wrong.jsonl")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and f"{tmp_path / 'short.jsonl'}: no prediction for 1 of the split's 40" in proc.stderr


def test_authors_parts_runs(tmp_path):
    out = run("authors_parts.py", "--part", "scaled_attention", "--out", str(tmp_path / "run"),
              *sets(*TINY_DATA, "train.epochs=1", "train.patience=null"))  # fmt: skip
    assert out.strip().splitlines()[-1].startswith("scaled_attention: valid micro-F1 ")


def test_param_counts_runs():
    out = run("param_counts.py", "--configs", "synthetic", "--models", "late_fusion,mult")
    assert "| late_fusion |" in out and "| mult |" in out and " M |" in out


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_every_script_is_in_the_readme(script):
    assert f"`{script}`" in (BENCH / "README.md").read_text()


def test_target_located_runs():
    """The figures of docs/MODEL.md, "Which models can locate a silent, unseen target": late fusion
    reads no position of a target with no modality, MulT does."""
    out = run("target_located.py", "--rates", "0", "--models", "late_fusion,mult")
    assert "| 0 | 489 | 153 | 31.3% |" in out and "| late_fusion | 0.00e+00 |" in out
    mult = next(line for line in out.splitlines() if line.startswith("| mult |"))
    assert float(mult.split("|")[2]) > 1e-3, out
