"""seg_jax.losses against independent references: PyTorch's cross-entropy and MONAI's region losses.

Skipped where torch or monai is not installed.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
monai_losses = pytest.importorskip("monai.losses")

from seg_jax import losses  # noqa: E402

C = 5


def _inputs(seed, *, ignore=False, shape=(3, 6, 7)):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=shape + (C,))).astype(np.float32)
    labels = rng.integers(0, C, size=shape)
    if ignore:
        labels[rng.random(shape) < 0.2] = 255
    return logits, labels


def _torch(logits, labels):
    # seg_jax is NHWC; PyTorch and MONAI are NCHW.
    return torch.tensor(logits).permute(0, 3, 1, 2), torch.tensor(labels)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("use_class_weights", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_pytorch(smoothing, use_class_weights, reduction):
    logits, labels = _inputs(0, ignore=True)
    class_weights = np.array([0.2, 1.0, 3.0, 0.5, 2.0], np.float32) if use_class_weights else None
    tx, ty = _torch(logits, labels)
    expected = torch.nn.functional.cross_entropy(
        tx, ty, weight=None if class_weights is None else torch.tensor(class_weights),
        ignore_index=255, label_smoothing=smoothing, reduction=reduction,
    ).numpy()
    got = losses.cross_entropy(
        logits, labels, class_weights=class_weights, label_smoothing=smoothing,
        reduction=reduction,
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def _monai_dice(logits, labels, **kwargs):
    tx, ty = _torch(logits, labels)
    loss = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, **kwargs)
    return float(loss(tx, ty[:, None]))


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_matches_monai(batch, include_background):
    logits, labels = _inputs(1)
    expected = _monai_dice(logits, labels, batch=batch, include_background=include_background)
    got = losses.dice_loss(
        logits, labels, per_image=not batch, include_background=include_background
    )
    assert float(got) == pytest.approx(expected, abs=1e-5)


def test_dice_defaults_are_monais():
    logits, labels = _inputs(2)
    assert float(losses.dice_loss(logits, labels)) == pytest.approx(
        _monai_dice(logits, labels), abs=1e-5
    )


def test_dice_class_weights_differ_from_monai_only_by_normalisation():
    # MONAI's weight= gives mean_c(w_c L_c); seg_jax gives sum_c w_c L_c / sum_c w_c.
    logits, labels = _inputs(3)
    w = np.array([0.5, 1.0, 2.0, 1.5, 3.0], np.float32)
    expected = _monai_dice(logits, labels, weight=w.tolist()) * C / w.sum()
    assert float(losses.dice_loss(logits, labels, class_weights=w)) == pytest.approx(
        expected, abs=1e-5
    )


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_jaccard_matches_monai(batch, include_background):
    logits, labels = _inputs(4)
    expected = _monai_dice(
        logits, labels, jaccard=True, batch=batch, include_background=include_background
    )
    got = losses.jaccard_loss(
        logits, labels, per_image=not batch, include_background=include_background
    )
    assert float(got) == pytest.approx(expected, abs=1e-4)
    # MONAI's (2 TP + s) / (2 (TP + FP + FN) + s) is seg_jax's formula with smooth s / 2.
    got_half = losses.jaccard_loss(
        logits, labels, smooth=0.5e-5, per_image=not batch, include_background=include_background
    )
    assert float(got_half) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (0.3, 0.7), (0.8, 0.2)])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_tversky_matches_monai(alpha, beta, batch, include_background):
    logits, labels = _inputs(5)
    tx, ty = _torch(logits, labels)
    expected = float(monai_losses.TverskyLoss(
        softmax=True, to_onehot_y=True, alpha=alpha, beta=beta, batch=batch,
        include_background=include_background,
    )(tx, ty[:, None]))
    got = losses.tversky_loss(
        logits, labels, alpha=alpha, beta=beta, per_image=not batch,
        include_background=include_background,
    )
    assert float(got) == pytest.approx(expected, abs=1e-5)
