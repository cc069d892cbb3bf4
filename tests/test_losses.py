"""Cross-entropy: golden values, ignore label, class weights, and the all-ignored edge case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax import losses


def test_cross_entropy_golden():
    # One pixel with uniform logits over 4 classes: -log(1/4).
    logits = jnp.zeros((1, 1, 1, 4))
    labels = jnp.array([[[2]]])
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(np.log(4.0), rel=1e-6)


def test_ignored_pixels_change_nothing():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(1, 1, 4, 3)), jnp.float32)
    labels = jnp.array([[[0, 2, 1, 255]]])
    kept = losses.cross_entropy(logits[:, :, :3], labels[:, :, :3])
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(float(kept), rel=1e-6)


def test_class_weights_follow_pytorch_convention():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 3, 3))
    w = np.array([0.2, 1.0, 3.0], np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    expected = (w[labels] * nll).sum() / w[labels].sum()
    got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), class_weights=w)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_all_pixels_ignored_gives_zero_loss_and_zero_gradient():
    logits = jnp.ones((1, 2, 2, 3))
    labels = jnp.full((1, 2, 2), 255)
    value, grad = jax.value_and_grad(losses.cross_entropy)(logits, labels)
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_jit_vmap_and_finite_gradients_at_saturation():
    logits = jnp.array([[[[100.0, -100.0], [-100.0, 100.0]]]])
    labels = jnp.array([[[0, 1]]])
    grad = jax.jit(jax.grad(losses.cross_entropy))(logits, labels)
    assert np.all(np.isfinite(np.asarray(grad)))
    per_image = jax.vmap(lambda l, y: losses.cross_entropy(l[None], y[None]))(
        jnp.concatenate([logits, -logits]), jnp.concatenate([labels, labels])
    )
    assert per_image.shape == (2,)
    assert float(per_image[0]) < 1e-6 < float(per_image[1])


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="disagree"):
        losses.cross_entropy(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 5), jnp.int32))
