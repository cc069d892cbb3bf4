"""OHEM in cross_entropy (ohem_threshold, ohem_min_kept), against a plain numpy transcription of
mmsegmentation's `OHEMPixelSampler.sample` with `thresh` set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax import losses, sharding

VOID = 255


def _case(seed, shape=(4, 6, 7), num_classes=5, ignore_fraction=0.25):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=shape + (num_classes,))).astype(np.float32)
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < ignore_fraction] = VOID
    weights = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
    class_weights = rng.uniform(0.5, 2.0, size=num_classes).astype(np.float32)
    return logits, labels, weights, class_weights


def _log_softmax(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _reference_mask(logits, labels, thresh, min_kept):
    """mmseg's rule by sorting: returns (kept mask, T, min_threshold)."""
    valid = labels != VOID
    prob = np.exp(np.take_along_axis(_log_softmax(logits), np.where(valid, labels, 0)[..., None],
                                     -1)[..., 0])
    batch_kept = min_kept * labels.shape[0]
    sorted_prob = np.sort(prob[valid])
    min_threshold = sorted_prob[min(batch_kept, sorted_prob.size - 1)] if sorted_prob.size else 0.0
    threshold = max(min_threshold, thresh)
    # float32 (jax) and float64 (here) probabilities agree to ~1e-7: the test cases must keep
    # every other valid probability well away from T for the strict "<" to agree.
    gaps = np.abs(sorted_prob - threshold)
    assert not (gaps[gaps > 0] < 1e-5).any(), "a probability is too close to the threshold"
    return valid & (prob < threshold), threshold, min_threshold


def _reference_ce(logits, labels, mask, weights=None, class_weights=None, eps=0.0):
    """Cross-entropy 'mean' with a 0/1 mask multiplying the pixel weights (0 if nothing left)."""
    log_probs = _log_softmax(logits)
    num_classes = logits.shape[-1]
    valid = labels != VOID
    safe = np.where(valid, labels, 0)
    w_class = np.ones(num_classes) if class_weights is None else class_weights.astype(np.float64)
    w_pixel = np.ones(labels.shape) if weights is None else weights.astype(np.float64)
    nll = -np.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
    smooth = -(w_class * log_probs).sum(-1)
    per_pixel = (1 - eps) * w_class[safe] * nll + eps / num_classes * smooth
    factor = valid * mask * w_pixel
    denominator = (factor * w_class[safe]).sum()
    return (factor * per_pixel).sum() / denominator if denominator > 0 else 0.0


# (thresh, min_kept, which term must set T): 4 images of 42 pixels, about 126 valid.
REGIMES = {
    "min_kept dominates": (0.05, 15, "min_kept"),
    "threshold dominates": (0.7, 2, "thresh"),
    "min_kept above the valid count": (0.2, 1000, "min_kept"),
    "min_kept zero": (0.4, 0, "thresh"),
    "threshold one": (1.0, 5, "thresh"),
}


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("weighted", [False, True])
def test_ohem_matches_numpy(regime, weighted):
    thresh, min_kept, dominant = REGIMES[regime]
    for seed in range(3):
        logits, labels, weights, class_weights = _case(seed)
        kwargs = dict(weights=weights, class_weights=class_weights) if weighted else {}
        eps = 0.1 if weighted else 0.0
        mask, threshold, min_threshold = _reference_mask(logits, labels, thresh, min_kept)
        assert threshold == (min_threshold if dominant == "min_kept" else thresh), regime
        assert 0 < mask.sum() <= (labels != VOID).sum()
        got = jax.jit(lambda l, y: losses.cross_entropy(
            l, y, ohem_threshold=thresh, ohem_min_kept=min_kept, label_smoothing=eps,
            **kwargs))(logits, labels)
        expected = _reference_ce(logits, labels, mask, eps=eps, **kwargs)
        assert float(got) == pytest.approx(expected, rel=1e-5), (regime, seed, weighted)
        # ... and the kept set is exactly the pixels the gradient reaches.
        grad = jax.grad(lambda l: losses.cross_entropy(
            l, labels, ohem_threshold=thresh, ohem_min_kept=min_kept, **kwargs))(logits)
        np.testing.assert_array_equal(np.abs(np.asarray(grad)).sum(-1) > 0, mask)


def test_min_kept_at_least_the_valid_count_leaves_out_the_most_confident_pixel():
    # mmseg's index min(K, n - 1) makes T the largest p, and "<" then drops that pixel.
    logits, labels, _, _ = _case(3)
    mask, _, _ = _reference_mask(logits, labels, 0.01, 10_000)
    assert mask.sum() == (labels != VOID).sum() - 1
    got = losses.cross_entropy(logits, labels, ohem_threshold=0.01, ohem_min_kept=10_000)
    assert float(got) == pytest.approx(_reference_ce(logits, labels, mask), rel=1e-5)


