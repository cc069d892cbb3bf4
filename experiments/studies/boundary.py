r"""Boundary F-score against IoU: does the boundary score see over-smoothing that IoU misses?

    python -m experiments.studies.boundary [--quick] [--out docs/studies] [--parallel K]

The design text's claim: a model that over-smooths its predictions scores poorly on the
boundary F-score (BF, boundary pixels matched within a tolerance of t pixels), a failure that
IoU "might not capture as effectively". Two parts test it.

1. Controlled degradations, no training, deterministic: the `shapes` validation labels (200
   images, 128 x 128) made worse in known ways (`experiments.studies.degradations`): the truth
   blurred (one-hot, Gaussian of sigma px, argmax), the truth as a model at output stride s would
   give it (block majority, or block class fractions, upsampled bilinearly, argmax), each thing
   eroded or dilated by k px;
   and the trained output-stride-8 models' probabilities blurred, or average-pooled to stride s
   and upsampled. For every level: mIoU and BF at tolerances 1, 2, 3 and 5 px
   (`seg_jax.metrics`), and each score's drop relative to its undegraded value.
2. Training: the `shapes` main job's model at output stride 8, 16 and 32 (ASPP rates scaled to
   keep their reach in input pixels), 3 seeds, a shortened schedule: mIoU, BF at the same
   tolerances (the checkpoints re-evaluated), and the IoU of the thin class `bar`.

The claim holds where, over the smoothing degradations (blur, stride), BF's relative drop is
larger than mIoU's (their ratio, summed over the levels, exceeds 1), and where between the trained
output strides BF's relative gap exceeds mIoU's beyond the seeds' spread. It fails where mIoU
drops as much or more. Erosion and dilation shift a boundary without smoothing it; they are
reported, not counted in the verdict.
"""

import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from configs import shapes
from experiments.studies import degradations, driver, report
from seg_jax.reporting import atomic_write

NAME = "boundary"
STEPS = 1200  # the main job's 2400, halved: 9 runs on a 2-core CPU
THIN = "bar"
OUTPUT_STRIDES = (8, 16, 32)
BASE_RATES = (6, 12, 18)  # configs/shapes.py's ASPP rates, at output stride 8
TOLERANCES = (1, 2, 3, 5)  # pixels; the runner's default (config.eval_boundary_tolerance) is 2
VERDICT_TOLERANCE = 2
CACHE_VERSION = 1  # bump when a cached score would change meaning


def atrous_rates(output_stride: int) -> tuple[int, ...]:
    """The main job's rates scaled by 8 / output_stride (rounded half up, at least 1), so that
    each ASPP branch reaches as many input pixels at every stride: (6, 12, 18) at 8, (3, 6, 9) at
    16, (2, 3, 5) at 32."""
    return tuple(max(1, math.floor(r * 8 / output_stride + 0.5)) for r in BASE_RATES)


ARMS = tuple({"model.output_stride": s, "model.atrous_rates": atrous_rates(s)}
             for s in OUTPUT_STRIDES)


def get_config(arg=None):
    config = shapes.get_config()
    return driver.sized(config, arg, steps=STEPS, name=NAME)


def get_sweep(arg=None):
    seeds = driver.seeds_for(arg)
    return driver.with_seeds(list(ARMS), seeds)


# ----------------------------------------------------------------------------------------------
# The degradations


@dataclasses.dataclass(frozen=True)
class Family:
    """One kind of degradation at its levels (level 0, the undegraded input, is implied)."""
    key: str
    title: str
    level_label: str
    levels: tuple
    on_model: bool  # degrades a trained model's probabilities (else the truth)
    smoothing: bool  # over-smoothing, what the claim is about: counted in the verdict


SIGMAS = (0.5, 1, 1.5, 2, 3, 4, 6)
STRIDES = (2, 4, 8, 16, 32)
FAMILIES = (
    Family("truth_blur", "Truth, Gaussian blur", "sigma (px)", SIGMAS, False, True),
    Family("truth_stride", "Truth at output stride s (block majority)", "stride s (px)",
           STRIDES, False, True),
    Family("truth_stride_soft", "Truth at output stride s (block fractions)", "stride s (px)",
           STRIDES, False, True),
    Family("truth_morph", "Truth, things eroded (-k) / dilated (+k)", "k (px)",
           (-6, -4, -3, -2, -1, 1, 2, 3, 4, 6), False, False),
    Family("model_blur", "OS8 model, probabilities blurred", "sigma (px)", SIGMAS, True, True),
    Family("model_stride", "OS8 model, probabilities pooled to stride s", "stride s (px)",
           STRIDES, True, True),
)


