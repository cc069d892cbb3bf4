"""The input pipeline: determinism given (seed, step), process sharding, padding, label checks."""

import ml_collections
import numpy as np
import pytest

from seg_jax.data import augment, pipeline

NUM_CLASSES = 4


def _source(n=10, size=(20, 24)):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        # 4x4 blocks of one class, so there are regions whose interior survives resizing.
        blocks = rng.integers(0, NUM_CLASSES, size=(size[0] // 4, size[1] // 4))
        label = blocks.repeat(4, 0).repeat(4, 1).astype(np.uint8)
        # The image encodes the label and the example index, so alignment can be checked exactly.
        image = np.stack([label * 60, np.full(size, i), np.zeros(size)], -1).astype(np.uint8)
        out.append({"image": image, "label": label})
    return out


def _data_config(**overrides):
    config = ml_collections.ConfigDict(dict(
        crop_size=16, min_scale=0.5, max_scale=2.0, hflip=True, ignore_label=255,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_workers=2, prefetch=2,
    ))
    config.update(overrides)
    return config


def _loader(source, **kwargs):
    kwargs.setdefault("global_batch_size", 4)
    kwargs.setdefault("seed", 3)
    return pipeline.TrainLoader(source, _data_config(), num_classes=NUM_CLASSES, **kwargs)


def test_num_workers_zero_means_one_thread_per_available_core(monkeypatch):
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert pipeline.available_cores() == 3
    assert pipeline.worker_count(0) == 3
    assert pipeline.worker_count(5) == 5
    with pytest.raises(ValueError, match=r"num_workers must be >= 0 .*3 here\), got -1"):
        pipeline.worker_count(-1)
    # 'auto' feeds the same batches as any fixed count: they are a function of seed and step.
    source = _source(8)
    auto = pipeline.TrainLoader(source, _data_config(num_workers=0), num_classes=NUM_CLASSES,
                                global_batch_size=4, seed=3)
    fixed = _loader(source)
    for got, expected in zip(auto.iterate(0, 3), fixed.iterate(0, 3)):
        np.testing.assert_array_equal(got["image"], expected["image"])


def test_batches_are_a_pure_function_of_seed_and_step():
    source = _source()
    a, b = _loader(source), _loader(source)
    for step in (0, 1, 7):
        for key in ("image", "label"):
            np.testing.assert_array_equal(a.batch(step)[key], b.batch(step)[key])
    assert not np.array_equal(a.batch(0)["image"], a.batch(1)["image"])
    other_seed = _loader(source, seed=4)
    assert not np.array_equal(a.batch(0)["label"], other_seed.batch(0)["label"])


def test_resumed_iteration_sees_the_same_batches():
    source = _source()
    uninterrupted = list(_loader(source).iterate(0, 6))
    resumed = list(_loader(source).iterate(3, 3))
    for x, y in zip(uninterrupted[3:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_each_epoch_visits_every_example_once():
    source = _source(n=8)
    loader = _loader(source)
    epoch = [loader.example_index(s, p) for s in range(2) for p in range(4)]
    assert sorted(epoch) == list(range(8))


def test_process_slices_concatenate_to_the_global_batch():
    source = _source()
    whole = _loader(source).batch(5)
    parts = [_loader(source, process_index=i, process_count=2).batch(5) for i in range(2)]
    for key in ("image", "label"):
        np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]))


def test_augmentation_keeps_image_and_label_aligned():
    batch = _loader(_source()).batch(2)
    image, label = batch["image"], batch["label"]
    assert image.shape == (4, 16, 16, 3) and image.dtype == np.float32
    assert label.shape == (4, 16, 16) and label.dtype == np.int32
    valid = label != 255
    # Away from class boundaries bilinear resizing keeps the exact colour, so the channel that
    # encodes the label must agree with it; check the pixels whose 3x3 neighbourhood is uniform.
    padded = np.pad(label, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    uniform = np.ones_like(valid)
    for dy in range(3):
        for dx in range(3):
            uniform &= padded[:, dy : dy + 16, dx : dx + 16] == label
    check = valid & uniform
    assert check.sum() > 50
    np.testing.assert_allclose(image[..., 0][check] * 255, label[check] * 60, atol=1e-3)


def test_padding_uses_ignore_label():
    example = {"image": np.ones((4, 5, 3), np.uint8), "label": np.zeros((4, 5), np.int32)}
    out = augment.pad_to_size(example, 6, 7, image_fill=np.array([9, 9, 9], np.uint8), ignore_label=255)
    assert out["image"].shape == (6, 7, 3) and out["label"].shape == (6, 7)
    assert np.all(out["label"][4:] == 255) and np.all(out["label"][:, 5:] == 255)
    assert np.all(out["image"][4:] == 9)


def test_out_of_range_label_is_named():
    source = _source()
    source[3]["label"][0, 0] = 9
    loader = _loader(source)
    bad_step = next(s for s in range(10) if any(loader.example_index(s, p) == 3 for p in range(4)))
    with pytest.raises(ValueError, match=r"training example 3: label ids \[9\]"):
        loader.batch(bad_step)


def test_eval_batches_cover_the_split_once_and_pad_with_ignore():
    source = _source(n=5)
    batches = list(pipeline.eval_batches(
        source, _data_config(), global_batch_size=4, num_classes=NUM_CLASSES
    ))
    assert len(batches) == 2
    assert batches[1]["label"].shape == (4, 20, 24)
    np.testing.assert_array_equal(batches[1]["label"][0], source[4]["label"])
    assert np.all(batches[1]["label"][1:] == 255)


def test_batch_not_divisible_by_processes():
    with pytest.raises(ValueError, match="not divisible by the process count 3"):
        _loader(_source(), process_count=3)
