"""The Python API as a long-lived service uses it: a run loaded once and scored many times, from
several threads at once, with forked workers, runs and data loaded and dropped; what stays behind
in the process (file descriptors, tensors, threads, grad mode) and what a failed pass leaves."""

import gc
import multiprocessing
import os
import signal
import threading
import time
import weakref

import numpy as np
import pytest
import torch

import ramer
from ramer import infer
from ramer.api import load_data_for
from ramer.data import load_dataset
from ramer.data.synthetic import generate
from ramer.errors import RamerError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def native(run, tmp_path_factory):
    """The run's data as a native folder (memory-mapped when loaded)."""
    path = tmp_path_factory.mktemp("native") / "data"
    generate(run[1].data.synthetic).save(path)
    return path


def live_tensors() -> int:
    gc.collect()
    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())  # type(): no deprecated getattr


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def process_state():
    return (
        torch.get_num_threads(),
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        torch.is_autocast_enabled(),
        torch.get_default_dtype(),
    )


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_loading_scoring_and_dropping_runs_and_data_leaves_nothing_behind(run, native):
    """A service reloads a run after retraining and reads new data: after the first cycle, each
    further cycle of load, load_dataset (memory-mapped arrays, each holding a descriptor), predict
    and drop leaves no file descriptor and no tensor behind."""
    out, _ = run

    def cycle():
        predictor = ramer.load(out)
        bundle = load_dataset(native)
        predictor.predict(bundle)
        predictor.predict(bundle, workers=2, batch_size=8)  # forked workers, each with a pipe
        predictor.predict(bundle.splits["test"].collate(np.arange(4)))

    cycle()  # imports, first-use allocations
    fds, tensors = open_fds(), live_tensors()
    for _ in range(5):
        cycle()
    # fewer is another test's garbage collected meanwhile; more is a leak
    assert open_fds() <= fds and live_tensors() <= tensors, (open_fds(), fds, live_tensors(), tensors)
    assert not multiprocessing.active_children()


def test_threads_scoring_one_predictor_at_once_get_the_sequential_scores(run, native):
    """Four threads (a web server's) scoring one Predictor at once: each gets the scores of a call
    alone, to the bit, and the process's threads, grad and autocast modes and dtype are unchanged."""
    predictor = ramer.load(run[0])
    test = load_dataset(native).splits["test"]
    batch = test.collate(np.arange(len(test)))
    want = {"store": predictor.predict(test), "batch": predictor.predict(batch)}
    before = process_state()
    results, errors = [], []

    def work(kind):
        try:
            for _ in range(10):
                results.append((kind, predictor.predict(test if kind == "store" else batch)))
        except Exception as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(kind,)) for kind in ("store", "batch", "store", "batch")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 40
    for kind, scores in results:
        np.testing.assert_array_equal(scores, want[kind])
    assert process_state() == before


def test_threads_scoring_with_workers_at_once_each_score_their_own_data(run, monkeypatch):
    """workers=2 from two threads at once: what the forked processes score was one global of this
    process, so a thread's workers scored the other thread's data (wrong scores, without a word) or
    nothing (a TypeError in the worker). Here one thread stops just before it forks while another
    scores other data from start to end."""
    out, cfg = run
    predictor = ramer.load(out)
    predictor.cfg.train.eval_batch_size = 8  # several batches: two workers
    bundle = generate(cfg.data.synthetic)
    first, other = bundle.splits["test"], bundle.splits["train"]
    want = predictor.predict(first)
    at_fork, go_on = threading.Event(), threading.Event()
    get_context = multiprocessing.get_context

    def held_get_context(method=None):  # the gated thread waits at its fork until the other has scored
        if threading.current_thread().name == "gated":
            at_fork.set()
            go_on.wait()
        return get_context(method)

    monkeypatch.setattr(multiprocessing, "get_context", held_get_context)
    got = []

    def gated():
        try:
            got.append(predictor.predict(first, workers=2))
        except Exception as e:
            got.append(e)

    thread = threading.Thread(target=gated, name="gated")
    thread.start()
    try:
        assert at_fork.wait(60)
        np.testing.assert_array_equal(predictor.predict(other, workers=2), predictor.predict(other))
    finally:
        go_on.set()
        thread.join()
    assert not isinstance(got[0], Exception), got[0]
    np.testing.assert_array_equal(got[0], want)


