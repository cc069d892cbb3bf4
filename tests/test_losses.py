"""The loss family: golden values worked by hand, the shared properties of every loss, the registry.

Properties checked for every loss: ignored pixels change nothing (the loss equals the loss with
them removed), all pixels ignored gives 0 with a zero gradient, finite gradients at saturated
logits (+-100), and jit / vmap / grad. Comparisons against PyTorch and MONAI live in
test_losses_reference.py.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default as default_config
from seg_jax import losses

LN2 = np.log(2.0)


# --- Golden values ------------------------------------------------------------------------------


def test_cross_entropy_golden():
    # One pixel with uniform logits over 4 classes: -log(1/4).
    logits = jnp.zeros((1, 1, 1, 4))
    labels = jnp.array([[[2]]])
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(np.log(4.0), rel=1e-6)


def test_cross_entropy_label_smoothing_golden():
    # logits (ln 3, 0) -> p = (3/4, 1/4), label 0, eps = 0.2, C = 2: the target is (0.9, 0.1), so
    # the loss is 0.9 * (-ln 3/4) + 0.1 * (-ln 1/4) = 0.9 ln(4/3) + 0.1 ln 4.
    logits = jnp.array([[[[np.log(3.0), 0.0]]]])
    labels = jnp.array([[[0]]])
    expected = 0.9 * np.log(4.0 / 3.0) + 0.1 * np.log(4.0)
    got = losses.cross_entropy(logits, labels, label_smoothing=0.2)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_focal_golden():
    # p_y = 1/2: (1 - 1/2)^2 * ln 2 = ln(2) / 4; with alpha = (0.25, 0.75) and y = 0: ln(2) / 16.
    # The mean is over pixels, not over alpha: two such pixels still give ln(2) / 16.
    logits = jnp.zeros((1, 1, 2, 2))
    labels = jnp.array([[[0, 0]]])
    assert float(losses.focal_loss(logits, labels)) == pytest.approx(LN2 / 4, rel=1e-6)
    got = losses.focal_loss(logits, labels, alpha=jnp.array([0.25, 0.75]))
    assert float(got) == pytest.approx(LN2 / 16, rel=1e-6)
    assert float(losses.focal_loss(logits, labels, alpha=0.25)) == pytest.approx(LN2 / 16, rel=1e-6)


# Two pixels, p = (1/2, 1/2) at both, labels (0, 0); smooth = 0.
#   class 0: TP = 1/2 + 1/2 = 1, FP = 0, FN = (1 - 1/2) * 2 = 1
#   class 1: TP = 0, FP = 1, FN = 0
_REGION_LOGITS = jnp.zeros((1, 1, 2, 2))
_REGION_LABELS = jnp.array([[[0, 0]]])


def test_dice_golden():
    # D0 = 2 * 1 / (2 + 0 + 1) = 2/3, D1 = 0 / 1 = 0: loss = mean(1/3, 1) = 2/3.
    got = losses.dice_loss(_REGION_LOGITS, _REGION_LABELS, smooth=0.0)
    assert float(got) == pytest.approx(2.0 / 3.0, rel=1e-6)
    # Without the background only class 1 is left: 1.
    got = losses.dice_loss(_REGION_LOGITS, _REGION_LABELS, smooth=0.0, include_background=False)
    assert float(got) == pytest.approx(1.0, rel=1e-6)
    # Class weights (1, 3): (1 * 1/3 + 3 * 1) / 4 = 5/6.
    got = losses.dice_loss(_REGION_LOGITS, _REGION_LABELS, smooth=0.0, class_weights=[1.0, 3.0])
    assert float(got) == pytest.approx(5.0 / 6.0, rel=1e-6)


def test_jaccard_golden():
    # J0 = 1 / (1 + 0 + 1) = 1/2, J1 = 0 / 1 = 0: loss = mean(1/2, 1) = 3/4.
    got = losses.jaccard_loss(_REGION_LOGITS, _REGION_LABELS, smooth=0.0)
    assert float(got) == pytest.approx(0.75, rel=1e-6)


def test_tversky_golden():
    # alpha = 0.3, beta = 0.7: T0 = 1 / (1 + 0.3 * 0 + 0.7 * 1) = 1 / 1.7, T1 = 0 / 0.3 = 0.
    # loss = mean(0.7 / 1.7, 1); with gamma = 2: mean((0.7 / 1.7)^2, 1).
    kw = dict(smooth=0.0, alpha=0.3, beta=0.7)
    got = losses.tversky_loss(_REGION_LOGITS, _REGION_LABELS, **kw)
    assert float(got) == pytest.approx((0.7 / 1.7 + 1.0) / 2, rel=1e-6)
    got = losses.tversky_loss(_REGION_LOGITS, _REGION_LABELS, gamma=2.0, **kw)
    assert float(got) == pytest.approx(((0.7 / 1.7) ** 2 + 1.0) / 2, rel=1e-6)


def test_lovasz_golden():
    # Pixel 0: logits (ln 3, 0) -> p = (3/4, 1/4), label 0. Pixel 1: p = (1/2, 1/2), label 1.
    # Class 0: fg = (1, 0), errors = (1/4, 1/2); sorted: (1/2 [fg 0], 1/4 [fg 1]); gts = 1;
    #   intersection = 1 - cumsum(0, 1) = (1, 0); union = 1 + cumsum(1, 0) = (2, 2);
    #   jaccard = (1/2, 1); grad = (1/2, 1/2); loss0 = 1/2 * 1/2 + 1/4 * 1/2 = 3/8.
    # Class 1: fg = (0, 1), errors = (1/4, 1/2); sorted: (1/2 [fg 1], 1/4 [fg 0]);
    #   intersection = 1 - cumsum(1, 0) = (0, 0); union = 1 + cumsum(0, 1) = (1, 2);
    #   jaccard = (1, 1); grad = (1, 0); loss1 = 1/2.
    # Mean over the two present classes: 7/16.
    logits = jnp.array([[[[np.log(3.0), 0.0], [0.0, 0.0]]]])
    labels = jnp.array([[[0, 1]]])
    assert float(losses.lovasz_softmax_loss(logits, labels)) == pytest.approx(7 / 16, rel=1e-6)
    # Only class 0 present: 'present' keeps 3/8 ... of class 0 alone (recomputed: fg = (1, 1),
    # errors = (1/4, 1/2), sorted (1/2, 1/4), intersection = (1, 0), union = (2, 2),
    # jaccard = (1/2, 1), grad = (1/2, 1/2): 3/8); 'all' adds class 1, absent, whose loss is its
    # largest probability 1/2: mean(3/8, 1/2) = 7/16.
    labels0 = jnp.array([[[0, 0]]])
    assert float(losses.lovasz_softmax_loss(logits, labels0)) == pytest.approx(3 / 8, rel=1e-6)
    got = losses.lovasz_softmax_loss(logits, labels0, classes="all")
    assert float(got) == pytest.approx(7 / 16, rel=1e-6)


def test_expected_cost_golden_and_error_rate():
    # p = (1/3, 1/3, 1/3), label 0: sum_c p_c cost[c, 0] = (0 + 1 + 4) / 3 = 5/3.
    cost = jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    got = losses.expected_cost_loss(jnp.zeros((1, 1, 1, 3)), jnp.array([[[0]]]), cost=cost)
    assert float(got) == pytest.approx(5.0 / 3.0, rel=1e-6)
    # cost = 1 - eye: the expected error rate, mean of 1 - p_y.
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 4, 5)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, size=(2, 3, 4)))
    p_y = jnp.take_along_axis(jax.nn.softmax(logits), labels[..., None], -1)[..., 0]
    got = losses.expected_cost_loss(logits, labels, cost=1.0 - jnp.eye(5))
    assert float(got) == pytest.approx(float(jnp.mean(1.0 - p_y)), rel=1e-5)


# --- Relations between losses -------------------------------------------------------------------


def _random(seed, shape=(2, 4, 5), num_classes=4, ignore_fraction=0.0):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=shape + (num_classes,))).astype(np.float32)
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < ignore_fraction] = 255
    return jnp.asarray(logits), jnp.asarray(labels)


def test_focal_with_gamma_zero_is_cross_entropy_exactly():
    logits, labels = _random(1, ignore_fraction=0.2)
    for reduction in ("mean", "sum", "none"):
        focal = losses.focal_loss(logits, labels, gamma=0.0, reduction=reduction)
        ce = losses.cross_entropy(logits, labels, reduction=reduction)
        np.testing.assert_array_equal(np.asarray(focal), np.asarray(ce))


def test_tversky_half_half_is_dice():
    logits, labels = _random(2)
    for per_image in (True, False):
        tversky = losses.tversky_loss(logits, labels, per_image=per_image, smooth=1e-5)
        # Exactly: T(0.5, 0.5, s) = (2 TP + 2 s) / (2 TP + FP + FN + 2 s) = Dice with smooth 2 s.
        dice_2s = losses.dice_loss(logits, labels, per_image=per_image, smooth=2e-5)
        assert float(tversky) == pytest.approx(float(dice_2s), rel=1e-6)
        dice = losses.dice_loss(logits, labels, per_image=per_image, smooth=1e-5)
        assert float(tversky) == pytest.approx(float(dice), abs=1e-5)


def test_weights_of_ones_change_nothing_and_zero_weights_ignore():
    logits, labels = _random(3)
    rng = np.random.default_rng(3)
    drop = jnp.asarray(rng.random(labels.shape) < 0.3)
    for name, fn in ALL_LOSSES.items():
        plain = fn(logits, labels)
        ones = fn(logits, labels, weights=jnp.ones(labels.shape))
        assert float(ones) == pytest.approx(float(plain), rel=1e-6), name
        zeroed = fn(logits, labels, weights=jnp.where(drop, 0.0, 1.0))
        ignored = fn(logits, jnp.where(drop, 255, labels))
        assert float(zeroed) == pytest.approx(float(ignored), rel=1e-5, abs=1e-7), name


def test_integer_pixel_weights_count_pixels_twice():
    # A pixel of weight 2 counts like two copies of it (pixel-wise and region losses alike).
    logits, labels = _random(4, shape=(1, 1, 3))
    weights = jnp.array([[[2.0, 1.0, 1.0]]])
    doubled_logits = jnp.concatenate([logits, logits[:, :, :1]], axis=2)
    doubled_labels = jnp.concatenate([labels, labels[:, :, :1]], axis=2)
    for name in ("cross_entropy", "focal", "dice", "tversky", "expected_cost"):
        fn = ALL_LOSSES[name]
        got = fn(logits, labels, weights=weights)
        expected = fn(doubled_logits, doubled_labels)
        assert float(got) == pytest.approx(float(expected), rel=1e-5), name


# --- Lovasz against a numpy transcription of the reference algorithm ----------------------------


def _lovasz_grad_reference(gt_sorted):
    gts = gt_sorted.sum()
    intersection = gts - np.cumsum(gt_sorted)
    union = gts + np.cumsum(1.0 - gt_sorted)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def _lovasz_flat_reference(probs, labels, classes):
    """Berman et al.'s lovasz_softmax_flat: probs [P, C], labels [P] (valid pixels only)."""
    if len(labels) == 0:
        return 0.0
    per_class = []
    for c in range(probs.shape[1]):
        fg = (labels == c).astype(np.float64)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = np.abs(fg - probs[:, c])
        order = np.argsort(-errors, kind="stable")
        per_class.append(np.dot(errors[order], _lovasz_grad_reference(fg[order])))
    return float(np.mean(per_class)) if per_class else 0.0


