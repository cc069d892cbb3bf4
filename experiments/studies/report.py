"""The report step every study shares: a sweep's runs, averaged over seeds, as a page and a figure.

    runs = load_runs("runs/studies/tversky")            # every point of the sweep, any state
    rows = summarise(group_by_arm(runs), [Metric("mean_iou", "mIoU", percent=True)])
    write_report("docs/studies", "tversky", "Tversky beta", rows, metrics, command=...)

An arm is a setting under test: a point's overrides without its seed. Each row of the report is
one arm with, per metric, the mean ± sample std over the arm's seeds and n, the number of runs
that gave a value. A run without results (failed, interrupted, still running, not started) is
never averaged in: the table counts it and the page lists it. Nothing here imports JAX, so a
report can be rebuilt while the sweep's points are still training. The figures are drawn by
`experiments.studies.plots`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from seg_jax.reporting import atomic_write, format_duration
from seg_jax.sweep.declare import canonical, point_names
from seg_jax.sweep.status import MANIFEST, headline, now, point_state, read_json

BASELINE = "baseline"  # the label of the arm without overrides


# ----------------------------------------------------------------------------------------------
# Runs, arms and metrics


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of a study's sweep, as its workdir stands now."""
    index: int  # the point's place in the sweep
    name: str  # its workdir's name under the sweep's workdir
    path: str  # its workdir
    overrides: dict  # {config path: value}, the seed included when the sweep sets it
    status: str  # point_state's: done, failed, interrupted, running, incomplete or pending
    results: dict | None  # results.json of a finished run; None otherwise
    wall_time_s: float | None  # summed over its attempts, from its status record
    seed: int
    error: str | None = None  # why a failed or interrupted run stopped (its error's headline)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A score to report: a results path ('mean_iou', 'per_class_iou/bar', 'ema/mean_iou'), its
    column title, and whether it is a fraction in [0, 1] shown in percent."""
    path: str
    title: str | None = None
    percent: bool = False

    @property
    def label(self) -> str:
        return self.title or self.path


def as_metrics(metrics: Sequence[Metric | str]) -> list[Metric]:
    return [m if isinstance(m, Metric) else Metric(m) for m in metrics]


def _seed(overrides: Mapping, point_dir: str, seed_key: str) -> int:
    if seed_key in overrides:
        return int(overrides[seed_key])
    value = read_json(os.path.join(point_dir, "config.json"))  # the resolved config the run saved
    for key in seed_key.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def load_runs(sweep_workdir: str, *, seed_key: str = "seed") -> list[Run]:
    """Every point of the sweep recorded in `sweep_workdir`/sweep.json, in sweep order.

    Works at any time: on a sweep still running, a point not started is 'pending' and one
    training is 'running', both without results. The seed is the point's `seed_key` override,
    else the seed in its config.json, else 0.
    """
    manifest = read_json(os.path.join(sweep_workdir, MANIFEST))
    if not isinstance(manifest, dict) or not manifest.get("points"):
        raise FileNotFoundError(f"No sweep manifest {MANIFEST} in {sweep_workdir}: the study's "
                                f"sweep has not started there.")
    runs = []
    for entry in manifest["points"]:
        point_dir = os.path.join(sweep_workdir, entry["name"])
        state = point_state(point_dir, entry.get("num_train_steps"))
        record = state["record"] or {}
        stopped = state["status"] in ("failed", "interrupted") and record.get("error")
        runs.append(Run(index=entry["index"], name=entry["name"], path=point_dir,
                        overrides=dict(entry["overrides"]), status=state["status"],
                        results=state["results"], wall_time_s=record.get("wall_time_s"),
                        seed=_seed(entry["overrides"], point_dir, seed_key),
                        error=headline(record["error"]) if stopped else None))
    return runs


def group_by_arm(runs: Sequence[Run], *, seed_key: str = "seed") -> dict[str, list[Run]]:
    """{arm label: its runs}, arms in the order the runs first reach them.

    Labels read like point names without the seed ('loss=dice', 'beta=0.7'); the arm without
    overrides is 'baseline'.
    """
    arms: dict[str, dict] = {}
    members: dict[str, list[Run]] = {}
    for run in runs:
        overrides = {k: v for k, v in run.overrides.items() if k != seed_key}
        key = repr(sorted((k, canonical(v)) for k, v in overrides.items()))
        arms.setdefault(key, overrides)
        members.setdefault(key, []).append(run)
    labels = point_names(list(arms.values()))
    return {(label if overrides else BASELINE): members[key]
            for label, (key, overrides) in zip(labels, arms.items())}


def metric(run: Run, path: str) -> float | None:
    """The number at `path` in the run's results ('pq', 'per_class_iou/bar'); None when the run
    has no results, the path is missing, or the value is not a finite number."""
    value = run.results
    for key in path.split("/"):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# ----------------------------------------------------------------------------------------------
# Summary over seeds


@dataclasses.dataclass(frozen=True)
class Stat:
    """One metric of one arm over its seeds."""
    mean: float | None  # None when no run gave a value
    std: float | None  # sample std (ddof=1); None with fewer than two values
    n: int
    values: tuple[float, ...]
    seeds: tuple[int, ...]  # the seed of each value


@dataclasses.dataclass(frozen=True)
class Row:
    """One arm of the study: its runs and a Stat per metric path."""
    label: str
    runs: tuple[Run, ...]
    stats: dict[str, Stat]

    def stat(self, path: str) -> Stat:
        """The Stat of `path`, computed here for a metric `summarise` was not given."""
        return self.stats[path] if path in self.stats else _stat(self.runs, path)

    @property
    def done(self) -> tuple[Run, ...]:
        return tuple(r for r in self.runs if r.results is not None)

    @property
    def missing(self) -> tuple[Run, ...]:
        """The runs without results: never averaged, always reported."""
        return tuple(r for r in self.runs if r.results is None)


def _stat(runs: Sequence[Run], path: str) -> Stat:
    pairs = [(v, r.seed) for r in runs if (v := metric(r, path)) is not None]
    values = np.array([v for v, _ in pairs], dtype=np.float64)
    return Stat(mean=float(values.mean()) if len(values) else None,
                std=float(values.std(ddof=1)) if len(values) > 1 else None, n=len(values),
                values=tuple(v for v, _ in pairs), seeds=tuple(s for _, s in pairs))


def summarise(groups: Mapping[str, Sequence[Run]], metrics: Sequence[Metric | str]) -> list[Row]:
    """One Row per arm of `groups` (as `group_by_arm` gives them), in its order."""
    paths = [m.path for m in as_metrics(metrics)]
    return [Row(label=label, runs=tuple(runs), stats={p: _stat(runs, p) for p in paths})
            for label, runs in groups.items()]


# ----------------------------------------------------------------------------------------------
# Hardware


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpu_names() -> str | None:
    """The GPUs nvidia-smi lists ('1 x NVIDIA H200'); None without nvidia-smi or GPUs. Asking
    nvidia-smi leaves the GPUs alone, where asking JAX would claim their memory."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    counts = Counter(line.strip() for line in out.splitlines() if line.strip())
    return ", ".join(f"{n} x {name}" for name, n in counts.items()) or None


