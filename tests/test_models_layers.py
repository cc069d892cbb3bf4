"""Tests of seg_jax.models.layers: golden parameter counts, PyTorch padding, BN momentum, resize,
and convolutions that leave out the kernel taps which only see padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax.models.layers import (
    BN_EPSILON,
    ConvBNAct,
    SeparableConvBNAct,
    conv_bn_act_or_separable,
    conv_without_padding_taps,
    resize_bilinear,
)


def _key(seed: int = 0) -> jax.Array:
    # The 'rbg' generator compiles ~10x faster than threefry on CPU (~0.1 s vs ~1 s per shape).
    return jax.random.key(seed, impl="rbg")


def _init_shapes(module, x):
    """Variable shapes of `module.init` without computing anything."""
    return jax.eval_shape(lambda: module.init(_key(0), x, train=False))


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_conv_bn_act_parameter_count_golden():
    # 3x3 conv 3 -> 8 without bias: 3*3*3*8 = 216 weights; BN: 8 gammas + 8 betas = 16.
    variables = _init_shapes(ConvBNAct(8, 3), jnp.zeros((1, 5, 5, 3)))
    assert _count(variables["params"]) == 216 + 16
    assert _count(variables["batch_stats"]) == 8 + 8  # running mean and variance
    with_bias = _init_shapes(ConvBNAct(8, 3, use_bias=True), jnp.zeros((1, 5, 5, 3)))
    assert _count(with_bias["params"]) == 216 + 8 + 16


def test_separable_conv_parameter_count_golden():
    # Depthwise 3x3 on 4 channels: 36 weights + BN 8; pointwise 4 -> 8: 32 weights + BN 16.
    variables = _init_shapes(SeparableConvBNAct(8, dilation=2), jnp.zeros((1, 9, 9, 4)))
    assert variables["params"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 4)
    assert _count(variables["params"]) == (36 + 8) + (32 + 16)


@pytest.mark.parametrize("c_in, c_out", [(4, 8), (304, 256)])
def test_separable_switch_saves_8_cin_cout_minus_11_cin_parameters_per_3x3_layer(c_in, c_out):
    # Standard: 9 c_in c_out weights + 2 c_out BN. Separable: depthwise 9 c_in + BN 2 c_in, then
    # pointwise c_in c_out + BN 2 c_out. Difference: 8 c_in c_out - 11 c_in, i.e. 212 for 4 -> 8
    # and 619,248 for 304 -> 256 (the first DeepLabv3+ decoder conv).
    x = jnp.zeros((1, 5, 5, c_in))
    standard = _init_shapes(conv_bn_act_or_separable(False)(c_out, 3, dilation=2), x)["params"]
    separable = _init_shapes(conv_bn_act_or_separable(True)(c_out, 3, dilation=2), x)["params"]
    assert _count(standard) == 9 * c_in * c_out + 2 * c_out
    assert _count(standard) - _count(separable) == {4: 212, 304: 619_248}[c_in]
    assert _count(standard) - _count(separable) == 8 * c_in * c_out - 11 * c_in


def test_strided_conv_pads_like_pytorch_not_like_same():
    # A kernel that reads only its top-left tap: with PyTorch's padding=1, output (i, j) of a
    # stride-2 3x3 conv reads input (2i - 1, 2j - 1). XLA's 'SAME' pads an even input 0 pixels at
    # the top and would read (2i, 2j) instead.
    x = jnp.arange(1 * 8 * 8 * 1, dtype=jnp.float32).reshape(1, 8, 8, 1) + 1.0
    layer = ConvBNAct(1, 3, strides=2, act=False)
    variables = layer.init(_key(0), x, train=False)
    kernel = jnp.zeros((3, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)
    params = {**variables["params"], "conv": {"kernel": kernel}}
    y = layer.apply({**variables, "params": params}, x, train=False)[0, :, :, 0]

    padded = np.pad(np.asarray(x[0, :, :, 0]), 1)
    expected = padded[0:8:2, 0:8:2] / np.sqrt(1.0 + BN_EPSILON)  # fresh BN: mean 0, var 1
    np.testing.assert_allclose(y, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "size, kernel_size, strides, dilation",
    [(33, 7, 2, 1), (64, 7, 2, 1), (47, 3, 2, 1), (47, 3, 1, 6), (20, 1, 2, 1)],
)
def test_conv_output_size_matches_pytorch_formula(size, kernel_size, strides, dilation):
    pad = dilation * (kernel_size - 1) // 2
    expected = (size + 2 * pad - dilation * (kernel_size - 1) - 1) // strides + 1  # torch.nn.Conv2d
    layer = ConvBNAct(2, kernel_size, strides=strides, dilation=dilation)
    images = jnp.zeros((1, size, size, 3))
    out = jax.eval_shape(lambda: layer.init_with_output(_key(0), images, train=False)[0])
    assert out.shape == (1, expected, expected, 2)


def test_batch_norm_momentum_equals_pytorch_momentum_0_1():
    x = jax.random.normal(_key(1), (4, 6, 6, 3)) * 2.0 + 5.0
    layer = ConvBNAct(3, 1, act=False)
    variables = layer.init(_key(0), x, train=False)
    _, updates = layer.apply(variables, x, train=True, mutable=["batch_stats"])
    conv_out = jnp.einsum("nhwc,cd->nhwd", x, variables["params"]["conv"]["kernel"][0, 0])
    batch_mean = conv_out.mean(axis=(0, 1, 2))
    # PyTorch: running = (1 - 0.1) * running + 0.1 * batch, starting from running mean 0.
    np.testing.assert_allclose(updates["batch_stats"]["bn"]["mean"], 0.1 * batch_mean, rtol=1e-4)


def test_bfloat16_computation_keeps_float32_params():
    layer = ConvBNAct(4, 3, dtype=jnp.bfloat16)
    x = jnp.ones((1, 6, 6, 3))
    variables = layer.init(_key(0), x, train=False)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    assert layer.apply(variables, x, train=False).dtype == jnp.bfloat16


def _pytorch_bilinear_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Independent NumPy port of PyTorch bilinear upsampling, align_corners=False; x: [h, w]."""

    def axis_weights(in_size, out_size):
        src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        src = np.maximum(src, 0.0)  # area_pixel_compute_source_index clamps negatives to 0
        lo = np.minimum(np.floor(src).astype(int), in_size - 1)
        hi = np.minimum(lo + 1, in_size - 1)
        frac = src - lo
        matrix = np.zeros((out_size, in_size))
        matrix[np.arange(out_size), lo] += 1.0 - frac
        matrix[np.arange(out_size), hi] += frac
        return matrix

    return axis_weights(x.shape[0], out_h) @ x @ axis_weights(x.shape[1], out_w).T


