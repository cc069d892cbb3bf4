"""Confusion-matrix scores against independent implementations: torchmetrics and the Cityscapes scripts.

Each named convention of `seg_jax.metrics.confusion` is checked against the library that uses it,
on random label maps with absent classes and ignored pixels.
"""

import copy

import numpy as np
import pytest

from seg_jax import metrics
from seg_jax.metrics import confusion

torch = pytest.importorskip("torch")
torchmetrics = pytest.importorskip("torchmetrics")
from torchmetrics.classification import MulticlassJaccardIndex  # noqa: E402

IGNORE = 255


def _random_case(seed, num_classes, shape=(3, 16, 20), absent=(), ignored_fraction=0.15):
    """Labels and predictions with the classes in `absent` in neither, and some ignored pixels."""
    rng = np.random.default_rng(seed)
    present = np.array([c for c in range(num_classes) if c not in absent])
    label = rng.choice(present, size=shape)
    label[rng.random(shape) < ignored_fraction] = IGNORE
    pred = np.where(rng.random(shape) < 0.5, label, rng.choice(present, size=shape))
    pred = np.where(pred == IGNORE, rng.choice(present, size=shape), pred)
    return pred.astype(np.int64), label.astype(np.int64)


def _cm(pred, label, num_classes, **kwargs):
    return np.asarray(metrics.confusion_matrix(pred, label, num_classes, **kwargs), np.int64)


def _jaccard(pred, label, num_classes, ignore_index=IGNORE, **kwargs):
    metric = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=ignore_index, **kwargs)
    return metric(torch.as_tensor(pred), torch.as_tensor(label)).double().numpy()


CASES = [
    # (seed, num_classes, absent classes)
    (0, 5, ()),
    (1, 6, (2,)),
    (2, 8, (0, 5, 7)),
    (3, 4, (3,)),
]


@pytest.mark.parametrize("seed, num_classes, absent", CASES)
def test_nan_convention_is_torchmetrics_macro_jaccard(seed, num_classes, absent):
    pred, label = _random_case(seed, num_classes, absent=absent)
    cm = _cm(pred, label, num_classes)
    # Macro averaging gives empty classes weight 0, so zero_division does not change the mean.
    for zero_division in (0.0, 1.0):
        expected = _jaccard(pred, label, num_classes, average="macro", zero_division=zero_division)
        assert confusion.mean_iou(cm) == pytest.approx(float(expected), abs=1e-6)
    per_class = confusion.iou(cm)
    assert np.isnan(per_class[list(absent)]).all()
    expected = _jaccard(pred, label, num_classes, average="none")
    present = ~np.isnan(per_class)
    np.testing.assert_allclose(per_class[present], expected[present], atol=1e-6)


@pytest.mark.parametrize("seed, num_classes, absent", CASES)
@pytest.mark.parametrize("empty, zero_division", [("zero", 0.0), ("one", 1.0)])
def test_zero_and_one_conventions_are_torchmetrics_zero_division(seed, num_classes, absent, empty,
                                                                 zero_division):
    pred, label = _random_case(seed, num_classes, absent=absent)
    cm = _cm(pred, label, num_classes)
    expected = _jaccard(pred, label, num_classes, average="none", zero_division=zero_division)
    np.testing.assert_allclose(confusion.iou(cm, empty=empty), expected, atol=1e-6)
    # The mean over all classes of torchmetrics' per-class values (ignite's mIoU for "zero").
    assert confusion.mean_iou(cm, empty=empty) == pytest.approx(float(expected.mean()), abs=1e-6)


@pytest.mark.parametrize("seed, num_classes, absent", CASES)
def test_frequency_weighted_iou_is_torchmetrics_weighted_jaccard(seed, num_classes, absent):
    # average="weighted" weights each class's IoU by its true pixel count: Long et al.'s fwIoU.
    pred, label = _random_case(seed, num_classes, absent=absent)
    expected = _jaccard(pred, label, num_classes, average="weighted")
    cm = _cm(pred, label, num_classes)
    assert confusion.frequency_weighted_iou(cm) == pytest.approx(float(expected), abs=1e-6)


def test_all_pixels_ignored_is_nan_in_torchmetrics_too():
    label = np.full((1, 4, 4), IGNORE)
    pred = np.zeros_like(label)
    expected = _jaccard(pred, label, 3, average="macro")
    assert np.isnan(expected)
    assert np.isnan(confusion.mean_iou(_cm(pred, label, 3)))


