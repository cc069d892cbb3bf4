"""Scores panoptic predictions in the COCO panoptic format: PQ, SQ, RQ and the merge/split counts.

  python -m seg_jax.evaluate_panoptic --gt_json=gt.json --gt_dir=gt/ \\
      --pred_json=pred.json --pred_dir=pred/ [--preset=coco] [--max_segments=256] [--output_dir=DIR]

Both datasets are COCO panoptic (a PNG per image plus one JSON; `seg_jax.data.panoptic_format`).
The categories are the ground truth's, in its order (class ids 0, 1, ...; things from "isthing");
predictions are matched to ground-truth images by image_id. Prints a Markdown table; with
--output_dir also writes results.json and results.md there. From Python, call
`evaluate_panoptic(...)`, which returns the result dict.
"""

import collections
import concurrent.futures
import json
import math
import os
import sys
import time

from absl import app, flags, logging

from seg_jax import reporting
from seg_jax.data import panoptic_format
from seg_jax.data.panoptic_format import PanopticFormatError

_GT_JSON = flags.DEFINE_string("gt_json", None, "Ground-truth COCO panoptic JSON.")
_GT_DIR = flags.DEFINE_string("gt_dir", None, "Folder of the ground-truth PNGs.")
_PRED_JSON = flags.DEFINE_string("pred_json", None, "Predicted COCO panoptic JSON.")
_PRED_DIR = flags.DEFINE_string("pred_dir", None, "Folder of the predicted PNGs.")
_PRESET = flags.DEFINE_string(
    "preset", "coco",
    "PQ conventions: coco (panopticapi / cityscapesScripts rules), deeplab2 or torchmetrics; see "
    "seg_jax/metrics/panoptic.py.")
_MAX_SEGMENTS = flags.DEFINE_integer(
    "max_segments", 256, "Bound on the segments of one image (prediction or truth); raise it when "
    "an image has more.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "If set, write results.json and results.md here.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 100, "Log progress every this many images (0: never).")
flags.mark_flags_as_required(["gt_json", "gt_dir", "pred_json", "pred_dir"])


def _check_folder(path: str, flag: str) -> None:
    if not os.path.isdir(path):
        raise PanopticFormatError(
            f"--{flag}: no folder at {path!r} (working directory {os.getcwd()}); pass the folder "
            f"that holds the PNGs named in the JSON's file_name fields.")


