"""seg_jax.models.pooling.max_pool: flax's value, and the gradient select-and-scatter gives."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax.models.pooling import max_pool


@pytest.mark.parametrize("shape, window, stride, padding", [
    ((2, 9, 7, 3), 3, 2, 1),   # the ResNet stem's pool on odd sizes
    ((1, 8, 8, 2), 3, 2, 1),
    ((2, 6, 5, 1), 2, 2, 0),
    ((1, 7, 7, 2), 3, 1, 1),   # overlapping windows at stride 1
    ((1, 5, 6, 2), 5, 3, 2),
])
def test_value_and_gradient_equal_flaxs_including_ties(shape, window, stride, padding):
    rng = np.random.default_rng(sum(shape) + window)
    # ReLU zeros (ties in a window) and repeated values: the first maximum in row-major order
    # must take the gradient, as select-and-scatter does.
    x = jnp.asarray(np.maximum(rng.integers(-3, 3, size=shape), 0), jnp.float32)
    reference = lambda x: nn.max_pool(x, (window, window), (stride, stride),
                                      ((padding, padding), (padding, padding)))
    ours = lambda x: max_pool(x, window, stride, padding)
    np.testing.assert_array_equal(ours(x), reference(x))
    cotangent = jnp.asarray(rng.normal(size=reference(x).shape), jnp.float32)
    grad = lambda f: jax.jit(lambda x: jax.vjp(f, x)[1](cotangent)[0])(x)
    # An input in several overlapping windows sums their gradients in another order: equal to
    # float rounding. Where windows do not overlap, bitwise.
    if stride >= window:
        np.testing.assert_array_equal(grad(ours), grad(reference))
    np.testing.assert_allclose(grad(ours), grad(reference), rtol=1e-6, atol=1e-6)


def test_bfloat16_gradient_keeps_the_dtype():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 6, 2)), jnp.bfloat16)
    grad = jax.grad(lambda x: jnp.sum(max_pool(x, 3, 2, 1).astype(jnp.float32)))(x)
    assert grad.dtype == jnp.bfloat16
    reference = jax.grad(lambda x: jnp.sum(nn.max_pool(
        x, (3, 3), (2, 2), ((1, 1), (1, 1))).astype(jnp.float32)))(x)
    np.testing.assert_array_equal(grad, reference)