def _lovasz_reference(logits, labels, *, classes, per_image, ignore_label=255):
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if per_image:
        return float(np.mean([
            _lovasz_reference(l[None], y[None], classes=classes, per_image=False)
            for l, y in zip(logits, labels)
        ]))
    valid = labels != ignore_label
    return _lovasz_flat_reference(probs[valid], labels[valid], classes)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_reference_algorithm(seed, classes, per_image):
    # 5 classes over 3 x 4 x 5 pixels with ~20% ignored: some classes are absent from some images.
    logits, labels = _random(seed, shape=(3, 4, 5), num_classes=5, ignore_fraction=0.2)
    expected = _lovasz_reference(logits, labels, classes=classes, per_image=per_image)
    got = losses.lovasz_softmax_loss(logits, labels, classes=classes, per_image=per_image)
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def _lovasz_by_autodiff(logits, labels, ignore_label=255):
    """The loss as the reference writes it (argsort, gather, dot), differentiated by JAX through
    the gathers: an independent check of the gradient the package computes without them."""
    probs = jax.nn.softmax(logits).reshape(-1, logits.shape[-1])
    flat = labels.reshape(-1)
    valid = flat != ignore_label
    per_class = []
    for c in range(logits.shape[-1]):
        fg = ((flat == c) & valid).astype(jnp.float32)
        errors = jnp.abs(fg - probs[:, c]) * valid
        order = jnp.argsort(jnp.where(valid, jax.lax.stop_gradient(errors), -1.0),
                            descending=True, stable=True)
        fg_sorted = fg[order]
        gts = fg_sorted.sum()
        jaccard = 1.0 - (gts - jnp.cumsum(fg_sorted)) / (gts + jnp.cumsum(1.0 - fg_sorted))
        grad = jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        per_class.append((jnp.dot(errors[order], grad), gts > 0))
    losses_, present = zip(*per_class)
    present = jnp.stack(present)
    return jnp.sum(jnp.where(present, jnp.stack(losses_), 0.0)) / jnp.maximum(present.sum(), 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_lovasz_gradient_matches_autodiff_through_the_sort(seed):
    logits, labels = _random(seed, shape=(2, 8, 9), num_classes=5, ignore_fraction=0.2)
    expected = jax.grad(_lovasz_by_autodiff)(logits, labels)
    got = jax.grad(lambda x: losses.lovasz_softmax_loss(x, labels))(logits)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-7)


