"""Segmentation losses as pure, vectorised jnp functions, and a registry to pick them by name.

Every loss takes logits `[N, H, W, C]` (never probabilities) and integer labels `[N, H, W]`,
keyword-only options after those, an `ignore_label` (pixels with it contribute nothing) and an
optional per-pixel `weights` `[N, H, W]`. Every loss works under `jax.jit`, `jax.vmap` and
`jax.grad`; gradients are finite for saturated logits, for classes absent from the batch and when
every pixel is ignored (the loss is then 0 with a zero gradient).

Pixel-wise losses (`cross_entropy`, `focal_loss`, `expected_cost_loss`) take `reduction=`
'mean' | 'sum' | 'none'. Region losses (`dice_loss`, `jaccard_loss`, `tversky_loss`,
`lovasz_softmax_loss`) return a scalar.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from seg_jax.labels import valid_mask

# Below this, (1 - p) is clamped before raising it to the focal power: the gradient of x**gamma
# at x = 0 is infinite for gamma < 1, while the loss there is ~x**(1 + gamma), i.e. 0.
_FOCAL_BASE_FLOOR = 1e-30


def _check_shapes(logits, labels, weights=None) -> None:
    """Raises ValueError unless logits are [N, H, W, C], labels and weights [N, H, W]."""
    if logits.ndim < 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {logits.shape} and labels {labels.shape} disagree: logits must be "
            f"[N, H, W, C] and labels [N, H, W]."
        )
    if weights is not None and jnp.shape(weights) != labels.shape:
        raise ValueError(
            f"weights {jnp.shape(weights)} and labels {labels.shape} disagree: weights must be "
            f"[N, H, W] like the labels."
        )


def _prepare(logits, labels, ignore_label, weights):
    """Shared preamble: returns (log_probs, onehot, safe_labels, pixel_weight).

    `pixel_weight` [N, H, W] is 0 at ignored or out-of-range pixels and the per-pixel weight
    (1 by default) elsewhere; `safe_labels` replaces invalid labels by 0 so that indexing stays in
    range (their contributions are then multiplied by the zero pixel weight).
    """
    _check_shapes(logits, labels, weights)
    num_classes = logits.shape[-1]
    valid = valid_mask(labels, num_classes, ignore_label)
    safe_labels = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # A one-hot product rather than take_along_axis: the gradient of the latter is a scatter-add,
    # which XLA:CPU compiles far more slowly at image sizes.
    onehot = jax.nn.one_hot(safe_labels, num_classes, dtype=log_probs.dtype)
    pixel_weight = valid.astype(jnp.float32)
    if weights is not None:
        pixel_weight = pixel_weight * jnp.asarray(weights, jnp.float32)
    return log_probs, onehot, safe_labels, pixel_weight


def _reduce_pixels(losses, denominator_weight, reduction: str):
    """'none': losses; 'sum': their sum; 'mean': sum / sum(denominator_weight), 0 if that is 0."""
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    total_weight = denominator_weight.sum()
    # The where keeps the all-ignored case at 0 / 1 = 0 (and a zero gradient) instead of 0 / 0.
    return losses.sum() / jnp.where(total_weight > 0, total_weight, 1.0)


def cross_entropy(
    logits,
    labels,
    *,
    ignore_label: int = 255,
    weights=None,
    class_weights=None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
):
    """Pixel-wise softmax cross-entropy, optionally with label smoothing (PyTorch's convention).

    Args:
      logits: [N, H, W, C] float.
      labels: [N, H, W] int; `ignore_label` pixels contribute nothing.
      ignore_label: the void label.
      weights: optional [N, H, W] float per-pixel weights v_i.
      class_weights: optional [C] float w_c.
      label_smoothing: eps in [0, 1]; the target is (1 - eps) * onehot(y) + eps / C.
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
    log_probs, onehot, safe_labels, pixel_weight = _prepare(logits, labels, ignore_label, weights)
    num_classes = logits.shape[-1]
    nll = -jnp.sum(onehot * log_probs, -1)
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
    return _reduce_pixels(pixel_weight * per_pixel, pixel_weight * label_weight, reduction)


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
    log_probs, onehot, safe_labels, pixel_weight = _prepare(logits, labels, ignore_label, weights)
    log_p = jnp.sum(onehot * log_probs, -1)
    per_pixel = -log_p
    if gamma != 0:
        one_minus_p = jnp.maximum(-jnp.expm1(log_p), _FOCAL_BASE_FLOOR)
        per_pixel = jnp.power(one_minus_p, gamma) * per_pixel
    if alpha is not None:
        alpha = jnp.asarray(alpha, jnp.float32)
        if alpha.ndim == 1 and alpha.shape[0] not in (1, logits.shape[-1]):
            raise ValueError(f"alpha {alpha.shape} must be a scalar or [C={logits.shape[-1]}].")
        per_class = alpha.ndim == 1 and alpha.shape[0] > 1
        alpha_y = alpha[safe_labels] if per_class else alpha.reshape(())
        per_pixel = alpha_y * per_pixel
    return _reduce_pixels(pixel_weight * per_pixel, pixel_weight, reduction)


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
    log_probs, onehot, _, pixel_weight = _prepare(logits, labels, ignore_label, weights)
    num_classes = logits.shape[-1]
    cost = jnp.asarray(cost, jnp.float32)
    if cost.shape != (num_classes, num_classes):
        raise ValueError(f"cost {cost.shape} must be [C, C] = {(num_classes, num_classes)}.")
    # column[i, c] = cost[c, y_i]: a one-hot matmul instead of a gather (cheap gradient).
    column = onehot @ cost.T
    per_pixel = jnp.sum(jnp.exp(log_probs) * column, -1)
    return _reduce_pixels(pixel_weight * per_pixel, pixel_weight, reduction)


def _soft_counts(logits, labels, ignore_label, weights, per_image: bool):
    """Soft TP, FP, FN per (image, class) [N, C] or, with per_image=False, per class [C].

    With p = softmax(logits), g = onehot(labels) and v_i the pixel weight (0 when ignored):
    TP_c = sum_i v_i p_ic g_ic, FP_c = sum_i v_i p_ic (1 - g_ic), FN_c = sum_i v_i (1 - p_ic) g_ic,
    summed over H, W (and N when per_image is False). Ignored pixels therefore add nothing: the
    counts equal those of the image with those pixels removed.
    """
    log_probs, onehot, _, pixel_weight = _prepare(logits, labels, ignore_label, weights)
    probs = jnp.exp(log_probs)
    v = pixel_weight[..., None]
    axes = (1, 2) if per_image else (0, 1, 2)
    tp = jnp.sum(v * probs * onehot, axes)
    fp = jnp.sum(v * probs * (1.0 - onehot), axes)
    fn = jnp.sum(v * (1.0 - probs) * onehot, axes)
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
        powered = jnp.power(jnp.maximum(loss, _FOCAL_BASE_FLOOR), gamma)
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


def dice_loss(
    logits,
    labels,
    *,
    smooth: float = 1e-5,
    per_image: bool = True,
    include_background: bool = True,
    class_weights=None,
    ignore_label: int = 255,
    weights=None,
):
    """Soft Dice loss, 1 - D with D = (2 TP + s) / (2 TP + FP + FN + s).

    2 TP + FP + FN = |p| + |g|, the sums of probabilities and one-hot truth.

    With its defaults it equals MONAI's `DiceLoss(softmax=True, to_onehot_y=True)` (smooth_nr =
    smooth_dr = 1e-5, batch=False, squared_pred=False, reduction='mean' over images and classes).
    """
    tp, fp, fn = _soft_counts(logits, labels, ignore_label, weights, per_image)
    score = _safe_ratio(2.0 * tp + smooth, 2.0 * tp + fp + fn + smooth)
    return _reduce_region_loss(
        1.0 - score, include_background=include_background, class_weights=class_weights
    )


def jaccard_loss(
    logits,
    labels,
    *,
    smooth: float = 1e-5,
    per_image: bool = True,
    include_background: bool = True,
    class_weights=None,
    ignore_label: int = 255,
    weights=None,
):
    """Soft Jaccard (IoU) loss, 1 - J with J = (TP + s) / (TP + FP + FN + s).

    TP + FP + FN = |p| + |g| - TP, MONAI's union. MONAI's `DiceLoss(jaccard=True)` computes
    (2 TP + s) / (2 (TP + FP + FN) + s), i.e. this formula with s / 2: the two agree exactly
    for smooth = s_monai / 2 and to ~s otherwise.
    """
    tp, fp, fn = _soft_counts(logits, labels, ignore_label, weights, per_image)
    score = _safe_ratio(tp + smooth, tp + fp + fn + smooth)
    return _reduce_region_loss(
        1.0 - score, include_background=include_background, class_weights=class_weights
    )


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


def _lovasz_flat(errors, truth, valid):
    """Per-class Lovasz-softmax losses of one flat set of pixels.

    Args:
      errors: [P, C] non-negative errors (|fg - p_c|, times pixel weights), 0 at ignored pixels.
      truth: [P, C] 0/1 one-hot ground truth, 0 at ignored pixels.
      valid: [P] bool.

    Returns:
      (loss [C], present [C] bool): loss_c = dot(e_sorted, lovasz_grad(truth_sorted)) with the
      errors sorted descending; present_c is whether class c occurs among the valid pixels.
    """
    # Sizes must be static under jit, so ignored pixels are kept but sorted strictly last (key -1
    # is below every valid error, which is >= 0) with error 0 and truth 0: the cumulative sums at
    # every valid position are then those without them, and they add 0 * grad to the dot product.
    key = jnp.where(valid[:, None], jax.lax.stop_gradient(errors), -1.0)
    order = jnp.argsort(key, axis=0, descending=True)
    errors_sorted = jnp.take_along_axis(errors, order, axis=0)
    truth_sorted = jnp.take_along_axis(truth, order, axis=0)
    gts = truth_sorted.sum(0)
    intersection = gts - jnp.cumsum(truth_sorted, 0)
    # union >= 1 at every position (either the first sorted pixel is foreground, so gts >= 1, or
    # the cumulative background count is >= 1), so the division is always safe.
    union = gts + jnp.cumsum(1.0 - truth_sorted, 0)
    jaccard = 1.0 - intersection / union
    grad = jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)
    return jnp.sum(errors_sorted * grad, 0), gts > 0


