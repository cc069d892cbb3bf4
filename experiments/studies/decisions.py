r"""Decisions: does the Bayes-risk decision under a cost matrix lower the realised cost?

    python -m experiments.studies.decisions [--quick] [--out docs/studies] [--parallel K]

The design text's claim: when errors cost different amounts, deciding each pixel by the least
expected cost under the model's probabilities (the Bayes decision) lowers the cost actually
incurred, relative to the most probable class (MAP). The cost matrix here prices a missed `bar`
(the rare, thin class of `shapes`: any other class predicted where the truth is `bar`) at 10 and
every other error at 1 (`cost[c, c_true]`, row = prediction, as in DESIGN.md).

Arms: the `shapes` main job trained with cross-entropy, and with cross-entropy plus the expected
cost under that matrix (`expected_cost_loss`, weight 1), 3 seeds each. Only the loss needs its own
training: each trained checkpoint is scored again here under the MAP and the Bayes decision, each
with the raw softmax and with a temperature fitted on held-out images (temperature scaling, Guo
et al. 2017). The runner's evaluation fits a temperature when `config.decision.temperature_stride`
is set but only reports it (and the ECE it gives): its decisions always use the unscaled softmax.
This study applies it, cross-fitted: the validation images are split by index parity, and each
half is decided with the temperature fitted on the other half, so no image's decision uses a
temperature fitted on its own pixels.

The page reports the realised mean cost per pixel, bar recall and precision, mIoU and ECE. The
claim holds where Bayes has a lower mean cost than MAP by more than the seeds' spread, for each
model and temperature; it fails where the cost is not lower (within the spread, or higher).
"""

import dataclasses
import functools
import json
import math
import os
import sys

import numpy as np

from configs import shapes
from experiments.studies import driver, report
from seg_jax.data import shapes_render

NAME = "decisions"
RARE = "bar"
RARE_CLASS = shapes_render.CLASS_NAMES.index(RARE)
NUM_CLASSES = shapes_render.NUM_CLASSES
MISS_COST = 10.0  # predicting any other class where the truth is `bar`
# cost[c][c_true]: 0 on the diagonal, MISS_COST in bar's column, 1 elsewhere.
COST = tuple(tuple(0.0 if c == t else (MISS_COST if t == RARE_CLASS else 1.0)
                   for t in range(NUM_CLASSES)) for c in range(NUM_CLASSES))
STEPS = 2400  # the main job's full schedule: 6 runs fit a 2-core CPU in about 45 minutes
TEMPERATURE_STRIDE = 2  # the runner's own (in-sample) temperature fit, reported for comparison
SCORES_FILE = "decision_scores.json"  # each run's scores under every decision, cached
SCORES_VERSION = 1

LOSSES = ("cross_entropy", "cross_entropy+expected_cost")
LOSS_LABELS = {"cross_entropy": "CE", "cross_entropy+expected_cost": "CE + expected cost"}
RULES = ("map", "bayes")
TEMPERATURES = ("raw", "fitted")  # softmax(logits), softmax(logits / T) with T cross-fitted
TEMPERATURE_LABELS = {"raw": "T = 1", "fitted": "T fitted"}

METRICS = [
    report.Metric("mean_cost", "mean cost per pixel"),
    report.Metric(f"per_class_recall/{RARE}", f"{RARE} recall", percent=True),
    report.Metric(f"per_class_precision/{RARE}", f"{RARE} precision", percent=True),
    report.Metric("mean_iou", "mIoU", percent=True),
    report.Metric("ece", "ECE", percent=True),
]


def get_config(arg=None):
    config = shapes.get_config()
    config.loss.expected_cost.cost = COST  # used by the arm whose loss names the term
    config.decision.cost = COST  # so results.json's mean_cost is the MAP decision's cost here
    config.decision.temperature_stride = TEMPERATURE_STRIDE
    config.eval_boundary_f_score = False  # not reported here; its statistics cost compile time
    return driver.sized(config, arg, steps=STEPS, name=NAME)


