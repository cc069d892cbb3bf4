"""A figure of `digits` scenes: image, semantic map and instance map, for train and validation.

Scenes are rendered exactly as the tfds builder renders its records (same per-example seeds), so
no files are needed. Train and validation scenes draw from disjoint pools of handwriting.

    python -m experiments.digits_examples                       # writes docs/digits_examples.png
    python -m experiments.digits_examples --num=6 --png=/tmp/d.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402

from seg_jax import visualize  # noqa: E402
from seg_jax.data import digits  # noqa: E402
from seg_jax.data import digits_render as dr  # noqa: E402

EXAMPLES_PER_ROW = 2  # each takes three panels: image | semantic | instances


def instance_palette(num: int, seed: int = 0) -> np.ndarray:
    """uint8 [num + 1, 3]: black for id 0 (no instance), then random bright colours.

    Instance ids carry no class, so their colours are arbitrary; a fixed seed keeps the figure
    stable between runs.
    """
    rng = np.random.default_rng(seed)
    colours = rng.integers(64, 256, size=(num + 1, 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def save_examples_png(path: str, num: int = 4) -> None:
    """Saves `num` train and `num` validation scenes in a grid at `path`."""
    scenes = [(split, i, digits.render_split_example(split, i))
              for split in ("train", "validation") for i in range(num)]
    rows = -(-len(scenes) // EXAMPLES_PER_ROW)
    cols = 3 * EXAMPLES_PER_ROW
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows + 0.7), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    inst_colours = instance_palette(dr.MAX_DIGITS)
    for k, (split, i, ex) in enumerate(scenes):
        r, c = divmod(k, EXAMPLES_PER_ROW)
        panels = axes[r, 3 * c: 3 * c + 3]
        panels[0].imshow(ex["image"])
        panels[0].set_title(f"{split} #{i}", fontsize=8)
        # 255 is the datasets' ignore label; digits has none, so every pixel gets its class colour.
        panels[1].imshow(visualize.colorize(ex["semantic"], dr.PALETTE, ignore_label=255))
        panels[1].set_title("semantic", fontsize=8)
        panels[2].imshow(inst_colours[ex["instance"]])
        panels[2].set_title(f"{ex['instance'].max()} instances", fontsize=8)
    handles = [Patch(facecolor=dr.PALETTE[c] / 255.0, edgecolor="black", label=name)
               for c, name in enumerate(dr.CLASS_NAMES)]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=4, help="scenes per split")
    parser.add_argument("--png", default="docs/digits_examples.png")
    args = parser.parse_args()
    save_examples_png(args.png, args.num)
    print(f"Saved {args.png}")


if __name__ == "__main__":
    main()
