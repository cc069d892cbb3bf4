r"""Panoptic: are over-merges and over-splits invisible to IoU?

    python -m experiments.studies.panoptic [--quick] [--out docs/studies] [--parallel K]

The design text's claim: Panoptic Quality sees errors of instances that semantic IoU cannot,
two objects of one class predicted as one segment (an over-merge) or one object predicted in
pieces (an over-split), since IoU scores each class's pixels whatever segments they form.

Panoptic-DeepLab (configs/shapes_panoptic.py) is trained on `shapes` over 3 seeds. Each trained
checkpoint is then scored again at several centre thresholds (`config.panoptic.center_threshold`,
an evaluation-time setting: how strong a peak of the centre heatmap must be to start an
instance), which change the instances and nothing in the semantic head's prediction. Beside it,
instances from the 8-connected components of each thing class, taken from the same model's
semantic prediction and from the true semantic map (as `experiments/shapes_pq_from_semantics.py`
does: mIoU 100% by construction). The page reports PQ, SQ, RQ, the over-merge and over-split
counts and mIoU, both of the semantic head and of the panoptic output's own semantic map (the
post-processing relabels each instance to the majority class of its pixels).

The claim holds when the semantic mIoU stays constant across thresholds while the merge/split
counts and PQ move by more than the seeds' spread, and when perfect semantics (mIoU 100%) still
give merges or splits; it fails when the instances' errors do not move, or when mIoU moves with
them.
"""

import dataclasses
import json
import math
import os
import sys

import numpy as np

from configs import shapes_panoptic
from experiments.studies import decisions, driver, report

NAME = "panoptic"
STEPS = 1200  # the config's 2400, halved: 3 seeds in about 40 minutes on a 2-core CPU
THRESHOLDS = (0.03, 0.1, 0.3, 0.5)
CONNECTIVITY = 8
SCORES_FILE = "panoptic_scores.json"  # each run's scores under every method, cached
SCORES_VERSION = 1

MODEL_COMPONENTS = "components_model"
TRUE_COMPONENTS = "components_truth"


def method_key(threshold: float) -> str:
    return f"center_threshold={threshold:g}"


METHOD_LABELS = {
    **{method_key(t): f"Panoptic-DeepLab, centre threshold {t:g}" for t in THRESHOLDS},
    MODEL_COMPONENTS: f"{CONNECTIVITY}-connected components of the model's semantics",
    TRUE_COMPONENTS: f"{CONNECTIVITY}-connected components of the true semantics",
}

METRICS = [
    report.Metric("pq", "PQ", percent=True),
    report.Metric("sq", "SQ", percent=True),
    report.Metric("rq", "RQ", percent=True),
    report.Metric("pq_things", "PQ things", percent=True),
    report.Metric("over_merge", "over-merge"),
    report.Metric("over_split", "over-split"),
    report.Metric("fp", "FP"),
    report.Metric("fn", "FN"),
    report.Metric("mean_iou", "mIoU (semantic head)", percent=True),
    report.Metric("panoptic_mean_iou", "mIoU (panoptic map)", percent=True),
]
FIGURE_METRICS = [m for m in METRICS if m.path in ("pq", "rq", "mean_iou", "panoptic_mean_iou",
                                                    "over_merge", "over_split")]


def get_config(arg=None):
    if arg not in (None, "quick"):
        raise ValueError(f"Unknown variant {arg!r} of {NAME}; known: 'quick'.")
    config = shapes_panoptic.get_config(arg)
    config.eval_boundary_f_score = False  # not reported here; its statistics cost compile time
    return driver.sized(config, arg, steps=STEPS, name=NAME)


def get_sweep(arg=None):
    from seg_jax import sweep

    seeds = driver.seeds_for(arg)
    return driver.with_seeds(sweep.Sweep([{}]), seeds)


# ----------------------------------------------------------------------------------------------
# Instances and their scores (pure functions of the maps)


def components_as_instances(semantic: np.ndarray, things) -> np.ndarray:
    """[N, H, W] instance ids: the 8-connected components of each thing class in each image,
    numbered from 1 within each class (experiments/shapes_pq_from_semantics.py's rule)."""
    from experiments.shapes_pq_from_semantics import components_as_instances as per_image

    return np.stack([per_image(s, things, CONNECTIVITY) for s in semantic]).astype(np.int32)


