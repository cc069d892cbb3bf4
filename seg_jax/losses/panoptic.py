"""Panoptic-DeepLab's centre-heatmap and offset losses (their own inputs, not logits)."""

import jax.numpy as jnp

from seg_jax.losses.common import reduce_pixels


def center_heatmap_loss(pred, target, *, weights, reduction: str = "mean"):
    """Panoptic-DeepLab's centre loss: squared error of the heatmap, `weights`-averaged.

    Args:
      pred, target: [N, H, W] heatmaps (target: Gaussians of peak 1 around the centres).
      weights: [N, H, W], 0 where the pixel does not count (void).
      reduction: 'mean' (over the weights), 'sum' or 'none' ([N, H, W]).
    """
    losses = weights * (pred - target) ** 2
    return reduce_pixels(losses, weights, reduction)


def offset_loss(pred, target, *, weights, reduction: str = "mean"):
    """Panoptic-DeepLab's offset loss: L1 of the (dy, dx) offsets, `weights`-averaged.

    Args:
      pred, target: [N, H, W, 2] offsets in pixels.
      weights: [N, H, W], 1 on the pixels of thing segments, 0 elsewhere.
      reduction: 'mean' (over the weights), 'sum' or 'none' ([N, H, W]).
    """
    losses = weights * jnp.abs(pred - target).sum(-1)
    return reduce_pixels(losses, weights, reduction)
