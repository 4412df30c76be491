"""`train --resume` of a run whose files were damaged since: what the resume reads besides the
fields of train_state.pt (its optimiser and scheduler state, the run's best model file) is checked
before any training; a problem is one line naming the file, with nothing of the run changed."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_recipe import one_error_line

from ramer.cli import main


def copy_of(stopped_run, tmp_path, edit=None):
    """A copy of the stopped run, its train_state.pt's fields changed by ``edit(state)``; the bytes of
    its files after the edit."""
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    if edit is not None:
        state = torch.load(out / "train_state.pt", weights_only=True)
        edit(state)
        torch.save(state, out / "train_state.pt")
    return out, {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def files_of(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_an_optimiser_moment_of_the_wrong_shape_is_refused_not_a_crash(stopped_run, tmp_path):
    """torch loads a moment of the wrong shape as it is, and the fused AdamW step then crashed the
    process (a segmentation fault): the resume compares each state tensor with its parameter first.
    Run in a child process, so a crash fails this test instead of ending pytest."""

    def wrong_shape(state):
        state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)

    out, files = copy_of(stopped_run, tmp_path, wrong_shape)
    r = subprocess.run(
        [sys.executable, "-m", "ramer", "train", "--resume", str(out)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2, (r.returncode, r.stderr[-800:])
    refused = f"error: {out / 'train_state.pt'}: the optimiser state does not fit the model ('exp_avg' of parameter 0 ("
    assert refused in r.stderr, r.stderr
    assert "is a (3,) torch.float32 tensor, the parameter (" in r.stderr and one_error_line(r.stderr), r.stderr
    assert files_of(out) == files


def set_group(key, value):
    def edit(state):
        state["optimizer"]["param_groups"][0][key] = value

    return edit


def set_scheduler(key, value):
    def edit(state):
        state["scheduler"][key] = value

    return edit


def set_moment(key, value):
    def edit(state):
        state["optimizer"]["state"][0][key] = value(state["optimizer"]["state"][0]["exp_avg"])

    return edit


def drop_moment(key):
    def edit(state):
        del state["optimizer"]["state"][0][key]

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (set_scheduler("last_epoch", "x"), "scheduler 'last_epoch' must be a whole number of 0 or more, not 'x'"),
        (set_scheduler("base_lrs", ["a"]), "scheduler 'base_lrs' must be 2 numbers of 0 or more, not ['a']"),
        (set_scheduler("base_lrs", ["a", 0.1]), "scheduler 'base_lrs' must be 2 numbers of 0 or more"),
        (set_group("lr", "x"), "optimizer group 0 'lr' must be a number of 0 or more, not 'x'"),
        (set_group("betas", (0.9,)), "optimizer group 0 'betas' must be 2 numbers of 0 or more, not (0.9,)"),
        (set_group("eps", float("nan")), "optimizer group 0 'eps' must be a number of 0 or more, not nan"),
        (set_group("weight_decay", None), "optimizer group 0 'weight_decay' must be a number of 0 or more"),
        (set_moment("step", lambda m: torch.zeros(2)), "optimizer state of parameter 0 ("),
        (set_moment("exp_avg_sq", lambda m: torch.full_like(m, float("nan"))), "'exp_avg_sq' holds non-finite"),
        (set_moment("exp_avg", lambda m: m.double()), "the parameter (3, 16) torch.float32)"),
        (drop_moment("exp_avg_sq"), "optimizer state of parameter 0 (target_missing) lacks exp_avg_sq)"),
    ],
)
def test_a_malformed_optimiser_or_scheduler_field_is_one_line(stopped_run, tmp_path, capsys, edit, message):
    """Fields the loaders take as they are (and trip over at the first step, a traceback): each is
    one line naming the file, nothing of the run changed."""
    out, files = copy_of(stopped_run, tmp_path, edit)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'train_state.pt'}: " in err and message in err and one_error_line(err), err
    assert files_of(out) == files


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl", "train_state.pt", "model.safetensors"])
def test_a_pipe_or_device_in_place_of_a_run_file_is_one_line_not_a_wait(stopped_run, tmp_path, name):
    """A pipe as config.yaml or metrics.jsonl made --resume wait for ever; one as train_state.pt or
    model.safetensors was called 'not found'. (In a child process: a wait fails this test.)"""
    out, _ = copy_of(stopped_run, tmp_path)
    (out / name).unlink()
    os.mkfifo(out / name)
    r = subprocess.run(
        [sys.executable, "-m", "ramer", "train", "--resume", str(out)], capture_output=True, text=True, timeout=120
    )
    said = f"{out / name}: is not a regular file (a pipe, socket or device), expected a file"
    assert r.returncode == 2 and said in r.stderr and one_error_line(r.stderr), r.stderr[-800:]
    if name == "train_state.pt":  # a link to a device is one too
        (out / name).unlink()
        (out / name).symlink_to("/dev/zero")
        r = subprocess.run(
            [sys.executable, "-m", "ramer", "train", "--resume", str(out)], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2 and said in r.stderr, r.stderr[-800:]


def test_a_state_whose_weights_are_not_finite_is_named_not_blamed_on_the_learning_rate(stopped_run, tmp_path, capsys):
    """A NaN weight in train_state.pt failed at the first step as 'loss is not finite (nan); lower
    train.lr?': the state file is named before any training."""

    def nan_weight(state):
        name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
        state["model"][name] = torch.full_like(state["model"][name], float("nan"))

    out, files = copy_of(stopped_run, tmp_path, nan_weight)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {out / 'train_state.pt'}: weight '" in err and "holds NaN or infinite values" in err, err
    assert "lower train.lr" not in err and one_error_line(err) and files_of(out) == files