def segment_bound(semantic: np.ndarray, instance: np.ndarray, num_classes: int,
                  at_least: int) -> int:
    """A `max_segments` for PQ that fits these maps: above every instance id and every image's
    number of segments, and at least `at_least` (a power of two above it otherwise, so that few
    bounds, each compiled once, serve every run)."""
    valid = (semantic >= 0) & (semantic < num_classes)
    needed = int(instance[valid].max(initial=0)) + 1
    for s, i, v in zip(semantic, instance, valid):
        needed = max(needed, np.unique(np.stack([s[v], i[v]]), axis=1).shape[1])
    bound = at_least
    while bound < needed:
        bound *= 2
    return bound


def panoptic_scores(pred_semantic, pred_instance, true_semantic, true_instance, info, *,
                    max_segments: int, preset: str, batch_size: int = 8) -> dict:
    """PQ, SQ, RQ (all classes), PQ of things and stuff, TP / FP / FN and the over-merge and
    over-split counts (`seg_jax.metrics.PanopticEvaluator`) of [N, H, W] maps; NaN as None.
    The maps go in batches of `batch_size`, the last filled with void images (no segment), so
    that one compiled program scores any number of images."""
    from seg_jax import metrics

    bound = segment_bound(pred_semantic, pred_instance, info.num_classes, max_segments)
    evaluator = metrics.PanopticEvaluator(
        info.thing_classes, info.stuff_classes, class_names=info.class_names,
        ignore_label=info.ignore_label, max_segments=bound, preset=preset)
    maps = [np.asarray(m, np.int32) for m in
            (pred_semantic, pred_instance, true_semantic, true_instance)]
    fill = (info.ignore_label, 0, info.ignore_label, 0)
    for start in range(0, len(maps[0]), batch_size):
        chunk = [m[start:start + batch_size] for m in maps]
        missing = batch_size - len(chunk[0])
        chunk = [np.concatenate([c, np.full((missing, *c.shape[1:]), v, np.int32)])
                 for c, v in zip(chunk, fill)]
        evaluator.update(*chunk)
    result = evaluator.result()
    scores = {"pq": result["all"]["pq"], "sq": result["all"]["sq"], "rq": result["all"]["rq"],
              "pq_things": result["things"]["pq"], "pq_stuff": result["stuff"]["pq"],
              **{k: result[k] for k in ("tp", "fp", "fn", "over_merge", "over_split")}}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in scores.items()}


def mean_iou(pred: np.ndarray, labels: np.ndarray, info) -> float:
    from seg_jax.metrics import confusion

    return float(confusion.mean_iou(decisions.confusion_counts(
        pred, labels, info.num_classes, info.ignore_label)))


def postprocess(semantic, center, offset, threshold: float, config, info):
    """Panoptic-DeepLab's grouping (`panoptic_postprocess`) at `threshold`: (semantic, instance)
    [N, H, W] numpy. The threshold is an argument of one compiled program, not a constant."""
    return tuple(np.asarray(m) for m in _postprocess_fn(
        tuple(info.thing_classes), info.num_classes, int(config.panoptic.nms_kernel),
        int(config.panoptic.top_k))(semantic, center, offset, np.float32(threshold)))


_POSTPROCESS = {}


def _postprocess_fn(thing_classes, num_classes, nms_kernel, top_k):
    key = (thing_classes, num_classes, nms_kernel, top_k)
    if key not in _POSTPROCESS:
        import jax

        from seg_jax.models.panoptic_deeplab import panoptic_postprocess

        _POSTPROCESS[key] = jax.jit(lambda semantic, center, offset, threshold: (
            panoptic_postprocess(semantic, center, offset, thing_classes=thing_classes,
                                 num_classes=num_classes, center_threshold=threshold,
                                 nms_kernel=nms_kernel, top_k=top_k)))
    return _POSTPROCESS[key]


