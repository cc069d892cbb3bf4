"""A user's own images and masks as a dataset: `config.data.name = "folder"`.

Layout under `config.data.root`:

    images/<stem>.png | .jpg | .jpeg    RGB (or grayscale, converted) images
    masks/<stem>.png                    class ids: a grayscale PNG, or a palette PNG whose palette
                                        indices are the ids (the PASCAL VOC convention)
    classes.json                        optional: {"classes": ["background", ...],
                                        "ignore_label": 255, "things": [class ids]}
    splits/<split>.txt                  optional: one stem per line; without it every split
                                        is the whole folder (logged)

A split may be sliced like tfds: "validation[:16]". Every mask is read once when the source is
built, so bad input stops before training with an error naming the file and the fix: a missing
mask or image, an image and mask of different sizes, a label id that is neither a class nor the
ignore id, an unreadable file.
"""

import json
import os
import re

import numpy as np
from absl import logging
from PIL import Image

from seg_jax.data.datasets import DEFAULT_IGNORE_LABEL
from seg_jax.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def voc_palette(num_classes: int) -> np.ndarray:
    """uint8 [C, 3] colours of PASCAL VOC's colour map (bits of the id spread over R, G, B)."""
    ids = np.arange(num_classes)
    palette = np.zeros((num_classes, 3), np.int64)
    for shift in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return palette.astype(np.uint8)


class FolderDataError(DataError):
    """A folder dataset that cannot be used; the message names the file and the fix."""


def read_classes(root: str, num_classes: int | None, ignore_label: int | None) -> dict:
    """classes.json, or `num_classes` classes named class_0, ... with `ignore_label`.

    `num_classes` and `ignore_label` are the config's (None: not given). classes.json is the
    dataset's own declaration: it sets the classes, and the ignore label unless the config gives
    one (a disagreement between the two is an error naming both).
    """
    path = os.path.join(root, "classes.json")
    if not os.path.exists(path):
        if num_classes is None:
            raise FolderDataError(
                f"{path} does not exist, so the folder dataset does not say how many classes it "
                f"has: add classes.json ({{\"classes\": [\"background\", ...]}}) or pass "
                f"--config.data.num_classes=<C>.")
        return {"classes": [f"class_{c}" for c in range(num_classes)],
                "ignore_label": DEFAULT_IGNORE_LABEL if ignore_label is None else ignore_label,
                "things": []}
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise FolderDataError(f"{path}: not readable JSON ({e}).") from e
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise FolderDataError(
            f'{path}: needs "classes", a non-empty list of class names in id order, e.g. '
            '{"classes": ["background", "cat"], "ignore_label": 255}.')
    things = [int(t) for t in spec.get("things", [])]
    bad = [t for t in things if not 0 <= t < len(classes)]
    if bad:
        raise FolderDataError(f"{path}: things {bad} are not class ids in [0, {len(classes)}).")
    return {"classes": classes, "ignore_label": _declared_ignore_label(path, spec, ignore_label),
            "things": things}


def _declared_ignore_label(path: str, spec: dict, ignore_label: int | None) -> int:
    declared = spec.get("ignore_label")
    if declared is None:
        return DEFAULT_IGNORE_LABEL if ignore_label is None else ignore_label
    if ignore_label is not None and int(declared) != ignore_label:
        raise FolderDataError(
            f"{path} sets ignore_label={declared} but config.data.ignore_label={ignore_label}; "
            f"leave config.data.ignore_label unset to take the dataset's, or set "
            f"--config.data.ignore_label={declared}.")
    return int(declared)


def _split_stems(root: str, split: str, all_stems: list[str]) -> list[str]:
    match = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", split)
    if not match:
        raise FolderDataError(f"Split {split!r}: use a name such as 'train' or 'validation[:16]'.")
    name, start, stop = match.groups()
    path = os.path.join(root, "splits", f"{name}.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            stems = [line.strip() for line in f if line.strip()]
        unknown = sorted(set(stems) - set(all_stems))
        if unknown:
            raise FolderDataError(
                f"{path} lists {unknown[:5]} with no image in {os.path.join(root, 'images')}; "
                "remove them or add the images.")
    else:
        logging.info("No %s: split %r is the whole folder (%d images).", path, name, len(all_stems))
        stems = list(all_stems)
    return stems[int(start) if start else None:int(stop) if stop else None]


def _read_mask(path: str) -> np.ndarray:
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("L", "P", "I", "I;16"):
                raise FolderDataError(
                    f"{path}: mode {mask.mode} is not a class-id mask; save class ids as a "
                    "grayscale (mode L or I) or palette (mode P) PNG.")
            return np.asarray(mask).astype(np.int32)
    except (OSError, SyntaxError) as e:
        raise FolderDataError(f"{path}: not a readable image ({e}).") from e


def read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError) as e:
        raise FolderDataError(f"{path}: not a readable image ({e}).") from e


def image_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, SyntaxError) as e:
        raise FolderDataError(f"{path}: not a readable image ({e}).") from e


class FolderSource:
    """Random access to `(image, label)` examples of one split of a folder dataset."""

    def __init__(self, root: str, split: str, *, num_classes: int | None,
                 ignore_label: int | None):
        image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
        for folder in (image_dir, mask_dir):
            if not os.path.isdir(folder):
                raise FolderDataError(
                    f"No folder {folder}; a folder dataset needs images/ and masks/ under "
                    f"config.data.root={root!r}.")
        self.spec = read_classes(root, num_classes, ignore_label)
        images = {os.path.splitext(n)[0]: n for n in sorted(os.listdir(image_dir))
                  if n.lower().endswith(IMAGE_SUFFIXES)}
        if not images:
            raise FolderDataError(f"{image_dir} holds no .png or .jpg images.")
        stems = _split_stems(root, split, sorted(images))
        self._images = [os.path.join(image_dir, images[s]) for s in stems]
        self._masks = [os.path.join(mask_dir, f"{s}.png") for s in stems]
        self._check()

    def _check(self) -> None:
        """Reads every mask once: a bad file stops here, before any training. Keeps the sizes."""
        classes, ignore = len(self.spec["classes"]), self.spec["ignore_label"]
        self._sizes = []
        for image_path, mask_path in zip(self._images, self._masks):
            if not os.path.exists(mask_path):
                raise FolderDataError(
                    f"{image_path} has no mask: expected {mask_path} (same stem, .png).")
            mask = _read_mask(mask_path)
            size = image_size(image_path)
            if mask.shape != size:
                raise FolderDataError(
                    f"{mask_path} is {mask.shape[0]}x{mask.shape[1]} but {image_path} is "
                    f"{size[0]}x{size[1]} (HxW); masks must match their images.")
            self._sizes.append(size)
            bad = (mask != ignore) & ((mask < 0) | (mask >= classes))
            if bad.any():
                raise FolderDataError(
                    f"{mask_path}: label ids {sorted(set(np.unique(mask[bad]).tolist()))[:10]} are "
                    f"neither classes [0, {classes}) nor the ignore id {ignore}; fix the mask or "
                    "the classes in classes.json.")

    def __len__(self) -> int:
        return len(self._images)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every example, known from the check: evaluation plans batches without
        decoding the split a second time."""
        return list(self._sizes)

    def __getitem__(self, index) -> dict:
        index = int(index)
        return {"image": read_image(self._images[index]),
                "label": _read_mask(self._masks[index])}
