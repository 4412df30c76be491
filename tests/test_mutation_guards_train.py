"""Guards from hand mutation testing (round 5) of the training loop, the process-group helpers, the
embedded benchmark's generator, the Python API and the data commands: each case fails under a small
change of behaviour the rest of the suite did not notice (named in its docstring)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from rich.console import Console
from test_recipe import Stop, die_before_saving_state, epoch_lines, scripted_scores, tiny_cfg

from ramer import checkpoint as ckpt
from ramer.config import SynthConfig
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.models.base import LossResult
from ramer.train import recipe as recipe_mod
from ramer.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle():
    return generate(tiny_cfg().data.synthetic)


# ---------------------------------------------------------------------- the training step and epoch


class _Linear(torch.nn.Module):
    """A model whose loss is ``w . x``: its gradient is ``x`` whatever ``w`` is."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))

    def forward(self, batch):
        return SimpleNamespace(x=batch.x)

    def loss(self, out, batch) -> LossResult:
        total = (self.w * out.x).sum()
        return LossResult(total, {"linear": total.detach()})


def test_each_training_step_starts_from_zero_gradients():
    """Two steps of plain SGD at lr 1 on a loss of constant gradient ``x`` move the weights by
    ``-x`` each: a step's gradient is its own batch's, not added to the last step's. (The
    ``optimizer.zero_grad`` in recipe.training_step removed: the second step moves by ``-2x``.)"""
    model = _Linear()
    batch = SimpleNamespace(x=torch.tensor([1.0, 2.0, 3.0]), labels=torch.zeros(1))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(2):
        recipe_mod.training_step(model, model, batch, opt, None, grad_clip=1e9)
    assert model.w.detach().tolist() == [-2.0, -4.0, -6.0]