def degrade(family: str, level, *, labels, instances=None, probs=None,
            num_classes: int) -> np.ndarray:
    """The class maps [N, H, W] of one degradation level."""
    if family == "truth_blur":
        return degradations.blur_labels(labels, num_classes, level)
    if family == "truth_stride":
        return degradations.strided_labels(labels, num_classes, level)
    if family == "truth_stride_soft":  # a model that got each block's class fractions right
        return degradations.pooled_probabilities(degradations.one_hot(labels, num_classes), level)
    if family == "truth_morph":
        return degradations.morph_things(labels, instances, level)
    if family == "model_blur":
        return degradations.blur_probabilities(probs, level)
    if family == "model_stride":
        return degradations.pooled_probabilities(probs, level)
    raise ValueError(f"Unknown degradation {family!r}; known: {[f.key for f in FAMILIES]}.")


# ----------------------------------------------------------------------------------------------
# Scores


def bf_key(tolerance) -> str:
    return f"bf@{tolerance:g}"


@functools.lru_cache(maxsize=None)
def _scoring_program(num_classes: int, ignore_label: int, tolerances: tuple):
    """One jitted program for the confusion matrix and the boundary statistics at every
    tolerance: compiled once per batch shape (one compilation of all tolerances costs about
    half of one per tolerance)."""
    import jax

    from seg_jax import metrics

    def statistics(preds, labels):
        cm = metrics.confusion_matrix(preds, labels, num_classes, ignore_label=ignore_label)
        return cm, [metrics.boundary_statistics(preds, labels, num_classes, tolerance=float(t),
                                                ignore_label=ignore_label) for t in tolerances]

    return jax.jit(statistics)


def score_predictions(preds, labels, *, num_classes: int, ignore_label: int,
                      thin_class: int, tolerances: Sequence = TOLERANCES) -> dict[str, float]:
    """{'mean_iou', 'thin_iou', 'bf@<t>' for each tolerance} of class maps against the truth,
    over the whole batch as the runner scores a split: the confusion matrix of every pixel
    (`seg_jax.metrics.confusion_matrix`, `mean_iou`) and the boundary F-score's per-image mean
    (`seg_jax.metrics.boundary_statistics`, Csurka's convention, the runner's)."""
    from seg_jax import metrics

    program = _scoring_program(int(num_classes), int(ignore_label), tuple(tolerances))
    cm, boundary_stats = program(np.asarray(preds, np.int32), np.asarray(labels, np.int32))
    cm = np.asarray(cm, np.int64)
    scores = {"mean_iou": float(metrics.mean_iou(cm)),
              "thin_iou": float(metrics.iou(cm)[thin_class])}
    for t, stats in zip(tolerances, boundary_stats):
        sums = {k: np.asarray(v, np.int64 if "count" in k else np.float64)
                for k, v in stats.items()}
        scores[bf_key(t)] = float(metrics.boundary_scores(sums)["f_score"])
    return scores


def degradation_curves(families: Sequence[Family], score: Callable[[np.ndarray], dict],
                       **inputs) -> dict[str, list[dict]]:
    """{family: [{'level': 0, scores of the undegraded input}, {'level': l, scores}, ...]};
    `score(preds)` scores one level, `inputs` are `degrade`'s (labels, instances, probs,
    num_classes)."""
    curves = {}
    for family in families:
        source = (degradations.argmax(inputs["probs"]) if family.on_model
                  else np.asarray(inputs["labels"], np.int32))
        points = [{"level": 0, **score(source)}]
        for level in family.levels:
            points.append({"level": level, **score(degrade(family.key, level, **inputs))})
        curves[family.key] = points
    return curves


def relative_drop(base: float, value: float) -> float | None:
    """(base - value) / base: the fraction of the undegraded score lost; None when the base is
    not a positive number."""
    if base is None or value is None or not (base > 0) or not math.isfinite(value):
        return None
    return (base - value) / base


def drops(curve: Sequence[Mapping], key: str) -> list[float | None]:
    """The relative drop of `key` at each degraded level of a curve (level 0 is the base)."""
    base = curve[0][key]
    return [relative_drop(base, point[key]) for point in curve[1:]]


def drop_ratio(curve: Sequence[Mapping], key: str, reference: str = "mean_iou") -> float | None:
    """How much more `key` drops than `reference` over a curve: the sum over the levels of its
    relative drop over the same sum for the reference (the ratio of the areas under the two
    relative-drop curves). > 1: `key` sees more of the degradation. inf when only `key` drops;
    None when neither does or a base is not positive."""
    pairs = [(a, b) for a, b in zip(drops(curve, key), drops(curve, reference))
             if a is not None and b is not None]
    if not pairs:
        return None
    numerator, denominator = sum(a for a, _ in pairs), sum(b for _, b in pairs)
    if denominator > 0:
        return numerator / denominator
    return math.inf if numerator > 0 else None


# ----------------------------------------------------------------------------------------------
# Data, models and the cached evaluations