def get_sweep(arg=None):
    from seg_jax import sweep

    seeds = driver.seeds_for(arg)
    return driver.with_seeds(sweep.Sweep([{"loss.name": loss} for loss in LOSSES]), seeds)


# ----------------------------------------------------------------------------------------------
# A trained checkpoint's outputs on the evaluation split


class SplitPredictor:
    """The evaluation split of a study's config and one compiled forward pass for every run.

    `outputs(workdir, fields)` restores the newest checkpoint of a run trained from this config
    (any seed or loss: the model is the same) and returns its outputs on every image of the
    split as numpy arrays [N, H, W, ...], predicted whole as the runner's evaluation predicts
    them (`seg_jax.inference.predict_outputs` with the config's evaluation options). The
    split's labels ('label', 'instance') are `self.labels`, `self.instances`.
    """

    def __init__(self, config, data_dir: str | None):
        from seg_jax.data import datasets
        from seg_jax.models import create_model

        config.data.data_dir = data_dir
        self.source, self.info = datasets.get_dataset(config.data, config.data.eval_split)
        self.config = datasets.with_dataset_info(config, self.info)
        self.split = config.data.eval_split
        self.model = create_model(self.config.model)
        examples = [self.source[i] for i in range(len(self.source))]
        self.labels = np.stack([np.asarray(e["label"], np.int32) for e in examples])
        self.instances = (np.stack([np.asarray(e["instance"], np.int32) for e in examples])
                          if "instance" in examples[0] else None)
        self._forward = None

    def _compiled_forward(self):
        if self._forward is None:
            import jax

            from seg_jax import inference

            options = inference.InferenceOptions.from_config(self.config)
            model = self.model

            def forward(variables, images):
                return inference.predict_outputs(
                    lambda x: model.apply(variables, x, train=False), images, options)[1]

            self._forward = jax.jit(forward)
        return self._forward

    def outputs(self, workdir: str, fields=("logits",)) -> tuple[int, dict[str, np.ndarray]]:
        """(checkpoint step, {field: [N, H, W, ...] numpy}) of the run in `workdir`."""
        import jax

        from seg_jax.data import pipeline
        from seg_jax.predict import restore_for_inference

        state, step = restore_for_inference(self.config, workdir, model=self.model)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        config = self.config
        plan = pipeline.plan_eval_batches(
            self.source, config.eval_batch_size, pad_multiple=config.evaluation.pad_multiple,
            pad_size=tuple(config.evaluation.pad_size))
        batches = pipeline.eval_batches(self.source, config.data,
                                        global_batch_size=config.eval_batch_size,
                                        num_classes=self.info.num_classes, plan=plan)
        forward = self._compiled_forward()
        gathered: dict[str, dict[int, np.ndarray]] = {f: {} for f in fields}
        for planned, batch in zip(plan, batches):
            out = jax.device_get(forward(variables, batch["image"]))
            for j, index in enumerate(planned.indices):
                if index < 0:
                    continue
                height, width = batch["size"][j]
                for f in fields:
                    gathered[f][index] = np.asarray(getattr(out, f)[j, :height, :width])
        n = len(self.source)
        return step, {f: np.stack([values[i] for i in range(n)]) for f, values in gathered.items()}


# ----------------------------------------------------------------------------------------------
# Decisions and their scores (pure functions of logits and labels)


def fold_temperatures(logits: np.ndarray, labels: np.ndarray, *, ignore_label: int,
                      num_folds: int = 2) -> tuple[np.ndarray, list[float]]:
    """Cross-fitted temperature scaling: image i is in fold i % num_folds and gets the
    temperature fitted (`seg_jax.metrics.fit_temperature`, NLL of every valid pixel) on the
    other folds' images. Returns ([N] per-image temperatures, the temperature fitted without
    each fold, by fold)."""
    from seg_jax import metrics

    fold = np.arange(len(logits)) % num_folds
    fitted = []
    for k in range(num_folds):
        held_out = fold != k
        fitted.append(float(metrics.fit_temperature(logits[held_out], labels[held_out],
                                                    ignore_label=ignore_label)))
    return np.asarray(fitted, np.float64)[fold], fitted


