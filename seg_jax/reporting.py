"""Run outputs that people read: results.json / results.md, the resolved config, summary tables."""

import json
import math
import os


def atomic_write(path: str, text: str) -> None:
    """Writes `text` to `path` so that readers see the old file or the new one, never a part."""
    # Write-then-rename: a kill mid-write never leaves a truncated results or config file. The
    # temporary name is the process's own, so processes writing one file (the array tasks of a
    # sweep rebuilding its tables) never rename each other's half-written files.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def format_duration(seconds: float) -> str:
    """'1h02m03s', '2m05s', '0m07s'; '?' for an unknown (infinite or NaN) duration."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def json_ready(value):
    """`value` with every float NaN replaced by None, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# The keys the evaluation itself writes to results.json (train.Experiment.evaluate and the
# evaluators it uses); any other key is a user metric (seg_jax.metrics.extra), which may not take
# one of these names. tests/test_notebook_api.py checks that a finished run reports none outside.
RESULT_KEYS = frozenset({
    "mean_iou", "frequency_weighted_iou", "pixel_accuracy", "mean_accuracy", "mean_dice",
    "mean_cost", "per_class_iou", "per_class_dice", "per_class_precision",
    "per_class_recall", "num_pixels", "num_void_predictions",
    "per_image_mean_iou", "boundary_f_score", "boundary_precision", "boundary_recall",
    "per_class_boundary_f_score", "ece", "temperature", "temperature_pixels", "ece_sampled",
    "ece_sampled_scaled", "decision_rule", "step", "split", "num_examples", "pq", "sq", "rq",
    "pq_things", "pq_stuff", "tp", "fp", "fn", "over_merge", "over_split", "per_class_pq",
    "preempted", "ema",
})


def write_config(workdir: str, config) -> None:
    atomic_write(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2) + "\n")


def write_results(workdir: str, results: dict) -> None:
    """Writes results.json (machine-readable) and results.md (the summary table)."""
    atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=2) + "\n")
    atomic_write(os.path.join(workdir, "results.md"), summary_table(results) + "\n")


def read_results(workdir: str) -> dict | None:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_table(results: dict) -> str:
    """A Markdown table of the headline scores and per-class IoU."""
    lines = [
        f"Evaluation on split `{results['split']}` ({results['num_examples']} images) "
        f"at step {results['step']}:",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| mIoU | {_pct(results['mean_iou'])} |",
        f"| frequency-weighted IoU | {_pct(results.get('frequency_weighted_iou'))} |",
        f"| mean Dice | {_pct(results.get('mean_dice'))} |",
        f"| per-image mIoU (mean over image-class pairs) | {_pct(results.get('per_image_mean_iou'))} |",
        f"| boundary F-score | {_pct(results.get('boundary_f_score'))} |",
        f"| pixel accuracy | {_pct(results['pixel_accuracy'])} |",
        f"| mean class accuracy | {_pct(results['mean_accuracy'])} |",
        f"| mean cost per pixel ({results['decision_rule']} decision) | {_num(results['mean_cost'])} |",
        f"| expected calibration error | {_pct(results.get('ece'))} |",
    ]
    ema = results.get("ema")
    if ema:  # the moving average of the weights (config.ema_decay), evaluated alike
        lines += [f"| mIoU / pixel accuracy, EMA weights | {_pct(ema['mean_iou'])} / "
                  f"{_pct(ema['pixel_accuracy'])} |"]
    if "temperature" in results:
        lines += [
            f"| fitted temperature ({results['temperature_pixels']} sampled pixels) | "
            f"{_num(results['temperature'])} |",
            f"| ECE on those pixels, before / after scaling | {_pct(results['ece_sampled'])} / "
            f"{_pct(results['ece_sampled_scaled'])} |",
        ]
    if "pq" in results:
        lines += [
            f"| PQ / SQ / RQ (panoptic, all classes) | {_pct(results['pq'])} / "
            f"{_pct(results['sq'])} / {_pct(results['rq'])} |",
            f"| PQ things / stuff | {_pct(results['pq_things'])} / {_pct(results['pq_stuff'])} |",
            f"| segments: TP / FP / FN | {results['tp']} / {results['fp']} / {results['fn']} |",
            f"| over-merge / over-split | {results['over_merge']} / {results['over_split']} |",
        ]
    # User metrics (seg_jax.metrics.extra): numbers and dicts of numbers as rows, per-class
    # values (keyed by the class names) as columns beside the IoU.
    class_names = list(results["per_class_iou"])
    user = {k: v for k, v in results.items() if k not in RESULT_KEYS}
    per_class = {k: v for k, v in user.items() if isinstance(v, dict) and list(v) == class_names}
    for name, value in user.items():
        if name in per_class:
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        lines += [f"| {name if key is None else f'{name}/{key}'} | {_num(v)} |"
                  for key, v in items]
    # Per-class columns: IoU, then whichever per-class scores the run has.
    columns = [("IoU", results["per_class_iou"], _pct)]
    if ema:
        columns.append(("IoU, EMA", ema["per_class_iou"], _pct))
    for title, key in (("precision", "per_class_precision"), ("recall", "per_class_recall"),
                       ("boundary F", "per_class_boundary_f_score"), ("PQ", "per_class_pq")):
        if results.get(key) is not None:
            columns.append((title, results[key], _pct))
    columns += [(name, values, _num) for name, values in per_class.items()]
    lines += ["", "| class | " + " | ".join(t for t, _, _ in columns) + " |",
              "|---|" + "---:|" * len(columns)]
    for name in class_names:
        lines.append(f"| {name} | " + " | ".join(fmt(c.get(name)) for _, c, fmt in columns)
                     + " |")
    return "\n".join(lines)
