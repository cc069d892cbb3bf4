"""The COCO panoptic format: read and write `(semantic, instance)` maps as PNGs plus one JSON.

Format (http://cocodataset.org/#format-data): one RGB PNG per image whose colour encodes a segment
id as `id = R + 256 G + 256^2 B` (id 0 = void), and a JSON file with

  "images":      [{"id", "file_name", "height", "width"}, ...]
  "annotations": [{"image_id", "file_name" (the PNG), "segments_info": [
                     {"id", "category_id", "iscrowd", "area", "bbox": [x, y, width, height]}]}]
  "categories":  [{"id", "name", "isthing", "color"?}, ...]

The project's maps are a pair `(semantic [H, W], instance [H, W])` with contiguous class ids,
`ignore_label` for void and instance 0 for "no instance"; a segment is a `(class, instance)` pair.
The two conventions meet here:

- Void pixels (semantic == ignore_label) are segment id 0; every other pixel belongs to a segment.
- A stuff class is one segment per image: the instance map is not read on stuff pixels.
- A thing class is one segment per instance id. Its pixels with instance 0 are the class's crowd
  region (the Cityscapes "group" convention): written as one `iscrowd=1` segment per class in a
  ground truth (`crowd=True`), or as an ordinary segment in a prediction (`crowd=False`).
- Decoding inverts this up to the choice of instance ids: crowd segments become instance 0 of
  their class, the thing segments of each class get instance ids 1, 2, ... in the order of
  `segments_info` (numbered per class, so ids stay below the image's segment count, the bound
  `seg_jax.metrics.panoptic` puts on them), stuff segments instance 0.

`PanopticCategories` holds the mapping between contiguous class ids and COCO category ids.
"""

import dataclasses
import json
import os
from typing import Iterator, Mapping, Sequence

import numpy as np
from absl import logging
from PIL import Image

from seg_jax.errors import DataError

# Segment ids are 24-bit: three 8-bit channels.
MAX_SEGMENT_ID = 256**3 - 1
VOID_ID = 0
# "category" ids follow Cityscapes' createPanopticImgs: category_id * 1000 + instance.
_CATEGORY_ID_STRIDE = 1000
ID_SCHEMES = ("sequential", "category")


class PanopticFormatError(DataError):
    """A COCO panoptic file or annotation that cannot be read; the message names it and the fix."""


def rgb_to_id(rgb) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG: `[..., 3]` uint8 RGB -> `[...]` int32 `R + 256 G + 256^2 B`."""
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"rgb_to_id needs a [..., 3] array, got shape {rgb.shape}.")
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids) -> np.ndarray:
    """The inverse of `rgb_to_id`: `[...]` int ids in [0, 2^24) -> `[..., 3]` uint8 RGB."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(
            f"Segment ids must lie in [0, {MAX_SEGMENT_ID}] to fit three 8-bit channels; got "
            f"[{ids.min()}, {ids.max()}]."
        )
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class PanopticCategories:
    """Classes of a panoptic dataset and their COCO category ids.

    Class `c` (contiguous, 0..C-1) is category `category_ids[c]` named `class_names[c]`; `things`
    are the thing classes, every other class is stuff.
    """

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    things: frozenset[int]

    def __post_init__(self):
        if len(self.class_names) != len(self.category_ids):
            raise ValueError(
                f"{len(self.class_names)} class names but {len(self.category_ids)} category ids."
            )
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"Category ids must be unique, got {list(self.category_ids)}.")
        bad = sorted(c for c in self.things if not 0 <= c < len(self.class_names))
        if bad:
            raise ValueError(f"Thing classes {bad} are not class ids in [0, {len(self.class_names)}).")

    @classmethod
    def from_classes(cls, class_names: Sequence[str], things, *, category_ids=None):
        """Categories for contiguous classes; category ids default to 1..C (COCO starts at 1)."""
        if category_ids is None:
            category_ids = range(1, len(class_names) + 1)
        return cls(tuple(str(n) for n in class_names), tuple(int(i) for i in category_ids),
                   frozenset(int(c) for c in things))

    @classmethod
    def from_coco(cls, categories: Sequence[Mapping], *, source: str = "categories"):
        """Reads a COCO "categories" list: class ids follow the order of the list."""
        names, ids, things = [], [], []
        for index, category in enumerate(categories):
            if not isinstance(category, Mapping) or "id" not in category:
                raise PanopticFormatError(
                    f"{source}: category #{index} ({category!r}) has no 'id'; each category needs "
                    f"'id', 'name' and 'isthing'."
                )
            names.append(str(category.get("name", category["id"])))
            ids.append(int(category["id"]))
            if int(category.get("isthing", 0)) == 1:
                things.append(index)
        if len(set(ids)) != len(ids):
            raise PanopticFormatError(f"{source}: category ids repeat ({ids}); make them unique.")
        return cls(tuple(names), tuple(ids), frozenset(things))

    def to_coco(self) -> list[dict]:
        """The COCO "categories" list, in class order."""
        return [
            {"id": cid, "name": name, "isthing": int(c in self.things)}
            for c, (name, cid) in enumerate(zip(self.class_names, self.category_ids))
        ]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def stuff(self) -> tuple[int, ...]:
        return tuple(c for c in range(self.num_classes) if c not in self.things)

    @property
    def category_to_class(self) -> dict[int, int]:
        return {cid: c for c, cid in enumerate(self.category_ids)}


