"""Panoptic-DeepLab's instance targets from panoptic labels, in jnp (computed inside the train step).

For every thing segment (a (class, instance) pair with instance > 0) of an image: its centre of
mass; the centre heatmap is, at every pixel, the largest of the Gaussians (standard deviation
`sigma`, peak 1) around the centres; the offset target of a pixel of a segment is the vector
(dy, dx) from the pixel to its segment's centre (Cheng et al. 2020, Sec. 3.1, sigma = 8 pixels).

Computing the targets on the device from the cropped labels keeps the input pipeline unchanged
and the targets exactly consistent with the augmentation.
"""

import jax
import jax.numpy as jnp
import numpy as np

from seg_jax.labels import valid_mask


def check_instances(label: np.ndarray, instance: np.ndarray, *, thing_classes, num_classes: int,
                    ignore_label: int, max_instances: int, where: str) -> None:
    """Raises ValueError if an example has an instance id or a thing count the targets cannot hold.

    Instance ids of thing pixels must lie in [0, max_instances] and an image may have at most
    `max_instances` thing segments: both bounds are static shapes of the jit-compiled targets.
    """
    valid = (label != ignore_label) & (label >= 0) & (label < num_classes)
    things = valid & np.isin(label, np.asarray(thing_classes)) & (instance > 0)
    if not things.any():
        return
    ids = instance[things]
    if ids.min() < 0 or ids.max() > max_instances:
        raise ValueError(
            f"{where}: thing instance ids go up to {int(ids.max())}, above "
            f"max_instances={max_instances}; raise config.panoptic.max_instances or renumber the "
            "instances of each image 1, 2, ...")
    segments = np.unique(label[things].astype(np.int64) * (max_instances + 1) + ids).size
    if segments > max_instances:
        raise ValueError(
            f"{where}: {segments} thing segments, more than max_instances={max_instances}; raise "
            "config.panoptic.max_instances.")


def panoptic_targets(label, instance, *, thing_classes, num_classes: int, ignore_label: int,
                     max_instances: int, sigma: float = 8.0) -> dict:
    """Centre heatmap and offset targets with their loss weights.

    Args:
      label: [N, H, W] int semantic labels; instance: [N, H, W] int instance ids (0 = none).
      thing_classes: class ids with instances.
      num_classes, ignore_label: as everywhere.
      max_instances: K, the static bound on thing segments per image and on their ids
        (`check_instances` enforces it on the host).
      sigma: standard deviation of the centre Gaussians, in pixels.

    Returns:
      {"center": [N, H, W] float32 heatmap, "center_weight": [N, H, W] float32 (1 on valid pixels,
       0 on void), "offset": [N, H, W, 2] float32 (dy, dx) to the centre (0 off things),
       "offset_weight": [N, H, W] float32 (1 on pixels of thing segments)}.
    """
    label = jnp.asarray(label, jnp.int32)
    instance = jnp.asarray(instance, jnp.int32)
    n, height, width = label.shape
    valid = valid_mask(label, num_classes, ignore_label)
    safe_label = jnp.where(valid, label, 0)
    is_thing_class = jnp.zeros(num_classes, bool).at[jnp.asarray(thing_classes, jnp.int32)].set(True)
    on_thing = valid & is_thing_class[safe_label] & (instance > 0) & (instance <= max_instances)

    # Dense numbering of each image's thing segments through a (class, instance) presence table.
    table = num_classes * (max_instances + 1)
    keys = safe_label * (max_instances + 1) + jnp.clip(instance, 0, max_instances)
    image = jnp.arange(n)[:, None, None]
    present = jnp.zeros((n, table), bool).at[image, keys].max(on_thing)
    rank = jnp.cumsum(present, axis=1) - 1
    segment = jnp.where(on_thing, jnp.take_along_axis(rank, keys.reshape(n, -1), axis=1)
                        .reshape(n, height, width), max_instances)
    segment = jnp.minimum(segment, max_instances)  # beyond the bound: counted nowhere

    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                          jnp.arange(width, dtype=jnp.float32), indexing="ij")
    weight = on_thing.astype(jnp.float32)

    def per_segment_sum(values):
        return jnp.zeros((n, max_instances + 1), jnp.float32).at[image, segment].add(values * weight)

    area = per_segment_sum(jnp.ones_like(weight))[:, :max_instances]
    exists = area > 0
    center_y = per_segment_sum(ys[None])[:, :max_instances] / jnp.maximum(area, 1)
    center_x = per_segment_sum(xs[None])[:, :max_instances] / jnp.maximum(area, 1)

    def add_gaussian(index, heatmap):
        cy = center_y[:, index][:, None, None]
        cx = center_x[:, index][:, None, None]
        gaussian = jnp.exp(-((ys[None] - cy) ** 2 + (xs[None] - cx) ** 2) / (2 * sigma**2))
        return jnp.maximum(heatmap, jnp.where(exists[:, index][:, None, None], gaussian, 0.0))

    heatmap = jax.lax.fori_loop(0, max_instances, add_gaussian, jnp.zeros((n, height, width)))

    def own(centers):  # each pixel's own segment centre
        padded = jnp.concatenate([centers, jnp.zeros((n, 1))], axis=1)
        return jnp.take_along_axis(padded, segment.reshape(n, -1), axis=1).reshape(n, height, width)

    offset = jnp.stack([own(center_y) - ys[None], own(center_x) - xs[None]], axis=-1)
    offset = jnp.where(on_thing[..., None], offset, 0.0)
    return {"center": heatmap, "center_weight": valid.astype(jnp.float32), "offset": offset,
            "offset_weight": weight}
