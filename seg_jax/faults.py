"""What keeps a run whole when things go wrong: preemption, non-finite losses, failed writes.

* `PreemptionWatch`: SIGTERM (a preemption notice) sets a flag that the training loop reads after
  every step; it then saves a checkpoint at that step and returns cleanly. With several processes
  JAX's preemption service picks one step for all of them, so every host stops at the same step.
* `NonFiniteGuard`: the `config.nan_policy` rule. 'stop' ends the run at the first non-finite loss,
  naming the step and the last good checkpoint (a diverged state is never checkpointed); 'skip'
  leaves out the updates whose loss or gradients were not finite (the train step keeps the old
  state) and counts them, stopping only after `config.nan_max_consecutive_skips` in a row.
* `CheckpointKeeper`: saves through orbax (asynchronously) and turns a failed write (disk full,
  workdir removed) into one clear error that names the last complete checkpoint, which orbax's
  write-then-rename leaves untouched.
"""

import os
import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from seg_jax import checkpointing

NAN_POLICIES = ("stop", "skip")


def _preemption_sync_manager():
    """JAX's preemption service of a multi-process run, or None (one process, or the service
    off: `jax_enable_preemption_service`)."""
    if jax.process_count() == 1:
        return None
    from jax._src import distributed  # where jax.distributed keeps its client and services

    return distributed.global_state.preemption_sync_manager


class PreemptionWatch:
    """A context in which SIGTERM asks the training loop to checkpoint and stop.

    One process: a SIGTERM handler sets a flag that `should_stop` reads. Several processes:
    every one must leave the loop at the same step. JAX's preemption service does that without
    a collective per step (`multihost_utils.reached_preemption_sync_point`): its SIGTERM handler,
    installed by `jax.distributed.initialize`, tells the coordinator, which picks the step after
    the furthest any process has reached and tells them all; until then asking costs nothing.
    Python's handler would replace that one, so none is installed then. With the service off, a
    flag per process is all-gathered every step instead (a host sync each step).

    Only the main thread can install signal handlers; elsewhere (a notebook's worker thread)
    the single-process watch is inert and SIGTERM keeps its usual effect.
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self._signals = signals
        self._previous = {}
        self.received = None  # the signal number, once one arrived (here, or on any process)
        self._sync_manager = _preemption_sync_manager()

    def _handler(self, signum, frame):
        del frame
        if self.received is None:
            logging.warning("Received %s: saving a checkpoint after this step, then stopping.",
                            signal.Signals(signum).name)
        self.received = signum

    def __enter__(self):
        if (self._sync_manager is None
                and threading.current_thread() is threading.main_thread()):
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def interrupts_evaluation(self) -> bool:
        """Whether a periodic evaluation should stop before its next batch: a notice reached
        this run and it is a single process. (With several, the evaluation's collectives need
        every process, which only agree on the stop at a train step: it finishes first.)"""
        return jax.process_count() == 1 and self.received is not None

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop: True on every process at the same step once
        any process has received the signal. Called once for every step, in order."""
        if self._sync_manager is not None:
            if not multihost_utils.reached_preemption_sync_point(step):
                return False
            logging.warning("A preemption notice reached the run: every process saves a "
                            "checkpoint at step %d and stops.", step)
            self.received = self.received or signal.SIGTERM
            return True
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        flags = multihost_utils.process_allgather(np.array([local]))
        return bool(np.any(flags))


def check_nan_policy(policy: str, max_consecutive_skips: int) -> None:
    """`config.nan_policy` and `config.nan_max_consecutive_skips`; raises ValueError naming them."""
    if policy not in NAN_POLICIES:
        raise ValueError(f"config.nan_policy={policy!r}; choose 'stop' (end the run at the "
                         "first non-finite loss) or 'skip' (leave out such updates).")
    if max_consecutive_skips < 1:
        raise ValueError("config.nan_max_consecutive_skips must be at least 1, got "
                         f"{max_consecutive_skips}.")


