"""Shared fixtures: the built-in dataset generated once per test session, and quick configs."""

import pytest

from configs import shapes as shapes_config


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