def _json_key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def cached(path: str, key: Mapping, compute: Callable[[], dict]) -> dict:
    """`compute()`, stored at `path` with `key`; read back instead while the key matches (so a
    rerun of the report evaluates nothing twice, and a retrained checkpoint is evaluated again)."""
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        if _json_key(stored.get("key")) == _json_key(key):
            return stored["value"]
    except (OSError, ValueError):
        pass
    value = compute()
    atomic_write(path, json.dumps({"key": key, "value": value}, indent=1, sort_keys=True))
    return value


@dataclasses.dataclass(frozen=True)
class Split:
    """The evaluation split, as arrays."""
    name: str
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N, H, W]
    instances: np.ndarray  # int32 [N, H, W]
    num_classes: int
    ignore_label: int
    class_names: tuple[str, ...]

    @property
    def thin_class(self) -> int:
        return self.class_names.index(THIN)

    def score(self, preds) -> dict:
        return score_predictions(preds, self.labels, num_classes=self.num_classes,
                                 ignore_label=self.ignore_label, thin_class=self.thin_class)


def load_split(config) -> Split:
    from seg_jax.data import datasets

    source, info = datasets.get_dataset(config.data, config.data.eval_split)
    examples = [source[i] for i in range(len(source))]
    return Split(name=config.data.eval_split,
                 images=np.stack([e["image"] for e in examples]),
                 labels=np.stack([e["label"] for e in examples]).astype(np.int32),
                 instances=np.stack([e["instance"] for e in examples]).astype(np.int32),
                 num_classes=info.num_classes, ignore_label=info.ignore_label,
                 class_names=tuple(info.class_names))


def run_config(args: driver.StudyArgs, overrides: Mapping):
    """The config a point of the sweep trained with: the study's, its overrides, the data_dir."""
    from ml_collections.config_flags import config_path

    config = get_config("quick" if args.quick else None)
    for path, value in overrides.items():
        config_path.set_value(path, config, value)
    if args.data_dir:
        config.data.data_dir = args.data_dir
    return config


def model_probabilities(config, workdir: str, images: np.ndarray) -> np.ndarray:
    """float32 [N, H, W, C] softmax probabilities of the newest checkpoint in `workdir` on
    `images` (uint8), computed as the runner's evaluation computes them (the same normalisation
    and `seg_jax.inference` options), one compiled program for every batch."""
    import jax

    from seg_jax import inference, predict, steps
    from seg_jax.data import augment

    state, _ = predict.restore_for_inference(config, workdir)
    options = inference.InferenceOptions.from_config(config)
    probs_of = jax.jit(lambda s, x: inference.predict_outputs(
        steps.inference_model_fn(s), x, options)[0])
    batch = config.eval_batch_size
    out = []
    for first in range(0, len(images), batch):
        chunk = augment.normalize_image(images[first:first + batch], config.data.mean,
                                        config.data.std)
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:],
                                                 np.float32)])  # one batch shape, one compile
        out.append(np.asarray(probs_of(state, padded))[:len(chunk)])
    return np.concatenate(out)


RUN_CACHE = "boundary_study.json"  # in each point's workdir
TRUTH_CACHE = "boundary_truth_degradations.json"  # in the sweep's workdir


def _families(on_model: bool) -> list[Family]:
    return [f for f in FAMILIES if f.on_model == on_model]


def run_cache_key(run: report.Run, split_name: str) -> dict:
    """What a run's cached evaluation depends on: its checkpoint's step, the split, the
    tolerances and (output stride 8 only) the model degradations."""
    families = _families(True) if _output_stride(run) == 8 else []
    return {"version": CACHE_VERSION, "step": run.results.get("step"), "split": split_name,
            "tolerances": list(TOLERANCES),
            "families": [[f.key, list(f.levels)] for f in families]}


def truth_cache_key(args: driver.StudyArgs, split_name: str) -> dict:
    return {"version": CACHE_VERSION, "split": split_name, "data": args.data_dir or "default",
            "tolerances": list(TOLERANCES),
            "families": [[f.key, list(f.levels)] for f in _families(False)]}


def evaluate_run(run: report.Run, args: driver.StudyArgs, split_name: str,
                 split: Callable[[], Split]) -> dict:
    """{'scores': the run's mIoU, thin IoU and BF at every tolerance; 'curves': the model
    degradations (output stride 8 only)}, cached in the run's workdir; `split()` gives the data
    when the cache misses."""
    def compute():
        data = split()
        probs = model_probabilities(run_config(args, run.overrides), run.path, data.images)
        families = _families(True) if _output_stride(run) == 8 else []
        return {"scores": data.score(degradations.argmax(probs)),
                "curves": degradation_curves(families, data.score, labels=data.labels,
                                             probs=probs, num_classes=data.num_classes)}

    return cached(os.path.join(run.path, RUN_CACHE), run_cache_key(run, split_name), compute)