def _bboxes(rows, cols, segment_index, num_segments):
    """Per-segment COCO boxes [x, y, width, height] (inclusive pixel extents) [S, 4]."""
    big = np.iinfo(np.int64).max
    y0 = np.full(num_segments, big, np.int64)
    x0 = np.full(num_segments, big, np.int64)
    y1 = np.full(num_segments, -1, np.int64)
    x1 = np.full(num_segments, -1, np.int64)
    np.minimum.at(y0, segment_index, rows)
    np.minimum.at(x0, segment_index, cols)
    np.maximum.at(y1, segment_index, rows)
    np.maximum.at(x1, segment_index, cols)
    return np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1)


def _check_encode_inputs(semantic, instance, categories, ignore_label, id_scheme):
    """Raises ValueError unless `semantic`/`instance` are one image's maps with known class ids."""
    if semantic.ndim != 2 or semantic.shape != instance.shape:
        raise ValueError(
            f"encode_panoptic takes one image: semantic and instance [H, W] of the same shape, got "
            f"{semantic.shape} and {instance.shape}."
        )
    if id_scheme not in ID_SCHEMES:
        raise ValueError(f"Unknown id_scheme {id_scheme!r}; choose one of {ID_SCHEMES}.")
    present = np.unique(semantic[semantic != ignore_label])
    unknown = present[(present < 0) | (present >= categories.num_classes)]
    if unknown.size:
        raise ValueError(
            f"Class ids {unknown.tolist()} are neither classes of the {categories.num_classes} "
            f"categories nor ignore_label={ignore_label}."
        )


def _category_scheme_ids(category_ids, instances, thing_without_instance):
    """Cityscapes' segment ids: `category_id` for stuff and crowd segments, `category_id * 1000 +
    instance` for thing instances, and `category_id * 1000` for `thing_without_instance` (a thing's
    instance-0 segment that is not crowd, which needs an id apart from the category's crowd id)."""
    if (category_ids < 1).any():
        raise ValueError("id_scheme='category' needs category ids >= 1 (id 0 is void).")
    if (instances >= _CATEGORY_ID_STRIDE).any():
        raise ValueError(
            f"id_scheme='category' needs instance ids < {_CATEGORY_ID_STRIDE}, got "
            f"{int(instances.max())}; use id_scheme='sequential'."
        )
    segment_ids = np.where(instances > 0, category_ids * _CATEGORY_ID_STRIDE + instances,
                           category_ids)
    return np.where(thing_without_instance, category_ids * _CATEGORY_ID_STRIDE, segment_ids)