def test_in_range_ignore_label_matches_torchmetrics_with_void_predictions_as_false_negatives():
    # With ignore_index = 0 torchmetrics still counts a prediction of 0 on a valid pixel as a miss
    # of the true class and leaves class 0 out of the mean: our void prediction rule exactly.
    num_classes = 5
    rng = np.random.default_rng(7)
    label = rng.integers(0, num_classes, size=(2, 12, 12))
    pred = rng.integers(0, num_classes, size=label.shape)
    expected = _jaccard(pred, label, num_classes, ignore_index=0, average="macro")
    cm = _cm(pred, label, num_classes, ignore_label=0, void_prediction="false_negative")
    assert np.isnan(confusion.iou(cm)[0])
    assert confusion.mean_iou(cm) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("per_class", [False, True])
def test_per_image_mean_iou_is_torchmetrics_segmentation_mean_iou(per_class):
    from torchmetrics.segmentation import MeanIoU

    num_classes = 6
    rng = np.random.default_rng(8)
    # Few classes per image, so many (image, class) pairs have an empty union; no ignored pixels,
    # since torchmetrics' MeanIoU has no ignore index.
    label = rng.integers(0, 3, size=(5, 10, 12)) + rng.integers(0, 4, size=(5, 1, 1))
    pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, num_classes, size=label.shape))
    metric = MeanIoU(num_classes=num_classes, per_class=per_class, input_format="index")
    iou_sum, pair_count = np.zeros(num_classes), np.zeros(num_classes, np.int64)
    for batch in (slice(0, 2), slice(2, 5)):  # two batches: the statistics must add
        metric.update(torch.as_tensor(pred[batch]), torch.as_tensor(label[batch]))
        per_image = np.asarray(confusion.per_image_confusion_matrix(pred[batch], label[batch], num_classes))
        batch_sum, batch_count = confusion.per_image_iou_sums(per_image.astype(np.int64))
        iou_sum += batch_sum
        pair_count += batch_count
    expected = metric.compute().double().numpy()
    ours = confusion.per_image_mean_iou(iou_sum, pair_count, per_class=per_class)
    if per_class:
        ours = np.where(np.isnan(ours), -1.0, ours)  # torchmetrics reports -1 for a class never seen
    np.testing.assert_allclose(ours, expected, atol=1e-6)


# --- The Cityscapes scripts -------------------------------------------------------------------------


def test_void_predictions_as_false_negatives_match_cityscapes_scripts(tmp_path):
    """Per-class and mean IoU of cityscapesscripts' own evaluatePair + getIouScoreForLabel."""
    pytest.importorskip("cityscapesscripts")
    image = pytest.importorskip("PIL.Image")
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cityscapes_eval
    from cityscapesscripts.helpers.labels import labels as cityscapes_labels

    label_ids = [label.id for label in cityscapes_labels if label.id >= 0]
    to_train_id = np.full(256, IGNORE, np.int64)
    for label in cityscapes_labels:
        if label.id >= 0 and not label.ignoreInEval:
            to_train_id[label.id] = label.trainId
    # Label ids 24 (person) and 33 (bicycle) appear nowhere: their IoU is 0 / 0.
    used = np.array([i for i in label_ids if i not in (24, 33)])
    rng = np.random.default_rng(9)
    gt = rng.choice(used, size=(40, 50)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.5, gt, rng.choice(used, size=gt.shape)).astype(np.uint8)
    gt_file, pred_file = str(tmp_path / "gt_labelIds.png"), str(tmp_path / "pred.png")
    image.fromarray(gt).save(gt_file)
    image.fromarray(pred).save(pred_file)

    args = copy.copy(cityscapes_eval.args)
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.quiet = True
    conf_matrix = cityscapes_eval.generateMatrix(args)
    cityscapes_eval.evaluatePair(pred_file, gt_file, conf_matrix, {}, {}, args)
    scores = {i: cityscapes_eval.getIouScoreForLabel(i, conf_matrix, args) for i in args.evalLabels}

    cm = _cm(to_train_id[pred], to_train_id[gt], 19, void_prediction="false_negative")
    assert cm[:, 19].sum() > 0  # the case does predict void labels on valid pixels
    ours = confusion.iou(cm)
    for label in cityscapes_labels:
        if label.id >= 0 and not label.ignoreInEval:
            np.testing.assert_allclose(ours[label.trainId], scores[label.id], atol=1e-12, equal_nan=True)
    assert np.isnan(ours[to_train_id[[24, 33]]]).all()
    assert confusion.mean_iou(cm) == pytest.approx(cityscapes_eval.getScoreAverage(scores, args), abs=1e-12)
    # Dropping void predictions instead would overstate every class with such misses.
    dropped = confusion.iou(_cm(to_train_id[pred], to_train_id[gt], 19))
    assert np.nanmean(dropped) > confusion.mean_iou(cm)
