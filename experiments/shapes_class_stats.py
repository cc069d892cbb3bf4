"""Class statistics of the built-in `shapes` dataset, as a Markdown table.

Renders examples exactly as the tfds builder does (same per-example seeds), so
no files are needed; `--from_tfds` reads the prepared splits instead.

    python experiments/shapes_class_stats.py
    python experiments/shapes_class_stats.py --num_train=500 \
        --png=docs/shapes_examples.png
"""

import argparse
import time

import numpy as np

from seg_jax.data import shapes
from seg_jax.data import shapes_render as sr


def split_examples(split, num, from_tfds, data_dir):
    """Yields the first `num` examples of `split` as numpy dicts."""
    if from_tfds:
        source = shapes.load_shapes(split, data_dir=data_dir)
        for i in range(min(num, len(source))):
            yield source[i]
    else:
        for i in range(num):
            yield shapes.render_split_example(split, i)


def class_stats(examples):
    """Per-class counts over `examples`.

    Returns:
      dict of int64 [NUM_CLASSES] arrays: 'pixels' (pixel count), 'images'
      (number of images containing the class), 'instances' (number of
      visible instances, things only), and 'num_images' (int).
    """
    c = sr.NUM_CLASSES
    keys = ("pixels", "images", "instances")
    stats = {k: np.zeros(c, np.int64) for k in keys}
    num_images = 0
    for ex in examples:
        sem, inst = ex["semantic"], ex["instance"]
        counts = np.bincount(sem.ravel(), minlength=c)
        stats["pixels"] += counts
        stats["images"] += counts > 0
        # Each instance id has a single class, so its first pixel tells it.
        ids, first = np.unique(inst.ravel(), return_index=True)
        cls_of_id = sem.ravel()[first[ids > 0]]
        stats["instances"] += np.bincount(cls_of_id, minlength=c)
        num_images += 1
    stats["num_images"] = num_images
    return stats


def markdown_table(stats):
    """The Markdown table described in the module docstring, as a str."""
    total = stats["pixels"].sum()
    rows = [
        "| id | class | kind | pixels (%) | images containing it (%) "
        "| mean instance area (px) |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for c, name in enumerate(sr.CLASS_NAMES):
        thing = c in sr.THING_CLASSES
        n_inst = stats["instances"][c]
        area = (
            f"{stats['pixels'][c] / n_inst:.0f}" if thing and n_inst else "-"
        )
        rows.append(
            f"| {c} | {name} | {'thing' if thing else 'stuff'} "
            f"| {100.0 * stats['pixels'][c] / total:.2f} "
            f"| {100.0 * stats['images'][c] / stats['num_images']:.1f} "
            f"| {area} |"
        )
    return "\n".join(rows)


def save_examples_png(path, split="validation", num=6):
    """Saves a grid of `num` examples: image | semantic mask in PALETTE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols = 3  # examples per row, each taking two panels
    rows = -(-num // cols)
    fig, axes = plt.subplots(
        rows, 2 * cols, figsize=(2.2 * 2 * cols, 2.2 * rows + 0.6)
    )
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(num):
        ex = shapes.render_split_example(split, i)
        r, c = divmod(i, cols)
        axes[r, 2 * c].imshow(ex["image"])
        axes[r, 2 * c].set_title(f"{split} #{i}", fontsize=8)
        axes[r, 2 * c + 1].imshow(sr.PALETTE[ex["semantic"]])
        axes[r, 2 * c + 1].set_title(
            f"{ex['instance'].max()} instances", fontsize=8
        )
    handles = [
        Patch(color=sr.PALETTE[c] / 255.0, label=f"{c} {n}")
        for c, n in enumerate(sr.CLASS_NAMES)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=sr.NUM_CLASSES,
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_train", type=int, default=shapes.NUM_TRAIN)
    parser.add_argument(
        "--num_validation", type=int, default=shapes.NUM_VALIDATION
    )
    parser.add_argument("--from_tfds", action="store_true",
                        help="read the prepared tfds splits (generating them "
                             "if needed) instead of rendering directly")
    parser.add_argument("--data_dir", default=None, help="tfds data_dir")
    parser.add_argument("--png", default=None,
                        help="also save a grid of validation examples here")
    args = parser.parse_args()

    for split, num in (("train", args.num_train),
                       ("validation", args.num_validation)):
        start = time.perf_counter()
        stats = class_stats(
            split_examples(split, num, args.from_tfds, args.data_dir)
        )
        print(f"\n### {split}: {stats['num_images']} images "
              f"({time.perf_counter() - start:.1f} s)\n")
        print(markdown_table(stats))
    if args.png:
        save_examples_png(args.png)
        print(f"\nSaved {args.png}")


if __name__ == "__main__":
    main()