def _segments_info(segment_ids, category_ids, iscrowd, areas, boxes) -> list[dict]:
    """COCO `segments_info` entries, one per segment, as plain Python ints."""
    return [{"id": int(segment_id), "category_id": int(category_id), "iscrowd": int(is_crowd),
             "area": int(area), "bbox": [int(v) for v in box]}
            for segment_id, category_id, is_crowd, area, box
            in zip(segment_ids, category_ids, iscrowd, areas, boxes)]


def encode_panoptic(semantic, instance, *, categories: PanopticCategories, ignore_label: int = 255,
                    crowd: bool = True, id_scheme: str = "sequential"):
    """One image's `(semantic, instance)` maps -> a COCO segment-id map and its `segments_info`.

    Args:
      semantic: [H, W] int class ids in [0, C) or `ignore_label` (void -> segment id 0).
      instance: [H, W] int instance ids >= 0; read only on thing pixels.
      categories: the classes and their COCO category ids.
      ignore_label: the void label.
      crowd: True (ground truth): thing pixels with instance 0 become one `iscrowd=1` segment per
        class. False (predictions, which have no crowd): they become an ordinary segment.
      id_scheme: "sequential": segment ids 1, 2, ... in (class, instance) order. "category": the
        Cityscapes scheme, `category_id` for stuff and crowd segments and
        `category_id * 1000 + instance` for thing instances (needs category ids >= 1 and
        instance ids < 1000); the ids then tell class and instance at a glance.

    Returns:
      `(id_map [H, W] int32, segments_info)`, segments sorted by (class, instance), each
      `{"id", "category_id", "iscrowd", "area", "bbox": [x, y, width, height]}`.
    """
    semantic = np.asarray(semantic).astype(np.int64)
    instance = np.asarray(instance).astype(np.int64)
    _check_encode_inputs(semantic, instance, categories, ignore_label, id_scheme)
    valid = semantic != ignore_label
    is_thing = np.zeros(categories.num_classes, bool)
    is_thing[list(categories.things)] = True
    # Stuff is one segment per class: its instance ids are not read.
    thing_pixel = valid & is_thing[np.where(valid, semantic, 0)]
    segment_instance = np.where(thing_pixel, instance, 0)
    if (segment_instance < 0).any():
        raise ValueError(f"Instance ids must be >= 0, got {int(segment_instance.min())}.")

    # A segment is a (class, instance) pair: one key per pair, sorted by class then instance.
    stride = int(segment_instance.max()) + 1
    rows, cols = np.nonzero(valid)
    keys, segment_index = np.unique(
        semantic[rows, cols] * stride + segment_instance[rows, cols], return_inverse=True
    )
    classes, instances = keys // stride, keys % stride
    category_ids = np.asarray(categories.category_ids, np.int64)[classes]
    thing_instance_zero = is_thing[classes] & (instances == 0)
    iscrowd = crowd & thing_instance_zero

    if id_scheme == "sequential":
        segment_ids = np.arange(1, len(keys) + 1, dtype=np.int64)
    else:
        segment_ids = _category_scheme_ids(category_ids, instances, thing_instance_zero & ~iscrowd)
    if segment_ids.size and segment_ids.max() > MAX_SEGMENT_ID:
        raise ValueError(
            f"Segment id {int(segment_ids.max())} does not fit in 24 bits; use id_scheme='sequential'."
        )

    id_map = np.zeros(semantic.shape, np.int32)
    id_map[rows, cols] = segment_ids[segment_index]
    areas = np.bincount(segment_index, minlength=len(keys))
    boxes = _bboxes(rows, cols, segment_index, len(keys))
    return id_map, _segments_info(segment_ids, category_ids, iscrowd, areas, boxes)


