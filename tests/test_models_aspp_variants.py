"""Tests of the context-module option `model.aspp` ('full' | 'pooling_only' | 'none'): parameter
trees and counts worked by hand, what each output pixel depends on, validation, defaults, and
configs without the field (they build the full ASPP, as before the field existed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import models as model_configs
from seg_jax.models import ASPP, create_model
from seg_jax.models.aspp import ASPP_MODES, PointwiseProjection, check_aspp_mode, context_module
from model_helpers import init_shapes, random_variables

C_IN, C = 12, 8  # feature channels in, context module width


def _count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _module(mode, **kwargs):
    fields = dict(channels=C, atrous_rates=(1, 2), dropout_rate=0.0, separable=False,
                  dtype=jnp.float32)
    return context_module(mode, **{**fields, **kwargs})


def _features(seed=0, size=6):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(1, size, size, C_IN)), jnp.float32)


def _conv_bn(c_in, c_out, k=1):  # a bias-free conv and BatchNorm's scale and bias
    return k * k * c_in * c_out + 2 * c_out


def test_each_mode_has_the_branches_it_names():
    features = _features()
    full = init_shapes(_module("full"), features)["params"]
    pooling = init_shapes(_module("pooling_only"), features)["params"]
    none = init_shapes(_module("none"), features)["params"]
    assert sorted(full) == ["atrous0", "atrous1", "conv1x1", "pooling", "project"]
    assert sorted(pooling) == ["conv1x1", "pooling", "project"]
    assert sorted(none) == ["project"]
    assert pooling["project"]["conv"]["kernel"].shape == (1, 1, 2 * C, C)
    assert none["project"]["conv"]["kernel"].shape == (1, 1, C_IN, C)


def test_parameter_counts_match_the_hand_count():
    features = _features()
    branch_1x1 = _conv_bn(C_IN, C)
    assert _count(init_shapes(_module("none"), features)["params"]) == branch_1x1
    assert _count(init_shapes(_module("pooling_only"), features)["params"]) == (
        2 * branch_1x1 + _conv_bn(2 * C, C))
    assert _count(init_shapes(_module("full"), features)["params"]) == (
        2 * branch_1x1 + 2 * _conv_bn(C_IN, C, k=3) + _conv_bn(4 * C, C))


def test_pooling_only_ignores_the_rates_and_the_separable_switch():
    features = _features()
    a = init_shapes(_module("pooling_only", atrous_rates=(6, 12, 18)), features)
    b = init_shapes(_module("pooling_only", atrous_rates=(), separable=True), features)
    assert jax.tree.map(lambda x: x.shape, a) == jax.tree.map(lambda x: x.shape, b)


def test_aspp_without_image_pooling_drops_only_that_branch():
    params = init_shapes(ASPP(channels=C, atrous_rates=(3,), image_pooling=False),
                         _features())["params"]
    assert sorted(params) == ["atrous0", "conv1x1", "project"]
    assert params["project"]["conv"]["kernel"].shape == (1, 1, 2 * C, C)


def _response_to_one_pixel(module):
    """|change| of each output pixel when one input pixel, (0, 0), changes (eval mode)."""
    features = _features(size=7)
    variables = random_variables(module, features)
    apply = lambda x: module.apply(variables, x, train=False)  # noqa: E731
    changed = features.at[:, 0, 0].add(3.0)
    return np.abs(np.asarray(apply(changed) - apply(features))).max(axis=(0, 3))


def test_none_sees_only_the_pixel_below_it():
    response = _response_to_one_pixel(_module("none"))
    assert response[0, 0] > 0
    response[0, 0] = 0
    assert np.all(response == 0)


def test_pooling_only_sees_the_pixel_and_the_image_mean_and_full_sees_its_rates():
    # Image pooling makes every output depend on every input pixel.
    assert np.all(_response_to_one_pixel(_module("pooling_only")) > 0)
    # Without pooling, the rate-3 branch reaches (0, 0) from (3, 3) but not from (2, 2).
    response = _response_to_one_pixel(ASPP(channels=C, atrous_rates=(3,), dropout_rate=0.0,
                                           image_pooling=False))
    assert response[3, 3] > 0 and response[0, 3] > 0
    assert response[2, 2] == 0 and response[1, 0] == 0


def test_an_unknown_mode_is_refused_naming_the_valid_ones():
    assert check_aspp_mode("pooling_only") == "pooling_only"
    with pytest.raises(ValueError, match=r"model.aspp='pooling'; valid values: \['full', "
                                         r"'pooling_only', 'none'\]"):
        check_aspp_mode("pooling")
    config = model_configs.deeplabv3(num_classes=3, base_width=8, aspp_channels=8, aspp="off")
    with pytest.raises(ValueError, match="model.aspp='off'"):
        create_model(config)  # at construction, before any init


def _model_params(**fields):
    config = model_configs.deeplabv3(num_classes=3, base_width=8, aspp_channels=8, **fields)
    return init_shapes(create_model(config), jnp.zeros((1, 32, 32, 3)))["params"]


@pytest.mark.parametrize("mode", ASPP_MODES)
def test_both_deeplab_models_build_every_mode(mode):
    v3 = _model_params(aspp=mode)
    plus = init_shapes(create_model(model_configs.deeplabv3plus(
        num_classes=3, base_width=8, aspp_channels=8, low_level_channels=4, decoder_channels=8,
        aspp=mode)), jnp.zeros((1, 32, 32, 3)))["params"]
    expected = {"full": 6, "pooling_only": 3, "none": 1}[mode]  # default rates: 3 branches
    assert len(v3["aspp"]) == len(plus["aspp"]) == expected
    # The backbone and the head are the same whatever the context module.
    assert _count(v3["backbone"]) == _count(_model_params()["backbone"])
    assert v3["head"]["conv"]["kernel"].shape == (3, 3, 8, 8)


def test_the_default_is_full_and_a_config_without_the_field_builds_full():
    assert model_configs.deeplabv3().aspp == "full"
    assert default.get_config().model.aspp == "full"
    fields = model_configs.deeplabv3(num_classes=3, base_width=8, aspp_channels=8).to_dict()
    full = create_model(fields)
    del fields["aspp"]  # a config saved before the field existed
    old = create_model(fields)
    assert old.aspp == full.aspp == "full"
    assert old == full


def test_switch_model_keeps_the_mode():
    config = default.get_config()
    config.model.aspp = "none"
    model_configs.switch_model(config, "deeplabv3plus")
    assert config.model.aspp == "none"


def test_pointwise_projection_applies_dropout_in_training():
    module = PointwiseProjection(channels=C, dropout_rate=0.5)
    features = _features()
    variables = random_variables(module, features)
    out, _ = module.apply(variables, features, train=True, mutable=["batch_stats"],
                          rngs={"dropout": jax.random.key(0)})
    assert 0.3 < float(jnp.mean(out == 0)) < 0.9  # ReLU zeros plus about half dropped
    eval_out = module.apply(variables, features, train=False)
    assert float(jnp.mean(eval_out == 0)) < float(jnp.mean(out == 0))
