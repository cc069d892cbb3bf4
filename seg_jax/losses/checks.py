"""`check_loss`: a loss written outside the package, run once on a small probe before training.

A loss that returns a non-scalar, a NaN or infinity, a gradient that is not finite, or a gradient
at pixels it was told to ignore would otherwise surface as a shape error deep in the train step's
compilation, or as a diverged run hours later. The probe is tiny ([2, 8, 8, C]) and jitted once:
seconds, before the first step compiles.

The probe's cases, each a way a real batch can look:
- random logits and labels, with a band of ignored pixels and one class absent;
- saturated logits (x 100), as a confident model produces late in training;
- every pixel ignored (a crop of void): the loss must be finite (the package's losses give 0).
"""

import jax
import jax.numpy as jnp
import numpy as np


class LossCheckError(ValueError):
    """A loss failed its probe; the message names the loss and what it returned."""


PROBE_SHAPE = (2, 8, 8)


def probe_batch(num_classes: int, ignore_label: int, seed: int = 0):
    """`(logits [2, 8, 8, C], labels [2, 8, 8])`: random, one band of rows ignored and the last
    class absent (with one class there is no absent one)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(*PROBE_SHAPE, num_classes)).astype(np.float32) * 3.0
    present = max(num_classes - 1, 1)
    labels = rng.integers(0, present, size=PROBE_SHAPE).astype(np.int32)
    labels[:, 2:4] = ignore_label
    return jnp.asarray(logits), jnp.asarray(labels)


def check_loss(loss_fn, *, name: str, num_classes: int, ignore_label: int) -> None:
    """Raises LossCheckError unless `loss_fn(logits, labels)` (options already bound) returns a
    finite scalar with a finite gradient under `jax.jit(jax.value_and_grad(...))`, gives no
    gradient to ignored pixels, and stays finite for saturated logits and all-ignored labels."""
    logits, labels = probe_batch(num_classes, ignore_label)
    where = f"Loss {name!r}"
    try:
        shape = jax.eval_shape(loss_fn, logits, labels).shape
    except Exception as error:  # the user's code: any exception is reported with its type
        raise LossCheckError(
            f"{where} raised {type(error).__name__} on a probe batch (logits {logits.shape}, "
            f"labels {labels.shape}): {error}") from error
    if shape != ():
        raise LossCheckError(
            f"{where} returns shape {shape}, not a scalar: reduce it (e.g. a mean over the valid "
            f"pixels) so that it can be differentiated and summed with other terms.")
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    all_ignored = jnp.full_like(labels, ignore_label)
    cases = (("random logits", logits, labels), ("saturated logits (x100)", logits * 100.0, labels),
             ("every pixel ignored", logits, all_ignored))
    for case, case_logits, case_labels in cases:
        try:
            value, grad = value_and_grad(case_logits, case_labels)
        except Exception as error:
            raise LossCheckError(
                f"{where} fails under jax.jit(jax.grad(...)) ({case}): {type(error).__name__}: "
                f"{error}") from error
        value, grad = float(value), np.asarray(grad)
        if not np.isfinite(value):
            raise LossCheckError(
                f"{where} returns {value} for {case}; guard its logarithms and divisions (e.g. "
                f"log_softmax instead of log(softmax), a denominator of max(count, 1)).")
        if not np.isfinite(grad).all():
            raise LossCheckError(
                f"{where} has a non-finite gradient for {case} ({int((~np.isfinite(grad)).sum())} "
                f"of {grad.size} entries); a jnp.where over a NaN branch still differentiates it.")
        ignored = np.asarray(case_labels) == ignore_label
        leaked = np.abs(grad[ignored]).max(initial=0.0)
        if leaked > 0:
            raise LossCheckError(
                f"{where} has gradient {leaked:.3g} at pixels labelled ignore_label="
                f"{ignore_label} ({case}); ignored pixels must contribute nothing: mask them, "
                f"e.g. with `labels != ignore_label`.")
