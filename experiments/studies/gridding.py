r"""Gridding: do hybrid dilation rates or an early non-dilated skip remove a dilated lattice?

    python -m experiments.studies.gridding [--quick] [--out docs/studies] [--parallel K]

The design text's claim: stacking dilated convolutions with one repeated rate makes "gridding
artifacts", a checkerboard-like pattern where the network systematically misses input pixels;
hybrid rates (HDC, Wang et al. 2018) or a skip from an early non-dilated layer fix it, and
the fix shows on thin structures. The model is Yu & Koltun's dilated context network
(configs/shapes_context.py: the `shapes` main job's dilated ResNet-18 front-end at output stride 8,
a 1x1 conv to class scores, a stack of seven 3x3 dilated convs on that score map, bilinear
upsampling), trained with five context modules:

- Yu & Koltun's published rates (1, 1, 2, 4, 8, 16, 1). Their two leading non-dilated layers fill
  every gap of the doubling rates: this stack reaches every offset of its receptive field
  (seg_jax.models.receptive_field.missing_offsets is empty), so it should not grid.
- HDC rates (1, 2, 5, 1, 2, 5, 1).
- Yu & Koltun's rates plus the early non-dilated skip (`model.early_skip`).
- Rate 2 seven times, the naive same-rate stack of the claim: it only ever combines score cells
  of equal parity, so the four cells of each 2 x 2 block are computed from disjoint inputs (a
  lattice of period 2 on the module's grid).
- Rate 2 seven times plus the early skip (a dense 3x3 conv on the module input, concatenated
  before the final 1x1).

Each is trained on `shapes` (thin structure: the class `bar`) and on `digits` (handwritten digits
of 3-6 px strokes; thin structure: the mean IoU over the ten digit classes), 3 seeds each. The
page reports mIoU, pixel accuracy, boundary F, the thin-structure IoU, the foreground IoU (thing
vs stuff pixels, i.e. stroke delineation on `digits` regardless of which digit), and a direct
measure of the artifact computed from each trained checkpoint on the validation images
(experiments/studies/gridding_analysis.py): the class probabilities at the context module's grid,
their power spectrum, and how much it peaks at the period-2 lattice frequencies (the lattice
peak share: 0.5 means no peak, 1 a pure lattice) and what share of the energy lies there.

The claim holds where the rate-2 stack scores a higher lattice peak share than the others, and
HDC and the early skip lower it and raise the thin-structure IoU, by more than the seeds' spread;
it fails where the rate-2 stack shows no more lattice than the gap-free stacks, or where the
remedies change neither measure.
"""

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from configs import shapes, shapes_context
from experiments.studies import driver, report
from experiments.studies import gridding_analysis as analysis
from seg_jax.reporting import atomic_write  # JAX-free, as report.py's own import of it

NAME = "gridding"
STEPS = 2400  # the main job's schedule, unshortened
DATASETS = ("shapes", "digits")
# Dataset settings beyond the name: a mirrored 2, 3, 4, 5, 6, 7 or 9 is not that digit.
DATASET_OVERRIDES = {"shapes": {"data.name": "shapes"},
                     "digits": {"data.name": "digits", "data.hflip": False}}
PERIOD = 2  # the lattice of the rate-2 stack on the module's grid
OUTPUT_STRIDE = 8  # the module's grid: one cell per 8 x 8 pixels
ANALYSIS_FILE = "gridding_analysis.json"  # each run's measures, cached beside its checkpoints
ANALYSIS_VERSION = 2  # bump when the measures change, so cached ones are recomputed

YU_KOLTUN = (1, 1, 2, 4, 8, 16, 1)
HDC = shapes_context.HDC_DILATIONS
RATE_2 = (2,) * 7


@dataclasses.dataclass(frozen=True)
class Arm:
    key: str
    label: str
    dilations: tuple[int, ...]
    early_skip: bool

    @property
    def overrides(self) -> dict:
        return {"model.dilations": self.dilations, "model.early_skip": self.early_skip}


