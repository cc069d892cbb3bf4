"""Pixel-wise losses: cross-entropy, focal and expected cost, each with `reduction=`."""

import jax
import jax.numpy as jnp

from seg_jax.labels import valid_mask
from seg_jax.losses.common import FOCAL_BASE_FLOOR, prepare, reduce_pixels


def cross_entropy(
    logits,
    labels,
    *,
    ignore_label: int = 255,
    weights=None,
    class_weights=None,
    label_smoothing: float = 0.0,
    top_k_percent: float = 1.0,
    ohem_threshold: float = 0.0,
    ohem_min_kept: int = 100000,
    reduction: str = "mean",
):
    """Pixel-wise softmax cross-entropy, optionally with label smoothing (PyTorch's convention)
    and hard-pixel mining (deeplab2's top-k or mmsegmentation's OHEM convention).

    Args:
      logits: [N, H, W, C] float.
      labels: [N, H, W] int; `ignore_label` pixels contribute nothing.
      ignore_label: the void label.
      weights: optional [N, H, W] float per-pixel weights v_i.
      class_weights: optional [C] float w_c.
      label_smoothing: eps in [0, 1]; the target is (1 - eps) * onehot(y) + eps / C.
      top_k_percent: p in (0, 1]. Below 1 (with reduction 'mean'), each image keeps only its
        k = round(p * H * W) largest per-pixel losses l_i (void pixels included in the count, as
        in deeplab2's `compute_average_top_k_loss`: their loss is 0, so they are chosen last):
        image n scores sum_{i in top-k(n)} l_i / sum_{i in top-k(n)} v_i * w_{y_i} (0 if none is
        valid; deeplab2 divides by the number of non-zero losses, the same count unless a valid
        pixel's loss is exactly 0), and the loss is the mean over the N images. k is static
        (jit-compatible). p = 1 is plain cross-entropy, computed as without it.
      ohem_threshold: t in [0, 1]; 0 (default) is off: plain cross-entropy, computed as without
        it. Above 0 (with reduction 'mean' and top_k_percent 1), mmsegmentation's
        `OHEMPixelSampler` with `thresh=t`: let p_i = softmax(logits)_i[y_i] be valid pixel i's
        true-class probability (a constant: no gradient flows through the selection), n the
        number of valid pixels of the whole batch, p_(0) <= ... <= p_(n-1) their sorted p, and
        K = ohem_min_kept * N. Pixel i is kept iff it is valid and p_i < T (strictly), with
        T = max(t, p_(min(K, n - 1))) (T = t if n = 0): every pixel less confident than t, and
        at least the K least confident ones (fewer on ties at T; when K >= n, the most confident
        valid pixel is kept only if p < t, as in mmseg). The kept set is a 0/1 factor of the
        pixel weights v_i, so 'mean' is sum_{i kept} l_i / sum_{i kept} v_i * w_{y_i}. The
        selection is over the global batch (under jit on several devices too, so it does not
        depend on the device count); mmseg selects within each GPU's local batch. mmseg's
        CrossEntropyLoss divides the kept pixels' summed loss by the number of all pixels
        (avg_non_ignore=False, its default) or of all valid pixels (avg_non_ignore=True), so its
        loss is smaller by the kept fraction: same gradient direction, a different scale.
        K is static: `lax.top_k` with k = min(K + 1, N * H * W), no full sort (jit-compatible).
      ohem_min_kept: >= 0, mmseg's `min_kept`: a count per image, applied to the whole batch as
        K = ohem_min_kept * N (so one image may give more of the K pixels than another).
      reduction: 'mean' (default), 'sum' or 'none'.

    Returns:
      With log p_ic = log_softmax(logits)_ic, pixel i's loss is

        l_i = v_i * [(1 - eps) * w_{y_i} * (-log p_{i, y_i}) + (eps / C) * sum_c w_c * (-log p_ic)]

      (w = 1 without class weights). With class weights the smoothing term is weighted by each
      class's own weight w_c, not by the weight of the pixel's label; this is exactly what
      PyTorch's `F.cross_entropy(weight=w, ignore_index=..., label_smoothing=eps)` computes.
      'mean': sum_i l_i / sum_i v_i * w_{y_i} over valid pixels i (PyTorch's normaliser, the
      same with and without smoothing). With every pixel ignored the result is 0 with a zero
      gradient, never NaN. 'sum': sum_i l_i. 'none': [N, H, W] l_i (0 at ignored pixels).
    """
    _check_ohem(ohem_threshold, ohem_min_kept, top_k_percent, reduction)
    log_probs, onehot, safe_labels, pixel_weight = prepare(logits, labels, ignore_label, weights)
    num_classes = logits.shape[-1]
    nll = -jnp.sum(onehot * log_probs, -1)
    if ohem_threshold:
        valid = valid_mask(labels, num_classes, ignore_label)
        pixel_weight = pixel_weight * _ohem_selection(nll, valid, ohem_threshold, ohem_min_kept)
    if class_weights is not None:
        class_weights = jnp.asarray(class_weights, jnp.float32)
        label_weight = class_weights[safe_labels]
    else:
        label_weight = jnp.ones_like(nll)
    if label_smoothing:
        if class_weights is not None:
            smooth = -jnp.sum(class_weights * log_probs, -1)
        else:
            smooth = -jnp.sum(log_probs, -1)
        per_pixel = (1.0 - label_smoothing) * label_weight * nll + (
            label_smoothing / num_classes
        ) * smooth
    else:
        per_pixel = label_weight * nll
    if top_k_percent != 1.0:
        return _top_k_image_mean(pixel_weight * per_pixel, pixel_weight * label_weight,
                                 top_k_percent, reduction)
    return reduce_pixels(pixel_weight * per_pixel, pixel_weight * label_weight, reduction)


