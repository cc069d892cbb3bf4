"""Every config file builds, is locked, and every name in it resolves to something real."""

import glob
import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from seg_jax import extensions, losses, optim
from seg_jax.data import datasets
from seg_jax.models import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# models.py holds the model blocks the configs are made from, not a config of its own.
CONFIG_MODULES = sorted(
    os.path.splitext(os.path.basename(p))[0]
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "models.py")
)


def _variants(module):
    return [None, *getattr(module, "VARIANTS", ())]


def _all_configs():
    for name in CONFIG_MODULES:
        module = importlib.import_module(f"configs.{name}")
        for variant in _variants(module):
            yield pytest.param(name, variant, id=f"{name}:{variant}" if variant else name)


@pytest.mark.parametrize("name,variant", list(_all_configs()))
def test_config_builds_and_names_resolve(name, variant):
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    with pytest.raises(AttributeError, match="Did you mean"):
        config.optimizer.learning_rat = 0.1  # locked: a typo is an error, not a new key
    assert config.data.name in datasets.DATASET_NAMES
    # Datasets say their class count; configs do not repeat it.
    assert config.data.num_classes is None and config.data.ignore_label is None
    info = datasets.DatasetInfo(name=config.data.name, class_names=("a", "b", "c"),
                                ignore_label=255, thing_classes=(1, 2), stuff_classes=(0,))
    config = datasets.with_dataset_info(config, info)
    assert config.model.num_classes == config.data.num_classes == 3
    assert config.loss.ignore_label == 255
    extensions.import_extra_modules(config)  # where a config's own losses register
    losses.get_loss(config.loss)
    optim.create_optimizer(config.optimizer, config.num_train_steps)
    model = create_model(config.model)
    size = config.data.crop_size
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    assert {"params", "batch_stats"} <= set(variables)


def test_shapes_quick_suits_device_and_kill_tests():
    config = importlib.import_module("configs.shapes").get_config("quick")
    assert config.batch_size % 8 == 0
    checkpoints_before_end = (config.num_train_steps - 1) // config.checkpoint_every_steps
    assert checkpoints_before_end >= 2


def test_config_files_import_no_jax():
    # The runner reads the config, then sets XLA flags (e.g. the CPU convolution flag) that JAX
    # reads once when it starts: a config importing JAX would silently drop them.
    code = ("import sys; " + "; ".join(f"import configs.{name}" for name in CONFIG_MODULES) +
            "; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"