def _prefetched(read, keys, *, workers: int = 2, lookahead: int = 4):
    """Yields `(key, read(key))` in order while worker threads read the next few keys.

    PNG decoding and numpy release the GIL, so reading overlaps with scoring (which runs in XLA).
    An exception raised by `read` surfaces when its key's turn comes.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = collections.deque()
        for key in keys:
            pending.append((key, pool.submit(read, key)))
            if len(pending) > lookahead:
                done_key, future = pending.popleft()
                yield done_key, future.result()
        while pending:
            done_key, future = pending.popleft()
            yield done_key, future.result()


def evaluate_panoptic(gt_json: str, gt_dir: str, pred_json: str, pred_dir: str, *,
                      preset: str = "coco", max_segments: int = 256, log_every: int = 100) -> dict:
    """Panoptic quality of a COCO-format prediction against a COCO-format ground truth.

    Args:
      gt_json, gt_dir: the ground truth's JSON and PNG folder; its "categories" define the classes.
      pred_json, pred_dir: the prediction's JSON (its "categories", if any, are not read) and PNGs.
      preset: the PQ conventions of `seg_jax.metrics.panoptic` ("coco" = panopticapi's rules).
      max_segments: bound on segments per image; an image above it is an error, never truncated.
      log_every: log a progress line (images, images/s) every this many images; 0 for none.

    Returns:
      `PanopticEvaluator.result()` ("all" / "things" / "stuff" {"pq", "sq", "rq", "n"},
      "per_class", "tp", "fp", "fn", "over_merge", "over_split", "num_images") plus "preset",
      "max_segments", "thing_classes" and "stuff_classes" (class names), the four inputs and
      "seconds".

    Raises:
      PanopticFormatError: a missing or unreadable file or folder, a ground-truth image without a
        prediction, or an image that cannot be scored; the message names it and the fix.
    """
    from seg_jax.metrics.panoptic import PanopticEvaluator  # imports JAX: only when scoring

    start = time.perf_counter()
    _check_folder(gt_dir, "gt_dir")
    _check_folder(pred_dir, "pred_dir")
    gt = panoptic_format.read_panoptic_json(gt_json)
    pred = panoptic_format.read_panoptic_json(pred_json, need_categories=False)
    categories = panoptic_format.PanopticCategories.from_coco(gt["categories"], source=gt_json)
    if not categories.num_classes:
        raise PanopticFormatError(f"{gt_json}: 'categories' is empty; list the dataset's categories.")
    gt_by_image = panoptic_format.annotations_by_image_id(gt, source=gt_json)
    pred_by_image = panoptic_format.annotations_by_image_id(pred, source=pred_json)
    missing = [image_id for image_id in gt_by_image if image_id not in pred_by_image]
    if missing:
        raise PanopticFormatError(
            f"{pred_json}: no prediction for {len(missing)} of the {len(gt_by_image)} ground-truth "
            f"images (image ids {missing[:5]}{' ...' if len(missing) > 5 else ''}); every image of "
            f"{gt_json} needs an annotation with its image_id.")
    extra = len(pred_by_image) - len(gt_by_image)
    if extra:
        logging.warning("%s: %d predicted images are not in the ground truth; they are not scored.",
                        pred_json, extra)

    # Void must not collide with a class id; datasets with more than 255 classes move it up.
    ignore_label = max(255, categories.num_classes)
    evaluator = PanopticEvaluator(
        sorted(categories.things), categories.stuff, class_names=categories.class_names,
        ignore_label=ignore_label, max_segments=max_segments, preset=preset)
    total = len(gt_by_image)

    def read_pair(image_id):
        gt_annotation, pred_annotation = gt_by_image[image_id], pred_by_image[image_id]
        gt_semantic, gt_instance = panoptic_format.read_annotation(
            gt_annotation, gt_dir, categories=categories, ignore_label=ignore_label)
        # A prediction has no crowd: like panopticapi, its "iscrowd" flags are not read.
        pred_semantic, pred_instance = panoptic_format.read_annotation(
            pred_annotation, pred_dir, categories=categories, ignore_label=ignore_label,
            crowd=False)
        if pred_semantic.shape != gt_semantic.shape:
            raise PanopticFormatError(
                f"Image {image_id!r}: the prediction {pred_annotation['file_name']} is "
                f"{pred_semantic.shape[0]}x{pred_semantic.shape[1]} but the ground truth "
                f"{gt_annotation['file_name']} is {gt_semantic.shape[0]}x{gt_semantic.shape[1]} "
                f"(HxW); predict at the ground truth's resolution.")
        return pred_semantic, pred_instance, gt_semantic, gt_instance

    for count, (image_id, maps) in enumerate(_prefetched(read_pair, list(gt_by_image)), start=1):
        try:
            evaluator.update(*maps)
        except ValueError as e:  # e.g. more segments than max_segments
            raise PanopticFormatError(f"Image {image_id!r}: {e}") from e
        if log_every and (count % log_every == 0 or count == total):
            elapsed = time.perf_counter() - start
            logging.info("Scored %d/%d images (%.1f images/s).", count, total, count / elapsed)

    result = evaluator.result()
    result.update(
        preset=preset, max_segments=max_segments,
        thing_classes=[categories.class_names[c] for c in sorted(categories.things)],
        stuff_classes=[categories.class_names[c] for c in categories.stuff],
        gt_json=gt_json, gt_dir=gt_dir, pred_json=pred_json, pred_dir=pred_dir,
        seconds=time.perf_counter() - start)
    return result


def _score(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def summary_table(result: dict) -> str:
    """Markdown: PQ / SQ / RQ (in %) per class and for All / Things / Stuff, plus merge/split counts."""
    things = set(result.get("thing_classes", ()))
    lines = [
        f"Panoptic quality (preset `{result.get('preset', '?')}`) on {result['num_images']} images:",
        "",
        "| class | kind | PQ | SQ | RQ | TP | FP | FN |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, scores in result["per_class"].items():
        lines.append(
            f"| {name} | {'thing' if name in things else 'stuff'} | {_score(scores['pq'])} | "
            f"{_score(scores['sq'])} | {_score(scores['rq'])} | {scores['tp']} | {scores['fp']} | "
            f"{scores['fn']} |")
    lines += ["", "| classes | PQ | SQ | RQ | n |", "|---|---:|---:|---:|---:|"]
    for group in ("all", "things", "stuff"):
        scores = result[group]
        lines.append(f"| {group.capitalize()} | {_score(scores['pq'])} | {_score(scores['sq'])} | "
                     f"{_score(scores['rq'])} | {scores['n']} |")
    lines += [
        "",
        f"Over-merged ground-truth segments (a false negative swallowed by a matched prediction): "
        f"{result['over_merge']}; over-split predicted segments (a false positive inside a matched "
        f"ground-truth segment): {result['over_split']}.",
        "",
        "n: classes averaged (those with a TP, FP or FN); n/a: no such class.",
    ]
    return "\n".join(lines)


def write_results(output_dir: str, result: dict) -> None:
    """Writes results.json (NaN as null) and results.md (the summary table) into `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    reporting.atomic_write(os.path.join(output_dir, "results.json"),
                           json.dumps(reporting.json_ready(result), indent=2) + "\n")
    reporting.atomic_write(os.path.join(output_dir, "results.md"), summary_table(result) + "\n")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    from seg_jax.metrics import panoptic

    if _PRESET.value not in panoptic.PRESETS:
        sys.exit(f"FATAL --preset={_PRESET.value!r} is unknown; use one of {list(panoptic.PRESETS)}.")
    if _MAX_SEGMENTS.value < 1:
        sys.exit(f"FATAL --max_segments must be positive, got {_MAX_SEGMENTS.value}.")
    try:
        result = evaluate_panoptic(
            _GT_JSON.value, _GT_DIR.value, _PRED_JSON.value, _PRED_DIR.value,
            preset=_PRESET.value, max_segments=_MAX_SEGMENTS.value, log_every=_LOG_EVERY.value)
    except PanopticFormatError as e:
        sys.exit(f"FATAL {e}")
    print(summary_table(result))  # the command's output; progress and notes go to the log
    if _OUTPUT_DIR.value:
        write_results(_OUTPUT_DIR.value, result)
        logging.info("Wrote results.json and results.md to %s.", _OUTPUT_DIR.value)


if __name__ == "__main__":
    app.run(main)
