"""COCO panoptic format: id <-> RGB, encode/decode round trips, hand-checked areas and boxes, errors."""

import json
import logging
import os

import numpy as np
import pytest

from seg_jax.data import panoptic_format as pf

IGNORE = 255


def _canonical_instances(semantic, instance, things):
    """Instance ids renumbered by first appearance per image, so maps compare up to relabelling."""
    things = np.asarray(sorted(things))
    is_thing = np.isin(semantic, things)
    key = np.where(is_thing, semantic.astype(np.int64) * 100_000 + instance, -1)
    out = np.zeros(instance.shape, np.int64)
    flat_key, flat_out = key.reshape(-1), out.reshape(-1)
    seen = {}
    for i, k in enumerate(flat_key):
        if k >= 0 and k % 100_000:  # crowd (instance 0) stays 0
            flat_out[i] = seen.setdefault(int(k), len(seen) + 1)
    return out


def _random_maps(rng, height, width, num_classes, things, max_instance):
    semantic = rng.integers(0, num_classes, (height, width))
    semantic[rng.random((height, width)) < 0.1] = IGNORE
    instance = rng.integers(1, max_instance + 1, (height, width))
    instance[rng.random((height, width)) < 0.2] = 0  # crowd pixels of the thing classes
    instance[~np.isin(semantic, list(things))] = 0
    return semantic.astype(np.int32), instance.astype(np.int32)