def scored_in_a_thread(predictor, store) -> list:
    """``predict(store, workers=2)`` in a thread: its scores or its exception, or nothing where it still
    waits after 120 s (a guard against a hang, not a time limit: the answer comes in seconds). The
    thread is a daemon: a hang fails the test, not the session."""
    got = []

    def score():
        try:
            got.append(predictor.predict(store, workers=2, batch_size=8))
        except Exception as e:
            got.append(e)

    thread = threading.Thread(target=score, daemon=True)
    thread.start()
    thread.join(120)
    return got


def test_a_killed_scoring_worker_is_an_error_not_a_wait_without_end(run, monkeypatch):
    """A forked worker killed while it scores (the kernel's out-of-memory killer): predict waited
    forever for the block it had taken (a web server's request hung); it is one RamerError now, and
    the Predictor scores the next request."""
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]
    parent, score_range = os.getpid(), infer._score_range

    def killed_in_a_worker(model, store, start, *rest):
        if os.getpid() != parent and start > 0:  # the second block's worker dies
            os.kill(os.getpid(), signal.SIGKILL)
        return score_range(model, store, start, *rest)

    monkeypatch.setattr(infer, "_score_range", killed_in_a_worker)  # the forked workers inherit it
    got = scored_in_a_thread(predictor, test)
    assert got, "predict still waits for the killed worker"
    assert isinstance(got[0], RamerError), got[0]
    assert str(got[0]).startswith(
        "scoring in 2 forked processes: one ended before its scores came back (exit code -9"
    ), got[0]
    monkeypatch.setattr(infer, "_score_range", score_range)
    assert predictor.predict(test, workers=2, batch_size=8).shape == (len(test), len(predictor.label_names))


def test_an_error_in_one_worker_stops_the_others_and_says_where_it_was(run, monkeypatch):
    """One worker fails while another scores on: the other is stopped, even where this process (a
    server) handles SIGTERM, which a forked worker inherits (it was waited for without end), and the
    error is raised with the worker's traceback below it (a Pool's was; the loop's had none)."""
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]
    parent, score_range = os.getpid(), infer._score_range

    def failing_or_slow(model, store, start, *rest):
        if os.getpid() != parent:
            if start == 0:
                raise ValueError("inside the model")
            time.sleep(600)  # scores on, long after the other failed
        return score_range(model, store, start, *rest)

    monkeypatch.setattr(infer, "_score_range", failing_or_slow)
    before = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a server's: note it, go on
    try:
        got = scored_in_a_thread(predictor, test)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert got, "predict still waits for the worker that scores on"
    assert isinstance(got[0], ValueError) and str(got[0]) == "inside the model", got[0]
    assert "in failing_or_slow" in str(got[0].__cause__), got[0].__cause__  # the worker's traceback
    assert not multiprocessing.active_children()


def test_a_worker_that_never_starts_is_an_error_not_a_wait_without_end(run, monkeypatch):
    """A process forked from a thread frees the other threads' state as it starts, and a library's
    state that waits there for threads the fork did not copy hangs it before any code of ours runs
    (CI's forks hung so in a converter a face search had left): predict waited for it without end,
    and every later fork of the process hung the same way. A worker that has not said it started
    within ``_START_WAIT`` is a RamerError; it is killed, SIGTERM or not."""
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]

    def never_starts(*args, **kwargs):  # stuck as the fork's clean-up was: deaf to SIGTERM, never sends
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(150)  # past the 120 s that the test waits (not more: its tree's exit waits for it)

    monkeypatch.setattr(infer, "_score_block", never_starts)  # the target of the forked workers
    monkeypatch.setattr(infer, "_START_WAIT", 2.0, raising=False)
    got = scored_in_a_thread(predictor, test)
    assert got, "predict still waits for workers that never started"
    assert isinstance(got[0], RamerError), got[0]
    assert str(got[0]).startswith("scoring in 2 forked processes: 2 did not start within 2 s of the fork"), got[0]
    assert not multiprocessing.active_children()


