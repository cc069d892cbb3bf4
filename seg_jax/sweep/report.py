"""A sweep's results: W/sweep_results.md, .csv and .png, rebuilt from the points' workdirs.

`collect_results(W)` ranks the points by the main metric (PQ when the runs are panoptic, else
mean IoU); it works at any time, also on a sweep still running or partly failed.
"""

from __future__ import annotations

import csv
import io
import os

from seg_jax.reporting import atomic_write, format_duration
from seg_jax.sweep.declare import canonical, display_value, point_names
from seg_jax.sweep.points import Point, SweepError
from seg_jax.sweep.status import (LOG_FILE, MANIFEST, STATUS_FILE, headline, now, point_state,
                                  read_json)

RESULTS_MD = "sweep_results.md"
RESULTS_CSV = "sweep_results.csv"
RESULTS_PNG = "sweep_results.png"

_METRICS = (("mean_iou", "mIoU"), ("pixel_accuracy", "pixel acc."),
            ("boundary_f_score", "boundary F"), ("pq", "PQ"))
_METRIC_TITLES = {"mean_iou": "mean IoU", "pq": "panoptic quality (PQ)"}


def _as_points(workdir: str, points) -> tuple[list[Point], str | None]:
    manifest = read_json(os.path.join(workdir, MANIFEST)) or {}
    if points is None:
        if not manifest.get("points"):
            raise SweepError(f"No {MANIFEST} in {workdir}: pass the points (e.g. "
                             f"seg_jax.sweep.load_sweep('configs/x.py')).")
        points = [Point(index=m["index"], name=m["name"], overrides=m["overrides"],
                        num_train_steps=m.get("num_train_steps")) for m in manifest["points"]]
    else:
        points = list(points)
        if not all(isinstance(p, Point) for p in points):
            points = [Point(index=i, name=n, overrides=dict(p))
                      for i, (n, p) in enumerate(zip(point_names(points), points))]
    return points, manifest.get("config")


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else ""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row(workdir: str, p: Point, paths: list[str]) -> dict:
    state = point_state(os.path.join(workdir, p.name), p.num_train_steps)
    results, record = state["results"] or {}, state["record"] or {}
    return {"index": p.index, "name": p.name, "status": state["status"],
            **{path: p.overrides.get(path) for path in paths},
            **{key: results.get(key) for key, _ in _METRICS},
            "step": results.get("step"), "wall_time_s": record.get("wall_time_s"),
            "exit_code": record.get("exit_code"),
            "error": (headline(record.get("error") or [])
                      if state["status"] in ("failed", "interrupted") else None)}


def collect_results(workdir: str, points=None) -> list[dict]:
    """Writes workdir/sweep_results.md, .csv and .png from the points' workdirs; returns the rows.

    Args:
      workdir: the sweep's workdir (the points' runs are in workdir/<point name>/).
      points: Points (from `resolve`), a Sweep or list of override dicts (named as the runner
        names them), or None for the points recorded in workdir/sweep.json by the runner.

    One row per point, best first by the main metric (PQ when the runs are panoptic, else mean
    IoU); points without results (failed, running, pending) follow in sweep order. Works on a
    sweep that is still running or partly failed: the rows say each point's status.
    """
    workdir = os.path.abspath(workdir)
    points, config_arg = _as_points(workdir, points)
    paths = list(dict.fromkeys(path for p in points for path in p.overrides))
    rows = [_row(workdir, p, paths) for p in points]
    panoptic = any(r["pq"] is not None for r in rows)
    main = "pq" if panoptic else "mean_iou"
    scored = sorted((r for r in rows if isinstance(r[main], (int, float))),
                    key=lambda r: (-r[main], r["index"]))
    rows = scored + [r for r in rows if r not in scored]
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row in scored else None
    metrics = [(k, t) for k, t in _METRICS if k != "pq" or panoptic]
    atomic_write(os.path.join(workdir, RESULTS_MD),
                 _markdown(rows, paths, metrics, main, config_arg))
    atomic_write(os.path.join(workdir, RESULTS_CSV), _csv(rows, paths, metrics))
    _plot(os.path.join(workdir, RESULTS_PNG), rows, paths, main, config_arg)
    return rows