@pytest.mark.skipif(torch.cuda.is_available(), reason="the device is there: nothing to refuse")
def test_a_resume_on_a_machine_without_its_device_says_where_to_change_it(stopped_run, tmp_path, capsys):
    """A run trained on a GPU, resumed on a CPU machine: the error said '--set train.device=cpu',
    which --resume refuses ('--resume takes the run directory's own config')."""
    out, _ = copy_of(stopped_run, tmp_path)
    config = (out / "config.yaml").read_text()
    assert "device: cpu\n" in config
    (out / "config.yaml").write_text(config.replace("device: cpu\n", "device: cuda\n"))
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    said = f"train.device is 'cuda' but CUDA is not available here; set train.device: cpu in {out / 'config.yaml'}"
    assert said in err and "--set" not in err and one_error_line(err), err
    assert main(["train", "--resume", str(out), "--nproc", "2"]) == 2  # refused before the processes start
    err = capsys.readouterr().err
    assert said in err and "--set" not in err and one_error_line(err), err
    (out / "config.yaml").write_text(config)  # as it says: the resume goes on
    assert main(["train", "--resume", str(out)]) == 0


def test_a_resume_says_which_epochs_its_log_lacks(stopped_run, tmp_path, capsys):
    """metrics.jsonl removed since the stop: the resume went on without a word, and the run's log
    held epochs 2, 3 and the test line, the state's epoch 1 nowhere."""
    out, _ = copy_of(stopped_run, tmp_path)
    (out / "metrics.jsonl").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    said = f"note: {out / 'metrics.jsonl'} lacks the lines of epoch 1 that train_state.pt counts (removed or edited"
    assert said in capsys.readouterr().err


def test_a_resume_in_another_number_of_processes_says_so(stopped_run, tmp_path, capsys):
    """A run stopped under --nproc 2 and resumed in one process (its Ctrl-C hint gave no --nproc)
    went on without a word, its best epoch and threshold other than the uninterrupted run's: each
    process's random state and share of the batches changed. Now the state records the count and a
    resume in another count says so; a count that its random states contradict is refused."""

    def two(state):
        state["processes"], state["rng_ranks"] = 2, [state["rng"], state["rng"]]

    out, _ = copy_of(stopped_run, tmp_path / "same")
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    assert "note:" not in capsys.readouterr().err
    out, _ = copy_of(stopped_run, tmp_path / "two", two)
    assert main(["train", "--resume", str(out)]) == 0
    said = f"note: {out} trained in 2 processes so far and resumes in 1 process: each process's random state"
    err = capsys.readouterr().err
    assert said in err and "resume with --nproc 2 to go on as it was" in err, err
    out, before = copy_of(stopped_run, tmp_path / "bad", lambda state: state.update(processes=3))
    assert main(["train", "--resume", str(out)]) == 2
    assert "'processes' must be the number of processes it trained in" in capsys.readouterr().err
    assert files_of(out) == before