def hardware_description(gpu: str | None = None) -> str:
    """'AMD EPYC, 2 logical cores (Linux x86_64); no GPU': the CPU from /proc/cpuinfo (else
    platform), the cores this process may use, and `gpu` or the GPUs nvidia-smi lists."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = (f"{_cpu_model() or 'unknown CPU'}, {cores} logical cores "
            f"({platform.system()} {platform.machine()})")
    gpu = gpu or _gpu_names()
    return f"{text}; GPU: {gpu}" if gpu else f"{text}; no GPU"


# ----------------------------------------------------------------------------------------------
# The page


def _number(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:,.0f}" if 1e4 <= abs(value) < 1e12 else f"{value:.3e}"


def format_number(value: float, m: Metric) -> str:
    """A value as the table shows it: percent with 2 decimals for scores, else 4 digits."""
    return f"{100 * value:.2f}" if m.percent else _number(value)


def format_stat(stat: Stat, m: Metric) -> str:
    """'89.12 ± 0.34 (n=3)'; '89.12 (n=1)' for a single value; 'no results (n=0)'."""
    if stat.n == 0:
        return "no results (n=0)"
    spread = f" ± {format_number(stat.std, m)}" if stat.std is not None else ""
    return f"{format_number(stat.mean, m)}{spread} (n={stat.n})"


def _esc(text) -> str:
    return str(text).replace("|", "\\|")


def _runs_cell(row: Row) -> str:
    text = f"{len(row.done)} of {len(row.runs)}"
    if row.missing:
        counts = Counter(r.status for r in row.missing)
        text += " (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"
    return text


def _wall_time_line(runs: Sequence[Run], wall_time: float | None) -> str:
    times = [r.wall_time_s for r in runs if r.wall_time_s is not None]
    parts = [f"{format_duration(wall_time)} for the whole study"] if wall_time is not None else []
    if times:
        parts.append(f"{format_duration(sum(times))} summed over {len(times)} runs; per run "
                     f"{format_duration(sum(times) / len(times))} on average "
                     f"({format_duration(min(times))} to {format_duration(max(times))})")
    else:
        parts.append("no run has recorded its wall time yet")
    return "; ".join(parts)


def _missing_lines(rows: Sequence[Row], metrics: Sequence[Metric]) -> list[str]:
    lines = []
    for row in rows:
        for run in row.missing:
            why = f": {_esc(run.error)}" if run.error else ""
            lines.append(f"- {_esc(row.label)}, seed {run.seed} (`{run.name}`): {run.status}{why}")
        for m in metrics:
            for run in row.done:
                if metric(run, m.path) is None:
                    lines.append(f"- {_esc(row.label)}, seed {run.seed} (`{run.name}`): finished "
                                 f"without `{m.path}`")
    if not lines:
        return []
    return ["", "## Runs without results", "",
            "Counted in the table's *runs* column and left out of every mean; rerunning the "
            "study resumes or retries them.", "", *lines]


def _per_run_lines(rows: Sequence[Row], metrics: Sequence[Metric]) -> list[str]:
    lines = ["", "<details><summary>Every run</summary>", "",
             "| arm | seed | status | " + " | ".join(_esc(m.label) for m in metrics) + " |",
             "|---|---:|---|" + "---:|" * len(metrics)]
    for row in rows:
        for run in row.runs:
            values = [metric(run, m.path) for m in metrics]
            lines.append(f"| {_esc(row.label)} | {run.seed} | {run.status} | " + " | ".join(
                "" if v is None else format_number(v, m) for v, m in zip(values, metrics)) + " |")
    return lines + ["", "</details>"]


SMOKE_LINE = ("> **Smoke-test output (`--quick`): a tiny model trained for a few steps. These "
              "figures only show that the study runs end to end; they say nothing about the "
              "claim.**")


def stats_table(rows: Sequence[Row], metrics: Sequence[Metric | str], *,
                first_column: str = "arm") -> list[str]:
    """The lines of a Markdown table: one row per arm, a cell of mean ± std (n) per metric, and
    how many of the arm's runs gave results."""
    metrics = as_metrics(metrics)
    lines = [f"| {first_column} | " + " | ".join(_esc(m.label) + (" (%)" if m.percent else "")
                                                for m in metrics) + " | runs |",
             "|---|" + "---:|" * len(metrics) + "---|"]
    for row in rows:
        lines.append(f"| {_esc(row.label)} | " + " | ".join(
            format_stat(row.stat(m.path), m) for m in metrics) + f" | {_runs_cell(row)} |")
    return lines