def _markdown(rows, paths, metrics, main, config_arg) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    esc = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = [f"# Sweep results{f': `{config_arg}`' if config_arg else ''}", "",
             f"{len(rows)} points ({', '.join(f'{n} {s}' for s, n in counts.items())}); ranked by "
             f"{_METRIC_TITLES[main]}, best first. Rebuilt {now()}.", "",
             "| rank | point | " + " | ".join(paths) + (" | " if paths else "")
             + " | ".join(t for _, t in metrics) + " | status | wall time |",
             "|---:|---|" + "---|" * len(paths) + "---:|" * len(metrics) + "---|---:|"]
    for r in rows:
        status = r["status"] + (f" (exit {r['exit_code']})" if r["status"] == "failed" else "")
        cells = [str(r["rank"] or "-"), f"`{r['name']}`",
                 *[esc(display_value(r[p])) if r[p] is not None else "" for p in paths],
                 *[_pct(r[k]) for k, _ in metrics], status,
                 format_duration(r["wall_time_s"]) if r["wall_time_s"] is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", f"Not finished (the end of each log is in `<point>/{STATUS_FILE}`, the whole "
                      f"log in `<point>/{LOG_FILE}` when --sweep ran it; running the sweep again "
                      f"retries them):", ""]
        lines += [f"- `{r['name']}` ({r['status']}, exit {r['exit_code']}): {esc(r['error'])}"
                  for r in failed]
    return "\n".join(lines) + "\n"


def _csv(rows, paths, metrics) -> str:
    columns = ["rank", "index", "name", "status", *paths, *(k for k, _ in metrics), "step",
               "wall_time_s", "exit_code", "error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else (display_value(r[c]) if c in paths else r[c])
                         for c in columns])
    return buffer.getvalue()


def _grid(fig, by_index, scored, varying, main):
    """A line per value of one swept path against the other along x (numbers on x when one of
    them is numeric, else the path with more values; the faster-varying one on a tie)."""
    a, b = varying
    numeric = {p: all(_is_number(r[p]) for r in by_index) for p in varying}
    distinct = {p: len({repr(canonical(r[p])) for r in by_index}) for p in varying}
    if numeric[a] != numeric[b]:
        x_path = a if numeric[a] else b
    else:
        x_path = a if distinct[a] > distinct[b] else b
    line_path = b if x_path == a else a
    ax = fig.add_subplot()
    x_values = list(dict.fromkeys(canonical(r[x_path]) for r in by_index))
    if numeric[x_path]:
        x_values.sort()
        position = {v: v for v in x_values}
        # Values spaced by factors (1e-3, 3e-3, 1e-2) read best on a log axis.
        if all(v > 0 for v in x_values) and max(x_values) / min(x_values) >= 3:
            ax.set_xscale("log")
    else:
        position = {v: i for i, v in enumerate(x_values)}
    for line_value in dict.fromkeys(canonical(r[line_path]) for r in by_index):
        pts = sorted((position[canonical(r[x_path])], 100 * r[main]) for r in scored
                     if canonical(r[line_path]) == line_value)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=display_value(line_value))
    ax.set_xticks([position[v] for v in x_values], [display_value(v) for v in x_values])
    ax.minorticks_off()
    ax.set_xlabel(x_path)
    if scored:
        ax.legend(title=line_path, fontsize="small")
    return ax


def _bars(fig, by_index, varying, main):
    """A bar per point, labelled by the value of the one swept path (else by the point's name)."""
    ax = fig.add_subplot()
    one_axis = len(varying) == 1 and all(r[varying[0]] is not None for r in by_index)
    labels = [display_value(r[varying[0]]) if one_axis else r["name"] for r in by_index]
    heights = [100 * r[main] if _is_number(r[main]) else 0.0 for r in by_index]
    bars = ax.bar(range(len(by_index)), heights, color="tab:blue")
    for bar, r, h in zip(bars, by_index, heights):
        text = f"{h:.1f}" if _is_number(r[main]) else r["status"]
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, h), ha="center", va="bottom",
                    fontsize="small", xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(by_index)), labels, rotation=0 if one_axis else 30,
                  ha="center" if one_axis else "right", fontsize="small")
    ax.set_xlabel(varying[0] if one_axis else "point")
    return ax


def _plot(path: str, rows, paths, main, config_arg) -> None:
    """The main metric across the swept values: a line per value of one path against the other
    for a two-path grid, bars (one per point) otherwise. Object-oriented matplotlib: no pyplot,
    so a notebook's backend is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_index = sorted(rows, key=lambda r: r["index"])
    varying = [p for p in paths if len({repr(canonical(r[p])) for r in by_index}) > 1]
    scored = [r for r in by_index if _is_number(r[main])]
    if len(varying) == 2 and all(r[p] is not None for r in by_index for p in varying):
        fig = Figure(figsize=(7, 4.5))
        ax = _grid(fig, by_index, scored, varying, main)
    else:
        fig = Figure(figsize=(max(6.0, 0.7 * len(by_index) + 2), 4.5))
        ax = _bars(fig, by_index, varying, main)
    ax.set_ylabel(f"{_METRIC_TITLES[main]} (%)")
    ax.set_title(f"{config_arg or 'sweep'}: {_METRIC_TITLES[main]}\n"
                 f"({len(scored)} of {len(rows)} points finished)", fontsize="medium")
    ax.grid(alpha=0.3)
    tmp = f"{path}.{os.getpid()}.tmp"
    FigureCanvasAgg(fig)
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
