"""Confusion-matrix metrics against hand-worked values and an independent numpy reference."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax import metrics
from seg_jax.metrics import confusion  # the names seg_jax.metrics does not export yet

# 2x3 image, 3 classes, one ignored pixel (255). Worked by hand below.
LABEL = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 1, 0]])


def test_confusion_matrix_golden():
    cm = np.asarray(metrics.confusion_matrix(PRED, LABEL, 3))
    # rows = truth, columns = prediction; the ignored pixel (pred 0) counts nowhere.
    expected = np.array([[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    np.testing.assert_array_equal(cm, expected)


def test_scores_golden():
    cm = np.array([[1, 1, 0], [0, 2, 0], [0, 1, 0]], np.int64)
    # IoU: class 0: 1 / (2 + 1 - 1) = 1/2; class 1: 2 / (2 + 4 - 2) = 1/2; class 2: 0 / (1 + 0) = 0.
    np.testing.assert_allclose(metrics.iou(cm), [0.5, 0.5, 0.0])
    assert metrics.mean_iou(cm) == pytest.approx(1 / 3)
    assert metrics.pixel_accuracy(cm) == pytest.approx(3 / 5)
    np.testing.assert_allclose(metrics.class_accuracy(cm), [0.5, 1.0, 0.0])
    # Precision TP / predicted: class 0: 1/1; class 1: 2/4; class 2 never predicted: NaN.
    np.testing.assert_allclose(metrics.class_precision(cm), [1.0, 0.5, np.nan])
    # Dice: 2TP / (2TP + FP + FN): class 0: 2/3, class 1: 4/6, class 2: 0.
    np.testing.assert_allclose(metrics.dice_score(cm), [2 / 3, 2 / 3, 0.0])


def test_absent_class_is_nan_and_excluded_from_mean():
    cm = np.array([[3, 1, 0], [1, 5, 0], [0, 0, 0]], np.int64)
    per_class = metrics.iou(cm)
    assert np.isnan(per_class[2])
    assert metrics.mean_iou(cm) == pytest.approx(np.mean(per_class[:2]))


def _reference_confusion(pred, label, num_classes, ignore_label):
    cm = np.zeros((num_classes, num_classes), np.int64)
    for p, t in zip(pred.ravel(), label.ravel()):
        if t != ignore_label:
            cm[t, p] += 1
    return cm


def test_matches_reference_on_random_batch_under_jit():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, size=(3, 17, 9))
    label[rng.random(label.shape) < 0.1] = 255
    pred = rng.integers(0, 5, size=label.shape)
    fn = jax.jit(lambda p, t: metrics.confusion_matrix(p, t, 5))
    np.testing.assert_array_equal(np.asarray(fn(pred, label)), _reference_confusion(pred, label, 5, 255))


def test_matrices_add_across_batches():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, size=(4, 8, 8))
    pred = rng.integers(0, 4, size=(4, 8, 8))
    whole = metrics.confusion_matrix(pred, label, 4)
    parts = sum(metrics.confusion_matrix(pred[i : i + 1], label[i : i + 1], 4) for i in range(4))
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(parts))


def test_weights_and_all_ignored():
    label = jnp.full((2, 2), 255)
    cm = metrics.confusion_matrix(jnp.zeros((2, 2), jnp.int32), label, 3)
    assert int(cm.sum()) == 0
    assert np.isnan(metrics.mean_iou(np.asarray(cm, np.int64)))
    weighted = metrics.confusion_matrix(PRED, LABEL, 3, weights=np.full(LABEL.shape, 0.5))
    np.testing.assert_allclose(np.asarray(weighted), 0.5 * np.asarray(metrics.confusion_matrix(PRED, LABEL, 3)))


def test_evaluator_accumulates_in_int64():
    evaluator = metrics.SemanticEvaluator(["a", "b", "c"])
    evaluator.update(np.array([[1, 1, 0], [0, 2, 0], [0, 1, 0]]))
    evaluator.update(np.array([[1, 1, 0], [0, 2, 0], [0, 1, 0]]))
    result = evaluator.result()
    assert evaluator.confusion.dtype == np.int64
    assert result["mean_iou"] == pytest.approx(1 / 3)
    assert result["per_class_iou"] == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert result["num_pixels"] == 10


# --- Frequency-weighted IoU and empty-class conventions, worked by hand ---------------------------

# Class 2 has no true and no predicted pixel: its union is empty.
CM_EMPTY = np.array([[3, 1, 0], [1, 5, 0], [0, 0, 0]], np.int64)


def test_frequency_weighted_iou_golden():
    # True totals [2, 2, 1] of 5, IoU [1/2, 1/2, 0]: (2 * 1/2 + 2 * 1/2 + 1 * 0) / 5.
    cm = np.array([[1, 1, 0], [0, 2, 0], [0, 1, 0]], np.int64)
    assert confusion.frequency_weighted_iou(cm) == pytest.approx(2 / 5)
    # True totals [4, 6, 0] of 10, IoU [3/5, 5/7, empty]: the empty class weighs 0.
    assert confusion.frequency_weighted_iou(CM_EMPTY) == pytest.approx((4 * 3 / 5 + 6 * 5 / 7) / 10)


@pytest.mark.parametrize("empty, per_class, mean", [
    ("nan", [3 / 5, 5 / 7, np.nan], (3 / 5 + 5 / 7) / 2),
    ("zero", [3 / 5, 5 / 7, 0.0], (3 / 5 + 5 / 7 + 0) / 3),
    ("one", [3 / 5, 5 / 7, 1.0], (3 / 5 + 5 / 7 + 1) / 3),
])
def test_empty_class_conventions_golden(empty, per_class, mean):
    # IoU: class 0: 3 / (4 + 4 - 3); class 1: 5 / (6 + 6 - 5). Dice: 2*3 / 8 and 2*5 / 12.
    np.testing.assert_allclose(metrics.iou(CM_EMPTY, empty=empty), per_class)
    assert metrics.mean_iou(CM_EMPTY, empty=empty) == pytest.approx(mean)
    dice = [3 / 4, 5 / 6, per_class[2]]
    np.testing.assert_allclose(metrics.dice_score(CM_EMPTY, empty=empty), dice)
    assert confusion.mean_dice(CM_EMPTY, empty=empty) == pytest.approx(np.nanmean(dice))
    # The same numbers from jnp, under jit.
    jitted = jax.jit(lambda cm: metrics.mean_iou(cm, empty=empty))(jnp.asarray(CM_EMPTY, jnp.int32))
    assert float(jitted) == pytest.approx(mean, rel=1e-6)


def test_default_convention_is_nan():
    np.testing.assert_array_equal(metrics.iou(CM_EMPTY), metrics.iou(CM_EMPTY, empty="nan"))


@pytest.mark.parametrize("call", [
    lambda: metrics.iou(CM_EMPTY, empty="ignore"),
    lambda: metrics.mean_iou(CM_EMPTY, empty=None),
    lambda: metrics.confusion_matrix(PRED, LABEL, 3, void_prediction="ignore"),
])
def test_unknown_convention_names_the_choices(call):
    with pytest.raises(ValueError, match="one of"):
        call()


# --- Void predictions (the Cityscapes rule) -------------------------------------------------------

VOID_LABEL = np.array([[0, 0, 1, 1, 255, 0]])
VOID_PRED = np.array([[0, 255, 1, 0, 1, 7]])  # 255 and 7 are no class of C = 2


def test_void_prediction_drop_golden():
    # Pixels 1 and 5 predict void and are dropped; pixel 4 is ignored.
    cm = np.asarray(metrics.confusion_matrix(VOID_PRED, VOID_LABEL, 2))
    np.testing.assert_array_equal(cm, [[1, 0], [1, 1]])
    np.testing.assert_allclose(metrics.iou(cm), [1 / 2, 1 / 2])


def test_void_prediction_false_negative_golden():
    cm = np.asarray(metrics.confusion_matrix(VOID_PRED, VOID_LABEL, 2, void_prediction="false_negative"))
    # Last column: valid pixels predicted void (pixels 1 and 5, both of class 0).
    np.testing.assert_array_equal(cm, [[1, 0, 2], [1, 1, 0]])
    cm = cm.astype(np.int64)
    # Class 0: TP 1, FN 2 (void) + 0, FP 1 -> 1/4. Class 1: TP 1, FN 1, FP 0 -> 1/2.
    np.testing.assert_allclose(metrics.iou(cm), [1 / 4, 1 / 2])
    assert metrics.mean_iou(cm) == pytest.approx(3 / 8)
    assert metrics.pixel_accuracy(cm) == pytest.approx(2 / 5)  # void predictions are wrong
    np.testing.assert_allclose(metrics.class_accuracy(cm), [1 / 3, 1 / 2])
    # Void predictions are predictions of no class: class 0 predicted twice, once right.
    np.testing.assert_allclose(metrics.class_precision(cm), [1 / 2, 1.0])
    np.testing.assert_allclose(metrics.dice_score(cm), [2 / 5, 2 / 3])  # 2TP / (true + predicted)
    assert confusion.frequency_weighted_iou(cm) == pytest.approx((3 * 1 / 4 + 2 * 1 / 2) / 5)


def test_void_prediction_options_agree_without_void_predictions():
    rng = np.random.default_rng(2)
    label = rng.integers(0, 4, size=(2, 6, 7))
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, 4, size=label.shape)
    square = np.asarray(metrics.confusion_matrix(pred, label, 4))
    wide = np.asarray(metrics.confusion_matrix(pred, label, 4, void_prediction="false_negative"))
    np.testing.assert_array_equal(wide[:, :4], square)
    np.testing.assert_array_equal(wide[:, 4], 0)


def test_scores_reject_a_matrix_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"C, C \+ 1\]"):
        metrics.iou(np.zeros((3, 5), np.int64))


# --- Per-image statistics -------------------------------------------------------------------------

# Image 0: IoU [1/2, 2/3, empty]. Image 1: IoU [0 (predicted, not true), empty, 2/3].
PER_IMAGE_LABEL = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
PER_IMAGE_PRED = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])


def test_per_image_golden():
    per_image = np.asarray(confusion.per_image_confusion_matrix(PER_IMAGE_PRED, PER_IMAGE_LABEL, 3))
    np.testing.assert_array_equal(per_image[0], [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    np.testing.assert_array_equal(per_image[1], [[0, 0, 0], [0, 0, 0], [1, 0, 2]])
    iou_sum, pair_count = confusion.per_image_iou_sums(per_image.astype(np.int64))
    np.testing.assert_allclose(iou_sum, [1 / 2 + 0, 2 / 3, 2 / 3])
    np.testing.assert_array_equal(pair_count, [2, 1, 1])
    # Four (image, class) pairs with a non-empty union.
    assert confusion.per_image_mean_iou(iou_sum, pair_count) == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 4)
    np.testing.assert_allclose(confusion.per_image_mean_iou(iou_sum, pair_count, per_class=True),
                               [1 / 4, 2 / 3, 2 / 3])
    # The dataset mIoU pools pixels first and differs: IoU [1/3, 2/3, 2/3].
    assert metrics.mean_iou(per_image.sum(0).astype(np.int64)) == pytest.approx(5 / 9)
    # Scores take the per-image matrices directly: one row per image.
    np.testing.assert_allclose(metrics.iou(per_image.astype(np.int64)),
                               [[1 / 2, 2 / 3, np.nan], [0.0, np.nan, 2 / 3]])


def test_per_image_statistics_add_across_batches_and_match_the_whole():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 5, size=(6, 9, 11))
    label[rng.random(label.shape) < 0.1] = 255
    label[2] = np.where(label[2] == 4, 0, label[2])  # class 4 absent from image 2
    pred = rng.integers(0, 5, size=label.shape)
    stats = jax.jit(lambda p, t: confusion.per_image_iou_sums(confusion.per_image_confusion_matrix(p, t, 5)))
    whole_sum, whole_count = stats(pred, label)
    batches = [stats(pred[i : i + 2], label[i : i + 2]) for i in range(0, 6, 2)]
    np.testing.assert_allclose(sum(b[0] for b in batches), whole_sum, rtol=1e-6)
    np.testing.assert_array_equal(sum(b[1] for b in batches), whole_count)
    # Against a per-image numpy reference.
    expected = [metrics.iou(_reference_confusion(pred[i], label[i], 5, 255)) for i in range(6)]
    expected = np.array(expected)
    assert confusion.per_image_mean_iou(np.asarray(whole_sum), np.asarray(whole_count)) == pytest.approx(
        np.nanmean(expected), rel=1e-6)
    per_image = np.asarray(confusion.per_image_confusion_matrix(pred, label, 5))
    np.testing.assert_array_equal(per_image.sum(0), np.asarray(metrics.confusion_matrix(pred, label, 5)))


def test_vmap_of_confusion_matrix_is_the_per_image_matrix():
    rng = np.random.default_rng(4)
    label = rng.integers(0, 4, size=(3, 5, 6))
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(-1, 5, size=label.shape)  # some void predictions
    for void in ("drop", "false_negative"):
        batched = jax.vmap(lambda p, t: metrics.confusion_matrix(p, t, 4, void_prediction=void))
        np.testing.assert_array_equal(
            np.asarray(batched(pred, label)),
            np.asarray(confusion.per_image_confusion_matrix(pred, label, 4, void_prediction=void)),
        )


def test_large_inputs_cross_chunk_and_image_boundaries():
    # 2 x 300 x 500 = 300000 pixels: one full 2^18-pixel slice that ends inside image 1, plus a tail.
    rng = np.random.default_rng(5)
    label = rng.integers(0, 7, size=(2, 300, 500)).astype(np.int32)
    label[rng.random(label.shape) < 0.1] = 255
    pred = rng.integers(0, 7, size=label.shape).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(metrics.confusion_matrix(pred, label, 7)),
                                  _reference_confusion(pred, label, 7, 255))
    per_image = np.asarray(confusion.per_image_confusion_matrix(pred, label, 7))
    for i in range(2):
        np.testing.assert_array_equal(per_image[i], _reference_confusion(pred[i], label[i], 7, 255))
    weights = rng.random(label.shape).astype(np.float32)
    weighted = np.asarray(metrics.confusion_matrix(pred, label, 7, weights=weights))
    valid = label != 255
    expected = np.zeros((7, 7))
    np.add.at(expected, (label[valid], pred[valid]), weights[valid])
    np.testing.assert_allclose(weighted, expected, rtol=1e-4)


def test_all_pixels_ignored_gives_nan_where_documented():
    label = np.full((2, 3, 3), 255)
    pred = np.zeros_like(label)
    cm = np.asarray(metrics.confusion_matrix(pred, label, 3, void_prediction="false_negative"), np.int64)
    assert cm.sum() == 0
    for score in (metrics.mean_iou, confusion.frequency_weighted_iou, metrics.pixel_accuracy,
                  metrics.mean_accuracy, confusion.mean_dice):
        assert np.isnan(score(cm))
    assert metrics.mean_iou(cm, empty="zero") == 0.0
    assert metrics.mean_iou(cm, empty="one") == 1.0
    iou_sum, pair_count = confusion.per_image_iou_sums(
        np.asarray(confusion.per_image_confusion_matrix(pred, label, 3), np.int64))
    np.testing.assert_array_equal(pair_count, 0)
    assert np.isnan(confusion.per_image_mean_iou(iou_sum, pair_count))
    assert np.isnan(confusion.per_image_mean_iou(iou_sum, pair_count, per_class=True)).all()


# --- The evaluator --------------------------------------------------------------------------------


def test_evaluator_reports_fwiou_and_dice_json_ready():
    evaluator = metrics.SemanticEvaluator(["a", "b", "c"])
    evaluator.update(CM_EMPTY)
    result = evaluator.result()
    assert result["frequency_weighted_iou"] == pytest.approx((4 * 3 / 5 + 6 * 5 / 7) / 10)
    assert result["per_class_dice"] == pytest.approx({"a": 3 / 4, "b": 5 / 6, "c": None})
    assert result["per_class_iou"]["c"] is None
    assert result["per_class_precision"] == pytest.approx({"a": 3 / 4, "b": 5 / 6, "c": None})
    assert result["per_class_recall"] == pytest.approx({"a": 3 / 4, "b": 5 / 6, "c": None})
    assert result["mean_dice"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert "per_image_mean_iou" not in result and "num_void_predictions" not in result
    json.dumps(result, allow_nan=False)


def test_evaluator_conventions_and_per_image_statistics():
    evaluator = metrics.SemanticEvaluator(["a", "b", "c"], empty="zero")
    evaluator.update(CM_EMPTY, batch_per_image_iou=(np.array([0.5, 1.0, 0.0]), np.array([1, 2, 0])))
    evaluator.update(CM_EMPTY, batch_per_image_iou=(np.array([0.5, 0.0, 0.0]), np.array([1, 0, 0])))
    result = evaluator.result()
    assert result["per_class_iou"]["c"] == 0.0
    assert result["mean_iou"] == pytest.approx((3 / 5 + 5 / 7) / 3)
    assert result["per_image_mean_iou"] == pytest.approx(2.0 / 4)


def test_evaluator_with_void_predictions_as_false_negatives():
    evaluator = metrics.SemanticEvaluator(["a", "b"], void_prediction="false_negative")
    wide = metrics.confusion_matrix(VOID_PRED, VOID_LABEL, 2, void_prediction="false_negative")
    evaluator.update(wide)
    result = evaluator.result()
    assert result["per_class_iou"] == pytest.approx({"a": 1 / 4, "b": 1 / 2})
    assert result["num_void_predictions"] == 2 and result["num_pixels"] == 5
    # The 0-1 cost covers the 3 pixels with a class prediction, of which 1 is wrong.
    assert result["mean_cost"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="void_prediction"):
        evaluator.update(np.zeros((2, 2), np.int64))