def _checked_segment(segment, index, category_to_class, seen_ids, image):
    """`(segment id, category id)` of `segments_info[index]`, checked as panopticapi checks it."""
    if not isinstance(segment, Mapping) or "id" not in segment or "category_id" not in segment:
        raise PanopticFormatError(
            f"Image {image}: segments_info[{index}] = {segment!r} needs an 'id' and a "
            f"'category_id'."
        )
    segment_id, category_id = int(segment["id"]), int(segment["category_id"])
    if segment_id == VOID_ID:
        raise PanopticFormatError(
            f"Image {image}: segment id 0 in segments_info; id 0 is reserved for void pixels, "
            f"give the segment a non-zero id."
        )
    if segment_id in seen_ids:
        raise PanopticFormatError(
            f"Image {image}: segment id {segment_id} appears twice in segments_info; segment ids "
            f"must be unique within an image."
        )
    if category_id not in category_to_class:
        raise PanopticFormatError(
            f"Image {image}: segment {segment_id} has unknown category_id {category_id}; known "
            f"category ids: {sorted(category_to_class)}."
        )
    return segment_id, category_id


def _segment_table(segments_info, categories: PanopticCategories, crowd: bool, image: str):
    """Lists of segment ids, class ids and instance ids (crowd and stuff 0, each thing class's
    others 1, 2, ... in order) of `segments_info`; a repeated stuff category warns (merged)."""
    category_to_class = categories.category_to_class
    segment_ids, semantic_of, instance_of = [], [], []
    next_instance = {}  # per thing class
    stuff_seen = set()
    for index, segment in enumerate(segments_info):
        segment_id, category_id = _checked_segment(
            segment, index, category_to_class, segment_ids, image)
        class_id = category_to_class[category_id]
        is_crowd = crowd and bool(int(segment.get("iscrowd", 0)))
        instance_id = 0  # for crowd and stuff segments
        if not is_crowd and class_id in categories.things:
            instance_id = next_instance[class_id] = next_instance.get(class_id, 0) + 1
        elif not is_crowd and class_id in stuff_seen:
            logging.warning("Image %s: more than one segment of stuff category %s; they are "
                            "merged into one segment.", image, category_id)
        elif not is_crowd:
            stuff_seen.add(class_id)
        segment_ids.append(segment_id)
        semantic_of.append(class_id)
        instance_of.append(instance_id)
    return segment_ids, semantic_of, instance_of


def _locate_segments(id_map, segment_ids, image: str):
    """`(order, position, known)`: pixel p holds `segment_ids[order[position[p]]]` where
    `known[p]`, void elsewhere; an id in only one of the PNG and the JSON is an error."""
    # Each pixel finds its segment by binary search in the sorted JSON ids (no np.unique of the
    # whole map, which cost twice as much on 2-megapixel images).
    in_json = np.asarray(segment_ids, np.int64)
    order = np.argsort(in_json, kind="stable")
    sorted_ids = in_json[order].astype(id_map.dtype)  # same dtype: no conversion of the map
    position = np.minimum(np.searchsorted(sorted_ids, id_map), max(len(sorted_ids) - 1, 0))
    known = sorted_ids[position] == id_map if len(sorted_ids) else np.zeros(id_map.shape, bool)
    unknown = ~known & (id_map != VOID_ID)
    if unknown.any():
        raise PanopticFormatError(
            f"Image {image}: segment ids {np.unique(id_map[unknown]).tolist()[:10]} are in the PNG "
            f"but not in the JSON's segments_info; every non-zero id in the PNG needs a segment."
        )
    pixels = np.bincount(np.where(known, position, len(sorted_ids)).ravel(),
                         minlength=len(sorted_ids) + 1)[:-1]
    if (pixels == 0).any():
        raise PanopticFormatError(
            f"Image {image}: segment ids {sorted_ids[pixels == 0].tolist()[:10]} are in the JSON's "
            f"segments_info but not in the PNG; remove them from segments_info or check the PNG."
        )
    return order, position, known


