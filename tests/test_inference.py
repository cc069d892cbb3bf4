"""Whole-image prediction: sliding windows, test-time augmentation, and evaluation of images of
any size padded to a canvas, which must score exactly as the predictions cropped back."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import folder as folder_config
from seg_jax import inference, metrics, train, visualize
from seg_jax.data import augment, pipeline
from folder_helpers import tiny_folder_config, write_folder

# A per-pixel "model": translation-equivariant and local, so windows cannot change its output.
_W = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)


def _pixelwise(images):
    return images @ _W


def _images(n=2, h=37, w=53, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, h, w, 3)), jnp.float32)


def test_window_starts_cover_the_image_and_end_at_its_edge():
    assert inference.window_starts(37, 16, 0.5) == (0, 8, 16, 21)
    assert inference.window_starts(53, 20, 0.5) == (0, 10, 20, 30, 33)
    assert inference.window_starts(512, 512, 1 / 3) == (0,)
    assert inference.window_starts(30, 512, 1 / 3) == (0,)
    # mmsegmentation's ADE20K setting: 512 px windows at stride 341 over 683 px.
    assert inference.window_starts(683, 512, 1 / 3) == (0, 171)
    assert inference.window_starts(2048, 512, 1 / 3) == (0, 341, 682, 1023, 1364, 1536)


@pytest.mark.parametrize("window,overlap", [((16, 20), 0.5), ((64, 64), 1 / 3), ((37, 53), 0.0),
                                            ((10, 60), 0.25)])
def test_sliding_windows_of_a_pixelwise_model_equal_one_pass(window, overlap):
    images = _images()
    options = inference.InferenceOptions(mode="sliding", window=window, window_overlap=overlap)
    probs, logits = jax.jit(lambda x: inference.predict_logits(_pixelwise, x, options))(images)
    np.testing.assert_allclose(logits, _pixelwise(images), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs, jax.nn.softmax(_pixelwise(images)), rtol=1e-5, atol=1e-6)


def test_sliding_windows_average_logits_over_the_windows_covering_a_pixel():
    # A "model" whose logits are the window's mean input: each pixel's result is the average of
    # the means of the windows that contain it, computed here by hand.
    def window_mean(x):
        return jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True)[..., :1], x.shape[:3] + (1,))

    images = _images(n=1, h=12, w=10)
    logits = inference.sliding_window_logits(window_mean, images, (8, 6), 0.5)
    tops, lefts = inference.window_starts(12, 8, 0.5), inference.window_starts(10, 6, 0.5)
    assert tops == (0, 4) and lefts == (0, 3, 4)
    x = np.asarray(images[0, ..., 0])
    total, count = np.zeros((12, 10)), np.zeros((12, 10))
    for t in tops:
        for l in lefts:
            total[t:t + 8, l:l + 6] += x[t:t + 8, l:l + 6].mean()
            count[t:t + 8, l:l + 6] += 1
    np.testing.assert_allclose(logits[0, ..., 0], total / count, rtol=1e-5, atol=1e-6)


def test_test_time_augmentation_averages_probabilities_of_flips_and_scales():
    images = _images()
    flip = inference.InferenceOptions(flip=True)
    # A model that sees its input mirrored: only the flip's own pass is undone exactly.
    asymmetric = lambda x: _pixelwise(x) + jnp.linspace(0, 3, x.shape[2])[None, None, :, None]
    probs, logits = inference.predict_logits(asymmetric, images, flip)
    expected = 0.5 * (jax.nn.softmax(asymmetric(images))
                      + jax.nn.softmax(asymmetric(images[:, :, ::-1])[:, :, ::-1]))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.nn.softmax(logits), probs, atol=1e-6)

    scales = inference.InferenceOptions(scales=(0.5, 1.0))
    probs, _ = inference.predict_logits(_pixelwise, images, scales)
    half = jax.image.resize(images, (2, 18, 26, 3), "bilinear", antialias=False)
    back = jax.image.resize(_pixelwise(half), (2, 37, 53, 5), "bilinear", antialias=False)
    expected = 0.5 * (jax.nn.softmax(back) + jax.nn.softmax(_pixelwise(images)))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_bad_inference_settings_are_named():
    with pytest.raises(ValueError, match="config.evaluation.mode='tiles'"):
        inference.InferenceOptions(mode="tiles")
    with pytest.raises(ValueError, match="window_overlap=1.0"):
        inference.InferenceOptions(mode="sliding", window=(8, 8), window_overlap=1.0)
    with pytest.raises(ValueError, match=r"scales=\(0.0,\)"):
        inference.InferenceOptions(scales=(0.0,))
    with pytest.raises(ValueError, match=r"does not fit config.evaluation.pad_size=\(32, 32\)"):
        pipeline.padded_size(40, 20, pad_multiple=32, pad_size=(32, 32))


class _Sized:
    """A source of examples of given sizes; label = example index mod 3 (one class per image)."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        h, w = self.sizes[i]
        return {"image": np.full((h, w, 3), 10 * i, np.uint8),
                "label": np.full((h, w), i % 3, np.int32)}