def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 123456, pf.MAX_SEGMENT_ID]])
    rgb = pf.id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    np.testing.assert_array_equal(rgb[0, 3], [0, 1, 0])
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 1])
    np.testing.assert_array_equal(rgb[1, 2], [123456 % 256, 123456 // 256 % 256, 1])
    np.testing.assert_array_equal(pf.rgb_to_id(rgb), ids)
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pf.id_to_rgb(pf.rgb_to_id(rgb)), rgb)
    with pytest.raises(ValueError, match="three 8-bit channels"):
        pf.id_to_rgb(np.array([pf.MAX_SEGMENT_ID + 1]))


@pytest.mark.parametrize("id_scheme", ["sequential", "category"])
@pytest.mark.parametrize("crowd", [True, False])
def test_encode_decode_round_trip(tmp_path, id_scheme, crowd):
    rng = np.random.default_rng(1)
    things = {1, 3}
    # Category ids up to 9000: with the "category" scheme segment ids reach 9_000_000 + instance,
    # so the G and B channels carry data.
    categories = pf.PanopticCategories.from_classes(
        ["sky", "car", "road", "person"], things, category_ids=[5, 66, 123, 9000])
    semantic, instance = _random_maps(rng, 23, 31, 4, things, max_instance=300)
    id_map, segments = pf.encode_panoptic(semantic, instance, categories=categories,
                                          ignore_label=IGNORE, crowd=crowd, id_scheme=id_scheme)
    assert (id_map == 0).sum() == (semantic == IGNORE).sum()
    if id_scheme == "category":
        assert id_map.max() > 65535  # the B channel is used
    assert sum(s["area"] for s in segments) == (semantic != IGNORE).sum()
    crowd_segments = [s for s in segments if s["iscrowd"]]
    assert len(crowd_segments) == (2 if crowd else 0)  # one per thing class

    path = tmp_path / "x.png"
    pf.write_id_png(str(path), id_map)
    np.testing.assert_array_equal(pf.read_id_png(str(path)), id_map)
    sem_back, inst_back = pf.decode_panoptic(pf.read_id_png(str(path)), segments,
                                             categories=categories, ignore_label=IGNORE)
    np.testing.assert_array_equal(sem_back, semantic)
    assert (inst_back[~np.isin(semantic, list(things))] == 0).all()
    if crowd:
        np.testing.assert_array_equal(_canonical_instances(sem_back, inst_back, things),
                                      _canonical_instances(semantic, instance, things))
    else:
        # Without crowd, a thing's instance-0 pixels are an ordinary segment: a new instance id.
        thing = np.isin(semantic, list(things))
        assert (inst_back[thing] > 0).all()
        pairs = set(zip(semantic[thing].tolist(), instance[thing].tolist()))
        assert len(set(zip(sem_back[thing].tolist(), inst_back[thing].tolist()))) == len(pairs)


def test_stuff_instance_ids_are_not_read():
    categories = pf.PanopticCategories.from_classes(["road", "car"], things=[1])
    semantic = np.array([[0, 0, 1]])
    instance = np.array([[4, 7, 2]])
    _, segments = pf.encode_panoptic(semantic, instance, categories=categories)
    assert [(s["category_id"], s["area"]) for s in segments] == [(1, 2), (2, 1)]


def test_area_and_bbox_by_hand():
    categories = pf.PanopticCategories.from_classes(["road", "car"], things=[1],
                                                    category_ids=[7, 26])
    X = IGNORE
    semantic = np.array([
        [0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 1, X],
        [0, 1, 1, 0, 1, X],
        [0, 0, 0, 0, 1, 1],
    ])
    instance = np.array([
        [0, 0, 0, 0, 0, 0],
        [0, 2, 2, 0, 5, 0],
        [0, 2, 0, 0, 5, 0],
        [0, 0, 0, 0, 5, 0],
    ])
    id_map, segments = pf.encode_panoptic(semantic, instance, categories=categories,
                                          ignore_label=IGNORE)
    # Sorted by (class, instance): road, car crowd (instance 0), car 2, car 5.
    assert segments == [
        {"id": 1, "category_id": 7, "iscrowd": 0, "area": 14, "bbox": [0, 0, 6, 4]},
        {"id": 2, "category_id": 26, "iscrowd": 1, "area": 2, "bbox": [2, 2, 4, 2]},
        {"id": 3, "category_id": 26, "iscrowd": 0, "area": 3, "bbox": [1, 1, 2, 2]},
        {"id": 4, "category_id": 26, "iscrowd": 0, "area": 3, "bbox": [4, 1, 1, 3]},
    ]
    np.testing.assert_array_equal(id_map[1], [1, 3, 3, 1, 4, 0])
    _, segments = pf.encode_panoptic(semantic, instance, categories=categories,
                                     ignore_label=IGNORE, id_scheme="category")
    assert [s["id"] for s in segments] == [7, 26, 26002, 26005]


def test_decode_numbers_thing_segments_in_json_order():
    categories = pf.PanopticCategories.from_classes(["road", "car", "person"], things=[1, 2])
    id_map = np.array([[0, 10, 20, 30, 40, 50]])
    segments = [
        {"id": 30, "category_id": 2, "iscrowd": 0},
        {"id": 40, "category_id": 2, "iscrowd": 1},
        {"id": 50, "category_id": 3, "iscrowd": 0},
        {"id": 10, "category_id": 1, "iscrowd": 0},
        {"id": 20, "category_id": 2},  # iscrowd may be absent (predictions)
    ]
    semantic, instance = pf.decode_panoptic(id_map, segments, categories=categories)
    np.testing.assert_array_equal(semantic, [[IGNORE, 0, 1, 1, 1, 2]])
    # Numbered per class: car 30 -> 1, car 20 -> 2, person 50 -> 1; crowd and stuff -> 0.
    np.testing.assert_array_equal(instance, [[0, 0, 2, 1, 0, 1]])
    # A prediction (crowd=False): iscrowd is not read, so segment 40 is car instance 2.
    _, instance = pf.decode_panoptic(id_map, segments, categories=categories, crowd=False)
    np.testing.assert_array_equal(instance, [[0, 0, 3, 1, 2, 1]])


@pytest.mark.parametrize("segments, id_map, match", [
    ([{"id": 1, "category_id": 1}], [[0, 1, 2]], r"Image 'img7'.*\[2\] are in the PNG but not in"),
    ([{"id": 1, "category_id": 1}, {"id": 3, "category_id": 2}], [[1, 1, 0]],
     r"Image 'img7'.*\[3\] are in the JSON's segments_info but not in the PNG"),
    ([{"id": 1, "category_id": 99}], [[1]], r"Image 'img7': segment 1 has unknown category_id 99"),
    ([{"id": 1, "category_id": 1}, {"id": 1, "category_id": 2}], [[1]], "appears twice"),
    ([{"id": 0, "category_id": 1}], [[0]], "reserved for void"),
    ([{"category_id": 1}], [[0]], "needs an 'id'"),
])
def test_decode_errors_name_image_and_segment(segments, id_map, match):
    categories = pf.PanopticCategories.from_classes(["road", "car"], things=[1])
    with pytest.raises(pf.PanopticFormatError, match=match):
        pf.decode_panoptic(np.array(id_map), segments, categories=categories, image="'img7'")


def test_ignore_label_must_not_be_a_class():
    categories = pf.PanopticCategories.from_classes([str(i) for i in range(300)], things=[])
    with pytest.raises(ValueError, match="ignore_label=255 is also a class id"):
        pf.decode_panoptic(np.zeros((1, 1)), [], categories=categories)


def test_two_stuff_segments_of_one_class_merge_with_a_warning(caplog):
    categories = pf.PanopticCategories.from_classes(["road"], things=[])
    segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 1}]
    with caplog.at_level(logging.WARNING, logger="absl"):
        semantic, instance = pf.decode_panoptic(np.array([[1, 2]]), segments,
                                                categories=categories)
    assert "merged into one segment" in caplog.text
    np.testing.assert_array_equal(semantic, [[0, 0]])
    np.testing.assert_array_equal(instance, [[0, 0]])


