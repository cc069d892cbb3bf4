"""A loss defined outside seg_jax, registered by name: the pattern for a project's own losses.

`log_cosh_dice` (Jadon 2020, "A survey of loss functions for semantic segmentation"): the soft
Dice loss passed through log(cosh(.)), which keeps Dice's region view but smooths its gradient
near a perfect overlap. Importing this module registers it; a config makes it available to every
run and every point of a sweep by listing the module,

    config.extra_modules = ("experiments.custom_losses",)

as `configs/shapes_custom_loss.py` does (the run imports it before it reads config.loss.name;
the sweep launcher, which imports no JAX, does not need it).
"""

import jax.numpy as jnp

from seg_jax import losses


@losses.register_loss("log_cosh_dice", override=True)  # re-importing the module re-registers
def log_cosh_dice(logits, labels, *, ignore_label: int, weights=None, smooth: float = 1e-5,
                  per_image: bool = True):
    """log(cosh(L_dice)) with L_dice = `seg_jax.losses.dice_loss` (MONAI's conventions).

    L_dice is in [0, 1], where log(cosh(x)) = x^2 / 2 - x^4 / 12 + ...: the loss is smaller than
    Dice's and its gradient tanh(L_dice) * dL_dice vanishes as the overlap becomes perfect.
    """
    dice = losses.dice_loss(logits, labels, smooth=smooth, per_image=per_image,
                            ignore_label=ignore_label, weights=weights)
    return jnp.log(jnp.cosh(dice))
