"""Hard-pixel mining in cross_entropy (top_k_percent), against a plain numpy transcription of
deeplab2's per-image top-k mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax import losses


def _case(seed, shape=(3, 6, 7), num_classes=5, ignore_fraction=0.25):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=shape + (num_classes,))).astype(np.float32)
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < ignore_fraction] = 255
    weights = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
    class_weights = rng.uniform(0.5, 2.0, size=num_classes).astype(np.float32)
    return logits, labels, weights, class_weights


def _reference(logits, labels, fraction, weights=None, class_weights=None):
    """Per image: the k = round(p H W) largest weighted pixel losses (void: loss 0, chosen after
    every valid pixel of equal loss by index order), over the weights of the chosen valid pixels;
    then the mean over images."""
    logits = logits.astype(np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    nll = -np.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
    w_class = np.ones(logits.shape[-1]) if class_weights is None else class_weights
    w_pixel = np.ones(labels.shape) if weights is None else weights
    denominator = valid * w_pixel * w_class[safe]
    pixel_losses = denominator * nll
    scores = []
    for loss_n, den_n in zip(pixel_losses.reshape(len(labels), -1),
                             denominator.reshape(len(labels), -1)):
        k = max(1, int(round(fraction * loss_n.size)))
        chosen = np.argsort(-loss_n, kind="stable")[:k]
        total = den_n[chosen].sum()
        scores.append(loss_n[chosen].sum() / total if total > 0 else 0.0)
    return float(np.mean(scores))


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.7])
@pytest.mark.parametrize("weighted", [False, True])
def test_top_k_matches_numpy(fraction, weighted):
    for seed in range(3):
        logits, labels, weights, class_weights = _case(seed)
        kwargs = dict(weights=weights, class_weights=class_weights) if weighted else {}
        got = jax.jit(lambda l, y: losses.cross_entropy(
            l, y, top_k_percent=fraction, **kwargs))(logits, labels)
        expected = _reference(logits, labels, fraction, **kwargs)
        assert float(got) == pytest.approx(expected, rel=2e-5), (seed, fraction, weighted)


def test_top_k_of_one_is_cross_entropy_exactly_and_the_gradient_reaches_only_chosen_pixels():
    logits, labels, weights, _ = _case(7)
    assert float(losses.cross_entropy(logits, labels, top_k_percent=1.0, weights=weights)) == \
        float(losses.cross_entropy(logits, labels, weights=weights))
    grad = jax.grad(lambda l: losses.cross_entropy(l, labels, top_k_percent=0.2))(logits)
    touched = np.abs(np.asarray(grad)).sum(-1) > 0
    k = round(0.2 * 6 * 7)
    assert np.all(touched.reshape(3, -1).sum(1) <= k)
    assert not touched[labels == 255].any() and np.isfinite(grad).all()


def test_top_k_edge_cases_and_errors():
    logits, labels, _, _ = _case(8)
    all_void = np.full_like(labels, 255)
    value, grad = jax.value_and_grad(
        lambda l: losses.cross_entropy(l, all_void, top_k_percent=0.3))(logits)
    assert float(value) == 0.0 and not np.asarray(grad).any()
    with pytest.raises(ValueError, match=r"top_k_percent must be in \(0, 1\], got 0.0"):
        losses.cross_entropy(logits, labels, top_k_percent=0.0)
    with pytest.raises(ValueError, match="needs reduction='mean'"):
        losses.cross_entropy(logits, labels, top_k_percent=0.5, reduction="sum")


def test_top_k_from_the_config():
    from configs import default as default_config

    config = default_config.get_config()
    config.data.ignore_label = 255
    config.loss.cross_entropy.top_k_percent = 0.25
    logits, labels, _, _ = _case(9)
    got = losses.get_loss(config.loss)(jnp.asarray(logits), jnp.asarray(labels))
    assert float(got) == pytest.approx(_reference(logits, labels, 0.25), rel=2e-5)
