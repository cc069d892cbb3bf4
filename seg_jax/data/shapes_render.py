"""Procedural renderer for the built-in `shapes` segmentation dataset.

Pure numpy and independent of tfds, so notebooks and tests can render examples
directly. One example is a textured sky/ground scene with a few flat-coloured
objects drawn on top:

- stuff: `sky` (above a random wavy horizon: smooth vertical gradient plus
  low-frequency noise) and `ground` (below it: oriented stripes plus speckle).
  Both base colours are drawn from the same distribution, so only texture and
  position tell them apart.
- things: `disc`, `square` (rotated), `triangle`, `ring` and `bar` (a thin
  rotated rectangle, the rare class). Object colours are drawn independently
  of the class, so only shape tells the classes apart.

Rasterisation is exact (no anti-aliasing): every pixel of the image was painted
by exactly the class that the label map reports for it.
"""

import math

import numpy as np

from seg_jax.data import scene_render

CLASS_NAMES = ("sky", "ground", "disc", "square", "triangle", "ring", "bar")
NUM_CLASSES = len(CLASS_NAMES)
SKY, GROUND, DISC, SQUARE, TRIANGLE, RING, BAR = range(NUM_CLASSES)
STUFF_CLASSES = (SKY, GROUND)
THING_CLASSES = (DISC, SQUARE, TRIANGLE, RING, BAR)

# Colours for visualising label maps, one row per class id. Unrelated to the
# colours used when rendering images (those are random per image).
PALETTE = np.array(
    [
        [110, 170, 235],  # sky: light blue
        [140, 100, 60],  # ground: brown
        [230, 50, 50],  # disc: red
        [50, 180, 70],  # square: green
        [245, 200, 30],  # triangle: yellow
        [160, 60, 200],  # ring: purple
        [20, 220, 220],  # bar: cyan
    ],
    dtype=np.uint8,
)

# Probability that an object is of each thing class (same order as
# THING_CLASSES). Deliberately imbalanced; `bar` is both rare and thin.
THING_PROBS = np.array([0.28, 0.24, 0.22, 0.16, 0.10])

# Objects per image: uniform on [MIN_OBJECTS, MAX_OBJECTS].
MIN_OBJECTS, MAX_OBJECTS = 2, 6

# Geometry in pixels at the reference size of 128; scaled with image_size.
# Sized for learnability: a DeepLabV3 at output stride 8 blurs boundaries by a
# pixel or two, and with smaller shapes (disc radius from 9, bars 6 px thick)
# that alone kept validation mIoU near 0.80 after a CPU-sized training run;
# these sizes reach about 0.85 (docs/shapes_dataset.md).
_REF_SIZE = 128.0
_DISC_RADIUS = (13.0, 25.0)
_SQUARE_HALF_SIDE = (12.0, 21.0)
_TRIANGLE_RADIUS = (17.0, 28.0)  # circumradius
_RING_RADIUS = (16.0, 25.0)  # outer radius
_RING_THICKNESS = (7.0, 11.0)
_RING_MIN_HOLE = 8.0  # inner radius never smaller than this
_BAR_LENGTH = (34.0, 60.0)
_BAR_THICKNESS = (9.0, 12.0)

# Two object centres must be at least this fraction of the sum of their
# bounding radii apart, which limits occlusion to partial overlaps.
_MIN_CENTRE_SEPARATION = 0.65
# A shape's centre stays this fraction of its bounding radius inside the image,
# so that the border never clips it to a sliver.
_BORDER_MARGIN = 0.8
# Minimum RGB distance between an object's colour and both stuff base colours,
# so that no object is camouflaged against the background.
_MIN_COLOUR_CONTRAST = 90.0


