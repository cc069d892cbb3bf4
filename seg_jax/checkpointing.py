"""Orbax checkpoints in `<workdir>/checkpoints/<step>`: the train state and the input position.

Each checkpoint holds two items: `default/`, the train state, and `data_state/`, a small JSON
of the input pipeline's position (see `seg_jax.data.pipeline.TrainLoader.data_state`), so a
resumed run checks that it continues the same stream with the next batch. Checkpoints written
before the data state existed (only `default/`) still restore.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a crash
or kill mid-save never leaves a half-written checkpoint where a resumed run would load it.
"""

import os

import orbax.checkpoint as ocp
from absl import logging


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


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
    """Returns `(state, step)` from the newest checkpoint, or `(None, 0)` if there is none.

    `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with shardings) gives the structure,
    dtypes and device placement to restore into.
    """
    step = manager.latest_step()
    if step is None:
        return None, 0
    logging.info("Restoring checkpoint at step %d from %s", step, manager.directory)
    restored = manager.restore(
        step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state)}))
    return restored[STATE_ITEM], step