class NonFiniteGuard:
    """Checks the losses (and skip flags) of the steps since the last check."""

    def __init__(self, policy: str, max_consecutive_skips: int):
        check_nan_policy(policy, max_consecutive_skips)
        self.policy = policy
        self.max_consecutive = max_consecutive_skips
        self.total_skipped = 0
        self._consecutive = 0

    def check(self, losses, skipped, first_step: int, last_good_step: int) -> None:
        """`losses` and `skipped` of steps first_step + 1, first_step + 2, ... (host arrays).

        Raises FloatingPointError naming the step and the last good checkpoint.
        """
        losses = np.asarray(losses, np.float64)
        skipped = np.asarray(skipped, bool)
        for i, (loss, skip) in enumerate(zip(losses, skipped)):
            step = first_step + i + 1
            if self.policy == "stop" and not np.isfinite(loss):
                raise FloatingPointError(
                    f"Loss became {loss} at step {step}. The last good checkpoint (step "
                    f"{last_good_step}) is kept; lower config.optimizer.learning_rate, set "
                    "config.optimizer.grad_clip_norm, check the data, or set "
                    "config.nan_policy='skip', then re-run to resume.")
            if skip:
                self.total_skipped += 1
                self._consecutive += 1
                logging.warning("Step %d: non-finite loss or gradients (loss %s); update skipped "
                                "(%d skipped so far).", step, loss, self.total_skipped)
                if self._consecutive >= self.max_consecutive:
                    raise FloatingPointError(
                        f"{self._consecutive} updates in a row had non-finite losses or "
                        f"gradients (the last at step {step}; config.nan_max_consecutive_skips="
                        f"{self.max_consecutive}). The last good checkpoint (step "
                        f"{last_good_step}) is kept; lower the learning rate or check the data.")
            else:
                self._consecutive = 0


def _identity(path: str):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class CheckpointKeeper:
    """Saves checkpoints, surfacing write failures of orbax's background saves as one error."""

    def __init__(self, manager, workdir: str, last_complete: int | None):
        self.manager = manager
        self.workdir = workdir
        self.last_complete = last_complete  # newest step known to be fully written
        self._in_flight = None  # step of a save that may still be writing
        # A removed workdir can reappear (orbax creates the folders it saves into), so identity,
        # not existence, tells that it is still the run's.
        self._identity = _identity(workdir)

    @property
    def last_saved(self) -> int:
        """The newest checkpoint step saved or being saved (0: none yet)."""
        return self._in_flight or self.last_complete or 0

    def finish_quietly(self) -> None:
        """On the way out of a failed run: lets a save in flight complete, logging any error."""
        try:
            self.wait()
        except checkpointing.CheckpointWriteError as e:
            logging.error("%s", e)

    def check_workdir(self, step: int) -> None:
        """Raises if the workdir vanished (removed, replaced or unmounted) while training."""
        if _identity(self.workdir) != self._identity:
            raise FileNotFoundError(
                f"The workdir {self.workdir} disappeared while training (at step {step}); its "
                "checkpoints went with it. Restore it (or choose a new --workdir) and re-run.")

    def wait(self) -> None:
        """Blocks until the save in flight is written; raises CheckpointWriteError if it failed."""
        if self._in_flight is None:
            return
        try:
            self.manager.wait_until_finished()
            self.manager.reload()  # list the steps on disk, not the manager's memory of them
            if self._in_flight not in self.manager.all_steps():
                raise OSError(f"step {self._in_flight} is missing after the save")
        except Exception as e:  # orbax re-raises its writer's error here, of any type
            failed, self._in_flight = self._in_flight, None
            raise checkpointing.write_error(self.manager, failed, e, self.last_complete) from e
        self.last_complete, self._in_flight = self._in_flight, None

    def save(self, step: int, state, data_state: dict, *, wait: bool = False) -> None:
        """Saves `step` after checking that the previous save completed."""
        self.check_workdir(step)
        self.wait()
        try:
            checkpointing.save(self.manager, step, state, data_state)
        except Exception as e:
            raise checkpointing.write_error(self.manager, step, e, self.last_complete) from e
        self._in_flight = step
        if wait:
            self.wait()
