"""Runs that survive faults: SIGTERM, kill -9 at random moments, NaN losses, failed checkpoint
writes, a vanished workdir and damaged checkpoints. Each ends with a clear message and a last
good checkpoint from which the same command resumes to the parameters of an uninterrupted run."""

import errno
import glob
import os
import shutil
import signal
import subprocess
import re
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from run_helpers import child_env, final_params, read_jsonl
from seg_jax import checkpointing, train
from seg_jax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_same_params(a, b):
    # Bitwise: on CPU the resumed computation is the same program on the same numbers.
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _train_records(workdir):
    return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def uninterrupted(finished_run):
    """The shared quick run's workdir and final parameters."""
    config, workdir, _ = finished_run
    return workdir, final_params(workdir, config.num_train_steps)


def _at_step(monkeypatch, step, action):
    """Runs `action(batch)` when the loader builds global batch `step` (0-based)."""
    original = pipeline.TrainLoader.batch

    def batch(self, s):
        out = original(self, s)
        if s == step:
            action(out)
        return out

    monkeypatch.setattr(pipeline.TrainLoader, "batch", batch)


def _serial_input(config):
    # One input thread, one batch ahead: an action at batch k then happens while step k - 1 runs.
    config.data.num_workers = 1
    config.data.prefetch = 1


def test_sigterm_checkpoints_the_current_step_and_resume_matches(
        uninterrupted, quick_config, tmp_path, monkeypatch):
    _serial_input(quick_config)
    workdir = str(tmp_path / "run")
    _at_step(monkeypatch, 12, lambda batch: os.kill(os.getpid(), signal.SIGTERM))
    result = train.train_and_evaluate(quick_config, workdir)
    assert result["preempted"] and 11 <= result["step"] <= 14
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert saved[-1] == result["step"]
    assert not os.path.exists(os.path.join(workdir, "results.json"))  # stopped before evaluating
    monkeypatch.undo()
    train.train_and_evaluate(quick_config, workdir)
    _assert_same_params(uninterrupted[1], final_params(workdir, 30))
    steps = [r["step"] for r in _train_records(workdir)]
    assert steps == sorted(set(steps)) and steps[-1] == 30


def test_sigterm_during_a_periodic_evaluation_stops_it_and_keeps_the_step(
        uninterrupted, quick_config, tmp_path, monkeypatch):
    quick_config.eval_every_steps = 10  # two batches of 8 images each time
    original = pipeline.eval_batches

    def notice_after_one_batch(*args, **kwargs):
        for i, batch in enumerate(original(*args, **kwargs)):
            yield batch
            if i == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pipeline, "eval_batches", notice_after_one_batch)
    workdir = str(tmp_path / "run")
    result = train.train_and_evaluate(quick_config, workdir)
    assert result == {"preempted": True, "step": 10}
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert saved == [10]
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert not [r for r in records if r.get("kind") == "eval"]  # the cut evaluation is not kept
    monkeypatch.undo()
    quick_config.eval_every_steps = 0
    train.train_and_evaluate(quick_config, workdir)
    _assert_same_params(uninterrupted[1], final_params(workdir, 30))


MIN_STEP_S = 2.0  # a slow step: the preemption bound is in step times


def test_sigterm_on_a_slow_run_checkpoints_within_two_steps(shapes_data_dir, tmp_path):
    """Steps are dispatched ahead of the device; a notice must not wait for a queue of them.
    One device (several CPU devices run a step synchronously, so nothing would queue), 40 steps
    of about MIN_STEP_S with no logging or checkpoint before the end; SIGTERM three steps after
    the compiled first one. Bound: two step times from the signal to exit, plus 15 s."""
    import slow_loss

    repeats, step_s = slow_loss.calibrate(MIN_STEP_S)
    workdir = str(tmp_path / "run")
    args = [*_cli(workdir, shapes_data_dir), "--config.extra_modules=('tests/slow_loss.py',)",
            "--config.loss.name=slow_cross_entropy", "--config.num_train_steps=40",
            "--config.log_every_steps=40", "--config.checkpoint_every_steps=40",
            "--config.eval_every_steps=0"]
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=child_env(1, SLOW_LOSS_REPEATS=str(repeats)))
    try:
        deadline = time.monotonic() + 300
        while "First step (with compilation)" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        time.sleep(3 * step_s)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        stopped_after = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    print(f"SIGTERM to exit: {stopped_after:.1f} s, steps of {step_s:.2f} s")  # for README
    assert rc == 0, log[-3000:]
    stopped = re.search(r"Stopped by SIGTERM at step (\d+)", log)
    assert stopped and int(stopped.group(1)) < 40, log[-3000:]
    assert stopped_after <= 2 * step_s + 15, (
        f"{stopped_after:.1f} s from SIGTERM to exit with steps of {step_s:.1f} s")
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert saved == [int(stopped.group(1))]