def test_encode_rejects_unknown_class_and_bad_category_scheme():
    categories = pf.PanopticCategories.from_classes(["road", "car"], things=[1])
    with pytest.raises(ValueError, match=r"Class ids \[5\]"):
        pf.encode_panoptic(np.array([[5]]), np.array([[0]]), categories=categories)
    with pytest.raises(ValueError, match="instance ids < 1000"):
        pf.encode_panoptic(np.array([[1]]), np.array([[1000]]), categories=categories,
                           id_scheme="category")


def test_dataset_write_and_read(tmp_path):
    rng = np.random.default_rng(2)
    categories = pf.PanopticCategories.from_classes(["sky", "car", "road"], things=[1])
    maps = [_random_maps(rng, h, w, 3, {1}, 5) for h, w in [(9, 11), (16, 8), (5, 5)]]
    json_path, png_dir = str(tmp_path / "gt.json"), str(tmp_path / "gt")
    written = pf.write_panoptic_dataset(json_path, png_dir, [m[0] for m in maps],
                                        [m[1] for m in maps], categories=categories,
                                        image_ids=["b", "a", "c"], ignore_label=IGNORE)
    assert sorted(os.listdir(png_dir)) == ["a.png", "b.png", "c.png"]
    with open(json_path) as f:
        assert json.load(f) == written
    assert written["categories"] == [{"id": 1, "name": "sky", "isthing": 0},
                                     {"id": 2, "name": "car", "isthing": 1},
                                     {"id": 3, "name": "road", "isthing": 0}]
    assert written["images"][1] == {"id": "a", "file_name": "a.png", "height": 16, "width": 8}
    read = list(pf.iter_panoptic_dataset(json_path, png_dir, ignore_label=IGNORE))
    assert [r[0] for r in read] == ["b", "a", "c"]
    for (_, sem, inst), (sem0, inst0) in zip(read, maps):
        np.testing.assert_array_equal(sem, sem0)
        np.testing.assert_array_equal(_canonical_instances(sem, inst, {1}),
                                      _canonical_instances(sem0, inst0, {1}))
    assert pf.PanopticCategories.from_coco(written["categories"]) == categories


def test_file_errors(tmp_path):
    with pytest.raises(pf.PanopticFormatError, match="No JSON file at"):
        pf.read_panoptic_json(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(pf.PanopticFormatError, match="is not valid JSON"):
        pf.read_panoptic_json(str(bad))
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(pf.PanopticFormatError, match="needs the lists"):
        pf.read_panoptic_json(str(bad))
    with pytest.raises(pf.PanopticFormatError, match="No PNG at"):
        pf.read_id_png(str(tmp_path / "missing.png"))
    gray = tmp_path / "gray.png"
    from PIL import Image
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(gray)
    with pytest.raises(pf.PanopticFormatError, match="mode L"):
        pf.read_id_png(str(gray))
    dataset = {"annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": []}] * 2}
    with pytest.raises(pf.PanopticFormatError, match="image id 1 has two annotations"):
        pf.annotations_by_image_id(dataset)
