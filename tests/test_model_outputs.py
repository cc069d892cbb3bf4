"""`ModelOutput` through whole-image inference: the semantic head follows the inference options
(sliding windows, scales, flips) for every model; a panoptic model's centre and offsets come from
one whole-image pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax import inference
from seg_jax.models import ModelOutput


def _panoptic_model_fn(images):
    """A stand-in panoptic model whose heads are simple, position-dependent functions of the input
    (so that a flipped or rescaled pass gives different values than the whole one)."""
    n, h, w, _ = images.shape
    ramp = jnp.arange(w, dtype=jnp.float32)[None, None, :, None]
    logits = jnp.concatenate([images[..., :1] * 2.0, images[..., 1:2] + 0.1 * ramp], axis=-1)
    center = images[..., 0] + 0.01 * ramp[..., 0]
    offset = jnp.stack([images[..., 1], images[..., 2] * ramp[..., 0]], axis=-1)
    return ModelOutput(logits=logits, center=center, offset=offset)


def _semantic_model_fn(images):
    return ModelOutput(logits=_panoptic_model_fn(images).logits)


@pytest.fixture
def images():
    return jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 16, 3)), jnp.float32)


def test_one_whole_pass_returns_every_head_as_the_model_does(images):
    probs, outputs = jax.jit(inference.predict_outputs, static_argnums=(0, 2))(
        _panoptic_model_fn, images, inference.InferenceOptions())
    expected = _panoptic_model_fn(images)
    np.testing.assert_array_equal(outputs.logits, expected.logits)
    np.testing.assert_array_equal(outputs.center, expected.center)
    np.testing.assert_array_equal(outputs.offset, expected.offset)
    np.testing.assert_allclose(probs, jax.nn.softmax(expected.logits, -1), rtol=1e-6)


@pytest.mark.parametrize("options", [
    inference.InferenceOptions(flip=True),
    inference.InferenceOptions(scales=(0.5, 1.0)),
    inference.InferenceOptions(mode="sliding", window=(8, 8), window_overlap=0.5),
])
def test_augmented_semantics_single_pass_centres_and_offsets(images, options):
    probs, outputs = inference.predict_outputs(_panoptic_model_fn, images, options)
    expected_probs, expected_logits = inference.predict_logits(
        lambda x: _panoptic_model_fn(x).logits, images, options)
    np.testing.assert_allclose(probs, expected_probs, rtol=1e-6)
    np.testing.assert_allclose(outputs.logits, expected_logits, rtol=1e-6)
    # The augmentation changed the semantics (the model is not flip- or scale-invariant) ...
    assert not np.allclose(outputs.logits, _panoptic_model_fn(images).logits, atol=1e-3)
    # ... but the instance heads are those of the one whole-image pass.
    whole = _panoptic_model_fn(images)
    np.testing.assert_array_equal(outputs.center, whole.center)
    np.testing.assert_array_equal(outputs.offset, whole.offset)
    assert outputs.is_panoptic and outputs.aux_logits is None


def test_semantic_models_get_only_logits(images):
    options = inference.InferenceOptions(flip=True)
    _, outputs = inference.predict_outputs(_semantic_model_fn, images, options)
    assert outputs.center is None and outputs.offset is None and not outputs.is_panoptic
    assert outputs.logits.shape == (2, 12, 16, 2)


def test_model_output_is_a_pytree_whose_empty_heads_are_not_leaves():
    output = ModelOutput(logits=jnp.zeros((1, 2, 2, 3)))
    assert len(jax.tree.leaves(output)) == 1
    doubled = jax.tree.map(lambda x: 2 * x, ModelOutput(logits=jnp.ones(2), aux_logits=jnp.ones(2)))
    np.testing.assert_array_equal(doubled.aux_logits, [2.0, 2.0])