def decode_panoptic(id_map, segments_info: Sequence[Mapping], *, categories: PanopticCategories,
                    ignore_label: int = 255, crowd: bool = True, image: str = "?"):
    """A COCO segment-id map and its `segments_info` -> `(semantic, instance)` [H, W] int32.

    Crowd segments become instance 0 of their class; each thing class's other segments get
    instance ids 1, 2, ... in `segments_info` order; stuff segments get instance 0. With
    `crowd=False` (predictions, as panopticapi reads them) "iscrowd" is not read: every thing
    segment gets an instance id.

    Checks what panopticapi checks, naming `image` and the segment: every non-zero id in the map
    has a segment in `segments_info`, every segment appears in the map, every category_id is
    known. Segment id 0 is void (semantic `ignore_label`, instance 0).

    Stuff holds one segment per class in the project's maps, so two non-crowd segments of one stuff
    category merge into one (with a warning); panopticapi would score them as two segments.
    """
    id_map = np.asarray(id_map)
    if id_map.ndim != 2:
        raise ValueError(f"decode_panoptic takes one [H, W] id map, got shape {id_map.shape}.")
    if 0 <= ignore_label < categories.num_classes:
        raise ValueError(
            f"ignore_label={ignore_label} is also a class id ({categories.num_classes} classes); "
            f"pass an ignore_label >= {categories.num_classes}."
        )
    segment_ids, semantic_of, instance_of = _segment_table(segments_info, categories, crowd, image)
    order, position, known = _locate_segments(id_map, segment_ids, image)
    table_semantic = np.asarray(semantic_of, np.int32)[order]
    table_instance = np.asarray(instance_of, np.int32)[order]
    semantic = np.where(known, table_semantic[position] if len(order) else 0, ignore_label)
    instance = np.where(known, table_instance[position] if len(order) else 0, 0)
    semantic, instance = semantic.astype(np.int32), instance.astype(np.int32)
    return semantic, instance


def write_id_png(path: str, id_map) -> None:
    """Writes a segment-id map [H, W] as a COCO panoptic RGB PNG."""
    Image.fromarray(id_to_rgb(id_map), mode="RGB").save(path)


def read_id_png(path: str) -> np.ndarray:
    """Reads a COCO panoptic PNG -> segment ids [H, W] int32."""
    if not os.path.isfile(path):
        raise PanopticFormatError(f"No PNG at {path}; check the folder and the annotation's file_name.")
    try:
        with Image.open(path) as png:
            if png.mode not in ("RGB", "RGBA"):
                raise PanopticFormatError(
                    f"{path}: a COCO panoptic PNG is RGB (id = R + 256 G + 256^2 B), this one has "
                    f"mode {png.mode}; re-encode it with id_to_rgb."
                )
            rgb = np.asarray(png.convert("RGB"))
    except (OSError, SyntaxError) as e:
        raise PanopticFormatError(f"{path}: not a readable PNG ({e}).") from e
    return rgb_to_id(rgb)


def _image_file_stem(image_id) -> str:
    return f"{image_id:012d}" if isinstance(image_id, int) else str(image_id)