def test_lovasz_on_many_pixels_matches_the_reference():
    # 2 x 250 x 250 pixels: indices need more than 16 bits of the packed sort key.
    logits, labels = _random(7, shape=(2, 250, 250), num_classes=3, ignore_fraction=0.1)
    expected = _lovasz_reference(logits, labels, classes="present", per_image=False)
    got = losses.lovasz_softmax_loss(logits, labels)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_lovasz_class_subset():
    # classes=(1, 3): the mean of those two classes' reference losses.
    logits, labels = _random(5, num_classes=4)
    probs = np.asarray(jax.nn.softmax(logits), np.float64).reshape(-1, 4)
    flat_labels = np.asarray(labels).reshape(-1)
    expected = np.mean([
        # Column c alone, with class c relabelled 0: the reference's loss of class c.
        _lovasz_flat_reference(probs[:, [c]], np.where(flat_labels == c, 0, 1), "all")
        for c in (1, 3)
    ])
    got = losses.lovasz_softmax_loss(logits, labels, classes=(1, 3))
    assert float(got) == pytest.approx(expected, rel=1e-5)


# --- Properties shared by every loss ------------------------------------------------------------

_COST = 1.0 - np.eye(4) + np.diag(np.zeros(4)) + 0.5 * (np.arange(4)[:, None] > np.arange(4))

