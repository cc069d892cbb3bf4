r"""ASPP: do parallel atrous rates and image pooling pay for themselves; does separable cut cost?

    python -m experiments.studies.aspp [--quick] [--out docs/studies] [--parallel K]

The design text's claims: ASPP's parallel atrous convolutions capture context at several scales,
its image-pooling branch adds global context, and depthwise-separable convolutions cut the cost.
Each context module trains the `shapes` main job's model (configs/shapes.py: DeepLabV3, ResNet-18
of width 16, ASPP 64 wide) at output stride 8 and 16, over 3 seeds:

- no ASPP (`model.aspp='none'`): one 1x1 conv + BN + ReLU to ASPP's width, with ASPP's dropout;
- ASPP with rates (6, 12, 18), (12, 24, 36) and (1, 2, 3) (`model.aspp='full'`);
- image pooling only (`model.aspp='pooling_only'`): ASPP's 1x1 and image-pooling branches;
- separable ASPP with rates (6, 12, 18) (`model.separable=True`; the head's 3x3 conv too).

Per arm the page reports parameters, XLA's FLOPs of the forward pass at the evaluation size,
inference images/s measured in the report step (every arm in one process, interleaved rounds)
and mIoU. Whether the best rate set depends on the crop size is tested by training the three
rate arms again on 128 px crops (the whole image) instead of 96: with 96 px crops the feature
map is 12 (OS 8) or 6 (OS 16) pixels wide, so most taps of the large rates fall into the zero
padding during training, and the larger crop is the one change that gives them context to read.

The claim holds where every rate set beats both no ASPP and image pooling only by more than the
seeds' spread, and where separable ASPP has fewer FLOPs and parameters; it fails where the rate
arms do not beat the baselines, or separable does not cut the cost.

Full study: 54 runs of 1,200 steps (36 main + 18 at the larger crop); from XLA's FLOPs of each
arm and the main job's 6.5 steps/s (OS 8, 96 px) about 3 hours on an unloaded 2-core CPU.
"""

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from configs import shapes
from experiments.studies import driver, report

NAME = "aspp"
STEPS = 1200  # the main job's 2400, halved to fit 54 runs on a 2-core CPU
OUTPUT_STRIDES = (8, 16)
CROP_SIZES = (96, 128)  # the main job's crop, and the whole 128 px image (the rate arms only)
QUICK_CROP_SIZES = (32, 48)
RATE_SETS = ((6, 12, 18), (12, 24, 36), (1, 2, 3))

NO_ASPP = "no ASPP"
POOLING_ONLY = "image pooling only"
SEPARABLE = "separable (6, 12, 18)"


def rates_label(rates: Sequence[int]) -> str:
    return f"rates ({', '.join(map(str, rates))})"


# The context module of each arm: its label and its model overrides.
VARIANTS: dict[str, dict] = {
    NO_ASPP: {"model.aspp": "none"},
    **{rates_label(r): {"model.aspp": "full", "model.atrous_rates": r} for r in RATE_SETS},
    POOLING_ONLY: {"model.aspp": "pooling_only"},
    SEPARABLE: {"model.aspp": "full", "model.atrous_rates": (6, 12, 18), "model.separable": True},
}
RATE_VARIANTS = tuple(rates_label(r) for r in RATE_SETS)

METRICS = [
    report.Metric("mean_iou", "mIoU", percent=True),
    report.Metric("pixel_accuracy", "pixel acc.", percent=True),
    report.Metric("boundary_f_score", "boundary F", percent=True),
]


def crop_sizes(quick: bool) -> tuple[int, int]:
    return QUICK_CROP_SIZES if quick else CROP_SIZES


def get_config(arg=None):
    config = shapes.get_config()
    return driver.sized(config, arg, steps=STEPS, name=NAME)