@pytest.mark.parametrize(
    "in_size, out_size", [((5, 6), (33, 47)), ((2, 3), (64, 64)), ((9, 8), (4, 3))]
)
def test_resize_bilinear_matches_pytorch_align_corners_false(in_size, out_size):
    x = np.random.default_rng(0).normal(size=(1, *in_size, 2)).astype(np.float32)
    y = resize_bilinear(jnp.asarray(x), *out_size)
    for channel in range(2):
        expected = _pytorch_bilinear_reference(x[0, :, :, channel].astype(np.float64), *out_size)
        np.testing.assert_allclose(y[0, :, :, channel], expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Kernel taps that only see padding are left out (conv_without_padding_taps).
# ----------------------------------------------------------------------------------------------

_NHWC = ("NHWC", "HWIO", "NHWC")


def _both_convs(x, kernel, strides, padding, dilation):
    dimension_numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _NHWC)
    plain = lambda x, k: jax.lax.conv_general_dilated(
        x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=dimension_numbers)
    pruned = lambda x, k: conv_without_padding_taps(
        x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=dimension_numbers)
    return plain, pruned


def test_leaving_out_padding_taps_changes_no_output_or_gradient():
    # Random sizes, kernels, strides, rates and asymmetric paddings, many with dead taps.
    rng = np.random.default_rng(0)
    checked = pruned_cases = 0
    while checked < 40:
        height, width = (int(v) for v in rng.integers(1, 12, size=2))
        k, stride = int(rng.choice([1, 3, 5])), int(rng.choice([1, 2]))
        rate = int(rng.integers(1, 16))
        lo, hi = (int(v) for v in rng.integers(0, 20, size=2))
        if (height + lo + hi - rate * (k - 1) - 1) < 0 or (width + lo + hi - rate * (k - 1) - 1) < 0:
            continue  # no output
        x = jnp.asarray(rng.normal(size=(2, height, width, 3)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
        plain, pruned = _both_convs(x, kernel, (stride, stride), [(lo, hi), (hi, lo)], (rate, rate))
        np.testing.assert_allclose(pruned(x, kernel), plain(x, kernel), rtol=1e-5, atol=1e-5)
        cotangent = jnp.asarray(rng.normal(size=plain(x, kernel).shape), jnp.float32)
        for argnum in (0, 1):
            grad = lambda f: jax.vjp(lambda *a: f(*a), x, kernel)[1](cotangent)[argnum]
            np.testing.assert_allclose(grad(pruned), grad(plain), rtol=1e-5, atol=1e-5)
        pruned_kernel = jax.make_jaxpr(pruned)(x, kernel).eqns[-1].invars[1].aval.shape
        pruned_cases += pruned_kernel != kernel.shape
        checked += 1
    assert pruned_cases >= 10  # the cases above do exercise the cut


@pytest.mark.parametrize("rate, kernel_taps", [(36, (1, 1)), (12, (3, 3)), (24, (3, 3))])
def test_aspp_rates_past_the_feature_map_become_their_centre_tap(rate, kernel_taps):
    # ASPP on the 32 x 32 map of a 256 px input at output stride 8: rate 36 reaches only padding
    # off the centre (a 1x1 conv); rates 12 and 24 still see the map with every tap.
    x = jnp.ones((1, 32, 32, 8))
    conv = ConvBNAct(4, 3, dilation=rate)
    variables = conv.init(jax.random.key(0), x, train=False)
    jaxpr = jax.make_jaxpr(lambda v: conv.apply(v, x, train=False))(variables)
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert [e.invars[1].aval.shape[:2] for e in convs] == [kernel_taps]
    # A 12 x 40 map: rate 36 cuts the rows only (a 1x3 window).
    wide = jnp.ones((1, 12, 40, 8))
    jaxpr = jax.make_jaxpr(lambda v: ConvBNAct(4, 3, dilation=36).apply(v, wide, train=False))(
        variables)
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert convs[0].invars[1].aval.shape[:2] == (1, 3)