def truth_curves(args: driver.StudyArgs, split_name: str, split: Callable[[], Split]) -> dict:
    """{'num_images', 'size', 'curves': the degradations of the truth}, cached beside the
    sweep's points."""
    def compute():
        data = split()
        return {"num_images": len(data.labels), "size": list(data.labels.shape[1:3]),
                "curves": degradation_curves(_families(False), data.score, labels=data.labels,
                                             instances=data.instances,
                                             num_classes=data.num_classes)}

    return cached(os.path.join(args.workdir, TRUTH_CACHE), truth_cache_key(args, split_name),
                  compute)


def _output_stride(run: report.Run) -> int:
    return int(run.overrides.get("model.output_stride", 8))


def with_reevaluation(run: report.Run, evaluation: dict | None) -> report.Run:
    """The run with its re-evaluated scores under 'reeval/...' in its results."""
    if evaluation is None:
        return run
    return dataclasses.replace(run, results={**run.results, "reeval": evaluation["scores"]})


# ----------------------------------------------------------------------------------------------
# Part 1 on the page


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}"


def _ratio_text(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.2f}"


SCORE_KEYS = ("mean_iou", "thin_iou", *(bf_key(t) for t in TOLERANCES))
SCORE_TITLES = ("mIoU", f"{THIN} IoU", *(f"BF@{t}px" for t in TOLERANCES))


def _cell(values: Sequence[float], drops_: Sequence[float | None]) -> str:
    """'87.12 (-12.9%)' or, over seeds, '87.12 ± 0.40 (-12.9%)': the score in percent and its
    mean relative drop from the undegraded value."""
    text = _pct(float(np.mean(values)))
    if len(values) > 1:
        text += f" ± {_pct(float(np.std(values, ddof=1)))}"
    known = [d for d in drops_ if d is not None]
    if known:
        text += f" ({-100 * float(np.mean(known)):+.1f}%)"
    return text


def family_table(family: Family, curves: Sequence[Sequence[Mapping]]) -> list[str]:
    """The lines of one family's table: per level, every score (mean ± std over `curves`, one
    curve per seed for the model families) and its relative change from level 0."""
    lines = [f"| {family.level_label} | " + " | ".join(f"{t} (%)" for t in SCORE_TITLES) + " |",
             "|---:|" + "---:|" * len(SCORE_KEYS)]
    for i, point in enumerate(curves[0]):
        cells = []
        for key in SCORE_KEYS:
            values = [c[i][key] for c in curves]
            changes = [relative_drop(c[0][key], c[i][key]) for c in curves] if i else []
            cells.append(_cell(values, changes))
        level = "none" if i == 0 else f"{point['level']:g}"
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return lines


@dataclasses.dataclass(frozen=True)
class FamilyVerdict:
    family: Family
    ratios: dict  # {tolerance: [ratio per curve (one per seed)]}

    def outcome(self, tolerance=VERDICT_TOLERANCE) -> str:
        """'BF drops more' when every curve's ratio > 1, 'mIoU drops more' when every one is
        < 1, 'mixed over seeds' otherwise, 'n/a' without a ratio."""
        values = [r for r in self.ratios[tolerance] if r is not None]
        if not values:
            return "n/a"
        if all(r > 1 for r in values):
            return "BF drops more"
        if all(r < 1 for r in values):
            return "mIoU drops more"
        return "mixed over seeds"


def family_verdict(family: Family, curves: Sequence[Sequence[Mapping]]) -> FamilyVerdict:
    return FamilyVerdict(family, {t: [drop_ratio(c, bf_key(t)) for c in curves]
                                  for t in TOLERANCES})


