"""An independent panoptic-quality reference and a generator of realistic random panoptic cases.

Test helper, not part of the package. Two entry points:

- `cityscapes_panoptic_quality(...)` scores `(semantic, instance)` maps with cityscapesScripts'
  evaluation (the COCO panopticapi rules) after writing them in the COCO panoptic format;
  `cityscapes_pq_from_files(...)` does the same for files already written. Results come back in
  the shape of `seg_jax.metrics.panoptic.panoptic_quality`'s result, so the two compare key by key.
- `random_panoptic_case(rng, ...)` draws a ground truth and a perturbed prediction in which true
  positives, false positives, false negatives, crowd and void all occur.

Typical use in a test:

    case = random_panoptic_case(np.random.default_rng(seed))
    expected = cityscapes_panoptic_quality(**case, workdir=str(tmp_path))
    actual = panoptic_quality(**case)   # the case dict holds exactly the keyword arguments
    assert actual["all"]["pq"] == pytest.approx(expected["all"]["pq"], abs=1e-9)

cityscapesScripts is imported lazily: guard callers with `pytest.importorskip("cityscapesscripts")`.
"""

import contextlib
import io
import json
import math
import os

import numpy as np

from seg_jax.data import panoptic_format

_GROUPS = (("all", None), ("things", True), ("stuff", False))