def get_sweep(arg=None):
    """Every context module at both output strides on the main crop; the rate sets again at
    both strides on the larger crop; each at every seed."""
    from seg_jax import sweep

    quick = arg == "quick"
    strides = sweep.product({"model.output_stride": list(OUTPUT_STRIDES)})
    main = strides * sweep.Sweep(VARIANTS.values())
    larger = (sweep.product({"data.crop_size": [crop_sizes(quick)[1]]}) * strides
              * sweep.Sweep(VARIANTS[v] for v in RATE_VARIANTS))
    return driver.with_seeds(main + larger, driver.QUICK_SEEDS if quick else driver.SEEDS)


# ----------------------------------------------------------------------------------------------
# Arms


@dataclasses.dataclass(frozen=True)
class Arm:
    variant: str  # a key of VARIANTS
    output_stride: int
    crop: int

    @property
    def label(self) -> str:
        return f"OS {self.output_stride}, {self.variant}, crop {self.crop}"

    @property
    def architecture(self) -> tuple[str, int]:
        """What the cost depends on: the crop changes training only."""
        return self.variant, self.output_stride


def _canonical(overrides: Mapping) -> dict:
    from seg_jax.sweep.declare import canonical

    return {k: canonical(v) for k, v in overrides.items()}


def arm_of(overrides: Mapping, main_crop: int) -> Arm:
    """The arm a point's overrides (seed excluded or not) belong to."""
    rest = _canonical({k: v for k, v in overrides.items() if k != "seed"})
    stride = int(rest.pop("model.output_stride"))
    crop = int(rest.pop("data.crop_size", main_crop))
    for variant, fields in VARIANTS.items():
        if _canonical(fields) == rest:
            return Arm(variant, stride, crop)
    raise ValueError(f"Overrides {dict(overrides)} are no arm of the {NAME} study.")


def group_arms(runs: Sequence[report.Run], main_crop: int) -> dict[Arm, list[report.Run]]:
    """{arm: its runs} in the sweep's order."""
    arms: dict[Arm, list[report.Run]] = {}
    for run in runs:
        arms.setdefault(arm_of(run.overrides, main_crop), []).append(run)
    return arms


# ----------------------------------------------------------------------------------------------
# Which taps of an atrous 3x3 conv read the feature map rather than its zero padding


def feature_size(image_size: int, output_stride: int) -> int:
    """The backbone's feature map side for a square input: each stride-2 layer (padded like
    PyTorch) maps n to ceil(n / 2)."""
    size = image_size
    for _ in range(int(np.log2(output_stride))):
        size = -(-size // 2)
    return size


def live_tap_fraction(size: int, rate: int) -> float:
    """The share of a 3x3 conv's 8 off-centre taps at dilation `rate` that land inside a
    `size` x `size` map, averaged over the map's pixels; 0 means the conv is a 1x1 conv there.

    Along one axis a tap at offset +-rate is inside for max(0, size - rate) of the size
    positions; a 2-D tap is inside when both of its coordinates are.
    """
    inside = max(0, size - rate) / size
    return ((1 + 2 * inside) ** 2 - 1) / 8


def _taps_cell(rates: Sequence[int], size: int) -> str:
    return " / ".join(f"{100 * live_tap_fraction(size, r):.0f}%" for r in rates)


def taps_section(image_size: int, crops: Sequence[int]) -> str:
    sizes = {f"training, {c} px crops": c for c in crops}
    sizes[f"evaluation, {image_size} px images"] = image_size
    lines = ["## Which atrous taps see the feature map", "",
             "The share of each atrous branch's 8 off-centre taps that land inside the backbone's "
             "feature map rather than in its zero padding, averaged over the map (per rate, in "
             "order; 0% is a 1x1 conv, DeepLabv3 Sec. 3.3). Computed from the sizes, not measured.",
             "", "| rates | output stride | " + " | ".join(
                 f"{where} (map {feature_size(s, 8)} / {feature_size(s, 16)} px)"
                 for where, s in sizes.items()) + " |",
             "|---|---:|" + "---:|" * len(sizes)]
    for rates in RATE_SETS:
        for stride in OUTPUT_STRIDES:
            lines.append(f"| {rates_label(rates)} | {stride} | " + " | ".join(
                _taps_cell(rates, feature_size(s, stride)) for s in sizes.values()) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Cost: parameters, FLOPs and measured images/s of each architecture


@dataclasses.dataclass(frozen=True)
class Cost:
    params: int
    context_params: int  # of the context module ('aspp' in the parameter tree)
    flops: float  # per image at the evaluation size, XLA's count
    images_per_s: float  # the median over the timing rounds
    images_per_s_range: tuple[float, float]  # the slowest and fastest round


def xla_flops(compiled) -> float:
    """FLOPs of a compiled JAX computation by XLA's cost analysis. XLA counts a multiply-add as 2
    and a conv's taps that read padding not at all."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # one dict per computation in older JAX
        analysis = analysis[0]
    return float(analysis["flops"])


def _count(tree) -> int:
    import jax

    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _random_variables(shapes_tree, seed: int = 0):
    """The model's variables filled with random numbers without compiling `init` (the cost of
    a forward pass does not depend on the values)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(
        rng.uniform(0.5, 1.5, s.shape) if len(s.shape) == 1 else rng.normal(0, 0.05, s.shape),
        s.dtype), shapes_tree)


