"""Procedural renderer for the built-in `digits` segmentation dataset.

Pure numpy and independent of tfds (like `shapes_render`), so notebooks and
tests can render scenes directly. One scene is a textured background with a
few real handwritten digits composed on top:

- stuff: `background`, a random base colour with smooth colour noise and, in
  half of the scenes, faint oriented stripes.
- things: `digit_0` ... `digit_9`. Each digit is one of scikit-learn's 1,797
  8x8 handwritten digits (`sklearn.datasets.load_digits`, bundled with the
  package, so nothing is downloaded), upsampled bilinearly to a random size
  under a random small rotation, shear and aspect change, thresholded at a
  random level (stroke width varies) and painted in a flat, mildly shaded
  colour. Background and digit colours are drawn from the same distributions
  whatever the class, so only the stroke shape tells the classes apart; that
  makes this a harder task than `shapes`, where the stuff textures and the
  silhouettes are simple.

Train and validation scenes draw their digits from disjoint pools of source
images (`pool_indices`), so validation measures generalisation to handwriting
never seen in training, not memorisation of 1,797 bitmaps.

Rasterisation is exact (no anti-aliasing): every pixel of the image was
painted by exactly the class that the label map reports for it. Digits that
later digits hide too much of are removed from the scene altogether (never
painted), so no pixel shows a digit that the labels do not contain.
"""

import functools
import math

import numpy as np

from seg_jax.data import scene_render

CLASS_NAMES = ("background",) + tuple(f"digit_{d}" for d in range(10))
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND = 0
STUFF_CLASSES = (BACKGROUND,)
THING_CLASSES = tuple(range(1, NUM_CLASSES))


def digit_class(digit: int) -> int:
    """The class id of the handwritten digit `digit` (0-9): digit + 1."""
    return int(digit) + 1


# Colours for visualising label maps, one row per class id. Unrelated to the
# colours used when rendering images (those are random per scene and digit).
PALETTE = np.array(
    [
        [40, 40, 40],  # background: near black
        [230, 25, 75],  # digit_0: red
        [60, 180, 75],  # digit_1: green
        [255, 225, 25],  # digit_2: yellow
        [0, 130, 200],  # digit_3: blue
        [245, 130, 48],  # digit_4: orange
        [145, 30, 180],  # digit_5: purple
        [70, 240, 240],  # digit_6: cyan
        [240, 50, 230],  # digit_7: magenta
        [170, 110, 40],  # digit_8: brown
        [250, 190, 212],  # digit_9: pink
    ],
    dtype=np.uint8,
)

# Digits per scene: uniform on [MIN_DIGITS, MAX_DIGITS] attempts; a digit that
# finds no room, or ends up mostly hidden, is dropped.
MIN_DIGITS, MAX_DIGITS = 2, 6

# A visible instance keeps at least this many pixels and this fraction of its
# unoccluded area; otherwise it is removed from the scene. Below half, a digit
# can look like another (a half-hidden 8 reads as a 3 or a 0) and its label
# would be noise.
MIN_VISIBLE_PIXELS = 12
MIN_VISIBLE_FRACTION = 0.5

# Source pools: per digit class, a fixed permutation of scikit-learn's images
# puts the first TRAIN_FRACTION into the train pool and the rest into the
# validation pool (stratified, so both pools hold every digit in proportion).
# Never change POOL_SEED: it decides which handwriting validation may contain.
POOL_SEED = 20240601
TRAIN_FRACTION = 0.8
POOL_SPLITS = ("train", "validation")

