"""Controlled degradations of label maps and of class probabilities, for the `boundary` study.

Each function takes a batch (labels `[N, H, W]` int, probabilities or one-hot maps
`[N, H, W, C]` float) and returns predicted class maps `[N, H, W]` int32 that are worse than the
input in one known way:

- `blur_labels` / `blur_probabilities`: over-smoothing. Each class channel (one-hot of the truth,
  or a model's probabilities) is convolved with a Gaussian of `sigma` pixels, then the argmax is
  taken: corners round off, thin parts vanish, the straight parts of a boundary barely move.
- `strided_labels` / `pooled_probabilities`: what a model at output stride s can predict. The
  truth is reduced to one label per s x s block (its majority class), or the probabilities to
  their block mean; the one-hot of that coarse map (or the mean probabilities) is upsampled
  bilinearly back to H x W, as DeepLabV3 upsamples its logits, and the argmax taken.
- `morph_things`: a boundary shift without smoothing. Each thing (instance) of the truth is
  eroded (k < 0) or dilated (k > 0) by a disk of radius |k| pixels.

Conventions, chosen once here:
- Argmax ties go to the lowest class id (numpy's argmax); void pixels (`ignore_label`, or ids
  outside [0, C)) are an all-zero one-hot and so never win a vote; the metrics ignore them anyway.
- Blurs replicate the border pixel (scipy's mode='nearest'): the image's edge is not a boundary.
- Bilinear upsampling puts pixel centres at half-integer positions and clamps at the border, as
  `seg_jax.models.layers.resize_bilinear` (PyTorch's align_corners=False), which DeepLabV3 uses.
- Morphology uses the Euclidean disk (the boundary F-score's tolerance is Euclidean too). The
  image border is not background: a thing cut by the frame is not eroded from the frame.
  Conflicts: a dilated thing grows over stuff and over things drawn before it; where grown
  things overlap, the one drawn later (higher instance id, in front in `shapes`) wins, as in the
  renderer. Erosion shrinks every thing on its whole visible outline (against stuff and against
  other things alike), and the freed pixels take the label of the nearest stuff pixel of the
  truth (the sky or ground behind); an image without stuff pixels is left as it is.

Only numpy and scipy: nothing here compiles, so the study's degradations cost no XLA time.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 `[N, H, W, C]`; void pixels (ids outside [0, C)) are all zeros."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape + (num_classes,), np.float32)
    valid = (labels >= 0) & (labels < num_classes)
    np.put_along_axis(out, np.where(valid, labels, 0)[..., None].astype(np.int64),
                      valid[..., None].astype(np.float32), axis=-1)
    return out


def argmax(maps: np.ndarray) -> np.ndarray:
    """int32 `[N, H, W]` class of the largest channel (ties: the lowest class id)."""
    return np.argmax(maps, axis=-1).astype(np.int32)


def gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Each channel of `[N, H, W, C]` blurred over H and W by a Gaussian of `sigma` px (the
    border replicated); sigma 0 returns the input."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma}.")
    maps = np.asarray(maps, np.float32)
    if sigma == 0:
        return maps
    return ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma, 0), mode="nearest")


def blur_labels(labels: np.ndarray, num_classes: int, sigma: float) -> np.ndarray:
    """The truth over-smoothed: argmax of its Gaussian-blurred one-hot."""
    return argmax(gaussian_blur(one_hot(labels, num_classes), sigma))


def blur_probabilities(probs: np.ndarray, sigma: float) -> np.ndarray:
    """A model's prediction over-smoothed: argmax of its Gaussian-blurred probabilities."""
    return argmax(gaussian_blur(probs, sigma))