def _check_ohem(threshold, min_kept, top_k_percent, reduction) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"ohem_threshold must be in [0, 1] (0 turns OHEM off), got {threshold}.")
    if min_kept < 0:
        raise ValueError(f"ohem_min_kept must be >= 0, got {min_kept}.")
    if threshold and top_k_percent != 1.0:
        raise ValueError(
            f"ohem_threshold={threshold} and top_k_percent={top_k_percent} are two hard-pixel "
            f"mining rules: choose one (ohem_threshold=0 or top_k_percent=1).")
    if threshold and reduction != "mean":
        raise ValueError(f"ohem_threshold={threshold} needs reduction='mean', got {reduction!r}.")


def _ohem_selection(nll, valid, threshold: float, min_kept: int):
    """mmseg's OHEM rule: float 0/1 [N, H, W], 1 at valid pixels with p_y < max(threshold, the
    min(K, n_valid - 1)-th smallest valid p_y), K = min_kept * N, over the whole batch."""
    # A constant mask: the selection carries no gradient (mmseg samples under torch.no_grad).
    prob = jnp.exp(-jax.lax.stop_gradient(nll))  # p_y in float32 (prepare works in float32)
    batch_kept = int(min_kept) * nll.shape[0]
    # -p with invalid pixels at -inf, so that top_k lists the valid pixels by ascending p first.
    neg_prob = jnp.where(valid, -prob, -jnp.inf).reshape(-1)
    smallest, _ = jax.lax.top_k(neg_prob, min(batch_kept + 1, neg_prob.size))
    num_valid = valid.sum()
    # Index min(K, n - 1) < k always: K < n gives K <= k - 1, else n - 1 <= min(K, size - 1).
    index = jnp.clip(jnp.minimum(batch_kept, num_valid - 1), 0, smallest.size - 1)
    min_threshold = jnp.where(num_valid > 0, -smallest[index], 0.0)
    return (valid & (prob < jnp.maximum(min_threshold, threshold))).astype(jnp.float32)


