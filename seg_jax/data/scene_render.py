"""Numpy pieces that both procedural renderers (`shapes_render`, `digits_render`) draw scenes with.

Pure numpy, like the renderers. Changing how either function consumes its generator changes the
content of both built-in datasets.
"""

import numpy as np


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled Gaussian lattice noise, float32 [size, size].

    A (cells+1)^2 lattice of N(0, 1) values is interpolated separably, so the
    noise varies on a scale of size / cells pixels.
    """
    lattice = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    # Linear interpolation as a [size, cells+1] matrix: two tiny matmuls are
    # much faster than gathering lattice values per pixel.
    t = np.linspace(0.0, cells, size, endpoint=False, dtype=np.float32)
    weights = np.maximum(0.0, 1.0 - np.abs(t[:, None] - np.arange(cells + 1)))
    weights = weights.astype(np.float32)
    return weights @ lattice @ weights.T


def sample_centre(rng: np.random.Generator, low, high, radius: float, placed, *,
                  min_separation: float, tries: int = 32):
    """A centre (cy, cx) uniform in [low, high) and away from the objects already placed.

    `low` and `high` are scalars or per-axis (y, x) bounds; `placed` holds the (cy, cx, r) of
    earlier objects. The first of `tries` candidates whose distance to every earlier centre is
    at least `min_separation * (radius + r)`, or None when there is none.
    """
    cand = rng.uniform(low, high, size=(tries, 2))
    ok = np.ones(tries, dtype=bool)
    for cy, cx, r in placed:
        dist = np.hypot(cand[:, 0] - cy, cand[:, 1] - cx)
        ok &= dist >= min_separation * (radius + r)
    if not ok.any():
        return None
    k = int(np.argmax(ok))
    # Python floats keep the float32 coordinate grids from becoming float64.
    return float(cand[k, 0]), float(cand[k, 1])
