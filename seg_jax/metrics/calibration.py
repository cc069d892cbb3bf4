"""Calibration of per-pixel probabilities: binned calibration errors and temperature scaling.

The sufficient statistic is, per confidence bin b, the number of valid pixels n_b, the sum of their
confidences and the sum of their correctness. Bins of batches, devices and hosts add (as a pytree:
`jax.tree_util.tree_map(operator.add, a, b)`, or `jax.lax.psum` inside a step), and the scores are
computed once from the sum. Confidence is the top-1 probability max_c p_c and correctness is
1[argmax_c p_c == label] (the top-label calibration error of Guo et al., 2017, "On Calibration of
Modern Neural Networks").

Bin edges are `num_bins` equal-width intervals of [0, 1]. Their closedness is the named option
`closed`; the default "right" uses bins (b/B, (b+1)/B] as in Guo et al. (2017) and in the loop and
early `torch.bucketize` implementations of torchmetrics' calibration error (first bin also takes
confidence 0). "left" uses [b/B, (b+1)/B) with confidence 1 in the last bin. Note that the
torchmetrics 1.x `_binning_bucketize` (`bucketize(..., right=True) - 1` over B + 1 slots) is
left-closed *and* gives confidence exactly 1.0 a separate (B+1)-th bin; neither option reproduces
that extra bin, so its ECE can differ on inputs with saturated float32 probabilities.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from seg_jax.labels import valid_mask

_CLOSED = ("right", "left")


def _xp(x):
    return np if isinstance(x, (np.ndarray, np.generic)) else jnp


def _flatten_pixels(scores, labels, ignore_label, weights, name):
    """Flattens `scores` [..., C] to [P, C] and returns it with the flat [P] labels, validity and
    float32 weight (0 on invalid pixels, else w or 1); a pixel-count mismatch is a ValueError."""
    scores = jnp.asarray(scores, jnp.float32)
    num_classes = scores.shape[-1]
    scores = scores.reshape(-1, num_classes)
    labels = jnp.asarray(labels).reshape(-1)
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"labels must have one entry per pixel of {name}: {labels.shape[0]} labels for "
            f"{scores.shape[0]} pixels."
        )
    valid = valid_mask(labels, num_classes, ignore_label)
    if weights is None:
        pixel_weights = valid.astype(jnp.float32)
    else:
        pixel_weights = jnp.where(valid, jnp.asarray(weights, jnp.float32).reshape(-1), 0.0)
    return scores, labels, valid, pixel_weights


def calibration_bins(
    probs, labels, *, num_bins: int = 15, ignore_label: int = 255, weights=None, closed: str = "right"
):
    """Per-bin sufficient statistics of the top-label calibration error.

    Args:
      probs: [..., C] class probabilities (softmax outputs, not logits), e.g. [N, H, W, C].
      labels: [...] int true class ids; pixels equal to `ignore_label`, or outside [0, C), count
        nowhere.
      num_bins: B, equal-width confidence bins on [0, 1].
      ignore_label: the void label.
      weights: optional [...] per-pixel weights (then every statistic is weighted and `count` is a
        float32 sum of weights).
      closed: "right" for bins (b/B, (b+1)/B] (default, Guo et al. 2017), "left" for [b/B, (b+1)/B).

    Returns:
      dict of [B] arrays: "count" (int32, float32 with weights) n_b = sum_i w_i, "confidence_sum"
      (float32) sum_i w_i max_c p_ic, "correct_sum" (float32) sum_i w_i 1[argmax_c p_ic == y_i],
      each over the valid pixels i whose confidence falls in bin b. Sum across a dataset on the host
      in float64 / int64.
    """
    if closed not in _CLOSED:
        raise ValueError(f"closed must be one of {_CLOSED}, got {closed!r}.")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
    probs, labels, valid, pixel_weights = _flatten_pixels(probs, labels, ignore_label, weights, "probs")
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
    edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=jnp.float32)
    # searchsorted(side="left") - 1 puts x in b with edges[b] < x <= edges[b + 1] (right-closed);
    # side="right" gives edges[b] <= x < edges[b + 1]. The clip sends 0 (right) and 1 (left) to the
    # end bins instead of off the range.
    side = "left" if closed == "right" else "right"
    index = jnp.clip(jnp.searchsorted(edges, confidence, side=side) - 1, 0, num_bins - 1)
    # Invalid pixels carry weight 0, so they may land in any bin.
    zeros = jnp.zeros(num_bins, jnp.float32)
    if weights is None:
        count = jnp.zeros(num_bins, jnp.int32).at[index].add(valid.astype(jnp.int32))
    else:
        count = zeros.at[index].add(pixel_weights)
    return {
        "count": count,
        "confidence_sum": zeros.at[index].add(pixel_weights * confidence),
        "correct_sum": zeros.at[index].add(pixel_weights * correct),
    }


def expected_calibration_error(bins):
    """ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_sum_b - confidence_sum_b| / N.

    acc_b = correct_sum_b / n_b and conf_b = confidence_sum_b / n_b; empty bins contribute 0, and
    N = sum_b n_b. NaN when there is no valid pixel (N = 0). Accepts device or host (numpy) bins.
    This is torchmetrics' `MulticlassCalibrationError(norm="l1")` up to the bin-edge convention
    (see the module docstring).
    """
    xp = _xp(bins["count"])
    count = bins["count"]
    total = count.sum()
    gap = xp.abs(bins["correct_sum"] - bins["confidence_sum"]).sum()
    return xp.where(total > 0, gap / xp.where(total > 0, total, 1), xp.nan)


def reliability(bins):
    """Per-bin (accuracy acc_b, mean confidence conf_b), each [B]; NaN for empty bins.

    The reliability diagram of Guo et al. (2017): plot acc_b against conf_b.
    """
    xp = _xp(bins["count"])
    count = bins["count"]
    occupied = count > 0
    safe = xp.where(occupied, count, 1)
    accuracy = xp.where(occupied, bins["correct_sum"] / safe, xp.nan)
    confidence = xp.where(occupied, bins["confidence_sum"] / safe, xp.nan)
    return accuracy, confidence


def max_calibration_error(bins):
    """MCE = max over non-empty bins of |acc_b - conf_b|; NaN when every bin is empty."""
    xp = _xp(bins["count"])
    accuracy, confidence = reliability(bins)
    gaps = xp.abs(accuracy - confidence)
    occupied = bins["count"] > 0
    return xp.where(occupied.any(), xp.where(occupied, gaps, -1.0).max(), xp.nan)


def _flat_logits_and_weights(logits, labels, ignore_label, weights):
    logits, labels, valid, pixel_weights = _flatten_pixels(
        logits, labels, ignore_label, weights, "logits"
    )
    label_logit = jnp.take_along_axis(logits, jnp.where(valid, labels, 0)[:, None], axis=-1)[:, 0]
    return logits, label_logit, pixel_weights


def temperature_nll(logits, labels, temperature, *, ignore_label: int = 255, weights=None):
    """Mean NLL of softmax(logits / T) over valid pixels (weighted mean with `weights`).

    NLL = sum_i w_i [logsumexp_c(l_ic / T) - l_iy / T] / sum_i w_i; NaN when no pixel is valid.

    Args:
      logits: [..., C] logits; labels: [...] int; temperature: T > 0.
    """
    logits, label_logit, w = _flat_logits_and_weights(logits, labels, ignore_label, weights)
    beta = 1.0 / jnp.asarray(temperature, jnp.float32)
    nll = jax.nn.logsumexp(beta * logits, axis=-1) - beta * label_logit
    total = w.sum()
    return jnp.where(total > 0, (w * nll).sum() / jnp.where(total > 0, total, 1.0), jnp.nan)


@functools.partial(jax.jit, static_argnames=("max_steps",))
def _fit_inverse_temperature(logits, label_logit, w, beta0, beta_lo, beta_hi, rtol, max_steps):
    total = w.sum()

    def gradient_and_curvature(beta):
        # With beta = 1/T, NLL_i(beta) = logsumexp(beta l_i) - beta l_iy, so
        # dNLL/dbeta = E_p[l_i] - l_iy and d2NLL/dbeta2 = Var_p[l_i] >= 0 under p = softmax(beta l_i).
        p = jax.nn.softmax(beta * logits, axis=-1)
        mean = (p * logits).sum(-1)
        var = (p * jnp.square(logits - mean[:, None])).sum(-1)  # centred: no cancellation
        return (w * (mean - label_logit)).sum() / total, (w * var).sum() / total

    def body(state):
        step, beta, lo, hi, _ = state
        grad, curv = gradient_and_curvature(beta)
        # The gradient increases with beta (convexity), so its sign tells which side the optimum is.
        lo = jnp.where(grad < 0, beta, lo)
        hi = jnp.where(grad > 0, beta, hi)
        newton = beta - grad / jnp.where(curv > 0, curv, 1.0)
        inside = (curv > 0) & (newton > lo) & (newton < hi)
        # Safeguard: bisect the bracket in log space when the Newton step leaves it.
        new_beta = jnp.where(inside, newton, jnp.sqrt(lo * hi))
        done = (jnp.abs(new_beta - beta) <= rtol * beta) | (grad == 0)
        return step + 1, new_beta, lo, hi, done

    def cond(state):
        step, _, _, _, done = state
        return (step < max_steps) & ~done

    init = (jnp.int32(0), beta0, beta_lo, beta_hi, jnp.bool_(False))
    _, beta, _, _, _ = jax.lax.while_loop(cond, body, init)
    return beta


def fit_temperature(
    logits,
    labels,
    *,
    ignore_label: int = 255,
    weights=None,
    init: float = 1.0,
    steps: int = 50,
    min_temperature: float = 1e-2,
    max_temperature: float = 1e2,
    rtol: float = 1e-6,
) -> float:
    """Fits the temperature T > 0 minimising the mean NLL of softmax(logits / T) over valid pixels.

    T* = argmin_T sum_i w_i [logsumexp_c(l_ic / T) - l_iy / T] / sum_i w_i, T in
    [min_temperature, max_temperature] (Guo et al., 2017). The NLL is convex in beta = 1/T (its
    second derivative is the variance of the logits under the scaled softmax), so this runs
    safeguarded Newton on beta: Newton steps inside a bracket that the gradient's sign shrinks,
    bisection of the bracket (in log space) otherwise. It stops when a step changes beta by at most
    `rtol * beta`, or after `steps` iterations; each iteration is one pass over the pixels. The
    result is deterministic. When the optimum lies outside the range (e.g. anti-correlated logits,
    for which no T > 0 helps) the nearest end of the range is returned.

    Args:
      logits: [..., C] logits, e.g. [N, H, W, C] (a few million pixels fit in host memory).
      labels: [...] int true class ids; `ignore_label` and labels outside [0, C) are not used.
      ignore_label: the void label.
      weights: optional [...] per-pixel weights.
      init: the starting temperature, returned unchanged (with a warning) when no pixel is valid.
      steps: maximum number of Newton/bisection iterations.
      min_temperature, max_temperature: the search range.
      rtol: relative tolerance on beta = 1/T.

    Returns:
      T as a Python float.
    """
    if not 0 < min_temperature <= init <= max_temperature:
        raise ValueError(
            f"Need 0 < min_temperature <= init <= max_temperature, got {min_temperature}, {init}, "
            f"{max_temperature}."
        )
    logits, label_logit, w = _flat_logits_and_weights(logits, labels, ignore_label, weights)
    if not float(w.sum()) > 0:
        logging.warning("fit_temperature: no valid pixel (all ignored or zero weight); returning "
                        "init.")
        return float(init)
    beta = _fit_inverse_temperature(
        logits,
        label_logit,
        w,
        jnp.float32(1.0 / init),
        jnp.float32(1.0 / max_temperature),
        jnp.float32(1.0 / min_temperature),
        jnp.float32(rtol),
        max_steps=int(steps),
    )
    return float(1.0 / beta)