def lovasz_softmax_loss(
    logits,
    labels,
    *,
    classes="present",
    per_image: bool = False,
    ignore_label: int = 255,
    weights=None,
):
    """Lovasz-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018).

    For each class c over the valid pixels: errors e_i = |fg_ic - p_ic| (fg = onehot(labels)),
    sorted descending with the ground truth in the same order, g_sorted; with cumulative sums
    J_k = 1 - (sum(g) - cumsum(g_sorted)_k) / (sum(g) + cumsum(1 - g_sorted)_k) (the Jaccard loss
    of predicting the first k+1 sorted pixels as foreground), lovasz_grad = (J_0, J_1 - J_0,
    J_2 - J_1, ...) and loss_c = dot(e_sorted, lovasz_grad), the Lovasz extension of the Jaccard
    loss evaluated at e.

    Args:
      logits: [N, H, W, C] float.
      labels: [N, H, W] int; `ignore_label` pixels are excluded (exactly: the loss equals the
        loss with those pixels removed).
      classes: 'present' (default): mean over classes present in the labels (of the batch, or of
        each image when per_image); 'all': mean over all C classes (an absent class then costs
        its largest probability); or a sequence of class ids to average over (as the reference).
      per_image: False (default): one sort over all pixels of the batch; True: the loss of each
        image, averaged over images (as the reference `lovasz_softmax(per_image=True)`).
      ignore_label: the void label.
      weights: optional [N, H, W] v_i >= 0: errors become v_i * e_i before sorting; pixels with
        v_i = 0 are treated as ignored. (Not in the paper; None is the reference algorithm.)

    Returns:
      A scalar. With no valid pixel (or, for 'present', no class present) it is 0 with a zero
      gradient.
    """
    if isinstance(classes, str) and classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present', 'all' or class ids, got {classes!r}.")
    log_probs, onehot, _, pixel_weight = _prepare(logits, labels, ignore_label, weights)
    num_classes = logits.shape[-1]
    valid = pixel_weight > 0
    truth = onehot * valid[..., None]
    # pixel_weight is 0 at ignored pixels, so their errors are 0 (with a zero gradient).
    errors = jnp.abs(truth - jnp.exp(log_probs)) * pixel_weight[..., None]
    only_present = isinstance(classes, str) and classes == "present"
    if isinstance(classes, str):
        class_mask = jnp.ones((num_classes,), bool)
    else:
        class_mask = jnp.zeros((num_classes,), bool).at[jnp.asarray(classes, jnp.int32)].set(True)

    def one_set(errors, truth, valid):
        loss, present = _lovasz_flat(
            errors.reshape(-1, num_classes), truth.reshape(-1, num_classes), valid.reshape(-1)
        )
        use = class_mask & present if only_present else class_mask
        return jnp.sum(jnp.where(use, loss, 0.0)) / jnp.maximum(use.sum(), 1)

    if per_image:
        return jnp.mean(jax.vmap(one_set)(errors, truth, valid))
    return one_set(errors, truth, valid)


