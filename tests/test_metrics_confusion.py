"""Confusion-matrix metrics against hand-worked values and an independent numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax import metrics

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
