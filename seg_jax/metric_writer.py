"""Writes scalars to `metrics.jsonl` and TensorBoard event files (tensorboardX: no TensorFlow)."""

import json
import math
import os
import time

import jax
from absl import logging

from seg_jax import reporting
from seg_jax.reporting import format_duration  # one formatter, JAX-free for the sweep launcher


class MetricWriter:
    """Appends one JSON line per write to `<workdir>/metrics.jsonl` and logs TensorBoard scalars.

    Every line has `step`, `kind` ('train' or 'eval'), `time` (Unix seconds) and the scalars.
    Only process 0 writes; elsewhere the writer is silent, so multi-host runs log once.
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None, resume_step: int = 0):
        """`resume_step`: a run starting from this step (0: from scratch) first drops the lines
        of later steps, logged by an earlier run after its last checkpoint and about to be
        logged again."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            path = os.path.join(workdir, "metrics.jsonl")
            if os.path.exists(path):
                _drop_records_after(path, resume_step)
            self._jsonl = open(path, "a", encoding="utf-8")
            # Imported here: tensorboardX is only needed by the writing process.
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))

    def write_scalars(self, step: int, scalars: dict, *, kind: str) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        record = {"step": int(step), "kind": kind, "time": time.time(), **{
            k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()
        }}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in clean.items():
            self._tb.add_scalar(f"{kind}/{name}", value, global_step=int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _drop_records_after(path: str, step: int) -> None:
    """Rewrites the JSON-lines file at `path` without records of steps after `step` (atomically).

    A last line cut short by a kill mid-write is dropped too.
    """
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if record.get("step", 0) > step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        reporting.atomic_write(path, "".join(kept))
        logging.info("metrics.jsonl: dropped %d line(s) logged after step %d by an earlier run.",
                     dropped, step)


class Progress:
    """Measures steps/s over the last logging interval and estimates the time to the end."""

    def __init__(self, start_step: int, total_steps: int):
        self._total = total_steps
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def update(self, step: int) -> dict:
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        rate = (step - self._last_step) / elapsed
        self._last_step, self._last_time = step, now
        eta = (self._total - step) / rate if rate > 0 else float("inf")
        return {"steps_per_sec": rate, "eta_sec": eta}

    def reset_clock(self, step: int) -> None:
        """Restarts the measurement at `step`, leaving out time spent on compilation, evaluation
        or checkpointing since the last update."""
        self._last_step, self._last_time = step, time.perf_counter()


def log_progress(step: int, total: int, scalars: dict, progress: dict) -> None:
    logging.info(
        "step %d/%d  loss %.4f  lr %.3g  %.2f steps/s  ETA %s",
        step, total, scalars["loss"], scalars["learning_rate"],
        progress["steps_per_sec"], format_duration(progress["eta_sec"]),
    )