def center_heatmap_loss(pred, target, *, weights, reduction: str = "mean"):
    """Panoptic-DeepLab's centre loss: squared error of the heatmap, `weights`-averaged.

    Args:
      pred, target: [N, H, W] heatmaps (target: Gaussians of peak 1 around the centres).
      weights: [N, H, W], 0 where the pixel does not count (void).
      reduction: 'mean' (over the weights), 'sum' or 'none' ([N, H, W]).
    """
    losses = weights * (pred - target) ** 2
    return _reduce_pixels(losses, weights, reduction)


def offset_loss(pred, target, *, weights, reduction: str = "mean"):
    """Panoptic-DeepLab's offset loss: L1 of the (dy, dx) offsets, `weights`-averaged.

    Args:
      pred, target: [N, H, W, 2] offsets in pixels.
      weights: [N, H, W], 1 on the pixels of thing segments, 0 elsewhere.
      reduction: 'mean' (over the weights), 'sum' or 'none' ([N, H, W]).
    """
    losses = weights * jnp.abs(pred - target).sum(-1)
    return _reduce_pixels(losses, weights, reduction)


_LOSSES: dict[str, Callable] = {
    "cross_entropy": cross_entropy,
    "focal": focal_loss,
    "dice": dice_loss,
    "jaccard": jaccard_loss,
    "tversky": tversky_loss,
    "lovasz": lovasz_softmax_loss,
    "expected_cost": expected_cost_loss,
}


