r"""The training-recipes sweep's results as a Markdown table and a bar chart.

    python -m seg_jax.main --config=configs/shapes_recipes.py --workdir=runs/recipes --sweep
    python experiments/training_recipes_report.py --workdir=runs/recipes --out=docs/recipes

Reads each finished point's results.json (the points recorded in the sweep's sweep.json, in
sweep order) and writes `<out>.md`: mIoU, the IoU of the rarest class and pixel accuracy of the
trained weights and of their moving average, per recipe, with the difference to the first point
(the baseline); and `<out>.png`: the same as grouped bars. Points without results are listed as
such. One seed per point: the table says so.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from seg_jax.sweep.status import MANIFEST  # noqa: E402


def load_points(workdir: str) -> list[dict]:
    """[{name, overrides, results or None}] in sweep order."""
    with open(os.path.join(workdir, MANIFEST)) as f:
        manifest = json.load(f)
    points = []
    for point in manifest["points"]:
        path = os.path.join(workdir, point["name"], "results.json")
        results = None
        if os.path.exists(path):
            with open(path) as f:
                results = json.load(f)
        points.append({"name": point["name"], "overrides": point["overrides"],
                       "results": results})
    return points


def _recipe(overrides: dict) -> str:
    if not overrides:
        return "baseline (plain cross-entropy)"
    return ", ".join(f"`{path.split('.', 1)[1]}={value}`" for path, value in overrides.items())


def _short_label(overrides: dict) -> str:
    """One line per override, 'option=value' (long values on a line of their own)."""
    if not overrides:
        return "baseline"
    lines = []
    for path, value in overrides.items():
        option = path.rsplit(".", 1)[-1]
        lines += [f"{option}=", str(value)] if len(f"{option}={value}") > 22 else [
            f"{option}={value}"]
    return "\n".join(lines)


def _scores(results: dict, rare: str) -> dict:
    ema = results.get("ema") or {}
    return {"miou": results["mean_iou"], "rare": results["per_class_iou"][rare],
            "acc": results["pixel_accuracy"], "ema_miou": ema.get("mean_iou"),
            "ema_rare": (ema.get("per_class_iou") or {}).get(rare)}


def _pct(value, base=None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * value:.2f}"
    if base is not None:
        text += f" ({100 * (value - base):+.2f})"
    return text


def markdown(points: list[dict], rare: str, command: str) -> str:
    done = [p for p in points if p["results"]]
    base = _scores(done[0]["results"], rare) if done and not done[0]["overrides"] else None
    lines = [
        f"# Training recipes on `shapes` (one seed each)", "",
        f"Each row is the main job (`configs/shapes.py`, 2400 updates) with one recipe on; "
        f"`{rare}` is the rarest class. Scores in % on the validation split, in brackets the "
        f"difference to the baseline; EMA: the moving average of the weights (decay 0.995) "
        f"evaluated alike. One seed per row, so differences smaller than the seed-to-seed "
        f"spread (not measured here) are not evidence either way.", "",
        f"Made by: `{command}`", "",
        f"| recipe | mIoU | {rare} IoU | pixel acc. | EMA mIoU | EMA {rare} IoU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        if not point["results"]:
            lines.append(f"| {_recipe(point['overrides'])} | no results | | | | |")
            continue
        s = _scores(point["results"], rare)
        b = base if point["overrides"] else None
        lines.append(
            f"| {_recipe(point['overrides'])} | {_pct(s['miou'], b and b['miou'])} | "
            f"{_pct(s['rare'], b and b['rare'])} | {_pct(s['acc'], b and b['acc'])} | "
            f"{_pct(s['ema_miou'], b and b['ema_miou'])} | "
            f"{_pct(s['ema_rare'], b and b['ema_rare'])} |")
    return "\n".join(lines) + "\n"


def plot(points: list[dict], rare: str, path: str) -> None:
    done = [p for p in points if p["results"]]
    scores = [_scores(p["results"], rare) for p in done]
    labels = [_short_label(p["overrides"]) for p in done]
    series = [("mIoU", "miou"), ("EMA mIoU", "ema_miou"), (f"{rare} IoU", "rare"),
              (f"EMA {rare} IoU", "ema_rare")]
    x = np.arange(len(done))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(done)), 4.2))
    for i, (title, key) in enumerate(series):
        values = [100 * (s[key] or 0.0) for s in scores]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=title)
    ax.set_xticks(x, labels, fontsize=8)
    lowest = min(100 * (s[key] or 0.0) for s in scores for _, key in series)
    ax.set_ylim(max(0.0, 10 * (lowest // 10) - 10), 100)  # the differences, not the bars' bulk
    ax.set_ylabel("IoU on validation (%)")
    ax.set_title("Training recipes on shapes (one seed each)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the sweep's workdir")
    parser.add_argument("--out", required=True, help="output path without suffix")
    parser.add_argument("--rare_class", default="bar")
    args = parser.parse_args()
    points = load_points(args.workdir)
    if not any(p["results"] for p in points):
        raise SystemExit(f"No point of {args.workdir} has results yet.")
    command = (f"python -m seg_jax.main --config=configs/shapes_recipes.py "
               f"--workdir=runs/recipes --sweep; python experiments/training_recipes_report.py "
               f"--workdir=runs/recipes --out={args.out}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(points, args.rare_class, command))
    plot(points, args.rare_class, args.out + ".png")
    print(open(args.out + ".md").read())


if __name__ == "__main__":
    main()