def test_a_worker_never_collects_the_garbage_it_inherited(run, monkeypatch):
    """Garbage of this process in a cycle whose clean-up waits for a thread of its own (a PyAV stream
    or frame that a user's code dropped): a worker whose collector ran while it scored freed it and
    waited for ever, since the fork copies no thread, and predict waited for the worker. Here the
    clean-up waits for a lock that this process's main thread holds while another thread scores,
    and the worker collects before it scores."""
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]
    parent, score_range = os.getpid(), infer._score_range
    held, freed_here = threading.Lock(), []

    class WaitsForItsThread:
        def __del__(self):
            if os.getpid() == parent:  # freed here: nothing waits
                freed_here.append(True)
                return
            with held:  # in a worker: the lock stays held, its holder was not copied
                pass

    def collecting(model, store, start, *rest):
        if os.getpid() != parent:
            gc.collect()  # as an allocation while scoring sets it off
        return score_range(model, store, start, *rest)

    monkeypatch.setattr(infer, "_score_range", collecting)
    gc.disable()  # the cycle stays garbage until the forks: this process collects it only afterwards
    held.acquire()  # by this thread, which scores in another: the workers' copy stays held
    try:
        cycle = WaitsForItsThread()
        cycle.me = cycle
        del cycle
        got = scored_in_a_thread(predictor, test)
    finally:
        held.release()
        gc.enable()
    assert got, "predict still waits for a worker that freed the garbage it inherited"
    np.testing.assert_array_equal(got[0], predictor.predict(test, batch_size=8))
    gc.collect()
    assert freed_here  # the garbage was garbage, and this process freed it


def test_scoring_with_workers_keeps_no_garbage_of_a_process_that_froze_its_objects(run):
    """A server that freezes its objects before it forks (``gc.freeze``, a preloading server's
    pattern): each ``predict(workers=2)`` froze the garbage of that moment for good, so a request
    that dropped a large cycle kept it for as long as the server ran. The garbage is freed now, and
    the process's collector is as it was."""
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]

    class Cycle:
        pass

    gc.freeze()
    try:
        cycle = Cycle()
        cycle.me = cycle
        gone = weakref.ref(cycle)
        del cycle
        predictor.predict(test, workers=2, batch_size=8)
        assert gc.isenabled()
        gc.collect()
        assert gone() is None, "the garbage of the call is kept"
    finally:
        gc.unfreeze()


def test_a_pass_that_stops_gives_the_models_mode_back(run, monkeypatch):
    """An error (or Ctrl-C) while a store is scored left a model put in training mode (to fine-tune
    it) in eval mode; a batch's pass gave it back."""
    out, cfg = run
    predictor = ramer.load(out)
    test = generate(cfg.data.synthetic).splits["test"]

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    predictor.model.train()
    monkeypatch.setattr(predictor.model, "forward", stopped)
    for data in (test, test.collate(np.arange(4))):
        with pytest.raises(KeyboardInterrupt):
            predictor.predict(data)
        assert predictor.model.training


def test_a_load_never_sets_the_global_random_state(run, monkeypatch):
    """A load saved the global random state and put it back around each build of the model (whose
    initial weights draw from it), which undid what another thread drew meanwhile. Now the model is
    built on the meta device and takes the file's tensors: the state is never set, and is as it was."""
    sets = []
    real = torch.set_rng_state
    monkeypatch.setattr(torch, "set_rng_state", lambda state: (sets.append(1), real(state))[1])
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    predictor = ramer.load(run[0])
    assert sets == [] and torch.equal(torch.random.get_rng_state(), state)
    assert all(w.device.type == "cpu" for w in predictor.model.state_dict().values())


def test_loads_do_not_rewind_the_random_numbers_another_thread_draws(run):
    """A thread drawing random numbers while loads run in another one: no draw comes twice (loads
    that put the state they had found back gave about half of them again)."""
    draws, stop = [], threading.Event()

    def draw():
        while not stop.is_set():
            draws.append(tuple(torch.rand(4).tolist()))

    torch.manual_seed(0)
    drawer = threading.Thread(target=draw)
    drawer.start()
    try:
        for _ in range(5):
            ramer.load(run[0])
    finally:
        stop.set()
        drawer.join()
    assert len(draws) > 100 and len(set(draws)) == len(draws)


def test_a_load_makes_float32_weights_whatever_the_default_dtype(run):
    """``torch.set_default_dtype(torch.float64)`` in the caller built the model in float64: it was then
    scored as a model cast whole, without the autocast its run was tested with (bf16), and its
    scores moved from those of ramer predict."""
    data = load_data_for(ramer.load(run[0]))
    expected = ramer.load(run[0]).predict(data)
    was = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        predictor = ramer.load(run[0])
    finally:
        torch.set_default_dtype(was)
    assert {w.dtype for w in predictor.model.parameters()} == {torch.float32}
    np.testing.assert_allclose(predictor.predict(data), expected, atol=1e-6)