def markdown_report(title: str, rows: Sequence[Row], metrics: Sequence[Metric | str], *,
                    command: str, hardware: str | None = None, wall_time: float | None = None,
                    seeds: Sequence[int] | None = None, notes: str | Sequence[str] = (),
                    smoke: bool = False, figure: str | None = None,
                    sections: Sequence[str] = ()) -> str:
    """The study's page: title, smoke warning, how it was made, notes, the table of mean ± std
    (n) per arm and metric, the figure, further sections (Markdown the study adds: more tables,
    figures, its verdict), the runs without results, and every run's values.

    hardware: default `hardware_description()`. wall_time: the whole study's seconds, if known;
    the runs' own wall times are always summed and averaged. seeds: default every run's seed.
    notes: paragraphs (what was shortened and why, what the claim predicts). figure: a file
    name to embed.
    """
    metrics = as_metrics(metrics)
    # A training run may feed several arms (one checkpoint scored under several decision rules):
    # each run counts once, by its workdir, with its wall time from whichever arm carries it
    # (studies put it in one arm only, so that the arms' sums do not count it again).
    by_path: dict[str, Run] = {}
    for row in rows:
        for r in row.runs:
            if r.path not in by_path or by_path[r.path].wall_time_s is None:
                by_path[r.path] = r
    runs = list(by_path.values())
    seeds = sorted(set(seeds if seeds is not None else (r.seed for r in runs)))
    notes = [notes] if isinstance(notes, str) else list(notes)
    lines = [f"# {title}{' (smoke test)' if smoke else ''}", ""]
    if smoke:
        lines += [SMOKE_LINE, ""]
    lines += [f"- Command: `{command}`",
              f"- Hardware: {hardware or hardware_description()}",
              f"- Wall time: {_wall_time_line(runs, wall_time)}",
              f"- Seeds: {', '.join(map(str, seeds)) or 'none'} ({len(runs)} training runs "
              f"in {len(rows)} arms; n in each cell counts the runs that gave the value)",
              f"- Written: {now()}", ""]
    for note in notes:
        lines += [note, ""]
    if any(m.percent for m in metrics):
        lines += ["Scores marked (%) are in percent; each cell is mean ± sample std over seeds "
                  "(n runs).", ""]
    lines += stats_table(rows, metrics)
    if figure:
        lines += ["", f"![{_esc(title)}]({figure})"]
    for section in sections:
        lines += ["", section.rstrip("\n")]
    lines += _missing_lines(rows, metrics) + _per_run_lines(rows, metrics)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Both files


