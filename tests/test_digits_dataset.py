"""Tests of the `digits` renderer, its tfds builder, its registry entry and a tiny training run."""

import math

import numpy as np
import pytest

from configs import digits as digits_config
from run_helpers import check_semantic_results
from seg_jax import train
from seg_jax.data import datasets
from seg_jax.data import digits
from seg_jax.data import digits_render as dr


@pytest.fixture(scope="module")
def sample():
    """60 rendered scenes of each split, shared by the statistics tests."""
    return [digits.render_split_example(split, i)
            for split in ("train", "validation") for i in range(60)]


@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory):
    """A tfds data_dir holding `digits` generated with 16 train and 16 validation scenes."""
    data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(digits, "NUM_TRAIN", 16)
        patch.setattr(digits, "NUM_VALIDATION", 16)
        digits.load_scenes("train", data_dir=data_dir)
    return data_dir


def test_class_constants():
    assert len(dr.CLASS_NAMES) == dr.NUM_CLASSES == 11
    assert dr.CLASS_NAMES[dr.digit_class(7)] == "digit_7"
    assert sorted(dr.STUFF_CLASSES + dr.THING_CLASSES) == list(range(dr.NUM_CLASSES))
    assert dr.PALETTE.shape == (dr.NUM_CLASSES, 3) and dr.PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in dr.PALETTE}) == dr.NUM_CLASSES


def test_render_is_deterministic_per_split_and_index():
    a, b = digits.render_split_example("train", 3), digits.render_split_example("train", 3)
    for key in ("image", "semantic", "instance"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], digits.render_split_example("train", 4)["image"])
    assert not np.array_equal(a["image"], digits.render_split_example("validation", 3)["image"])


@pytest.mark.parametrize("size", [96, 64])
def test_shapes_and_dtypes(size):
    ex = dr.render_example(np.random.default_rng(0), "train", size)
    assert ex["image"].shape == (size, size, 3) and ex["image"].dtype == np.uint8
    assert ex["semantic"].shape == (size, size) and ex["semantic"].dtype == np.uint8
    assert ex["instance"].shape == (size, size) and ex["instance"].dtype == np.int32


def test_labels_and_instances_are_consistent(sample):
    for ex in sample:
        sem, inst = ex["semantic"], ex["instance"]
        assert sem.max() < dr.NUM_CLASSES
        # Instance 0 exactly on background pixels.
        np.testing.assert_array_equal(inst == 0, sem == dr.BACKGROUND)
        # Ids are 1..K with no gaps, each of one digit class and big enough to see.
        ids = np.unique(inst[inst > 0])
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
        assert 1 <= len(ids) <= dr.MAX_DIGITS
        for i in ids:
            classes = np.unique(sem[inst == i])
            assert len(classes) == 1 and classes[0] in dr.THING_CLASSES
            assert (inst == i).sum() >= dr.MIN_VISIBLE_PIXELS


def test_every_digit_appears_and_background_dominates(sample):
    pixels = sum(np.bincount(ex["semantic"].ravel(), minlength=dr.NUM_CLASSES) for ex in sample)
    assert (pixels > 0).all()
    freq = pixels / pixels.sum()
    assert 0.75 < freq[dr.BACKGROUND] < 0.95
    # Digits are drawn uniformly: no class is more than ~3x rarer than another in 120 scenes.
    things = freq[list(dr.THING_CLASSES)]
    assert things.max() < 3.0 * things.min()


def test_pools_are_disjoint_stratified_and_cover_all_digits():
    train, validation = dr.pool_indices("train"), dr.pool_indices("validation")
    assert not set(train.tolist()) & set(validation.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train, validation])), np.arange(1797))
    assert math.isclose(len(validation) / 1797, 1 - dr.TRAIN_FRACTION, abs_tol=0.01)
    _, labels = dr._source_digits()
    for d in range(10):  # every digit in both pools, in proportion
        n_train, n_val = (labels[train] == d).sum(), (labels[validation] == d).sum()
        assert n_val > 0 and math.isclose(n_train / (n_train + n_val), dr.TRAIN_FRACTION,
                                          abs_tol=0.01)
    with pytest.raises(ValueError, match="digit pools"):
        dr.pool_indices("test")


@pytest.mark.parametrize("split,blank", [("train", "validation"), ("validation", "train")])
def test_scenes_draw_only_from_their_own_pool(monkeypatch, split, blank):
    # Blank the other split's source images: if a scene ever used one, its digit would have an
    # empty mask. Then blank this split's own images: no digit can be drawn at all.
    images, labels = dr._source_digits()
    for blanked, expect_digits in ((blank, True), (split, False)):
        fake = images.copy()
        fake[dr.pool_indices(blanked)] = 0.0
        monkeypatch.setattr(dr, "_source_digits", lambda fake=fake: (fake, labels))
        for i in range(10):
            ex = dr.render_example(np.random.default_rng(i), split)
            assert (ex["instance"].max() > 0) == expect_digits


def test_builder_roundtrip_and_registry(small_data_dir):
    train_source = digits.load_scenes("train", data_dir=small_data_dir)
    assert len(train_source) == 16
    for i in (0, 15):
        record = train_source[i]
        assert record["id"] == i
        expected = dr.render_example(np.random.default_rng([digits.SEED, 0, i]), "train",
                                     digits.IMAGE_SIZE)
        for key in ("image", "semantic", "instance"):
            assert record[key].dtype == expected[key].dtype
            np.testing.assert_array_equal(record[key], expected[key])

    config = digits_config.get_config("quick")
    config.data.data_dir = small_data_dir
    source, info = datasets.get_dataset(config.data, "validation[:5]")
    assert isinstance(source, datasets.MappedSource) and len(source) == 5
    example = source[4]
    assert set(example) == {"image", "label", "instance"}
    expected = digits.render_split_example("validation", 4)
    np.testing.assert_array_equal(example["label"], expected["semantic"])
    np.testing.assert_array_equal(example["instance"], expected["instance"])
    assert info.name == "digits" and info.class_names == dr.CLASS_NAMES
    assert info.thing_classes == dr.THING_CLASSES and info.stuff_classes == (0,)
    assert config.data.ignore_label is None and info.ignore_label == 255  # the dataset's own
    np.testing.assert_array_equal(info.palette, dr.PALETTE)


def test_quick_config_trains_end_to_end(small_data_dir, tmp_path):
    config = digits_config.get_config("quick")
    config.data.data_dir = small_data_dir
    config.num_train_steps = 2
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["step"] == 2
    assert list(results["per_class_iou"]) == list(dr.CLASS_NAMES)
    eval_source, info = datasets.get_dataset(config.data, config.data.eval_split)
    check_semantic_results(results, str(tmp_path / "run"), eval_source, info)