def test_an_epoch_takes_every_sample_in_whole_batches_and_logs_the_mean_step_loss(tmp_path, monkeypatch):
    """70 training samples at batch 32 are 3 steps (the last one short), and the epoch line's loss and
    loss terms are the means over those steps. (The step count rounded down in Recipe.setup; the sums
    not divided by the step count, or a term's last value logged, in Recipe.train_epoch.)"""
    cfg = tiny_cfg(extra=["data.synthetic.n_train=70", "train.epochs=1"])
    data = generate(cfg.data.synthetic)
    losses, terms, seen = [], [], []
    real_step = recipe_mod.training_step

    def step(forward, model, batch, *args):
        seen.extend(batch.ids)
        loss = real_step(forward, model, batch, *args)
        losses.append(float(loss.total.detach()))
        terms.append({k: float(v) for k, v in loss.terms.items()})
        return loss

    monkeypatch.setattr(recipe_mod, "training_step", step)
    Recipe(cfg, tmp_path / "run", bundle=data).run()
    (line,) = epoch_lines(tmp_path / "run")
    assert sorted(seen) == sorted(data.splits["train"].ids) and len(losses) == line["step"] == 3
    assert line["train"]["loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    assert terms[0] and all(line["train"][k] == pytest.approx(np.mean([t[k] for t in terms])) for k in terms[0])


def test_samples_per_second_counts_the_samples_of_the_steps_taken(tmp_path, bundle, monkeypatch):
    """``train_samples_per_s`` is the samples the epoch's steps read over its training seconds: 2
    steps of 32 (``train.max_train_batches=2``) in 4 s of a stand-in clock are 16 a second, not
    the whole split's 160 / 4. (``n_seen`` taken as the split's size in Recipe.train.)"""
    clock = {"now": 0.0}
    monkeypatch.setattr(recipe_mod, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    real_epoch = Recipe.train_epoch

    def train_epoch(self, epoch, bar):  # the epoch's training takes 4 s
        out = real_epoch(self, epoch, bar)
        clock["now"] += 4.0
        return out

    monkeypatch.setattr(Recipe, "train_epoch", train_epoch)
    Recipe(tiny_cfg(extra=["train.epochs=1", "train.max_train_batches=2"]), tmp_path / "run", bundle=bundle).run()
    (line,) = epoch_lines(tmp_path / "run")
    assert (line["step"], line["train_samples_per_s"]) == (2, 16.0)


def test_the_epoch_order_depends_on_the_seed():
    """Each epoch's sample order is drawn from ``train.seed`` and the epoch: two seeds give two
    orders. (The seed dropped from Recipe._epoch_order's generator: every seed trained on the same
    orders.)"""

    def order(seed, epoch):
        recipe = SimpleNamespace(cfg=tiny_cfg(extra=[f"train.seed={seed}"]), splits={"train": range(50)})
        return Recipe._epoch_order(recipe, epoch).tolist()

    assert order(0, 1) != order(1, 1) and order(0, 1) != order(0, 2) and order(0, 1) == order(0, 1)


def test_the_initial_weights_come_from_train_seed_not_the_process_state(tmp_path, bundle):
    """A run's initial weights are drawn from ``train.seed``: the same whatever the process drew
    before, another with another seed. (``torch.manual_seed(cfg.train.seed)`` removed from
    Recipe.setup: two runs in one process still agreed, each starting from the same forked state,
    but the weights followed the process's state, not the seed.)"""

    def weights(seed: int, before: int) -> list[torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(before)
            recipe = Recipe(tiny_cfg(extra=[f"train.seed={seed}"]), tmp_path / f"r{seed}-{before}", bundle=bundle)
            recipe.setup()
            recipe.close()
        return [p.detach().clone() for p in recipe.model.parameters()]

    a, b, c = weights(0, 1), weights(0, 2), weights(1, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


# ---------------------------------------------------------------------- checks before a run


def test_ramer_authors_trains_with_all_but_one_loss_weight_at_0():
    """A ramer-authors config is refused only when every ``loss.w_*`` weight is 0; one weight above 0
    is a loss to learn from. (``any`` turned ``all`` in recipe.check_loss_weights: a config with
    one weight at 0 was refused.)"""
    from ramer.models.ramer_authors import LOSS_WEIGHTS
    from ramer.train.recipe import check_loss_weights

    keys = sorted(set(LOSS_WEIGHTS.values()))
    check_loss_weights(tiny_cfg("ramer-authors", [f"loss.{k}=0" for k in keys[1:]]))
    with pytest.raises(RamerError, match="are all 0"):
        check_loss_weights(tiny_cfg("ramer-authors", [f"loss.{k}=0" for k in keys]))


def test_an_empty_valid_split_is_refused():
    """A bundle whose valid split has no sample is refused before training: there is nothing to
    choose the best epoch and the threshold on. (The valid split dropped from the emptiness check
    in recipe.check_splits.)"""
    from conftest import random_store

    from ramer.data.store import DataBundle
    from ramer.train.recipe import check_splits

    full, empty = random_store(n=4), random_store(n=0)
    data = DataBundle({"train": full, "valid": empty, "test": full}, full.label_names, "native", "mine")
    with pytest.raises(RamerError, match="mine: the valid split is empty; nothing to choose the best epoch"):
        check_splits(data)


def test_a_config_written_as_a_run_writes_it_but_without_a_log_is_the_users(tmp_path):
    """A ``config.yaml`` in the form a run writes, but with no ``metrics.jsonl`` beside it, is a copy of
    the user's (kept as a config file), not a run's to write over. (The log's test dropped from
    recipe.foreign_config.)"""
    from ramer.config import dump_config
    from ramer.train.recipe import foreign_config

    (tmp_path / "config.yaml").write_text(dump_config(tiny_cfg()))
    assert "not a config a run wrote there" in foreign_config(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    assert foreign_config(tmp_path) is None


def test_a_log_line_of_epoch_0_is_refused(tmp_path):
    """Epochs count from 1: a log line of epoch 0 is a malformed log. (``< 1`` turned ``< 0`` in
    recipe.read_log.)"""
    from ramer.train.recipe import read_log

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 0}\n')
    with pytest.raises(RamerError, match=r"line 2 has epoch 0; an epoch is a whole number from 1"):
        read_log(log)


def test_run_training_refuses_hooks_it_cannot_call_and_a_held_folder(tmp_path, bundle):
    """``run_training`` refuses before any work: a hook that is not a function, hooks for a classical
    fit (it has no epochs), and a run folder another command holds (through the Python API too, not
    only the CLI). (The callable test, the classical test, or the rank-0 hold dropped from
    train.run_training.)"""
    import os

    from ramer.paths import LOCK_NAME
    from ramer.train import run_training

    with pytest.raises(RamerError, match=r"hooks is a tuple of functions"):
        run_training(tiny_cfg(), tmp_path / "a", bundle=bundle, hooks=(1,))
    with pytest.raises(RamerError, match=r"'br' fits once: it has no epochs to call hooks after"):
        run_training(tiny_cfg("br"), tmp_path / "b", bundle=bundle, hooks=(lambda recipe, epoch: None,))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    fcntl = pytest.importorskip("fcntl")
    (tmp_path / "c").mkdir()
    lock = os.open(tmp_path / "c" / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)  # as another process's hold
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RamerError):
            run_training(tiny_cfg(), tmp_path / "c", bundle=bundle)
    finally:
        os.close(lock)
    assert not (tmp_path / "c" / "metrics.jsonl").exists()


# ---------------------------------------------------------------------- early stopping


def test_a_run_that_reaches_its_cap_has_not_stopped_early(tmp_path, bundle, monkeypatch):
    """With patience, a run whose last allowed epoch is also its patience's last trains all its epochs:
    it does not say it stopped early, and resumed it says it had trained them all. (``epoch <
    train.epochs`` dropped from Recipe.should_stop.)"""
    scripted_scores(monkeypatch, {1: 0.5, 2: 0.4})
    cfg = tiny_cfg(extra=["train.epochs=2", "train.patience=1"])
    console = Console(record=True, width=200)
    Recipe(cfg, tmp_path / "run", bundle=bundle, console=console).run()
    assert "stopping early" not in console.export_text()
    again = Console(record=True, width=200)
    Recipe(cfg, tmp_path / "run", resume=True, bundle=bundle, console=again).run()
    assert "the run had trained all 2 epochs; nothing more to train" in again.export_text()


# ---------------------------------------------------------------------- TensorBoard


def test_curves_take_numbers_but_not_the_axis_the_kind_or_flags():
    """Every number of a log line is a curve, nested keys joined by ``/`` (a nested ``step`` too);
    the line's own ``epoch``, ``step`` and ``final`` and a true/false value (``stopped_early``) are
    not. (``step`` dropped from tensorboard.NOT_SCALARS; the ``prefix`` test dropped, or the
    bool test.)"""
    from ramer.train.tensorboard import scalars

    line = {"epoch": 2, "step": 10, "final": "test", "stopped_early": True, "lr": 0.5, "train": {"loss": 1, "step": 3}}
    assert dict(scalars(line)) == {"lr": 0.5, "train/loss": 1.0, "train/step": 3.0}


def test_a_written_line_is_on_the_disk_at_once(tmp_path):
    """A log line's points are in the event file as soon as it is written, not after the writer's
    queue or two minutes fill up: TensorBoard open on a run in progress shows each epoch as it ends.
    (The flush removed from tensorboard.CurveWriter.write.)"""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ramer.train.tensorboard import CurveWriter

    curves = CurveWriter(tmp_path)
    try:
        curves.write({"epoch": 1, "lr": 0.5}, 5)
        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars("lr")] == [(5, 0.5)]
    finally:
        curves.close()


def curves_of(run):
    """The run's TensorBoard curves as TensorBoard reads them (its purges applied), its epoch lines,
    and the ``(step, value)`` points of its training loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return events, epoch_lines(run), [(e.step, e.value) for e in events.Scalars("train/loss")]


def test_the_curves_of_a_resumed_run_hold_each_step_once(tmp_path, bundle, monkeypatch):
    """A run killed after epoch 2's log line but before its state, then resumed: its TensorBoard
    curves hold epoch 1's point, epoch 2's once (the one written before the kill is dropped) and
    epoch 3's, and the test line's point at the steps of the epochs run. (The resumed writer's purge
    step one step early in Recipe.setup, or none in tensorboard.CurveWriter; the test line's step
    left at 1 in Recipe.test.)"""
    pytest.importorskip("tensorboard")
    cfg = tiny_cfg(extra=["train.tensorboard=true"])
    out = tmp_path / "run"
    real_save = die_before_saving_state(monkeypatch, 2)
    with pytest.raises(Stop):
        Recipe(cfg, out, bundle=bundle).run()
    monkeypatch.setattr(ckpt, "save_train_state", real_save)
    Recipe(cfg, out, resume=True, bundle=bundle).run()
    events, lines, points = curves_of(out)
    assert points == [(d["step"], pytest.approx(d["train"]["loss"], rel=1e-6)) for d in lines]
    assert [e.step for e in events.Scalars("test/overall/micro_f1")] == [lines[-1]["step"]] == [15]


def test_curves_switched_on_at_a_resume_hold_the_epochs_before_it(tmp_path, bundle, monkeypatch):
    """``train.tensorboard`` may be switched on in the config.yaml of a run resumed: its curves held
    only the epochs trained after the resume. The epochs of metrics.jsonl come first now."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    real_save = die_before_saving_state(monkeypatch, 2)
    with pytest.raises(Stop):
        Recipe(tiny_cfg(), out, bundle=bundle).run()
    monkeypatch.setattr(ckpt, "save_train_state", real_save)
    Recipe(tiny_cfg(extra=["train.tensorboard=true"]), out, resume=True, bundle=bundle).run()
    _, lines, points = curves_of(out)
    assert points == [(d["step"], pytest.approx(d["train"]["loss"], rel=1e-6)) for d in lines] and len(lines) == 3


def test_a_finished_run_resumed_holds_its_test_point_once(tmp_path, bundle):
    """``--resume`` of a finished run tests it again: its test scalars were written a second time at
    the step of the first (the purge began a step later). Each curve holds each step once."""
    pytest.importorskip("tensorboard")
    cfg = tiny_cfg(extra=["train.tensorboard=true"])
    out = tmp_path / "run"
    Recipe(cfg, out, bundle=bundle).run()
    Recipe(cfg, out, resume=True, bundle=bundle).run()
    events, lines, points = curves_of(out)
    assert points == [(d["step"], pytest.approx(d["train"]["loss"], rel=1e-6)) for d in lines]
    assert [e.step for e in events.Scalars("test/overall/micro_f1")] == [lines[-1]["step"]]


# ---------------------------------------------------------------------- process group


def _collectives_worker(rank: int, world: int, tmp) -> None:
    from ramer import dist

    dist.init_from_env(torch.device("cpu"))
    rows = dist.all_gather_rows(torch.full((rank + 1, 2), float(rank)))  # 1 row, then 2
    result = {
        "all_true": dist.all_true(torch.tensor(rank == 0)),
        "mean": dist.mean_over_ranks({"a": float(rank), "b": 2.0 * rank}, torch.device("cpu")),
        "rows": rows.tolist(),
        "arrays": dist.gather_arrays(np.full((rank + 1,), rank)).tolist(),
    }
    (tmp / f"rank{rank}.json").write_text(json.dumps(result))
    dist.shutdown()


def test_the_collectives_of_two_processes(tmp_path):
    """Two gloo processes: a flag true on one rank only is not true on every rank; a logged value is
    the ranks' mean; rows of unequal counts gather in rank order with no padding row. (MIN turned
    MAX in dist.all_true; the division by the world size dropped from dist.mean_over_ranks; the
    padded rows kept in dist.all_gather_rows: the two-process runs passed, every rank's flags being
    true and its counts equal.)"""
    from test_ddp import run_ranks

    run_ranks(_collectives_worker, tmp_path)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]
    assert results[0]["all_true"] is False
    assert results[0]["mean"] == {"a": 0.5, "b": 1.0}
    assert results[0]["rows"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert results[0]["arrays"] == [0, 1, 1]


def test_the_launcher_returns_a_killed_or_stopped_runs_signal_code_and_sets_one_thread(monkeypatch):
    """``dist.launch``: a worker killed by SIGKILL (exit code -9) is 137, torchrun stopped by SIGTERM
    is 143; each worker gets ``OMP_NUM_THREADS=1`` where it is unset (torchrun's own banner
    otherwise), and torchrun looks at its workers every ``MONITOR_S`` where ``PET_MONITOR_INTERVAL``
    is set but empty. (``128 - code`` turned ``128 + code``, the SignalException code dropped, the
    setdefault removed, or an empty interval kept, in dist.launch.)"""
    import signal

    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from ramer import dist

    monkeypatch.setenv("PET_MONITOR_INTERVAL", "")  # set and empty: as unset
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []

    def killed(config):
        seen.append((dist.os.environ.get("OMP_NUM_THREADS"), config.monitor_interval))
        raise ChildFailedError("x.py", {0: ProcessFailure(0, 1234, -9, "/nonexistent/error.json")})

    def stopped(config):
        raise SignalException("stopped", signal.SIGTERM)

    argv = ["--standalone", "--nproc_per_node=2", "x.py"]
    monkeypatch.setattr(torch.distributed.run, "run", killed)
    assert dist.launch(argv) == 137 and seen == [("1", dist.MONITOR_S)]
    monkeypatch.setattr(torch.distributed.run, "run", stopped)
    assert dist.launch(argv) == 143


def test_a_process_whose_peer_ended_waits_three_looks_and_a_second(monkeypatch):
    """``dist.end_process`` after a collective found a peer gone: it waits 3 of torchrun's looks at its
    workers plus 1 s (4 s at an interval of 1 s), so that torchrun names the process that ended
    first. (The extra second dropped in dist.end_process.)"""
    import time

    from ramer import dist

    slept = []
    monkeypatch.setattr(dist, "_peer_gone", True)
    monkeypatch.setenv("PET_MONITOR_INTERVAL", "1")
    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(dist.os, "_exit", lambda code: slept.append(("exit", code)))
    dist.end_process(2)
    assert slept == [4.0, ("exit", 2)]


def test_a_launch_of_one_process_is_no_process_group(monkeypatch):
    """torchrun with one process (``--nproc_per_node=1``: ``WORLD_SIZE=1``, ``RANK=0``) is one
    process: no group is joined, and a classical fit is not refused as distributed. (``> 1`` turned
    ``>= 1`` in dist.launched.)"""
    from ramer import dist

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert not dist.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist.launched()


# ---------------------------------------------------------------------- embedded benchmark


def test_scene_sizes_span_their_ranges_and_a_scenes_persons_are_distinct_characters():
    """Scenes take every person count from ``persons_min`` to ``persons_max`` and every segment count
    from ``segments_min`` to ``segments_max``, and a scene's persons are different characters. (The
    ``+ 1`` of either upper bound dropped, or characters drawn with replacement, in
    synthetic._World.scene.)"""
    cfg = SynthConfig(n_train=150, n_valid=2, n_test=2, persons_min=2, persons_max=4, segments_min=3, segments_max=5)
    st = generate(cfg).splits["train"]
    assert set(st.grid[:, 0].tolist()) == {2, 3, 4} and set(st.grid[:, 1].tolist()) == {3, 4, 5}
    chars = [st.character[a:b] for a, b in zip(st.person_offsets[:-1], st.person_offsets[1:])]
    assert all(len(set(c.tolist())) == len(c) for c in chars)


def test_scene_bounds_are_checked_and_a_cast_can_be_all_in_one_scene():
    """More segments at least than at most is one clear error, not numpy's traceback; a scene may take
    the whole cast (``persons_min == n_characters``). (The segment bounds dropped from the check in
    synthetic.generate; ``>`` turned ``>=`` in the cast check.)"""
    with pytest.raises(RamerError, match=r"^synthetic: segments_min \(5\) must not exceed segments_max \(4\)$"):
        generate(SynthConfig(n_train=2, n_valid=2, n_test=2, segments_min=5, segments_max=4))
    with pytest.raises(RamerError, match=r"^synthetic: persons_min \(9\) must not exceed persons_max \(6\)$"):
        generate(SynthConfig(n_train=2, n_valid=2, n_test=2, persons_min=9, persons_max=6, n_characters=9))
    whole = SynthConfig(n_train=3, n_valid=2, n_test=2, persons_min=3, persons_max=3, n_characters=3)
    assert (generate(whole).splits["train"].grid[:, 0] == 3).all()


def test_audio_carries_each_persons_own_voice(monkeypatch):
    """With the emotion maps and the noise off, a complete bundle's audio is the voice of each token's
    character: the same at every segment of a person, and the same for a character across scenes.
    (The voices tiled segment-major instead of repeated person-major in synthetic._split.)"""
    from ramer.data import synthetic

    monkeypatch.setattr(synthetic._World, "features", lambda self, m, z: np.zeros((len(z), 1)))
    monkeypatch.setattr(synthetic, "_NOISE", {"text": 0.0, "audio": 0.0, "visual": 0.0})
    st = generate(SynthConfig(n_train=20, n_valid=2, n_test=2, complete=True)).splits["train"]
    voice: dict[int, np.ndarray] = {}
    for i in range(len(st)):
        P, S = st.grid[i]
        audio = np.asarray(st.audio[st.token_offsets[i] : st.token_offsets[i + 1]]).reshape(P, S, -1)
        for p, char in enumerate(st.character[st.person_offsets[i] : st.person_offsets[i + 1]]):
            np.testing.assert_array_equal(audio[p], np.broadcast_to(audio[p, 0], audio[p].shape))
            np.testing.assert_array_equal(voice.setdefault(int(char), audio[p, 0]), audio[p, 0])
    assert len(voice) > 2


def test_speakers_tend_to_keep_the_floor():
    """Of two segments in a row that both have a speaker, the same person speaks in both about
    0.4 + 0.6 / P of the time (more than the 1 / P of a speaker drawn anew). (The keep-the-floor
    draw never true in synthetic._World.scene.)"""
    st = generate(SynthConfig(n_train=200, n_valid=2, n_test=2, persons_min=3, persons_max=4)).splits["train"]
    same = pairs = 0
    for i in range(len(st)):
        P, S = st.grid[i]
        text = np.asarray(st.present[st.token_offsets[i] : st.token_offsets[i + 1], 0]).reshape(P, S)
        speaker = [int(text[:, s].argmax()) if text[:, s].any() else -1 for s in range(S)]
        for a, b in zip(speaker, speaker[1:]):
            if a >= 0 and b >= 0:
                pairs, same = pairs + 1, same + (a == b)
    assert pairs > 300 and same / pairs > 0.45  # 0.4 + 0.6 / P is 0.55 to 0.6; 1 / P is 0.33 at most


def _scene_world(seed: int = 0):
    from ramer.data.synthetic import _World

    return _World(SynthConfig(n_train=1, n_valid=1, n_test=1), np.random.default_rng(seed))


def test_latent_states_persist_around_the_personality_bias(monkeypatch):
    """With noise only at the first segment and no contagion, a person's state starts at the character's
    bias plus that noise and the deviation from the bias decays by ``_PERSIST`` per segment. (The
    AR(1) term dropped, or the bias zeroed, in synthetic._World.)"""
    from ramer.data import synthetic

    world = _scene_world()
    monkeypatch.setattr(synthetic, "_CONTAGION_ADDRESSEE", 0.0)
    monkeypatch.setattr(synthetic, "_CONTAGION_OTHER", 0.0)
    calls = []

    def first_segment_only(rng, n):
        calls.append(n)
        return np.full((n, world.cfg.n_labels), 1.0 if len(calls) == 1 else 0.0)

    world.noise = first_segment_only
    chars, _, z = world.scene(np.random.default_rng(1))
    bias = world.bias[chars]  # (P, C)
    assert np.abs(bias).min() > 0 and not np.allclose(bias[0], bias[1])  # a bias of each character's own
    for s in range(z.shape[1]):
        np.testing.assert_allclose(z[:, s] - bias, synthetic._PERSIST**s, atol=1e-12)


def test_the_speaker_pulls_the_addressee_halfway_and_the_others_a_quarter(monkeypatch):
    """At a scene's first segment with a speaker, each listener's state moves towards the speaker's:
    one listener (the addressee) by ``_CONTAGION_ADDRESSEE``, the others by ``_CONTAGION_OTHER``;
    the speaker's stays. (The pull reversed, or the addressee's share dropped, in
    synthetic._World.scene.)"""
    from ramer.data import synthetic

    world = _scene_world()
    real = [world.scene(np.random.default_rng(seed)) for seed in range(20)]
    monkeypatch.setattr(synthetic, "_CONTAGION_ADDRESSEE", 0.0)
    monkeypatch.setattr(synthetic, "_CONTAGION_OTHER", 0.0)
    checked = 0
    for seed, (_, speakers, z) in enumerate(real):
        _, speakers0, z0 = world.scene(np.random.default_rng(seed))
        assert (speakers == speakers0).all()  # the same draws
        spoken = np.flatnonzero(speakers >= 0)
        P = z.shape[0]
        if not len(spoken) or P < 3:
            continue
        s, k = spoken[0], speakers[spoken[0]]
        np.testing.assert_allclose(z[:, :s], z0[:, :s])
        pull = (z[:, s] - z0[:, s]) / (z0[k, s] - z0[:, s] + (np.arange(P) == k)[:, None])  # (P, C)
        shares = sorted(float(np.median(pull[p])) for p in range(P) if p != k)
        assert shares == pytest.approx([0.25] * (P - 2) + [0.5]) and np.allclose(z[k, s], z0[k, s])
        checked += 1
    assert checked >= 5


def test_label_frequencies_follow_the_calibration():
    """Each label's positive share among the oracle labels is near its calibrated frequency (0.35
    for neutral, 0.3 for joy, ...). (The calibration quantile taken at the frequency rather than 1
    minus it in synthetic._World: neutral was positive 65 % of the time.)"""
    from ramer.data.synthetic import _FREQS

    oracle = generate(SynthConfig(n_train=600, n_valid=2, n_test=2)).splits["train"].extra["oracle"]
    np.testing.assert_allclose(oracle.mean(0), _FREQS[: oracle.shape[1]], atol=0.08)


def test_statistics_count_labels_per_sample_and_persons_per_scene():
    """``statistics``: the label cardinality is the mean number of labels of a sample, the persons'
    and segments' means those of the grid's own axis. (Cardinality taken as the mean of every bit,
    persons counted along segments, in synthetic.statistics.)"""
    from ramer.data.synthetic import statistics

    data = generate(SynthConfig(n_train=30, n_valid=2, n_test=2))
    st, stats = data.splits["train"], statistics(data)["train"]
    assert stats["label_cardinality"] == pytest.approx(np.asarray(st.labels).sum(1).mean())
    grid = st.grid.mean(0)  # (persons, segments)
    assert (stats["persons_mean"], stats["segments_mean"]) == pytest.approx(tuple(grid))


# ---------------------------------------------------------------------- API, data commands


def test_a_batchs_selected_rows_keep_their_own_ids():
    """``Batch.select(rows)`` keeps each selected sample's id, in the order of ``rows``. (The ids
    taken as the first ``len(rows)`` in batch.Batch.select.)"""
    from conftest import random_store

    batch = random_store(n=4).collate(np.arange(4))
    picked = batch.select(torch.tensor([2, 0]))
    assert picked.ids == [batch.ids[2], batch.ids[0]] and picked.labels.tolist() == batch.labels[[2, 0]].tolist()


def test_a_batchs_inputs_take_the_dtype_its_masks_do_not_and_hidden_features_are_zero():
    """``Batch.to(device, dtype)`` casts the model inputs, personality too, and leaves the labels and
    masks; ``dims`` gives the personality's size; ``with_present`` zeroes the features it hides.
    (``dims`` without the personality's size, which ``Predictor.check_data`` then skips for a
    batch; ``with_present`` keeping hidden features. The casts are also held by
    test_baselines.test_every_deep_model_scores_cast_to_bfloat16.)"""
    from conftest import random_store

    batch = random_store(n=3).collate(np.arange(3))
    cast = batch.to("cpu", torch.bfloat16)
    assert cast.features["text"].dtype == cast.personality.dtype == torch.bfloat16
    assert cast.labels.dtype == batch.labels.dtype and cast.valid.dtype == torch.bool
    assert batch.dims["personality"] == 7
    hidden = batch.with_present({m: torch.zeros_like(p) for m, p in batch.present.items()})
    assert all(not x.any() for x in hidden.features.values())


def test_a_non_finite_batch_names_the_sample_it_is_in():
    """A batch with NaN in one present token of its third sample names that sample, and a value
    below 0 is no probability to decide on. (The first bad sample taken as sample 0 in
    api._refuse_nonfinite_batch; the ``< 0`` test dropped from Predictor.decide.)"""
    from conftest import random_store

    from ramer.api import Predictor, _refuse_nonfinite_batch
    from ramer.models.base import DataSpec

    batch = random_store(n=4).collate(np.arange(4))
    n = int(batch.present["visual"][2].nonzero()[0])
    batch.features["visual"][2, n, 0] = float("nan")
    with pytest.raises(RamerError, match=r"1 non-finite values .* in present visual features \(first in sample 's2'\)"):
        _refuse_nonfinite_batch(batch)
    spec = DataSpec(dims={"text": 2, "audio": 2, "visual": 2}, n_labels=2, label_names=("joy", "anger"))
    with pytest.raises(RamerError, match=r"1 of 2 lie outside \[0, 1\] \(e.g. -0.5\)"):
        Predictor(None, None, spec, 0.5, torch.device("cpu"), 1).decide(np.array([[-0.5, 0.5]]))


def test_labels_of_another_order_are_refused():
    """Data whose labels are the model's in another order is refused (the scores' columns would be
    read under the wrong names). (The tuple comparison made a set one in Predictor.check_data.)"""
    from ramer.api import Predictor
    from ramer.models.base import DataSpec

    spec = DataSpec(dims={"text": 2, "audio": 2, "visual": 2}, n_labels=2, label_names=("joy", "anger"))
    predictor = Predictor(None, None, spec, 0.5, torch.device("cpu"), 1)
    predictor.check_data(("joy", "anger"), {}, "data")
    with pytest.raises(RamerError, match=r"data: labels \['anger', 'joy'\] differ from the model's"):
        predictor.check_data(("anger", "joy"), {}, "data")


def test_decide_takes_0_1_values_of_any_number_type():
    """``Predictor.decide`` takes 0/1 values given as booleans or integers as well as floats: numbers
    in [0, 1]. (``b`` dropped from the dtype kinds decide takes.)"""
    from ramer.api import Predictor
    from ramer.models.base import DataSpec

    spec = DataSpec(dims={"text": 2, "audio": 2, "visual": 2}, n_labels=2, label_names=("joy", "anger"))
    predictor = Predictor(None, None, spec, 0.5, torch.device("cpu"), 1)
    for probs in (np.array([[True, False]]), np.array([[1, 0]]), np.array([[0.9, 0.1]])):
        assert predictor.decide(probs).tolist() == [[1, 0]]
    with pytest.raises(RamerError, match="probabilities of dtype <U1"):
        predictor.decide(np.array([["a", "b"]]))


def test_a_folder_of_many_runs_names_five_and_counts_the_rest(tmp_path):
    """``ramer.load`` of a folder of 7 runs names the first five and says "and 2 more". (The count
    dropped from api._model_file.)"""
    import ramer

    for k in range(7):
        (tmp_path / f"r{k}").mkdir()
        (tmp_path / f"r{k}" / "model.safetensors").write_bytes(b"")
    with pytest.raises(RamerError, match=r"a folder of runs, .*r4 and 2 more$"):
        ramer.load(tmp_path)


def test_every_loader_option_the_data_does_not_read_is_refused():
    """``data info --set``: a loader option the data reads does not let a later one it does not read
    through, and the embedded benchmark is named as such, in the error and the layout.
    (``continue`` turned ``break`` in commands._refuse_unread; the benchmark taken for a native
    folder there or in commands.collect_info.)"""
    from ramer.data.commands import collect_info

    small = ["data.synthetic.n_train=4", "data.synthetic.n_valid=2", "data.synthetic.n_test=2"]
    info = collect_info(None, sets=small)
    assert info["splits"]["train"]["n"] == 4 and info["layout"] == "synthetic"
    with pytest.raises(RamerError, match=r"--set data.max_utterances: the embedded benchmark holds synthetic data"):
        collect_info(None, sets=[*small, "data.max_utterances=2"])
