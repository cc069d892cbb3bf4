"""Boundary F-score: the jitted seg_jax statistics against a scipy loop on the same inputs.

    python -m experiments.benchmarks.bench_boundary [--size N,H,W,C] [--repeats R]

The scipy reference is the usual way to compute BF: per image and class, the boundary as the mask
minus its erosion by the 4-neighbour cross, then a Euclidean distance transform of each boundary
to test the other one against the tolerance. Both give the same BF (checked before timing).
A second reference replaces the distance transforms by binary dilations with the disk (as DAVIS
does with OpenCV), which is faster for small tolerances. Prints a Markdown table: seg_jax ms, each
reference's ms and the ratio reference / seg_jax (> 1 means seg_jax is faster), at a 2 px tolerance and at 0.75% of the image diagonal (bfscore's default). seg_jax uses
no convolutions, so the XLA convolution flags do not apply.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from experiments.benchmarks.timing import median_ms
from seg_jax.metrics import boundary


def _blobby_labels(rng, n, h, w, c, ignore_fraction):
    """[N, H, W] int32 maps of smooth class regions (argmax of upsampled noise), with void blobs.

    Regions are about 16 px across, so boundaries are denser than in real label maps: a hard case
    for both implementations (more boundary pixels, and most classes present in every image).
    """
    small = rng.normal(size=(n, h // 16, w // 16, c))
    fields = ndimage.zoom(small, (1, 16, 16, 1), order=1)
    labels = fields.argmax(-1).astype(np.int32)
    void = ndimage.zoom(rng.normal(size=(n, h // 32, w // 32)), (1, 32, 32), order=1)
    labels[void > np.quantile(void, 1 - ignore_fraction)] = 255
    return labels


def _near_by_distance_transform(boundary, tolerance):
    return ndimage.distance_transform_edt(~boundary) <= tolerance


def _near_by_dilation(boundary, tolerance):
    reach = int(tolerance)
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    return ndimage.binary_dilation(boundary, np.hypot(dy, dx) <= tolerance)


def _scipy_image_f(pred, label, num_classes, tolerance, near=_near_by_distance_transform):
    """Per-image mean F over the classes present in the truth (csurka rules), one mask at a time.

    `near(boundary, tolerance)` marks the pixels within the tolerance of a boundary: a Euclidean
    distance transform (the usual way), or a binary dilation with the disk (DAVIS's way, with
    OpenCV), cheaper for small tolerances.
    """
    cross = ndimage.generate_binary_structure(2, 1)
    valid = label < num_classes
    scores = []
    for c in range(num_classes):
        true_mask = valid & (label == c)
        if not true_mask.any():
            continue
        pred_mask = valid & (pred == c)
        true_boundary = true_mask & ~ndimage.binary_erosion(true_mask, cross, border_value=0)
        pred_boundary = pred_mask & ~ndimage.binary_erosion(pred_mask, cross, border_value=0)
        if not pred_boundary.any():
            scores.append(0.0)
            continue
        precision = (pred_boundary & near(true_boundary, tolerance)).sum() / pred_boundary.sum()
        recall = (true_boundary & near(pred_boundary, tolerance)).sum() / true_boundary.sum()
        total = precision + recall
        scores.append(0.0 if total == 0 else 2 * precision * recall / total)
    return np.mean(scores) if scores else np.nan


def _disk_size(radius):
    """Number of pixel offsets within Euclidean distance `radius`: the work per pixel of seg_jax."""
    reach = int(radius)
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    return int((np.hypot(dy, dx) <= radius).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="8,512,512,19", help="N,H,W,C of the label maps.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, h, w, c = (int(v) for v in args.size.split(","))
    rng = np.random.default_rng(0)
    label = _blobby_labels(rng, n, h, w, c, ignore_fraction=0.05)
    # A prediction that follows the truth on most of the image and a different map elsewhere.
    other = _blobby_labels(rng, n, h, w, c, ignore_fraction=0.0)
    keep = _blobby_labels(rng, n, h, w, 3, ignore_fraction=0.0) > 0
    pred = np.where(keep & (label < c), label, other).astype(np.int32)
    jpred, jlabel = jnp.asarray(pred), jnp.asarray(label)
    diagonal = float(np.hypot(h, w))

    print(f"{n} images {h}x{w}, {c} classes, csurka convention, median of {args.repeats}, "
          f"jax {jax.default_backend()}, {jax.device_count()} device(s)\n")
    print("| tolerance | disk offsets | seg_jax (ms) | scipy distance transform (ms) | ratio | "
          "scipy dilation (ms) | ratio | BF |")
    print("|---|---|---|---|---|---|---|---|")
    fraction_name = f"0.75% diagonal ({0.0075 * diagonal:.2f} px)"
    for name, kwargs, radius in (
        ("2 px", dict(tolerance=2.0), 2.0),
        (fraction_name, dict(tolerance_fraction=0.0075), 0.0075 * diagonal),
    ):
        def ours():
            stats = boundary.boundary_statistics(jpred, jlabel, c, **kwargs)
            return jax.block_until_ready(stats)

        def reference():
            return [_scipy_image_f(p, t, c, radius) for p, t in zip(pred, label)]

        def dilation_reference():
            return [_scipy_image_f(p, t, c, radius, _near_by_dilation) for p, t in zip(pred, label)]

        stats = ours()
        expected = np.nanmean(reference())
        got = float(boundary.boundary_scores(stats)["f_score"])
        for value in (expected, np.nanmean(dilation_reference())):
            if not np.isclose(got, value, rtol=1e-5):
                raise AssertionError(f"seg_jax BF {got} != scipy BF {value} at {name}")
        ours_ms = median_ms(ours, args.repeats)
        ref_ms = median_ms(reference, args.repeats)
        dilation_ms = median_ms(dilation_reference, args.repeats)
        print(f"| {name} | {_disk_size(radius)} | {ours_ms:.1f} | {ref_ms:.1f} "
              f"| {ref_ms / ours_ms:.1f} | {dilation_ms:.1f} | {dilation_ms / ours_ms:.1f} "
              f"| {got:.4f} |")


if __name__ == "__main__":
    main()