def write_panoptic_dataset(json_path: str, png_dir: str, semantic, instance, *,
                           categories: PanopticCategories, image_ids=None, ignore_label: int = 255,
                           crowd: bool = True, id_scheme: str = "sequential") -> dict:
    """Writes images' `(semantic, instance)` maps as a COCO panoptic dataset: PNGs + one JSON.

    Args:
      json_path: the JSON file to write.
      png_dir: the folder for the PNGs (created if needed), one `<image_id>.png` per image
        (integer ids zero-padded to 12 digits, as in COCO).
      semantic, instance: [N, H, W] int arrays, or sequences of [H, W] arrays (sizes may differ).
      categories: the classes and their COCO category ids (written as "categories").
      image_ids: N ints or strings; default 0..N-1.
      ignore_label, crowd, id_scheme: as in `encode_panoptic` (`crowd=False` for predictions).

    Returns:
      The JSON dict that was written.
    """
    if len(semantic) != len(instance):
        raise ValueError(f"{len(semantic)} semantic maps but {len(instance)} instance maps.")
    if image_ids is None:
        image_ids = list(range(len(semantic)))
    image_ids = [i.item() if isinstance(i, np.generic) else i for i in image_ids]
    if len(image_ids) != len(semantic) or len(set(image_ids)) != len(image_ids):
        raise ValueError(f"Need {len(semantic)} unique image ids, got {image_ids}.")
    os.makedirs(png_dir, exist_ok=True)
    images, annotations = [], []
    for image_id, sem, inst in zip(image_ids, semantic, instance):
        id_map, segments_info = encode_panoptic(sem, inst, categories=categories,
                                                ignore_label=ignore_label, crowd=crowd,
                                                id_scheme=id_scheme)
        file_name = f"{_image_file_stem(image_id)}.png"
        write_id_png(os.path.join(png_dir, file_name), id_map)
        height, width = id_map.shape
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        annotations.append({"image_id": image_id, "file_name": file_name,
                            "segments_info": segments_info})
    dataset = {"images": images, "annotations": annotations, "categories": categories.to_coco()}
    json_dir = os.path.dirname(os.path.abspath(json_path))
    os.makedirs(json_dir, exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(dataset, f)
    return dataset


def read_panoptic_json(path: str, *, need_categories: bool = True) -> dict:
    """Loads a COCO panoptic JSON and checks its top-level shape (a prediction may omit categories)."""
    if not os.path.isfile(path):
        raise PanopticFormatError(f"No JSON file at {path}; check the path.")
    try:
        with open(path, encoding="utf-8") as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PanopticFormatError(f"{path} is not valid JSON ({e}).") from e
    needed = ["annotations"] + (["categories"] if need_categories else [])
    if not isinstance(dataset, dict) or any(not isinstance(dataset.get(k), list) for k in needed):
        raise PanopticFormatError(
            f"{path} is not a COCO panoptic JSON: it needs the lists {needed} at the top level."
        )
    for index, annotation in enumerate(dataset["annotations"]):
        if (not isinstance(annotation, dict)
                or any(k not in annotation for k in ("image_id", "file_name", "segments_info"))):
            raise PanopticFormatError(
                f"{path}: annotations[{index}] needs 'image_id', 'file_name' and 'segments_info'."
            )
    return dataset


def annotations_by_image_id(dataset: Mapping, *, source: str = "JSON") -> dict:
    """{image_id: annotation}; a repeated image id is an error naming `source`."""
    by_id = {}
    for annotation in dataset["annotations"]:
        image_id = annotation["image_id"]
        if image_id in by_id:
            raise PanopticFormatError(
                f"{source}: image id {image_id!r} has two annotations; keep one per image."
            )
        by_id[image_id] = annotation
    return by_id


def read_annotation(annotation: Mapping, png_dir: str, *, categories: PanopticCategories,
                    ignore_label: int = 255, crowd: bool = True):
    """One annotation's PNG + segments -> `(semantic, instance)` [H, W] int32 (`decode_panoptic`)."""
    id_map = read_id_png(os.path.join(png_dir, annotation["file_name"]))
    return decode_panoptic(id_map, annotation["segments_info"], categories=categories,
                           ignore_label=ignore_label, crowd=crowd,
                           image=repr(annotation["image_id"]))


def iter_panoptic_dataset(json_path: str, png_dir: str, *, categories: PanopticCategories = None,
                          ignore_label: int = 255, crowd: bool = True) -> Iterator[tuple]:
    """Yields `(image_id, semantic [H, W], instance [H, W])` for each annotation, in file order.

    `categories` default to the JSON's own "categories" (class ids in their order); `crowd=False`
    reads a prediction (its "iscrowd" flags ignored).
    """
    dataset = read_panoptic_json(json_path, need_categories=categories is None)
    if categories is None:
        categories = PanopticCategories.from_coco(dataset["categories"], source=json_path)
    annotations_by_image_id(dataset, source=json_path)  # rejects repeated image ids
    for annotation in dataset["annotations"]:
        semantic, instance = read_annotation(annotation, png_dir, categories=categories,
                                             ignore_label=ignore_label, crowd=crowd)
        yield annotation["image_id"], semantic, instance
