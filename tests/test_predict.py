"""--mode=predict: mask, overlay and label PNGs for a folder of images of any size."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from folder_helpers import tiny_folder_config, write_folder
from seg_jax import checkpointing, decision, predict, train, visualize
from seg_jax.data import augment, datasets, pipeline


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    """A tiny model saved untrained at step 0 (predictions need weights, not good ones)."""
    root = str(tmp_path_factory.mktemp("data"))
    write_folder(root, [(40, 48)] * 4)
    config = tiny_folder_config(root)
    workdir = str(tmp_path_factory.mktemp("run"))
    run = train.Experiment(config, workdir)
    state, _ = run.initial_state()
    checkpointing.save(run.manager, 1, state)
    run.manager.wait_until_finished()
    datasets.write_info(workdir, run.info)  # as training does
    images = str(tmp_path_factory.mktemp("photos"))
    rng = np.random.default_rng(3)
    for name, (h, w) in {"b.png": (37, 53), "a.jpg": (21, 30), "c.png": (64, 40)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(images, name))
    open(os.path.join(images, "notes.txt"), "w").write("not an image")
    return config, workdir, state, run, images


def _own_probs(run, state, image, config):
    """The model's probabilities for one image, padded alone to its canvas and cropped back."""
    h, w = image.shape[:2]
    canvas = pipeline.padded_size(h, w, pad_multiple=config.evaluation.pad_multiple)
    x = augment.normalize_image(image, config.data.mean, config.data.std)
    x = np.pad(x, ((0, canvas[0] - h), (0, canvas[1] - w), (0, 0)))[None]
    logits = run.model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                             train=False).logits
    return jax.nn.softmax(logits, -1)[0, :h, :w]


def test_writes_mask_overlay_and_labels_for_every_image(checkpointed_run, tmp_path):
    config, workdir, state, run, images = checkpointed_run
    stems = predict.predict_images(config, workdir, images, output_dir=str(tmp_path))
    assert stems == ["a", "b", "c"]
    info = run.info
    for stem, name in zip(stems, ("a.jpg", "b.png", "c.png")):
        image = np.asarray(Image.open(os.path.join(images, name)).convert("RGB"))
        labels = np.asarray(Image.open(tmp_path / f"{stem}_labels.png"))
        assert labels.shape == image.shape[:2]
        expected = np.asarray(decision.map_decision(_own_probs(run, state, image, config)))
        np.testing.assert_array_equal(labels, expected)
        mask = np.asarray(Image.open(tmp_path / f"{stem}_mask.png"))
        np.testing.assert_array_equal(mask, visualize.colorize(labels, info.palette, 255))
        blended = np.asarray(Image.open(tmp_path / f"{stem}_overlay.png"))
        np.testing.assert_array_equal(blended, predict.overlay(image, mask))
    index = (tmp_path / "index.md").read_text()
    assert "| a.jpg | ![](a_mask.png) | ![](a_overlay.png) |" in index


def test_bayes_rule_uses_the_configured_cost(checkpointed_run, tmp_path):
    config, workdir, state, run, images = checkpointed_run
    config = config.copy_and_resolve_references()
    # Predicting class 2 costs nothing whatever the truth: the Bayes decision is 2 wherever
    # another class has a risk above 0 (everywhere the probabilities are not exactly one-hot).
    cost = 1.0 - np.eye(3)
    cost[2] = 0.0
    config.decision.cost = tuple(map(tuple, cost.tolist()))
    predict.predict_images(config, workdir, os.path.join(images, "b.png"),
                           output_dir=str(tmp_path), rule="bayes")
    labels = np.asarray(Image.open(tmp_path / "b_labels.png"))
    image = np.asarray(Image.open(os.path.join(images, "b.png")).convert("RGB"))
    probs = _own_probs(run, state, image, config)
    np.testing.assert_array_equal(labels, decision.bayes_decision(probs, jnp.asarray(cost)))
    assert (labels == 2).sum() > (np.asarray(decision.map_decision(probs)) == 2).sum()


def test_missing_checkpoint_or_images_are_named(checkpointed_run, tmp_path):
    config, workdir, _, _, images = checkpointed_run
    with pytest.raises(FileNotFoundError, match="No checkpoint in"):
        predict.predict_images(config, str(tmp_path / "untrained"), images)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="holds no .png or .jpg images"):
        predict.predict_images(config, workdir, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--predict.rule='mode'"):
        predict.predict_images(config, workdir, images, rule="mode")


def test_predicts_from_a_copied_workdir_without_the_training_data(checkpointed_run, tmp_path):
    config, workdir, _, run, images = checkpointed_run
    predict.predict_images(config, workdir, images, output_dir=str(tmp_path / "here"))
    copied = str(shutil.copytree(workdir, tmp_path / "copied"))
    elsewhere = tiny_folder_config(str(tmp_path / "no_such_dataset"))  # the data is not there
    with pytest.raises(ValueError, match="No folder"):
        datasets.get_dataset(elsewhere.data, "train")
    stems = predict.predict_images(elsewhere, copied, images, output_dir=str(tmp_path / "there"))
    assert stems == ["a", "b", "c"]
    for stem in stems:
        here = np.asarray(Image.open(tmp_path / "here" / f"{stem}_labels.png"))
        there = np.asarray(Image.open(tmp_path / "there" / f"{stem}_labels.png"))
        np.testing.assert_array_equal(there, here)
    index = (tmp_path / "there" / "index.md").read_text()
    assert all(name in index for name in run.info.class_names)
