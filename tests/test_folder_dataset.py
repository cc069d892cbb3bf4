"""The `folder` source: a user's images and masks, and every bad input stopping before training."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import folder as folder_config
from seg_jax import train
from seg_jax.data import datasets, folder, pipeline


def _write(root, stems=("a", "b", "c", "d"), size=(40, 48), classes=3, palette=False):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    rng = np.random.default_rng(0)
    for stem in stems:
        image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        mask = rng.integers(0, classes, size).astype(np.uint8)
        mask[:3] = 255
        Image.fromarray(image).save(os.path.join(root, "images", f"{stem}.jpg" if stem == "d" else f"{stem}.png"))
        png = Image.fromarray(mask)
        if palette:  # PASCAL VOC style: the palette index is the class id, colours for viewing
            png = Image.new("P", (size[1], size[0]))
            png.putdata(mask.reshape(-1).tolist())
            png.putpalette(folder.voc_palette(256).reshape(-1).tolist())
        png.save(os.path.join(root, "masks", f"{stem}.png"))
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump({"classes": ["background", "cat", "dog"][:classes], "ignore_label": 255,
                   "things": [1, 2]}, f)
    return root


def _config(root, **data):
    config = folder_config.get_config()
    config.data.root = str(root)
    config.batch_size = 4  # divisible by the 1 or 4 devices of the test runs
    config.eval_batch_size = 4
    for key, value in data.items():
        config.data[key] = value
    return config


def test_reads_images_masks_classes_and_splits(tmp_path):
    root = _write(str(tmp_path))
    os.makedirs(os.path.join(root, "splits"))
    with open(os.path.join(root, "splits", "validation.txt"), "w") as f:
        f.write("b\nd\n")
    source, info = datasets.get_dataset(_config(root).data, "validation")
    assert len(source) == 2 and info.class_names == ("background", "cat", "dog")
    assert info.thing_classes == (1, 2) and info.stuff_classes == (0,)
    example = source[1]  # d, a JPEG
    assert example["image"].shape == (40, 48, 3) and example["image"].dtype == np.uint8
    expected = np.asarray(Image.open(os.path.join(root, "masks", "d.png")))
    np.testing.assert_array_equal(example["label"], expected)
    # No list for 'train': the whole folder, sliceable like tfds.
    assert len(datasets.get_dataset(_config(root).data, "train")[0]) == 4
    assert len(datasets.get_dataset(_config(root).data, "train[:3]")[0]) == 3


def test_palette_masks_give_their_indices(tmp_path):
    root = _write(str(tmp_path), palette=True)
    source, _ = datasets.get_dataset(_config(root).data, "train")
    png = Image.open(os.path.join(root, "masks", "a.png"))
    assert png.mode == "P"
    indices = np.asarray(png)
    np.testing.assert_array_equal(source[0]["label"], indices)
    assert set(np.unique(indices)) == {0, 1, 2, 255}


@pytest.mark.parametrize("damage,message", [
    (lambda r: os.remove(os.path.join(r, "masks", "b.png")), r"images/b.png has no mask: expected .*masks/b.png"),
    (lambda r: Image.fromarray(np.zeros((10, 10), np.uint8)).save(os.path.join(r, "masks", "c.png")),
     r"masks/c.png is 10x10 but .*images/c.png is 40x48"),
    (lambda r: Image.fromarray(np.full((40, 48), 7, np.uint8)).save(os.path.join(r, "masks", "a.png")),
     r"masks/a.png: label ids \[7\] are neither classes \[0, 3\) nor the ignore id 255"),
    (lambda r: open(os.path.join(r, "images", "b.png"), "wb").write(b"not a png"),
     r"images/b.png: not a readable image"),
    (lambda r: Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(os.path.join(r, "masks", "a.png")),
     r"masks/a.png: mode RGB is not a class-id mask"),
    (lambda r: open(os.path.join(r, "classes.json"), "w").write('{"names": []}'),
     r'classes.json: needs "classes"'),
])
def test_bad_input_names_the_file_before_training(tmp_path, damage, message):
    root = _write(str(tmp_path))
    damage(root)
    with pytest.raises(ValueError, match=message):
        train.Experiment(_config(root), str(tmp_path / "run"))


def test_mismatched_settings_are_explained(tmp_path):
    root = _write(str(tmp_path))
    _, info = datasets.get_dataset(_config(root).data, "train")
    assert info.num_classes == 3 and info.ignore_label == 255  # from classes.json
    assert datasets.with_dataset_info(_config(root, num_classes=3), info).model.num_classes == 3
    with pytest.raises(ValueError,
                       match="config.data.num_classes=5 but dataset 'folder' has num_classes=3"):
        datasets.with_dataset_info(_config(root, num_classes=5), info)
    with pytest.raises(ValueError, match="--config.data.ignore_label=255"):
        datasets.get_dataset(_config(root, ignore_label=0).data, "train")
    with pytest.raises(ValueError, match="needs --config.data.root"):
        datasets.get_dataset(_config("").data, "train")


def test_the_class_count_comes_from_classes_json_or_the_config(tmp_path):
    root = _write(str(tmp_path))
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump({"classes": ["background", "cat", "dog"], "ignore_label": 7}, f)
    # The dataset's own void id when the config gives none: the masks' 255 is now an error.
    with pytest.raises(ValueError, match=r"label ids \[255\] are neither .* nor the ignore id 7"):
        datasets.get_dataset(_config(root).data, "train")
    os.remove(os.path.join(root, "classes.json"))
    with pytest.raises(ValueError, match=r"classes.json does not exist.*--config.data.num_classes"):
        datasets.get_dataset(_config(root).data, "train")
    _, info = datasets.get_dataset(_config(root, num_classes=3).data, "train")
    assert info.class_names == ("class_0", "class_1", "class_2") and info.ignore_label == 255


def test_trains_two_steps_on_a_folder(tmp_path):
    root = _write(str(tmp_path / "data"))
    config = _config(root, crop_size=32)
    config.model.backbone = "resnet18"
    config.model.base_width = 8
    config.model.aspp_channels = 8
    config.num_train_steps = 2
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert set(results["per_class_iou"]) == {"background", "cat", "dog"}
    assert results["num_examples"] == 4