def test_all_ignored_gives_zero_with_a_zero_gradient():
    logits, labels, weights, class_weights = _case(4)
    all_void = np.full_like(labels, VOID)
    for min_kept in (0, 3, 10_000):
        value, grad = jax.value_and_grad(lambda l: losses.cross_entropy(
            l, all_void, ohem_threshold=0.7, ohem_min_kept=min_kept, weights=weights,
            class_weights=class_weights))(logits)
        assert float(value) == 0.0 and not np.asarray(grad).any(), min_kept


def test_threshold_zero_is_plain_cross_entropy_exactly():
    logits, labels, weights, class_weights = _case(5)
    kwargs = dict(weights=weights, class_weights=class_weights, label_smoothing=0.1)
    for reduction in ("mean", "sum", "none"):
        off = losses.cross_entropy(logits, labels, ohem_threshold=0.0, ohem_min_kept=7,
                                   reduction=reduction, **kwargs)
        plain = losses.cross_entropy(logits, labels, reduction=reduction, **kwargs)
        np.testing.assert_array_equal(np.asarray(off), np.asarray(plain))


def test_ohem_under_vmap_and_grad():
    batches = [_case(seed) for seed in (6, 7)]
    logits = np.stack([b[0] for b in batches])
    labels = np.stack([b[1] for b in batches])

    def loss(l, y):
        return losses.cross_entropy(l, y, ohem_threshold=0.6, ohem_min_kept=8)

    # A batch of batches: each is selected on its own, as a separate call would.
    got = jax.jit(jax.vmap(loss))(logits, labels)
    expected = [loss(l, y) for l, y in zip(logits, labels)]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6)

    # Saturated logits: finite gradients, zero at ignored and unselected pixels.
    l, y = 50.0 * logits[0], labels[0]
    grad = np.asarray(jax.grad(loss)(l, y))
    mask, _, _ = _reference_mask(l, y, 0.6, 8)
    touched = np.abs(grad).sum(-1) > 0
    assert np.isfinite(grad).all()
    assert not touched[~mask].any() and touched.any()


def test_selection_is_over_the_global_batch_on_four_devices():
    devices = jax.devices()
    assert len(devices) >= 4, "conftest.py sets 4 CPU host devices"
    mesh = sharding.create_mesh(devices[:4])
    logits, labels, weights, _ = _case(8, shape=(8, 6, 7))
    thresh, min_kept = 0.01, 12  # min_kept sets T: the batch's 96 least confident pixels

    def loss(l, y, w):
        return losses.cross_entropy(l, y, weights=w, ohem_threshold=thresh,
                                    ohem_min_kept=min_kept)

    whole = jax.jit(loss)(logits, labels, weights)
    placed = [jax.device_put(x, sharding.batch_sharded(mesh)) for x in (logits, labels, weights)]
    assert placed[0].sharding.shard_shape(placed[0].shape)[0] == 2
    sharded = jax.jit(loss)(*placed)
    assert float(sharded) == pytest.approx(float(whole), rel=1e-6)

    mask, threshold, _ = _reference_mask(logits, labels, thresh, min_kept)
    assert threshold > thresh and mask.sum() == 8 * min_kept
    expected = _reference_ce(logits, labels, mask, weights=weights)
    assert float(whole) == pytest.approx(expected, rel=1e-5)
    # The case discriminates: mmseg's per-device selection (2 images each) keeps other pixels.
    local = np.concatenate([_reference_mask(logits[i:i + 2], labels[i:i + 2], thresh, min_kept)[0]
                            for i in range(0, 8, 2)])
    assert (local != mask).any()


def test_ohem_from_the_config():
    from configs import default as default_config

    config = default_config.get_config()
    config.data.ignore_label = VOID
    config.loss.cross_entropy.ohem_threshold = 0.7
    config.loss.cross_entropy.ohem_min_kept = 3
    logits, labels, _, _ = _case(9)
    got = losses.get_loss(config.loss)(jnp.asarray(logits), jnp.asarray(labels))
    mask, _, _ = _reference_mask(logits, labels, 0.7, 3)
    assert float(got) == pytest.approx(_reference_ce(logits, labels, mask), rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ohem_threshold=-0.1), r"ohem_threshold must be in \[0, 1\].*got -0.1"),
    (dict(ohem_threshold=1.5), r"ohem_threshold must be in \[0, 1\].*got 1.5"),
    (dict(ohem_threshold=float("nan")), r"ohem_threshold must be in \[0, 1\].*got nan"),
    (dict(ohem_threshold=0.7, ohem_min_kept=-1), "ohem_min_kept must be >= 0, got -1"),
    (dict(ohem_threshold=0.7, top_k_percent=0.5), "choose one"),
    (dict(ohem_threshold=0.7, reduction="sum"), "ohem_threshold=0.7 needs reduction='mean'"),
    (dict(ohem_threshold=0.7, reduction="none"), "needs reduction='mean', got 'none'"),
])
def test_ohem_errors(kwargs, message):
    logits, labels, _, _ = _case(10)
    with pytest.raises(ValueError, match=message):
        losses.cross_entropy(logits, labels, **kwargs)
