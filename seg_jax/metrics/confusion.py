"""Confusion-matrix metrics for semantic segmentation.

The confusion matrix is the sufficient statistic: matrices of batches, devices and hosts add, and
every score below is computed once from the sum. Convention: `cm[t, p]` counts pixels whose true
class is `t` and predicted class is `p` (rows = ground truth), as in torchmetrics and the
Cityscapes scripts. Score functions accept jnp or numpy arrays (host sums are int64 numpy), a
`[C, C]` matrix or the `[C, C + 1]` matrix of `void_prediction="false_negative"`, and any leading
batch axes (e.g. the `[N, C, C]` of `per_image_confusion_matrix`, giving one score per image).

Where published evaluations disagree, the choice is a named option whose default is stated:

- `empty=` what a class with an empty union (no true and no predicted pixel) scores:
  "nan" (default) NaN, left out of means; "zero" 0; "one" 1. See `iou`.
- `void_prediction=` what a prediction that is no class does on a valid pixel: "drop" (default)
  or "false_negative" (the Cityscapes scripts). See `confusion_matrix`.
- dataset vs per-image averaging: `mean_iou` pools the pixels of the whole dataset;
  `per_image_iou_sums` + `per_image_mean_iou` average over (image, class) pairs.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seg_jax.labels import valid_mask
from seg_jax.metrics.histogram import histogram

EMPTY_CONVENTIONS = ("nan", "zero", "one")
VOID_PREDICTIONS = ("drop", "false_negative")
_EMPTY_VALUE = {"nan": math.nan, "zero": 0.0, "one": 1.0}

def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not a known convention; use one of {choices}.")


def _pair_counts(pred, label, num_classes, ignore_label, void_prediction, weights, num_images):
    """Counts [num_images, C, C or C + 1] of (true, predicted) pairs; see `confusion_matrix`."""
    _check_choice("void_prediction", void_prediction, VOID_PREDICTIONS)
    pred = jnp.asarray(pred)
    label = jnp.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"pred and label must have the same shape, got {pred.shape} and {label.shape}.")
    num_columns = num_classes + (void_prediction == "false_negative")
    pixels_per_image = label.size // max(num_images, 1)
    if num_images * num_classes * num_columns >= 2**31:
        raise ValueError(
            f"{num_images} images x {num_classes} x {num_columns} bins overflow int32 indices; "
            "split the batch."
        )
    arrays = [pred.reshape(-1).astype(jnp.int32), label.reshape(-1).astype(jnp.int32)]
    if weights is not None:
        weights = jnp.asarray(weights, jnp.float32)
        if weights.shape != label.shape:
            raise ValueError(f"weights must have the label's shape {label.shape}, got {weights.shape}.")
        arrays.append(weights.reshape(-1))

    def bins_and_counts(start, pred, label, *weights):
        valid = valid_mask(label, num_classes, ignore_label)
        # A prediction is a class when it is in [0, C) and not the void label; anything else is a
        # void prediction, dropped or counted in the extra last column.
        is_class = (pred >= 0) & (pred < num_classes) & (pred != ignore_label)
        if void_prediction == "drop":
            valid &= is_class
            column = pred
        else:
            column = jnp.where(is_class, pred, num_classes)
        bins = label * num_columns + column
        if num_images > 1:
            image = (start + lax.iota(jnp.int32, pred.shape[0])) // pixels_per_image
            bins += image * (num_classes * num_columns)
        bins = jnp.where(valid, bins, 0)
        counts = valid.astype(jnp.int32) if not weights else jnp.where(valid, weights[0], 0.0)
        return bins, counts

    dtype = jnp.int32 if weights is None else jnp.float32
    hist = histogram(num_images * num_classes * num_columns, bins_and_counts, arrays, dtype)
    return hist.reshape(num_images, num_classes, num_columns)


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_label", "void_prediction"))
def confusion_matrix(pred, label, num_classes: int, *, ignore_label: int = 255, weights=None,
                     void_prediction: str = "drop"):
    """Counts (true, predicted) class pairs over valid pixels.

    Args:
      pred: [...] int predicted class ids (any shape, e.g. [N, H, W]).
      label: [...] int true class ids, same shape; pixels equal to `ignore_label`, or outside
        [0, num_classes), count nowhere (`seg_jax.labels.valid_mask`).
      num_classes: C.
      ignore_label: the void label.
      weights: optional [...] per-pixel weights (then the result is float32 weighted counts).
      void_prediction: what a *void prediction* -- a `pred` outside [0, C) or equal to
        `ignore_label` -- on a valid pixel counts as:
        - "drop" (default): nothing; the pixel is left out as if its label were void. The
          scores then describe only pixels that received a class. Predictions from an argmax or
          Bayes decision are never void, so for them both options give the same scores.
        - "false_negative": a false negative of the true class and nobody's false positive.
          The result gets an extra last column counting such pixels, [C, C + 1]. This is the
          Cityscapes benchmark's rule (cityscapesscripts `evalPixelLevelSemanticLabeling`:
          `getIouScoreForLabel` takes FN from the whole row, which includes the columns of
          `ignoreInEval` labels, and FP only from the rows of evaluated labels). mmsegmentation's
          `IoUMetric` agrees: its class histograms (`torch.histc` over [0, C - 1]) drop out-of-range
          predictions from the predicted area but keep their pixels in the label area.

    Returns:
      [C, C] int32 (float32 with `weights`) matrix, rows = true class, columns = predicted class;
      [C, C + 1] with `void_prediction="false_negative"`. Counts are exact; one call may count up
      to 2^31 - 1 pixels, sums over a dataset belong on the host in int64.
    """
    return _pair_counts(pred, label, num_classes, ignore_label, void_prediction, weights, 1)[0]


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_label", "void_prediction"))
def per_image_confusion_matrix(pred, label, num_classes: int, *, ignore_label: int = 255,
                               weights=None, void_prediction: str = "drop"):
    """One confusion matrix per image, for per-image scores (`per_image_iou_sums`).

    Args:
      pred: [N, ...] int predicted class ids, image index first (e.g. [N, H, W]).
      label: [N, ...] int true class ids, same shape.
      num_classes, ignore_label, weights, void_prediction: as in `confusion_matrix`.

    Returns:
      [N, C, C] int32 (float32 with `weights`; [N, C, C + 1] with
      `void_prediction="false_negative"`); `result.sum(0)` is `confusion_matrix(pred, label, ...)`.
    """
    num_images = jnp.shape(label)[0] if jnp.ndim(label) else 0
    if num_images == 0:
        raise ValueError(f"pred and label need a leading image axis, got shape {jnp.shape(label)}.")
    return _pair_counts(pred, label, num_classes, ignore_label, void_prediction, weights, num_images)


def _xp(cm):
    return np if isinstance(cm, np.ndarray) else jnp


def _totals(cm):
    """(xp, true positives, true totals, predicted totals), each [..., C] float.

    Works for [..., C, C] and [..., C, C + 1] matrices: the extra column (void predictions) adds to
    the true totals (it holds ground-truth pixels of the row's class) and to no predicted total.
    """
    xp = _xp(cm)
    cm = xp.asarray(cm)
    if cm.ndim < 2 or cm.shape[-1] not in (cm.shape[-2], cm.shape[-2] + 1):
        raise ValueError(
            f"expected a confusion matrix of shape [..., C, C] or [..., C, C + 1], got {cm.shape}."
        )
    cm = cm.astype(np.float64 if xp is np else jnp.float32)
    square = cm[..., : cm.shape[-2]]
    tp = xp.diagonal(square, axis1=-2, axis2=-1)
    return xp, tp, cm.sum(-1), square.sum(-2)


def _ratio(xp, num, den, empty_value):
    return xp.where(den > 0, num / xp.where(den > 0, den, 1), empty_value)


def _nanmean(values):
    # nanmean over the last axis without numpy's "mean of empty slice" warning: all-NaN gives NaN.
    xp = _xp(values)
    present = ~xp.isnan(values)
    count = present.sum(-1)
    total = xp.where(present, values, 0).sum(-1)
    return xp.where(count > 0, total / xp.maximum(count, 1), xp.nan)


def iou(cm, *, empty: str = "nan"):
    """Per-class intersection over union [..., C]: TP / (TP + FP + FN).

    `empty` is the score of a class with an empty union (no true and no predicted pixel), where
    IoU is 0 / 0. The published evaluations disagree:
      - "nan" (default): NaN, and means skip the class. torchmetrics
        `MulticlassJaccardIndex(average="macro")` (whatever its `zero_division`), the Cityscapes
        scripts (`getIouScoreForLabel` returns NaN, `getScoreAverage` skips it), mmsegmentation
        `IoUMetric` (0 / 0 = NaN, then `np.nanmean`) and Keras `MeanIoU` (averages over classes
        with a non-zero denominator).
      - "zero": 0, counted in means. pytorch-ignite `IoU` / `mIoU` (TP / (union + 1e-15), mean
        over all classes) and torchmetrics' per-class `average="none"` with its default
        `zero_division=0`.
      - "one": 1, counted in means (an absent class predicted absent is perfect).
        segmentation_models_pytorch `smp.metrics.iou_score` (default `zero_division=1.0`) and
        torchmetrics `average="none", zero_division=1`.
    """
    _check_choice("empty", empty, EMPTY_CONVENTIONS)
    xp, tp, true, predicted = _totals(cm)
    return _ratio(xp, tp, true + predicted - tp, _EMPTY_VALUE[empty])


def mean_iou(cm, *, empty: str = "nan"):
    """Mean IoU over classes, pooling all pixels counted in `cm` (dataset mIoU).

    With `empty="nan"` (default) classes with an empty union are left out, which equals torchmetrics'
    `MulticlassJaccardIndex(num_classes, average="macro", ignore_index=...)`; NaN when every class
    is empty (all pixels ignored). With "zero" / "one" the mean is over all C classes (see `iou`).
    """
    return _nanmean(iou(cm, empty=empty))


def frequency_weighted_iou(cm):
    """Frequency-weighted IoU: sum_c freq_c * IoU_c with freq_c = true pixels of c / all true pixels.

    As defined by Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic
    Segmentation" (CVPR 2015), Sec. 5: (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii).
    A class without true pixels weighs 0, so no `empty` convention is needed. Void predictions
    (the extra column) count in t_i. NaN when there are no valid pixels.
    """
    xp, tp, true, predicted = _totals(cm)
    union = true + predicted - tp
    weighted = _ratio(xp, true * tp, union, 0.0).sum(-1)
    return _ratio(xp, weighted, true.sum(-1), xp.nan)


def pixel_accuracy(cm):
    """Fraction of valid pixels predicted correctly: trace / total (void predictions are wrong)."""
    xp, tp, true, _ = _totals(cm)
    return _ratio(xp, tp.sum(-1), true.sum(-1), xp.nan)


def class_accuracy(cm):
    """Per-class recall [..., C] (correct / true pixels of the class); NaN for classes not in truth."""
    xp, tp, true, _ = _totals(cm)
    return _ratio(xp, tp, true, xp.nan)


def class_precision(cm):
    """Per-class precision [..., C] (correct / predicted pixels of the class); NaN for classes never
    predicted. Void predictions (the extra column) are predictions of no class."""
    xp, tp, _, predicted = _totals(cm)
    return _ratio(xp, tp, predicted, xp.nan)


def mean_accuracy(cm):
    """Mean per-class recall over classes present in the ground truth."""
    return _nanmean(class_accuracy(cm))


def dice_score(cm, *, empty: str = "nan"):
    """Per-class Dice / F1 [..., C]: 2 TP / (2 TP + FP + FN).

    Its denominator is zero exactly when the IoU's is, and `empty` takes the same conventions as
    `iou` ("nan" default; segmentation_models_pytorch `f1_score` defaults to 1).
    """
    _check_choice("empty", empty, EMPTY_CONVENTIONS)
    xp, tp, true, predicted = _totals(cm)
    return _ratio(xp, 2 * tp, true + predicted, _EMPTY_VALUE[empty])


def mean_dice(cm, *, empty: str = "nan"):
    """Mean Dice over classes; empty classes as in `dice_score` (left out with "nan")."""
    return _nanmean(dice_score(cm, empty=empty))


def per_image_iou_sums(per_image_cm):
    """Sufficient statistics of the per-image mean IoU: (iou_sum [C], pair_count [C]).

    For every (image, class) pair whose union is non-empty *in that image*, the IoU of the class
    in the image is added to `iou_sum[class]` and 1 to `pair_count[class]`; pairs with an empty
    union are left out. Both add across batches, devices and hosts; `per_image_mean_iou` finishes.

    This is the per-image averaging of torchmetrics `segmentation.MeanIoU` (its `score` and
    `num_batches` states are exactly these sums), one answer to Csurka, Larlus and Perronnin,
    "What is a good evaluation measure for semantic segmentation?" (BMVC 2013), who argue for
    per-image scores over scores pooled across the dataset: a small object missed in one image
    weighs as much as a large one, and no image can hide another's failures.

    Args:
      per_image_cm: [N, C, C] or [N, C, C + 1] (`per_image_confusion_matrix`), jnp or numpy.

    Returns:
      iou_sum: [C] float (float32 for jnp, float64 for numpy).
      pair_count: [C] int (int32 for jnp, int64 for numpy).
    """
    ious = iou(per_image_cm)
    xp = _xp(ious)
    present = ~xp.isnan(ious)
    count_dtype = np.int64 if xp is np else jnp.int32
    ious = ious.reshape(-1, ious.shape[-1])
    present = present.reshape(ious.shape)
    return xp.where(present, ious, 0).sum(0), present.sum(0).astype(count_dtype)


def per_image_mean_iou(iou_sum, pair_count, *, per_class: bool = False):
    """Finishes `per_image_iou_sums`: the mean IoU over (image, class) pairs with a non-empty union.

    Args:
      iou_sum: [C] summed `iou_sum` of all batches.
      pair_count: [C] summed `pair_count`.
      per_class: False (default): one number, sum(iou_sum) / sum(pair_count) (torchmetrics
        `MeanIoU(per_class=False)`). True: [C], each class's mean IoU over the images where its
        union is non-empty (torchmetrics `MeanIoU(per_class=True)`, which reports -1 where we
        report NaN).

    Returns:
      A scalar, or [C]; NaN where no pair counts.
    """
    xp = _xp(iou_sum)
    iou_sum = xp.asarray(iou_sum)
    pair_count = xp.asarray(pair_count).astype(iou_sum.dtype)
    if per_class:
        return _ratio(xp, iou_sum, pair_count, xp.nan)
    return _ratio(xp, iou_sum.sum(), pair_count.sum(), xp.nan)