def _compiled_forward(model_config, image_size: int, batch: int,
                      compiler_options: Mapping | None = None):
    """(compiled eval-mode forward, its variables, its images, parameter counts)."""
    import jax
    import jax.numpy as jnp

    from seg_jax.models import create_model

    model = create_model(model_config)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(batch, image_size, image_size, 3)),
                         jnp.float32)
    shapes_tree = jax.eval_shape(
        lambda: model.init(jax.random.key(0), images[:1], train=False))
    variables = _random_variables(shapes_tree)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)
    compiled = forward.lower(variables, images).compile(compiler_options=compiler_options)
    params = variables["params"]
    return compiled, variables, images, _count(params), _count(params.get("aspp", {}))


def measure_costs(model_configs: Mapping, image_size: int, batch: int, rounds: int,
                  calls: int, compiler_options: Mapping | None = None) -> dict:
    """{key: Cost} for each model config: parameters, FLOPs per image of the forward pass on a
    batch of `image_size` images, and images/s of that compiled pass. Every model is compiled
    (with XLA's `compiler_options`, e.g. a lower optimisation level that compiles faster and
    runs slower) and warmed up first; then `rounds` rounds time `calls` calls of each model in
    turn, so that a change of the machine's load during the measurement touches every model
    alike."""
    import jax

    prepared = {}
    for key, config in model_configs.items():
        compiled, variables, images, params, context = _compiled_forward(
            config, image_size, batch, compiler_options)
        for _ in range(2):  # warm-up
            jax.block_until_ready(compiled(variables, images))
        prepared[key] = (compiled, variables, images, params, context)
    speeds: dict = {key: [] for key in prepared}
    for _ in range(rounds):
        for key, (compiled, variables, images, _, _) in prepared.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = compiled(variables, images)
            jax.block_until_ready(out)
            speeds[key].append(calls * batch / (time.perf_counter() - start))
    return {key: Cost(params=params, context_params=context,
                      flops=xla_flops(compiled) / batch,
                      images_per_s=statistics.median(speeds[key]),
                      images_per_s_range=(min(speeds[key]), max(speeds[key])))
            for key, (compiled, _, _, params, context) in prepared.items()}


def architecture_configs(quick: bool, num_classes: int) -> dict:
    """{(variant, output stride): model config} of every architecture of the study."""
    from ml_collections.config_flags import config_path  # how the sweep sets its overrides

    configs = {}
    for stride in OUTPUT_STRIDES:
        for variant, fields in VARIANTS.items():
            config = get_config("quick" if quick else None)
            for path, value in {**fields, "model.output_stride": stride}.items():
                config_path.set_value(path, config, value)
            config.model.num_classes = num_classes
            configs[(variant, stride)] = config.model
    return configs


