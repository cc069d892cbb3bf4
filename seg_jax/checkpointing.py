"""Orbax checkpoints in `<workdir>/checkpoints/<step>`: the train state and the input position.

Each checkpoint holds two items: `default/`, the train state, and `data_state/`, a small JSON
of the input pipeline's position (see `seg_jax.data.pipeline.TrainLoader.data_state`), so a
resumed run checks that it continues the same stream with the next batch. Checkpoints written
before the data state existed (only `default/`) still restore.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a crash
or kill mid-save leaves no half-written checkpoint under a step's name. Should one be damaged
anyway (a disk that filled or a file lost after the rename), `restore_latest` moves it aside as
`<step>.unreadable-<time>` with a warning and falls back to the next newest, so a resumed run
never loads a partial state and never stops on one.
"""

import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from seg_jax import errors


STATE_ITEM = "default"  # the name a single-item checkpoint used: older checkpoints still load
DATA_ITEM = "data_state"


def create_manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory, item_names=(STATE_ITEM, DATA_ITEM), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict | None = None) -> None:
    """Saves `state` (and the JSON `data_state`) at `step`, asynchronously.

    `manager.wait_until_finished()` blocks until it is complete.
    """
    if manager.latest_step() == step:
        return  # already saved, e.g. the last periodic save coincided with the final step
    items = {STATE_ITEM: ocp.args.StandardSave(state)}
    if data_state is not None:
        items[DATA_ITEM] = ocp.args.JsonSave(data_state)
    manager.save(step, args=ocp.args.Composite(**items), force=True)


def read_data_state(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """The input position saved with checkpoint `step`, or None if it has none."""
    if not os.path.isdir(os.path.join(str(manager.directory), str(step), DATA_ITEM)):
        return None
    restored = manager.restore(step, args=ocp.args.Composite(**{DATA_ITEM: ocp.args.JsonRestore()}))
    return dict(restored[DATA_ITEM])


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the step, the cause and the fix."""


def write_error(manager: ocp.CheckpointManager, step: int, error: BaseException,
                last_good: int | None) -> CheckpointWriteError:
    """A `CheckpointWriteError` for a failed save of `step`, naming the last good checkpoint."""
    cause = getattr(error, "strerror", None) or _short(error) or type(error).__name__
    kept = (f"the last complete checkpoint (step {last_good}) is untouched"
            if last_good is not None else "no complete checkpoint was written yet")
    return CheckpointWriteError(
        f"Could not write the step-{step} checkpoint to {manager.directory} ({cause}); {kept}. "
        "Free disk space or restore the workdir, then re-run the same command to resume.")


def _short(error: BaseException, limit: int = 300) -> str:
    # tensorstore appends its whole JSON spec to an error: keep the part a person reads.
    text = str(error).split(" [tensorstore_spec")[0]
    return text if len(text) <= limit else text[:limit] + " ..."


def _move_aside(manager: ocp.CheckpointManager, step: int, problem: str) -> None:
    """Process 0 renames the checkpoint; every process waits for that before reloading, so all
    of them list the same steps afterwards (a manager that still listed the damaged step would
    skip a later save of that step that the others make, and the run would hang)."""
    if jax.process_index() == 0:
        source = os.path.join(str(manager.directory), str(step))
        target = f"{source}.unreadable-{int(time.time())}"
        os.replace(source, target)
        logging.warning("Checkpoint step %d is unreadable (%s); moved aside to %s.", step,
                        problem, target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    manager.reload()


def _agree(problem: str | None) -> str | None:
    """`problem` if this process failed to read the checkpoint, else whether any other did.

    Processes read their own shards, so one may fail where another succeeds; all must then
    fall back together (one restoring step N while another tries N - 1 would hang the run).
    """
    if jax.process_count() == 1:
        return problem
    failed = multihost_utils.process_allgather(np.array([problem is not None]))
    if problem is None and np.any(failed):
        problem = f"unreadable on process(es) {np.flatnonzero(failed).tolist()}"
    return problem


WEIGHTS = ("raw", "ema")  # the weights inference can use: the trained ones or their average


def restore_model_variables(manager: ocp.CheckpointManager, abstract_variables, *,
                            weights: str = "raw"):
    """`(variables, step)`: the 'params' and 'batch_stats' of the newest checkpoint, or `(None, 0)`.

    Only what inference needs is read (no optimizer state), so the model's abstract variables
    (`jax.ShapeDtypeStruct`s with shardings) are all it takes. `weights='ema'` reads the moving
    average of the weights instead (a run trained with config.ema_decay > 0). A checkpoint of
    another model (shapes that do not match), or without a moving average when one is asked for,
    is an error naming the fix.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}; choose one of {WEIGHTS}.")
    step = manager.latest_step()
    if step is None:
        return None, 0
    logging.info("Restoring the %s model variables of checkpoint step %d from %s",
                 "moving-average" if weights == "ema" else "trained", step, manager.directory)
    wanted = {"ema": abstract_variables} if weights == "ema" else abstract_variables
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeRestore(
            wanted, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(wanted))}))
    except (ValueError, TypeError) as e:
        if weights == "ema" and "'ema'" in str(e):
            raise errors.ConfigError(
                f"The step-{step} checkpoint in {manager.directory} holds no moving average of "
                f"the weights (it was trained with config.ema_decay=0); predict with the trained "
                f"weights (--predict.weights=raw) or train with config.ema_decay > 0.") from e
        raise errors.IncompatibleWorkdirError(
            f"The step-{step} checkpoint in {manager.directory} does not fit this "
            f"config's model ({_short(e)}); pass the config the run was trained with.") from e
    variables = dict(restored[STATE_ITEM])
    return dict(variables["ema"]) if weights == "ema" else variables, step


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
    """Returns `(state, step)` from the newest readable checkpoint, or `(None, 0)` if none.

    `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with shardings) gives the structure,
    dtypes and device placement to restore into. A checkpoint that cannot be read is moved aside
    (renamed `<step>.unreadable-<time>`, never deleted) with a warning, and the next newest is
    tried. A checkpoint of a different model (shapes that do not match) is not damaged: that
    error propagates.
    """
    for step in sorted(manager.all_steps(), reverse=True):
        logging.info("Restoring checkpoint at step %d from %s", step, manager.directory)
        problem = None
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardRestore(abstract_state)}))
        except ValueError as e:
            if "shape" in str(e).lower() or "structure" in str(e).lower():
                raise errors.IncompatibleWorkdirError(
                    f"The step-{step} checkpoint in {manager.directory} does not fit this "
                    f"config's model ({e}); use a new --workdir for a different model.") from e
            problem = _short(e)
        except (OSError, KeyError, RuntimeError) as e:
            problem = f"{type(e).__name__}: {_short(e)}"
        problem = _agree(problem)
        if problem is None:
            return restored[STATE_ITEM], step
        _move_aside(manager, step, problem)
    return None, 0