ARMS = (
    Arm("yu_koltun", "Yu & Koltun (1,1,2,4,8,16,1)", YU_KOLTUN, False),
    Arm("hdc", "HDC (1,2,5,1,2,5,1)", HDC, False),
    Arm("yu_koltun_skip", "Yu & Koltun + early skip", YU_KOLTUN, True),
    Arm("rate2", "rate 2 x7", RATE_2, False),
    Arm("rate2_skip", "rate 2 x7 + early skip", RATE_2, True),
)
ARM_BY_KEY = {arm.key: arm for arm in ARMS}

THIN = "gridding/thin_iou"
PEAK = "gridding/peak_share"
FRACTION = "gridding/lattice_fraction"
FOREGROUND = "gridding/foreground_iou"
METRICS = [
    report.Metric("mean_iou", "mIoU", percent=True),
    report.Metric("pixel_accuracy", "pixel acc.", percent=True),
    report.Metric("boundary_f_score", "boundary F", percent=True),
    report.Metric(THIN, "thin-structure IoU", percent=True),
    report.Metric(FOREGROUND, "foreground IoU", percent=True),
    report.Metric(PEAK, "lattice peak share"),
    report.Metric(FRACTION, "lattice energy fraction"),
]


def get_config(arg=None):
    if arg == "quick":
        config = driver.shrink_for_quick(shapes.get_config())
        return shapes_context.use_context_model(config)
    if arg:
        raise ValueError(f"Unknown variant {arg!r} of {NAME}; known: 'quick'.")
    return driver.shorten(shapes_context.get_config(), STEPS)


def get_sweep(arg=None):
    from seg_jax import sweep

    seeds = driver.seeds_for(arg)
    arms = sweep.product(sweep.Sweep([DATASET_OVERRIDES[d] for d in DATASETS]),
                         sweep.Sweep([arm.overrides for arm in ARMS]))
    return driver.with_seeds(arms, seeds)


def arm_of(run: report.Run) -> tuple[str, Arm]:
    """(dataset, arm) of a run, from its overrides."""
    dilations = tuple(run.overrides["model.dilations"])
    skip = bool(run.overrides["model.early_skip"])
    arm = next(a for a in ARMS if a.dilations == dilations and a.early_skip == skip)
    return run.overrides["data.name"], arm


def arm_label(dataset: str, arm: Arm) -> str:
    return f"{dataset}: {arm.label}"


# ----------------------------------------------------------------------------------------------
# Each dataset's validation images, as the analysis and the figure use them


@dataclasses.dataclass
class Scenes:
    """One dataset's scored split: what the analysis runs the models on and the figure shows."""
    name: str
    split: str
    class_names: tuple[str, ...]
    thin_classes: tuple[str, ...]  # the thin structure: its IoU is the mean over these classes
    foreground: tuple[int, ...]  # the thing classes (foreground IoU: any of them vs the rest)
    ignore_label: int
    images: np.ndarray | None  # normalised float32 [N, H, W, 3]; None: no model pass possible
    labels: np.ndarray | None  # [N, H, W]
    example_index: int  # the image shown in the figure: the most thin-structure pixels
    example_image: np.ndarray  # uint8 [H, W, 3]
    example_label: np.ndarray  # [H, W]
    truth: dict  # gridding_analysis.truth_measures of the split's labels

    @property
    def thin_ids(self) -> tuple[int, ...]:
        return tuple(self.class_names.index(c) for c in self.thin_classes)


def thin_classes(dataset: str, class_names: Sequence[str], thing_classes: Sequence[int]):
    """`bar` on shapes (9-12 px thick, about one cell of the module's grid); on digits every
    digit class (strokes 3-6 px wide)."""
    if dataset == "shapes":
        return ("bar",)
    return tuple(class_names[c] for c in thing_classes)