def score_methods(outputs: dict, labels: np.ndarray, instances: np.ndarray, config,
                  info) -> dict:
    """{method key: scores} for one checkpoint's outputs ('logits', 'center', 'offset'):
    Panoptic-DeepLab at every threshold of THRESHOLDS, and connected components of the model's
    MAP semantics and of the true semantics. 'mean_iou' is the semantic map the instances were
    made from (the semantic head, or the truth), 'panoptic_mean_iou' the panoptic output's."""
    semantic = np.asarray(outputs["logits"]).argmax(-1).astype(np.int32)
    things = tuple(info.thing_classes)
    pq = lambda sem, inst: panoptic_scores(  # noqa: E731
        sem, inst, labels, instances, info, max_segments=int(config.panoptic.max_segments),
        preset=str(config.panoptic.preset))
    head_miou = mean_iou(semantic, labels, info)
    methods = {}
    for t in THRESHOLDS:
        pan_semantic, pan_instance = postprocess(semantic, outputs["center"], outputs["offset"],
                                                 t, config, info)
        methods[method_key(t)] = {**pq(pan_semantic, pan_instance), "mean_iou": head_miou,
                                  "panoptic_mean_iou": mean_iou(pan_semantic, labels, info)}
    methods[MODEL_COMPONENTS] = {**pq(semantic, components_as_instances(semantic, things)),
                                 "mean_iou": head_miou, "panoptic_mean_iou": head_miou}
    truth = labels.astype(np.int32)
    truth_miou = mean_iou(truth, labels, info)
    methods[TRUE_COMPONENTS] = {**pq(truth, components_as_instances(truth, things)),
                                "mean_iou": truth_miou, "panoptic_mean_iou": truth_miou}
    return methods


# ----------------------------------------------------------------------------------------------
# Each run's scores, computed once and kept in its workdir


def _wanted(run, split: str) -> dict:
    return {"version": SCORES_VERSION, "step": run.results.get("step"), "split": split,
            "thresholds": list(THRESHOLDS), "connectivity": CONNECTIVITY}


def run_scores(run, predictor_factory, split: str) -> dict:
    """Every method's scores on a finished run (cached in its workdir as SCORES_FILE)."""
    path = os.path.join(run.path, SCORES_FILE)
    wanted = _wanted(run, split)
    try:
        with open(path) as f:
            cached = json.load(f)
        if all(cached.get(k) == v for k, v in wanted.items()):
            return cached
    except (OSError, ValueError):
        pass
    predictor = predictor_factory()
    step, outputs = predictor.outputs(run.path, fields=("logits", "center", "offset"))
    scores = {**wanted, "step": step, "methods": score_methods(
        outputs, predictor.labels, predictor.instances, predictor.config, predictor.info)}
    from seg_jax.reporting import atomic_write

    atomic_write(path, json.dumps(scores, indent=1))
    return scores


def method_rows(runs, predictor_factory, split: str) -> list[report.Row]:
    """One Row per method: each finished run's scores by that method in place of its results
    (its training's wall time counted in the first method only)."""
    groups = {label: [] for label in METHOD_LABELS.values()}
    for run in runs:
        scores = run_scores(run, predictor_factory, split) if run.results is not None else None
        for n, (key, label) in enumerate(METHOD_LABELS.items()):
            groups[label].append(dataclasses.replace(
                run, results=scores["methods"][key] if scores else None,
                wall_time_s=run.wall_time_s if n == 0 else None))
    return report.summarise(groups, METRICS)


# ----------------------------------------------------------------------------------------------
# The verdict


def movement(rows: list[report.Row], path: str) -> dict:
    """How `path` moves across the threshold rows: the range of the means (max - min), the
    largest seed std of a row, the largest range within one seed, and whether the means' range
    exceeds that std ('moves'; None with fewer than two seeds in some row)."""
    stats = [row.stat(path) for row in rows]
    if not stats or any(s.n == 0 for s in stats):
        return {"range": None, "spread": None, "seed_range": None, "moves": None}
    means = [s.mean for s in stats]
    by_seed: dict[int, list[float]] = {}
    for s in stats:
        for seed, v in zip(s.seeds, s.values):
            by_seed.setdefault(seed, []).append(v)
    seed_range = max(max(v) - min(v) for v in by_seed.values())
    spread = decisions.larger_std(*stats)
    value_range = max(means) - min(means)
    return {"range": value_range, "spread": spread, "seed_range": seed_range,
            "moves": None if spread is None else value_range > spread}


MIOU_TOLERANCE = 1e-9  # the semantic head's mIoU cannot depend on the threshold at all


