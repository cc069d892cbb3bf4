"""Training augmentation: geometric invariants, photometric jitter, and the loader's determinism
with jitter and instance maps (tests/test_pipeline.py covers the rest of the loader)."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from seg_jax.data import augment, pipeline

IGNORE = 255
FILL = np.array([124, 116, 104], np.uint8)  # ImageNet mean colour * 255, as train_augment pads


def _data_config(**overrides):
    jitter = overrides.pop("jitter", {})
    config = ml_collections.ConfigDict(dict(
        crop_size=48, min_scale=0.6, max_scale=1.6, hflip=True, ignore_label=IGNORE,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_workers=2, prefetch=2,
        jitter=dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0),
    ))
    config.update(overrides)
    config.jitter.update(jitter)
    return config


def _coordinate_example(height=60, width=72):
    """Image channels R, G = the pixel's row, column; label = row; instance = column + 1.

    Coordinates below 256 fit uint8, and bilinear resampling keeps a linear ramp linear, so every
    augmented pixel says where in the source it came from, in all three maps.
    """
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    return {"image": image, "label": rows.astype(np.int32), "instance": (cols + 1).astype(np.int32)}


def _block_example(rng, classes=(0, 3, 5), height=40, width=52):
    """Random 4x4-pixel blocks of a few classes; instance ids per block."""
    blocks = rng.choice(classes, size=(height // 4 + 1, width // 4 + 1))
    label = blocks.repeat(4, 0).repeat(4, 1)[:height, :width].astype(np.int32)
    instance = (np.arange(blocks.size).reshape(blocks.shape) % 7).repeat(4, 0).repeat(4, 1)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return {"image": image, "label": label, "instance": instance[:height, :width].astype(np.int32)}


# --- Geometric augmentation ------------------------------------------------------------------


def test_augmented_labels_only_hold_input_classes_or_ignore():
    rng = np.random.default_rng(0)
    for seed in range(20):
        example = _block_example(rng)
        out = augment.train_augment(example, np.random.default_rng(seed),
                                    _data_config(min_scale=0.3, max_scale=2.5))
        assert out["label"].dtype == np.int32 and out["instance"].dtype == np.int32
        assert set(np.unique(out["label"])) <= {0, 3, 5, IGNORE}
        assert set(np.unique(out["instance"])) <= set(range(7))


def test_padding_gets_ignore_label_zero_instance_and_the_mean_colour():
    # At scale 0.5 a 40 x 52 example becomes 20 x 26, far smaller than the 48 crop.
    config = _data_config(min_scale=0.5, max_scale=0.5)
    example = _block_example(np.random.default_rng(1))
    for seed in range(4):  # flipped or not, the padding follows the masks
        out = augment.train_augment(example, np.random.default_rng(seed), config)
        padded = out["label"] == IGNORE
        assert padded.sum() == 48 * 48 - 20 * 26
        assert np.all(out["instance"][padded] == 0)
        assert np.all(out["image"][padded] == FILL)


def test_crop_keeps_image_label_and_instance_aligned():
    example = _coordinate_example()
    for seed in range(12):
        out = augment.train_augment(example, np.random.default_rng(seed), _data_config())
        inside = out["label"] != IGNORE
        assert inside.sum() > 100
        row, col = out["label"][inside], out["instance"][inside] - 1
        image_row = out["image"][..., 0][inside].astype(int)
        image_col = out["image"][..., 1][inside].astype(int)
        # Nearest neighbour and bilinear sample the same point: they agree to a pixel, except
        # where a downscaling filter is cut off by the image border.
        interior = (row >= 3) & (row < 57) & (col >= 3) & (col < 69)
        assert np.abs(image_row - row)[interior].max() <= 1
        assert np.abs(image_col - col)[interior].max() <= 1


def test_crop_without_scaling_is_exact():
    example = _coordinate_example()
    out = augment.train_augment(example, np.random.default_rng(3),
                                _data_config(min_scale=1.0, max_scale=1.0))
    np.testing.assert_array_equal(out["image"][..., 0], out["label"])
    np.testing.assert_array_equal(out["image"][..., 1], out["instance"] - 1)
    # Consecutive source rows / columns, one of them possibly mirrored.
    assert np.all(np.diff(out["label"], axis=0) == 1)
    assert np.all(np.abs(np.diff(out["instance"], axis=1)) == 1)


def test_random_hflip_mirrors_every_key_together():
    example = _block_example(np.random.default_rng(2))
    outcomes = set()
    for seed in range(8):
        out = augment.random_hflip(example, np.random.default_rng(seed))
        flipped = np.array_equal(out["label"], example["label"][:, ::-1])
        outcomes.add(flipped)
        for key in ("image", "label", "instance"):
            expected = example[key][:, ::-1] if flipped else example[key]
            np.testing.assert_array_equal(out[key], expected)
    assert outcomes == {True, False}


def test_flip_draw_comes_after_the_crop():
    """With and without hflip, the same seed crops the same window; flipping only mirrors it."""
    example = _block_example(np.random.default_rng(4))
    mirrored = 0
    for seed in range(8):
        with_flip = augment.train_augment(example, np.random.default_rng(seed), _data_config())
        plain = augment.train_augment(example, np.random.default_rng(seed),
                                      _data_config(hflip=False))
        flipped = not np.array_equal(with_flip["label"], plain["label"])
        mirrored += flipped
        for key in ("image", "label", "instance"):
            expected = plain[key][:, ::-1] if flipped else plain[key]
            np.testing.assert_array_equal(with_flip[key], expected)
    assert 0 < mirrored < 8


def test_fused_scale_pad_crop_matches_the_step_by_step_reference():
    """`train_augment` resamples only the crop window; it must equal scale -> pad -> crop."""
    rng = np.random.default_rng(5)
    for seed in range(30):
        example = _block_example(rng, height=int(rng.integers(20, 90)),
                                 width=int(rng.integers(20, 90)))
        crop = int(rng.integers(16, 64))
        low = float(rng.uniform(0.3, 1.2))
        high = low if seed % 5 == 0 else low + float(rng.uniform(0.1, 1.5))
        if seed % 7 == 0:
            low = high = 1.0
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        ref = augment.random_scale(example, a, low, high)
        ref = augment.pad_to_size(ref, crop, crop, image_fill=FILL, ignore_label=IGNORE)
        ref = augment.random_crop(ref, a, crop, crop)
        out = augment.scale_pad_crop(example, b, min_scale=low, max_scale=high, crop_size=crop,
                                     image_fill=FILL, ignore_label=IGNORE)
        assert a.random() == b.random()  # the same numbers were drawn
        np.testing.assert_array_equal(out["label"], ref["label"])
        np.testing.assert_array_equal(out["instance"], ref["instance"])
        # PIL's fixed-point bilinear weights round differently for a sub-window.
        assert np.abs(out["image"].astype(int) - ref["image"]).max() <= 2


# --- Photometric jitter ----------------------------------------------------------------------


def _colour_image(seed=0, shape=(24, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_jitter_with_zero_strengths_is_the_identity_and_draws_nothing():
    image = _colour_image()
    rng = np.random.default_rng(0)
    assert augment.photometric_jitter(image, rng) is image
    assert rng.random() == np.random.default_rng(0).random()


def test_jitter_output_is_uint8_in_range_and_seeded():
    image = _colour_image()
    strengths = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.5)
    out = augment.photometric_jitter(image, np.random.default_rng(1), **strengths)
    assert out.dtype == np.uint8 and out.shape == image.shape
    again = augment.photometric_jitter(image, np.random.default_rng(1), **strengths)
    np.testing.assert_array_equal(out, again)
    other = augment.photometric_jitter(image, np.random.default_rng(2), **strengths)
    assert not np.array_equal(out, other)
    # photometric_jitter = apply_jitter(jitter_ops(rng)); the order of terms is random.
    ops = augment.jitter_ops(np.random.default_rng(1), **strengths)
    np.testing.assert_array_equal(augment.apply_jitter(image, ops), out)
    orders = {tuple(name for name, _ in augment.jitter_ops(np.random.default_rng(s), **strengths))
              for s in range(10)}
    assert len(orders) > 1 and all(sorted(o) == sorted(augment.JITTER_TERMS) for o in orders)


def test_jitter_values_fill_their_ranges():
    strengths = dict(brightness=0.2, contrast=0.4, saturation=0.6, hue=0.3)
    values = {name: [] for name in strengths}
    for seed in range(200):
        for name, value in augment.jitter_ops(np.random.default_rng(seed), **strengths):
            values[name].append(value)
    for name, s in strengths.items():
        low, high = (-s / 2, s / 2) if name == "hue" else (1 - s, 1 + s)
        drawn = np.array(values[name])
        assert len(drawn) == 200 and drawn.min() >= low and drawn.max() <= high
        assert drawn.min() < low + 0.1 * s and drawn.max() > high - 0.1 * s


def test_brightness_jitter_is_a_rounded_clipped_scaling():
    image = _colour_image()
    for seed in range(5):
        ops = augment.jitter_ops(np.random.default_rng(seed), brightness=0.7)
        [(name, factor)] = ops
        assert name == "brightness" and 0.3 <= factor <= 1.7
        expected = np.clip(np.rint(image.astype(np.float32) * np.float32(factor)), 0, 255)
        np.testing.assert_array_equal(augment.apply_jitter(image, ops), expected.astype(np.uint8))


def test_saturation_zero_gives_grey_and_contrast_zero_the_mean_grey():
    image = _colour_image()
    grey = augment.apply_jitter(image, [("saturation", 0.0)])
    assert np.all(grey == grey[..., :1])
    pil_grey = np.asarray(Image.fromarray(image).convert("L")).astype(int)
    assert np.abs(grey[..., 0].astype(int) - pil_grey).max() <= 1  # the same luma weights
    flat = augment.apply_jitter(image, [("contrast", 0.0)])
    assert np.all(flat == flat[0, 0]) and abs(int(flat[0, 0, 0]) - pil_grey.mean()) <= 1


def test_hue_shift_keeps_greys_and_luma_and_turns_red_towards_yellow():
    greys = np.repeat(np.arange(0, 256, 8, dtype=np.uint8)[:, None, None], 3, axis=2)
    np.testing.assert_array_equal(augment.apply_jitter(greys, [("hue", 0.2)]), greys)
    # Muted colours stay inside the RGB cube when rotated, so nothing is clipped.
    muted = (96 + _colour_image(shape=(16, 16, 3)) // 4).astype(np.uint8)
    shifted = augment.apply_jitter(muted, [("hue", 0.15)])
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(shifted @ luma - muted @ luma).max() <= 1
    red = np.array([[[200, 40, 40]]], np.uint8)
    r, g, b = augment.apply_jitter(red, [("hue", 0.05)])[0, 0].astype(int)
    assert g > 40 and b <= 40 and r > g  # on the way to yellow, not to magenta


def test_jitter_leaves_labels_and_geometry_alone():
    example = _block_example(np.random.default_rng(6))
    jitter = dict(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2)
    for seed in range(4):
        plain = augment.train_augment(example, np.random.default_rng(seed), _data_config())
        jittered = augment.train_augment(example, np.random.default_rng(seed),
                                         _data_config(jitter=jitter))
        np.testing.assert_array_equal(jittered["label"], plain["label"])
        np.testing.assert_array_equal(jittered["instance"], plain["instance"])
        assert jittered["image"].dtype == np.uint8
        assert not np.array_equal(jittered["image"], plain["image"])


@pytest.mark.parametrize("name, value, upper", [
    ("brightness", -0.1, 1.0), ("contrast", 1.5, 1.0), ("saturation", float("nan"), 1.0),
    ("hue", 0.6, 0.5),
])
def test_bad_jitter_strength_is_named_with_its_range(name, value, upper):
    config = _data_config(jitter={name: value})
    message = rf"config\.data\.jitter\.{name}={value} is outside \[0, {upper}\]"
    with pytest.raises(ValueError, match=message):
        augment.check_jitter(config)
    with pytest.raises(ValueError, match=message):  # before any batch is built
        pipeline.TrainLoader([_block_example(np.random.default_rng(0))], config,
                             global_batch_size=1, seed=0, num_classes=6)


def test_unknown_jitter_term_is_named():
    config = _data_config()
    config.jitter = ml_collections.ConfigDict(dict(brightnes=0.2))
    with pytest.raises(ValueError, match=r"unknown terms \['brightnes'\]"):
        augment.check_jitter(config)


# --- The loader with jitter and instance maps -------------------------------------------------


def _loader(source, **kwargs):
    kwargs.setdefault("global_batch_size", 4)
    config = _data_config(jitter=dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
                          num_workers=3, prefetch=3)
    return pipeline.TrainLoader(source, config, seed=7, num_classes=6,
                                instance_check=lambda label, instance, where: None, **kwargs)


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(8)
    return [_block_example(rng) for _ in range(10)]


def test_jittered_batches_are_deterministic_and_shard_over_processes(source):
    whole = _loader(source).batch(3)
    again = _loader(source).batch(3)
    parts = [_loader(source, process_index=i, process_count=2).batch(3) for i in range(2)]
    for key in ("image", "label", "instance"):
        np.testing.assert_array_equal(whole[key], again[key])
        np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]))
    assert not np.array_equal(whole["image"], _loader(source).batch(4)["image"])


def test_iterate_from_a_step_continues_the_stream_of_batch(source):
    loader = _loader(source)
    for step, streamed in zip(range(5, 11), loader.iterate(5, 6)):
        expected = loader.batch(step)
        for key in ("image", "label", "instance"):
            np.testing.assert_array_equal(streamed[key], expected[key])
