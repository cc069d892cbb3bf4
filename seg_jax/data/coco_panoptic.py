"""COCO panoptic from the raw release: `config.data.name = "coco_panoptic"`.

tfds' `coco/2017_panoptic` builder imports TensorFlow to decode, so the release is read directly.
Layout under `config.data.root` (what the official zips unpack to):

    annotations/panoptic_train2017.json, annotations/panoptic_val2017.json
    annotations/panoptic_train2017/*.png   the segment-id PNGs (zips inside the annotations zip;
    annotations/panoptic_val2017/*.png     <root>/panoptic_{train,val}2017/ is accepted as well)
    train2017/*.jpg, val2017/*.jpg         the images
    splits/<split>.txt                     optional: image stems (e.g. 000000000139), a subset

Split 'train' is train2017 (118k images), 'validation' is val2017 (5k); either may be sliced like
tfds ('validation[:16]', parsed by the folder dataset's rule). Classes are the JSON's categories
in their order: for COCO the 80 things then the 53 stuff classes, 133 in all.

Each example is `{'image': uint8 [H, W, 3], 'label': int32 [H, W], 'instance': int32 [H, W]}`
decoded by `seg_jax.data.panoptic_format`: void -> ignore_label, stuff -> instance 0, each thing
class's segments -> instance 1, 2, ... in `segments_info` order, and a crowd region -> instance 0
of its thing class (panoptic_format's convention; the panoptic targets give it no centre and PQ
treats it as crowd). Grayscale JPEGs (COCO has a few) come out as RGB.

The JSON is read and every listed file is checked for existence when the source is built (two
directory listings), so a missing download stops before training with the paths and the zips.
"""

import os

import numpy as np
from PIL import Image

from seg_jax.data import datasets, folder, panoptic_format
from seg_jax.data.panoptic_format import PanopticFormatError

# Split names -> the release's set names.
SPLITS = {"train": "train2017", "validation": "val2017"}

_IMAGES_URL = "http://images.cocodataset.org/zips/{subset}.zip"
_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/panoptic_annotations_trainval2017.zip"


def _download_hint(root: str, subset: str) -> str:
    return (
        f"COCO panoptic needs, under {root}: the {subset} images "
        f"({_IMAGES_URL.format(subset=subset)}, unzipped to {os.path.join(root, subset)}/) "
        f"and {_ANNOTATIONS_URL} unzipped into {root}/ (giving "
        f"annotations/panoptic_{subset}.json) with its inner annotations/panoptic_{subset}.zip "
        f"unzipped too (giving annotations/panoptic_{subset}/*.png).")


def _subset(split: str) -> str:
    name = split.split("[", 1)[0]
    if name not in SPLITS:
        raise ValueError(
            f"COCO panoptic split {split!r}: use one of {sorted(SPLITS)} (train2017, val2017), "
            "optionally sliced, e.g. 'validation[:16]'.")
    return SPLITS[name]


def _png_dir(root: str, subset: str) -> str:
    candidates = [os.path.join(root, "annotations", f"panoptic_{subset}"),
                  os.path.join(root, f"panoptic_{subset}")]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    raise PanopticFormatError(
        f"No folder of panoptic PNGs: neither {candidates[0]} nor {candidates[1]} exists. "
        + _download_hint(root, subset))


def _image_name(image_entry, annotation) -> str:
    """The JPEG of an annotation: the JSON's images[].file_name (COCO), else '<png stem>.jpg'.

    Files written by `panoptic_format.write_panoptic_dataset` name the PNG in "images" too; the
    image is then taken to be the JPEG of the same stem.
    """
    name = (image_entry or {}).get("file_name")
    if not name or name == annotation["file_name"]:
        name = os.path.splitext(annotation["file_name"])[0] + ".jpg"
    return name