def _top_k_image_mean(losses, denominator_weight, fraction: float, reduction: str):
    """The mean over images of each image's top-k losses over their summed weights."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top_k_percent must be in (0, 1], got {fraction}.")
    if reduction != "mean":
        raise ValueError(f"top_k_percent={fraction} needs reduction='mean', got {reduction!r}.")
    num_images = losses.shape[0]
    losses = losses.reshape(num_images, -1)
    k = max(1, int(round(fraction * losses.shape[1])))
    top, index = jax.lax.top_k(losses, k)  # ties: the lower index first
    weight = jnp.take_along_axis(denominator_weight.reshape(num_images, -1), index, axis=1).sum(1)
    return jnp.mean(top.sum(1) / jnp.where(weight > 0, weight, 1.0))


def focal_loss(
    logits,
    labels,
    *,
    gamma: float = 2.0,
    alpha=None,
    ignore_label: int = 255,
    weights=None,
    reduction: str = "mean",
):
    """Softmax focal loss (Lin et al. 2017), -alpha_y * (1 - p_y)^gamma * log p_y.

    Args:
      logits: [N, H, W, C] float.
      labels: [N, H, W] int; `ignore_label` pixels contribute nothing.
      gamma: focusing exponent >= 0; gamma = 0 and alpha = None give `cross_entropy` exactly.
      alpha: None (1), a scalar, or a [C] per-class vector (a length-1 vector acts as a scalar).
      ignore_label: the void label.
      weights: optional [N, H, W] per-pixel weights v_i.
      reduction: 'mean' (default), 'sum' or 'none'.

    Returns:
      l_i = v_i * alpha_{y_i} * (1 - p_{i, y_i})^gamma * (-log p_{i, y_i}). 'mean':
      sum_i l_i / sum_i v_i over valid pixels: alpha is NOT in the denominator, as in the
      focal-loss paper (so, unlike `cross_entropy`'s class weights, alpha rescales the loss).
      'sum': sum_i l_i; 'none': [N, H, W] l_i. 1 - p is computed as -expm1(log p), exact near
      p = 1, and clamped at 1e-30 so that the gradient stays finite at p = 1 for gamma < 1.
    """
    log_probs, onehot, safe_labels, pixel_weight = prepare(logits, labels, ignore_label, weights)
    log_p = jnp.sum(onehot * log_probs, -1)
    per_pixel = -log_p
    if gamma != 0:
        one_minus_p = jnp.maximum(-jnp.expm1(log_p), FOCAL_BASE_FLOOR)
        per_pixel = jnp.power(one_minus_p, gamma) * per_pixel
    if alpha is not None:
        alpha = jnp.asarray(alpha, jnp.float32)
        if alpha.ndim == 1 and alpha.shape[0] not in (1, logits.shape[-1]):
            raise ValueError(f"alpha {alpha.shape} must be a scalar or [C={logits.shape[-1]}].")
        per_class = alpha.ndim == 1 and alpha.shape[0] > 1
        alpha_y = alpha[safe_labels] if per_class else alpha.reshape(())
        per_pixel = alpha_y * per_pixel
    return reduce_pixels(pixel_weight * per_pixel, pixel_weight, reduction)


def expected_cost_loss(
    logits,
    labels,
    *,
    cost,
    ignore_label: int = 255,
    weights=None,
    reduction: str = "mean",
):
    """Expected misclassification cost under the softmax, sum_c p_c * cost[c, y].

    Args:
      logits: [N, H, W, C] float.
      labels: [N, H, W] int; `ignore_label` pixels contribute nothing.
      cost: [C, C]; cost[c, c_true] is the cost of predicting c when the truth is c_true (the
        `seg_jax.decision` convention). cost = 1 - eye(C) gives the expected error 1 - p_y.
      ignore_label: the void label.
      weights: optional [N, H, W] per-pixel weights v_i.
      reduction: 'mean' (default), 'sum' or 'none'.

    Returns:
      l_i = v_i * sum_c p_ic * cost[c, y_i]; 'mean': sum_i l_i / sum_i v_i over valid pixels,
      'sum': sum_i l_i, 'none': [N, H, W] l_i.
    """
    log_probs, onehot, _, pixel_weight = prepare(logits, labels, ignore_label, weights)
    num_classes = logits.shape[-1]
    cost = jnp.asarray(cost, jnp.float32)
    if cost.shape != (num_classes, num_classes):
        raise ValueError(f"cost {cost.shape} must be [C, C] = {(num_classes, num_classes)}.")
    # column[i, c] = cost[c, y_i]: a one-hot matmul instead of a gather (cheap gradient).
    column = onehot @ cost.T
    per_pixel = jnp.sum(jnp.exp(log_probs) * column, -1)
    return reduce_pixels(pixel_weight * per_pixel, pixel_weight, reduction)
