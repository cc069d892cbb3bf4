"""What every loss shares: the shape check, the preamble (log-probabilities, one-hot labels, pixel
weights that are 0 at ignored pixels) and the reduction of per-pixel losses."""

import jax
import jax.numpy as jnp

from seg_jax.labels import valid_mask


# Below this, (1 - p) is clamped before raising it to the focal power: the gradient of x**gamma
# at x = 0 is infinite for gamma < 1, while the loss there is ~x**(1 + gamma), i.e. 0.
FOCAL_BASE_FLOOR = 1e-30


def check_shapes(logits, labels, weights=None) -> None:
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


def prepare(logits, labels, ignore_label, weights):
    """Shared preamble: returns (log_probs, onehot, safe_labels, pixel_weight), the
    log-softmax of `logits` and `prepare_labels`."""
    onehot, safe_labels, pixel_weight = prepare_labels(logits, labels, ignore_label, weights)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return log_probs, onehot, safe_labels, pixel_weight


def prepare_labels(logits, labels, ignore_label, weights):
    """The labels' side of the preamble: returns (onehot, safe_labels, pixel_weight).

    `pixel_weight` [N, H, W] is 0 at ignored or out-of-range pixels and the per-pixel weight
    (1 by default) elsewhere; `safe_labels` replaces invalid labels by 0 so that indexing stays in
    range (their contributions are then multiplied by the zero pixel weight); `onehot` float32
    [N, H, W, C] of `safe_labels`.
    """
    check_shapes(logits, labels, weights)
    num_classes = logits.shape[-1]
    valid = valid_mask(labels, num_classes, ignore_label)
    safe_labels = jnp.where(valid, labels, 0)
    # A one-hot product rather than take_along_axis: the gradient of the latter is a scatter-add,
    # which XLA:CPU compiles far more slowly at image sizes.
    onehot = jax.nn.one_hot(safe_labels, num_classes, dtype=jnp.float32)
    pixel_weight = valid.astype(jnp.float32)
    if weights is not None:
        pixel_weight = pixel_weight * jnp.asarray(weights, jnp.float32)
    return onehot, safe_labels, pixel_weight


def reduce_pixels(losses, denominator_weight, reduction: str):
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
