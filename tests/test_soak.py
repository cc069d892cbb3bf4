"""Soak (marked slow, not in CI): one `shapes` run interrupted 20 times, by SIGKILL and SIGTERM at
random moments, resumed each time, must end at the parameters of an uninterrupted run. Prints what
each interruption cost (steps redone after a kill, seconds from SIGTERM to exit)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from run_helpers import child_env, final_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 200
INTERRUPTIONS = 20


def _args(workdir, data_dir):
    return [sys.executable, "-m", "seg_jax.main", "--config=configs/shapes.py:quick",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            f"--config.num_train_steps={STEPS}", "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=10", "--config.eval_every_steps=0",
            "--config.keep_checkpoints=2"]


def _logged_steps(log: str) -> list[int]:
    return [int(m) for m in re.findall(rf"step (\d+)/{STEPS} ", log)]


def _wait_for_first_step(proc, log_path, timeout=300):
    deadline = time.monotonic() + timeout
    while "First step (with compilation)" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.slow
def test_twenty_kills_and_sigterms_over_one_run_end_at_the_uninterrupted_parameters(
        shapes_data_dir, tmp_path):
    env = child_env(1)
    reference = str(tmp_path / "reference")
    done = subprocess.run(_args(reference, shapes_data_dir), cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rates = [float(r) for r in re.findall(r"([\d.]+) steps/s", done.stderr)]
    step_s = 1.0 / float(np.median(rates[1:]))
    expected = final_params(reference, STEPS)

    rng = np.random.default_rng(0)
    workdir = str(tmp_path / "interrupted")
    events, attempt = [], 0
    while True:
        log_path = tmp_path / f"attempt_{attempt}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(_args(workdir, shapes_data_dir), cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        interrupt = len(events) < INTERRUPTIONS
        started = _wait_for_first_step(proc, log_path)
        if interrupt and started and proc.poll() is None:
            time.sleep(rng.uniform(0, 12) * step_s)
            kind = "SIGKILL" if rng.random() < 0.5 else "SIGTERM"
            signalled = time.monotonic()
            proc.send_signal(getattr(signal, kind))
            proc.wait(timeout=300)
            seconds = time.monotonic() - signalled
            log = log_path.read_text()
            reached = max(_logged_steps(log), default=None)
            event = {"attempt": attempt, "signal": kind, "exit_code": proc.returncode,
                     "last_logged_step": reached, "seconds_to_exit": round(seconds, 2)}
            if kind == "SIGTERM":  # (after the last step, the run just finishes)
                assert proc.returncode == 0, log[-3000:]
                stopped = re.search(r"Stopped by SIGTERM at step (\d+)", log)
                event["stopped_at"] = int(stopped.group(1)) if stopped else None
            events.append(event)
            interrupted = True
        else:
            interrupted = False
            assert proc.wait(timeout=900) == 0, log_path.read_text()[-3000:]
        # Where the next attempt resumes: the checkpoint the interruption left.
        saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
        if interrupted:
            events[-1]["resumes_at"] = max(saved, default=0)
            if events[-1]["last_logged_step"] is not None:
                events[-1]["steps_redone"] = (events[-1]["last_logged_step"]
                                              - events[-1]["resumes_at"])
        attempt += 1
        if max(saved, default=0) >= STEPS and not interrupted:
            break
        assert attempt < 60, events

    print(json.dumps({"step_s": step_s, "events": events}, indent=1))
    assert len(events) == INTERRUPTIONS
    for event in events:
        if event["signal"] == "SIGTERM" and event.get("stopped_at") is not None:
            assert event["resumes_at"] == event["stopped_at"], event  # nothing lost
    actual = final_params(workdir, STEPS)
    import jax

    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(actual)):
        np.testing.assert_array_equal(a, b)
