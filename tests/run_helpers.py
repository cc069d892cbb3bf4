"""Reading a finished run's workdir in tests (its checkpointed parameters and metrics.jsonl), and
the environment of a test's subprocess."""

import json
import os
import re

import orbax.checkpoint as ocp

from seg_jax import checkpointing


def final_params(workdir, step):
    """The parameters of checkpoint `step` (the checkpoint's train-state item)."""
    path = os.path.join(workdir, "checkpoints", str(step), checkpointing.STATE_ITEM)
    return ocp.StandardCheckpointer().restore(path)["params"]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


_COUNT_FLAG = "--xla_force_host_platform_device_count"


def child_env(devices: int, **extra) -> dict:
    """This process's environment for a subprocess with `devices` CPU devices, plus `extra`.

    conftest.py gives the test session 4 devices through XLA_FLAGS, which a child would inherit;
    here the count is replaced by the child's own (other XLA flags pass through, so the runner
    still adds its CPU convolution flag only where the caller has not set one). SEG_JAX_*
    variables are dropped: a child reads its distributed settings from `extra` alone.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEG_JAX_")}
    flags = re.sub(rf"{_COUNT_FLAG}=\S*", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join([*flags, f"{_COUNT_FLAG}={devices}"])
    env.update(extra)
    return env