ALL_LOSSES = {
    "cross_entropy": losses.cross_entropy,
    "cross_entropy_smoothed": functools.partial(
        losses.cross_entropy, label_smoothing=0.1, class_weights=jnp.array([1.0, 2.0, 0.5, 1.0])
    ),
    "focal": losses.focal_loss,
    "focal_gamma_half": functools.partial(losses.focal_loss, gamma=0.5, alpha=0.25),
    "dice": losses.dice_loss,
    "dice_pooled": functools.partial(losses.dice_loss, per_image=False, smooth=0.0),
    "jaccard": losses.jaccard_loss,
    "tversky": functools.partial(losses.tversky_loss, alpha=0.3, beta=0.7),
    "tversky_focal_half": functools.partial(losses.tversky_loss, gamma=0.5),
    "lovasz": losses.lovasz_softmax_loss,
    "lovasz_all": functools.partial(losses.lovasz_softmax_loss, classes="all"),
    "expected_cost": functools.partial(losses.expected_cost_loss, cost=_COST),
}
# Losses whose value depends on how pixels are split into images: checked with pooled sums.
_POOLED = {
    "dice": dict(per_image=False),
    "jaccard": dict(per_image=False),
    "tversky": dict(per_image=False),
    "tversky_focal_half": dict(per_image=False),
}


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_ignored_pixels_equal_removed_pixels(name):
    # Random pixels over the whole batch are ignored; the loss must equal that of the kept pixels
    # gathered into one 1 x 1 x K image (pooled over the batch for the region losses).
    fn = functools.partial(ALL_LOSSES[name], **_POOLED.get(name, {}))
    logits, labels = _random(6, ignore_fraction=0.3)
    kept = np.asarray(labels) != 255
    kept_logits = logits[kept][None, None]
    kept_labels = labels[kept][None, None]
    assert float(fn(logits, labels)) == pytest.approx(
        float(fn(kept_logits, kept_labels)), rel=1e-5, abs=1e-7
    )


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_all_ignored_gives_zero_loss_and_zero_gradient(name):
    logits, _ = _random(7)
    labels = jnp.full(logits.shape[:-1], 255)
    value, grad = jax.value_and_grad(ALL_LOSSES[name])(logits, labels)
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_finite_gradients_at_saturation_jit_and_vmap(name):
    fn = ALL_LOSSES[name]
    # +-100 logits: correct pixels with p -> 1 exactly, wrong ones with p -> 0, absent classes.
    logits = jnp.array([[[[100.0, -100.0, -100.0, -100.0], [-100.0, 100.0, -100.0, -100.0],
                          [-100.0, 100.0, -100.0, -100.0], [100.0, -100.0, -100.0, -100.0]]]])
    labels = jnp.array([[[0, 1, 0, 255]]])
    value, grad = jax.jit(jax.value_and_grad(fn))(logits, labels)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad)))
    # vmap over a leading axis of batches equals calling on each batch.
    batches, batch_labels = _random(8, shape=(3, 2, 4, 5))
    mapped, grads = jax.jit(jax.vmap(jax.value_and_grad(fn)))(batches, batch_labels)
    looped = [float(fn(b, y)) for b, y in zip(batches[:2], batch_labels[:2])]
    np.testing.assert_allclose(np.asarray(mapped[:2]), looped, rtol=1e-5, atol=1e-7)
    assert grads.shape == batches.shape and np.all(np.isfinite(np.asarray(grads)))


