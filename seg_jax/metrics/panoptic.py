"""Panoptic Quality (Kirillov et al. 2019, "Panoptic Segmentation"), vectorised and jit-compiled.

PQ = SQ x RQ per class, where a predicted and a ground-truth segment of the same class match when
their IoU is strictly above 0.5 (which makes matches unique), SQ is the mean IoU of the matches and
RQ = TP / (TP + FP/2 + FN/2). Everything below is built from per-class sums that add over images,
batches, devices and hosts (`panoptic_statistics`), finished once (`panoptic_scores`).

Inputs are panoptic maps as pairs (semantic [N, H, W] int, instance [N, H, W] int): a segment is a
(class, instance) pair; instance 0 means "no instance". Stuff classes have one segment per class
and image (their instance ids are ignored); class ids that are neither things nor stuff, and
`ignore_label`, are void.

Presets (the published implementations disagree on void and crowd handling):

- "coco" (default): the COCO reference, panopticapi `pq_compute`, which cityscapesScripts'
  `evalPanopticSemanticLabeling` reproduces. Ground-truth void pixels are removed from the union
  (from the predicted segment's side); a ground-truth thing pixel with instance 0 belongs to the
  crowd region of its class (Cityscapes' group labels; COCO's `iscrowd` segments decode to this),
  which is never matched and never a false negative; an unmatched prediction is not a false positive
  when more than half of it lies on void or on the crowd region of its own class.
- "deeplab2": deeplab2's `PanopticQuality`: as "coco" but without crowd regions (a thing pixel with
  instance 0 is an ordinary segment).
- "torchmetrics": torchmetrics' `panoptic_quality`: no crowd; void is removed from the union on both
  sides (ground-truth void under the prediction and predicted void under the ground truth), and an
  unmatched ground-truth segment is not a false negative when more than half of it is predicted void.

Averages (all three references agree): PQ, SQ and RQ are averaged over the classes of a group (all,
things, stuff) with TP + FP + FN > 0; note that the averaged PQ is not the product of the averaged
SQ and RQ. A group with no such class is NaN (the references divide by zero). Per-class values are
NaN for classes with TP + FP + FN = 0, and SQ is 0 for a class with FP or FN but no TP.

Beside PQ, a merge/split diagnosis explains recognition errors (the design text's over-merge and
over-split cases, which semantic IoU cannot see):
- over-merge: a false-negative ground-truth segment more than half of which lies inside one
  predicted segment of its class that matched another ground-truth segment (two objects predicted
  as one blob: one is matched, the other is swallowed);
- over-split: a false-positive predicted segment more than half of which lies inside one
  ground-truth segment of its class that another prediction matched (one object predicted in
  pieces: one piece is matched, the others are spurious).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seg_jax.metrics.histogram import histogram

PRESETS = ("coco", "deeplab2", "torchmetrics")

# Per-class sums that add across images (and what the evaluator accumulates in float64 / int64).
CLASS_SUMS = ("iou_sum", "tp", "fp", "fn", "over_merge", "over_split")

def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"Unknown panoptic preset {preset!r}; use one of {PRESETS}.")


def _preset_rules(preset: str) -> tuple[bool, bool]:
    """(crowd regions, void removed on both sides) for a preset name."""
    check_preset(preset)
    return preset == "coco", preset == "torchmetrics"


def _segment_keys(semantic, instance, *, num_classes, kind, max_segments):
    """Per-pixel segment keys class * S + instance, and which pixels are void or bad.

    `kind` [C] int32 is 0 for a void class, 1 for a thing, 2 for stuff; stuff instances become 0.
    Returns (keys in [0, C * S), void [P] bool, bad [P] bool: an evaluated pixel whose instance id
    is outside [0, S)).
    """
    in_range = (semantic >= 0) & (semantic < num_classes)
    cls = jnp.where(in_range, semantic, 0)
    pixel_kind = jnp.where(in_range, kind[cls], 0)
    instance = jnp.where(pixel_kind == 2, 0, instance)  # one segment per stuff class
    bad = (pixel_kind > 0) & ((instance < 0) | (instance >= max_segments))
    keys = cls * max_segments + jnp.clip(instance, 0, max_segments - 1)
    return keys, pixel_kind == 0, bad


def _dense_numbering(present, max_segments: int):
    """Numbers the present keys of each image 0, 1, ... in key order.

    Args:
      present: [N, T] bool, which segment keys occur in each image.

    Returns:
      rank [N, T] (a key's segment id; ids >= S only where there are too many segments), segment
      keys [N, S] (-1 for unused ids) and the number of segments per image [N].
    """
    n, table_size = present.shape
    rank = jnp.cumsum(present, axis=1, dtype=jnp.int32) - 1
    count = present.sum(1)
    slots = max_segments + 1
    slot = jnp.where(present & (rank < max_segments), rank, max_segments)
    slot += (jnp.arange(n, dtype=jnp.int32) * slots)[:, None]
    segment_keys = jnp.full(n * slots, -1, jnp.int32).at[slot.reshape(-1)].set(
        jnp.tile(jnp.arange(table_size, dtype=jnp.int32), n))
    return rank, segment_keys.reshape(n, slots)[:, :max_segments], count


def _image_of(start, length, pixels):
    """Image index of the flat pixels start .. start + length - 1 of [N, P] maps."""
    return (start + lax.iota(jnp.int32, length)) // pixels


def _number_segments(maps, keys_of, *, n, pixels, table_size, max_segments):
    """Pass 1: which segment keys occur in each image, numbered densely per image.

    A histogram over ground-truth keys in [0, N * T) and predicted keys in [N * T, 2 * N * T) (bin
    2NT collects void pixels) marks the present keys; `_dense_numbering` then gives them ids by a
    cumulative sum, without a sort (which cost 50x more on XLA:CPU). Returns the ground truth's and
    the prediction's `(rank [N, T], segment keys [N, S], count [N])`.
    """
    void_bin = 2 * n * table_size

    def presence(start, gt_sem, gt_inst, pred_sem, pred_inst):
        image = _image_of(start, gt_sem.shape[0], pixels)
        bins = []
        for offset, (sem, inst) in ((0, (gt_sem, gt_inst)), (n, (pred_sem, pred_inst))):
            keys, void, _ = keys_of(sem, inst)
            bins.append(jnp.where(void, void_bin, (image + offset) * table_size + keys))
        bins = jnp.concatenate(bins)
        return bins, jnp.ones_like(bins)

    present = histogram(void_bin + 1, presence, maps, jnp.int32)[:void_bin] > 0
    present = present.reshape(2, n, table_size)
    return (_dense_numbering(present[0], max_segments),
            _dense_numbering(present[1], max_segments))


def _pair_overlaps(maps, keys_of, gt_rank, pred_rank, *, n, pixels, table_size, max_segments):
    """Pass 2: pixel counts of every (ground-truth segment, predicted segment) pair of each image.

    Returns [N, S + 1, S + 1], where row / column S is void (and where ids past S would land; those
    images are reported as errors through "segments_needed").
    """
    slots = max_segments + 1  # segment ids 0..S-1, then the void slot S
    gt_rank, pred_rank = gt_rank.reshape(-1), pred_rank.reshape(-1)

    def pairs(start, gt_sem, gt_inst, pred_sem, pred_inst):
        image = _image_of(start, gt_sem.shape[0], pixels)
        ids = []
        for rank, (sem, inst) in ((gt_rank, (gt_sem, gt_inst)), (pred_rank, (pred_sem, pred_inst))):
            keys, void, _ = keys_of(sem, inst)
            segment = rank.at[image * table_size + keys].get(mode="promise_in_bounds")
            ids.append(jnp.where(void, max_segments, jnp.minimum(segment, max_segments)))
        return (image * slots + ids[0]) * slots + ids[1], jnp.ones_like(ids[0])

    return histogram(n * slots * slots, pairs, maps, jnp.int32).reshape(n, slots, slots)


def _match_segments(overlap, gt_seg_keys, pred_seg_keys, *, num_classes, kind, max_segments,
                    crowd, symmetric_void):
    """Matches the segments of each image from their pair overlaps and classifies the rest.

    Returns per-segment arrays: "gt_class" [N, S] and "pred_class" [N, S] (C for unused ids),
    "matched_iou", "gt_matched", "false_negative", "over_merge" (ground-truth side) and
    "false_positive", "over_split" (prediction side), following the preset's rules (module
    docstring).
    """
    gt_area = overlap.sum(2)[:, :max_segments]  # [N, S_gt]
    pred_area = overlap.sum(1)[:, :max_segments]  # [N, S_pred]
    inter = overlap[:, :max_segments, :max_segments]  # [N, S_gt, S_pred]
    pred_on_gt_void = overlap[:, max_segments, :max_segments]  # [N, S_pred]
    gt_on_pred_void = overlap[:, :max_segments, max_segments]  # [N, S_gt]

    gt_valid = gt_seg_keys >= 0
    pred_valid = pred_seg_keys >= 0
    gt_class = jnp.where(gt_valid, gt_seg_keys // max_segments, num_classes)
    pred_class = jnp.where(pred_valid, pred_seg_keys // max_segments, num_classes)
    gt_crowd = gt_valid & crowd & (kind[jnp.minimum(gt_class, num_classes - 1)] == 1)
    gt_crowd &= (gt_seg_keys % max_segments) == 0
    same_class = ((gt_class[:, :, None] == pred_class[:, None, :])
                  & gt_valid[:, :, None] & pred_valid[:, None, :])

    union = gt_area[:, :, None] + pred_area[:, None, :] - inter - pred_on_gt_void[:, None, :]
    if symmetric_void:
        union -= gt_on_pred_void[:, :, None]
    iou = inter / jnp.maximum(union, 1)
    matched = same_class & ~gt_crowd[:, :, None] & (inter > 0) & (iou > 0.5)
    gt_matched = matched.any(2)
    pred_matched = matched.any(1)

    false_negative = gt_valid & ~gt_crowd & ~gt_matched
    if symmetric_void:
        false_negative &= 2 * gt_on_pred_void <= gt_area
    # Overlap with void, plus with the crowd region of the prediction's own class, excuses a prediction.
    excused = pred_on_gt_void + jnp.where(same_class & gt_crowd[:, :, None], inter, 0).sum(1)
    false_positive = pred_valid & ~pred_matched & (2 * excused <= pred_area)

    mostly_inside_pred = same_class & (2 * inter > gt_area[:, :, None])
    mostly_inside_gt = same_class & (2 * inter > pred_area[:, None, :])
    return {
        "gt_class": gt_class,
        "pred_class": pred_class,
        "matched_iou": jnp.where(matched, iou, 0.0).sum(2),
        "gt_matched": gt_matched,
        "false_negative": false_negative,
        "false_positive": false_positive,
        "over_merge": false_negative & (mostly_inside_pred & pred_matched[:, None, :]).any(2),
        "over_split": false_positive & (mostly_inside_gt & gt_matched[:, :, None]).any(1),
    }


def _batch_statistics(pred_semantic, pred_instance, gt_semantic, gt_instance, *, num_classes,
                      kind, max_segments, crowd, symmetric_void):
    """Per-class PQ sums of a batch of images given as flat [N, P] int32 maps.

    Two passes over the pixels, each a chunked exact histogram (`seg_jax.metrics.histogram`): the
    first numbers the segments of each image (`_number_segments`), the second counts the pixels of
    every (ground-truth segment, predicted segment) pair of each image (`_pair_overlaps`); the
    matching then works on those [N, S + 1, S + 1] counts alone (`_match_segments`).
    """
    n, pixels = gt_semantic.shape
    sizes = dict(n=n, pixels=pixels, table_size=num_classes * max_segments,
                 max_segments=max_segments)
    maps = [m.reshape(-1) for m in (gt_semantic, gt_instance, pred_semantic, pred_instance)]
    keys_of = functools.partial(_segment_keys, num_classes=num_classes, kind=kind,
                                max_segments=max_segments)
    (gt_rank, gt_seg_keys, gt_count), (pred_rank, pred_seg_keys, pred_count) = _number_segments(
        maps, keys_of, **sizes)
    bad_instance_pixels = sum(keys_of(sem, inst)[2].sum() for sem, inst in (maps[:2], maps[2:]))
    overlap = _pair_overlaps(maps, keys_of, gt_rank, pred_rank, **sizes)
    segments = _match_segments(overlap, gt_seg_keys, pred_seg_keys, num_classes=num_classes,
                               kind=kind, max_segments=max_segments, crowd=crowd,
                               symmetric_void=symmetric_void)

    def per_class(values, side):
        classes = segments[f"{side}_class"]
        return jax.ops.segment_sum(values.reshape(-1), classes.reshape(-1),
                                   num_segments=num_classes + 1)[:num_classes]

    def count(name, side):
        return per_class(segments[name].astype(jnp.int32), side)

    return {
        "iou_sum": per_class(segments["matched_iou"], "gt"),
        "tp": count("gt_matched", "gt"),
        "fp": count("false_positive", "pred"),
        "fn": count("false_negative", "gt"),
        "over_merge": count("over_merge", "gt"),
        "over_split": count("over_split", "pred"),
        "segments_needed": jnp.maximum(gt_count, pred_count).max(initial=0),
        "bad_instance_pixels": bad_instance_pixels,
    }


def _class_masks(num_classes: int, things, stuff):
    things, stuff = tuple(int(c) for c in things), tuple(int(c) for c in stuff)
    overlap = set(things) & set(stuff)
    if overlap:
        raise ValueError(f"Classes {sorted(overlap)} are declared both thing and stuff.")
    for c in things + stuff:
        if not 0 <= c < num_classes:
            raise ValueError(f"Class id {c} in things/stuff is outside [0, num_classes={num_classes}).")
    is_thing = np.zeros(num_classes, bool)
    is_thing[list(things)] = True
    is_stuff = np.zeros(num_classes, bool)
    is_stuff[list(stuff)] = True
    return is_thing, is_stuff


def panoptic_statistics(pred_semantic, pred_instance, gt_semantic, gt_instance, *, num_classes: int,
                        things, stuff, max_segments: int = 256, preset: str = "coco"):
    """Per-class PQ sufficient statistics of a batch; jit-able (all keywords static).

    Args:
      pred_semantic, pred_instance, gt_semantic, gt_instance: [N, H, W] int maps.
      num_classes: C; class ids outside [0, C) (e.g. `ignore_label`) are void.
      things, stuff: class ids of each kind; a class in neither is void.
      max_segments: S, the static bound on segments per image (each of prediction and truth) and
        on instance ids, which must lie in [0, S).
      preset: "coco", "deeplab2" or "torchmetrics" (see the module docstring).

    Returns:
      A dict of [C] arrays that add over batches: "iou_sum" (float32, summed IoU of the matches),
      "tp", "fp", "fn", "over_merge", "over_split" (int32 counts); and two checks that
      `check_statistics` turns into errors: "segments_needed" (scalar, the most segments any image
      of the batch has; above S the counts are wrong) and "bad_instance_pixels" (scalar, pixels of
      evaluated classes with an instance id outside [0, S)).
    """
    crowd, symmetric_void = _preset_rules(preset)
    is_thing, is_stuff = _class_masks(num_classes, things, stuff)
    maps = [jnp.asarray(m).astype(jnp.int32) for m in
            (pred_semantic, pred_instance, gt_semantic, gt_instance)]
    shape = maps[0].shape
    if len(shape) != 3 or any(m.shape != shape for m in maps):
        raise ValueError(
            "panoptic maps must all be [N, H, W] with one shape; got "
            f"{[tuple(m.shape) for m in maps]} (pred_semantic, pred_instance, gt_semantic, gt_instance)."
        )
    if max_segments < 1:
        raise ValueError(f"max_segments must be positive, got {max_segments}.")
    kind = jnp.asarray(np.where(is_thing, 1, np.where(is_stuff, 2, 0)), jnp.int32)
    return _batch_statistics(
        *(m.reshape(shape[0], -1) for m in maps), num_classes=num_classes, kind=kind,
        max_segments=max_segments, crowd=crowd, symmetric_void=symmetric_void)


# One compiled function per (shape, classes, bound, preset), shared by every evaluator and call.
_jitted_statistics = jax.jit(
    panoptic_statistics,
    static_argnames=("num_classes", "things", "stuff", "max_segments", "preset"))


def check_statistics(stats, *, num_classes: int, max_segments: int) -> None:
    """Raises a clear error for a batch whose statistics could not be computed exactly."""
    needed = int(stats["segments_needed"])
    if needed > max_segments:
        raise ValueError(
            f"An image has {needed} segments in its prediction or ground truth, more than "
            f"max_segments={max_segments}; raise max_segments to at least {needed}."
        )
    bad = int(stats["bad_instance_pixels"])
    if bad:
        raise ValueError(
            f"{bad} pixels have an instance id outside [0, max_segments={max_segments}); renumber "
            "the instances of each image 1, 2, ... or raise max_segments."
        )


def _group_average(pq, sq, rq, scored, members):
    selected = scored & members
    n = int(selected.sum())
    if n == 0:
        return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
    return {"pq": float(pq[selected].mean()), "sq": float(sq[selected].mean()),
            "rq": float(rq[selected].mean()), "n": n}


def panoptic_scores(stats, *, things, stuff, class_names=None) -> dict:
    """Finishes summed statistics into PQ / SQ / RQ: all, things, stuff and per class.

    Returns plain Python numbers: {"all" | "things" | "stuff": {"pq", "sq", "rq", "n"}, "per_class":
    {name: {"pq", "sq", "rq", "tp", "fp", "fn", "over_merge", "over_split"}}, "tp", "fp", "fn",
    "over_merge", "over_split"} (the last five are totals over classes). `n` counts the classes
    averaged; a group with none is NaN, as is a class with TP + FP + FN = 0.
    """
    iou_sum = np.asarray(stats["iou_sum"], np.float64)
    counts = {k: np.asarray(stats[k], np.int64) for k in CLASS_SUMS[1:]}
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    num_classes = iou_sum.shape[0]
    is_thing, is_stuff = _class_masks(num_classes, things, stuff)
    denominator = tp + 0.5 * fp + 0.5 * fn
    scored = denominator > 0
    safe = np.where(scored, denominator, 1.0)
    sq = np.where(tp > 0, iou_sum / np.maximum(tp, 1), 0.0)
    rq = tp / safe
    pq = iou_sum / safe
    names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for {num_classes} classes.")
    nan = float("nan")
    per_class = {}
    for c in np.flatnonzero(is_thing | is_stuff):
        per_class[names[c]] = {
            "pq": float(pq[c]) if scored[c] else nan,
            "sq": float(sq[c]) if scored[c] else nan,
            "rq": float(rq[c]) if scored[c] else nan,
            **{k: int(v[c]) for k, v in counts.items()},
        }
    return {
        "all": _group_average(pq, sq, rq, scored, is_thing | is_stuff),
        "things": _group_average(pq, sq, rq, scored, is_thing),
        "stuff": _group_average(pq, sq, rq, scored, is_stuff),
        "per_class": per_class,
        **{k: int(v.sum()) for k, v in counts.items()},
    }


def _num_classes(things, stuff) -> int:
    classes = [int(c) for c in things] + [int(c) for c in stuff]
    if not classes:
        raise ValueError("Declare at least one thing or stuff class.")
    return max(classes) + 1


class PanopticEvaluator:
    """Streams panoptic predictions through the jit-compiled statistics and sums them on the host.

    Any image size works: each batch is padded to a multiple of `pad_to` with void in both maps,
    which changes no statistic (void-on-void pixels belong to no segment), so a dataset of varied
    image sizes compiles a handful of shapes rather than one per size.
    """

    def __init__(self, things, stuff, *, class_names=None, ignore_label: int = 255,
                 max_segments: int = 256, preset: str = "coco", pad_to: int = 64):
        check_preset(preset)
        self.things = tuple(int(c) for c in things)
        self.stuff = tuple(int(c) for c in stuff)
        self.num_classes = _num_classes(self.things, self.stuff)
        _class_masks(self.num_classes, self.things, self.stuff)
        if 0 <= ignore_label < self.num_classes:
            raise ValueError(f"ignore_label {ignore_label} is a class id; use a value >= {self.num_classes}.")
        self.class_names = class_names
        self.ignore_label = ignore_label
        self.max_segments = max_segments
        self.pad_to = pad_to
        self._statistics = functools.partial(
            _jitted_statistics, num_classes=self.num_classes, things=self.things,
            stuff=self.stuff, max_segments=max_segments, preset=preset)
        self.sums = {k: np.zeros(self.num_classes, np.float64 if k == "iou_sum" else np.int64)
                     for k in CLASS_SUMS}
        self.num_images = 0

    def _padded(self, maps):
        maps = [np.asarray(m) for m in maps]
        if maps[0].ndim == 2:
            maps = [m[None] for m in maps]
        height, width = maps[0].shape[1:]
        pad_h, pad_w = -height % self.pad_to, -width % self.pad_to
        if pad_h or pad_w:
            fills = (self.ignore_label, 0, self.ignore_label, 0)
            maps = [np.pad(m, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=fill)
                    for m, fill in zip(maps, fills)]
        return maps

    def update(self, pred_semantic, pred_instance, gt_semantic, gt_instance) -> None:
        """Adds a batch ([N, H, W] or one [H, W] image) of predictions and ground truths."""
        maps = self._padded((pred_semantic, pred_instance, gt_semantic, gt_instance))
        self.add_statistics(self._statistics(*maps), num_images=maps[0].shape[0])

    def add_statistics(self, stats, *, num_images: int) -> None:
        """Adds `panoptic_statistics` computed elsewhere (e.g. inside a jitted eval step).

        They must use this evaluator's classes, `max_segments` and preset; the checks of
        `check_statistics` run here.
        """
        stats = jax.device_get(stats)
        check_statistics(stats, num_classes=self.num_classes, max_segments=self.max_segments)
        for k in CLASS_SUMS:
            self.sums[k] += np.asarray(stats[k], self.sums[k].dtype)
        self.num_images += num_images

    def result(self) -> dict:
        scores = panoptic_scores(self.sums, things=self.things, stuff=self.stuff,
                                 class_names=self.class_names)
        scores["num_images"] = self.num_images
        return scores


def panoptic_quality(pred_semantic, pred_instance, gt_semantic, gt_instance, *, things, stuff,
                     ignore_label: int = 255, max_segments: int = 256, preset: str = "coco",
                     class_names=None) -> dict:
    """PQ, SQ and RQ (all, things, stuff, per class) with the merge/split counts of a batch.

    Args:
      pred_semantic, pred_instance, gt_semantic, gt_instance: [N, H, W] (or [H, W]) int maps.
      things, stuff: class ids; the class count is max(things + stuff) + 1.
      ignore_label: the void label (any id outside the declared classes is void too).
      max_segments: bound on segments per image; exceeding it raises, never truncates.
      preset: "coco" (default), "deeplab2" or "torchmetrics"; see the module docstring.
      class_names: names for the per-class entries (default: the class ids as strings).

    Returns:
      The dict of `panoptic_scores`, plus "num_images".
    """
    evaluator = PanopticEvaluator(things, stuff, class_names=class_names, ignore_label=ignore_label,
                                  max_segments=max_segments, preset=preset)
    evaluator.update(pred_semantic, pred_instance, gt_semantic, gt_instance)
    return evaluator.result()
