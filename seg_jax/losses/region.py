"""Region losses from soft TP / FP / FN counts: Dice, Jaccard and (focal) Tversky.

Dice and Jaccard are Tversky indices (a = b = 1/2 with smooth s / 2, and a = b = 1), so all three
go through `tversky_loss`.
"""

import jax
import jax.numpy as jnp

from seg_jax.losses.common import FOCAL_BASE_FLOOR, prepare_labels


def _soft_counts(logits, labels, ignore_label, weights, per_image: bool):
    """Soft TP, FP, FN per (image, class) [N, C] or, with per_image=False, per class [C].

    With p = softmax(logits), g = onehot(labels) and v_i the pixel weight (0 when ignored):
    TP_c = sum_i v_i p_ic g_ic, FP_c = sum_i v_i p_ic (1 - g_ic), FN_c = sum_i v_i (1 - p_ic) g_ic,
    summed over H, W (and N when per_image is False). Ignored pixels therefore add nothing: the
    counts equal those of the image with those pixels removed.
    """
    # The probabilities directly: a softmax is one pass less than exp(log_softmax).
    onehot, _, pixel_weight = prepare_labels(logits, labels, ignore_label, weights)
    v = pixel_weight[..., None]
    axes = (1, 2) if per_image else (0, 1, 2)
    weighted_probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * v
    # FP = sum v p - TP and FN = sum v g - TP: two passes over the probabilities (and their
    # gradient) instead of three; the truth's sum has no gradient. The differences are clamped
    # at 0: where FP or FN is ~0, rounding could otherwise make it a hair negative.
    tp = jnp.sum(weighted_probs * onehot, axes)
    fp = jnp.maximum(jnp.sum(weighted_probs, axes) - tp, 0.0)
    fn = jnp.maximum(jnp.sum(onehot * v, axes) - tp, 0.0)
    return tp, fp, fn


def _safe_ratio(numerator, denominator):
    """numerator / denominator, and 1 (a perfect score) where the denominator is 0.

    Only reachable with smooth = 0 for a class empty in both prediction and truth (or when all
    pixels are ignored); the double where keeps the gradient 0 there instead of NaN.
    """
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 1.0)


def _reduce_region_loss(loss, *, include_background: bool, class_weights, gamma: float = 1.0):
    """Mean of `loss` ([N, C] or [C]) over classes (weighted) and then over images.

    With class weights w_c (indexed by class id, length C), the class reduction is
    sum_c w_c L_c / sum_c w_c; without, the plain mean. include_background=False drops class 0
    (and w_0). gamma != 1 raises each term to that power first (the focal Tversky loss).
    """
    num_classes = loss.shape[-1]
    if gamma != 1:
        # Clamped like the focal loss: (1 - T) can be exactly 0, where x**gamma has an infinite
        # gradient for gamma < 1.
        # The outer where keeps a perfect score's loss exactly 0 (not the floor ** gamma).
        powered = jnp.power(jnp.maximum(loss, FOCAL_BASE_FLOOR), gamma)
        loss = jnp.where(loss > 0, powered, 0.0 if gamma > 0 else 1.0)
    if class_weights is None:
        class_weights = jnp.ones((num_classes,), jnp.float32)
    else:
        class_weights = jnp.asarray(class_weights, jnp.float32)
        if class_weights.shape != (num_classes,):
            raise ValueError(
                f"class_weights {class_weights.shape} must be [C={num_classes}], indexed by class "
                f"id (entry 0 is dropped when include_background=False)."
            )
    if not include_background:
        loss = loss[..., 1:]
        class_weights = class_weights[1:]
    per_image = jnp.sum(loss * class_weights, -1) / jnp.sum(class_weights)
    return jnp.mean(per_image)