def render_example(rng: np.random.Generator, image_size: int = 128,
                   thing_probs: np.ndarray = THING_PROBS) -> dict:
    """Renders one example.

    Args:
      rng: source of all randomness; the same generator state gives the same
        example.
      image_size: height and width H = W of the square image.
      thing_probs: probability that an object is of each thing class (the
        order of THING_CLASSES); `shapes_rare` makes `bar` rarer with it.

    Returns:
      A dict with
        'image': uint8 [H, W, 3],
        'semantic': uint8 [H, W], class ids in [0, NUM_CLASSES),
        'instance': int32 [H, W], 0 on stuff pixels and 1..K on the K visible
          object instances, numbered in drawing order. A pixel belongs to the
          topmost (last drawn) object covering it.
    """
    size = int(image_size)
    scale = size / _REF_SIZE
    # Pixel-centre coordinates, float32 [H, W].
    ys, xs = np.meshgrid(
        np.arange(size, dtype=np.float32) + 0.5,
        np.arange(size, dtype=np.float32) + 0.5,
        indexing="ij",
    )

    sky_colour = rng.uniform(40.0, 220.0, size=3)
    ground_colour = rng.uniform(40.0, 220.0, size=3)
    is_sky = ys < _horizon(rng, xs[0], size)[None, :]
    # Brightness offset of every pixel from its region's base colour, [H, W].
    offset = np.where(
        is_sky,
        _sky_texture(rng, ys, size),
        _ground_texture(rng, ys, xs, size),
    )

    # Objects are painted into the instance map only (cheap int writes); the
    # image is composed once at the end from per-region lookup tables.
    # Region r: 0 sky, 1 ground, 1 + k object k. Tables are indexed by r.
    region_class = [SKY, GROUND]
    region_colour = [sky_colour, ground_colour]
    region_shade = [(0.0, 0.0, 0.0), (0.0, 0.0, 0.0)]  # offset = a*y + b*x + c
    instance = np.zeros((size, size), dtype=np.int32)
    placed = []  # (cy, cx, bounding radius) of the objects drawn so far
    for _ in range(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)):
        cls = THING_CLASSES[rng.choice(len(THING_CLASSES), p=thing_probs)]
        mask_fn, radius = _sample_shape(rng, cls, scale)
        centre = _place(rng, radius, placed, size)
        if centre is None:
            continue  # no room left without heavy occlusion
        placed.append((centre[0], centre[1], radius))
        instance = np.where(
            mask_fn(ys - centre[0], xs - centre[1]), len(placed), instance
        )
        region_class.append(cls)
        region_colour.append(_object_colour(rng, sky_colour, ground_colour))
        # A mild linear shading keeps objects from being perfectly flat.
        theta = rng.uniform(0.0, 2.0 * np.pi)
        slope = rng.uniform(0.0, 0.6)
        a, b = slope * math.sin(theta), slope * math.cos(theta)
        region_shade.append((a, b, -a * centre[0] - b * centre[1]))

    is_thing = instance > 0
    region = np.where(is_thing, instance + 1, np.where(is_sky, 0, 1))
    # np.take is several times faster than fancy indexing for these gathers.
    a, b, c = np.asarray(region_shade, dtype=np.float32).T
    offset = np.where(
        is_thing,
        np.take(a, region) * ys + np.take(b, region) * xs + np.take(c, region),
        offset,
    )
    image = np.take(np.asarray(region_colour, np.float32), region, axis=0)
    image += offset[..., None]
    sigma = rng.uniform(4.0, 12.0)
    image += sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return {
        "image": np.clip(np.rint(image), 0, 255).astype(np.uint8),
        "semantic": np.take(np.asarray(region_class, np.uint8), region),
        "instance": _renumber(instance, len(placed)),
    }


def _horizon(rng, x, size):
    """Row of the sky/ground boundary for each column x, float [W]."""
    base = rng.uniform(0.35, 0.6) * size
    h = np.full_like(x, base)
    for _ in range(2):  # sum of two sinusoids gives a wavy, non-periodic line
        amp = rng.uniform(0.01, 0.06) * size
        freq = rng.uniform(0.5, 2.5) * 2.0 * np.pi / size
        h = h + amp * np.sin(freq * x + rng.uniform(0.0, 2.0 * np.pi))
    return h


def _sky_texture(rng, ys, size):
    """Smooth vertical gradient plus low-frequency noise, float32 [H, W]."""
    # Brighter towards the horizon, as in real skies.
    gradient = rng.uniform(20.0, 50.0) * (ys / size - 0.5)
    noise = rng.uniform(8.0, 16.0) * scene_render.smooth_noise(rng, size, cells=4)
    return (gradient + noise).astype(np.float32)


def _ground_texture(rng, ys, xs, size):
    """Oriented sinusoidal stripes plus sparse speckle, float32 [H, W]."""
    theta = rng.uniform(0.0, np.pi)
    period = rng.uniform(5.0, 10.0) * size / _REF_SIZE
    phase = math.cos(theta) * xs + math.sin(theta) * ys
    stripes = rng.uniform(20.0, 35.0) * np.sin(
        2.0 * np.pi * phase / period + rng.uniform(0.0, 2.0 * np.pi)
    )
    # 12% of pixels get a uniform offset in [-60, 60]; given u < 0.12, u / 0.12
    # is itself uniform on [0, 1), so a single draw gives both.
    u = rng.random(ys.shape, dtype=np.float32) / np.float32(0.12)
    speckle = np.where(u < 1.0, 120.0 * u - 60.0, 0.0)
    return (stripes + speckle).astype(np.float32)