def load_scenes(dataset: str, data_dir: str | None, split: str) -> Scenes:
    """The split of `dataset`, its images normalised as the evaluation does."""
    from seg_jax.data import augment, datasets

    config = get_config()
    for path, value in DATASET_OVERRIDES[dataset].items():
        _set(config, path, value)
    config.data.data_dir = data_dir
    source, info = datasets.get_dataset(config.data, split)
    examples = [source[i] for i in range(len(source))]
    raw = np.stack([np.asarray(e["image"]) for e in examples])
    labels = np.stack([np.asarray(e["label"]) for e in examples]).astype(np.int64)
    thin = thin_classes(dataset, info.class_names, info.thing_classes)
    thin_ids = [info.class_names.index(c) for c in thin]
    example = int(np.isin(labels, thin_ids).reshape(len(labels), -1).sum(1).argmax())
    return Scenes(
        name=dataset, split=split, class_names=tuple(info.class_names), thin_classes=thin,
        foreground=tuple(info.thing_classes), ignore_label=info.ignore_label,
        images=augment.normalize_image(raw, config.data.mean, config.data.std), labels=labels,
        example_index=example, example_image=raw[example], example_label=labels[example],
        truth=_truth(labels, len(info.class_names)))


def _truth(labels: np.ndarray, num_classes: int, chunk: int = 32) -> dict:
    """truth_measures over the whole split, chunk by chunk (one-hot maps of 200 images at once
    would take hundreds of MB)."""
    spectrum = sum(analysis.power_spectrum(analysis.block_mean(
        analysis.one_hot_maps(labels[i:i + chunk], num_classes), OUTPUT_STRIDE))
        for i in range(0, len(labels), chunk))
    return {"lattice_fraction": analysis.lattice_energy_fraction(spectrum, PERIOD),
            "peak_share": analysis.lattice_peak_share(spectrum, PERIOD)}


def _set(config, path: str, value) -> None:
    from ml_collections.config_flags import config_path

    config_path.set_value(path, config, value)


# ----------------------------------------------------------------------------------------------
# The measures of each trained run


def run_config(run: report.Run, quick: bool, data_dir: str | None):
    """The config the run trained with: the study's, its overrides set."""
    config = get_config("quick" if quick else None)
    for path, value in run.overrides.items():
        _set(config, path, value)
    config.data.data_dir = data_dir
    return config


def analyse_run(run: report.Run, scenes: Scenes, quick: bool, data_dir: str | None) -> dict:
    """The run's artifact measures from its newest checkpoint (gridding_analysis)."""
    return analysis.analyse_checkpoint(
        run_config(run, quick, data_dir), run.path, scenes.images, scenes.labels,
        foreground=scenes.foreground, ignore_label=scenes.ignore_label, period=PERIOD,
        example_index=scenes.example_index, example_classes=scenes.thin_ids)


def cached_analysis(run: report.Run, scenes: Scenes,
                    analyse: Callable[[report.Run, Scenes], dict]) -> dict:
    """The run's measures: from its ANALYSIS_FILE when that was made from the same checkpoint step
    on the same split, else `analyse(run, scenes)`, saved there."""
    path = os.path.join(run.path, ANALYSIS_FILE)
    key = {"version": ANALYSIS_VERSION, "split": scenes.split, "period": PERIOD,
           "example_index": scenes.example_index}
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        if {k: cached.get(k) for k in key} == key and cached.get("step") == run.results["step"]:
            return cached
    except (OSError, ValueError):
        pass
    measured = {**analyse(run, scenes), **key}
    atomic_write(path, json.dumps(measured) + "\n")
    return measured


