"""ADE20K SceneParsing from its release folder (ADEChallengeData2016): `config.data.name = "ade20k"`.

The benchmark's 150-class semantic maps (tfds' `scene_parse150` holds only the 100 instance
categories, see `tfds_sources`). Layout under `config.data.root`, as ADEChallengeData2016.zip
unpacks (http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip):

    images/training/*.jpg, images/validation/*.jpg          20,210 and 2,000 images
    annotations/training/*.png, annotations/validation/*.png grey PNGs, same stems

Annotation value 0 is "other objects" (not evaluated) -> `ignore_label`; values 1..150 are the
classes -> ids 0..149 (the convention of the benchmark's own scoring and of mmsegmentation's
`reduce_zero_label`). A value above 150 is an error naming the file. Split 'train' is training,
'validation' is validation, each sliceable like tfds ('validation[:16]'), or a subset listed in
`<root>/splits/<split>.txt` (the folder dataset's rule).
"""

import os

import numpy as np
from PIL import Image

from seg_jax.data import datasets, folder, tfds_sources

SPLITS = {"train": "training", "validation": "validation"}
NUM_CLASSES = len(tfds_sources.ADE20K_CLASS_NAMES)
_DOWNLOAD = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"


class ADE20KSource:
    """Random access to one split of ADEChallengeData2016, labels mapped to 0..149 / ignore."""

    def __init__(self, root: str, split: str, ignore_label: int):
        name = split.split("[", 1)[0]
        if name not in SPLITS:
            raise ValueError(f"ADE20K split {split!r}: use one of {sorted(SPLITS)}, optionally "
                             "sliced, e.g. 'validation[:16]'.")
        image_dir = os.path.join(root, "images", SPLITS[name])
        label_dir = os.path.join(root, "annotations", SPLITS[name])
        for path in (image_dir, label_dir):
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"No folder {path}: config.data.root must hold ADEChallengeData2016 "
                    f"(images/ and annotations/), unzipped from {_DOWNLOAD}.")
        stems = sorted(os.path.splitext(n)[0] for n in os.listdir(image_dir)
                       if n.lower().endswith(".jpg"))
        labels = set(os.listdir(label_dir))
        missing = [s for s in stems if f"{s}.png" not in labels]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) in {image_dir} have no annotation in {label_dir}, "
                f"e.g. {missing[0]}.png; re-extract the release.")
        self._stems = folder._split_stems(root, split, stems)
        self._image_dir, self._label_dir = image_dir, label_dir
        # 0 -> ignore, k -> k - 1, anything above 150 invalid.
        self._table = np.full(256, tfds_sources.INVALID, np.int32)
        self._table[0] = ignore_label
        self._table[1:NUM_CLASSES + 1] = np.arange(NUM_CLASSES)

    def __len__(self) -> int:
        return len(self._stems)

    def __getitem__(self, index) -> dict:
        stem = self._stems[int(index)]
        with Image.open(os.path.join(self._image_dir, f"{stem}.jpg")) as image:
            pixels = np.asarray(image.convert("RGB"))
        path = os.path.join(self._label_dir, f"{stem}.png")
        with Image.open(path) as annotation:
            values = np.asarray(annotation)
        if values.ndim != 2 or values.dtype != np.uint8:
            raise ValueError(f"{path}: expected a grey 8-bit annotation, got {values.dtype} "
                             f"{values.shape}.")
        label = self._table[values]
        if (label == tfds_sources.INVALID).any():
            bad = sorted(set(values[label == tfds_sources.INVALID].tolist()))[:5]
            raise ValueError(f"{path}: values {bad} are not ADE20K classes (0 = other, 1..150).")
        if label.shape != pixels.shape[:2]:
            raise ValueError(f"{path} is {label.shape} but its image is {pixels.shape[:2]}.")
        return {"image": pixels, "label": label}


def ade20k(data_config, split):
    if not data_config.root:
        raise ValueError("config.data.name='ade20k' needs --config.data.root=<the unzipped "
                         f"ADEChallengeData2016 folder> ({_DOWNLOAD}).")
    ignore = datasets.void_label(data_config)
    if 0 <= ignore < NUM_CLASSES:
        raise ValueError(f"config.data.ignore_label={ignore} is an ADE20K class id; use 255.")
    source = ADE20KSource(data_config.root, split, ignore)
    info = datasets.DatasetInfo.with_things(
        "ade20k", tfds_sources.ADE20K_CLASS_NAMES, ignore, tfds_sources.ADE20K_THINGS,
        palette=folder.voc_palette(NUM_CLASSES))
    return source, info
