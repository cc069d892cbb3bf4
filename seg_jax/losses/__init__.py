"""Segmentation losses as pure, vectorised jnp functions, and a registry to pick them by name.

Every loss takes logits `[N, H, W, C]` (never probabilities) and integer labels `[N, H, W]`,
keyword-only options after those, an `ignore_label` (pixels with it contribute nothing) and an
optional per-pixel `weights` `[N, H, W]`. Every loss works under `jax.jit`, `jax.vmap` and
`jax.grad`; gradients are finite for saturated logits, for classes absent from the batch and when
every pixel is ignored (the loss is then 0 with a zero gradient).

Pixel-wise losses (`cross_entropy`, `focal_loss`, `expected_cost_loss`; `pixel.py`) take
`reduction=` 'mean' | 'sum' | 'none'. Region losses (`dice_loss`, `jaccard_loss`, `tversky_loss`;
`region.py`, and `lovasz_softmax_loss`; `lovasz.py`) return a scalar. Panoptic-DeepLab's
`center_heatmap_loss` and `offset_loss` (`panoptic.py`) take their heads' outputs. `get_loss`
(`registry.py`) builds a weighted sum of losses named in `config.loss`; `register_loss` adds a
loss written outside the package under a name configs and sweeps can use, and `check_loss`
(`checks.py`) probes such a loss before training. Every loss is importable from here,
`seg_jax.losses`.
"""

from seg_jax.losses.lovasz import lovasz_softmax_loss
from seg_jax.losses.panoptic import center_heatmap_loss, offset_loss
from seg_jax.losses.pixel import cross_entropy, expected_cost_loss, focal_loss
from seg_jax.losses.region import dice_loss, jaccard_loss, tversky_loss
from seg_jax.losses.checks import LossCheckError, check_loss
from seg_jax.losses.registry import (get_loss, register_loss, registered_losses,
                                     unregister_loss)

__all__ = [
    "LossCheckError",
    "center_heatmap_loss",
    "check_loss",
    "cross_entropy",
    "dice_loss",
    "expected_cost_loss",
    "focal_loss",
    "get_loss",
    "jaccard_loss",
    "lovasz_softmax_loss",
    "offset_loss",
    "register_loss",
    "registered_losses",
    "tversky_loss",
    "unregister_loss",
]