class CocoPanopticSource:
    """Random access to one split of the COCO panoptic release as (image, label, instance)."""

    def __init__(self, root: str, split: str, *, ignore_label: int = 255):
        subset = _subset(split)
        self.root, self.subset, self.ignore_label = root, subset, ignore_label
        json_path = os.path.join(root, "annotations", f"panoptic_{subset}.json")
        if not os.path.isfile(json_path):
            raise PanopticFormatError(f"No {json_path}. " + _download_hint(root, subset))
        self.png_dir = _png_dir(root, subset)
        self.image_dir = os.path.join(root, subset)
        if not os.path.isdir(self.image_dir):
            raise PanopticFormatError(
                f"No folder {self.image_dir}. " + _download_hint(root, subset))

        dataset = panoptic_format.read_panoptic_json(json_path)
        self.categories = panoptic_format.PanopticCategories.from_coco(
            dataset["categories"], source=json_path)
        if 0 <= ignore_label < self.categories.num_classes:
            raise ValueError(
                f"config.data.ignore_label={ignore_label} is also a class id of the "
                f"{self.categories.num_classes} COCO panoptic classes; use 255.")
        self.colors = [c.get("color") for c in dataset["categories"]]
        by_id = panoptic_format.annotations_by_image_id(dataset, source=json_path)
        images = {entry.get("id"): entry for entry in dataset.get("images", [])
                  if isinstance(entry, dict)}
        entries = {}
        for image_id, annotation in by_id.items():
            image_name = _image_name(images.get(image_id), annotation)
            entries[os.path.splitext(image_name)[0]] = (image_name, annotation)
        # The folder dataset's split rule: slices, and an optional splits/<name>.txt subset.
        stems = folder._split_stems(  # pylint: disable=protected-access
            root, split, sorted(entries))
        self._entries = [entries[s] for s in stems]
        self._check_files(json_path)

    def _check_files(self, json_path: str) -> None:
        """Every selected image and PNG exists (one listing per folder, not one stat per file)."""
        for folder_path, names, what in (
                (self.image_dir, [image for image, _ in self._entries], "images"),
                (self.png_dir, [a["file_name"] for _, a in self._entries], "panoptic PNGs")):
            present = set(os.listdir(folder_path))
            missing = [n for n in names if n not in present]
            if missing:
                raise PanopticFormatError(
                    f"{len(missing)} {what} listed in {json_path} are missing from {folder_path}, "
                    f"e.g. {os.path.join(folder_path, missing[0])}. "
                    + _download_hint(self.root, self.subset))

    @property
    def palette(self) -> np.ndarray:
        """The categories' "color" where the JSON gives all of them, else the VOC colour map."""
        if all(isinstance(c, (list, tuple)) and len(c) == 3 for c in self.colors):
            return np.asarray(self.colors, np.uint8)
        return folder.voc_palette(self.categories.num_classes)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index) -> dict:
        image_name, annotation = self._entries[int(index)]
        image_path = os.path.join(self.image_dir, image_name)
        try:
            with Image.open(image_path) as image:
                # convert: grayscale (and the odd CMYK) JPEGs become RGB like the rest.
                rgb = np.asarray(image.convert("RGB"))
        except FileNotFoundError as e:
            raise PanopticFormatError(
                f"No image {image_path}. " + _download_hint(self.root, self.subset)) from e
        except (OSError, SyntaxError) as e:
            raise PanopticFormatError(f"{image_path}: not a readable image ({e}).") from e
        semantic, instance = panoptic_format.read_annotation(
            annotation, self.png_dir, categories=self.categories, ignore_label=self.ignore_label)
        if semantic.shape != rgb.shape[:2]:
            raise PanopticFormatError(
                f"{os.path.join(self.png_dir, annotation['file_name'])} is "
                f"{semantic.shape[0]}x{semantic.shape[1]} but {image_path} is "
                f"{rgb.shape[0]}x{rgb.shape[1]} (HxW); the PNG must match its image.")
        return {"image": rgb, "label": semantic, "instance": instance}


def coco_panoptic(data_config, split):
    """Loader for `seg_jax.data.datasets`: `(CocoPanopticSource, DatasetInfo)`."""
    if not data_config.root:
        raise ValueError(
            "config.data.name='coco_panoptic' needs --config.data.root=<COCO folder with "
            "annotations/, train2017/ and val2017/>.")
    ignore = datasets.void_label(data_config)
    source = CocoPanopticSource(data_config.root, split, ignore_label=ignore)
    categories = source.categories
    info = datasets.DatasetInfo(
        name="coco_panoptic",
        class_names=categories.class_names,
        ignore_label=ignore,
        thing_classes=tuple(sorted(categories.things)),
        stuff_classes=categories.stuff,
        palette=source.palette,
    )
    return source, info