def test_an_unreadable_example_stops_with_a_checkpoint_of_the_last_step(
        quick_config, tmp_path, monkeypatch):
    from seg_jax import errors

    _serial_input(quick_config)

    def unreadable(batch):
        raise errors.DataError("Could not read example 7 for step 9: boom.")

    _at_step(monkeypatch, 8, unreadable)  # the batch of step 9
    workdir = str(tmp_path / "run")
    with pytest.raises(errors.DataError, match=r"example 7 .* checkpoint of step 8 .*resume"):
        train.train_and_evaluate(quick_config, workdir)
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert saved[-1] == 8


def test_running_out_of_memory_at_the_first_step_names_batch_and_crop(
        quick_config, tmp_path, monkeypatch):
    from seg_jax import errors

    def out_of_memory(state, batch):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456789 bytes.")

    monkeypatch.setattr(train.Experiment, "_jit_train_step", lambda self, loss_fn: out_of_memory)
    with pytest.raises(errors.ResourceError, match=r"batch_size=8 .*crop_size=64.*accumulate"):
        train.train_and_evaluate(quick_config, str(tmp_path / "run"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        quick_config, tmp_path, monkeypatch):
    _serial_input(quick_config)
    workdir = str(tmp_path / "run")

    def poison(batch):
        batch["image"][0, 0, 0, 0] = np.nan

    _at_step(monkeypatch, 11, poison)  # batch 11 is trained by step 12
    with pytest.raises(FloatingPointError, match=r"Loss became nan at step 12\. The last good "
                                                 r"checkpoint \(step 10\) is kept"):
        train.train_and_evaluate(quick_config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
    params = final_params(workdir, 10)
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_nan_policy_skip_leaves_out_the_update_and_counts_it(quick_config, tmp_path, monkeypatch):
    _serial_input(quick_config)
    quick_config.nan_policy = "skip"
    workdir = str(tmp_path / "run")

    def poison(batch):
        batch["image"][0, 0, 0, 0] = np.nan

    _at_step(monkeypatch, 11, poison)
    results = train.train_and_evaluate(quick_config, workdir)
    assert np.isfinite(results["mean_iou"])
    records = {r["step"]: r for r in _train_records(workdir)}
    assert records[10]["skipped_steps"] == 0 and records[15]["skipped_steps"] == 1
    assert records[30]["skipped_steps"] == 1 and np.isfinite(records[15]["loss"])
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(final_params(workdir, 30)))


def test_too_many_skips_in_a_row_stop_the_run(quick_config, tmp_path, monkeypatch):
    _serial_input(quick_config)
    quick_config.nan_policy = "skip"
    quick_config.nan_max_consecutive_skips = 3
    original = pipeline.TrainLoader.batch

    def poisoned(self, s):
        batch = original(self, s)
        if s >= 12:
            batch["image"][:] = np.nan
        return batch

    monkeypatch.setattr(pipeline.TrainLoader, "batch", poisoned)
    with pytest.raises(FloatingPointError, match=r"3 updates in a row .* at step 15"):
        train.train_and_evaluate(quick_config, str(tmp_path / "run"))


def test_a_failed_checkpoint_write_names_the_last_good_one(quick_config, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    original = ocp.CheckpointManager.save

    def disk_full(self, step, *args, **kwargs):
        if step == 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full)
    with pytest.raises(checkpointing.CheckpointWriteError,
                       match=r"step-20 checkpoint .*No space left on device.*last complete "
                             r"checkpoint \(step 10\) is untouched"):
        train.train_and_evaluate(quick_config, workdir)
    monkeypatch.undo()
    results = train.train_and_evaluate(quick_config, workdir)  # resumes from step 10
    assert results["step"] == 30


def test_an_error_of_a_background_save_surfaces_at_the_next_save(quick_config, tmp_path,
                                                                  monkeypatch):
    workdir = str(tmp_path / "run")
    original = ocp.CheckpointManager.wait_until_finished
    calls = {"n": 0}

    def failing_wait(self):
        original(self)
        if self.latest_step() == 20 and calls["n"] == 0:
            calls["n"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", failing_wait)
    with pytest.raises(checkpointing.CheckpointWriteError,
                       match=r"step-20 checkpoint .*last complete checkpoint \(step 10\)"):
        train.train_and_evaluate(quick_config, workdir)


def test_a_removed_workdir_is_a_clear_error(quick_config, tmp_path, monkeypatch):
    _serial_input(quick_config)
    workdir = str(tmp_path / "run")
    # Moved away in one step (a recursive delete races with the checkpoint writer's files); orbax
    # may recreate the path for a save in flight, which must not fool the check either.
    _at_step(monkeypatch, 12, lambda batch: os.rename(workdir, workdir + ".gone"))
    with pytest.raises(FileNotFoundError, match=r"disappeared while training \(at step 15\)"):
        train.train_and_evaluate(quick_config, workdir)


def test_a_damaged_checkpoint_is_moved_aside_and_the_previous_one_resumes(
        uninterrupted, quick_config, tmp_path):
    finished, expected = uninterrupted
    workdir = str(tmp_path / "run")
    for step in ("10", "20"):
        shutil.copytree(os.path.join(finished, "checkpoints", step),
                        os.path.join(workdir, "checkpoints", step))
    # Step 20 lost its data after the rename; a save killed mid-write left a temporary folder.
    for path in glob.glob(os.path.join(workdir, "checkpoints", "20", "default", "**", "*.ocdbt"),
                          recursive=True):
        open(path, "wb").close()
    os.makedirs(os.path.join(workdir, "checkpoints", "30.orbax-checkpoint-tmp-1234", "default"))
    train.train_and_evaluate(quick_config, workdir)
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    assert any(n.startswith("20.unreadable-") for n in names)
    _assert_same_params(expected, final_params(workdir, 30))


def _cli(workdir, data_dir):
    # With a moving average of the weights, which must survive the kills too.
    return [sys.executable, "-m", "seg_jax.main", "--config=configs/shapes.py:quick",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            "--config.keep_checkpoints=3", "--config.ema_decay=0.9"]


def _final_ema(workdir):
    path = os.path.join(workdir, "checkpoints", "30", checkpointing.STATE_ITEM)
    return ocp.StandardCheckpointer().restore(path)["ema"]


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_parameters(
        shapes_data_dir, tmp_path):
    # The reference is a command-line run too (the runner sets its CPU XLA flags itself). Every
    # run gets one CPU device, not the session's 4: the command as run on a plain machine, and
    # about twice as fast here (the in-process tests above resume on 4 devices).
    env = child_env(1)
    reference = str(tmp_path / "reference")
    start = time.perf_counter()
    subprocess.run(_cli(reference, shapes_data_dir), cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    duration = time.perf_counter() - start
    expected = final_params(reference, 30)
    expected_ema = _final_ema(reference)
    rng = np.random.default_rng(0)
    # Two kills, one in each half of the run's span that checkpoints (each trial costs two
    # command-line runs; CI's time limit holds two).
    for trial, (low, high) in enumerate([(0.3, 0.6), (0.6, 0.9)]):
        workdir = str(tmp_path / f"killed_{trial}")
        proc = subprocess.Popen(_cli(workdir, shapes_data_dir), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(low, high) * duration
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        resumed = subprocess.run(_cli(workdir, shapes_data_dir), cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        _assert_same_params(expected, final_params(workdir, 30))
        _assert_same_params(expected_ema, _final_ema(workdir))
        steps = [r["step"] for r in _train_records(workdir)]
        assert steps == [5, 10, 15, 20, 25, 30], f"trial {trial}, killed after {delay:.1f} s"