def study_costs(quick: bool) -> tuple[dict, dict]:
    """(costs by architecture, how they were measured) for the `shapes` evaluation images."""
    from seg_jax.data.shapes import IMAGE_SIZE
    from seg_jax.data.shapes_render import NUM_CLASSES

    config = get_config("quick" if quick else None)
    setup = dict(image_size=IMAGE_SIZE, batch=config.eval_batch_size, rounds=2 if quick else 5,
                 calls=1 if quick else 3)
    # The smoke test's speeds mean nothing; XLA's lowest backend optimisation halves its
    # compile time (the FLOP count is taken before that level acts).
    fast = {"xla_backend_optimization_level": 0} if quick else None
    costs = measure_costs(architecture_configs(quick, NUM_CLASSES), **setup,
                          compiler_options=fast)
    return costs, {**setup, "compiler_options": fast}


# ----------------------------------------------------------------------------------------------
# Comparisons against the seeds' spread


@dataclasses.dataclass(frozen=True)
class Comparison:
    diff: float | None  # mean of a minus mean of b; None without values
    noise: float | None  # the larger of the two seed stds; None with fewer than 2 seeds
    outcome: str  # 'better', 'worse', 'within noise' or 'not enough runs'


def compare(a: report.Stat, b: report.Stat) -> Comparison:
    """a against b: better or worse when the means differ by more than the larger seed std."""
    if not a.n or not b.n:
        return Comparison(None, None, "not enough runs")
    diff = a.mean - b.mean
    if a.std is None or b.std is None:
        return Comparison(diff, None, "not enough runs")
    noise = max(a.std, b.std)
    outcome = "within noise" if abs(diff) <= noise else ("better" if diff > 0 else "worse")
    return Comparison(diff, noise, outcome)


def _points(c: Comparison) -> str:
    if c.diff is None:
        return "no results"
    spread = f" (std {100 * c.noise:.2f})" if c.noise is not None else ""
    return f"{100 * c.diff:+.2f}{spread}: {c.outcome}"


def _verdict_of(outcomes: Sequence[str]) -> str:
    """holds: every comparison better; does not hold: none better; mixed: some."""
    if not outcomes or "not enough runs" in outcomes:
        return "not enough runs"
    wins = sum(o == "better" for o in outcomes)
    return "holds" if wins == len(outcomes) else ("does not hold" if wins == 0 else "mixed")


MIOU = "mean_iou"


def context_comparisons(rows: Mapping[Arm, report.Row], crop: int) -> dict:
    """{(rate variant, baseline, output stride): Comparison} of mIoU on the main crop."""
    out = {}
    for stride in OUTPUT_STRIDES:
        for variant in RATE_VARIANTS:
            for baseline in (NO_ASPP, POOLING_ONLY):
                a, b = rows.get(Arm(variant, stride, crop)), rows.get(Arm(baseline, stride, crop))
                out[(variant, baseline, stride)] = (
                    compare(a.stat(MIOU), b.stat(MIOU)) if a and b
                    else Comparison(None, None, "not enough runs"))
    return out


def context_section(rows: Mapping[Arm, report.Row], crop: int) -> tuple[str, dict[str, str]]:
    comparisons = context_comparisons(rows, crop)
    lines = ["## Do several rates beat no ASPP and image pooling only?", "",
             f"mIoU of each rate set minus that of the baseline, in points, on {crop} px crops; "
             "*better* or *worse* when the difference exceeds the larger of the two arms' seed "
             "stds, *within noise* otherwise.", "",
             "| rates | output stride | against no ASPP | against image pooling only |",
             "|---|---:|---|---|"]
    for stride in OUTPUT_STRIDES:
        for variant in RATE_VARIANTS:
            lines.append(f"| {variant} | {stride} | " + " | ".join(
                _points(comparisons[(variant, b, stride)]) for b in (NO_ASPP, POOLING_ONLY))
                + " |")
    verdicts = {baseline: _verdict_of([c.outcome for (_, b, _), c in comparisons.items()
                                       if b == baseline])
                for baseline in (NO_ASPP, POOLING_ONLY)}
    return "\n".join(lines), verdicts