@functools.lru_cache(maxsize=None)
def _decide_fn(rule: str):
    import jax

    from seg_jax import decision

    def decide(logits, temperatures, cost):
        probs = jax.nn.softmax(logits / temperatures[:, None, None, None], axis=-1)
        if rule == "bayes":
            return decision.bayes_decision(probs, cost)
        return decision.map_decision(probs)

    return jax.jit(decide)


def decide(logits: np.ndarray, temperatures: np.ndarray, cost, rule: str) -> np.ndarray:
    """[N, H, W] int32 decisions from logits [N, H, W, C] with each image's temperature [N]:
    `seg_jax.decision.map_decision` ('map') or `bayes_decision` under `cost` ('bayes') of
    softmax(logits / T)."""
    from seg_jax import decision

    decision.check_rule(rule, "rule")
    return np.asarray(_decide_fn(rule)(np.asarray(logits, np.float32),
                                       np.asarray(temperatures, np.float32),
                                       np.asarray(cost, np.float32)))


def confusion_counts(pred: np.ndarray, labels: np.ndarray, num_classes: int,
                     ignore_label: int) -> np.ndarray:
    """int64 [C, C] counts, rows = truth, columns = prediction, over pixels whose label is a
    class (the seg_jax.metrics convention)."""
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    pairs = labels[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _per_class(class_names, values) -> dict:
    return {name: (None if not math.isfinite(v) else float(v))
            for name, v in zip(class_names, np.asarray(values, np.float64))}


def decision_scores(pred: np.ndarray, labels: np.ndarray, cost, class_names,
                    ignore_label: int) -> dict:
    """The scores of one set of decisions, under results.json's names: 'mean_cost' (realised
    mean cost per valid pixel under `cost[pred, truth]`), 'mean_iou', 'pixel_accuracy' and
    'per_class_iou' / 'per_class_precision' / 'per_class_recall' ({class: value or None})."""
    from seg_jax import decision
    from seg_jax.metrics import confusion

    cm = confusion_counts(pred, labels, len(class_names), ignore_label)
    return {
        "mean_cost": float(decision.realized_cost_from_confusion(cm, np.asarray(cost))),
        "mean_iou": float(confusion.mean_iou(cm)),
        "pixel_accuracy": float(confusion.pixel_accuracy(cm)),
        "per_class_iou": _per_class(class_names, confusion.iou(cm)),
        "per_class_precision": _per_class(class_names, confusion.class_precision(cm)),
        "per_class_recall": _per_class(class_names, confusion.class_accuracy(cm)),
    }


def calibration_error(logits: np.ndarray, temperatures: np.ndarray, labels: np.ndarray,
                      ignore_label: int) -> float:
    """ECE (15 equal-width bins, top label) of softmax(logits / T), T per image."""
    import jax

    from seg_jax import metrics

    probs = jax.nn.softmax(np.asarray(logits, np.float32)
                           / np.asarray(temperatures, np.float32)[:, None, None, None], axis=-1)
    bins = metrics.calibration_bins(probs, labels, ignore_label=ignore_label)
    return float(metrics.expected_calibration_error(jax.device_get(bins)))


def arm_key(rule: str, temperature: str) -> str:
    return f"{rule} {temperature}"


def score_all_decisions(logits: np.ndarray, labels: np.ndarray, cost, class_names,
                        ignore_label: int) -> dict:
    """Every decision of the study on one checkpoint's logits: {'arms': {arm_key(rule,
    temperature): scores with 'ece' and 'temperature'}, 'fold_temperatures': [T fitted without
    fold k]}. With the raw softmax every image's temperature is 1."""
    fitted, by_fold = fold_temperatures(logits, labels, ignore_label=ignore_label)
    temperatures = {"raw": np.ones(len(logits)), "fitted": fitted}
    arms = {}
    for name, t in temperatures.items():
        ece = calibration_error(logits, t, labels, ignore_label)
        for rule in RULES:
            scores = decision_scores(decide(logits, t, cost, rule), labels, cost, class_names,
                                     ignore_label)
            arms[arm_key(rule, name)] = {**scores, "ece": ece,
                                         "temperature": float(np.mean(t))}
    return {"arms": arms, "fold_temperatures": by_fold}


# ----------------------------------------------------------------------------------------------
# Each run's scores, computed once and kept in its workdir


def _cached(run, split: str) -> dict | None:
    """The run's stored scores if they belong to its final checkpoint, this split and cost."""
    path = os.path.join(run.path, SCORES_FILE)
    try:
        with open(path) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        return None
    wanted = {"version": SCORES_VERSION, "step": run.results.get("step"), "split": split,
              "cost": [list(row) for row in COST]}
    return cached if all(cached.get(k) == v for k, v in wanted.items()) else None


def run_scores(run, predictor_factory, split: str) -> dict:
    """The scores of every decision on a finished run (cached in its workdir as SCORES_FILE)."""
    cached = _cached(run, split)
    if cached is not None:
        return cached
    predictor = predictor_factory()
    step, outputs = predictor.outputs(run.path)
    info = predictor.info
    scores = score_all_decisions(outputs["logits"], predictor.labels, COST, info.class_names,
                                 info.ignore_label)
    scores.update(version=SCORES_VERSION, step=step, split=split,
                  cost=[list(row) for row in COST])
    from seg_jax.reporting import atomic_write

    atomic_write(os.path.join(run.path, SCORES_FILE), json.dumps(scores, indent=1))
    return scores


def lazy(factory):
    """`factory()` called at most once, on first use (the split is loaded only when some run
    still needs scoring)."""
    made = []

    def get():
        if not made:
            made.append(factory())
        return made[0]

    return get


def arm_rows(runs, predictor_factory, split: str) -> list[report.Row]:
    """One Row per (loss, temperature, rule): each finished run's scores under that decision,
    in place of its results; a run without results stays without."""
    groups: dict[str, list] = {}
    for loss in LOSSES:
        for temperature in TEMPERATURES:
            for rule in RULES:
                groups[arm_label(loss, rule, temperature)] = []
    for run in runs:
        loss = run.overrides.get("loss.name")
        scores = (run_scores(run, predictor_factory, split)
                  if run.results is not None and loss in LOSSES else None)
        for n, (temperature, rule) in enumerate(
                (t, r) for t in TEMPERATURES for r in RULES):
            results = scores["arms"][arm_key(rule, temperature)] if scores else None
            # The training's wall time counts once (in its first arm), not once per decision.
            groups[arm_label(loss, rule, temperature)].append(dataclasses.replace(
                run, results=results, wall_time_s=run.wall_time_s if n == 0 else None))
    return report.summarise(groups, METRICS)


def arm_label(loss: str, rule: str, temperature: str) -> str:
    return f"{LOSS_LABELS.get(loss, loss)}: {rule.upper()}, {TEMPERATURE_LABELS[temperature]}"


# ----------------------------------------------------------------------------------------------
# Comparisons and the verdict


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Bayes against MAP for one model and temperature, over the seeds both have."""
    loss: str
    temperature: str
    cost_change: report.Stat  # Bayes - MAP mean cost, per seed
    spread: float | None  # the larger of the two arms' seed std of the mean cost
    miou_change: report.Stat
    recall_change: report.Stat
    precision_change: report.Stat

    @property
    def outcome(self) -> str:
        """'lower', 'higher' (beyond the seed spread), 'within spread' or 'not enough runs'."""
        return compare(self.cost_change, self.spread)


def compare(change: report.Stat, spread: float | None) -> str:
    """Whether a mean change is beyond the seeds' spread: 'lower' / 'higher' when its size
    exceeds `spread` (the larger seed std of the two arms compared), else 'within spread';
    'not enough runs' with fewer than two seeds."""
    if change.n < 2 or spread is None:
        return "not enough runs"
    if abs(change.mean) <= spread:
        return "within spread"
    return "lower" if change.mean < 0 else "higher"


def paired_change(a: report.Row, b: report.Row, path: str) -> report.Stat:
    """b - a per seed, over the seeds where both rows have `path`."""
    first = dict(zip(a.stat(path).seeds, a.stat(path).values))
    second = dict(zip(b.stat(path).seeds, b.stat(path).values))
    seeds = tuple(s for s in second if s in first)
    values = np.array([second[s] - first[s] for s in seeds], np.float64)
    return report.Stat(mean=float(values.mean()) if len(values) else None,
                       std=float(values.std(ddof=1)) if len(values) > 1 else None,
                       n=len(values), values=tuple(values.tolist()), seeds=seeds)


def larger_std(*stats: report.Stat) -> float | None:
    stds = [s.std for s in stats]
    return None if any(s is None for s in stds) else max(stds)


def comparisons(rows: list[report.Row]) -> list[Comparison]:
    by_label = {row.label: row for row in rows}
    out = []
    for loss in LOSSES:
        for temperature in TEMPERATURES:
            map_row = by_label[arm_label(loss, "map", temperature)]
            bayes_row = by_label[arm_label(loss, "bayes", temperature)]
            out.append(Comparison(
                loss=loss, temperature=temperature,
                cost_change=paired_change(map_row, bayes_row, "mean_cost"),
                spread=larger_std(map_row.stat("mean_cost"), bayes_row.stat("mean_cost")),
                miou_change=paired_change(map_row, bayes_row, "mean_iou"),
                recall_change=paired_change(map_row, bayes_row, f"per_class_recall/{RARE}"),
                precision_change=paired_change(map_row, bayes_row,
                                               f"per_class_precision/{RARE}")))
    return out


VERDICT_TEXT = {"holds": "The claim holds", "does not hold": "The claim does not hold",
                "mixed": "Mixed", "not enough runs": "Not enough runs for a verdict"}


def overall_verdict(found: list[Comparison]) -> str:
    """'holds' when Bayes lowers the cost beyond the seed spread for every model and
    temperature, 'does not hold' when for none, 'mixed' otherwise; 'not enough runs' when some
    comparison has fewer than two seeds."""
    outcomes = [c.outcome for c in found]
    if not outcomes or "not enough runs" in outcomes:
        return "not enough runs"
    if all(o == "lower" for o in outcomes):
        return "holds"
    if not any(o == "lower" for o in outcomes):
        return "does not hold"
    return "mixed"


def _signed(stat: report.Stat, scale: float = 1.0, digits: int = 4) -> str:
    if not stat.n:
        return "no results"
    spread = f" ± {scale * stat.std:.{digits}f}" if stat.std is not None else ""
    return f"{scale * stat.mean:+.{digits}f}{spread}"


def _comparison_section(found: list[Comparison]) -> str:
    lines = ["## Bayes against MAP", "",
             "Per seed, Bayes minus MAP on the same checkpoint, then mean ± std over the seeds. "
             "*Outcome* compares the mean change in cost with the larger seed std of the two "
             "arms' mean costs (*lower* / *higher*: beyond it).", "",
             "| model | temperature | Δ mean cost | arms' larger std | outcome | Δ bar recall "
             "(points) | Δ bar precision (points) | Δ mIoU (points) |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for c in found:
        spread = "n/a" if c.spread is None else f"{c.spread:.4f}"
        lines.append(
            f"| {LOSS_LABELS[c.loss]} | {TEMPERATURE_LABELS[c.temperature]} | "
            f"{_signed(c.cost_change)} | {spread} | {c.outcome} | "
            f"{_signed(c.recall_change, 100, 2)} | {_signed(c.precision_change, 100, 2)} | "
            f"{_signed(c.miou_change, 100, 2)} |")
    return "\n".join(lines)


def _temperature_effect(found: list[Comparison]) -> list[str]:
    """Per model: how temperature scaling changed Bayes' cost reduction."""
    lines = []
    for loss in LOSSES:
        raw, fitted = (next(c for c in found if c.loss == loss and c.temperature == t)
                       for t in TEMPERATURES)
        if raw.cost_change.n < 2 or fitted.cost_change.n < 2:
            lines.append(f"- {LOSS_LABELS[loss]}: not enough runs to tell.")
            continue
        shift = fitted.cost_change.mean - raw.cost_change.mean
        spread = max(raw.cost_change.std, fitted.cost_change.std)
        beyond = abs(shift) > spread
        lines.append(
            f"- {LOSS_LABELS[loss]}: Bayes changes the mean cost by "
            f"{raw.cost_change.mean:+.4f} with the raw softmax and {fitted.cost_change.mean:+.4f} "
            f"with the fitted temperature ({raw.outcome} / {fitted.outcome}); scaling moves the "
            f"change by {shift:+.4f}, {'beyond' if beyond else 'within'} the larger seed std of "
            f"the two changes ({spread:.4f}).")
    return lines


def _training_section(rows: list[report.Row]) -> str:
    """The expected-cost term against plain cross-entropy under each decision (different
    trainings, so compared unpaired: the difference of the means against the larger std), and
    the arm of least mean cost."""
    by_label = {row.label: row for row in rows}
    base, other = LOSSES
    lines = ["## Training with the expected cost", "",
             f"{LOSS_LABELS[other]} minus {LOSS_LABELS[base]} under the same decision "
             "(difference of the means; *lower* / *higher* when it exceeds the larger seed std of "
             "the two arms, else *within spread*).", "",
             "| decision | Δ mean cost | outcome | Δ bar recall (points) | Δ mIoU (points) |",
             "|---|---:|---|---:|---:|"]
    for temperature in TEMPERATURES:
        for rule in RULES:
            a = by_label[arm_label(base, rule, temperature)]
            b = by_label[arm_label(other, rule, temperature)]
            cells = []
            for path, scale in (("mean_cost", 1), (f"per_class_recall/{RARE}", 100),
                                ("mean_iou", 100)):
                sa, sb = a.stat(path), b.stat(path)
                cells.append("no results" if not sa.n or not sb.n else
                             f"{scale * (sb.mean - sa.mean):+.{4 if scale == 1 else 2}f}")
            cost_a, cost_b = a.stat("mean_cost"), b.stat("mean_cost")
            change = report.Stat(
                mean=None if not cost_a.n or not cost_b.n else cost_b.mean - cost_a.mean,
                std=None, n=min(cost_a.n, cost_b.n), values=(), seeds=())
            outcome = compare(change, larger_std(cost_a, cost_b)) if change.mean is not None \
                else "not enough runs"
            lines.append(f"| {rule.upper()}, {TEMPERATURE_LABELS[temperature]} | {cells[0]} | "
                         f"{outcome} | {cells[1]} | {cells[2]} |")
    scored = [(row.stat("mean_cost").mean, row.label) for row in rows if row.stat("mean_cost").n]
    if scored:
        cost, label = min(scored)
        lines += ["", f"Least mean cost: {label} ({cost:.4f} per pixel)."]
    return "\n".join(lines)


def _verdict_section(found: list[Comparison]) -> str:
    verdict = overall_verdict(found)
    lowered = sum(c.outcome == "lower" for c in found)
    lines = ["## Verdict", "", f"**{VERDICT_TEXT[verdict]}**: Bayes lowers the realised cost "
             f"beyond the seed spread in {lowered} of {len(found)} (model, temperature) settings "
             f"(each needs at least two seeds).", ""]
    for c in found:
        if not c.cost_change.n:
            continue
        lines.append(
            f"- {LOSS_LABELS[c.loss]}, {TEMPERATURE_LABELS[c.temperature]}: cost "
            f"{c.cost_change.mean:+.4f} per pixel ({c.outcome}), at an mIoU change of "
            f"{100 * c.miou_change.mean:+.2f} points and a bar recall change of "
            f"{100 * c.recall_change.mean:+.2f} points.")
    lines += ["", "Does temperature scaling change that?", "", *_temperature_effect(found)]
    return "\n".join(lines)


def _runner_check(runs, rows: list[report.Row]) -> str | None:
    """The largest difference between this page's MAP scores (raw softmax) and the runner's own
    evaluation of the same checkpoint (results.json), which must agree."""
    diffs = {"mean_cost": [], "mean_iou": []}
    by_label = {row.label: row for row in rows}
    for loss in LOSSES:
        ours = {r.name: r for r in by_label[arm_label(loss, "map", "raw")].done}
        for run in runs:
            if run.name in ours and run.results is not None:
                for path in diffs:
                    mine, theirs = report.metric(ours[run.name], path), report.metric(run, path)
                    if mine is not None and theirs is not None:
                        diffs[path].append(abs(mine - theirs))
    if not diffs["mean_cost"]:
        return None
    return (f"Check: this page's MAP scores with the raw softmax and the runner's own evaluation "
            f"of the same checkpoints (results.json, which prices the MAP decision under the same "
            f"matrix) differ by at most {max(diffs['mean_cost']):.2e} in mean cost and "
            f"{max(diffs['mean_iou']):.2e} in mIoU over {len(diffs['mean_cost'])} runs.")


def _temperature_note(runs, rows: list[report.Row]) -> str:
    fitted = [report.metric(r, "temperature") for row in rows
              if row.label.endswith(TEMPERATURE_LABELS["fitted"]) and "MAP" in row.label
              for r in row.done]
    in_sample = [report.metric(r, "temperature") for r in runs if r.results is not None]
    fitted = [t for t in fitted if t is not None]
    in_sample = [t for t in in_sample if t is not None]
    text = "Temperatures: the cross-fitted T (per run, the average over the images) ranges "
    text += (f"from {min(fitted):.3f} to {max(fitted):.3f}" if fitted else "over no runs yet")
    if in_sample:
        text += (f"; the runner's own in-sample fit (every k-th row and column of the whole "
                 f"split, k = {TEMPERATURE_STRIDE}; results.json `temperature`) gave "
                 f"{min(in_sample):.3f} to {max(in_sample):.3f}")
    return text + ". T > 1 softens over-confident probabilities, T < 1 sharpens them."


FIGURE_METRICS = (METRICS[0], METRICS[1], METRICS[3])  # cost, bar recall, mIoU


def draw_figure(path: str, rows: list[report.Row], *, smoke: bool) -> None:
    """MAP and Bayes side by side for each (model, temperature): mean ± seed std and each seed,
    one panel per metric; markers rather than bars, so that an axis need not start at 0 and
    small differences in cost stay visible."""
    from matplotlib.figure import Figure

    from experiments.studies import plots

    by_label = {row.label: row for row in rows}
    groups = [(loss, t) for loss in LOSSES for t in TEMPERATURES]
    ticks = ["\n".join([LOSS_LABELS[loss].replace(" + ", " +\n"), TEMPERATURE_LABELS[t]])
             for loss, t in groups]
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, len(FIGURE_METRICS))
    for ax, m in zip(axes, FIGURE_METRICS):
        scale = 100.0 if m.percent else 1.0
        for k, rule in enumerate(RULES):
            for g, (loss, t) in enumerate(groups):
                stat = by_label[arm_label(loss, rule, t)].stat(m.path)
                if not stat.n:
                    continue
                x = g + (k - 0.5) * 0.3
                ax.errorbar(x, scale * stat.mean, yerr=scale * (stat.std or 0.0), fmt="o",
                            color=f"C{k}", capsize=3, label=rule.upper() if g == 0 else None)
                ax.scatter(np.full(stat.n, x + 0.06), scale * np.array(stat.values), s=10,
                           color="black", zorder=3)
        ax.set_xticks(range(len(groups)), ticks, fontsize="small")
        ax.set_title(m.label + (" (%)" if m.percent else ""), fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle("MAP against Bayes under the bar-miss cost" +
                 ("\nSMOKE TEST (--quick): says nothing about the claim" if smoke else ""),
                 color="tab:red" if smoke else "black", fontsize="medium")
    plots.save_figure(fig, path)


def make_report(runs, args: driver.StudyArgs, seconds: float) -> None:
    config = get_config("quick" if args.quick else None)
    split = config.data.eval_split
    predictor = lazy(lambda: SplitPredictor(get_config("quick" if args.quick else None),
                                             args.data_dir))
    rows = arm_rows(runs, predictor, split)
    found = comparisons(rows)
    notes = [
        f"Every run is the `shapes` main job (configs/shapes.py: DeepLabV3, ResNet-18 of base "
        f"width {config.model.base_width}, output stride 8, AdamW, cosine schedule) trained for "
        f"{config.num_train_steps} updates of batch {config.batch_size} on "
        f"{config.data.crop_size} px crops, and scored on `{split}` of `shapes`. Each "
        f"trained checkpoint is scored under all four decisions, so the table's arms are "
        f"{len(LOSSES)} trained models x {len(RULES)} rules x {len(TEMPERATURES)} temperatures "
        f"and its run counts count each training once per decision.",
        f"Cost matrix `cost[c][c_true]`: missing `{RARE}` (predicting another class where the "
        f"truth is `{RARE}`) costs {MISS_COST:g}, every other error 1, a correct pixel 0. The "
        f"realised mean cost is the average of `cost[decision, truth]` over the labelled pixels.",
        "Models: *CE* trains with cross-entropy; *CE + expected cost* adds the softmax's expected "
        "cost under the same matrix (`expected_cost_loss`: sum_c p_c cost[c, y]) with term weight "
        "1. The weight was not tuned: the matrix already sets the scale (on a `bar` pixel the "
        "term's gradient is up to 10 times that of the 0-1 expected error), and a weight chosen "
        "by its score here would be fitted on the split the page reports.",
        "Decisions: *MAP* = argmax of the probabilities; *Bayes* = the class of least expected "
        "cost under the matrix (`seg_jax.decision.bayes_decision`). *T = 1*: the model's softmax; "
        "*T fitted*: softmax(logits / T), T fitted by NLL (`seg_jax.metrics.fit_temperature`) on "
        "the validation images of the other index parity (two-fold cross-fitting), because the "
        "runner's evaluation reports a fitted temperature (`config.decision.temperature_stride`) "
        "but decides with the unscaled softmax. MAP is the same with any T > 0 (argmax is "
        "unchanged by scaling); its T-fitted rows are computed, not copied, and differ from the "
        "T = 1 rows only in ECE.",
        _temperature_note(runs, rows),
    ]
    check = _runner_check(runs, rows)
    if check:
        notes.append(check)
    report.write_report(
        args.out, NAME, "Decisions: MAP or minimum expected cost", rows, METRICS,
        command=args.command, wall_time=seconds, notes=notes, smoke=args.quick,
        sections=[_comparison_section(found), _training_section(rows), _verdict_section(found)],
        draw=lambda path: draw_figure(path, rows, smoke=args.quick))


def main(argv=None) -> int:
    return driver.run_study(__file__, NAME, make_report, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