def test_plan_groups_images_by_padded_size_and_processes_share_each_batch():
    sizes = [(37, 53), (20, 30), (33, 40), (64, 64), (50, 60), (20, 30)]
    source = _Sized(sizes)
    plan = pipeline.plan_eval_batches(source, 4, pad_multiple=32)
    assert [(b.canvas, b.indices) for b in plan] == [
        ((64, 64), (0, 2, 3, 4)), ((32, 32), (1, 5, -1, -1))]
    data = folder_config.get_config().data
    whole = list(pipeline.eval_batches(source, data, global_batch_size=4, num_classes=3, plan=plan))
    assert whole[1]["image"].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(whole[0]["size"], [[37, 53], [33, 40], [64, 64], [50, 60]])
    np.testing.assert_array_equal(whole[1]["index"], [1, 5, -1, -1])
    label = whole[0]["label"][0]
    assert (label[:37, :53] == 0).all() and (label[37:] == 255).all() and (label[:, 53:] == 255).all()
    assert (whole[1]["label"][2:] == 255).all() and (whole[1]["size"][2:] == 0).all()
    image = whole[0]["image"][0]
    np.testing.assert_allclose(image[:37, :53],
                               augment.normalize_image(source[0]["image"], data.mean, data.std))
    assert (image[37:] == 0).all()  # the normalised mean colour
    # Per-host sharding: each process builds its half; together they are the global batch.
    parts = [list(pipeline.eval_batches(source, data, global_batch_size=4, num_classes=3,
                                        plan=plan, process_index=p, process_count=2))
             for p in range(2)]
    for b, batch in enumerate(whole):
        for key in batch:
            np.testing.assert_array_equal(
                np.concatenate([parts[0][b][key], parts[1][b][key]]), batch[key])
    # A fixed canvas needs no pass over the sizes; an image too large for it is named.
    fixed = pipeline.plan_eval_batches(source, 4, pad_size=(64, 64))
    assert [b.indices for b in fixed] == [(0, 1, 2, 3), (4, 5, -1, -1)]
    small = pipeline.plan_eval_batches(source, 4, pad_size=(40, 60))
    with pytest.raises(ValueError, match=r"evaluation example|64x64 does not fit"):
        list(pipeline.eval_batches(source, data, global_batch_size=4, num_classes=3, plan=small))


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_evaluation_at_odd_sizes_equals_scoring_the_predictions_cropped_back(tmp_path, mode):
    sizes = [(37, 53), (40, 48), (21, 30), (37, 53), (33, 33)]
    root = str(tmp_path / "data")
    write_folder(root, sizes)
    config = tiny_folder_config(root)
    config.evaluation.mode = mode
    config.evaluation.window = (24, 24)
    run = train.Experiment(config, str(tmp_path / "run"))
    state, _ = run.initial_state()
    results, predictions = run.evaluate(state)

    # Independently: each image alone on its own canvas, logits cropped back, scored at its size.
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    apply = jax.jit(lambda x: run.model.apply(variables, x, train=False).logits)
    cm = np.zeros((3, 3), np.int64)
    boundary_sums = None
    own_predictions = []
    for i, (h, w) in enumerate(sizes):
        example = run.eval_source[i]
        canvas = pipeline.padded_size(h, w, pad_multiple=config.evaluation.pad_multiple)
        image = augment.normalize_image(example["image"], config.data.mean, config.data.std)
        image = np.pad(image, ((0, canvas[0] - h), (0, canvas[1] - w), (0, 0)))[None]
        if mode == "whole":
            logits = apply(image)
        else:
            logits = inference.sliding_window_logits(apply, jnp.asarray(image), (24, 24), 1 / 3)
        pred = np.asarray(jnp.argmax(logits, -1))[:, :h, :w]
        own_predictions.append(pred[0])
        label = example["label"][None]
        cm += np.asarray(metrics.confusion_matrix(pred, label, 3))
        stats = jax.device_get(metrics.boundary_statistics(pred, label, 3, tolerance=2.0))
        stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
        boundary_sums = stats if boundary_sums is None else {
            k: boundary_sums[k] + stats[k] for k in stats}

    for i in range(3):
        np.testing.assert_array_equal(predictions[i], own_predictions[i])
    assert results["mean_iou"] == pytest.approx(float(metrics.mean_iou(cm)), abs=1e-12)
    assert results["pixel_accuracy"] == pytest.approx(float(metrics.pixel_accuracy(cm)), abs=1e-12)
    expected_bf = metrics.boundary_scores(boundary_sums)["f_score"]
    # Per-image F values are summed in float32 on the device, in a different order here.
    assert results["boundary_f_score"] == pytest.approx(float(expected_bf), rel=1e-6)
    assert results["num_examples"] == len(sizes)
    # Four images share the (64, 64) canvas, one is alone on (32, 32) with three padding entries.
    assert [(b.canvas, b.indices) for b in run.eval_plan] == [
        ((64, 64), (0, 1, 3, 4)), ((32, 32), (2, -1, -1, -1))]
    run.write_outputs(results, predictions)
    # One row per prediction (image | truth | prediction), drawn at twice the size between a
    # 16-pixel header and an 18-pixel legend; the prediction column shows the predicted classes.
    grid = np.asarray(Image.open(os.path.join(run.workdir, "predictions.png")).convert("RGB"))
    shapes = [p.shape for p in predictions]
    assert grid.shape == (16 + 2 * sum(h for h, _ in shapes) + 18,
                          2 * 3 * max(w for _, w in shapes), 3)
    h, w = shapes[0]
    np.testing.assert_array_equal(
        grid[16:16 + 2 * h:2, 4 * w:6 * w:2],
        visualize.colorize(own_predictions[0], run.info.palette, run.info.ignore_label))