# Geometry in pixels at the reference size of 96; scaled with image_size.
_REF_SIZE = 96.0
# Digit height (the 8 source rows) in pixels. Below ~20 px a stroke of the
# 8x8 source is under 3 px wide, which an output-stride-8 network blurs away.
_DIGIT_HEIGHT = (22.0, 38.0)
_ASPECT = (0.85, 1.15)  # width scale relative to height scale
_MAX_ROTATION = 0.25  # radians, about 14 degrees: a 6 never passes for a 9
_MAX_SHEAR = 0.25  # horizontal shift per row: an italic slant
# Thresholds on source intensity in [0, 1]: a low one gives thick strokes.
_THRESHOLD = (0.4, 0.6)
# Centres of two digits are at least this fraction of the sum of their half
# heights apart, which keeps most overlaps partial.
_MIN_CENTRE_SEPARATION = 0.75
# Minimum RGB distance between a digit's colour and the background base
# colour, so that no digit is camouflaged (the background varies by up to
# about +-40 per channel around its base).
_MIN_COLOUR_CONTRAST = 110.0


@functools.lru_cache(maxsize=1)
def _source_digits():
    """scikit-learn's digits: (images float32 [1797, 8, 8] in [0, 1], digits int [1797])."""
    # Imported here so that importing this module (e.g. for CLASS_NAMES) does
    # not pay for scikit-learn.
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (np.asarray(data.images, np.float32) / 16.0).astype(np.float32)
    return images, np.asarray(data.target, np.int64)


@functools.lru_cache(maxsize=None)
def pool_indices(split: str) -> np.ndarray:
    """Indices into `load_digits()` of the source images that `split` draws from.

    Disjoint between 'train' and 'validation', together all 1,797 images;
    sorted, int64. Read-only (cached).
    """
    if split not in POOL_SPLITS:
        raise ValueError(f"Unknown split {split!r}; digit pools: {POOL_SPLITS}.")
    _, digits = _source_digits()
    rng = np.random.default_rng(POOL_SEED)
    pools = {name: [] for name in POOL_SPLITS}
    for d in range(10):
        members = rng.permutation(np.flatnonzero(digits == d))
        n_train = int(round(TRAIN_FRACTION * len(members)))
        pools["train"].append(members[:n_train])
        pools["validation"].append(members[n_train:])
    out = np.sort(np.concatenate(pools[split])).astype(np.int64)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=None)
def _pool_by_digit(split):
    """For each digit 0-9, the indices into `load_digits()` of its pool members."""
    _, digits = _source_digits()
    idx = pool_indices(split)
    return tuple(idx[digits[idx] == d] for d in range(10))


def render_example(
    rng: np.random.Generator, split: str = "train", image_size: int = 96
) -> dict:
    """Renders one scene.

    Args:
      rng: source of all randomness; the same generator state (and split)
        gives the same scene.
      split: 'train' or 'validation': which pool of source digits to use.
      image_size: height and width H = W of the square image.

    Returns:
      A dict with
        'image': uint8 [H, W, 3],
        'semantic': uint8 [H, W], 0 background and 1 + d for digit d,
        'instance': int32 [H, W], 0 on background pixels and 1..K on the K
          visible digits, numbered in drawing order. A pixel belongs to the
          topmost (last drawn) digit covering it.
    """
    size = int(image_size)
    scale = size / _REF_SIZE
    images, _ = _source_digits()
    by_digit = _pool_by_digit(split)

    bg_colour = rng.uniform(30.0, 225.0, size=3)
    background = _background(rng, size, scale)  # float32 [H, W, 3] offsets

    # Draw all digits first; each keeps its mask in its own bounding box.
    layers = []  # dicts: box (y0, y1, x0, x1), mask, cls, colour, shade
    placed = []  # (cy, cx, half height) of the digits drawn so far
    for _ in range(rng.integers(MIN_DIGITS, MAX_DIGITS + 1)):
        digit = int(rng.integers(10))
        source = images[by_digit[digit][rng.integers(len(by_digit[digit]))]]
        transform, half_extent, half_height = _sample_transform(rng, scale)
        centre = _place(rng, half_extent, half_height, placed, size)
        if centre is None:
            continue  # no room left without heavy occlusion
        threshold = rng.uniform(*_THRESHOLD)
        box, mask = _digit_mask(source, transform, centre, half_extent,
                                threshold, size)
        colour = _digit_colour(rng, bg_colour)
        theta = rng.uniform(0.0, 2.0 * np.pi)
        slope = rng.uniform(0.0, 0.8)
        a, b = slope * math.sin(theta), slope * math.cos(theta)
        if not mask.any():
            continue
        placed.append((centre[0], centre[1], half_height))
        layers.append(dict(box=box, mask=mask, cls=digit_class(digit),
                           colour=colour,
                           shade=(a, b, -a * centre[0] - b * centre[1])))

    # Ids 1..K in drawing order, each visible (so no renumbering is needed).
    instance = _visible_layers(layers, size)

    # Compose the image once from per-region tables: region 0 is the
    # background, region k digit layer k.
    ys, xs = np.meshgrid(
        np.arange(size, dtype=np.float32) + 0.5,
        np.arange(size, dtype=np.float32) + 0.5,
        indexing="ij",
    )
    colour = np.asarray([bg_colour] + [l["colour"] for l in layers], np.float32)
    a, b, c = np.asarray(
        [(0.0, 0.0, 0.0)] + [l["shade"] for l in layers], np.float32
    ).T
    is_digit = instance > 0
    offset = np.where(
        is_digit[..., None],
        (np.take(a, instance) * ys + np.take(b, instance) * xs
         + np.take(c, instance))[..., None],
        background,
    )
    image = np.take(colour, instance, axis=0) + offset
    sigma = rng.uniform(3.0, 10.0)
    image += sigma * rng.standard_normal(image.shape, dtype=np.float32)

    cls_of_layer = np.asarray([BACKGROUND] + [l["cls"] for l in layers],
                              np.uint8)
    return {
        "image": np.clip(np.rint(image), 0, 255).astype(np.uint8),
        "semantic": np.take(cls_of_layer, instance),
        "instance": instance,
    }