def cityscapes_pq_from_files(gt_json: str, gt_dir: str, pred_json: str, pred_dir: str) -> dict:
    """Scores a COCO-format prediction against a COCO-format ground truth with cityscapesScripts.

    Runs `pq_compute_single_core` (no multiprocessing; its progress printing is swallowed) over
    the ground truth's annotations matched to predictions by image_id, then averages per group.

    Returns:
      {"all" | "things" | "stuff": {"pq", "sq", "rq", "n"},   (NaN, n = 0 where no class scores:
                                                               cityscapes itself divides by zero)
       "per_class": {category name: {"pq", "sq", "rq", "tp", "fp", "fn", "iou_sum"}},
       "cityscapes": cityscapes' own `average_pq` dict (per_class keyed by category id), or None
                     where a group has no scored class}.
      Per-class entries exist only for classes with TP + FP + FN > 0: cityscapes reports 0 for the
      others but leaves them out of every average (n counts scored classes only). As in
      panopticapi, SQ of a scored class with no TP is 0 and enters the SQ average as 0.
    """
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs

    with open(gt_json, encoding="utf-8") as f:
        gt = json.load(f)
    with open(pred_json, encoding="utf-8") as f:
        pred = json.load(f)
    categories = {c["id"]: c for c in gt["categories"]}
    pred_by_image = {a["image_id"]: a for a in pred["annotations"]}
    matched = [(a, pred_by_image[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = cs.pq_compute_single_core(0, matched, gt_dir, pred_dir, categories)

    try:
        raw = cs.average_pq(stat, categories)
    except ZeroDivisionError:  # a group (things or stuff) with no scored class
        raw = None
    results = {}
    for group, isthing in _GROUPS:
        try:
            averages, _ = stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:
            averages = {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}
        results[group] = {k: float(v) if k != "n" else int(v) for k, v in averages.items()}
    _, per_class = stat.pq_average(categories, isthing=None) if results["all"]["n"] else (None, {})
    results["per_class"] = {}
    for category_id, scores in per_class.items():
        counts = stat[category_id]
        if counts.tp + counts.fp + counts.fn == 0:
            continue
        results["per_class"][categories[category_id]["name"]] = {
            "pq": float(scores["pq"]), "sq": float(scores["sq"]), "rq": float(scores["rq"]),
            "tp": int(counts.tp), "fp": int(counts.fp), "fn": int(counts.fn),
            "iou_sum": float(counts.iou),
        }
    results["cityscapes"] = raw
    return results


def write_case(workdir: str, pred_semantic, pred_instance, gt_semantic, gt_instance, *, things,
               stuff, ignore_label: int = 255, class_names=None, image_ids=None) -> dict:
    """Writes a case as two COCO panoptic datasets under `workdir`; returns their paths.

    The maps are [N, H, W] arrays or sequences of [H, W] arrays (image sizes may then differ).

    Ground truth: `gt.json` + `gt/` (thing pixels with instance 0 as one iscrowd=1 segment per
    class). Prediction: `pred.json` + `pred/` (no crowd). Class c is category c + 1, named
    `class_names[c]` (default `str(c)`). Returns {"gt_json", "gt_dir", "pred_json", "pred_dir"}.
    """
    classes = sorted(set(things) | set(stuff))
    if len(classes) != len(things) + len(stuff):
        raise ValueError(f"A class is both thing and stuff: things={things}, stuff={stuff}.")
    num_classes = classes[-1] + 1
    for name, maps in (("gt_semantic", gt_semantic), ("pred_semantic", pred_semantic)):
        present = set()
        for semantic in maps:
            semantic = np.asarray(semantic)
            present |= set(np.unique(semantic[semantic != ignore_label]).tolist())
        if present - set(classes):
            raise ValueError(f"{name} holds classes {sorted(present - set(classes))} that are "
                             f"neither things nor stuff.")
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    categories = panoptic_format.PanopticCategories.from_classes(class_names[:num_classes], things)
    paths = {
        "gt_json": os.path.join(workdir, "gt.json"), "gt_dir": os.path.join(workdir, "gt"),
        "pred_json": os.path.join(workdir, "pred.json"), "pred_dir": os.path.join(workdir, "pred"),
    }
    panoptic_format.write_panoptic_dataset(
        paths["gt_json"], paths["gt_dir"], gt_semantic, gt_instance, categories=categories,
        image_ids=image_ids, ignore_label=ignore_label, crowd=True)
    panoptic_format.write_panoptic_dataset(
        paths["pred_json"], paths["pred_dir"], pred_semantic, pred_instance, categories=categories,
        image_ids=image_ids, ignore_label=ignore_label, crowd=False)
    if len(classes) < num_classes:
        # Class ids that are neither things nor stuff (absent from the maps) are no categories.
        with open(paths["gt_json"], encoding="utf-8") as f:
            gt = json.load(f)
        gt["categories"] = [c for i, c in enumerate(gt["categories"]) if i in classes]
        with open(paths["gt_json"], "w", encoding="utf-8") as f:
            json.dump(gt, f)
    return paths


def cityscapes_panoptic_quality(pred_semantic, pred_instance, gt_semantic, gt_instance, *, things,
                                stuff, ignore_label: int = 255, workdir: str,
                                class_names=None) -> dict:
    """PQ of `[N, H, W]` panoptic maps by cityscapesScripts (COCO panopticapi rules).

    Args:
      pred_semantic, pred_instance, gt_semantic, gt_instance: [N, H, W] int maps (the project's
        convention: class ids, `ignore_label` for void, instance 0 = no instance; ground-truth
        thing pixels with instance 0 are that class's crowd region).
      things, stuff: class ids; every non-void class in the maps must be in one of them.
      ignore_label: the void label.
      workdir: an empty folder for the COCO files (e.g. pytest's `tmp_path`).
      class_names: names for class ids (default `str(c)`, as `panoptic_quality` does).

    Returns:
      `cityscapes_pq_from_files`'s dict: "all"/"things"/"stuff" {"pq", "sq", "rq", "n"} and
      "per_class" {name: {"pq", "sq", "rq", "tp", "fp", "fn", "iou_sum"}} for scored classes.

    A predicted thing pixel with instance 0 is written as an ordinary segment of its class (a
    prediction has no crowd); stuff pixels form one segment per class whatever their instance id.
    """
    paths = write_case(workdir, pred_semantic, pred_instance, gt_semantic, gt_instance,
                       things=things, stuff=stuff, ignore_label=ignore_label,
                       class_names=class_names)
    return cityscapes_pq_from_files(**paths)


# ---------------------------------------------------------------------------------------------
# Random cases.


def _blob(rng, height, width, min_radius, max_radius):
    """A random axis-aligned ellipse or rectangle mask [H, W] (may be clipped by the border)."""
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(min_radius, max_radius, size=2)
    yy, xx = np.mgrid[:height, :width]
    if rng.random() < 0.5:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)


def _shift(mask, dy, dx):
    """`mask` moved by (dy, dx) pixels; what leaves the image is lost."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    src = mask[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def _erode(mask):
    return (mask & _shift(mask, 1, 0) & _shift(mask, -1, 0) & _shift(mask, 0, 1)
            & _shift(mask, 0, -1))


def _dilate(mask):
    return mask | _shift(mask, 1, 0) | _shift(mask, -1, 0) | _shift(mask, 0, 1) | _shift(mask, 0, -1)


def _draw_instance_ids(rng, count, sparse):
    if sparse:  # distinct ids spread over [1, 1000): no code may assume small or dense ids
        return (rng.choice(999, size=count, replace=False) + 1).tolist()
    return list(range(1, count + 1))


def _random_ground_truth(rng, height, width, things, stuff, ignore_label, crowd, void, sparse_ids):
    """One image: stuff layer, painted thing instances, crowd and void blobs (painted in order)."""
    small, large = max(2.0, min(height, width) / 10), max(3.0, min(height, width) / 3)
    stuff_layer = np.full((height, width), rng.choice(stuff), np.int64)
    for _ in range(rng.integers(1, 4)):
        stuff_layer[_blob(rng, height, width, large / 2, large * 1.5)] = rng.choice(stuff)
    semantic, instance = stuff_layer.copy(), np.zeros((height, width), np.int64)
    num_instances = int(rng.integers(3, 10))
    classes = rng.choice(things, size=num_instances)
    ids = {c: iter(_draw_instance_ids(rng, num_instances, sparse_ids)) for c in things}
    for c in classes:
        mask = _blob(rng, height, width, small, large)
        semantic[mask], instance[mask] = c, next(ids[c])
    if crowd:
        for _ in range(rng.integers(1, 3)):
            mask = _blob(rng, height, width, small, large)
            semantic[mask], instance[mask] = rng.choice(things), 0
    if void:
        for _ in range(rng.integers(1, 3)):
            mask = _blob(rng, height, width, small / 2, large / 2)
            semantic[mask], instance[mask] = ignore_label, 0
    return semantic, instance, stuff_layer


def _random_prediction(rng, gt_semantic, gt_instance, stuff_layer, things, stuff, ignore_label,
                       void, thing_instance_zero, sparse_ids):
    """The truth after perturbations that produce TP, FP, FN, over-merges and over-splits."""
    height, width = gt_semantic.shape
    small, large = max(2.0, min(height, width) / 10), max(3.0, min(height, width) / 3)
    semantic, instance = gt_semantic.copy(), gt_instance.copy()
    next_id = {c: int(gt_instance[gt_semantic == c].max(initial=0)) + 1 for c in things}

    def new_instance(c):
        next_id[c] += 1
        return next_id[c] - 1

    def to_background(mask):
        semantic[mask], instance[mask] = stuff_layer[mask], 0

    # A model predicts on void pixels too, and covers crowd regions with instances or stuff.
    to_background(gt_semantic == ignore_label)
    is_thing = np.isin(gt_semantic, things)
    for c in things:
        crowd = (gt_semantic == c) & (gt_instance == 0)
        if crowd.any():
            if rng.random() < 0.6:
                instance[crowd] = new_instance(c)
            else:
                to_background(crowd)

    segments = sorted({(int(c), int(i)) for c, i in zip(gt_semantic[is_thing],
                                                        gt_instance[is_thing]) if i > 0})
    operations = ["keep", "shift", "erode", "dilate", "relabel", "drop", "split", "merge"]
    for c, i in segments:
        mask = (semantic == c) & (instance == i)
        if not mask.any():
            continue  # merged away or covered by an earlier perturbation
        operation = rng.choice(operations, p=[0.3, 0.15, 0.1, 0.1, 0.1, 0.1, 0.08, 0.07])
        if operation == "shift":
            reach = int(large // 2)
            moved = _shift(mask, *rng.integers(-reach, reach + 1, size=2).tolist())
            to_background(mask & ~moved)
            semantic[moved], instance[moved] = c, i
        elif operation == "erode":
            to_background(mask & ~_erode(mask))
        elif operation == "dilate":
            grown = _dilate(_dilate(mask))
            semantic[grown], instance[grown] = c, i
        elif operation == "relabel":
            other = rng.choice([t for t in things if t != c] or [c])
            semantic[mask], instance[mask] = other, new_instance(other)
        elif operation == "drop":
            to_background(mask)
        elif operation == "split":
            cols = np.nonzero(mask)[1]
            half = mask & (np.arange(width)[None, :] >= np.median(cols))
            instance[half] = new_instance(c)
        elif operation == "merge":
            partners = [j for d, j in segments if d == c and j != i]
            if partners:
                instance[(semantic == c) & (instance == rng.choice(partners))] = i

    # Stuff: sometimes a region is relabelled (FN + FP of stuff) or eaten into by a neighbour.
    for c in np.unique(gt_semantic[np.isin(gt_semantic, stuff)]):
        mask = semantic == c
        if rng.random() < 0.2 and len(stuff) > 1:
            semantic[mask] = rng.choice([s for s in stuff if s != c])
        elif rng.random() < 0.3:
            bite = mask & _blob(rng, height, width, large / 2, large)
            semantic[bite] = rng.choice(stuff)

    # Spurious segments (some land on void or crowd and are then ignored) and void predictions.
    for _ in range(rng.integers(1, 4)):
        mask = _blob(rng, height, width, small / 2, large / 2)
        c = rng.choice(list(things) + list(stuff))
        semantic[mask], instance[mask] = c, new_instance(c) if c in things else 0
    if void:
        for _ in range(rng.integers(0, 3)):
            mask = _blob(rng, height, width, small / 2, large / 2)
            semantic[mask], instance[mask] = ignore_label, 0

    # Predicted instance ids carry no meaning: renumber them independently of the truth.
    for c in things:
        mask = semantic == c
        old = np.unique(instance[mask])
        old = old[old > 0]
        new = np.asarray(_draw_instance_ids(rng, len(old), sparse_ids), np.int64)
        rng.shuffle(new)
        values = instance[mask]
        instance[mask] = np.where(values > 0, new[np.searchsorted(old, values) % max(len(old), 1)], 0)
    if thing_instance_zero:  # one predicted thing segment without an instance id
        thing_pixels = np.isin(semantic, things) & (instance > 0)
        if thing_pixels.any():
            k = rng.integers(thing_pixels.sum())
            c, i = semantic[thing_pixels][k], instance[thing_pixels][k]
            instance[(semantic == c) & (instance == i)] = 0
    return semantic, instance


def random_panoptic_case(rng, *, num_images: int = 2, height: int = 40, width: int = 56,
                         things=(1, 3, 4), stuff=(0, 2, 5), ignore_label: int = 255,
                         crowd: bool = True, void: bool = True, sparse_instance_ids: bool = False,
                         pred_thing_instance_zero: bool = False) -> dict:
    """A random ground truth and a perturbed prediction, as realistic blobby panoptic maps.

    Ground truth per image: a stuff layer (a background class plus large stuff blobs), 3-9 thing
    instances painted in sequence as ellipses and rectangles (later ones occlude earlier ones, so
    segments can be partial, split in pieces or vanish), 1-2 crowd regions (thing class, instance
    0) and 1-2 void blobs. Instance ids are per class (instance 1 of two classes are two segments).

    Prediction: the truth with void and crowd pixels filled in (crowd by a new instance or the
    stuff below), then each thing instance kept, shifted, eroded, dilated, relabelled to another
    thing class, dropped, split in two (over-split) or merged with another instance of its class
    (over-merge); stuff regions relabelled or bitten into; 1-3 spurious segments (some on void
    or crowd, which the COCO rules then ignore); 0-2 void blobs; finally every thing class's
    instance ids renumbered at random, so no prediction id equals its truth's by design.
    Predicted thing pixels always carry an instance id > 0 unless `pred_thing_instance_zero`.

    Args:
      rng: a `np.random.Generator`; the case is a pure function of its state.
      num_images, height, width: the maps' shape [N, H, W].
      things, stuff: disjoint class ids (the defaults interleave them: classes 0..5).
      ignore_label: the void label.
      crowd: draw crowd regions in the truth.
      void: draw void regions in truth and prediction.
      sparse_instance_ids: instance ids drawn from [1, 1000) instead of 1, 2, ...
      pred_thing_instance_zero: give one predicted thing segment per image instance 0 (whose
        meaning in a prediction is a convention: the COCO writer makes it an ordinary segment).

    Returns:
      {"pred_semantic", "pred_instance", "gt_semantic", "gt_instance": [N, H, W] int32,
       "things": tuple, "stuff": tuple, "ignore_label": int}: exactly the keyword arguments of
      `panoptic_quality` and `cityscapes_panoptic_quality` (add `workdir=` for the latter).
    """
    things, stuff = tuple(int(c) for c in things), tuple(int(c) for c in stuff)
    arrays = {k: [] for k in ("pred_semantic", "pred_instance", "gt_semantic", "gt_instance")}
    for _ in range(num_images):
        gt_semantic, gt_instance, stuff_layer = _random_ground_truth(
            rng, height, width, things, stuff, ignore_label, crowd, void, sparse_instance_ids)
        pred_semantic, pred_instance = _random_prediction(
            rng, gt_semantic, gt_instance, stuff_layer, things, stuff, ignore_label, void,
            pred_thing_instance_zero, sparse_instance_ids)
        for key, value in (("pred_semantic", pred_semantic), ("pred_instance", pred_instance),
                           ("gt_semantic", gt_semantic), ("gt_instance", gt_instance)):
            arrays[key].append(value.astype(np.int32))
    case = {k: np.stack(v) for k, v in arrays.items()}
    case.update(things=things, stuff=stuff, ignore_label=ignore_label)
    return case
