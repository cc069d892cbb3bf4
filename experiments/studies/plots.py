"""The study figures: grouped bars per arm, or a line over a one-value sweep, with the seeds.

Object-oriented matplotlib on the Agg canvas (no pyplot, no display needed); each figure is
written to a temporary file and renamed, so a reader never sees a partial PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from experiments.studies.report import Metric, Row, as_metrics


def _panels(metrics: Sequence[Metric]) -> list[list[Metric]]:
    """Metrics that share an axis: all percent scores on one, each plain metric on its own."""
    scores = [m for m in metrics if m.percent]
    return ([scores] if scores else []) + [[m] for m in metrics if not m.percent]


def _figure(n_panels: int, width: float, title: str | None, smoke: bool):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 3.6 * n_panels + 0.6), layout="constrained")
    axes = fig.subplots(n_panels, 1, squeeze=False)[:, 0]
    heading = (title or "") + ("\nSMOKE TEST (--quick): says nothing about the claim"
                               if smoke else "")
    if heading:
        fig.suptitle(heading, color="tab:red" if smoke else "black", fontsize="medium")
    return fig, axes


def save_figure(fig, path: str) -> None:
    """Renders `fig` on the Agg canvas into `path` (PNG) through a temporary file and a rename."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = f"{path}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)


def _scale(m: Metric) -> float:
    return 100.0 if m.percent else 1.0


def _ylabel(panel: Sequence[Metric]) -> str:
    return "score (%)" if panel[0].percent else panel[0].label


def _dots_x(center: float, k: int, spread: float) -> np.ndarray:
    return center + (np.linspace(-spread, spread, k) if k > 1 else np.zeros(k))


def bar_plot(path: str, rows: Sequence[Row], metrics: Sequence[Metric | str], *,
             title: str | None = None, smoke: bool = False) -> None:
    """Grouped bars per arm (one per metric) at the mean, std as error bars, each seed a dot;
    an arm without values says 'n=0'. Written to `path` (PNG) atomically."""
    metrics = as_metrics(metrics)
    panels = _panels(metrics)
    fig, axes = _figure(len(panels), max(6.0, 0.5 * len(rows) * max(map(len, panels)) + 2),
                        title, smoke)
    x = np.arange(len(rows))
    for ax, panel in zip(axes, panels):
        width = 0.8 / len(panel)
        for j, m in enumerate(panel):
            xs = x + (j - (len(panel) - 1) / 2) * width
            stats = [row.stat(m.path) for row in rows]
            heights = [_scale(m) * s.mean if s.n else 0.0 for s in stats]
            errors = [_scale(m) * s.std if s.std is not None else 0.0 for s in stats]
            ax.bar(xs, heights, width, yerr=errors, capsize=3, color=f"C{j}", alpha=0.7,
                   label=m.label)
            for xi, s in zip(xs, stats):
                if s.n:
                    ax.scatter(_dots_x(xi, s.n, width / 4), _scale(m) * np.array(s.values),
                               s=12, color="black", zorder=3)
                else:
                    ax.annotate("n=0", (xi, 0), ha="center", va="bottom", fontsize="small")
        ax.set_xticks(x, [row.label for row in rows], rotation=30 if len(rows) > 4 else 0,
                      ha="right" if len(rows) > 4 else "center", fontsize="small")
        ax.set_ylabel(_ylabel(panel))
        ax.grid(axis="y", alpha=0.3)
        if len(panel) > 1:
            ax.legend(fontsize="small")
    save_figure(fig, path)


def line_plot(path: str, rows: Sequence[Row], x_values: Sequence[float],
              metrics: Sequence[Metric | str], *, x_label: str = "", title: str | None = None,
              smoke: bool = False) -> None:
    """For arms that sweep one value (`x_values`, one per row): a line through each metric's
    means, a band of ± std, each seed a dot. Written to `path` (PNG) atomically."""
    if len(x_values) != len(rows):
        raise ValueError(f"{len(x_values)} x values for {len(rows)} arms.")
    metrics = as_metrics(metrics)
    panels = _panels(metrics)
    fig, axes = _figure(len(panels), 7.0, title, smoke)
    for ax, panel in zip(axes, panels):
        for j, m in enumerate(panel):
            pts = [(float(x), row.stat(m.path)) for x, row in zip(x_values, rows)
                   if row.stat(m.path).n]
            if not pts:
                continue
            xs = np.array([x for x, _ in pts])
            means = np.array([_scale(m) * s.mean for _, s in pts])
            stds = np.array([_scale(m) * (s.std or 0.0) for _, s in pts])
            ax.plot(xs, means, marker="o", color=f"C{j}", label=m.label)
            ax.fill_between(xs, means - stds, means + stds, color=f"C{j}", alpha=0.2)
            for x, s in pts:
                ax.scatter(np.full(s.n, x), _scale(m) * np.array(s.values), s=12,
                           color=f"C{j}", edgecolors="black", linewidths=0.5, zorder=3)
        ax.set_xticks([float(x) for x in x_values], [f"{x:g}" for x in x_values])
        ax.set_xlabel(x_label)
        ax.set_ylabel(_ylabel(panel))
        ax.grid(alpha=0.3)
        if len(panel) > 1:
            ax.legend(fontsize="small")
    save_figure(fig, path)


