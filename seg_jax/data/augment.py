"""Per-example augmentation for training: random scale, pad, random crop, horizontal flip.

All operations act on numpy arrays of one example and take an explicit `np.random.Generator`, so
the pipeline can make every example's augmentation a pure function of (seed, step, position).
Images are resized bilinearly, label and instance maps with nearest neighbour (a label is a class
id: interpolating it would invent classes along boundaries).
"""

import numpy as np
from PIL import Image

_MASK_KEYS = ("label", "instance")


def _resize(array: np.ndarray, height: int, width: int, resample) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((width, height), resample=resample))


def random_scale(example: dict, rng: np.random.Generator, min_scale: float, max_scale: float) -> dict:
    """Rescales image and masks by one factor drawn uniformly from [min_scale, max_scale]."""
    if min_scale == max_scale == 1.0:
        return example
    scale = rng.uniform(min_scale, max_scale)
    height, width = example["image"].shape[:2]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    out = dict(example)
    out["image"] = _resize(example["image"], new_h, new_w, Image.BILINEAR)
    for key in _MASK_KEYS:
        if key in example:
            # PIL's nearest resize needs a 2-D array of a mode it knows: int32 ('I') covers all ids.
            mask = example[key].astype(np.int32)
            out[key] = _resize(mask, new_h, new_w, Image.NEAREST).astype(example[key].dtype)
    return out


def pad_to_size(
    example: dict, height: int, width: int, *, image_fill: np.ndarray, ignore_label: int
) -> dict:
    """Pads bottom/right up to (height, width): image with `image_fill`, label with ignore_label.

    Instance maps are padded with 0 ("no instance"). Arrays already large enough are unchanged.
    """
    h, w = example["image"].shape[:2]
    pad_h, pad_w = max(0, height - h), max(0, width - w)
    if pad_h == 0 and pad_w == 0:
        return example
    out = dict(example)
    image = np.empty((h + pad_h, w + pad_w, 3), example["image"].dtype)
    image[...] = image_fill
    image[:h, :w] = example["image"]
    out["image"] = image
    fills = {"label": ignore_label, "instance": 0}
    for key in _MASK_KEYS:
        if key in example:
            out[key] = np.pad(
                example[key], ((0, pad_h), (0, pad_w)), constant_values=fills[key]
            )
    return out


def random_crop(example: dict, rng: np.random.Generator, height: int, width: int) -> dict:
    """Crops a random (height, width) window; the example must be at least that large."""
    h, w = example["image"].shape[:2]
    top = int(rng.integers(0, h - height + 1))
    left = int(rng.integers(0, w - width + 1))
    return {k: v[top : top + height, left : left + width] for k, v in example.items()}


def random_hflip(example: dict, rng: np.random.Generator) -> dict:
    """Mirrors image and masks left-right with probability 1/2."""
    if rng.random() < 0.5:
        return {k: v[:, ::-1] for k, v in example.items()}
    return example


def train_augment(example: dict, rng: np.random.Generator, data_config) -> dict:
    """The training recipe of DeepLab: scale, pad with ignore_label, crop, flip (per config)."""
    crop = data_config.crop_size
    example = random_scale(example, rng, data_config.min_scale, data_config.max_scale)
    fill = np.round(np.asarray(data_config.mean) * 255).astype(np.uint8)
    example = pad_to_size(example, crop, crop, image_fill=fill, ignore_label=data_config.ignore_label)
    example = random_crop(example, rng, crop, crop)
    if data_config.hflip:
        example = random_hflip(example, rng)
    return example


def normalize_image(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 [..., 3] -> float32 ((x / 255) - mean) / std."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return (image.astype(np.float32) * (1.0 / 255.0) - mean) / std
