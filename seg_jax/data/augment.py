"""Per-example augmentation for training: random scale, pad, random crop, flip, photometric jitter.

All operations act on numpy arrays of one example and take an explicit `np.random.Generator`, so
the pipeline can make every example's augmentation a pure function of (seed, step, position).
Images are resized bilinearly, label and instance maps with nearest neighbour (a label is a class
id: interpolating it would invent classes along boundaries).

`train_augment` does scale, pad and crop in one step (`scale_pad_crop`) that resamples only the
crop window instead of the whole rescaled image: on 512 x 1024 images and 512 crops at scales up
to 2 that is several times less resizing. It draws the same random numbers and samples the same
positions as `random_scale` -> `pad_to_size` -> `random_crop` (which stay as the reference, and
are tested against it); labels and instances are identical, images agree to within 2 grey levels
(PIL's fixed-point bilinear weights round differently for a sub-window).
"""

import numpy as np
from PIL import Image

from seg_jax.data import datasets

_MASK_KEYS = ("label", "instance")

# Photometric jitter terms in config.data.jitter, and the largest strength each accepts: a factor
# drawn from [1 - s, 1 + s] must stay >= 0; hue strengths go up to 0.5 (shifts of at most a quarter
# turn either way).
JITTER_TERMS = ("brightness", "contrast", "saturation", "hue")
_JITTER_MAX = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.5}

# ITU-R BT.601 luma: the grey value of contrast and saturation (also what PIL's convert('L') uses).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# RGB -> YIQ (NTSC). Y is the luma above; I and Q are the two chroma axes. Each chroma row sums to
# 0, so greys have no chroma and a hue rotation leaves them unchanged.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _resize(array: np.ndarray, height: int, width: int, resample, box=None) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((width, height), resample=resample, box=box))


def _nearest_indices(start: int, count: int, in_size: int, out_size: int) -> np.ndarray:
    """Source indices of output pixels start .. start+count-1 of a nearest resize in -> out.

    Pixel centres map to pixel centres: output i reads input floor((i + 0.5) * in / out), the
    rule of PIL's nearest resize too. Both the whole-image resize and the crop-window resize use
    this one function, so they agree exactly; PIL's fixed-point coordinates can land on the other
    neighbour at exact ties, differently for a whole image and for a sub-window.
    """
    index = np.floor((np.arange(start, start + count) + 0.5) * (in_size / out_size))
    return np.minimum(index.astype(np.intp), in_size - 1)