def separable_findings(rows: Mapping[Arm, report.Row], costs: Mapping, crop: int) -> dict:
    """{output stride: dict of ratios (separable / dense ASPP with the same rates) and the mIoU
    Comparison}; ratios are None where a cost is missing."""
    dense = rates_label((6, 12, 18))
    findings = {}
    for stride in OUTPUT_STRIDES:
        sep_cost, dense_cost = costs.get((SEPARABLE, stride)), costs.get((dense, stride))
        a, b = rows.get(Arm(SEPARABLE, stride, crop)), rows.get(Arm(dense, stride, crop))
        ratio = lambda f: (f(sep_cost) / f(dense_cost)  # noqa: E731
                           if sep_cost and dense_cost else None)
        findings[stride] = dict(
            params=ratio(lambda c: c.params), context_params=ratio(lambda c: c.context_params),
            flops=ratio(lambda c: c.flops), speed=ratio(lambda c: c.images_per_s),
            miou=compare(a.stat(MIOU), b.stat(MIOU)) if a and b
            else Comparison(None, None, "not enough runs"))
    return findings


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def separable_verdict(findings: Mapping[int, dict]) -> str:
    """'holds' when separable has fewer parameters and FLOPs at every stride, with the mIoU
    cost said; 'does not hold' when it lacks either cut at some stride."""
    if any(f["params"] is None or f["flops"] is None for f in findings.values()):
        return "not enough runs"
    if not all(f["params"] < 1 and f["flops"] < 1 for f in findings.values()):
        return "does not hold"
    outcomes = [f["miou"].outcome for f in findings.values()]
    if "not enough runs" in outcomes:
        miou = "its mIoU cost: not enough runs"
    elif "worse" in outcomes:
        miou = "at an mIoU cost beyond the seed spread at some stride"
    else:
        miou = "with no mIoU loss beyond the seed spread"
    return f"holds (cost cut), {miou}"


def speed_note(findings: Mapping[int, dict]) -> str:
    """What the measured images/s say of the FLOPs cut."""
    speeds = [f["speed"] for f in findings.values() if f["speed"] is not None]
    if not speeds:
        return "no speed measured"
    verb = ("faster" if min(speeds) > 1 else "slower" if max(speeds) < 1
            else "faster at one stride and slower at the other")
    return (f"measured on this machine, separable ASPP runs {verb} (images/s ratio "
            f"{min(speeds):.2f}-{max(speeds):.2f})")


def separable_section(findings: Mapping[int, dict]) -> str:
    lines = ["## Separable ASPP against dense ASPP with the same rates (6, 12, 18)", "",
             "Ratios separable / dense (below 1: separable is cheaper, or slower for images/s); "
             "the mIoU difference in points with the same noise rule. `separable` also makes the "
             "head's 3x3 conv separable.", "",
             "| output stride | params (model) | params (context module) | FLOPs | images/s | "
             "mIoU difference |", "|---:|---:|---:|---:|---:|---|"]
    for stride, f in findings.items():
        lines.append(f"| {stride} | {_ratio(f['params'])} | {_ratio(f['context_params'])} | "
                     f"{_ratio(f['flops'])} | {_ratio(f['speed'])} | {_points(f['miou'])} |")
    return "\n".join(lines)


def best_rates(rows: Mapping[Arm, report.Row], stride: int, crop: int) -> tuple[str | None, str]:
    """(the rate set of highest mean mIoU, whether it beats the runner-up beyond noise: 'clear',
    'within noise' or 'not enough runs') among the rate arms at this stride and crop."""
    ranked = sorted(((rows[Arm(v, stride, crop)].stat(MIOU), v) for v in RATE_VARIANTS
                     if Arm(v, stride, crop) in rows and rows[Arm(v, stride, crop)].stat(MIOU).n),
                    key=lambda pair: -pair[0].mean)
    if not ranked:
        return None, "not enough runs"
    if len(ranked) < len(RATE_VARIANTS):
        return ranked[0][1], "not enough runs"
    outcome = compare(ranked[0][0], ranked[1][0]).outcome
    return ranked[0][1], {"better": "clear"}.get(outcome, outcome)


