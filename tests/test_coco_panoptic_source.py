"""The raw COCO panoptic release as a source: layout, decoding, slices, missing files, training.

A tiny release is written into tmp_path the way the official zips unpack: a JSON and a folder of
segment-id PNGs per split (written by `panoptic_format.write_panoptic_dataset`), JPEG images
(one of them grayscale, as a few COCO images are) and non-contiguous category ids.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import coco_panoptic as coco_config
from run_helpers import check_semantic_results
from seg_jax import train
from seg_jax.data import datasets, panoptic_format
from seg_jax.data.panoptic_format import PanopticFormatError

IGNORE = 255
# COCO-like: things before stuff, category ids with gaps, colours given.
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 119, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 149, "name": "road", "isthing": 0, "color": [128, 64, 128]},
]
SIZES = ((48, 64), (64, 80))


def _maps(rng, h, w):
    """(semantic, instance): sky above road, two people, a car, a crowd of cars, some void."""
    semantic = np.full((h, w), 2, np.int32)
    semantic[h // 2:] = 3
    instance = np.zeros((h, w), np.int32)
    top = int(rng.integers(2, 8))
    semantic[top:top + 10, 4:12], instance[top:top + 10, 4:12] = 0, 1
    semantic[top:top + 10, 14:22], instance[top:top + 10, 14:22] = 0, 2
    semantic[h - 14:h - 4, 30:44], instance[h - 14:h - 4, 30:44] = 1, 5
    semantic[h - 10:h - 4, 46:56] = 1  # crowd: car pixels without an instance
    semantic[:2] = IGNORE
    return semantic, instance


def _write_split(root, subset, image_ids, *, png_dir, rng):
    categories = panoptic_format.PanopticCategories.from_coco(CATEGORIES)
    maps = [_maps(rng, *SIZES[i % 2]) for i in range(len(image_ids))]
    json_path = os.path.join(root, "annotations", f"panoptic_{subset}.json")
    panoptic_format.write_panoptic_dataset(
        json_path, png_dir, [m[0] for m in maps], [m[1] for m in maps],
        categories=categories, image_ids=image_ids)
    with open(json_path) as f:
        dataset = json.load(f)
    # As in COCO: images[].file_name is the JPEG, and the categories carry colours.
    for entry in dataset["images"]:
        entry["file_name"] = entry["file_name"].replace(".png", ".jpg")
    dataset["categories"] = CATEGORIES
    with open(json_path, "w") as f:
        json.dump(dataset, f)
    os.makedirs(os.path.join(root, subset), exist_ok=True)
    for i, (image_id, (semantic, _)) in enumerate(zip(image_ids, maps)):
        image = rng.integers(0, 256, semantic.shape + (3,), dtype=np.uint8)
        picture = Image.fromarray(image).convert("L") if i == 1 else Image.fromarray(image)
        picture.save(os.path.join(root, subset, f"{image_id:012d}.jpg"))
    return maps


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    rng = np.random.default_rng(0)
    # val2017's PNGs where the zip puts them, train2017's beside annotations/ (also accepted).
    maps = _write_split(root, "val2017", [139, 285, 632, 724],
                        png_dir=os.path.join(root, "annotations", "panoptic_val2017"), rng=rng)
    _write_split(root, "train2017", [9, 25, 30, 34],
                 png_dir=os.path.join(root, "panoptic_train2017"), rng=rng)
    return root, maps


def _config(root, variant="quick"):
    config = coco_config.get_config(variant)
    config.data.root = root
    config.data.num_classes = len(CATEGORIES)
    return config


def test_reads_images_and_panoptic_maps(coco_root):
    root, maps = coco_root
    source, info = datasets.get_dataset(_config(root).data, "validation")
    assert len(source) == 4 and info.class_names == ("person", "car", "sky", "road")
    assert info.thing_classes == (0, 1) and info.stuff_classes == (2, 3)
    np.testing.assert_array_equal(info.palette[2], [70, 130, 180])
    for i, (semantic, instance) in enumerate(maps):
        example = source[i]
        assert example["image"].shape == semantic.shape + (3,)
        assert example["image"].dtype == np.uint8
        np.testing.assert_array_equal(example["label"], semantic)
        # People are instances 1, 2 of their class; the car instance 5 becomes 1 (numbered per
        # class); the crowd of cars is instance 0 of 'car'; stuff and void have instance 0.
        expected = np.where(semantic == 0, instance, 0)
        expected[instance == 5] = 1
        np.testing.assert_array_equal(example["instance"], expected)
    gray = source[1]["image"]  # written as a grayscale JPEG
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


def test_splits_and_slices(coco_root):
    root, _ = coco_root
    config = _config(root)
    assert len(datasets.get_dataset(config.data, "validation[:2]")[0]) == 2
    train_source, _ = datasets.get_dataset(config.data, "train[1:]")
    assert len(train_source) == 3 and train_source[0]["label"].shape == SIZES[1]
    with pytest.raises(ValueError, match=r"split 'test': use one of \['train', 'validation'\]"):
        datasets.get_dataset(config.data, "test")


def test_the_expected_133_classes_are_checked(coco_root):
    root, _ = coco_root
    config = coco_config.get_config()
    config.data.root = root
    config.data.num_classes = 133  # COCO's count, given explicitly, against a 4-class folder
    assert config.model.name == "panoptic_deeplab"
    assert config.panoptic.max_instances >= 128 and config.panoptic.max_segments >= 256
    _, info = datasets.get_dataset(config.data, "validation")
    with pytest.raises(ValueError, match="num_classes=133 but dataset 'coco_panoptic' has "
                                         "num_classes=4"):
        datasets.with_dataset_info(config, info)


@pytest.mark.parametrize("damage,message", [
    (lambda r: os.remove(os.path.join(r, "val2017", "000000000285.jpg")),
     r"1 images listed in .*panoptic_val2017.json are missing from .*val2017, e.g. "
     r".*val2017/000000000285.jpg.*val2017.zip.*panoptic_annotations_trainval2017.zip"),
    (lambda r: os.remove(os.path.join(r, "annotations", "panoptic_val2017", "000000000632.png")),
     r"1 panoptic PNGs listed in .* e.g. .*annotations/panoptic_val2017/000000000632.png"),
    (lambda r: os.remove(os.path.join(r, "annotations", "panoptic_val2017.json")),
     r"No .*annotations/panoptic_val2017.json.*panoptic_annotations_trainval2017.zip"),
    (lambda r: os.rename(os.path.join(r, "annotations", "panoptic_val2017"),
                         os.path.join(r, "annotations", "elsewhere")),
     r"No folder of panoptic PNGs: neither .*annotations/panoptic_val2017 nor .*/panoptic_val2017"),
])
def test_missing_files_name_the_path_and_the_download(coco_root, tmp_path, damage, message):
    import shutil

    root = str(tmp_path / "coco")
    shutil.copytree(coco_root[0], root)
    damage(root)
    with pytest.raises(PanopticFormatError, match=message):
        datasets.get_dataset(_config(root).data, "validation")


def test_needs_a_root():
    with pytest.raises(ValueError, match="needs --config.data.root"):
        datasets.get_dataset(_config("").data, "validation")


def test_trains_and_scores_panoptic_quality(coco_root, tmp_path):
    root, _ = coco_root
    config = _config(root)
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    eval_source, info = datasets.get_dataset(config.data, config.data.eval_split)
    check_semantic_results(results, str(tmp_path / "run"), eval_source, info)
    assert results["num_examples"] == 4 and set(results["per_class_pq"]) == set(
        c["name"] for c in CATEGORIES)
    # Every true segment (the people and the car, not the crowd; sky and road) is matched or
    # missed, whatever the model predicts: TP + FN counts them.
    segments = 0
    for i in range(len(eval_source)):
        label, instance = eval_source[i]["label"], eval_source[i]["instance"]
        things = np.isin(label, info.thing_classes) & (instance > 0)
        segments += len(set(zip(label[things].tolist(), instance[things].tolist()))) + len(
            np.intersect1d(np.unique(label), info.stuff_classes))
    assert segments == 4 * 5
    assert results["tp"] + results["fn"] == segments
    with open(tmp_path / "run" / "results.json") as f:
        written = json.load(f)
    assert (written["pq"], written["tp"], written["fn"]) == (
        results["pq"], results["tp"], results["fn"])
