"""Wall-clock timing shared by the benchmarks."""

import time

import numpy as np


def median_ms(fn, repeats: int, *, warmup: bool = True) -> float:
    """Median wall time in ms of `fn()` over `repeats` runs, after one warm-up (compilation) run.

    `fn` must block until its work is done (e.g. `jax.block_until_ready`).
    """
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))