def verdict(rows: list[report.Row]) -> tuple[str, dict]:
    """('holds' / 'mixed' / 'does not hold' / 'not enough runs', the movements it rests on).

    holds: the semantic mIoU is the same at every threshold (within MIOU_TOLERANCE for each
    seed) while PQ and the merge or split count move beyond the seed spread, and the true
    semantics' components (mIoU 100%) have merges or splits. does not hold: mIoU moves, or
    neither merges nor splits move. mixed: anything between."""
    by_label = {row.label: row for row in rows}
    pd_rows = [by_label[METHOD_LABELS[method_key(t)]] for t in THRESHOLDS]
    moved = {path: movement(pd_rows, path) for path in
             ("mean_iou", "panoptic_mean_iou", "pq", "over_merge", "over_split")}
    truth = by_label[METHOD_LABELS[TRUE_COMPONENTS]]
    errors = [truth.stat(p).mean for p in ("over_merge", "over_split")]
    moved["truth_errors"] = None if None in errors else sum(errors)
    moved["truth_miou"] = truth.stat("mean_iou").mean
    if any(m["moves"] is None for k, m in moved.items() if isinstance(m, dict)):
        return "not enough runs", moved
    miou_constant = moved["mean_iou"]["seed_range"] <= MIOU_TOLERANCE
    instances_move = moved["over_merge"]["moves"] or moved["over_split"]["moves"]
    if not miou_constant or not instances_move:
        return "does not hold", moved
    truth_shows = bool(moved["truth_errors"]) and moved["truth_miou"] == 1.0
    return ("holds" if moved["pq"]["moves"] and truth_shows else "mixed"), moved


VERDICT_TEXT = {"holds": "The claim holds", "does not hold": "The claim does not hold",
                "mixed": "Mixed", "not enough runs": "Not enough runs for a verdict"}


def _range_line(name: str, m: dict, scale: float, unit: str) -> str:
    if m["range"] is None:
        return f"- {name}: no results."
    spread = "n/a" if m["spread"] is None else f"{scale * m['spread']:.2f}{unit}"
    moves = {True: "moves beyond", False: "stays within", None: "cannot be compared with"}
    return (f"- {name}: means range over {scale * m['range']:.2f}{unit} across the thresholds "
            f"(largest range within one seed {scale * m['seed_range']:.2f}{unit}); "
            f"{moves[m['moves']]} the largest seed std, {spread}.")


def _same_semantics_line(rows: list[report.Row]) -> str:
    """Components of the model's semantics against Panoptic-DeepLab at the config's default
    threshold: the same semantic head, so the same mIoU."""
    by_label = {row.label: row for row in rows}
    default = shapes_panoptic.get_config().panoptic.center_threshold
    if default not in THRESHOLDS:
        return ""
    pd = by_label[METHOD_LABELS[method_key(default)]]
    cc = by_label[METHOD_LABELS[MODEL_COMPONENTS]]
    values = {p: (pd.stat(p).mean, cc.stat(p).mean) for p in
              ("mean_iou", "pq", "over_merge", "over_split")}
    if any(v is None for pair in values.values() for v in pair):
        return ""
    (miou, _), (pq_pd, pq_cc) = values["mean_iou"], values["pq"]
    return (f"The same semantic prediction (mIoU {100 * miou:.2f}%) gives PQ "
            f"{100 * pq_pd:.2f}% with Panoptic-DeepLab's centres (threshold {default:g}; "
            f"{values['over_merge'][0]:.1f} merges, {values['over_split'][0]:.1f} splits on "
            f"average) and {100 * pq_cc:.2f}% with connected components "
            f"({values['over_merge'][1]:.1f} merges, {values['over_split'][1]:.1f} splits).")


def _verdict_section(rows: list[report.Row]) -> str:
    outcome, moved = verdict(rows)
    lines = ["## Verdict", "", f"**{VERDICT_TEXT[outcome]}.**", "",
             "Across the centre thresholds (Panoptic-DeepLab rows; ranges of the means over "
             "seeds, against the largest seed std of any threshold):", "",
             _range_line("mIoU of the semantic head", moved["mean_iou"], 100, " points"),
             _range_line("mIoU of the panoptic map", moved["panoptic_mean_iou"], 100, " points"),
             _range_line("PQ", moved["pq"], 100, " points"),
             _range_line("over-merges", moved["over_merge"], 1, ""),
             _range_line("over-splits", moved["over_split"], 1, "")]
    if moved["truth_errors"] is not None:
        lines += ["", f"The true semantic map (mIoU {100 * moved['truth_miou']:.2f}%) cut into "
                      f"connected components has {moved['truth_errors']:.0f} over-merges and "
                      f"over-splits together."]
    same = _same_semantics_line(rows)
    if same:
        lines += ["", same]
    return "\n".join(lines)


