"""`validate_config`: one pass over every setting a mode needs, all problems reported at once,
before anything is built or compiled; and the typed panoptic evaluation options."""

import jax
import pytest

from configs import shapes as shapes_config
from seg_jax import sharding
from seg_jax.data import datasets
from seg_jax.panoptic_eval import PanopticEvalOptions
from seg_jax.validation import ConfigError, validate_config

INFO = datasets.DatasetInfo(name="toy", class_names=("sky", "disc", "bar"), ignore_label=255,
                            thing_classes=(1, 2), stuff_classes=(0,))


@pytest.fixture
def config():
    return datasets.with_dataset_info(shapes_config.get_config(), INFO)


@pytest.fixture
def mesh():
    return sharding.create_mesh(jax.devices()[:2])


def test_a_good_config_passes_in_every_mode(config, mesh):
    for mode in ("train", "eval", "predict"):
        validate_config(config, INFO, mesh, mode=mode)


def test_every_problem_is_listed_at_once(config, mesh):
    config.decision.rule = "argmax"
    config.nan_policy = "ignore"
    config.batch_size = 15
    config.decision.cost = ((0, 1), (1, 0))
    with pytest.raises(ConfigError) as error:
        validate_config(config, INFO, mesh, mode="train")
    message = str(error.value)
    assert message.startswith("The config has 4 problems:")
    assert "config.decision.rule='argmax'; choose 'map'" in message
    assert "config.nan_policy='ignore'" in message
    assert "config.batch_size=15 is not divisible by the 2 devices" in message
    assert "decision.cost must be [3, 3]" in message


def test_prediction_does_not_check_training_settings(config, mesh):
    config.nan_policy = "ignore"
    config.batch_size = 15
    config.num_train_steps = 0
    validate_config(config, INFO, mesh, mode="predict")
    validate_config(config, INFO, mesh, mode="eval")
    with pytest.raises(ConfigError, match="config.num_train_steps must be positive"):
        validate_config(config, INFO, mesh, mode="train")


def test_one_problem_is_its_own_message(config, mesh):
    config.evaluation.mode = "tiles"
    with pytest.raises(ConfigError, match=r"^config.evaluation.mode='tiles'; choose one of"):
        validate_config(config, INFO, mesh, mode="eval")


@pytest.mark.parametrize("key, value, message", [
    ("preset", "cityscapes", "Unknown panoptic preset 'cityscapes'"),
    ("nms_kernel", 4, "config.panoptic.nms_kernel=4 must be a positive odd number"),
    ("top_k", 0, "config.panoptic.top_k=0 must be positive"),
    ("max_segments", -1, "config.panoptic.max_segments=-1 must be positive"),
])
def test_panoptic_settings_are_checked_for_datasets_with_things(config, mesh, key, value, message):
    config.panoptic[key] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config, INFO, mesh, mode="eval")
    stuff_only = datasets.DatasetInfo(name="toy", class_names=("a", "b", "c"), ignore_label=255)
    validate_config(config, stuff_only, mesh, mode="eval")  # no panoptic evaluation to configure


def test_panoptic_options_come_typed_from_config_and_info(config):
    options = PanopticEvalOptions.from_config(config, INFO)
    assert options.thing_classes == (1, 2) and options.stuff_classes == (0,)
    assert (options.center_threshold, options.nms_kernel, options.top_k) == (0.1, 7, 32)
    assert (options.max_segments, options.preset) == (64, "coco")
    with pytest.raises(ValueError, match="needs a dataset with thing classes"):
        PanopticEvalOptions.from_config(
            config, datasets.DatasetInfo(name="toy", class_names=("a",), ignore_label=255))