def _is_unset(value) -> bool:
    return value is None or (isinstance(value, (tuple, list)) and len(value) == 0)


def _options(loss_config, name: str) -> dict:
    """The options in `loss_config.<name>` as keyword arguments, with empty values dropped.

    None and () mean "use the function default" (e.g. `focal.alpha = ()` is alpha=None), so that
    every option can have a typed default in the config and still be overridden from the
    command line.
    """
    sub = loss_config.get(name, None) if hasattr(loss_config, "get") else None
    if sub is None:
        return {}
    items = sub.to_dict() if hasattr(sub, "to_dict") else dict(sub)
    return {k: v for k, v in items.items() if not _is_unset(v)}


def get_loss(loss_config) -> Callable:
    """Returns `loss(logits, labels) -> scalar` for `loss_config`, a sum of weighted terms.

    Args:
      loss_config: a loss name (str, all options at their defaults), or a ConfigDict (or anything
        with attribute access and `.get`) with
        name: a loss name or several joined by '+', e.g. 'cross_entropy+dice'; names are
          'cross_entropy', 'focal', 'dice', 'jaccard', 'tversky', 'lovasz', 'expected_cost'.
        weights: optional tuple of floats, one per term (default: all 1.0; None or () too).
        ignore_label: passed to every term.
        <name>: optional sub-dict of keyword options for that term, e.g. `focal.gamma`,
          `dice.smooth`, `tversky.alpha`, `expected_cost.cost` ([C][C] nested tuple, required
          for 'expected_cost'). Options not given take the function defaults.

    Returns:
      loss(logits, labels) = sum_k weights[k] * term_k(logits, labels, ignore_label=..., **opts_k).

    Raises:
      ValueError: unknown names (listing the valid ones), a weights length that differs from the
        number of terms, or 'expected_cost' without a cost matrix.
    """
    if isinstance(loss_config, str):  # get_loss('cross_entropy+dice'): every option at its default
        loss_config = ml_collections.ConfigDict({"name": loss_config})
    names = [n.strip() for n in str(loss_config.name).split("+")]
    unknown = [n for n in names if n not in _LOSSES]
    if unknown or not names:
        raise ValueError(
            f"Unknown loss config.loss.name={loss_config.name!r} ({unknown}); valid names: "
            f"{sorted(_LOSSES)}, or several joined by '+'."
        )
    term_weights = loss_config.get("weights", None) if hasattr(loss_config, "get") else None
    if term_weights is None or len(term_weights) == 0:
        term_weights = (1.0,) * len(names)
    if len(term_weights) != len(names):
        raise ValueError(
            f"config.loss.weights={tuple(term_weights)} has {len(term_weights)} entries but "
            f"config.loss.name={loss_config.name!r} has {len(names)} terms."
        )
    ignore_label = loss_config.get("ignore_label", 255) if hasattr(loss_config, "get") else 255
    terms = []
    for name, term_weight in zip(names, term_weights):
        options = _options(loss_config, name)
        if name == "expected_cost" and "cost" not in options:
            raise ValueError(
                "The 'expected_cost' loss needs config.loss.expected_cost.cost ([C][C])."
            )
        terms.append((_LOSSES[name], float(term_weight), options))

    def loss(logits, labels):
        total = 0.0
        for fn, term_weight, options in terms:
            total = total + term_weight * fn(logits, labels, ignore_label=ignore_label, **options)
        return total

    return loss