def crop_answer(bests: Mapping[int, dict[int, tuple]]) -> str:
    """Yes where some stride has different clear winners at the two crops; no where every
    stride has the same clear winner at both; not resolved otherwise."""
    if any(state == "not enough runs" for per_crop in bests.values()
           for _, state in per_crop.values()):
        return "not enough runs"
    answers = []
    for per_crop in bests.values():
        winners = {best for best, _ in per_crop.values()}
        clear = all(state == "clear" for _, state in per_crop.values())
        answers.append("yes" if clear and len(winners) > 1 else
                       "no" if clear else "not resolved by the seeds")
    if "yes" in answers:
        return "yes"
    return "no" if all(a == "no" for a in answers) else "not resolved by the seeds"


def crop_section(rows: Mapping[Arm, report.Row], crops: Sequence[int]) -> tuple[str, str]:
    lines = ["## Does the best rate set depend on the crop size? (a training-crop experiment)", "",
             f"The rate arms trained again on {crops[1]} px crops instead of {crops[0]}, all else "
             f"equal, and scored on the same full validation images. It varies the training crop "
             f"only: the evaluation images keep their size, so it says how the crop seen in "
             f"training changes the rates' value, not how inference on larger images would.", "",
             "| output stride | rates | " + " | ".join(f"mIoU (%), crop {c}" for c in crops) +
             f" | change ({crops[1]} - {crops[0]}) |", "|---:|---|" + "---:|" * (len(crops) + 1)]
    bests = {}
    for stride in OUTPUT_STRIDES:
        for variant in RATE_VARIANTS:
            stats = [rows[Arm(variant, stride, c)].stat(MIOU) if Arm(variant, stride, c) in rows
                     else report.Stat(None, None, 0, (), ()) for c in crops]
            cells = [report.format_stat(s, METRICS[0]) for s in stats]
            lines.append(f"| {stride} | {variant} | " + " | ".join(cells) + " | " +
                         _points(compare(stats[1], stats[0])) + " |")
        bests[stride] = {c: best_rates(rows, stride, c) for c in crops}
    lines += ["", "| output stride | " + " | ".join(f"best at crop {c}" for c in crops) + " |",
              "|---:|" + "---|" * len(crops)]
    for stride, per_crop in bests.items():
        lines.append(f"| {stride} | " + " | ".join(
            f"{best or 'none'} ({state})" for best, state in per_crop.values()) + " |")
    answer = crop_answer(bests)
    lines += ["", f"**Does the best rate set depend on the crop size: {answer}.** (*clear*: the "
              "best set beats the runner-up by more than the larger seed std.)"]
    return "\n".join(lines), answer


# ----------------------------------------------------------------------------------------------
# The cost and accuracy table, and the figure


def _gflops(cost) -> str:
    return f"{cost.flops / 1e9:.4f}" if cost else "n/a"