_REGION_DOC = """
    Args:
      logits: [N, H, W, C] float; p = softmax(logits).
      labels: [N, H, W] int; g = onehot(labels). `ignore_label` pixels add nothing to TP/FP/FN.
      smooth: s, added to numerator and denominator (MONAI's smooth_nr = smooth_dr = 1e-5).
      per_image: True (default, MONAI's batch=False): a score per image and class, L[n, c],
        averaged over classes and then over images. False (MONAI's batch=True): TP/FP/FN are
        pooled over the whole batch, one score per class, averaged over classes.
      include_background: False drops class 0 from the average (its probability still enters
        the softmax).
      class_weights: optional [C] (indexed by class id): the class average becomes
        sum_c w_c L_c / sum_c w_c. MONAI's `weight=` instead computes mean_c(w_c L_c).
      ignore_label: the void label.
      weights: optional [N, H, W] per-pixel weights v_i multiplying each pixel's contributions:
        TP = sum v p g, FP = sum v p (1 - g), FN = sum v (1 - p) g.

    A class absent from both the prediction and the truth of an image (TP = FP = FN = 0) scores
    s / s = 1, a loss of 0, so it does not pull the average; with smooth = 0 it is defined as 1
    too. With softmax probabilities FP is never exactly 0, so in practice an absent class scores
    ~s / (FP + s) ~ 0 and costs a loss near 1 unless its probabilities vanish.
"""


def dice_loss(logits, labels, *, smooth: float = 1e-5, per_image: bool = True,
              include_background: bool = True, class_weights=None, ignore_label: int = 255,
              weights=None):
    """Soft Dice loss, 1 - D with D = (2 TP + s) / (2 TP + FP + FN + s).

    2 TP + FP + FN = |p| + |g|, the sums of probabilities and one-hot truth.

    With its defaults it equals MONAI's `DiceLoss(softmax=True, to_onehot_y=True)` (smooth_nr =
    smooth_dr = 1e-5, batch=False, squared_pred=False, reduction='mean' over images and classes).
    """
    # D is the Tversky index with a = b = 1/2 and smooth s / 2: numerator and denominator halved,
    # which floating point does exactly, so the result is the same to the bit.
    return tversky_loss(logits, labels, alpha=0.5, beta=0.5, smooth=smooth / 2,
                        per_image=per_image, include_background=include_background,
                        class_weights=class_weights, ignore_label=ignore_label, weights=weights)


def jaccard_loss(logits, labels, *, smooth: float = 1e-5, per_image: bool = True,
                 include_background: bool = True, class_weights=None, ignore_label: int = 255,
                 weights=None):
    """Soft Jaccard (IoU) loss, 1 - J with J = (TP + s) / (TP + FP + FN + s).

    TP + FP + FN = |p| + |g| - TP, MONAI's union. MONAI's `DiceLoss(jaccard=True)` computes
    (2 TP + s) / (2 (TP + FP + FN) + s), i.e. this formula with s / 2: the two agree exactly
    for smooth = s_monai / 2 and to ~s otherwise.
    """
    # J is the Tversky index with a = b = 1.
    return tversky_loss(logits, labels, alpha=1.0, beta=1.0, smooth=smooth,
                        per_image=per_image, include_background=include_background,
                        class_weights=class_weights, ignore_label=ignore_label, weights=weights)


def tversky_loss(
    logits,
    labels,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
    smooth: float = 1e-5,
    per_image: bool = True,
    include_background: bool = True,
    class_weights=None,
    ignore_label: int = 255,
    weights=None,
):
    """(Focal) Tversky loss, mean of (1 - T)^gamma with T = (TP + s) / (TP + a FP + b FN + s).

    alpha (a) weights false positives, beta (b) false negatives. a = b = 0.5 gives
    (2 TP + 2 s) / (2 TP + FP + FN + 2 s), i.e. `dice_loss` with smooth 2 s (equal to ~s with
    the same smooth). gamma = 1 (default) is the plain Tversky loss and, with the other defaults,
    MONAI's `TverskyLoss(softmax=True, to_onehot_y=True, alpha=a, beta=b)`; gamma != 1 is the
    focal Tversky loss (Abraham and Khan 2019), the power applied per image and class before
    averaging.
    """
    tp, fp, fn = _soft_counts(logits, labels, ignore_label, weights, per_image)
    score = _safe_ratio(tp + smooth, tp + alpha * fp + beta * fn + smooth)
    return _reduce_region_loss(
        1.0 - score, include_background=include_background, class_weights=class_weights,
        gamma=gamma,
    )


for _fn in (dice_loss, jaccard_loss, tversky_loss):
    _fn.__doc__ += _REGION_DOC
