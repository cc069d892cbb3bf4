"""Tests of the procedural `shapes` renderer and its tfds builder."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from seg_jax.data import shapes
from seg_jax.data import shapes_render as sr


def _render(seed, image_size=128):
    return sr.render_example(np.random.default_rng(seed), image_size)


@pytest.fixture(scope="module")
def sample():
    """200 rendered examples, shared by the statistics tests."""
    return [_render(seed) for seed in range(200)]


def test_class_constants():
    assert len(sr.CLASS_NAMES) == sr.NUM_CLASSES
    assert sorted(sr.STUFF_CLASSES + sr.THING_CLASSES) == list(
        range(sr.NUM_CLASSES)
    )
    assert sr.PALETTE.shape == (sr.NUM_CLASSES, 3)
    assert sr.PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in sr.PALETTE}) == sr.NUM_CLASSES


def test_render_is_deterministic():
    a, b = _render(7), _render(7)
    for key in ("image", "semantic", "instance"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], _render(8)["image"])


@pytest.mark.parametrize("size", [128, 64])
def test_shapes_and_dtypes(size):
    ex = _render(0, size)
    assert ex["image"].shape == (size, size, 3)
    assert ex["image"].dtype == np.uint8
    assert ex["semantic"].shape == (size, size)
    assert ex["semantic"].dtype == np.uint8
    assert ex["instance"].shape == (size, size)
    assert ex["instance"].dtype == np.int32


def test_labels_and_instances_are_consistent(sample):
    stuff = np.array(sr.STUFF_CLASSES)
    for ex in sample:
        sem, inst = ex["semantic"], ex["instance"]
        assert sem.max() < sr.NUM_CLASSES
        # Instance 0 exactly on stuff pixels.
        np.testing.assert_array_equal(inst == 0, np.isin(sem, stuff))
        # Ids are 1..K with no gaps, each of a single thing class.
        ids = np.unique(inst[inst > 0])
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
        for i in ids:
            classes = np.unique(sem[inst == i])
            assert len(classes) == 1 and classes[0] in sr.THING_CLASSES


def test_every_class_appears_and_bar_is_rare(sample):
    pixels = sum(
        np.bincount(ex["semantic"].ravel(), minlength=sr.NUM_CLASSES)
        for ex in sample
    )
    images = sum(
        np.bincount(ex["semantic"].ravel(), minlength=sr.NUM_CLASSES) > 0
        for ex in sample
    )
    freq = pixels / pixels.sum()
    assert (pixels > 0).all()
    assert freq[sr.BAR] < 0.02
    things = list(sr.THING_CLASSES)
    assert freq[sr.BAR] == freq[things].min()
    assert images[sr.BAR] == images[things].min()
    assert images[sr.BAR] < 0.5 * len(sample)


def test_builder_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "NUM_TRAIN", 8)
    monkeypatch.setattr(shapes, "NUM_VALIDATION", 4)
    train = shapes.load_shapes("train", data_dir=str(tmp_path))
    assert len(train) == 8
    for i in range(len(train)):
        record = train[i]
        assert record["id"] == i
        expected = sr.render_example(
            np.random.default_rng([shapes.SEED, 0, i]), shapes.IMAGE_SIZE
        )
        for key in ("image", "semantic", "instance"):
            assert record[key].dtype == expected[key].dtype
            np.testing.assert_array_equal(record[key], expected[key])

    # Already prepared: the same files, also reachable by dataset name.
    validation = tfds.data_source(
        "shapes", split="validation", data_dir=str(tmp_path)
    )
    assert len(validation) == 4
    expected = shapes.render_split_example("validation", 3)
    np.testing.assert_array_equal(validation[3]["image"], expected["image"])
    assert len(shapes.load_shapes("train[:3]", data_dir=str(tmp_path))) == 3


def test_generation_never_imports_tensorflow(tmp_path):
    # A fresh interpreter: the test session itself may have imported anything.
    code = (
        "import sys\n"
        "from seg_jax.data import shapes\n"
        "shapes.NUM_TRAIN, shapes.NUM_VALIDATION = 2, 2\n"
        f"source = shapes.load_shapes('train', data_dir={str(tmp_path)!r})\n"
        "source[0]\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parents[1],  # the repo root
    )
    assert result.returncode == 0, result.stderr[-2000:]