def thin_iou(results: dict, classes: Sequence[str]) -> float | None:
    """The mean IoU over those of `classes` whose IoU the run defines (a class neither present
    nor predicted in the scored split has none, as in the runner's mIoU); None when none has."""
    per_class = results.get("per_class_iou", {})
    values = [v for v in (per_class.get(c) for c in classes)
              if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def with_measures(runs: Sequence[report.Run], scenes: dict[str, Scenes],
                  analyse: Callable[[report.Run, Scenes], dict]) -> tuple[list, dict, list]:
    """(runs with results['gridding'] added, {run name: its analysis}, problems): the thin IoU from
    the results, the artifact measures from the checkpoint. A run whose analysis fails keeps its
    other scores, and the page lists why."""
    out, analyses, problems = [], {}, []
    for run in runs:
        if run.results is None:
            out.append(run)
            continue
        dataset, arm = arm_of(run)
        extra = {"thin_iou": thin_iou(run.results, scenes[dataset].thin_classes)}
        try:
            measured = cached_analysis(run, scenes[dataset], analyse)
        except Exception as e:  # noqa: BLE001 - one run's failure must not lose the page
            problems.append(f"{arm_label(dataset, arm)}, seed {run.seed} (`{run.name}`): the "
                            f"analysis failed: {type(e).__name__}: {e}")
        else:
            analyses[run.name] = measured
            extra.update({k: measured[k] for k in ("peak_share", "lattice_fraction",
                                                   "foreground_iou")})
        extra = {k: v for k, v in extra.items() if v is not None and math.isfinite(v)}
        out.append(dataclasses.replace(run, results={**run.results, "gridding": extra}))
    return out, analyses, problems


def rows_by_arm(runs: Sequence[report.Run]) -> list[report.Row]:
    """One row per (dataset, arm), datasets then arms in the study's order."""
    groups = {arm_label(d, a): [] for d in DATASETS for a in ARMS}
    for run in runs:
        groups[arm_label(*arm_of(run))].append(run)
    return report.summarise({k: v for k, v in groups.items() if v}, METRICS)


# ----------------------------------------------------------------------------------------------
# The verdict


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Arm `a` against arm `b` on one dataset and one metric, where the claim says a should be
    higher (sign +1) or lower (sign -1)."""
    dataset: str
    a: str
    b: str
    path: str
    sign: int


# Each part of the claim and the comparisons that test it, on every dataset.
PARTS = (
    ("the rate-2 stack shows the lattice (higher peak share than the gap-free stacks)",
     [("rate2", "yu_koltun", PEAK, +1), ("rate2", "hdc", PEAK, +1)]),
    ("HDC lowers the lattice peak share",
     [("hdc", "rate2", PEAK, -1), ("hdc", "yu_koltun", PEAK, -1)]),
    ("HDC raises the thin-structure IoU",
     [("hdc", "rate2", THIN, +1), ("hdc", "yu_koltun", THIN, +1)]),
    ("the early skip lowers the lattice peak share",
     [("rate2_skip", "rate2", PEAK, -1), ("yu_koltun_skip", "yu_koltun", PEAK, -1)]),
    ("the early skip raises the thin-structure IoU",
     [("rate2_skip", "rate2", THIN, +1), ("yu_koltun_skip", "yu_koltun", THIN, +1)]),
)

SUPPORTS, AGAINST, WITHIN_NOISE, TOO_FEW = "supports", "against", "within noise", "too few runs"


def compare(rows: dict[str, report.Row], c: Comparison) -> tuple[str, float | None]:
    """(outcome, difference a - b): SUPPORTS or AGAINST when the difference of the means exceeds
    the larger of the two seed stds in the claim's direction or against it, WITHIN_NOISE when it
    does not, TOO_FEW without two runs in each arm."""
    a, b = rows.get(arm_label(c.dataset, ARM_BY_KEY[c.a])), rows.get(
        arm_label(c.dataset, ARM_BY_KEY[c.b]))
    sa, sb = (a.stat(c.path) if a else None), (b.stat(c.path) if b else None)
    if not sa or not sb or sa.n == 0 or sb.n == 0:
        return TOO_FEW, None
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return TOO_FEW, diff
    if abs(diff) <= max(sa.std, sb.std):
        return WITHIN_NOISE, diff
    return (SUPPORTS if diff * c.sign > 0 else AGAINST), diff


def part_verdict(outcomes: Sequence[str]) -> str:
    """holds (every comparison supports it), does not hold (none does), mixed, or not enough
    runs (some comparison lacks two runs per arm)."""
    if not outcomes or TOO_FEW in outcomes:
        return "not enough runs"
    if all(o == SUPPORTS for o in outcomes):
        return "holds"
    if not any(o == SUPPORTS for o in outcomes):
        return "does not hold"
    return "mixed"


def _format_diff(path: str, diff: float | None) -> str:
    if diff is None:
        return "n/a"
    return f"{100 * diff:+.2f} pts" if path == THIN else f"{diff:+.4f}"


def verdict_section(rows: Sequence[report.Row]) -> tuple[str, dict[str, str]]:
    """The verdict's Markdown and {part: verdict}."""
    by_label = {row.label: row for row in rows}
    lines = ["## Verdict", "",
             "Each part of the claim is tested by the comparisons listed, on both datasets: a "
             "difference of the means counts for or against the claim when it exceeds the larger "
             "of the two arms' seed stds, else it is *within noise*. A part **holds** when every "
             "comparison supports it, **does not hold** when none does, and is **mixed** "
             "otherwise. The artifact measure is the lattice peak share (the energy fraction "
             "is in the table above and in the figure).", "",
             "| part of the claim | dataset | comparison | metric | difference | outcome |",
             "|---|---|---|---|---:|---|"]
    verdicts = {}
    for part, pairs in PARTS:
        outcomes = []
        for dataset in DATASETS:
            for a, b, path, sign in pairs:
                outcome, diff = compare(by_label, Comparison(dataset, a, b, path, sign))
                outcomes.append(outcome)
                metric = "thin-structure IoU" if path == THIN else "lattice peak share"
                lines.append(f"| {part} | `{dataset}` | {ARM_BY_KEY[a].label} vs "
                             f"{ARM_BY_KEY[b].label} | {metric} | {_format_diff(path, diff)} | "
                             f"{outcome} |")
        verdicts[part] = part_verdict(outcomes)
    lines += ["", *(f"- {part}: **{verdict}**" for part, verdict in verdicts.items())]
    return "\n".join(lines), verdicts


# ----------------------------------------------------------------------------------------------
# The page


def _truth_section(scenes: dict[str, Scenes]) -> str:
    lines = ["## The measure on the ground truth", "",
             "The same measures on the validation labels' one-hot maps averaged over the module's "
             f"{OUTPUT_STRIDE} x {OUTPUT_STRIDE}-pixel cells: what a prediction as sharp as the "
             "truth, with no artifact, would score. Objects' edges alone put this much energy at "
             "the lattice frequencies.", "",
             "| dataset | split | lattice peak share | lattice energy fraction |",
             "|---|---|---:|---:|"]
    for s in scenes.values():
        lines.append(f"| `{s.name}` | `{s.split}` | {s.truth['peak_share']:.4f} | "
                     f"{s.truth['lattice_fraction']:.4f} |")
    return "\n".join(lines)


def _problems_section(problems: Sequence[str]) -> str:
    return "\n".join(["## Analyses that failed", "", *(f"- {p}" for p in problems)])


def _notes(config, scenes: dict[str, Scenes], quick: bool) -> list[str]:
    thin = {d: ", ".join(f"`{c}`" for c in s.thin_classes) for d, s in scenes.items()}
    return [
        f"Every run is configs/shapes_context.py's model (the `shapes` main job's dilated "
        f"ResNet-18 front-end at output stride 8, base width {config.model.base_width}, then the "
        f"context module on the class-score map) trained for {config.num_train_steps} updates "
        f"of batch {config.batch_size} on {config.data.crop_size} px crops"
        + (" (the smoke test's tiny model)" if quick else
           " (the main job's own schedule, not shortened)")
        + "; only the module's rates and the early skip change. On `digits` horizontal flips are "
        "off (a mirrored digit is another digit), as in configs/digits.py.",
        "Thin-structure IoU: the IoU of " + thin.get("shapes", "`bar`") + " on `shapes`; on "
        "`digits` the mean IoU over the digit classes (" + thin.get("digits", "the digits") +
        "), whose strokes are 3-6 px wide. Foreground IoU: pixels of any thing class (the "
        "shapes; the digits) against the rest, so on `digits` it scores the strokes' "
        "delineation whatever digit is predicted. mIoU, pixel accuracy and boundary F are the "
        f"runner's (boundary F within {config.eval_boundary_tolerance:g} px).",
        f"Artifact measure (experiments/studies/gridding_analysis.py), computed from each run's "
        f"final checkpoint on every image of the scored split: the softmax of the context "
        f"module's output at its own grid (one cell per {OUTPUT_STRIDE} x {OUTPUT_STRIDE} px, "
        f"before the fixed bilinear upsampling), one map per image and class; the power spectrum "
        f"|FFT2(map - its mean)|^2 summed over maps. The lattice bins of period {PERIOD} are the "
        f"non-DC frequencies (a/{PERIOD}, b/{PERIOD}) cycles per cell: for period 2 the row, "
        f"column and checkerboard alternations, where the rate-2 stack's disjoint sub-lattices "
        f"would put their disagreement. *Lattice peak share* = L / (L + N) summed over the "
        f"lattice bins, L a bin's energy and N its neighbours' estimate of it (the larger of the "
        f"means of its two neighbours along each axis, so that the ridges that axis-aligned edges "
        f"draw along the spectrum's axes do not pass for peaks): about 0.5 for a flat spectrum, "
        f"1 for a pure lattice, below 0.5 for smooth maps. *Lattice energy fraction*: the lattice "
        f"bins' share of all non-DC energy (1 for a pure lattice, ~0 for a smooth map).",
        _stack_note(),
    ]


def _stack_note() -> str:
    """Each stack's receptive field on the module's grid and which offsets it reaches, computed
    by seg_jax.models.receptive_field.stack_offsets."""
    from seg_jax.models.receptive_field import stack_offsets

    parts = []
    for name, dilations in (("Yu & Koltun", YU_KOLTUN), ("HDC", HDC), ("rate 2 x7", RATE_2)):
        offsets = stack_offsets(dilations)
        span = int(offsets.max() - offsets.min() + 1)
        reach = ("every offset in it" if len(offsets) == span else
                 f"{len(offsets)} of its {span} offsets per axis")
        parts.append(f"{name} {span} cells wide, reaching {reach}")
    return ("Receptive fields of the 3x3 stacks on the module's grid (one axis): " +
            "; ".join(parts) + ". Every one is wider than the 12 x 12 (`digits`) or 16 x 16 "
            "(`shapes`) grid of a whole validation image.")


def _example_map(analyses: dict, runs: Sequence[report.Run]) -> np.ndarray | None:
    """The example probability map of the arm's first run (lowest seed) that has one."""
    for run in sorted(runs, key=lambda r: r.seed):
        example = analyses.get(run.name, {}).get("example")
        if example is not None:
            return np.asarray(example, np.float64)
    return None


def draw_figure(path: str, rows: Sequence[report.Row], analyses: dict,
                scenes: dict[str, Scenes], smoke: bool) -> None:
    """Top: the thin-structure IoU and the two lattice measures per arm and dataset (mean, seed
    std, each seed a dot; the ground truth's value dashed). Below, per dataset: the example
    image, its thin-structure mask, and each arm's probability of the thin classes at the
    module's grid."""
    from matplotlib.figure import Figure

    from experiments.studies import plots

    fig = Figure(figsize=(3.0 * (len(ARMS) + 2), 4.0 + 2.9 * len(scenes)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.0, 2.9 * len(scenes)])
    by_label = {row.label: row for row in rows}
    panels = ((THIN, "thin-structure IoU (%)", 100.0, None),
              (PEAK, "lattice peak share", 1.0, "peak_share"),
              (FRACTION, "lattice energy fraction", 1.0, "lattice_fraction"))
    for ax, (metric, title, scale, truth_key) in zip(top.subplots(1, len(panels)), panels):
        _bar_panel(ax, by_label, metric, scale, title)
        if truth_key:
            for j, s in enumerate(scenes.values()):
                ax.axhline(s.truth[truth_key], color=f"C{j}", linestyle="--", linewidth=1,
                           label=f"{s.name}: ground truth")
            ax.legend(fontsize="x-small")
    axes = bottom.subplots(len(scenes), len(ARMS) + 2, squeeze=False)
    for row_axes, s in zip(axes, scenes.values()):
        row_axes[0].imshow(s.example_image)
        row_axes[0].set_title(f"{s.name} #{s.example_index}", fontsize="small")
        row_axes[1].imshow(np.isin(s.example_label, s.thin_ids), cmap="gray", vmin=0, vmax=1)
        row_axes[1].set_title("thin-structure truth", fontsize="small")
        for ax, arm in zip(row_axes[2:], ARMS):
            row = by_label.get(arm_label(s.name, arm))
            example = _example_map(analyses, row.runs) if row else None
            if example is None:
                ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(example, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(arm.label, fontsize="x-small")
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
    bottom.suptitle("P(thin classes) at the module's grid (1 cell = 8 px), lowest seed",
                    fontsize="small")
    heading = "Gridding: dilated context module" + (
        "\nSMOKE TEST (--quick): says nothing about the claim" if smoke else "")
    fig.suptitle(heading, color="tab:red" if smoke else "black", fontsize="medium")
    plots.save_figure(fig, path)


def _bar_panel(ax, by_label: dict, path: str, scale: float, title: str) -> None:
    x = np.arange(len(ARMS))
    width = 0.8 / len(DATASETS)
    for j, dataset in enumerate(DATASETS):
        xs = x + (j - (len(DATASETS) - 1) / 2) * width
        for xi, arm in zip(xs, ARMS):
            row = by_label.get(arm_label(dataset, arm))
            stat = row.stat(path) if row else None
            if not stat or not stat.n:
                ax.annotate("n=0", (xi, 0), ha="center", va="bottom", fontsize="x-small")
                continue
            ax.bar(xi, scale * stat.mean, width, yerr=scale * (stat.std or 0.0), capsize=3,
                   color=f"C{j}", alpha=0.7, label=dataset if arm is ARMS[0] else None)
            ax.scatter(np.full(stat.n, xi), scale * np.array(stat.values), s=10, color="black",
                       zorder=3)
    ax.set_xticks(x, [arm.label for arm in ARMS], rotation=20, ha="right", fontsize="x-small")
    ax.set_title(title, fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="x-small")


def write_gridding_report(runs, args: driver.StudyArgs, seconds: float,
                          scenes: dict[str, Scenes],
                          analyse: Callable[[report.Run, Scenes], dict]) -> dict[str, str]:
    """Writes the page and figure from `runs` (analysed with `analyse`, or their cached
    measures); returns the verdict of each part of the claim."""
    runs, analyses, problems = with_measures(runs, scenes, analyse)
    rows = rows_by_arm(runs)
    verdict, verdicts = verdict_section(rows)
    sections = [_truth_section(scenes), verdict] + ([_problems_section(problems)]
                                                    if problems else [])
    config = get_config("quick" if args.quick else None)
    report.write_report(
        args.out, NAME, "Gridding: dilation rates and the early skip", rows, METRICS,
        command=args.command, wall_time=seconds, notes=_notes(config, scenes, args.quick),
        smoke=args.quick, sections=sections,
        draw=lambda path: draw_figure(path, rows, analyses, scenes, args.quick))
    return verdicts


def make_report(runs, args: driver.StudyArgs, seconds: float) -> None:
    split = get_config("quick" if args.quick else None).data.eval_split
    scenes = {d: load_scenes(d, args.data_dir, split) for d in DATASETS}
    write_gridding_report(runs, args, seconds, scenes,
                          lambda run, s: analyse_run(run, s, args.quick, args.data_dir))


def main(argv=None) -> int:
    return driver.run_study(__file__, NAME, make_report, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
