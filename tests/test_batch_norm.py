"""seg_jax.models.batch_norm.BatchNorm against flax.linen.BatchNorm: variables, outputs, running
statistics and gradients, in float32 and bfloat16; and the closed-form backward against autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax.models import batch_norm

MOMENTUM, EPSILON = 0.9, 1e-5


def _pair(dtype, scale_init=nn.initializers.ones):
    ours = batch_norm.BatchNorm(momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype,
                                scale_init=scale_init)
    flax_bn = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype,
                           scale_init=scale_init)
    return ours, flax_bn


def _random_variables(x, seed):
    """Variables of a BatchNorm over x's channels with random scale, bias and running
    statistics (the tree both modules take)."""
    rng = np.random.default_rng(seed)
    c = x.shape[-1]
    return {"params": {"scale": jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=c), jnp.float32)},
            "batch_stats": {"mean": jnp.asarray(rng.normal(size=c), jnp.float32),
                            "var": jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)}}


def test_variables_are_flaxs():
    x = jnp.ones((2, 5, 4, 3))
    ours, flax_bn = _pair(jnp.float32, scale_init=nn.initializers.zeros)
    mine = ours.init(jax.random.key(0), x)
    theirs = flax_bn.init(jax.random.key(0), x, use_running_average=False)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), mine) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), theirs)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(a, b)  # initialisation does not touch the statistics


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_training_mode_matches_flax_in_outputs_statistics_and_gradients(dtype, tolerance):
    rng = np.random.default_rng(0)
    x = jnp.asarray(3.0 + 2.0 * rng.normal(size=(4, 6, 5, 7)), dtype)
    cotangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    ours, flax_bn = _pair(dtype)
    variables = _random_variables(x, seed=1)

    def run(module, **kwargs):
        def loss(params, x):
            y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x, mutable=["batch_stats"], **kwargs)
            return jnp.sum(y.astype(jnp.float32) * cotangent), (y, updates["batch_stats"])

        (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            variables["params"], x)
        return y, stats, grads

    y, stats, (d_params, dx) = run(ours)
    y_ref, stats_ref, (d_params_ref, dx_ref) = run(flax_bn, use_running_average=False)
    assert y.dtype == y_ref.dtype == dtype and dx.dtype == dx_ref.dtype == dtype
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32),
                                                    np.asarray(b, np.float32),
                                                    rtol=tolerance, atol=tolerance)
    close(y, y_ref)
    for key in ("mean", "var"):
        np.testing.assert_allclose(stats[key], stats_ref[key], rtol=1e-6, atol=1e-6)
    close(dx, dx_ref)
    for key in ("scale", "bias"):
        np.testing.assert_allclose(d_params[key], d_params_ref[key], rtol=1e-4, atol=1e-4)


def test_eval_mode_matches_flax_and_leaves_the_statistics():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 3, 4)), jnp.float32)
    ours, flax_bn = _pair(jnp.float32)
    variables = _random_variables(x, seed=3)
    y = ours.clone(use_running_average=True).apply(variables, x)
    y_ref = flax_bn.apply(variables, x, use_running_average=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)


def test_closed_form_backward_equals_autodiff_including_the_statistics_outputs():
    # Cotangents on all three outputs (y, mean, var): the closed form must match autodiff of
    # the forward pass, also for a use that differentiates through the batch statistics.
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(3, 4, 2, 5)), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, 5), jnp.float32)
    bias = jnp.asarray(rng.normal(size=5), jnp.float32)
    cotangents = tuple(jnp.asarray(rng.normal(size=s), jnp.float32)
                       for s in (x.shape, (5,), (5,)))
    reference = lambda x, s, b: batch_norm._forward(x, s, b, EPSILON)[0]
    custom = lambda x, s, b: batch_norm.normalize_with_batch_statistics(x, s, b, EPSILON)
    got = jax.vjp(custom, x, scale, bias)[1](cotangents)
    expected = jax.vjp(reference, x, scale, bias)[1](cotangents)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # ... and under vmap (a batch of independent normalisations).
    batched = jax.vmap(lambda x: jax.grad(lambda x: jnp.sum(custom(x, scale, bias)[0] ** 3))(x))
    unbatched = [jax.grad(lambda x: jnp.sum(reference(x, scale, bias)[0] ** 3))(xi)
                 for xi in jnp.stack([x, 2 * x])]
    np.testing.assert_allclose(batched(jnp.stack([x, 2 * x])), jnp.stack(unbatched),
                               rtol=1e-4, atol=1e-4)