def _ratio_cell(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    if len(known) == 1 or any(math.isinf(v) for v in known):
        return ", ".join(_ratio_text(v) for v in known)
    return f"{np.mean(known):.2f} ± {np.std(known, ddof=1):.2f}"


def ratio_table(verdicts: Sequence[FamilyVerdict]) -> list[str]:
    lines = ["| degradation | smoothing | " +
             " | ".join(f"BF@{t}px / mIoU" for t in TOLERANCES) +
             f" | at {VERDICT_TOLERANCE} px |",
             "|---|---|" + "---:|" * len(TOLERANCES) + "---|"]
    for v in verdicts:
        lines.append(f"| {v.family.title} | {'yes' if v.family.smoothing else 'no (a shift)'} | "
                     + " | ".join(_ratio_cell(v.ratios[t]) for t in TOLERANCES)
                     + f" | {v.outcome()} |")
    return lines


VISIBLE_DROP = 0.01  # a relative drop of 1%: where a score starts to see a degradation


def first_visible(curves: Sequence[Sequence[Mapping]], key: str,
                  threshold: float = VISIBLE_DROP):
    """The first level (in the family's order) at which `key`'s relative drop, averaged over
    `curves`, reaches `threshold`; None if no level does."""
    for i, point in enumerate(curves[0][1:], start=1):
        values = [relative_drop(c[0][key], c[i][key]) for c in curves]
        values = [v for v in values if v is not None]
        if values and np.mean(values) >= threshold:
            return point["level"]
    return None


def visibility_table(curves_of: Mapping[str, list]) -> list[str]:
    """Per smoothing family, the mildest level that each score sees (a 1% relative drop)."""
    keys = ("mean_iou", *(bf_key(t) for t in TOLERANCES))
    lines = ["| degradation | " + " | ".join(("mIoU", *(f"BF@{t}px" for t in TOLERANCES)))
             + " |", "|---|" + "---:|" * len(keys)]
    for family in FAMILIES:
        curves = curves_of.get(family.key)
        if not family.smoothing or not curves:
            continue
        cells = []
        for key in keys:
            level = first_visible(curves, key)
            cells.append("never" if level is None else f"{level:g}")
        lines.append(f"| {family.title} ({family.level_label}) | " + " | ".join(cells) + " |")
    return lines


def part1_verdict(verdicts: Sequence[FamilyVerdict]) -> str:
    """Over the smoothing families at the verdict tolerance: 'holds' when BF drops more in every
    one, 'does not hold' when mIoU drops more in every one, 'mixed' otherwise; 'not enough runs'
    without any."""
    outcomes = [v.outcome() for v in verdicts if v.family.smoothing and v.outcome() != "n/a"]
    if not outcomes:
        return "not enough runs"
    if all(o == "BF drops more" for o in outcomes):
        return "holds"
    if all(o == "mIoU drops more" for o in outcomes):
        return "does not hold"
    return "mixed"


def part1_section(split_name: str, truth: Mapping, model_curves: Sequence[Mapping],
                  verdicts: Sequence[FamilyVerdict]) -> str:
    seeds = len(model_curves)
    lines = ["## Part 1: controlled degradations", "",
             f"On the `{split_name}` split ({truth['num_images']} images of "
             f"{truth['size'][0]} x {truth['size'][1]}). Each cell is the score in "
             "percent and, in brackets, its change relative to the undegraded value (level "
             "*none*): the truth itself (100%) for the truth's degradations, the model's own "
             "prediction for the model's. The relative change is what the figure plots: the "
             "fair comparison between scores whose undegraded values differ. The model rows "
             f"are mean ± std over the {seeds} output-stride-8 run(s)."]
    for family in FAMILIES:
        curves = (model_curves_of(model_curves, family) if family.on_model
                  else [truth["curves"][family.key]])
        lines += ["", f"### {family.title}", ""]
        lines += family_table(family, curves) if curves else ["No finished output-stride-8 run "
                                                              "yet."]
    lines += ["", "### How much more BF drops than mIoU", "",
              "The ratio of BF's relative drop to mIoU's, each summed over a family's levels (the "
              "areas under the two curves of the figure): above 1, BF sees more of the "
              "degradation than mIoU; below 1, less. Model rows: mean ± std over seeds; the "
              f"outcome column needs every seed on the same side of 1, at {VERDICT_TOLERANCE} px "
              "(the runner's tolerance).", ""]
    lines += ratio_table(verdicts)
    curves_of = {f.key: (model_curves_of(model_curves, f) if f.on_model
                         else [truth["curves"][f.key]]) for f in FAMILIES}
    lines += ["", "### The mildest degradation each score sees", "",
              f"The first level at which the score falls by {100 * VISIBLE_DROP:g}% of its "
              "undegraded value (model rows: the drop averaged over seeds). A score that sees "
              "over-smoothing IoU misses would reach it at a milder level than mIoU.", ""]
    lines += visibility_table(curves_of)
    return "\n".join(lines)


def model_curves_of(model_curves: Sequence[Mapping], family: Family) -> list:
    return [c[family.key] for c in model_curves if family.key in c]


# ----------------------------------------------------------------------------------------------
# Part 2 on the page


def part2_metrics() -> list[report.Metric]:
    return ([report.Metric("mean_iou", "mIoU", percent=True)]
            + [report.Metric(f"reeval/{bf_key(t)}", f"BF@{t}px", percent=True)
               for t in TOLERANCES]
            + [report.Metric(f"per_class_iou/{THIN}", f"{THIN} IoU", percent=True),
               report.Metric(f"per_class_boundary_f_score/{THIN}", f"{THIN} BF@2px",
                             percent=True)])


def _label(runs: Sequence[report.Run]) -> str:
    stride = _output_stride(runs[0])
    rates = runs[0].overrides.get("model.atrous_rates", BASE_RATES)
    return f"OS {stride} (rates {', '.join(map(str, rates))})"


def relabel(groups: Mapping[str, list]) -> dict[str, list]:
    return {_label(runs): runs for runs in groups.values()}


@dataclasses.dataclass(frozen=True)
class StrideComparison:
    """One metric over the output strides: its ranking and the gap from the finest stride to the
    coarsest."""
    metric: report.Metric
    ranking: tuple[int, ...]  # strides, best mean first
    gap: float | None  # relative: (finest - coarsest) / finest
    beyond_noise: bool | None  # |finest - coarsest| > the larger seed std; None: one seed


def compare_strides(rows: Sequence[report.Row], m: report.Metric) -> StrideComparison | None:
    """None unless every stride has a mean."""
    stats = {_output_stride(row.runs[0]): row.stat(m.path) for row in rows}
    if not stats or any(s.mean is None for s in stats.values()):
        return None
    ranking = tuple(sorted(stats, key=lambda s: -stats[s].mean))
    finest, coarsest = stats[min(stats)], stats[max(stats)]
    if finest.std is None or coarsest.std is None:  # one seed: no spread to compare with
        beyond = None
    else:
        beyond = abs(finest.mean - coarsest.mean) > max(finest.std, coarsest.std)
    return StrideComparison(m, ranking, relative_drop(finest.mean, coarsest.mean), beyond)


def part2_verdict(rows: Sequence[report.Row]) -> tuple[str, str]:
    """(verdict, why) at the verdict tolerance: 'holds' when BF loses more (relatively) from the
    finest to the coarsest stride than mIoU does, beyond the seeds' spread; 'mixed' when it
    loses more within the spread; 'does not hold' when it loses nothing or no more than mIoU;
    'not enough runs' while a stride has fewer than two seeds."""
    if len(rows) < 2 or any(row.stat("mean_iou").n < 2 for row in rows):
        return "not enough runs", "every output stride needs at least two finished seeds"
    miou = compare_strides(rows, report.Metric("mean_iou"))
    bf = compare_strides(rows, report.Metric(f"reeval/{bf_key(VERDICT_TOLERANCE)}"))
    if miou is None or bf is None or miou.gap is None or bf.gap is None:
        return "not enough runs", "a stride lacks a score"
    why = (f"from the finest to the coarsest output stride BF@{VERDICT_TOLERANCE}px loses "
           f"{100 * bf.gap:.1f}% of its value and mIoU {100 * miou.gap:.1f}%")
    if bf.gap <= max(miou.gap, 0.0):  # BF sees no loss, or no more of it than mIoU
        return "does not hold", why
    return ("holds" if bf.beyond_noise else "mixed",
            why + ("" if bf.beyond_noise else "; BF's gap is within the seeds' spread"))


def _noise_text(beyond: bool | None) -> str:
    return "n/a (one seed)" if beyond is None else ("yes" if beyond else "no")


def part2_section(rows: Sequence[report.Row], check: str) -> str:
    lines = ["## Part 2: trained models at output stride 8, 16, 32", "",
             "The table above. Ranking: the strides by mean score, best first; gap: the "
             "relative loss from the finest stride to the coarsest (beyond noise when the "
             "difference of the means exceeds the larger seed std).", "",
             "| metric | ranking | gap finest → coarsest | beyond noise | gap / mIoU's gap |",
             "|---|---|---:|---|---:|"]
    comparisons = [compare_strides(rows, m) for m in part2_metrics()]
    miou = comparisons[0]
    for m, c in zip(part2_metrics(), comparisons):
        if c is None:
            lines.append(f"| {m.label} | no results | | | |")
            continue
        ratio = (c.gap / miou.gap if c.gap is not None and miou and miou.gap else None)
        lines.append(f"| {m.label} | {' > '.join(f'OS {s}' for s in c.ranking)} | "
                     f"{_pct(c.gap, 1)}% | {_noise_text(c.beyond_noise)} | "
                     f"{_ratio_text(ratio)} |")
    same = [c for c in comparisons[1:1 + len(TOLERANCES)] if c is not None]
    if miou is not None and same:
        agree = [c.metric.label for c in same if c.ranking == miou.ranking]
        differ = [c.metric.label for c in same if c.ranking != miou.ranking]
        lines += ["", "The output-stride ranking under mIoU is " +
                  (f"the same under {', '.join(agree)}" if agree else "shared by no BF") +
                  (f"; it differs under {', '.join(differ)}." if differ else ".")]
    if check:
        lines += ["", check]
    return "\n".join(lines)


def reevaluation_check(runs: Sequence[report.Run]) -> str:
    """How closely the re-evaluated mIoU and BF@2px reproduce each run's results.json."""
    diffs = []
    for run in runs:
        reeval = (run.results or {}).get("reeval")
        if not reeval:
            continue
        diffs.append(abs(reeval["mean_iou"] - run.results["mean_iou"]))
        if run.results.get("boundary_f_score") is not None and 2 in TOLERANCES:
            diffs.append(abs(reeval[bf_key(2)] - run.results["boundary_f_score"]))
    if not diffs:
        return ""
    return (f"The checkpoints were re-evaluated here for the other tolerances; on the scores "
            f"the runner also reports (mIoU, BF@2px) the re-evaluation differs from the runs' "
            f"results.json by at most {max(diffs):.2e}.")


# ----------------------------------------------------------------------------------------------
# The verdict and the figure


def overall_verdict(first: str, second: str) -> str:
    """Both parts agree: their verdict; one has not enough runs: the other's; else 'mixed'."""
    if first == second:
        return first
    if second == "not enough runs":
        return first
    if first == "not enough runs":
        return second
    return "mixed"


def verdict_section(verdicts: Sequence[FamilyVerdict], rows: Sequence[report.Row]) -> str:
    first = part1_verdict(verdicts)
    second, why = part2_verdict(rows)
    smoothing = [v for v in verdicts if v.family.smoothing]
    lines = ["## Verdict", "",
             f"**{overall_verdict(first, second)}** (degradations: {first}; trained output "
             f"strides: {second}).", ""]
    for v in smoothing:
        values = [r for r in v.ratios[VERDICT_TOLERANCE] if r is not None]
        factor = _ratio_cell(values) if values else "n/a"
        lines.append(f"- {v.family.title}: BF@{VERDICT_TOLERANCE}px's relative drop is "
                     f"{factor} times mIoU's ({v.outcome()}).")
    shifts = [v for v in verdicts if not v.family.smoothing]
    for v in shifts:
        lines.append(f"- Not counted, a shift rather than a smoothing: {v.family.title}: "
                     f"{_ratio_cell(v.ratios[VERDICT_TOLERANCE])} ({v.outcome()}). A boundary "
                     "moved by no more than the tolerance costs BF nothing, while IoU counts "
                     "every moved pixel.")
    lines.append(f"- Trained models: {second}" + (f" ({why})." if why else "."))
    return "\n".join(lines)


def draw_figure(path: str, truth: Mapping, model_curves: Sequence[Mapping],
                rows: Sequence[report.Row], smoke: bool) -> None:
    from matplotlib.figure import Figure

    from experiments.studies import plots

    fig = Figure(figsize=(19, 8.5), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    keys = ("mean_iou", *(bf_key(t) for t in TOLERANCES))
    titles = ("mIoU", *(f"BF@{t}px" for t in TOLERANCES))
    for ax, family in zip(axes, FAMILIES):
        curves = model_curves_of(model_curves, family) if family.on_model else [truth[family.key]]
        _draw_family(ax, family, curves, keys, titles)
    _draw_strides(axes[len(FAMILIES)], rows)
    for ax in axes[len(FAMILIES) + 1:]:
        ax.set_axis_off()
    heading = "Boundary F vs mIoU: relative drop under degradations; trained output strides"
    if smoke:
        heading += "\nSMOKE TEST (--quick): says nothing about the claim"
    fig.suptitle(heading, color="tab:red" if smoke else "black", fontsize="medium")
    plots.save_figure(fig, path)


def _draw_family(ax, family: Family, curves, keys, titles) -> None:
    ax.set_title(family.title, fontsize="medium")
    if not curves:
        ax.text(0.5, 0.5, "no output-stride-8 run yet", ha="center", transform=ax.transAxes)
        return
    levels = [p["level"] for p in curves[0][1:]]
    x = np.arange(len(levels)) if family.key == "truth_morph" else np.array(levels, float)
    for j, (key, title) in enumerate(zip(keys, titles)):
        per_seed = np.array([[np.nan if d is None else 100 * d for d in drops(c, key)]
                             for c in curves])
        ax.plot(x, np.nanmean(per_seed, axis=0), marker="o", color=f"C{j}", label=title,
                linestyle="-" if key == "mean_iou" else "--")
        if len(curves) > 1:
            ax.fill_between(x, np.nanmin(per_seed, axis=0), np.nanmax(per_seed, axis=0),
                            color=f"C{j}", alpha=0.15)
    if family.key == "truth_morph":
        ax.set_xticks(x, [f"{v:+g}" for v in levels])
    elif "stride" in family.key:
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"{v:g}" for v in levels])
    ax.set_xlabel(family.level_label)
    ax.set_ylabel("relative drop from undegraded (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _draw_strides(ax, rows: Sequence[report.Row]) -> None:
    ax.set_title("Trained: score vs output stride (each seed a dot)", fontsize="medium")
    strides = [_output_stride(row.runs[0]) for row in rows]
    for j, m in enumerate(part2_metrics()[:1 + len(TOLERANCES)]):
        stats = [row.stat(m.path) for row in rows]
        pts = [(s, st) for s, st in zip(strides, stats) if st.n]
        if not pts:
            continue
        ax.plot([s for s, _ in pts], [100 * st.mean for _, st in pts], marker="o",
                color=f"C{j}", label=m.label, linestyle="-" if j == 0 else "--")
        for s, st in pts:
            ax.scatter(np.full(st.n, s), 100 * np.array(st.values), s=10, color=f"C{j}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(OUTPUT_STRIDES), [str(s) for s in OUTPUT_STRIDES])
    ax.set_xlabel("output stride")
    ax.set_ylabel("score (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


# ----------------------------------------------------------------------------------------------
# The report


def _notes(args: driver.StudyArgs, split_name: str) -> list[str]:
    config = get_config("quick" if args.quick else None)
    return [
        "**Claim** (design text): the boundary F-score, boundary pixels matched within a "
        "tolerance, sees over-smoothing that IoU misses. **Holds** if, over the smoothing "
        "degradations, BF's relative drop exceeds mIoU's (the ratio in *How much more BF drops* "
        f"above 1 at {VERDICT_TOLERANCE} px, every seed), and if between the trained output "
        "strides BF's relative gap exceeds mIoU's beyond the seed spread. **Fails** if mIoU "
        "drops as much or more.",
        "Part 1 needs no training: the degradations of the truth are deterministic; those of "
        "a model use the output-stride-8 runs of part 2. Degradations "
        "(experiments/studies/degradations.py): Gaussian blur of the one-hot truth or of the "
        "probabilities (border replicated), then argmax; block majority of the truth (or the "
        "mean of the probabilities) over s x s blocks, bilinear upsampling (half-pixel centres, "
        "as the model's own) of its one-hot, argmax; erosion / dilation of every thing instance "
        "by a Euclidean disk of k px: where grown things overlap the one in front (drawn "
        "later) wins, and an eroded thing's freed pixels take the label of the nearest stuff "
        "pixel (sky or ground) of the truth. Argmax ties go to the lowest class id.",
        f"Part 2: the `shapes` main job (configs/shapes.py: DeepLabV3, ResNet-18, AdamW, cosine "
        f"schedule; here base width {config.model.base_width} on {config.data.crop_size} px "
        f"crops) at output stride 8, 16 and 32, trained for {config.num_train_steps} updates of "
        f"batch {config.batch_size} (the main job trains 2,400; halved so that the 9 runs fit a "
        "2-core CPU in about 40 minutes), scored on "
        f"`{split_name}`. The ASPP rates are the main job's (6, 12, 18) at stride 8, scaled by "
        "8 / stride so that each branch reaches as far in input pixels. BF is Csurka et al.'s "
        "(seg_jax.metrics.boundary_f_score: per image, the mean over its classes, then the mean "
        "over images); the runner reports it at 2 px, the other tolerances come from "
        "re-evaluating each run's final checkpoint.",
    ]


def make_report(runs, args: driver.StudyArgs, seconds: float) -> None:
    config = run_config(args, {})
    split_name = config.data.eval_split
    split = functools.cache(lambda: load_split(config))  # read only when a cache misses
    truth = truth_curves(args, split_name, split)
    evaluations = {}
    for run in runs:
        if run.results is None:
            continue
        try:
            evaluations[run.name] = evaluate_run(run, args, split_name, split)
        except FileNotFoundError as e:  # results but no checkpoint: the page lists its gaps
            print(f"{NAME}: {run.name} not re-evaluated: {e}", file=sys.stderr)
    runs = [with_reevaluation(r, evaluations.get(r.name)) for r in runs]
    model_curves = [evaluations[r.name]["curves"] for r in runs
                    if r.name in evaluations and _output_stride(r) == 8]
    verdicts = [family_verdict(f, model_curves_of(model_curves, f) if f.on_model
                               else [truth["curves"][f.key]]) for f in FAMILIES]
    rows = report.summarise(relabel(report.group_by_arm(runs)), part2_metrics())
    report.write_report(
        args.out, NAME, "Boundary F-score against IoU: over-smoothing", rows, part2_metrics(),
        command=args.command, wall_time=seconds, notes=_notes(args, split_name),
        smoke=args.quick,
        sections=[verdict_section(verdicts, rows),
                  part1_section(split_name, truth, model_curves, verdicts),
                  part2_section(rows, reevaluation_check(runs))],
        draw=lambda path: draw_figure(path, truth["curves"], model_curves, rows, args.quick))


def main(argv=None) -> int:
    return driver.run_study(__file__, NAME, make_report, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