def _sample_shape(rng, cls, scale):
    """Samples a shape of class `cls`.

    Returns:
      (mask_fn, radius): mask_fn(dy, dx) maps offsets from the centre, float
      [H, W] each, to a bool [H, W] mask; radius bounds the shape's extent.
    """
    if cls == DISC:
        r = rng.uniform(*_DISC_RADIUS) * scale
        return (lambda dy, dx: dy * dy + dx * dx <= r * r), r
    if cls == RING:
        r = rng.uniform(*_RING_RADIUS) * scale
        t_max = min(_RING_THICKNESS[1] * scale, r - _RING_MIN_HOLE * scale)
        inner = r - rng.uniform(_RING_THICKNESS[0] * scale, t_max)

        def ring(dy, dx):
            d2 = dy * dy + dx * dx
            return (d2 <= r * r) & (d2 > inner * inner)

        return ring, r
    if cls == SQUARE:
        half = rng.uniform(*_SQUARE_HALF_SIDE) * scale
        return _rectangle(rng, half, half), half * math.sqrt(2.0)
    if cls == BAR:
        half_len = 0.5 * rng.uniform(*_BAR_LENGTH) * scale
        half_thick = 0.5 * rng.uniform(*_BAR_THICKNESS) * scale
        return _rectangle(rng, half_len, half_thick), half_len
    if cls == TRIANGLE:
        r = rng.uniform(*_TRIANGLE_RADIUS) * scale
        # Vertex angles of an equilateral triangle, jittered for variety;
        # the jitter is small enough to keep them in counter-clockwise order.
        angles = (
            rng.uniform(0.0, 2.0 * np.pi)
            + np.arange(3) * 2.0 * np.pi / 3.0
            + rng.uniform(-0.25, 0.25, size=3)
        )
        return _convex_polygon(r * np.sin(angles), r * np.cos(angles)), r
    raise ValueError(f"not a thing class: {cls}")


def _rectangle(rng, half_u, half_v):
    """Mask function of a randomly rotated rectangle centred at the origin."""
    theta = rng.uniform(0.0, np.pi)
    c, s = math.cos(theta), math.sin(theta)

    def rect(dy, dx):
        return (np.abs(c * dx + s * dy) <= half_u) & (
            np.abs(-s * dx + c * dy) <= half_v
        )

    return rect


def _convex_polygon(vy, vx):
    """Mask function of a convex polygon with counter-clockwise vertices.

    Counter-clockwise is in (x, y) with y pointing down the image. A point is
    inside when it lies on the inner side of every edge (half-plane tests).
    """

    # Python floats keep the float32 coordinate grids from promoting.
    vy, vx = [float(v) for v in vy], [float(v) for v in vx]

    def polygon(dy, dx):
        inside = np.ones(dy.shape, dtype=bool)
        for k in range(len(vy)):
            ey = vy[(k + 1) % len(vy)] - vy[k]
            ex = vx[(k + 1) % len(vx)] - vx[k]
            inside &= ex * (dy - vy[k]) - ey * (dx - vx[k]) >= 0.0
        return inside

    return polygon


def _place(rng, radius, placed, size, tries=32):
    """Samples a centre (cy, cx) away from the border and earlier objects.

    Returns None when none of `tries` candidates is far enough from the
    objects already placed.
    """
    margin = _BORDER_MARGIN * radius
    return scene_render.sample_centre(rng, margin, size - margin, radius, placed,
                                      min_separation=_MIN_CENTRE_SEPARATION, tries=tries)


def _object_colour(rng, *stuff_colours, tries=16):
    """A uniform random RGB colour, float [3], contrasting with the stuff."""
    cand = rng.uniform(0.0, 255.0, size=(tries, 3))
    dist = np.min(
        [np.linalg.norm(cand - c, axis=1) for c in stuff_colours], axis=0
    )
    # Fall back to the most contrasting candidate if none passes.
    ok = dist >= _MIN_COLOUR_CONTRAST
    return cand[np.argmax(ok)] if ok.any() else cand[np.argmax(dist)]


def _renumber(instance, num_drawn):
    """Maps the visible instance ids to 1..K in drawing order, int32 [H, W].

    An object can be fully hidden by later ones; renumbering keeps the ids
    contiguous so that K is the number of visible instances.
    """
    visible = np.bincount(instance.ravel(), minlength=num_drawn + 1) > 0
    visible[0] = False
    lut = np.zeros(num_drawn + 1, dtype=np.int32)
    lut[visible] = np.arange(1, visible.sum() + 1, dtype=np.int32)
    return np.take(lut, instance)
