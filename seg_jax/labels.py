"""The one rule for which label pixels count, shared by every loss, metric and decision."""

import jax.numpy as jnp


def valid_mask(labels, num_classes: int, ignore_label: int):
    """True where a label is a class id in [0, num_classes) and not `ignore_label`."""
    labels = jnp.asarray(labels)
    return (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
