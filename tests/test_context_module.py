"""Tests of DilatedContextModule and the 'dilated_context' model: shapes, identity init, configs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import models as model_configs
from seg_jax.models import factory
from seg_jax.models.context import (
    HDC_DILATIONS,
    LARGE_WIDTH_MULTIPLIERS,
    DilatedContextModule,
    DilatedContextNet,
    identity_kernel_init,
)
from seg_jax.models.resnet import ResNet
from model_helpers import rbg_key


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _scores(shape=(2, 13, 17, 3), seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _jit_init(initializer, shape):
    return jax.jit(initializer, static_argnums=1)(rbg_key(), shape)


def _init_with_output(module, x):
    # Compiled as one program: op-by-op initialisation costs seconds for the large module.
    return jax.jit(module.init_with_output)(rbg_key(), x)


VARIANTS = {
    "basic": {},
    "large": dict(width_multipliers=LARGE_WIDTH_MULTIPLIERS),
    "separable": dict(separable=True),
    "early_skip": dict(early_skip=True),
    "gridding_with_skip": dict(dilations=(2, 2, 2), early_skip=True),
    "hdc": dict(dilations=HDC_DILATIONS),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shapes_are_kept(variant):
    module = DilatedContextModule(**VARIANTS[variant])
    x = jnp.zeros((2, 13, 17, 3))
    out = jax.eval_shape(lambda: module.init_with_output(rbg_key(), x)[0])
    assert out.shape == x.shape and out.dtype == jnp.float32


def test_parameter_counts():
    c = 21  # PASCAL VOC classes, as in the paper
    basic = jax.eval_shape(lambda: DilatedContextModule().init(rbg_key(), jnp.zeros((1, 8, 8, c))))
    # Seven 3x3 convs C -> C with bias, then a 1x1 C -> C with bias.
    assert _count(basic["params"]) == 7 * (9 * c * c + c) + (c * c + c)
    large = jax.eval_shape(lambda: DilatedContextModule(
        width_multipliers=LARGE_WIDTH_MULTIPLIERS).init(rbg_key(), jnp.zeros((1, 8, 8, 1))))
    widths = [1, 2, 2, 4, 8, 16, 32, 32]  # C = 1: input, then Table 1's large module
    expected = sum(9 * a * b + b for a, b in zip(widths[:-1], widths[1:])) + (32 + 1)
    assert _count(large["params"]) == expected
    skip = jax.eval_shape(lambda: DilatedContextModule(early_skip=True).init(
        rbg_key(), jnp.zeros((1, 8, 8, c))))
    # Concatenation: the final 1x1 reads C more channels, nothing else changes.
    assert _count(skip["params"]) == _count(basic["params"]) + c * c
    separable = jax.eval_shape(lambda: DilatedContextModule(separable=True).init(
        rbg_key(), jnp.zeros((1, 8, 8, c))))
    # Depthwise 3x3 (no bias) + pointwise 1x1 with bias, per layer.
    assert _count(separable["params"]) == 7 * (9 * c + c * c + c) + (c * c + c)


@pytest.mark.parametrize(
    "variant", ["basic", "separable", "early_skip", "gridding_with_skip", "hdc"]
)
def test_identity_init_passes_the_input_through(variant):
    module = DilatedContextModule(**VARIANTS[variant])
    x = _scores()
    out, variables = _init_with_output(module, x)
    # Each 3x3 layer ends in ReLU, so the module starts as relu(x): x wherever x >= 0.
    np.testing.assert_array_equal(out, jax.nn.relu(x))
    np.testing.assert_array_equal(module.apply(variables, jnp.abs(x)), jnp.abs(x))


def test_large_module_identity_init():
    x = jnp.abs(_scores((1, 6, 7, 3)))
    exact = DilatedContextModule(width_multipliers=LARGE_WIDTH_MULTIPLIERS, identity_noise=0.0)
    out, variables = _init_with_output(exact, x)
    np.testing.assert_allclose(out, x, rtol=1e-6, atol=1e-6)
    # C = 3 -> 6 channels: class a is copied to channels 2a and 2a + 1 with weight C / c = 1/2.
    kernel = variables["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(kernel[1, 1, 0], [0.5, 0.5, 0, 0, 0, 0])


def test_identity_noise_breaks_ties_and_stays_small():
    # The paper's epsilon: without it, channels copied from one class would stay equal forever.
    kernel = np.asarray(_jit_init(identity_kernel_init(3, noise=1e-3), (3, 3, 6, 12)))
    centre = kernel[1, 1]
    assert not np.array_equal(kernel[..., 0], kernel[..., 1])
    # The identity entries are exact (C / c_out = 1/4), the others small: std 1e-3 / 4.
    group = (np.arange(6)[:, None] * 3 // 6) == (np.arange(12)[None, :] * 3 // 12)
    np.testing.assert_array_equal(centre[group], 0.25)
    others = np.concatenate([centre[~group], kernel[0].ravel()])
    assert 0 < np.abs(others).max() < 0.25 * 1e-2
    assert np.isclose(others.std(), 0.25e-3, rtol=0.2)


def test_identity_kernel_groups_channels():
    kernel = _jit_init(identity_kernel_init(2), (3, 3, 2, 4))
    expected = np.zeros((3, 3, 2, 4))
    expected[1, 1] = [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]  # C / c_out = 2 / 4
    np.testing.assert_array_equal(kernel, expected)
    narrowing = _jit_init(identity_kernel_init(2), (1, 1, 4, 2))
    np.testing.assert_array_equal(narrowing[0, 0], [[1, 0], [1, 0], [0, 1], [0, 1]])


def test_random_init_is_not_the_identity():
    x = jnp.abs(_scores((1, 6, 7, 3)))
    out = _init_with_output(DilatedContextModule(dilations=(1, 2), identity_init=False), x)[0]
    assert not np.allclose(out, x, atol=0.1)


def test_runs_under_jit_in_bfloat16():
    module = DilatedContextModule(dtype=jnp.bfloat16, early_skip=True)
    x = _scores()
    variables = jax.jit(module.init)(rbg_key(), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out = jax.jit(module.apply)(variables, x)
    assert out.shape == x.shape and out.dtype == jnp.bfloat16
    # Identity init in bf16: relu(x) up to bf16 rounding of the input.
    np.testing.assert_allclose(np.asarray(out, np.float32), jax.nn.relu(x), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dilations=()), "dilations"),
        (dict(dilations=(1, 0, 2)), "dilations"),
        (dict(width_multipliers=(1, 2)), "one multiplier per 3x3 layer"),
        (dict(width_multipliers=(1, 1, 1, 1, 1, 1, 0)), "width_multipliers"),
    ],
)
def test_invalid_configurations_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DilatedContextModule(**kwargs).init(rbg_key(), jnp.zeros((1, 8, 8, 2)))


# ----------------------------------------------------------------------------- the model


def _config(**overrides) -> ml_collections.ConfigDict:
    config = model_configs.dilated_context(num_classes=5, backbone="resnet18", base_width=4)
    config.update(overrides)
    return config


def test_model_is_registered_with_its_defaults():
    model = factory.create_model(_config())
    assert isinstance(model, DilatedContextNet)
    assert model.backbone.output_stride == 8  # the paper's front-end stride
    assert tuple(model.dilations) == (1, 1, 2, 4, 8, 16, 1)
    assert model.width_multipliers is None and model.identity_init and not model.early_skip
    large = factory.create_model(_config(context_width="large", separable=True, early_skip=True,
                                         dilations=HDC_DILATIONS, dtype="bfloat16"))
    assert tuple(large.width_multipliers) == LARGE_WIDTH_MULTIPLIERS
    assert large.dtype == jnp.bfloat16 and large.separable and large.early_skip


@pytest.mark.parametrize("height, width", [(33, 47), (64, 64), (9, 13)])
def test_model_logits_have_the_input_size(height, width):
    model = factory.create_model(_config())
    images = jnp.zeros((2, height, width, 3))
    logits = jax.eval_shape(
        lambda: model.init_with_output(rbg_key(), images, train=False)[0].logits)
    assert logits.shape == (2, height, width, 5) and logits.dtype == jnp.float32


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(atrous_rates=(6, 12, 18)), "Unknown model config keys"),
        (dict(context_width="huge"), "context_width"),
        (dict(context_width="large", dilations=(1, 2, 5)), "needs 7 dilations"),
        (dict(dilations=(1, -2)), "dilations"),
        (dict(output_stride=4), "output_stride"),
    ],
)
def test_model_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        factory.create_model(_config(**overrides))


def test_model_missing_num_classes_is_rejected():
    config = _config()
    del config["num_classes"]
    with pytest.raises(ValueError, match="num_classes"):
        factory.create_model(config)


class _StrideEightBackbone(nn.Module):
    """A single 8x8/8 conv standing in for a ResNet: the model's wiring without its compile time."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images, *, train):
        del train
        conv = nn.Conv(8, (8, 8), strides=(8, 8), padding="VALID", dtype=self.dtype)
        return {"high_level": nn.relu(conv(images))}


def test_model_trains_under_jit_in_bfloat16():
    model = DilatedContextNet(
        num_classes=3, backbone=_StrideEightBackbone(dtype=jnp.bfloat16), dilations=(1, 2),
        early_skip=True, dtype=jnp.bfloat16,
    )
    images = _scores((2, 32, 32, 3), seed=1)
    variables = jax.jit(model.init, static_argnames="train")(rbg_key(), images, train=False)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))

    @jax.jit
    def loss_and_grads(params):
        def loss_fn(params):
            logits = model.apply({"params": params}, images, train=True).logits
            return jnp.mean((logits - 1.0) ** 2), logits

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, logits), grads = loss_and_grads(variables["params"])
    assert logits.shape == (2, 32, 32, 3) and logits.dtype == jnp.float32
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    # With identity init the gradient reaches the context module and, through it, the backbone.
    assert np.any(np.asarray(grads["context"]["final"]["kernel"]) != 0)
    assert np.any(np.asarray(grads["backbone"]["Conv_0"]["kernel"]) != 0)