def _background(rng, size, scale):
    """Colour offsets of the background from its base colour, float32 [H, W, 3].

    Independent smooth noise per channel (so the hue drifts across the scene)
    plus, in half of the scenes, faint stripes: enough texture that "flat
    region" does not mean "background", none of it related to the digits.
    """
    cells = int(rng.integers(2, 7))
    amplitude = rng.uniform(10.0, 30.0, size=3).astype(np.float32)
    noise = np.stack([scene_render.smooth_noise(rng, size, cells) for _ in range(3)], -1)
    out = amplitude * noise
    if rng.random() < 0.5:
        ys, xs = np.meshgrid(np.arange(size, dtype=np.float32),
                             np.arange(size, dtype=np.float32), indexing="ij")
        theta = rng.uniform(0.0, np.pi)
        period = rng.uniform(6.0, 16.0) * scale
        phase = math.cos(theta) * xs + math.sin(theta) * ys
        stripes = rng.uniform(5.0, 15.0) * np.sin(
            2.0 * np.pi * phase / period + rng.uniform(0.0, 2.0 * np.pi))
        out = out + stripes[..., None]
    return out.astype(np.float32)


def _sample_transform(rng, scale):
    """A random source-to-image map of one digit.

    Returns:
      (transform, half_extent, half_height): transform is the float [2, 2]
      matrix taking offsets from the source centre, in source cells (y, x),
      to image pixel offsets (y, x); half_extent = (hy, hx) bounds the
      transformed 8x8 source square; half_height is half the digit's height
      before rotation, its size for spacing.
    """
    height = rng.uniform(*_DIGIT_HEIGHT) * scale
    sy = height / 8.0
    sx = sy * rng.uniform(*_ASPECT)
    shear = rng.uniform(-_MAX_SHEAR, _MAX_SHEAR)
    theta = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
    c, s = math.cos(theta), math.sin(theta)
    rotate = np.array([[c, -s], [s, c]])
    # Shear: a row below the centre moves right by shear * its offset.
    transform = rotate @ np.array([[1.0, 0.0], [shear, 1.0]]) @ np.diag([sy, sx])
    corners = np.array([[-4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [4.0, 4.0]])
    half_extent = np.abs(corners @ transform.T).max(axis=0)
    return transform, (float(half_extent[0]), float(half_extent[1])), height / 2


def _place(rng, half_extent, half_height, placed, size, tries=32):
    """Samples a centre (cy, cx) inside the image and away from earlier digits.

    The 8x8 source square may reach past the border by a little (its outer
    cells are mostly empty), never the digit's core. Returns None when none
    of `tries` candidates is far enough from the digits already placed.
    """
    lo = 0.8 * np.asarray(half_extent)
    return scene_render.sample_centre(rng, lo, size - lo, half_height, placed,
                                      min_separation=_MIN_CENTRE_SEPARATION, tries=tries)


def _digit_mask(source, transform, centre, half_extent, threshold, size):
    """Rasterises one digit: its box (y0, y1, x0, x1) and bool mask in it.

    Each pixel centre in the box is mapped back into the 8x8 source by the
    inverse transform and the source is sampled bilinearly (zero outside),
    then thresholded.
    """
    cy, cx = centre
    hy, hx = half_extent
    y0, y1 = max(0, int(cy - hy)), min(size, int(math.ceil(cy + hy)))
    x0, x1 = max(0, int(cx - hx)), min(size, int(math.ceil(cx + hx)))
    py = np.arange(y0, y1, dtype=np.float64) + 0.5 - cy
    px = np.arange(x0, x1, dtype=np.float64) + 0.5 - cx
    offsets = np.stack(np.meshgrid(py, px, indexing="ij"), -1)  # [h, w, 2]
    src = offsets @ np.linalg.inv(transform).T  # source cells from the centre
    # Source cell i has its centre at i + 0.5 - 4 from the digit centre; in
    # the zero-padded 10x10 source below, at index i + 1.
    padded = np.pad(source, 1)
    f = np.clip(src + 4.0 + 0.5, 0.0, 9.0)  # fractional padded index
    i = np.minimum(np.floor(f).astype(np.int64), 8)
    w = f - i
    iy, ix, wy, wx = i[..., 0], i[..., 1], w[..., 0], w[..., 1]
    value = (
        (1 - wy) * (1 - wx) * padded[iy, ix]
        + (1 - wy) * wx * padded[iy, ix + 1]
        + wy * (1 - wx) * padded[iy + 1, ix]
        + wy * wx * padded[iy + 1, ix + 1]
    )
    return (y0, y1, x0, x1), value >= threshold


def _paint(layers, size):
    """Instance map int32 [H, W]: the topmost layer k + 1 covering each pixel."""
    instance = np.zeros((size, size), dtype=np.int32)
    for k, layer in enumerate(layers):
        y0, y1, x0, x1 = layer["box"]
        window = instance[y0:y1, x0:x1]
        window[layer["mask"]] = k + 1
    return instance


def _visible_layers(layers, size):
    """Removes mostly hidden layers from `layers` (in place); the final instance map.

    A layer is kept when it shows at least MIN_VISIBLE_PIXELS pixels and
    MIN_VISIBLE_FRACTION of its own mask. Removing a layer only uncovers the
    others, so dropping the worst offender and repainting until none is left
    keeps as many digits as this greedy order allows.
    """
    while True:
        instance = _paint(layers, size)
        if not layers:
            return instance
        visible = np.bincount(instance.ravel(), minlength=len(layers) + 1)[1:]
        area = np.array([l["mask"].sum() for l in layers])
        fraction = visible / np.maximum(area, 1)
        bad = (visible < MIN_VISIBLE_PIXELS) | (fraction < MIN_VISIBLE_FRACTION)
        if not bad.any():
            return instance
        del layers[int(np.argmin(np.where(bad, fraction, np.inf)))]


def _digit_colour(rng, bg_colour, tries=16):
    """A uniform random RGB colour, float [3], contrasting with the background."""
    cand = rng.uniform(0.0, 255.0, size=(tries, 3))
    dist = np.linalg.norm(cand - bg_colour, axis=1)
    ok = dist >= _MIN_COLOUR_CONTRAST
    # Fall back to the most contrasting candidate if none passes.
    return cand[np.argmax(ok)] if ok.any() else cand[np.argmax(dist)]