def _blocks(maps: np.ndarray, stride: int) -> np.ndarray:
    """`[N, H, W, C]` viewed as `[N, H/s, s, W/s, s, C]` (H and W must be multiples of s)."""
    n, height, width, c = maps.shape
    if stride < 1 or height % stride or width % stride:
        raise ValueError(f"stride {stride} must divide the image size {height} x {width}.")
    return maps.reshape(n, height // stride, stride, width // stride, stride, c)


def block_mean(maps: np.ndarray, stride: int) -> np.ndarray:
    """`[N, H/s, W/s, C]` mean of each s x s block (average pooling with stride s)."""
    return _blocks(np.asarray(maps, np.float32), stride).mean(axis=(2, 4))


def block_majority(labels: np.ndarray, num_classes: int, stride: int) -> np.ndarray:
    """int32 `[N, H/s, W/s]`: each s x s block's most frequent valid class (ties: the lowest
    id; a block of void pixels only gets class 0)."""
    return argmax(block_mean(one_hot(labels, num_classes), stride))


def _bilinear_weights(size_in: int, size_out: int):
    """Source rows (lower, upper) and the upper's weight for each output row: half-pixel
    centres, clamped at the border (PyTorch align_corners=False, jax.image.resize)."""
    src = (np.arange(size_out, dtype=np.float64) + 0.5) * size_in / size_out - 0.5
    src = np.clip(src, 0.0, size_in - 1)
    lower = np.floor(src).astype(np.int64)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, (src - lower).astype(np.float32)


def upsample_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """`[N, h, w, C]` -> `[N, height, width, C]` bilinearly, separably (rows, then columns)."""
    maps = np.asarray(maps, np.float32)
    lower, upper, weight = _bilinear_weights(maps.shape[1], height)
    w = weight[None, :, None, None]
    maps = maps[:, lower] * (1 - w) + maps[:, upper] * w
    lower, upper, weight = _bilinear_weights(maps.shape[2], width)
    w = weight[None, None, :, None]
    return maps[:, :, lower] * (1 - w) + maps[:, :, upper] * w


def strided_labels(labels: np.ndarray, num_classes: int, stride: int) -> np.ndarray:
    """The truth as a model at output stride `stride` could give it: block majority, then the
    one-hot of that coarse map upsampled bilinearly, then argmax."""
    labels = np.asarray(labels)
    coarse = one_hot(block_majority(labels, num_classes, stride), num_classes)
    return argmax(upsample_bilinear(coarse, *labels.shape[1:3]))


def pooled_probabilities(probs: np.ndarray, stride: int) -> np.ndarray:
    """A model's probabilities average-pooled to stride `stride`, upsampled bilinearly, argmax."""
    probs = np.asarray(probs, np.float32)
    return argmax(upsample_bilinear(block_mean(probs, stride), *probs.shape[1:3]))


def _erode_image(label: np.ndarray, instance: np.ndarray, k: int) -> np.ndarray:
    stuff = instance == 0
    if not stuff.any():
        return label.copy()  # nothing to show behind the things: they keep their pixels
    # Every pixel's nearest stuff pixel: what an eroded thing's freed pixels show.
    _, (rows, cols) = ndimage.distance_transform_edt(~stuff, return_indices=True)
    freed = np.zeros(label.shape, bool)
    for thing in np.unique(instance[~stuff]):
        mask = instance == thing
        # A disk of radius k around a pixel leaves the thing when some pixel outside it (another
        # thing included) lies within k: its distance to the outside is at most k.
        freed |= mask & (ndimage.distance_transform_edt(mask) <= k)
    out = label.copy()
    out[freed] = label[rows[freed], cols[freed]]
    return out


def _dilate_image(label: np.ndarray, instance: np.ndarray, k: int) -> np.ndarray:
    out = label.copy()
    for thing in np.unique(instance[instance > 0]):  # ascending: drawing order, back to front
        mask = instance == thing
        # Pixels within Euclidean distance k of the thing (the thing itself included).
        out[ndimage.distance_transform_edt(~mask) <= k] = label[mask][0]
    return out


def morph_things(labels: np.ndarray, instances: np.ndarray, k: int) -> np.ndarray:
    """int32 `[N, H, W]`: every thing of the truth dilated (k > 0) or eroded (k < 0) by a disk
    of radius |k| px; stuff stays where no thing grows over it. `instances` `[N, H, W]`: 0 on
    stuff, 1..K per thing in drawing order (later in front)."""
    labels, instances = np.asarray(labels), np.asarray(instances)
    if labels.shape != instances.shape:
        raise ValueError(f"labels {labels.shape} and instances {instances.shape} differ in shape.")
    if k == 0:
        return labels.astype(np.int32)
    morph = _dilate_image if k > 0 else _erode_image
    return np.stack([morph(lab, ins, abs(int(k))) for lab, ins in
                     zip(labels, instances)]).astype(np.int32)
