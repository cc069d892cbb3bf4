"""ADE20K from its release folder (ADEChallengeData2016): 0 ignored, 1..150 -> 0..149."""

import os

import numpy as np
import pytest
from PIL import Image

from configs import ade20k as ade20k_config
from run_helpers import check_semantic_results
from seg_jax import train
from seg_jax.data import datasets

SIZES = ((48, 64), (64, 80))


def _release(root, n=4):
    rng = np.random.default_rng(0)
    for folder in ("training", "validation"):
        os.makedirs(os.path.join(root, "images", folder))
        os.makedirs(os.path.join(root, "annotations", folder))
        for i in range(n):
            h, w = SIZES[i % 2]
            stem = f"ADE_{folder[:5]}_{i:08d}"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                os.path.join(root, "images", folder, f"{stem}.jpg"))
            values = rng.choice(np.asarray([0, 1, 2, 13, 150], np.uint8), (h, w))
            Image.fromarray(values).save(os.path.join(root, "annotations", folder, f"{stem}.png"))
    return root


def _config(root):
    config = ade20k_config.get_config("quick")
    config.data.root = root
    return config


def test_labels_shift_by_one_and_zero_is_ignored(tmp_path):
    root = _release(str(tmp_path))
    source, info = datasets.get_dataset(_config(root).data, "validation[:2]")
    assert len(source) == 2 and info.num_classes == 150 and info.class_names[0] == "wall"
    example = source[1]
    stored = np.asarray(Image.open(os.path.join(root, "annotations", "validation",
                                                "ADE_valid_00000001.png")))
    expected = np.where(stored == 0, 255, stored.astype(np.int32) - 1)
    np.testing.assert_array_equal(example["label"], expected)
    assert set(np.unique(example["label"]).tolist()) == {0, 1, 12, 149, 255}
    assert example["image"].shape == SIZES[1] + (3,)


def test_bad_values_and_missing_files_are_named(tmp_path):
    root = _release(str(tmp_path), n=2)
    bad = os.path.join(root, "annotations", "training", "ADE_train_00000000.png")
    values = np.asarray(Image.open(bad)).copy()
    values[0, 0] = 151
    Image.fromarray(values).save(bad)
    source, _ = datasets.get_dataset(_config(root).data, "train")
    with pytest.raises(ValueError, match=r"ADE_train_00000000.png: values \[151\] are not ADE20K"):
        source[0]
    os.remove(os.path.join(root, "annotations", "validation", "ADE_valid_00000001.png"))
    with pytest.raises(FileNotFoundError, match=r"no annotation .*ADE_valid_00000001.png"):
        datasets.get_dataset(_config(root).data, "validation")
    config = _config(root)
    config.data.root = ""
    with pytest.raises(ValueError, match="needs --config.data.root"):
        datasets.get_dataset(config.data, "train")


def test_train_and_evaluate_on_the_release_layout(tmp_path):
    config = _config(_release(str(tmp_path / "ade")))
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["num_examples"] == 4 and results["split"] == "validation"
    eval_source, info = datasets.get_dataset(config.data, "validation")
    check_semantic_results(results, str(tmp_path / "run"), eval_source, info)
