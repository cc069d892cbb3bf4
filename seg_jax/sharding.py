"""Data parallelism: one mesh axis over every device of every process.

The train state is replicated and batches are split along their leading axis. Because `jax.jit`
computes on the global (logical) arrays, BatchNorm statistics are over the whole global batch,
so the numbers are the same on 1 device or many.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_divisible(batch_size: int, mesh: Mesh, name: str) -> None:
    """Raises ValueError unless `batch_size` divides evenly over the mesh's devices."""
    num_devices = mesh.devices.size
    if batch_size % num_devices:
        lower = max(num_devices, batch_size // num_devices * num_devices)
        raise ValueError(
            f"{name}={batch_size} is not divisible by the {num_devices} devices "
            f"({jax.process_count()} process(es)); use a multiple of {num_devices}, "
            f"e.g. --{name}={lower} or --{name}={lower + num_devices}."
        )


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Places this process's part of a global batch on its devices, sharded along axis 0."""
    sharding = batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }
