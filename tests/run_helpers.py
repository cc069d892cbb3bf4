"""Reading a finished run's workdir in tests: its checkpointed parameters and metrics.jsonl."""

import json
import os

import orbax.checkpoint as ocp

from seg_jax import checkpointing


def final_params(workdir, step):
    """The parameters of checkpoint `step` (the checkpoint's train-state item)."""
    path = os.path.join(workdir, "checkpoints", str(step), checkpointing.STATE_ITEM)
    return ocp.StandardCheckpointer().restore(path)["params"]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]
