"""Exact histograms of per-pixel bins, the scatter-add under every counting metric.

On CPU, XLA's scatter-add costs ~1 ns/pixel while its index array stays in cache but ~5 ns/pixel
once it does not (measured on a 2-core EPYC: 2^21 pixels in one scatter take 2.7 ms, 2^22 take
21 ms). Scattering 2^18-pixel slices from a loop keeps each slice's indices in cache; see
experiments/benchmarks/bench_confusion.py.
"""

import jax.numpy as jnp
from jax import lax

CHUNK = 1 << 18  # pixels per scatter-add


def histogram(num_bins: int, bins_and_counts, arrays, dtype):
    """Exact `sum(counts)` per bin over flat [P] `arrays`, one `CHUNK`-pixel slice at a time.

    Args:
      num_bins: the histogram's length.
      bins_and_counts: `(start, *slices) -> (bins, counts)` maps the slices of `arrays` that begin
        at pixel `start` to bins in [0, num_bins) and their counts; a pixel that counts nowhere
        has count 0 (and any valid bin). Bins must be in range: the scatter skips bounds checks.
      arrays: flat [P] arrays, sliced together.
      dtype: the histogram's dtype (int32 counts are exact up to 2^31 - 1 per bin).

    Returns:
      [num_bins] histogram.
    """
    size = arrays[0].shape[0]
    hist = jnp.zeros(num_bins, dtype)

    def add(hist, start, slices):
        bins, counts = bins_and_counts(start, *slices)
        return hist.at[bins].add(counts, mode="promise_in_bounds")

    num_full = size // CHUNK
    if num_full:
        def body(i, hist):
            start = i * CHUNK
            return add(hist, start, [lax.dynamic_slice_in_dim(a, start, CHUNK) for a in arrays])

        hist = lax.fori_loop(0, num_full, body, hist)
    tail = num_full * CHUNK
    if tail < size:
        hist = add(hist, tail, [a[tail:] for a in arrays])
    return hist
