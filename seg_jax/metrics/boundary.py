"""Boundary F-score (BF): how well predicted class boundaries line up with the true ones.

For one image and one class c, let B_pred and B_true be the boundary pixels of the predicted and
true masks of c. Precision P is the fraction of B_pred within `tolerance` (Euclidean distance in
pixels, <=) of some pixel of B_true, recall R the fraction of B_true within `tolerance` of B_pred,
and F = 2PR / (P + R) (0 when P + R = 0). An image's score is the mean of F over the classes present
in its ground truth; the dataset score is the mean over images that have at least one valid
ground-truth pixel. Per-class scores average F over the images in which the class is present.
Precision and recall are averaged in the same two ways.

As every metric here, `boundary_statistics` returns sums that add across batches, devices
(`jax.lax.psum`) and hosts, and `boundary_scores` finishes them once.

Conventions (`convention=`):

* "csurka" (default): Csurka, Larlus and Perronnin (2013), "What is a good evaluation measure for
  semantic segmentation?", as in MATLAB's `bfscore`. The boundary of a class mask is the mask minus
  its erosion by the 4-neighbour cross, with pixels outside the image counted as outside the mask,
  so a mask touching the image border has boundary pixels along it. A class present in the truth
  with no predicted boundary pixel has P = 0 (by convention), R = 0 and F = 0. The default
  tolerance is 2 px; `tolerance_fraction=0.0075` gives bfscore's default of 0.75% of the diagonal.
* "davis": the f-measure of the DAVIS video segmentation benchmark (`f_measure` / `seg2bmap` in
  davis2017-evaluation and DAVIS 2016). A pixel is a boundary pixel of a mask when the mask differs
  between it and any of its east, south or south-east neighbours; in the last row only the east
  neighbour counts, in the last column only the south one, and the bottom-right pixel is never on
  a boundary (the same as replicating the last row and column). So boundaries sit half a pixel
  towards the origin, and unlike "csurka" the image border is no boundary. Matching uses skimage's
  `disk(radius)` (offsets with dy^2 + dx^2 <= radius^2). With no tolerance given, radius =
  ceil(0.008 * diagonal), DAVIS's `bound_th=0.008`; `tolerance_fraction=f` gives
  ceil(f * diagonal). `tolerance` is always pixels here (DAVIS reads bound_th < 1 as a fraction;
  use `tolerance_fraction` for that) and must be whole, as skimage's disk is off-centre for a
  fractional radius. Empty rules: no predicted and no true boundary gives P = R = 1; no predicted
  boundary gives P = 1, R = 0; no true boundary gives P = 0, R = 1. DAVIS scores one object per frame; here each (image, class) pair is
  one such binary comparison, so for a mask of one object (`num_classes=2`, object = class 1) the
  per-image class-1 values equal DAVIS's. Which pairs enter the means is the same as for "csurka"
  (the classes present in the image's ground truth); DAVIS's rule that scores an object absent
  from both masks as 1 is therefore never used, and a frame where the object is absent from the
  truth is not scored (DAVIS would give it 1 if the prediction is empty too, else 0).

Void pixels (label == `ignore_label` or outside [0, C)) belong to no class mask, in the truth and in
the prediction alike: the prediction is masked by the same not-void map before its boundaries are
extracted, as DAVIS multiplies both masks by not-void. So no predicted boundary pixel lies on a void
pixel (none can count in precision), a predicted class never runs on under a void region, and the
edge of a void region is a boundary of the class next to it in both maps, matched where the
prediction agrees with the truth along it. Without the masking, a prediction that (correctly)
continues a class under a void region would lose recall on the truth's boundary along the void edge
that it could not know about. Predicted ids outside [0, C) are no class either.

Algorithm: a boundary pixel's class is its own label (csurka), so the boundary maps are computed once
per image as class maps with -1 for "no boundary", and "a same-class boundary pixel lies within the
tolerance" is tested by comparing the map with its shifts by every offset of the static disk:
O(|disk| * N * H * W) work, |disk| ~ pi r^2 for a radius r, and O(N * H * W) memory whatever the
number of classes. A DAVIS boundary pixel can belong to up to four classes (the 2x2 block it
closes), so "davis" carries per-pixel class sets, 8 classes (one byte) a pass, and dilates them with
a bitwise OR over the same offsets. Per-class counts come from scatter-adds: of (map, image, class,
matched) for "csurka", of (map, image, 16-bit code of a pixel's class set and matched subset) for
"davis". Large radii cost compile time as well (the offsets are unrolled): on CPU, r = 17 px (901
offsets) compiles in about 5 s.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from seg_jax.labels import valid_mask

_CONVENTIONS = ("csurka", "davis")
_CSURKA_DEFAULT_TOLERANCE = 2.0
_DAVIS_DEFAULT_FRACTION = 0.008
_NO_CLASS = -1


# ------------------------------------------------------------------------------------------------
# Tolerance


def _tolerance_radius(height, width, tolerance, tolerance_fraction, convention):
    """The matching radius in pixels (a static Python float) for an H x W image."""
    if tolerance is not None and tolerance_fraction is not None:
        raise ValueError(
            f"Give either tolerance (pixels) or tolerance_fraction (of the image diagonal), not both; "
            f"got tolerance={tolerance} and tolerance_fraction={tolerance_fraction}."
        )
    if tolerance is not None and not tolerance >= 0:
        raise ValueError(f"tolerance must be a distance in pixels >= 0, got {tolerance}.")
    if tolerance_fraction is not None and not tolerance_fraction >= 0:
        raise ValueError(
            f"tolerance_fraction must be >= 0 (e.g. 0.0075 for 0.75% of the diagonal), "
            f"got {tolerance_fraction}."
        )
    diagonal = math.hypot(height, width)
    if convention == "csurka":
        if tolerance_fraction is not None:
            return float(tolerance_fraction) * diagonal
        return _CSURKA_DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    if tolerance is None:
        # DAVIS rounds a fractional threshold up to whole pixels (bound_th < 1 branch).
        fraction = _DAVIS_DEFAULT_FRACTION if tolerance_fraction is None else tolerance_fraction
        return float(math.ceil(fraction * diagonal))
    # DAVIS reads bound_th >= 1 as pixels and builds skimage's disk(radius), whose grid
    # arange(-radius, radius + 1) is centred on the pixel only for a whole radius.
    if float(tolerance) != int(tolerance):
        raise ValueError(
            f"convention='davis' needs a whole number of pixels as tolerance (skimage's disk is "
            f"off-centre otherwise), got {tolerance}; round it, or use convention='csurka'."
        )
    return float(tolerance)


def _disk_offsets(radius, height, width):
    """Static tuple of (dy, dx) with Euclidean length <= radius, (0, 0) included.

    Offsets that cannot land inside an H x W image are left out. The work (and the compilation
    time) grows with the number of offsets, about pi * radius^2.
    """
    reach_y, reach_x = min(int(radius), height - 1), min(int(radius), width - 1)
    return tuple(
        (dy, dx)
        for dy in range(-reach_y, reach_y + 1)
        for dx in range(-reach_x, reach_x + 1)
        # The same float64 sqrt as a distance transform, so ties at the radius agree with one.
        if math.sqrt(dy * dy + dx * dx) <= radius
    )


# ------------------------------------------------------------------------------------------------
# Shifted views


def _padded(x, reach, fill):
    """x [N, H, W] padded by `reach` pixels of `fill` on every side of H and W."""
    return jnp.pad(x, ((0, 0), (reach, reach), (reach, reach)), constant_values=fill)


def _view(padded, reach, dy, dx, height, width):
    """The [N, H, W] window of a `_padded` array whose pixel (y, x) holds x[y + dy, x + dx]."""
    return padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width]


# ------------------------------------------------------------------------------------------------
# Class maps with void removed


def _class_maps(pred, label, num_classes, ignore_label):
    """(pred, truth) [N, H, W] class ids with -1 wherever the truth is void (and for bad pred ids)."""
    valid = valid_mask(label, num_classes, ignore_label)
    pred_ok = valid & (pred >= 0) & (pred < num_classes)
    # The narrowest signed type that holds every class and -1: the offset scans are memory-bound.
    dtype = jnp.int8 if num_classes <= 127 else jnp.int16 if num_classes <= 32767 else jnp.int32
    truth = jnp.where(valid, label, _NO_CLASS).astype(dtype)
    pred = jnp.where(pred_ok, pred, _NO_CLASS).astype(dtype)
    return pred, truth


# ------------------------------------------------------------------------------------------------
# csurka: one class per boundary pixel


def _csurka_boundary(classes):
    """[N, H, W] class of each boundary pixel, -1 elsewhere.

    A pixel of class c is on the boundary of mask c when one of its 4 neighbours is not c; the
    padding makes outside-the-image "not c" (scipy's binary_erosion with border_value=0).
    """
    _, height, width = classes.shape
    padded = _padded(classes, 1, _NO_CLASS)
    differs = jnp.zeros(classes.shape, bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        differs |= _view(padded, 1, dy, dx, height, width) != classes
    return jnp.where(differs & (classes >= 0), classes, _NO_CLASS)


def _same_class_within(query, target, offsets):
    """[N, H, W] bool: some pixel of `target` within the disk holds the class `query` holds here.

    Only meaningful where query >= 0. One pass per disk offset, all fused by XLA into one loop.
    """
    _, height, width = query.shape
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = _padded(target, reach, _NO_CLASS)
    found = jnp.zeros(query.shape, bool)
    for dy, dx in offsets:
        found |= _view(padded, reach, dy, dx, height, width) == query
    return found


def _csurka_counts(pred, truth, num_classes, offsets):
    """[2, 2, N, C] int32 boundary pixels, [0 = predicted / 1 = true][0 = all / 1 = matched]."""
    boundary = jnp.stack([_csurka_boundary(pred), _csurka_boundary(truth)])  # [2, N, H, W]
    matched = jnp.stack([
        _same_class_within(boundary[0], boundary[1], offsets),
        _same_class_within(boundary[1], boundary[0], offsets),
    ])
    num_images = pred.shape[0]
    size = 2 * num_images * num_classes * 2
    side_and_image = jnp.arange(2 * num_images, dtype=jnp.int32).reshape(2, num_images, 1, 1)
    # Pixels off the boundary get an out-of-range index that mode="drop" skips; with a constant
    # update this is several times faster on CPU than adding zeros at index 0.
    index = (side_and_image * num_classes + boundary) * 2 + matched
    index = jnp.where(boundary >= 0, index, size)
    # Both maps in one scatter: measured about twice as fast on CPU as one scatter each.
    counts = jnp.zeros(size, jnp.int32).at[index.reshape(-1)].add(1, mode="drop")
    counts = counts.reshape(2, num_images, num_classes, 2)
    return jnp.stack([counts.sum(-1), counts[..., 1]], axis=1)


# ------------------------------------------------------------------------------------------------
# davis: up to four classes per boundary pixel

# Classes handled per pass: a pixel's set of boundary classes and its subset of matched ones then
# fit one 16-bit code, whose per-image histogram gives both counts for all 8 classes.
_DAVIS_WORD_BITS = 8


def _davis_block(classes):
    """The four [N, H, W] values of each pixel's 2x2 block {p, E, S, SE}, and whether it is uniform.

    The boundary map of mask c (seg2bmap) marks p when c's mask differs between p and its east,
    south or south-east neighbour; edge replication past the last row/column reproduces seg2bmap's
    special cases there. So p is a boundary pixel of exactly the classes in its block when the
    block is not uniform (-1, void, is in no class).
    """
    _, height, width = classes.shape
    padded = jnp.pad(classes, ((0, 0), (0, 1), (0, 1)), mode="edge")
    block = [padded[:, dy : dy + height, dx : dx + width] for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))]
    uniform = (block[0] == block[1]) & (block[0] == block[2]) & (block[0] == block[3])
    return block, uniform


def _davis_class_sets(block, uniform, first):
    """[N, H, W] uint8: bit b is set when class first + b has a boundary pixel here."""
    sets = jnp.zeros(uniform.shape, jnp.uint8)
    for value in block:
        bit = value.astype(jnp.int32) - first
        inside = (bit >= 0) & (bit < _DAVIS_WORD_BITS)
        shifted = jnp.left_shift(jnp.uint8(1), jnp.clip(bit, 0, _DAVIS_WORD_BITS - 1).astype(jnp.uint8))
        sets |= jnp.where(inside, shifted, jnp.uint8(0))
    return jnp.where(uniform, jnp.uint8(0), sets)


def _dilate_sets(sets, offsets):
    """[N, H, W] OR of the class sets over the disk around each pixel (nothing outside the image)."""
    _, height, width = sets.shape
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = _padded(sets, reach, 0)
    dilated = jnp.zeros_like(sets)
    for dy, dx in offsets:
        dilated |= _view(padded, reach, dy, dx, height, width)
    return dilated


def _set_counts(sets, matched_sets):
    """[2, N, 2 * 8] int32 from [2, N, H, W] class sets of one pass: per map and image, the
    pixels whose set holds each class of the pass, then those whose matched set holds it.

    Each pixel is one histogram entry of its code sets | matched_sets << 8 (a per-class count
    would read matched_sets once per class, and XLA would redo the disk scan behind it each time).
    The histogram times the bits of every code gives the counts.
    """
    sides, num_images = sets.shape[:2]
    codes = 1 << (2 * _DAVIS_WORD_BITS)
    size = sides * num_images * codes
    side_and_image = jnp.arange(sides * num_images, dtype=jnp.int32).reshape(sides, num_images, 1, 1)
    code = sets.astype(jnp.int32) | (matched_sets.astype(jnp.int32) << _DAVIS_WORD_BITS)
    index = jnp.where(sets > 0, side_and_image * codes + code, size)
    histogram = jnp.zeros(size, jnp.int32).at[index.reshape(-1)].add(1, mode="drop")
    code_bits = (jnp.arange(codes, dtype=jnp.int32)[:, None] >> jnp.arange(2 * _DAVIS_WORD_BITS)) & 1
    counts = jnp.dot(histogram.reshape(-1, codes), code_bits, preferred_element_type=jnp.int32)
    return counts.reshape(sides, num_images, 2 * _DAVIS_WORD_BITS)


def _davis_counts(pred, truth, num_classes, offsets):
    """[2, 2, N, C] int32 boundary pixels, [0 = predicted / 1 = true][0 = all / 1 = matched].

    A pixel can lie on the boundaries of up to four classes, so the maps carry class sets, 8
    classes a pass (memory O(N * H * W) for any number of classes), dilated by a bitwise OR.
    """
    blocks = [_davis_block(pred), _davis_block(truth)]
    passes = []
    for first in range(0, num_classes, _DAVIS_WORD_BITS):
        sets = [_davis_class_sets(block, uniform, first) for block, uniform in blocks]
        matched = [sets[0] & _dilate_sets(sets[1], offsets), sets[1] & _dilate_sets(sets[0], offsets)]
        passes.append(_set_counts(jnp.stack(sets), jnp.stack(matched)))  # [2, N, 16]
    counts = jnp.stack(passes, axis=-2)  # [2, N, passes, 16]
    counts = counts.reshape(*counts.shape[:-1], 2, _DAVIS_WORD_BITS)  # [..., all / matched, class]
    counts = jnp.moveaxis(counts, -2, 1)  # [2, 2, N, passes, 8]
    return counts.reshape(*counts.shape[:3], -1)[..., :num_classes]


# ------------------------------------------------------------------------------------------------
# Per-pair scores


def _ratio(matched, total, empty_value):
    return jnp.where(total > 0, matched / jnp.maximum(total, 1), empty_value).astype(jnp.float32)


def _pair_scores(n_pred, m_pred, n_true, m_true, convention):
    """Precision, recall and F, each [N, C] float32, with the convention's empty-boundary rules."""
    # An empty side leaves nothing to match on the other: its ratio is 0 by itself. So only the
    # empty denominator needs a value: csurka's 0, or DAVIS's 1, which gives DAVIS's table (both
    # empty P = R = 1; no prediction P = 1, R = 0; no true boundary P = 0, R = 1).
    empty_value = 0.0 if convention == "csurka" else 1.0
    precision = _ratio(m_pred, n_pred, empty_value)
    recall = _ratio(m_true, n_true, empty_value)
    total = precision + recall
    f_score = jnp.where(total > 0, 2 * precision * recall / jnp.where(total > 0, total, 1.0), 0.0)
    return precision, recall, f_score


# ------------------------------------------------------------------------------------------------
# Public API


def _check_inputs(pred, label, num_classes, convention):
    if pred.shape != label.shape or pred.ndim != 3:
        raise ValueError(
            f"pred and label must both be [N, H, W] class maps of the same shape, got {pred.shape} "
            f"and {label.shape}; add a leading axis for a single image."
        )
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}.")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_label", "offsets", "convention"))
def _statistics(pred, label, *, num_classes, ignore_label, offsets, convention):
    pred, truth = _class_maps(pred, label, num_classes, ignore_label)
    count_boundaries = _csurka_counts if convention == "csurka" else _davis_counts
    (n_pred, m_pred), (n_true, m_true) = count_boundaries(pred, truth, num_classes, offsets)
    precision, recall, f_score = _pair_scores(n_pred, m_pred, n_true, m_true, convention)
    # Stacked, the three share one set of ops (and of compiled kernels) below.
    scores = jnp.stack([f_score, precision, recall])  # [3, N, C]

    # A class mask that is present has a true boundary, except in "davis" when it covers the whole
    # image (no 2x2 block differs); then it holds the first pixel. This spares a per-pixel count.
    first_pixel = truth[:, 0, 0, None] == jnp.arange(num_classes, dtype=truth.dtype)
    present = (n_true > 0) | first_pixel
    classes_in_image = present.sum(-1)
    scored_image = classes_in_image > 0
    scores = jnp.where(present, scores, 0.0)
    class_sums = scores.sum(1)  # [3, C], over the images where the class is present
    image_means = scores.sum(-1) / jnp.maximum(classes_in_image, 1)  # [3, N], over present classes
    image_sums = jnp.where(scored_image, image_means, 0.0).sum(-1)  # [3], over scored images
    return {
        "class_f_sum": class_sums[0],
        "class_precision_sum": class_sums[1],
        "class_recall_sum": class_sums[2],
        "class_count": present.sum(0, dtype=jnp.int32),
        "image_f_sum": image_sums[0],
        "image_precision_sum": image_sums[1],
        "image_recall_sum": image_sums[2],
        "image_count": scored_image.sum(dtype=jnp.int32),
    }


