"""A loss whose train step takes seconds: cross-entropy plus device work that changes nothing.

For the preemption tests: `config.extra_modules=('tests/slow_loss.py',)` with
`config.loss.name='slow_cross_entropy'` registers it; SLOW_LOSS_REPEATS (environment) sets how
many matrix products each step adds. The work is on the device (a value of the logits, without
gradient), not a host callback: JAX dispatches a program with a host callback synchronously, and
what these tests check is what the host does while steps are queued on the device.
"""

import os
import time

import jax
import jax.numpy as jnp

from seg_jax import losses

SIZE = 768


def work(x, repeats: int):
    m = jnp.full((SIZE, SIZE), 1e-3) * jnp.tanh(x)
    for _ in range(repeats):
        m = jnp.tanh(m @ m)
    return m.sum()


def seconds(repeats: int) -> float:
    """Wall time of `work` with `repeats` products, compiled, on this machine now."""
    f = jax.jit(lambda x: work(x, repeats))
    f(0.5).block_until_ready()
    began = time.perf_counter()
    f(0.5).block_until_ready()
    return time.perf_counter() - began


def calibrate(min_seconds: float) -> tuple[int, float]:
    """(repeats, seconds): the fewest products that take at least about `min_seconds`."""
    per_product = max(seconds(4) / 4, 1e-4)
    repeats = max(1, int(-(-min_seconds // per_product)))
    return repeats, seconds(repeats)


@losses.register_loss("slow_cross_entropy", override=True)
def slow_cross_entropy(logits, labels, *, ignore_label, weights=None):
    extra = jax.lax.stop_gradient(work(logits.mean(), int(os.environ["SLOW_LOSS_REPEATS"])))
    return (losses.cross_entropy(logits, labels, ignore_label=ignore_label, weights=weights)
            + 0.0 * extra)
