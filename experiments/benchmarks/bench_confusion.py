"""Time of the jitted confusion matrix against `np.bincount` on the same inputs.

    python -m experiments.benchmarks.bench_confusion [--cases N,H,W,C;...] [--repeats R]

Both sides count (true, predicted) pairs over the pixels whose label is not 255 and return the
same [C, C] matrix (checked before timing). The numpy reference includes its masking, since
`seg_jax.metrics.confusion_matrix` does the same work:
`np.bincount(label[valid] * C + pred[valid], minlength=C * C)`. Prints a Markdown table of median
times after a warm-up (compilation) run, and the ratio numpy / seg_jax (> 1: seg_jax is faster).
For context it also times the single unchunked XLA scatter-add that `confusion_matrix` used before.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.timing import median_ms
from seg_jax import metrics

IGNORE_LABEL = 255


def numpy_confusion(pred, label, num_classes):
    valid = label != IGNORE_LABEL
    flat = label[valid] * num_classes + pred[valid]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def single_scatter_confusion(pred, label, num_classes):
    """The unchunked scatter-add: one XLA scatter over every pixel."""
    pred, label = pred.reshape(-1), label.reshape(-1)
    valid = (label != IGNORE_LABEL) & (label < num_classes) & (pred >= 0) & (pred < num_classes)
    index = jnp.where(valid, label * num_classes + pred, 0)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(valid.astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default="8,512,1024,19;2,512,512,150",
                        help="Semicolon-separated N,H,W,C of the label maps.")
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    print(f"median of {args.repeats} runs after a warm-up, jax {jax.__version__} "
          f"on {jax.default_backend()} ({jax.devices()[0].device_kind}), 10% of labels = 255\n")
    print("| labels N x H x W | C | np.bincount (ms) | seg_jax jit (ms) | ratio np/seg_jax "
          "| single scatter (ms) |")
    print("|---|---|---|---|---|---|")
    for case in args.cases.split(";"):
        n, h, w, c = (int(v) for v in case.split(","))
        rng = np.random.default_rng(0)
        label = rng.integers(0, c, size=(n, h, w)).astype(np.int32)
        label[rng.random(label.shape) < 0.1] = IGNORE_LABEL
        pred = rng.integers(0, c, size=(n, h, w)).astype(np.int32)
        jpred, jlabel = jnp.asarray(pred), jnp.asarray(label)

        ours = jax.jit(lambda p, t, c=c: metrics.confusion_matrix(p, t, c, ignore_label=IGNORE_LABEL))
        single = jax.jit(lambda p, t, c=c: single_scatter_confusion(p, t, c))
        expected = numpy_confusion(pred, label, c)
        np.testing.assert_array_equal(np.asarray(ours(jpred, jlabel)), expected)
        np.testing.assert_array_equal(np.asarray(single(jpred, jlabel)), expected)

        numpy_ms = median_ms(lambda: numpy_confusion(pred, label, c), args.repeats)
        ours_ms = median_ms(lambda: jax.block_until_ready(ours(jpred, jlabel)), args.repeats)
        single_ms = median_ms(lambda: jax.block_until_ready(single(jpred, jlabel)), args.repeats)
        print(f"| {n} x {h} x {w} | {c} | {numpy_ms:.2f} | {ours_ms:.2f} | "
              f"{numpy_ms / ours_ms:.1f} | {single_ms:.2f} |")


if __name__ == "__main__":
    main()