def cost_section(rows: Mapping[Arm, report.Row], costs: Mapping, setup: Mapping,
                 crop: int) -> str:
    options = setup.get("compiler_options")
    compiled_with = f"; compiled with XLA options {options}" if options else ""
    lines = ["## Cost and accuracy", "",
             f"Parameters; XLA's FLOPs of the eval-mode forward pass per {setup['image_size']} px "
             f"image (a multiply-add counts 2; XLA does not count taps that read padding, so "
             f"large rates on small maps count fewer); images/s of that compiled pass on batches "
             f"of {setup['batch']} with random weights, median of {setup['rounds']} rounds of "
             f"{setup['calls']} call(s) per arm, every arm in this process after a warm-up, "
             f"rounds interleaved (the slowest and fastest round in brackets)"
             f"{compiled_with}; mIoU on {crop} px training crops.", "",
             "| context module | output stride | params | context params | GFLOPs / image | "
             "images/s | mIoU (%) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for stride in OUTPUT_STRIDES:
        for variant in VARIANTS:
            cost, row = costs.get((variant, stride)), rows.get(Arm(variant, stride, crop))
            speed = (f"{cost.images_per_s:.1f} ({cost.images_per_s_range[0]:.1f}-"
                     f"{cost.images_per_s_range[1]:.1f})" if cost else "n/a")
            lines.append(
                f"| {variant} | {stride} | {f'{cost.params:,}' if cost else 'n/a'} | "
                f"{f'{cost.context_params:,}' if cost else 'n/a'} | {_gflops(cost)} | {speed} | "
                f"{report.format_stat(row.stat(MIOU), METRICS[0]) if row else 'no runs'} |")
    return "\n".join(lines)


_MARKERS = {8: "o", 16: "s"}


def draw_figure(rows: Mapping[Arm, report.Row], costs: Mapping, crops: Sequence[int],
                smoke: bool) -> Callable[[str], None]:
    """A `draw(path)` for write_report: mIoU against GFLOPs and against images/s (each arm a
    point with its seed std; circles OS 8, squares OS 16), and mIoU of the rate sets at the two
    crops."""
    from matplotlib.figure import Figure

    from experiments.studies import plots

    def draw(path: str) -> None:
        fig = Figure(figsize=(16, 5.2), layout="constrained")
        cost_axes = fig.subplots(1, 3)
        for ax, x_of, x_label in (
                (cost_axes[0], lambda c: c.flops / 1e9, "GFLOPs / image (XLA)"),
                (cost_axes[1], lambda c: c.images_per_s, "images / s (measured)")):
            for color, variant in enumerate(VARIANTS):
                for stride in OUTPUT_STRIDES:
                    row, cost = rows.get(Arm(variant, stride, crops[0])), costs.get(
                        (variant, stride))
                    stat = row.stat(MIOU) if row else None
                    if not cost or not stat or not stat.n:
                        continue
                    ax.errorbar(x_of(cost), 100 * stat.mean, yerr=100 * (stat.std or 0.0),
                                fmt=_MARKERS[stride], color=f"C{color}", capsize=3,
                                label=f"{variant}, OS {stride}")
            ax.set_xlabel(x_label)
            ax.set_ylabel(f"mIoU (%), crop {crops[0]}")
            ax.grid(alpha=0.3)
        cost_axes[0].legend(fontsize="x-small", ncol=2)
        ax = cost_axes[2]
        for color, variant in enumerate(RATE_VARIANTS, start=1):
            for stride in OUTPUT_STRIDES:
                pts = [(c, rows[Arm(variant, stride, c)].stat(MIOU)) for c in crops
                       if Arm(variant, stride, c) in rows]
                pts = [(c, s) for c, s in pts if s.n]
                if pts:
                    ax.errorbar([c for c, _ in pts], [100 * s.mean for _, s in pts],
                                yerr=[100 * (s.std or 0.0) for _, s in pts],
                                marker=_MARKERS[stride], color=f"C{color}", capsize=3,
                                linestyle="-" if stride == 8 else "--",
                                label=f"{variant}, OS {stride}")
        ax.set_xticks(list(crops))
        ax.set_xlabel("training crop (px)")
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
        fig.suptitle("ASPP: cost against accuracy, and the rate sets at two crops" +
                     ("\nSMOKE TEST (--quick): says nothing about the claim" if smoke else ""),
                     color="tab:red" if smoke else "black", fontsize="medium")
        plots.save_figure(fig, path)

    return draw


# ----------------------------------------------------------------------------------------------
# The page


def _verdict_section(context: Mapping[str, str], separable: str, speed: str, crop: str) -> str:
    return "\n".join([
        "## Verdict", "",
        f"- Several atrous rates beat no ASPP (every rate set, both strides, beyond the seed "
        f"spread): **{context[NO_ASPP]}**.",
        f"- Several atrous rates beat image pooling only (the same test): "
        f"**{context[POOLING_ONLY]}**.",
        f"- Depthwise-separable ASPP cuts FLOPs and parameters: **{separable}**; {speed}.",
        f"- The best rate set depends on the training crop size: **{crop}**.",
        "", "*holds*: every comparison better beyond the larger seed std; *does not hold*: none "
        "is; *mixed*: some are; *not enough runs*: some arm has fewer than 2 finished seeds."])


def _notes(config, crops: Sequence[int], split: str, quick: bool) -> list[str]:
    m = config.model
    shortened = "" if quick else (" (the main job trains 2,400 at output stride 8; the study "
                                  "halves that so that its 54 runs fit a 2-core CPU)")
    context_in = 8 * m.base_width  # ResNet-18's last stage: 8 x the base width
    return [
        "**Claim** (design text): ASPP's parallel atrous rates capture context at several "
        "scales, image pooling adds global context, and depthwise-separable convolutions cut "
        "the cost. **It holds** where every rate set beats both no ASPP and image pooling only "
        "by more than the seed spread, and separable ASPP has fewer FLOPs and parameters; **it "
        "fails** where the rate arms do not beat the baselines, or separable does not cut "
        "the cost.",
        f"Every run is the `shapes` main job's model and optimiser (configs/shapes.py: "
        f"DeepLabV3, ResNet-18 of base width {m.base_width}, ASPP and head {m.aspp_channels} "
        f"wide, ASPP dropout {m.dropout_rate}, AdamW, cosine schedule) trained for "
        f"{config.num_train_steps} updates of batch {config.batch_size} on {crops[0]} px crops "
        f"(scale {config.data.min_scale}-{config.data.max_scale}){shortened}, one context "
        f"module and output stride per arm, and scored on `{split}` at full size.",
        f"The context modules: **no ASPP** replaces ASPP by one 1x1 conv ({context_in} -> "
        f"{m.aspp_channels} channels) + BN + ReLU with ASPP's dropout, so the head (3x3 conv "
        f"{m.aspp_channels} wide + BN + ReLU, then the 1x1 classifier) sees the backbone's "
        f"features at ASPP's width but no context of its own; **rates (...)** is DeepLabv3's "
        f"ASPP (a 1x1 branch, one 3x3 branch per rate, image pooling, a 1x1 projection); "
        f"**image pooling only** keeps its 1x1 and pooling branches and drops the atrous ones; "
        f"**separable** makes the atrous branches (and the head's 3x3 conv) depthwise 3x3 + "
        f"pointwise 1x1. The paper pairs (6, 12, 18) with output stride 16 and (12, 24, 36) "
        f"with 8; both sets run at both strides here.",
    ]


def make_report(runs, args: driver.StudyArgs, seconds: float,
                measure: Callable[[bool], tuple[dict, dict]] = study_costs) -> None:
    """The page: the shared table, the cost and accuracy table, which taps are live, the
    comparisons, the crop experiment and the verdict. `measure(quick)` gives (costs by
    (variant, output stride), how they were measured): `study_costs` compiles and times every
    architecture here."""
    from seg_jax.data.shapes import IMAGE_SIZE

    crops = crop_sizes(args.quick)
    groups = group_arms(runs, crops[0])
    rows = {arm: row for arm, row in zip(groups, report.summarise(
        {arm.label: arm_runs for arm, arm_runs in groups.items()}, METRICS))}
    costs, setup = measure(args.quick)
    config = get_config("quick" if args.quick else None)
    context, context_verdicts = context_section(rows, crops[0])
    findings = separable_findings(rows, costs, crops[0])
    crop_text, crop_verdict = crop_section(rows, crops)
    report.write_report(
        args.out, NAME, "ASPP: atrous rates, image pooling and separable convolutions",
        list(rows.values()), METRICS, command=args.command, wall_time=seconds,
        notes=_notes(config, crops, config.data.eval_split, args.quick), smoke=args.quick,
        sections=[cost_section(rows, costs, setup, crops[0]), taps_section(IMAGE_SIZE, crops),
                  context, separable_section(findings), crop_text,
                  _verdict_section(context_verdicts, separable_verdict(findings),
                                   speed_note(findings), crop_verdict)],
        draw=draw_figure(rows, costs, crops, args.quick))


def main(argv=None) -> int:
    return driver.run_study(__file__, NAME, make_report, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
