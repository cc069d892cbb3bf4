"""Panoptic Quality: hand-worked golden values, the presets' differences, edge cases and errors."""

import jax
import numpy as np
import pytest

from seg_jax import metrics
from seg_jax.metrics import panoptic

ROAD, CAR = 0, 1  # stuff, thing
NAMES = ["road", "car"]
VOID = 255


def _scene(height=8, width=12):
    semantic = np.full((1, height, width), ROAD)
    return semantic, np.zeros_like(semantic)


def _paint(semantic, instance, rows, cols, cls, inst):
    semantic[0, rows, cols] = cls
    instance[0, rows, cols] = inst


def _two_cars():
    """Road with car 1 (4x5 = 20 px) and car 2 (4x3 = 12 px) side by side."""
    sem, inst = _scene()
    _paint(sem, inst, slice(2, 6), slice(1, 6), CAR, 1)
    _paint(sem, inst, slice(2, 6), slice(6, 9), CAR, 2)
    return sem, inst


def _pq(pred, gt, **kwargs):
    return metrics.panoptic_quality(*pred, *gt, things=[CAR], stuff=[ROAD], class_names=NAMES, **kwargs)


def test_perfect_prediction():
    gt = _two_cars()
    result = _pq(gt, gt)
    assert result["all"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    assert (result["tp"], result["fp"], result["fn"]) == (3, 0, 0)


def test_over_merge_keeps_semantic_iou_and_costs_recognition():
    # The design text's over-merge: both cars predicted as one blob. Every pixel keeps its class, so
    # the semantic confusion matrix is perfect, but car 2 is lost. The blob (32 px) matches car 1
    # with IoU 20/32 = 0.625 > 0.5; car 2 is a false negative swallowed by the matched blob.
    gt_sem, gt_inst = _two_cars()
    pred = (gt_sem, np.where(gt_sem == CAR, 7, 0))
    cm = np.asarray(metrics.confusion_matrix(pred[0], gt_sem, 2), np.int64)
    assert metrics.mean_iou(cm) == 1.0

    car = _pq(pred, (gt_sem, gt_inst))["per_class"]["car"]
    assert (car["tp"], car["fp"], car["fn"]) == (1, 0, 1)
    assert car["sq"] == pytest.approx(0.625)
    assert car["rq"] == pytest.approx(1 / 1.5)
    assert car["pq"] == pytest.approx(0.625 / 1.5)
    assert (car["over_merge"], car["over_split"]) == (1, 0)


def test_over_split_keeps_semantic_iou_and_costs_recognition():
    # The design text's over-split: car 1 (20 px) predicted as two pieces of 12 and 8 px. The big
    # piece matches with IoU 12/20 = 0.6; the small one is an invented object (a false positive)
    # lying inside the matched car.
    gt_sem, gt_inst = _two_cars()
    pred_inst = gt_inst.copy()
    pred_inst[0, 2:6, 4:6] = 5
    cm = np.asarray(metrics.confusion_matrix(gt_sem, gt_sem, 2), np.int64)
    assert metrics.mean_iou(cm) == 1.0

    result = _pq((gt_sem, pred_inst), (gt_sem, gt_inst))
    car = result["per_class"]["car"]
    assert (car["tp"], car["fp"], car["fn"]) == (2, 1, 0)
    assert car["sq"] == pytest.approx((0.6 + 1.0) / 2)
    assert car["rq"] == pytest.approx(2 / 2.5)
    assert car["pq"] == pytest.approx(1.6 / 2.5)
    assert (car["over_merge"], car["over_split"]) == (0, 1)
    assert result["things"]["pq"] == pytest.approx(1.6 / 2.5)
    assert result["all"]["pq"] == pytest.approx((1.6 / 2.5 + 1.0) / 2)


def test_equal_halves_merged_match_nothing():
    # Two equal cars merged: IoU with each is exactly 0.5, not above it, so nothing matches (the
    # threshold is strict): 2 FN and 1 FP, and no over-merge since the blob matched nothing.
    sem, inst = _scene()
    _paint(sem, inst, slice(2, 6), slice(1, 5), CAR, 1)
    _paint(sem, inst, slice(2, 6), slice(5, 9), CAR, 2)
    car = _pq((sem, np.where(sem == CAR, 1, 0)), (sem, inst))["per_class"]["car"]
    assert (car["tp"], car["fp"], car["fn"], car["over_merge"]) == (0, 1, 2, 0)
    assert (car["pq"], car["sq"], car["rq"]) == (0.0, 0.0, 0.0)


def test_void_is_removed_from_the_union_and_excuses_false_positives():
    gt_sem, gt_inst = _scene()
    gt_sem[0, :, 10:] = VOID  # 16 void pixels on the right
    _paint(gt_sem, gt_inst, slice(2, 6), slice(6, 10), CAR, 1)  # 16 px car next to the void
    pred_sem, pred_inst = gt_sem.copy(), gt_inst.copy()
    _paint(pred_sem, pred_inst, slice(2, 6), slice(6, 12), CAR, 1)  # the car spills 8 px into void
    _paint(pred_sem, pred_inst, slice(0, 2), slice(10, 12), CAR, 2)  # 4 px ghost entirely on void
    pred_sem[0, 6:, 10:] = ROAD  # road predicted on void
    car = _pq((pred_sem, pred_inst), (gt_sem, gt_inst))["per_class"]["car"]
    # IoU = 16 / (24 + 16 - 16 - 8 on void) = 1; the ghost lies on void: not a false positive.
    assert (car["tp"], car["fp"], car["fn"], car["sq"]) == (1, 0, 0, 1.0)
    road = _pq((pred_sem, pred_inst), (gt_sem, gt_inst))["per_class"]["road"]
    assert road["sq"] == 1.0


def _crowd_case():
    """A labelled car and a crowd region of cars (thing pixels with instance 0, 12 px)."""
    sem, inst = _scene()
    _paint(sem, inst, slice(2, 6), slice(1, 5), CAR, 1)
    _paint(sem, inst, slice(2, 6), slice(7, 10), CAR, 0)
    pred_sem, pred_inst = sem.copy(), inst.copy()
    pred_inst[0, 2:6, 7:10] = 3  # one predicted car covering the crowd
    return (pred_sem, pred_inst), (sem, inst)


def test_crowd_regions_follow_coco_and_are_plain_segments_in_deeplab2():
    pred, gt = _crowd_case()
    coco = _pq(pred, gt)["per_class"]["car"]
    # COCO: the crowd is never matched nor missed, and a prediction on it is no false positive.
    assert (coco["tp"], coco["fp"], coco["fn"]) == (1, 0, 0)
    # deeplab2 has no crowd: instance 0 is an ordinary car segment, matched exactly here.
    deeplab2 = _pq(pred, gt, preset="deeplab2")["per_class"]["car"]
    assert (deeplab2["tp"], deeplab2["fp"], deeplab2["fn"]) == (2, 0, 0)
    # Without the covering prediction the crowd is a miss only for deeplab2.
    pred[1][0, 2:6, 7:10] = 0
    pred[0][0, 2:6, 7:10] = ROAD
    assert _pq(pred, gt)["per_class"]["car"]["fn"] == 0
    assert _pq(pred, gt, preset="deeplab2")["per_class"]["car"]["fn"] == 1


def test_torchmetrics_preset_removes_predicted_void_from_the_union():
    gt_sem, gt_inst = _scene()
    _paint(gt_sem, gt_inst, slice(2, 6), slice(1, 6), CAR, 1)  # 20 px
    pred_sem, pred_inst = gt_sem.copy(), gt_inst.copy()
    pred_sem[0, 2:6, 1:4] = VOID  # 12 of its pixels predicted void: 8 px predicted car
    coco = _pq((pred_sem, pred_inst), (gt_sem, gt_inst))["per_class"]["car"]
    assert (coco["tp"], coco["fn"]) == (0, 1)  # IoU 8/20
    torchmetrics = _pq((pred_sem, pred_inst), (gt_sem, gt_inst), preset="torchmetrics")
    car = torchmetrics["per_class"]["car"]
    # union = 8 + 20 - 8 - 12 (predicted void) = 8, so IoU 1; and a ground truth mostly predicted
    # void would not even be a false negative.
    assert (car["tp"], car["fn"], car["sq"]) == (1, 0, 1.0)


def test_empty_prediction_empty_truth_and_all_void():
    gt = _two_cars()
    nothing = (np.full_like(gt[0], VOID), np.zeros_like(gt[1]))
    missed = _pq(nothing, gt)
    assert (missed["tp"], missed["fp"], missed["fn"]) == (0, 0, 3)
    assert missed["all"]["pq"] == 0.0 and missed["all"]["n"] == 2
    # Predictions on an all-void truth are excused: no class is scored, every average is NaN.
    empty = _pq(gt, nothing)
    assert (empty["tp"], empty["fp"], empty["fn"]) == (0, 0, 0)
    assert empty["all"]["n"] == 0 and np.isnan(empty["all"]["pq"])
    assert np.isnan(empty["per_class"]["car"]["pq"])
    both = _pq(nothing, nothing)
    assert np.isnan(both["things"]["sq"]) and np.isnan(both["stuff"]["rq"])


def test_absent_group_is_nan_not_a_crash():
    sem, inst = _scene()  # road only, and no car anywhere
    result = _pq((sem, inst), (sem, inst))
    assert result["stuff"]["pq"] == 1.0
    assert result["things"]["n"] == 0 and np.isnan(result["things"]["pq"])
    assert result["all"]["pq"] == 1.0 and result["all"]["n"] == 1


def test_undeclared_classes_are_void():
    gt = _two_cars()
    pred = (gt[0].copy(), gt[1].copy())
    pred[0][0, 0, :] = 3  # class 3 is neither thing nor stuff (num_classes = 4 below)
    result = metrics.panoptic_quality(*pred, *gt, things=[CAR], stuff=[ROAD, 2])
    assert set(result["per_class"]) == {"0", "1", "2"}
    # Road (96 - 32 car = 64 px) loses its 12 top-row px to the void class: IoU 52/64 still matches.
    assert result["per_class"]["0"]["sq"] == pytest.approx(52 / 64)
    assert (result["tp"], result["fp"], result["fn"]) == (3, 0, 0)


def test_stuff_instance_ids_are_ignored():
    gt = _two_cars()
    pred = (gt[0], np.where(gt[0] == ROAD, 9, gt[1]))  # road pixels carry instance 9
    assert _pq(pred, gt)["all"]["pq"] == 1.0


def test_statistics_add_across_batches_and_run_under_jit():
    rng = np.random.default_rng(0)
    gt_sem = rng.integers(0, 3, (4, 16, 16))
    gt_inst = np.where(gt_sem == 1, rng.integers(1, 4, gt_sem.shape), 0)
    pred_sem = np.where(rng.random(gt_sem.shape) < 0.1, rng.integers(0, 3, gt_sem.shape), gt_sem)
    pred_inst = np.where(pred_sem == 1, rng.integers(1, 3, gt_sem.shape), 0)
    kwargs = dict(num_classes=3, things=(1,), stuff=(0, 2), max_segments=16)
    stats = jax.jit(lambda *m: panoptic.panoptic_statistics(*m, **kwargs))
    whole = stats(pred_sem, pred_inst, gt_sem, gt_inst)
    halves = [stats(pred_sem[s], pred_inst[s], gt_sem[s], gt_inst[s]) for s in (slice(0, 2), slice(2, 4))]
    for key in panoptic.CLASS_SUMS:
        np.testing.assert_allclose(whole[key], halves[0][key] + halves[1][key], rtol=1e-6)
    assert int(whole["tp"].sum() + whole["fn"].sum()) > 0


def test_evaluator_padding_is_neutral_at_odd_sizes():
    pred, gt = _crowd_case()
    padded = metrics.PanopticEvaluator([CAR], [ROAD], pad_to=64)  # 8x12 -> 64x64
    exact = metrics.PanopticEvaluator([CAR], [ROAD], pad_to=1)
    for ev in (padded, exact):
        ev.update(*pred, *gt)
        ev.update(pred[0][0], pred[1][0], gt[0][0], gt[1][0])  # a single [H, W] image works too
    assert padded.result() == exact.result()
    assert padded.result()["num_images"] == 2


def test_too_many_segments_is_an_error_not_a_truncation():
    # 32 thing segments: instances 1..16 of each of two thing classes (ids stay below the bound).
    sem = (np.arange(32) % 2 + 1).reshape(1, 4, 8)
    inst = (np.arange(32) // 2 + 1).reshape(1, 4, 8)
    kwargs = dict(things=[1, 2], stuff=[0])
    with pytest.raises(ValueError, match="32 segments.*max_segments=20.*at least 32"):
        metrics.panoptic_quality(sem, inst, sem, inst, max_segments=20, **kwargs)
    assert metrics.panoptic_quality(sem, inst, sem, inst, max_segments=32, **kwargs)["things"]["pq"] == 1.0


def test_bad_inputs_have_clear_errors():
    gt = _two_cars()
    with pytest.raises(ValueError, match="Unknown panoptic preset 'cityscapes'"):
        _pq(gt, gt, preset="cityscapes")
    with pytest.raises(ValueError, match="both thing and stuff"):
        metrics.panoptic_quality(*gt, *gt, things=[1], stuff=[0, 1])
    with pytest.raises(ValueError, match="one shape"):
        _pq((gt[0][:, :4], gt[1][:, :4]), gt)
    with pytest.raises(ValueError, match="instance id outside .0, max_segments=256"):
        _pq((gt[0], gt[1] * 2**30), gt)
    with pytest.raises(ValueError, match="ignore_label 1 is a class id"):
        _pq(gt, gt, ignore_label=1)