def test_a_resume_on_another_number_of_threads_says_so(stopped_run, tmp_path, capsys):
    """With train.threads unset the count is the environment's (OMP_NUM_THREADS, the cores): a resume
    elsewhere went on in other last digits without a word. The state records the count; a resume on
    another says so and how to go on as it was; a count that is no count is refused."""
    import torch

    out, _ = copy_of(stopped_run, tmp_path / "more", lambda state: state.update(threads=torch.get_num_threads() + 1))
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    said = f"note: {out} trained on {torch.get_num_threads() + 1} threads so far and resumes on "
    err = capsys.readouterr().err
    assert said in err and f"set train.threads: {torch.get_num_threads() + 1} in {out / 'config.yaml'}" in err, err
    out, before = copy_of(stopped_run, tmp_path / "bad", lambda state: state.update(threads=0))
    assert main(["train", "--resume", str(out)]) == 2
    assert "'threads' must be the number of threads it trained on, not 0" in capsys.readouterr().err
    assert files_of(out) == before


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_a_resume_without_its_best_model_file_is_refused_before_training(stopped_run, tmp_path, capsys, damage):
    """The run is tested on model.safetensors (its best epoch): without it the resume trained on and
    failed only at the test, leaving a folder that could be neither resumed nor started again. It is
    refused first (before the data check too, which read no fingerprint from the missing file)."""
    out, _ = copy_of(stopped_run, tmp_path)
    model = out / "model.safetensors"
    if damage == "missing":
        model.unlink()
    else:
        model.write_bytes(b"\x00" * 64)
    files = files_of(out)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    problem = f"{model}: model file not found" if damage == "missing" else f"{model}: not a readable safetensors file"
    assert f"error: cannot resume {out}: {problem}" in err, err
    assert f"so it cannot be finished: train it again (remove {out}, or use another --out)" in err
    assert one_error_line(err) and files_of(out) == files  # no epoch trained, no line logged


def set_steps(value):
    def edit(state):
        for values in state["optimizer"]["state"].values():
            values["step"] = torch.tensor(value)

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (set_scheduler("last_epoch", 10**6), "its scheduler is at step 1000000, but epoch 1 of 5 optimiser steps ends"),
        (set_scheduler("last_epoch", 4), "its scheduler is at step 4, but epoch 1 of 5 optimiser steps ends at step 5"),
        (set_scheduler("_step_count", 1), "scheduler '_step_count' must be 6 after step 5, not 1"),
        (set_scheduler("base_lrs", [1.0, 1.0]), "scheduler 'base_lrs' [1.0, 1.0] are not the run's train.lr 0.005"),
        (set_group("lr", 100.0), "optimizer group 0 'lr' 100 is not the run's 0.00384615 at step 5"),
        (set_steps(1e6), "(target_missing) 'step' 1e+06 must be a whole number of at most the state's 5 steps)"),
        (set_steps(2.5), "(target_missing) 'step' 2.5 must be a whole number of at most the state's 5 steps)"),
    ],
)
def test_a_step_count_or_rate_that_disagrees_with_the_epoch_is_one_line(stopped_run, tmp_path, capsys, edit, message):
    """A state of epoch 1 (5 steps per epoch) whose scheduler or Adam step counts are elsewhere (hand
    edited, or another run's): the resume went on at another point of the learning-rate schedule (at
    step 10^6: a rate of 0 to the end) or with another bias correction, without a word."""
    out, files = copy_of(stopped_run, tmp_path, edit)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'train_state.pt'}: not a ramer training state (" in err and message in err, err
    assert one_error_line(err) and files_of(out) == files


def test_a_weight_average_of_another_step_count_is_one_line(tmp_path, capsys):
    """The weight average's step count sets its warm-up (``ramer.train.ema``): one that is not the
    state's epochs' steps is refused as the scheduler's is; the state as saved resumes."""
    from test_recipe import Stop, stop_after, tiny_cfg

    from ramer.data.synthetic import generate
    from ramer.train.recipe import Recipe

    cfg = tiny_cfg(extra=["train.ema_decay=0.9"])
    out = tmp_path / "run"
    with pytest.raises(Stop):
        Recipe(cfg, out, bundle=generate(cfg.data.synthetic), hooks=(stop_after(1),)).run()
    saved = (out / "train_state.pt").read_bytes()
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["ema"]["steps"] == 5
    state["ema"]["steps"] = 10**6
    torch.save(state, out / "train_state.pt")
    files = files_of(out)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    said = "not a ramer training state (the weight average has 1000000 steps, but its epochs end at step 5)"
    assert f"{out / 'train_state.pt'}: {said}" in err and one_error_line(err), err
    assert files_of(out) == files
    (out / "train_state.pt").write_bytes(saved)
    assert main(["train", "--resume", str(out)]) == 0, capsys.readouterr().err


def test_a_run_with_no_best_epoch_yet_resumes_without_its_model_file(stopped_run, tmp_path, capsys):
    """A training state whose best epoch is 0 needs no model file (``_check_best_weights``); the
    check of the task a run was trained for read that file all the same and stopped the resume with
    'no readable data spec (FileNotFoundError ...)'. It resumes and finishes."""

    def no_best(state):
        state["best"]["epoch"] = 0

    out, _ = copy_of(stopped_run, tmp_path, no_best)
    (out / "model.safetensors").unlink()
    assert main(["train", "--resume", str(out)]) == 0, capsys.readouterr().err
    assert (out / "test_metrics.json").is_file()