def write_report(out_dir: str, name: str, title: str, rows: Sequence[Row],
                 metrics: Sequence[Metric | str], *, command: str,
                 x_values: Sequence[float] | None = None, x_label: str = "",
                 hardware: str | None = None, wall_time: float | None = None,
                 seeds: Sequence[int] | None = None, notes: str | Sequence[str] = (),
                 smoke: bool = False, sections: Sequence[str] = (),
                 draw: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Writes `out_dir/<name>.md` (`markdown_report`) and `out_dir/<name>.png`: `draw(path)`
    when given (a study's own figure; it must write the PNG atomically, as `plots` does), else
    `plots.line_plot` against `x_values` when given, else `plots.bar_plot`. Returns the paths."""
    from experiments.studies import plots  # plots imports this module

    os.makedirs(out_dir, exist_ok=True)
    md_path, png_path = (os.path.join(out_dir, f"{name}.{ext}") for ext in ("md", "png"))
    if draw is not None:
        draw(png_path)
    elif x_values is not None:
        plots.line_plot(png_path, rows, x_values, metrics, x_label=x_label, title=title,
                        smoke=smoke)
    else:
        plots.bar_plot(png_path, rows, metrics, title=title, smoke=smoke)
    atomic_write(md_path, markdown_report(
        title, rows, metrics, command=command, hardware=hardware, wall_time=wall_time,
        seeds=seeds, notes=notes, smoke=smoke, figure=os.path.basename(png_path),
        sections=sections))
    return md_path, png_path
