"""Orbax checkpoints of the train state in `<workdir>/checkpoints/<step>`.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a crash
or kill mid-save never leaves a half-written checkpoint where a resumed run would load it.
"""

import os

import orbax.checkpoint as ocp
from absl import logging


def create_manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
    """Saves `state` at `step` (asynchronously; `manager.wait_until_finished()` to block)."""
    if manager.latest_step() == step:
        return  # already saved, e.g. the last periodic save coincided with the final step
    manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
    """Returns `(state, step)` from the newest checkpoint, or `(None, 0)` if there is none.

    `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with shardings) gives the structure,
    dtypes and device placement to restore into.
    """
    step = manager.latest_step()
    if step is None:
        return None, 0
    logging.info("Restoring checkpoint at step %d from %s", step, manager.directory)
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    return state, step