def _runner_check(runs, rows: list[report.Row]) -> str | None:
    """The difference between this page's Panoptic-DeepLab scores at the threshold the run was
    evaluated with and the runner's own evaluation (results.json), which must agree."""
    default = shapes_panoptic.get_config().panoptic.center_threshold
    if default not in THRESHOLDS:
        return None
    ours = {r.name: r for r in {row.label: row for row in rows}[
        METHOD_LABELS[method_key(default)]].done}
    diffs = [abs(report.metric(ours[r.name], p) - report.metric(r, p))
             for r in runs if r.name in ours for p in ("pq", "over_merge", "over_split")
             if report.metric(ours[r.name], p) is not None and report.metric(r, p) is not None]
    if not diffs:
        return None
    return (f"Check: at threshold {default:g} this page's scores and the runner's own evaluation "
            f"of the same checkpoints (results.json) differ by at most {max(diffs):.2e} in PQ "
            f"and the merge/split counts over {len(ours)} runs.")


def make_report(runs, args: driver.StudyArgs, seconds: float) -> None:
    variant = "quick" if args.quick else None
    config = get_config(variant)
    split = config.data.eval_split
    predictor = decisions.lazy(lambda: decisions.SplitPredictor(get_config(variant),
                                                                 args.data_dir))
    rows = method_rows(runs, predictor, split)
    pd_rows = rows[:len(THRESHOLDS)]
    notes = [
        f"Every run is configs/shapes_panoptic.py (Panoptic-DeepLab: ResNet-18 of base width "
        f"{config.model.base_width} at output stride 8, thinned heads) trained for "
        f"{config.num_train_steps} updates of batch {config.batch_size} on "
        f"{config.data.crop_size} px crops" + (
            "" if args.quick else " (the config's 2,400 halved, so that 3 seeds fit about 40 "
            "minutes of a 2-core CPU)") + f", and scored on `{split}` of `shapes`.",
        f"Each trained checkpoint is scored again here for every row: Panoptic-DeepLab's "
        f"grouping (`panoptic_postprocess`: centre peaks above the threshold in a "
        f"{config.panoptic.nms_kernel} x {config.panoptic.nms_kernel} window, at most "
        f"{config.panoptic.top_k}; each thing pixel joins the centre its offset points nearest "
        f"to) at centre thresholds {', '.join(f'{t:g}' for t in THRESHOLDS)}, and the "
        f"{CONNECTIVITY}-connected components of each thing class of the model's MAP semantic "
        f"map and of the true one (the latter uses no model: the same for every seed). PQ "
        f"follows the COCO rules (`preset='{config.panoptic.preset}'`). Over-merge counts "
        f"objects swallowed by a segment matched to another object of their class; over-split "
        f"counts spurious pieces of an object that another segment matched.",
        "Two mIoUs: the semantic head's (the MAP decision of its logits, which the threshold "
        "cannot change) and the panoptic map's (after grouping, each instance takes the "
        "majority class of its pixels, so a threshold can move it a little).",
        f"The table's arms are {len(METHOD_LABELS)} ways of making instances from each trained "
        f"model; its run counts count each training once per row.",
    ]
    check = _runner_check(runs, rows)
    if check:
        notes.append(check)
    report.write_report(
        args.out, NAME, "Panoptic: what IoU cannot see", rows, METRICS, command=args.command,
        wall_time=seconds, notes=notes, smoke=args.quick, sections=[_verdict_section(rows)],
        draw=lambda path: _draw(path, pd_rows, args.quick))


def _draw(path: str, pd_rows: list[report.Row], smoke: bool) -> None:
    from experiments.studies import plots

    plots.line_plot(path, pd_rows, list(THRESHOLDS), FIGURE_METRICS,
                    x_label="centre threshold (Panoptic-DeepLab)",
                    title="Panoptic-DeepLab against its centre threshold", smoke=smoke)


def main(argv=None) -> int:
    return driver.run_study(__file__, NAME, make_report, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