def boundary_statistics(
    pred,
    label,
    num_classes: int,
    *,
    tolerance=None,
    tolerance_fraction=None,
    ignore_label: int = 255,
    convention: str = "csurka",
):
    """Sufficient statistics of the boundary F-score of a batch; they add across batches.

    Jitted inside (num_classes, tolerance, tolerance_fraction, ignore_label and convention are
    static, and so are the image shapes, hence the disk); callable under an outer jit or vmap.

    Args:
      pred: [N, H, W] int predicted class ids (ids outside [0, C) are no class).
      label: [N, H, W] int true class ids; `ignore_label` and ids outside [0, C) are void.
      num_classes: C.
      tolerance: matching distance in pixels (a boundary pixel matches when its Euclidean distance
        to the other boundary is <= tolerance). None means the convention's default: 2 px for
        "csurka", ceil(0.008 * diagonal) for "davis" (which needs a whole number of pixels).
      tolerance_fraction: the tolerance as a fraction of the image diagonal sqrt(H^2 + W^2)
        instead (bfscore's default is 0.0075); for "davis" rounded up to whole pixels, as DAVIS
        does. Give at most one of tolerance and tolerance_fraction.
      ignore_label: the void label.
      convention: "csurka" (default) or "davis"; see the module docstring.

    Returns:
      dict of float32 / int32 arrays, each a sum over the batch (sum on the host in float64/int64):
        "class_f_sum" [C]: sum of F over the images in which the class is present in the truth.
        "class_precision_sum", "class_recall_sum" [C]: the same for precision and recall.
        "class_count" [C] int32: number of images in which the class is present in the truth.
        "image_f_sum" []: sum over scored images of the image's mean F over its present classes.
        "image_precision_sum", "image_recall_sum" []: the same for precision and recall.
        "image_count" [] int32: number of scored images (at least one valid truth pixel).
    """
    pred = jnp.asarray(pred)
    label = jnp.asarray(label)
    _check_inputs(pred, label, num_classes, convention)
    _, height, width = label.shape
    radius = _tolerance_radius(height, width, tolerance, tolerance_fraction, convention)
    return _statistics(
        pred,
        label,
        num_classes=int(num_classes),
        ignore_label=int(ignore_label),
        offsets=_disk_offsets(radius, height, width),
        convention=convention,
    )


