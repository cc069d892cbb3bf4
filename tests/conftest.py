"""Shared fixtures: the built-in dataset generated once per test session, quick configs, and one
finished quick run. Also gives the session 4 CPU devices, so the multi-device tests run under a
bare `python -m pytest`, and one persistent XLA compilation cache, so that the many runs of the
same quick config (in this process and in the tests' subprocesses) compile each program once."""

import atexit
import os
import shutil
import tempfile

# XLA reads XLA_FLAGS once, when JAX first creates its CPU backend; pytest imports this file before
# any test module, so this is early enough. A device count the caller chose is left alone (the
# multi-device tests then fail, not skip, when it is below 4). Subprocess tests set their own
# count: see run_helpers.child_env.
HOST_DEVICES = 4
_COUNT_FLAG = "--xla_force_host_platform_device_count"
_flags = os.environ.get("XLA_FLAGS", "")
if _COUNT_FLAG not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} {_COUNT_FLAG}={HOST_DEVICES}".strip()

# JAX reads these when it is imported, and subprocesses inherit them. A cache the caller chose is
# left alone; otherwise a fresh one per session, so no test ever reads a previous session's
# programs. Entries are keyed by the compiled program and XLA's flags, so a hit is the same
# executable a compilation would give (the numbers do not change).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="seg_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import pytest  # noqa: E402

from configs import shapes as shapes_config  # noqa: E402


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
    """A tfds data_dir holding the generated `shapes` dataset (both splits)."""
    from seg_jax.data import shapes

    data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    shapes.load_shapes("train", data_dir=data_dir)
    return data_dir


@pytest.fixture
def quick_config(shapes_data_dir):
    """A fresh copy of `configs/shapes.py:quick` reading the session data."""
    config = shapes_config.get_config("quick")
    config.data.data_dir = shapes_data_dir
    return config


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, shapes_data_dir):
    """One uninterrupted quick run shared by the tests that read it (keeps all three checkpoints):
    `(config, workdir, results)`. Tests may evaluate it again but never train in its workdir."""
    from seg_jax import train

    config = shapes_config.get_config("quick")
    config.data.data_dir = shapes_data_dir
    config.keep_checkpoints = 3
    workdir = str(tmp_path_factory.mktemp("quick_run"))
    results = train.train_and_evaluate(config, workdir)
    return config, workdir, results