@pytest.mark.parametrize("name", ["focal", "expected_cost"])
def test_pixelwise_reductions(name):
    fn = ALL_LOSSES[name]
    logits, labels = _random(9, ignore_fraction=0.3)
    per_pixel = fn(logits, labels, reduction="none")
    assert per_pixel.shape == labels.shape
    assert np.all(np.asarray(per_pixel)[np.asarray(labels) == 255] == 0.0)
    assert float(fn(logits, labels, reduction="sum")) == pytest.approx(float(per_pixel.sum()))
    mean = float(per_pixel.sum()) / float((labels != 255).sum())
    assert float(fn(logits, labels)) == pytest.approx(mean, rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        fn(logits, labels, reduction="avg")


# --- The pre-existing cross-entropy checks ------------------------------------------------------


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


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_shape_mismatch_is_a_clear_error(name):
    fn = ALL_LOSSES[name]
    with pytest.raises(ValueError, match=r"\(1, 4, 4, 4\).*\(1, 4, 5\)"):
        fn(jnp.zeros((1, 4, 4, 4)), jnp.zeros((1, 4, 5), jnp.int32))
    with pytest.raises(ValueError, match="weights"):
        fn(jnp.zeros((1, 4, 4, 4)), jnp.zeros((1, 4, 4), jnp.int32), weights=jnp.ones((1, 4)))


# --- Registry -----------------------------------------------------------------------------------


def _config(name, **fields):
    config = ml_collections.ConfigDict({"name": name, "ignore_label": 255, "term_weights": ()})
    for key, value in fields.items():
        config[key] = value
    return config


def test_default_config_still_works():
    config = default_config.get_config()
    config.data.ignore_label = 255  # the void label of the built-in datasets
    logits, labels = _random(10)
    got = losses.get_loss(config.loss)(logits, labels)
    expected = losses.cross_entropy(logits, labels, ignore_label=config.loss.ignore_label)
    assert float(got) == float(expected)


def test_get_loss_sums_weighted_terms_with_options():
    logits, labels = _random(11, ignore_fraction=0.2)
    config = _config(
        "cross_entropy+dice+focal", term_weights=(1.0, 0.5, 2.0),
        dice={"smooth": 1.0, "per_image": False}, focal={"gamma": 1.5, "alpha": ()},
    )
    expected = (
        losses.cross_entropy(logits, labels)
        + 0.5 * losses.dice_loss(logits, labels, smooth=1.0, per_image=False)
        + 2.0 * losses.focal_loss(logits, labels, gamma=1.5)
    )
    got = jax.jit(losses.get_loss(config))(logits, labels)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_get_loss_every_name_and_defaults():
    logits, labels = _random(12)
    for name, fn in [("focal", losses.focal_loss), ("jaccard", losses.jaccard_loss),
                     ("tversky", losses.tversky_loss), ("lovasz", losses.lovasz_softmax_loss)]:
        got = losses.get_loss(_config(name, term_weights=None))(logits, labels)
        assert float(got) == pytest.approx(float(fn(logits, labels)), rel=1e-6), name
    cost = tuple(tuple(float(c != t) for t in range(4)) for c in range(4))
    config = _config("expected_cost", expected_cost={"cost": cost})
    got = losses.get_loss(config)(logits, labels)
    expected = losses.expected_cost_loss(logits, labels, cost=jnp.asarray(cost))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_get_loss_errors():
    with pytest.raises(ValueError, match="cross_entropy.*dice.*lovasz"):
        losses.get_loss(_config("cross_entropy+dcie"))
    with pytest.raises(ValueError, match=r"config\.loss\.term_weights=\(1\.0,\) has 1 .* 2 terms"):
        losses.get_loss(_config("cross_entropy+dice", term_weights=(1.0,)))
    with pytest.raises(ValueError, match="cost"):
        losses.get_loss(_config("expected_cost"))


def test_get_loss_requires_its_config_keys():
    # The config file holds the defaults: a key missing from a hand-built config is an error
    # naming it, never a default of get_loss's own.
    for key in ("ignore_label", "term_weights"):
        config = _config("cross_entropy")
        del config[key]
        with pytest.raises(ValueError, match=rf"config\.loss\.{key} is missing"):
            losses.get_loss(config)
    with pytest.raises(ValueError, match=r"config\.loss\.ignore_label is None"):
        losses.get_loss(_config("cross_entropy", ignore_label=None))


def test_get_loss_names_the_former_weights_key():
    # `weights` is every loss's per-pixel argument; the per-term weights are `term_weights`, and a
    # config that still uses the old name is told so instead of losing its weights.
    config = _config("cross_entropy+dice", weights=(1.0, 0.5))
    del config["term_weights"]
    with pytest.raises(ValueError, match=r"term_weights is missing \(config\.loss\.weights"):
        losses.get_loss(config)


def test_get_loss_passes_ignore_label_to_every_term():
    logits, labels = _random(13)
    labels = labels.at[:, :2].set(3)  # 3 is a class; with ignore_label=3 those pixels are void
    got = losses.get_loss(_config("cross_entropy+dice", ignore_label=3))(logits, labels)
    expected = (losses.cross_entropy(logits, labels, ignore_label=3)
                + losses.dice_loss(logits, labels, ignore_label=3))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    with_255 = losses.cross_entropy(logits, labels) + losses.dice_loss(logits, labels)
    assert float(got) != pytest.approx(float(with_255), rel=1e-3)


def test_get_loss_accepts_a_bare_name():
    rng = np.random.default_rng(7)
    logits = jnp.asarray(rng.normal(size=(1, 3, 3, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, size=(1, 3, 3)))
    combined = losses.get_loss("cross_entropy+dice")(logits, labels)
    expected = losses.cross_entropy(logits, labels) + losses.dice_loss(logits, labels)
    assert float(combined) == pytest.approx(float(expected), rel=1e-6)