def _mean(total, count, xp):
    return xp.where(count > 0, total / xp.where(count > 0, count, 1), xp.nan)


def _finish(stats, xp):
    return {
        "f_score": _mean(stats["image_f_sum"], stats["image_count"], xp),
        "precision": _mean(stats["image_precision_sum"], stats["image_count"], xp),
        "recall": _mean(stats["image_recall_sum"], stats["image_count"], xp),
        "per_class_f_score": _mean(stats["class_f_sum"], stats["class_count"], xp),
        "per_class_precision": _mean(stats["class_precision_sum"], stats["class_count"], xp),
        "per_class_recall": _mean(stats["class_recall_sum"], stats["class_count"], xp),
        "num_images": stats["image_count"],
    }


# One compiled program for device sums, rather than a dozen small eager ops each compiled on first use.
_finish_on_device = jax.jit(functools.partial(_finish, xp=jnp))


def boundary_scores(stats):
    """Finishes (summed) `boundary_statistics` into scores; accepts device or host (numpy) sums.

    Returns:
      dict: "f_score", "precision", "recall": means over scored images of the per-image class
      means (NaN when no image was scored, e.g. every pixel void); "per_class_f_score",
      "per_class_precision", "per_class_recall" [C]: means over the images in which the class is
      present in the truth (NaN for a class never present); "num_images": scored images. numpy
      sums give numpy float64 scalars and arrays, device sums give jax arrays.
    """
    if all(isinstance(v, (np.ndarray, np.generic)) for v in stats.values()):
        scores = _finish(stats, np)
        return {k: v[()] if isinstance(v, np.ndarray) else v for k, v in scores.items()}
    return _finish_on_device(stats)


def boundary_f_score(pred, label, num_classes: int, **options):
    """Boundary F-score of one batch: `boundary_scores(boundary_statistics(...))`.

    Same arguments as `boundary_statistics` (its keyword-only `tolerance`, `tolerance_fraction`,
    `ignore_label` and `convention` pass through unchanged, so the two cannot drift apart); returns
    the dict of `boundary_scores`. To score a dataset, add the statistics of its batches and
    finish them once.
    """
    return boundary_scores(boundary_statistics(pred, label, num_classes, **options))
