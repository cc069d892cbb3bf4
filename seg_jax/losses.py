"""Segmentation losses as pure, vectorised jnp functions, and a registry to pick them by name.

Every loss takes logits `[N, H, W, C]` (never probabilities) and integer labels `[N, H, W]`,
keyword-only options after those, an `ignore_label` (pixels with it contribute nothing) and an
optional per-pixel `weights` `[N, H, W]`.
"""

from typing import Callable

import jax
import jax.numpy as jnp


def _valid_mask(labels, num_classes: int, ignore_label: int):
    return (labels != ignore_label) & (labels >= 0) & (labels < num_classes)


def cross_entropy(
    logits,
    labels,
    *,
    ignore_label: int = 255,
    weights=None,
    class_weights=None,
    reduction: str = "mean",
):
    """Pixel-wise softmax cross-entropy, -log p_y.

    Args:
      logits: [N, H, W, C] float.
      labels: [N, H, W] int; `ignore_label` pixels contribute nothing.
      ignore_label: the void label.
      weights: optional [N, H, W] float per-pixel weights.
      class_weights: optional [C] float; pixel i gets weight w_{y_i}.
      reduction: 'mean' (default), 'sum' or 'none'.

    Returns:
      'mean': sum_i w_i * (-log p_{i, y_i}) / sum_i w_i over valid pixels i, where w_i is the
      product of the per-pixel and class weights (PyTorch's `F.cross_entropy(weight=...,
      ignore_index=...)` convention). With every pixel ignored the result is 0 with a zero
      gradient, never NaN. 'sum': the numerator. 'none': [N, H, W] per-pixel weighted losses
      (0 at ignored pixels).
    """
    num_classes = logits.shape[-1]
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {logits.shape} and labels {labels.shape} disagree: logits must be "
            f"[N, H, W, C] and labels [N, H, W]."
        )
    valid = _valid_mask(labels, num_classes, ignore_label)
    safe_labels = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # A one-hot product rather than take_along_axis: the gradient of the latter is a scatter-add,
    # which XLA:CPU compiles far more slowly at image sizes.
    nll = -jnp.sum(jax.nn.one_hot(safe_labels, num_classes, dtype=log_probs.dtype) * log_probs, -1)
    pixel_weight = valid.astype(jnp.float32)
    if weights is not None:
        pixel_weight = pixel_weight * jnp.asarray(weights, jnp.float32)
    if class_weights is not None:
        pixel_weight = pixel_weight * jnp.asarray(class_weights, jnp.float32)[safe_labels]
    losses = pixel_weight * nll
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    total_weight = pixel_weight.sum()
    return losses.sum() / jnp.where(total_weight > 0, total_weight, 1.0)


_LOSSES: dict[str, Callable] = {"cross_entropy": cross_entropy}


def get_loss(loss_config) -> Callable:
    """Returns `loss(logits, labels) -> scalar` for `loss_config.name`, bound to its options."""
    name = loss_config.name
    if name not in _LOSSES:
        raise ValueError(f"Unknown loss config.loss.name={name!r}; known losses: {sorted(_LOSSES)}.")
    fn = _LOSSES[name]
    ignore_label = loss_config.ignore_label

    def loss(logits, labels):
        return fn(logits, labels, ignore_label=ignore_label)

    return loss
