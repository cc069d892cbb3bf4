"""Confusion-matrix metrics for semantic segmentation.

The confusion matrix is the sufficient statistic: matrices of batches, devices and hosts add, and
every score below is computed once from the sum. Convention: `cm[t, p]` counts pixels whose true
class is `t` and predicted class is `p` (rows = ground truth), as in torchmetrics and the
Cityscapes scripts. Score functions accept jnp or numpy arrays (host sums are int64 numpy).
"""

import jax.numpy as jnp
import numpy as np

from seg_jax.labels import valid_mask


def confusion_matrix(pred, label, num_classes: int, *, ignore_label: int = 255, weights=None):
    """Counts (true, predicted) class pairs over valid pixels.

    Args:
      pred: [...] int predicted class ids (any shape, e.g. [N, H, W]).
      label: [...] int true class ids, same shape; pixels equal to `ignore_label`, or outside
        [0, num_classes), count nowhere.
      num_classes: C.
      ignore_label: the void label.
      weights: optional [...] per-pixel weights (then the result is float32 weighted counts).

    Returns:
      [C, C] int32 (float32 with `weights`) matrix, rows = true class, columns = predicted class.
      Predictions outside [0, C) on a valid pixel are dropped (they are no class).
    """
    pred = jnp.asarray(pred).reshape(-1)
    label = jnp.asarray(label).reshape(-1)
    if pred.shape != label.shape:
        raise ValueError(f"pred and label must have the same size, got {pred.shape} and {label.shape}.")
    valid = valid_mask(label, num_classes, ignore_label)
    valid &= (pred >= 0) & (pred < num_classes)
    if weights is None:
        counts = valid.astype(jnp.int32)
    else:
        counts = jnp.where(valid, jnp.asarray(weights, jnp.float32).reshape(-1), 0.0)
    # Invalid pixels go to index 0 with a count of 0, so the scatter needs no dynamic shapes.
    flat_index = jnp.where(valid, label * num_classes + pred, 0)
    matrix = jnp.zeros(num_classes * num_classes, counts.dtype).at[flat_index].add(counts)
    return matrix.reshape(num_classes, num_classes)


def _xp(cm):
    return np if isinstance(cm, np.ndarray) else jnp


def _nanmean(values):
    # nanmean without numpy's "mean of empty slice" warning: all-NaN gives NaN quietly.
    xp = _xp(values)
    present = ~xp.isnan(values)
    count = present.sum()
    total = xp.where(present, values, 0).sum()
    return xp.where(count > 0, total / xp.maximum(count, 1), xp.nan)


def iou(cm):
    """Per-class intersection over union [C]; NaN for a class absent from truth and prediction."""
    xp = _xp(cm)
    cm = cm.astype(xp.float64 if xp is np else jnp.float32)
    tp = xp.diagonal(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return xp.where(union > 0, tp / xp.where(union > 0, union, 1), xp.nan)


def mean_iou(cm):
    """Mean of the per-class IoU over classes with a non-empty union (NaN classes excluded).

    This equals torchmetrics' `MulticlassJaccardIndex(average="macro", ignore_index=...)`.
    """
    return _nanmean(iou(cm))


def pixel_accuracy(cm):
    """Fraction of valid pixels predicted correctly: trace / total."""
    xp = _xp(cm)
    total = cm.sum()
    return xp.where(total > 0, xp.trace(cm) / xp.where(total > 0, total, 1), xp.nan)


def class_accuracy(cm):
    """Per-class recall [C] (correct / true pixels of the class); NaN for classes not in truth."""
    xp = _xp(cm)
    cm = cm.astype(xp.float64 if xp is np else jnp.float32)
    support = cm.sum(1)
    return xp.where(support > 0, xp.diagonal(cm) / xp.where(support > 0, support, 1), xp.nan)


def mean_accuracy(cm):
    """Mean per-class recall over classes present in the ground truth."""
    return _nanmean(class_accuracy(cm))


def dice_score(cm):
    """Per-class Dice / F1 [C]: 2 TP / (2 TP + FP + FN); NaN when the class is nowhere."""
    xp = _xp(cm)
    cm = cm.astype(xp.float64 if xp is np else jnp.float32)
    tp = xp.diagonal(cm)
    denom = cm.sum(0) + cm.sum(1)
    return xp.where(denom > 0, 2 * tp / xp.where(denom > 0, denom, 1), xp.nan)
