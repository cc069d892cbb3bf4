"""Panoptic-DeepLab: targets, post-processing on hand-made maps, the model and a short run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import models as model_configs
from seg_jax import metrics
from seg_jax.data import panoptic_targets, shapes
from seg_jax.data import shapes_render as sr
from seg_jax.models import create_model, panoptic_postprocess
from seg_jax.models.panoptic_deeplab import PanopticDecoder, find_centers

ROAD, CAR, PERSON = 0, 1, 2
THINGS = (CAR, PERSON)


def _targets(label, instance, **kwargs):
    return panoptic_targets.panoptic_targets(
        label, instance, thing_classes=THINGS, num_classes=3, ignore_label=255,
        **{"max_instances": 8, "sigma": 2.0, **kwargs})


def test_targets_of_one_square_by_hand():
    label = np.zeros((1, 10, 12), int)
    instance = np.zeros_like(label)
    label[0, 2:6, 3:7], instance[0, 2:6, 3:7] = CAR, 1  # centre of mass (3.5, 4.5)
    label[0, 9, :] = 255
    t = _targets(label, instance)
    # Offsets point from each pixel of the square to (3.5, 4.5), and are 0 elsewhere.
    np.testing.assert_allclose(t["offset"][0, 2, 3], [1.5, 1.5])
    np.testing.assert_allclose(t["offset"][0, 5, 6], [-1.5, -1.5])
    assert float(jnp.abs(t["offset"][0, 0, 0]).sum()) == 0.0
    assert float(t["offset_weight"].sum()) == 16
    # The heatmap is exp(-d^2 / (2 sigma^2)) of the distance to the centre, sigma = 2.
    assert float(t["center"][0, 3, 4]) == pytest.approx(np.exp(-0.5 / 8))
    assert float(t["center"][0, 0, 0]) == pytest.approx(np.exp(-(3.5**2 + 4.5**2) / 8))
    # Void pixels carry no centre loss; every other pixel does.
    assert float(t["center_weight"][0, 9].sum()) == 0.0
    assert float(t["center_weight"].sum()) == 10 * 12 - 12


def test_targets_separate_classes_sharing_an_instance_id():
    # Instance ids are per class (the COCO reader numbers them so): car 1 and person 1 are two
    # segments with their own centres, here on pixels (odd-sized squares).
    label = np.zeros((1, 9, 16), int)
    instance = np.zeros_like(label)
    label[0, 1:4, 1:4], instance[0, 1:4, 1:4] = CAR, 1  # centre (2, 2)
    label[0, 5:8, 12:15], instance[0, 5:8, 12:15] = PERSON, 1  # centre (6, 13)
    t = _targets(label, instance)
    np.testing.assert_allclose(t["offset"][0, 1, 1], [1.0, 1.0])
    np.testing.assert_allclose(t["offset"][0, 7, 14], [-1.0, -1.0])
    peaks, valid = find_centers(t["center"], threshold=0.5, nms_kernel=3, top_k=4)
    found = {tuple(p) for p, v in zip(np.asarray(peaks[0]).tolist(), np.asarray(valid[0])) if v}
    assert found == {(2, 2), (6, 13)}


def test_check_instances_names_the_bound():
    label = np.full((4, 4), CAR)
    with pytest.raises(ValueError, match="up to 9, above max_instances=8"):
        panoptic_targets.check_instances(label, np.full((4, 4), 9), thing_classes=THINGS,
                                         num_classes=3, ignore_label=255, max_instances=8,
                                         where="example 3")
    label = np.repeat([[CAR], [PERSON]], 8, axis=1).reshape(4, 4)  # a car half, a person half
    instance = np.arange(16).reshape(4, 4) % 3 + 1  # ids 1..3 in each: 6 segments
    with pytest.raises(ValueError, match="example 3: 6 thing segments, more than max_instances=4"):
        panoptic_targets.check_instances(label, instance, thing_classes=THINGS, num_classes=3,
                                         ignore_label=255, max_instances=4, where="example 3")


def _hand_made_outputs():
    """Two cars and a person on road; centre peaks and offsets drawn as a perfect model would."""
    semantic = np.zeros((1, 12, 20), np.int32)
    expected = np.zeros_like(semantic)
    semantic[0, 1:6, 1:6], expected[0, 1:6, 1:6] = CAR, 1
    semantic[0, 6:11, 1:6], expected[0, 6:11, 1:6] = CAR, 2  # touching the first car
    semantic[0, 3:9, 12:18], expected[0, 3:9, 12:18] = PERSON, 3
    centers = {1: (3, 3), 2: (8, 3), 3: (6, 15)}
    heatmap = np.zeros((1, 12, 20), np.float32)
    offset = np.zeros((1, 12, 20, 2), np.float32)
    ys, xs = np.mgrid[:12, :20]
    for k, (cy, cx) in centers.items():
        heatmap[0, cy, cx] = 1.0 - 0.1 * k
        mask = expected[0] == k
        offset[0, mask, 0] = cy - ys[mask] + 0.3  # not exact: the nearest centre still wins
        offset[0, mask, 1] = cx - xs[mask] - 0.3
    heatmap[0, 4, 3] = 0.5  # a weaker neighbour of car 1's peak, removed by NMS
    heatmap[0, 0, 19] = 0.05  # a stray peak below the threshold
    return semantic, heatmap, offset, expected


def test_postprocess_recovers_hand_made_instances():
    semantic, heatmap, offset, expected = _hand_made_outputs()
    pan_semantic, instance = panoptic_postprocess(
        jnp.asarray(semantic), jnp.asarray(heatmap), jnp.asarray(offset), thing_classes=THINGS,
        num_classes=3, center_threshold=0.1, nms_kernel=3, top_k=8)
    # Ranks follow the peak heights: car 1 (0.9), car 2 (0.8), person (0.7).
    np.testing.assert_array_equal(np.asarray(instance), expected)
    np.testing.assert_array_equal(np.asarray(pan_semantic), semantic)


def test_postprocess_majority_vote_and_no_centres():
    semantic, heatmap, offset, _ = _hand_made_outputs()
    noisy = semantic.copy()
    noisy[0, 1, 1:3] = PERSON  # two person pixels inside car 1: outvoted by its 23 car pixels
    pan_semantic, instance = panoptic_postprocess(
        jnp.asarray(noisy), jnp.asarray(heatmap), jnp.asarray(offset), thing_classes=THINGS,
        num_classes=3, nms_kernel=3, top_k=8)
    assert np.all(np.asarray(pan_semantic)[0, 1, 1:3] == CAR)
    # With no centre above the threshold, thing pixels keep their class and get no instance.
    pan_semantic, instance = panoptic_postprocess(
        jnp.asarray(semantic), jnp.zeros_like(jnp.asarray(heatmap)), jnp.asarray(offset),
        thing_classes=THINGS, num_classes=3, top_k=8)
    assert int(np.asarray(instance).max()) == 0
    np.testing.assert_array_equal(np.asarray(pan_semantic), semantic)


def test_oracle_outputs_give_back_the_truth_on_shapes():
    # The targets of the true labels, fed to the post-processing as if a model predicted them,
    # give back the true panoptic maps (PQ 1 on all 200 validation images; 16 here): targets and
    # post-processing agree on every convention (centre of mass, (dy, dx), instance numbering).
    examples = [shapes.render_split_example("validation", i) for i in range(16)]
    label = np.stack([e["semantic"] for e in examples]).astype(np.int32)
    instance = np.stack([e["instance"] for e in examples]).astype(np.int32)
    things = sr.THING_CLASSES
    t = panoptic_targets.panoptic_targets(label, instance, thing_classes=things,
                                          num_classes=sr.NUM_CLASSES, ignore_label=255,
                                          max_instances=16)
    pan_semantic, pan_instance = panoptic_postprocess(
        jnp.asarray(label), t["center"], t["offset"], thing_classes=things,
        num_classes=sr.NUM_CLASSES, top_k=16)
    result = metrics.panoptic_quality(pan_semantic, pan_instance, label, instance,
                                      things=things, stuff=sr.STUFF_CLASSES)
    assert result["all"]["pq"] == 1.0, result


@pytest.mark.parametrize("height,width", [(64, 64), (45, 67)])
def test_model_outputs_at_the_input_size(height, width):
    config = model_configs.panoptic_deeplab(
        num_classes=5, backbone="resnet18", base_width=8, output_stride=16, aspp_channels=8,
        decoder_channels=8, low_level_channels=(4, 4), head_channels=8, instance_aspp_channels=8,
        instance_decoder_channels=8, instance_low_level_channels=(4, 4), instance_head_channels=4)
    model = create_model(config)
    images = jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32)
    # Shapes only (no compilation): the short training run below executes the model.
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    assert outputs.logits.shape == (2, height, width, 5)
    assert outputs.center.shape == (2, height, width)
    assert outputs.offset.shape == (2, height, width, 2)
    assert outputs.aux_logits is None and outputs.is_panoptic
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(outputs))


def test_decoder_rejects_a_backbone_without_stride_8_features():
    features = {"high_level": jnp.zeros((1, 2, 2, 8)), "low_level": jnp.zeros((1, 8, 8, 8))}
    with pytest.raises(ValueError, match=r"needs backbone features \['stage2'\]"):
        PanopticDecoder().init(jax.random.key(0), features, train=False)


def test_quick_panoptic_run_trains_all_three_heads_and_reports_pq(shapes_data_dir, tmp_path):
    from configs import shapes_panoptic
    from seg_jax import train

    config = shapes_panoptic.get_config("quick")
    config.data.data_dir = shapes_data_dir
    config.num_train_steps = 10
    config.checkpoint_every_steps = 10
    results = train.train_and_evaluate(config, str(tmp_path))
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "tp", "fp", "fn", "over_merge",
                "over_split", "per_class_pq", "mean_iou", "boundary_f_score"):
        assert key in results, key
    assert set(results["per_class_pq"]) == set(sr.CLASS_NAMES)
    # Evaluation scores each of the 16 validation images' segments: every true segment is a TP
    # or a FN, so TP + FN is the number of true segments whatever the model predicts.
    labels = [shapes.render_split_example("validation", i) for i in range(16)]
    segments = sum(len(np.unique(e["instance"][e["instance"] > 0])) + len(np.unique(
        e["semantic"][np.isin(e["semantic"], sr.STUFF_CLASSES)])) for e in labels)
    assert results["tp"] + results["fn"] == segments
    import json, os
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        record = json.loads(f.readline())
    assert {"loss/semantic", "loss/center", "loss/offset"} <= set(record)
    # The logged loss is the paper's weighted sum of the three terms (means over the interval).
    total = (record["loss/semantic"] + config.panoptic.center_loss_weight * record["loss/center"]
             + config.panoptic.offset_loss_weight * record["loss/offset"])
    assert record["loss"] == pytest.approx(total, rel=1e-5)
