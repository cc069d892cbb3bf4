"""Boundary F-score against hand-worked values and independent numpy/scipy/skimage references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax import metrics
from seg_jax.metrics import boundary


# Every case that can share one shape, class count and tolerance does, so that the jitted
# statistics compile once for it: two 16x16 images, 3 classes, the default tolerance (2 px for
# csurka; disk(1) for davis, since ceil(0.008 * 22.6) = 1).
EDGE_SHAPE, EDGE_CLASSES = (2, 16, 16), 3


def _squares():
    """Two identical 16x16 images: class 1 is the 4x4 square rows 6..9 x columns 5..8 in the
    truth and columns 7..10 (shifted 2 px right) in the prediction; class 0 elsewhere."""
    label = np.zeros(EDGE_SHAPE, np.int32)
    label[:, 6:10, 5:9] = 1
    pred = np.zeros_like(label)
    pred[:, 6:10, 7:11] = 1
    return pred, label


# csurka. The picture is mirror-symmetric (x -> 15 - x swaps truth and prediction), so P = R below.
# Square: each boundary is the 12-pixel perimeter of its square. Predicted pixels:
#   tolerance 0: only rows 6 and 9 at columns 7, 8 lie on the true perimeter             -> 4/12.
#   tolerance 1: rows 6 and 9 also match column 9 (1 px from column 8) -> 3 + 3; the sides
#                (rows 7, 8) match column 7 (1 px from column 8) but not column 10 -> 2   -> 8/12.
#   tolerance 2: column 10 is 2 px from column 8, so everything matches                   -> 12/12.
# Background: the image frame (60 px, on both maps since the mask touches the border) plus the 16
# pixels 4-adjacent to the square (rows 5 and 10 at its columns, the columns left and right of it:
# 4 and 9 for the truth, 6 and 11 for the prediction).
#   tolerance 0: frame 60 + rows 5 and 10 at columns 7, 8 (4)                             -> 64/76.
#   tolerance 1: frame 60; rows 5 and 10 at columns 7, 8, 9 (3 + 3); column 6 matches rows 6
#                and 9 only (1 px from rows 5 / 10); column 11 is >= 2 px from everything -> 68/76.
#   tolerance 2: everything (column 11 is 2 px from column 9)                             -> 76/76.
CSURKA_SQUARE = {0.0: (1 / 3, 16 / 19), 1.0: (2 / 3, 17 / 19), 2.0: (1.0, 1.0)}


@pytest.mark.parametrize("tolerance", sorted(CSURKA_SQUARE))
def test_shifted_square_golden_csurka(tolerance):
    pred, label = _squares()
    square_f, background_f = CSURKA_SQUARE[tolerance]
    scores = boundary.boundary_f_score(pred, label, EDGE_CLASSES, tolerance=tolerance)
    for key in ("per_class_f_score", "per_class_precision", "per_class_recall"):
        # Class 2 is in neither image: NaN, and left out of the image means.
        np.testing.assert_allclose(scores[key], [background_f, square_f, np.nan], rtol=1e-6)
    assert float(scores["f_score"]) == pytest.approx((square_f + background_f) / 2, rel=1e-6)
    assert int(scores["num_images"]) == 2


# davis. A pixel is on the boundary when its 2x2 block {p, E, S, SE} is not uniform, so for both
# classes the boundary is the 16-pixel perimeter of the 5x5 box rows 5..9 x columns 4..8 (truth)
# or 6..10 (prediction); no image frame (edge replication). Tolerance 1 (disk(1) = the cross):
# predicted rows 5 and 9 match columns 6..9 (4 + 4), column 6 matches rows 6 and 8 (1 px from rows
# 5 / 9), column 10 (2 px from column 8) none -> 10/16. Recall is the same by the mirror x -> 14 - x.
# (Larger disks are checked against the skimage reference below.)
def test_shifted_square_golden_davis():
    pred, label = _squares()
    expected = 10 / 16
    scores = boundary.boundary_f_score(pred, label, EDGE_CLASSES, tolerance=1, convention="davis")
    for key in ("per_class_f_score", "per_class_precision", "per_class_recall"):
        np.testing.assert_allclose(scores[key], [expected, expected, np.nan], rtol=1e-6)
    assert float(scores["f_score"]) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Independent references: one image and one class at a time, with scipy / skimage morphology.


def _smooth(x, axes, radius):
    """Two passes of a periodic box filter of half-width `radius` along `axes` (numpy only)."""
    for _ in range(2):
        for axis in axes:
            x = sum(np.roll(x, shift, axis) for shift in range(-radius, radius + 1))
    return x


def _blobs(rng, shape, num_classes, ignore_fraction=0.0, smoothness=2):
    """[..., H, W] blobby class maps: argmax over classes of smoothed noise, with void blobs."""
    fields = _smooth(rng.normal(size=(*shape, num_classes)), (-3, -2), smoothness)
    classes = fields.argmax(-1).astype(np.int32)
    if ignore_fraction:
        void = _smooth(rng.normal(size=shape), (-2, -1), smoothness)
        classes[void > np.quantile(void, 1 - ignore_fraction)] = 255
    return classes


def _pair_reference(pred_mask, true_mask, tolerance, boundary_fn, matched_fn, empty_rules):
    pred_boundary, true_boundary = boundary_fn(pred_mask), boundary_fn(true_mask)
    n_pred, n_true = pred_boundary.sum(), true_boundary.sum()
    if n_pred and n_true:
        precision = matched_fn(pred_boundary, true_boundary, tolerance).sum() / n_pred
        recall = matched_fn(true_boundary, pred_boundary, tolerance).sum() / n_true
    else:
        precision, recall = empty_rules(n_pred, n_true)
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f


def _reference(pred, label, num_classes, tolerance, boundary_fn, matched_fn, empty_rules):
    """(per-image mean P, R, F over scored images; per-class mean F [C]) by loops over pairs."""
    images, per_class = [], [[] for _ in range(num_classes)]
    for p, t in zip(pred, label):
        valid = (t >= 0) & (t < num_classes)
        pairs = []
        for c in range(num_classes):
            true_mask = valid & (t == c)
            if true_mask.any():
                pred_mask = valid & (p == c)
                pair = _pair_reference(
                    pred_mask, true_mask, tolerance, boundary_fn, matched_fn, empty_rules
                )
                pairs.append(pair)
                per_class[c].append(pair[2])
        if pairs:
            images.append(np.mean(pairs, axis=0))
    per_class_f = [np.mean(v) if v else np.nan for v in per_class]
    return np.mean(images, axis=0), np.array(per_class_f)


def _csurka_boundary(mask):
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(2, 1)
    return mask & ~ndimage.binary_erosion(mask, cross, border_value=0)


def _within_distance(boundary_map, other, tolerance):
    from scipy import ndimage

    return boundary_map & (ndimage.distance_transform_edt(~other) <= tolerance)


def _csurka_empty(n_pred, n_true):
    return 0.0, 0.0  # truth is never empty for a present class: no prediction -> P = R = 0


@pytest.mark.parametrize(
    "tolerance, tolerance_fraction",
    # 0.05 of the 38.4 px diagonal is 1.92 px: between the 3x3 square and the 2 px disk.
    [(None, None), (3.0, None), (None, 0.05)],
)
def test_csurka_matches_scipy_reference(tolerance, tolerance_fraction):
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    shape, num_classes = (3, 24, 30), 4
    label = _blobs(rng, shape, num_classes, ignore_fraction=0.15)
    # The prediction copies the truth over about half of the image, so that scores are mid-range.
    other = _blobs(rng, shape, num_classes)
    pred = np.where((_blobs(rng, shape, 2) == 0) & (label != 255), label, other)
    label[1] = np.where(label[1] == 3, 255, label[1])  # one image without class 3
    radius = 2.0 if tolerance is None else tolerance
    if tolerance_fraction is not None:
        radius = tolerance_fraction * np.hypot(24, 30)
    (precision, recall, f), per_class_f = _reference(
        pred, label, num_classes, radius, _csurka_boundary, _within_distance, _csurka_empty
    )
    scores = boundary.boundary_f_score(
        pred, label, num_classes, tolerance=tolerance, tolerance_fraction=tolerance_fraction
    )
    assert 0.05 < f < 0.99  # a discriminating case, neither trivial nor perfect
    assert float(scores["precision"]) == pytest.approx(precision, rel=1e-5)
    assert float(scores["recall"]) == pytest.approx(recall, rel=1e-5)
    assert float(scores["f_score"]) == pytest.approx(f, rel=1e-5)
    np.testing.assert_allclose(scores["per_class_f_score"], per_class_f, rtol=1e-5)


def _davis_boundary(mask):
    """seg2bmap's rule written out: compare with the east, south and south-east neighbours; the
    last row compares only eastwards, the last column only southwards, the corner never."""
    b = np.zeros_like(mask)
    b[:-1, :-1] = (mask[:-1, :-1] != mask[:-1, 1:]) | (mask[:-1, :-1] != mask[1:, :-1]) | (
        mask[:-1, :-1] != mask[1:, 1:]
    )
    b[-1, :-1] = mask[-1, :-1] != mask[-1, 1:]
    b[:-1, -1] = mask[:-1, -1] != mask[1:, -1]
    return b


def _davis_within(boundary_map, other, radius):
    from scipy import ndimage
    from skimage.morphology import disk

    return boundary_map & ndimage.binary_dilation(other, disk(radius).astype(bool))


def _davis_empty(n_pred, n_true):
    if n_pred == 0 and n_true == 0:
        return 1.0, 1.0
    return (1.0, 0.0) if n_pred == 0 else (0.0, 1.0)


# DAVIS rounds a fraction up: 0.05 of the 32.8 px diagonal is 1.64 -> disk(2), the same disk as
# tolerance=2; the default 0.008 gives disk(1).
@pytest.mark.parametrize("tolerance, tolerance_fraction", [(None, None), (2, None), (None, 0.05)])
def test_davis_matches_skimage_reference(tolerance, tolerance_fraction):
    pytest.importorskip("scipy")
    pytest.importorskip("skimage")
    rng = np.random.default_rng(1)
    shape = (6, 20, 26)
    label = _blobs(rng, shape, 2, ignore_fraction=0.1)
    pred = np.where(_blobs(rng, shape, 2) == 0, np.where(label == 255, 0, label), 1 - label % 2)
    # The empty cases of the DAVIS table: no predicted object (image 0); the object fills the
    # whole truth, so it has no boundary, while the prediction has one (image 1); both fill the
    # image (image 2); and an image without void (image 3).
    pred[0] = 0
    label[1] = 1
    label[2], pred[2] = 1, 1
    label[3] = np.where(label[3] == 255, 0, label[3])
    diagonal = np.hypot(*shape[1:])
    radius = tolerance if tolerance is not None else np.ceil((tolerance_fraction or 0.008) * diagonal)
    (precision, recall, f), per_class_f = _reference(
        pred, label, 2, radius, _davis_boundary, _davis_within, _davis_empty
    )
    scores = boundary.boundary_f_score(
        pred, label, 2, tolerance=tolerance, tolerance_fraction=tolerance_fraction, convention="davis"
    )
    assert 0.05 < f < 0.99
    assert float(scores["precision"]) == pytest.approx(precision, rel=1e-5)
    assert float(scores["recall"]) == pytest.approx(recall, rel=1e-5)
    assert float(scores["f_score"]) == pytest.approx(f, rel=1e-5)
    np.testing.assert_allclose(scores["per_class_f_score"], per_class_f, rtol=1e-5)


def test_davis_many_classes_take_several_passes():
    """12 classes take two 8-class passes; each class must still be scored on its own."""
    pytest.importorskip("scipy")
    pytest.importorskip("skimage")
    rng = np.random.default_rng(2)
    shape, num_classes = (2, 20, 20), 12
    label = _blobs(rng, shape, num_classes, smoothness=1)
    assert (label < 8).any() and (label >= 8).any()  # both passes hold present classes
    pred = np.where(_blobs(rng, shape, 2) == 0, label, _blobs(rng, shape, num_classes, smoothness=1))
    (_, _, f), per_class_f = _reference(
        pred, label, num_classes, 1, _davis_boundary, _davis_within, _davis_empty
    )
    scores = boundary.boundary_f_score(pred, label, num_classes, tolerance=1, convention="davis")
    assert float(scores["f_score"]) == pytest.approx(f, rel=1e-5)
    np.testing.assert_allclose(scores["per_class_f_score"], per_class_f, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Edge cases, on EDGE_SHAPE with the default tolerance.


@pytest.mark.parametrize("convention", ["csurka", "davis"])
def test_perfect_prediction_scores_one(convention):
    label = _blobs(np.random.default_rng(3), EDGE_SHAPE, EDGE_CLASSES, ignore_fraction=0.1)
    pred = np.where(label == 255, 0, label)  # whatever is predicted under void does not count
    scores = boundary.boundary_f_score(pred, label, EDGE_CLASSES, convention=convention)
    assert float(scores["f_score"]) == pytest.approx(1.0)
    np.testing.assert_allclose(scores["per_class_recall"], 1.0)


def test_empty_prediction_and_class_absent_from_truth():
    label = np.zeros(EDGE_SHAPE, np.int32)
    label[:, 4:9, 4:9] = 1
    pred = np.full_like(label, 2)  # class 2 everywhere: absent from the truth, so never scored
    stats = boundary.boundary_statistics(pred, label, EDGE_CLASSES)
    scores = boundary.boundary_scores(stats)
    np.testing.assert_array_equal(stats["class_count"], [2, 2, 0])
    # Classes 0 and 1 are present with no predicted boundary: P = 0 by convention, R = 0, F = 0.
    np.testing.assert_allclose(scores["per_class_f_score"][:2], [0.0, 0.0])
    np.testing.assert_allclose(scores["per_class_precision"][:2], [0.0, 0.0])
    assert np.isnan(scores["per_class_f_score"][2])
    assert float(scores["f_score"]) == 0.0
    # DAVIS: no predicted boundary against a true one is P = 1, R = 0.
    davis = boundary.boundary_f_score(pred, label, EDGE_CLASSES, convention="davis")
    np.testing.assert_allclose(davis["per_class_precision"][:2], [1.0, 1.0])
    np.testing.assert_allclose(davis["per_class_recall"][:2], [0.0, 0.0])


def test_all_void_scores_no_image():
    label = np.full(EDGE_SHAPE, 255, np.int32)
    label[1, 0, 0] = 7  # out of [0, C): void as well
    scores = boundary.boundary_f_score(np.zeros_like(label), label, EDGE_CLASSES)
    assert int(scores["num_images"]) == 0
    assert np.isnan(scores["f_score"]) and np.isnan(scores["precision"])
    assert np.all(np.isnan(scores["per_class_f_score"]))


def test_statistics_add_across_batches_and_finish_on_host():
    rng = np.random.default_rng(4)
    label = _blobs(rng, (4, *EDGE_SHAPE[1:]), EDGE_CLASSES, ignore_fraction=0.1)
    pred = _blobs(rng, (4, *EDGE_SHAPE[1:]), EDGE_CLASSES)
    whole = boundary.boundary_statistics(pred, label, EDGE_CLASSES)
    parts = [
        boundary.boundary_statistics(pred[i : i + 2], label[i : i + 2], EDGE_CLASSES) for i in (0, 2)
    ]
    host = {k: np.asarray(parts[0][k], np.float64) + np.asarray(parts[1][k], np.float64) for k in whole}
    for key in whole:
        np.testing.assert_allclose(np.asarray(whole[key]), host[key], rtol=1e-6)
    from_host = boundary.boundary_scores(host)
    from_device = boundary.boundary_scores(whole)
    assert isinstance(from_host["f_score"], np.floating)
    for key in from_device:
        np.testing.assert_allclose(from_host[key], np.asarray(from_device[key]), rtol=1e-6)


@pytest.mark.parametrize("convention", ["csurka", "davis"])
def test_jit_and_vmap(convention):
    rng = np.random.default_rng(5)
    label = jnp.asarray(_blobs(rng, (2, *EDGE_SHAPE), EDGE_CLASSES, ignore_fraction=0.1))
    pred = jnp.asarray(_blobs(rng, (2, *EDGE_SHAPE), EDGE_CLASSES))

    def stats(p, t):
        return boundary.boundary_statistics(p, t, EDGE_CLASSES, convention=convention)

    batched = jax.jit(jax.vmap(stats))(pred, label)
    for i in range(2):
        single = stats(pred[i], label[i])
        for key in single:
            np.testing.assert_allclose(np.asarray(batched[key][i]), np.asarray(single[key]), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pred=np.zeros((1, 4, 4)), label=np.zeros((1, 4, 5))), "same shape"),
        (dict(pred=np.zeros((4, 4)), label=np.zeros((4, 4))), r"\[N, H, W\]"),
        (dict(convention="bfscore"), "convention"),
        (dict(tolerance=-1.0), "tolerance"),
        (dict(tolerance=2.0, tolerance_fraction=0.01), "not both"),
        (dict(tolerance_fraction=-0.1), "tolerance_fraction"),
        (dict(tolerance=1.5, convention="davis"), "whole number"),
    ],
)
def test_clear_errors(kwargs, message):
    args = dict(pred=np.zeros((1, 4, 4), np.int32), label=np.zeros((1, 4, 4), np.int32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        boundary.boundary_statistics(args.pop("pred"), args.pop("label"), 2, **args)


def test_semantic_evaluator_streams_boundary_statistics():
    rng = np.random.default_rng(7)
    label = rng.integers(0, 3, (4, 12, 12))
    label[:, :, :3] = 255
    pred = np.where(rng.random(label.shape) < 0.2, rng.integers(0, 3, label.shape), label)
    evaluator = metrics.SemanticEvaluator(["a", "b", "c"])
    for part in (slice(0, 1), slice(1, 4)):
        evaluator.update(
            np.asarray(metrics.confusion_matrix(pred[part], label[part], 3)),
            batch_boundary=metrics.boundary_statistics(pred[part], label[part], 3, tolerance=1.0))
    whole = metrics.boundary_f_score(pred, label, 3, tolerance=1.0)
    result = evaluator.result()
    assert result["boundary_f_score"] == pytest.approx(float(whole["f_score"]), rel=1e-6)
    np.testing.assert_allclose(list(result["per_class_boundary_f_score"].values()),
                               whole["per_class_f_score"], rtol=1e-6)