def _resize_mask(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    # Two 1-D gathers (whole rows, then columns): 3x faster than one 2-D fancy index.
    return np.take(np.take(mask, rows, axis=0), cols, axis=1)


def _scaled_size(height: int, width: int, rng: np.random.Generator, min_scale, max_scale):
    """(new_h, new_w) of the random rescale; draws nothing when scaling is off (1, 1)."""
    if min_scale == max_scale == 1.0:
        return height, width
    scale = rng.uniform(min_scale, max_scale)
    return max(1, round(height * scale)), max(1, round(width * scale))


def random_scale(example: dict, rng: np.random.Generator, min_scale: float, max_scale: float) -> dict:
    """Rescales image and masks by one factor drawn uniformly from [min_scale, max_scale]."""
    if min_scale == max_scale == 1.0:
        return example
    height, width = example["image"].shape[:2]
    new_h, new_w = _scaled_size(height, width, rng, min_scale, max_scale)
    out = dict(example)
    out["image"] = _resize(example["image"], new_h, new_w, Image.BILINEAR)
    rows = _nearest_indices(0, new_h, height, new_h)
    cols = _nearest_indices(0, new_w, width, new_w)
    for key in _MASK_KEYS:
        if key in example:
            out[key] = _resize_mask(example[key], rows, cols)
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


def scale_pad_crop(
    example: dict, rng: np.random.Generator, *, min_scale: float, max_scale: float,
    crop_size: int, image_fill: np.ndarray, ignore_label: int,
) -> dict:
    """`random_scale`, `pad_to_size` and a square `random_crop` in one step, resampling only the crop.

    The crop window is drawn in the coordinates of the rescaled, padded image exactly as the three
    steps draw it; only its part inside the rescaled image is resampled from the source (PIL's
    resize of a source box, which reads the source pixels around the box as a whole-image resize
    does), and the rest is padding. Handles 'image' and the masks 'label' / 'instance'.
    """
    unknown = set(example) - {"image", *_MASK_KEYS}
    if unknown:
        raise ValueError(f"scale_pad_crop: unexpected keys {sorted(unknown)} in the example.")
    image = example["image"]
    height, width = image.shape[:2]
    new_h, new_w = _scaled_size(height, width, rng, min_scale, max_scale)
    crop = crop_size
    top = int(rng.integers(0, max(new_h, crop) - crop + 1))
    left = int(rng.integers(0, max(new_w, crop) - crop + 1))
    # The part of the window inside the rescaled image: all of it unless the image is padded.
    in_h, in_w = min(crop, new_h - top), min(crop, new_w - left)

    same_size = (new_h, new_w) == (height, width)
    if same_size:
        window = {k: v[top : top + in_h, left : left + in_w] for k, v in example.items()}
    else:
        box = (left * width / new_w, top * height / new_h,
               (left + in_w) * width / new_w, (top + in_h) * height / new_h)
        window = {"image": _resize(image, in_h, in_w, Image.BILINEAR, box=box)}
        rows = _nearest_indices(top, in_h, height, new_h)
        cols = _nearest_indices(left, in_w, width, new_w)
        for key in _MASK_KEYS:
            if key in example:
                window[key] = _resize_mask(example[key], rows, cols)
    if (in_h, in_w) == (crop, crop):
        return window

    out = {}
    # The image's fill as one whole row of pixels: broadcasting a 3-vector over [crop, crop, 3]
    # makes numpy loop 3 elements at a time.
    image_row = np.tile(np.asarray(image_fill, image.dtype).reshape(-1), crop)
    fills = {"image": image_row.reshape(crop, 3), "label": ignore_label, "instance": 0}
    for key, value in window.items():
        padded = np.empty((crop, crop) + value.shape[2:], value.dtype)
        padded[...] = fills[key]
        padded[:in_h, :in_w] = value
        out[key] = padded
    return out


def _mirror(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.dtype == np.uint8 and array.shape[2] == 3:
        # A reversed view of [H, W, 3] copies 3 bytes at a time wherever it is used (stacking a
        # batch, jitter): PIL's mirror makes a contiguous copy in a third of the time of one.
        return np.asarray(Image.fromarray(array).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    return array[:, ::-1]


def random_hflip(example: dict, rng: np.random.Generator) -> dict:
    """Mirrors image and masks left-right with probability 1/2."""
    if rng.random() < 0.5:
        return {k: _mirror(v) for k, v in example.items()}
    return example


# --- Photometric jitter ----------------------------------------------------------------------
#
# Each adjustment takes and returns a float32 [..., 3] image in [0, 255] (and may change its
# argument in place). The image is clipped back to [0, 255] after each one, as image operations
# applied one after another would; that clipping is also what makes the random order matter (the
# four maps without it are affine and commute).


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
    """Multiplies every channel by `factor` (0 gives black)."""
    x *= np.float32(factor)
    return x


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Blends with the image's mean grey: factor 0 gives a uniform grey, 1 the image."""
    factor = np.float32(factor)
    # The mean of the luma image (a matrix-vector product, then a contiguous mean) rather than the
    # mean colour: numpy reduces the 3-wide axis of [N, 3] many times slower.
    mean_grey = (x @ _LUMA).mean(dtype=np.float32)
    x *= factor
    x += (1 - factor) * mean_grey
    return x


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """Blends with the pixel's own grey (luma): factor 0 gives the grey image, 1 the image."""
    factor = np.float32(factor)
    grey = x @ _LUMA
    grey *= 1 - factor
    x *= factor
    for c in range(3):  # per channel: x += grey[..., None] would loop 3 elements at a time
        x[..., c] += grey
    return x


def hue_matrix(turns: float) -> np.ndarray:
    """float32 [3, 3] M such that rgb @ M.T rotates the chroma of rgb by `turns` of a turn.

    Positive turns go the way HSV hue increases (red -> yellow -> green): in the (I, Q) plane
    that is clockwise, hence the minus sign.
    """
    angle = -2 * np.pi * turns
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
    return (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).astype(np.float32)


def adjust_hue(x: np.ndarray, turns: float) -> np.ndarray:
    """Shifts the hue by `turns` of a turn: a rotation of the chroma plane (I, Q) of YIQ.

    One 3x3 matrix per image instead of a round trip through HSV: it keeps each pixel's luma and
    chroma magnitude and leaves greys unchanged, and follows the HSV hue circle approximately
    (YIQ's chroma angles are not evenly spaced over the HSV hues). Colours rotated out of the RGB
    cube are clipped afterwards, as for the other adjustments.
    """
    # Keep x 3-D ([H, W, 3] @ [3, 3]) and the matrix contiguous: flattened to [H*W, 3], numpy hands
    # the product to BLAS, which is ~100x slower for such a thin matrix.
    return x @ np.ascontiguousarray(hue_matrix(turns).T)


_ADJUST = {"brightness": adjust_brightness, "contrast": adjust_contrast,
           "saturation": adjust_saturation, "hue": adjust_hue}


def _check_strength(name: str, value) -> float:
    strength = float(value)
    upper = _JITTER_MAX[name]
    if not 0.0 <= strength <= upper:  # also rejects NaN
        effect = ("a hue shift of up to s/2 of a turn" if name == "hue"
                  else "a factor drawn from [1 - s, 1 + s]")
        raise ValueError(
            f"config.data.jitter.{name}={value} is outside [0, {upper}]: the strength s gives "
            f"{effect}; 0 turns it off.")
    return strength


def check_jitter(data_config) -> dict[str, float]:
    """The validated jitter strengths of `data_config` ({term: s}, all 0 without a jitter block).

    Raises ValueError naming `config.data.jitter.<term>` and its allowed range for a bad strength
    or an unknown term. `TrainLoader` calls it once when built, so a bad value stops the run
    before any batch is made.
    """
    jitter = getattr(data_config, "jitter", None)
    if jitter is None:
        return dict.fromkeys(JITTER_TERMS, 0.0)
    unknown = sorted(set(jitter.keys()) - set(JITTER_TERMS))
    if unknown:
        raise ValueError(f"config.data.jitter has unknown terms {unknown}; known: {JITTER_TERMS}.")
    return {name: _check_strength(name, jitter.get(name, 0.0)) for name in JITTER_TERMS}


def jitter_ops(
    rng: np.random.Generator, brightness: float = 0.0, contrast: float = 0.0,
    saturation: float = 0.0, hue: float = 0.0,
) -> list[tuple[str, float]]:
    """Draws one jitter: `[(term, value), ...]` in the order to apply them, only terms with s > 0.

    The order is a random permutation of the four terms; then, in that order, each enabled term
    draws its value: a factor uniform in [1 - s, 1 + s] for brightness, contrast and saturation, a
    shift uniform in [-s/2, s/2] turns for hue. Draws nothing when every strength is 0.
    """
    strengths = {"brightness": brightness, "contrast": contrast,
                 "saturation": saturation, "hue": hue}
    strengths = {name: _check_strength(name, value) for name, value in strengths.items()}
    if not any(strengths.values()):
        return []
    ops = []
    for i in rng.permutation(len(JITTER_TERMS)):
        name = JITTER_TERMS[i]
        s = strengths[name]
        if s > 0:
            low, high = (-s / 2, s / 2) if name == "hue" else (1 - s, 1 + s)
            ops.append((name, float(rng.uniform(low, high))))
    return ops


def apply_jitter(image: np.ndarray, ops: list[tuple[str, float]]) -> np.ndarray:
    """Applies `jitter_ops`' list to a uint8 [H, W, 3] image; uint8 out (rounded, clipped)."""
    if not ops:
        return image
    x = image.astype(np.float32)
    for name, value in ops:
        x = _ADJUST[name](x, value)
        # Blends and scalings by a factor <= 1 stay inside [0, 255]: skip their clip.
        if name == "hue" or value > 1:
            np.clip(x, 0, 255, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


def photometric_jitter(
    image: np.ndarray, rng: np.random.Generator, brightness: float = 0.0, contrast: float = 0.0,
    saturation: float = 0.0, hue: float = 0.0,
) -> np.ndarray:
    """Random brightness, contrast, saturation and hue (in random order) of a uint8 [H, W, 3] image.

    Deterministic given `rng`. Strengths as `config.data.jitter` (see `jitter_ops`); all 0 returns
    the image itself and draws nothing. The result is uint8, rounded and clipped.
    """
    return apply_jitter(image, jitter_ops(rng, brightness, contrast, saturation, hue))


def train_augment(example: dict, rng: np.random.Generator, data_config) -> dict:
    """The training recipe of DeepLab: scale, pad with ignore_label, crop, flip, then jitter.

    Jitter comes last so that it works on the crop only (the cheapest place), and only when some
    strength in config.data.jitter is > 0 (so configs without jitter draw the same numbers as
    before it existed).
    """
    fill = np.round(np.asarray(data_config.mean) * 255).astype(np.uint8)
    example = scale_pad_crop(
        example, rng, min_scale=data_config.min_scale, max_scale=data_config.max_scale,
        crop_size=data_config.crop_size, image_fill=fill,
        ignore_label=datasets.void_label(data_config))
    if data_config.hflip:
        example = random_hflip(example, rng)
    strengths = check_jitter(data_config)
    if any(strengths.values()):
        example = dict(example, image=photometric_jitter(example["image"], rng, **strengths))
    return example


def normalize_image(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 [..., 3] -> float32 ((x / 255) - mean) / std.

    The same float32 operations in the same order as that expression (so bit-identical results),
    but in place on one copy, and on rows of W * 3 values against mean and std tiled W times:
    broadcasting a 3-vector over [..., 3] makes numpy loop 3 elements at a time, ~4x slower.
    """
    out = image.astype(np.float32)
    width = out.shape[-2] if out.ndim >= 2 and out.shape[-2] > 0 else 1
    rows = out.reshape(-1, width * 3)  # a view: `out` is a fresh contiguous array
    rows *= 1.0 / 255.0
    rows -= np.tile(np.broadcast_to(np.asarray(mean, np.float32), (3,)), width)
    rows /= np.tile(np.broadcast_to(np.asarray(std, np.float32), (3,)), width)
    return out
