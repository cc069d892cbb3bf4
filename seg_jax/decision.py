"""Per-pixel decisions from class probabilities: MAP (argmax) and Bayes risk (min expected cost).

Cost convention (DESIGN.md, design text "The Pixel's Dilemma"): `cost[c, c_true]` is the cost of
predicting class `c` when the truth is `c_true`. Given probabilities `p` over C classes, the risk
(expected cost) of predicting `c` is

    R[c] = sum_c' cost[c, c'] * p[c']

and the Bayes decision is `argmin_c R[c]`. With the 0-1 cost `1 - eye(C)`, R[c] = 1 - p[c] (for
probabilities that sum to one), so the Bayes decision is the MAP decision `argmax_c p[c]`.

Invariances of the decision (each changes every R[c] of a pixel by the same amount or factor):
  * scaling `cost` by a positive constant;
  * adding a constant `a[c']` to a column `cost[:, c']` (the same for every prediction given a
    truth): R[c] changes by sum_c' a[c'] p[c'], which does not depend on c.
So only the "regret" `cost[c, c'] - cost[c', c']` matters, which is why a cost matrix with a
nonzero diagonal gives the same decisions as the matrix with that diagonal subtracted column-wise.

Ties: every decision here breaks ties towards the lowest class index (the rule of `jnp.argmax` and
`jnp.argmin`).

Array functions are pure jnp, accept any leading shape `[..., C]` and work under jit and vmap;
shape checks happen at trace time.
"""

import jax
import jax.numpy as jnp
import numpy as np

from seg_jax.labels import valid_mask


def map_decision(probs):
    """The maximum a posteriori class of each pixel.

    Args:
      probs: [..., C] class probabilities (or any scores: argmax is monotone-invariant, so logits
        give the same result).

    Returns:
      [...] int32, argmax_c probs[..., c]; ties go to the lowest class index.
    """
    return jnp.argmax(jnp.asarray(probs), axis=-1).astype(jnp.int32)


def _check_cost(probs, cost):
    # Static shapes, so this raises while tracing, before anything runs on a device.
    num_classes = probs.shape[-1]
    if cost.shape != (num_classes, num_classes):
        raise ValueError(
            f"cost must be [C, C] with C = probs.shape[-1] = {num_classes}; got cost of shape "
            f"{tuple(cost.shape)} for probs of shape {tuple(probs.shape)}."
        )


def expected_cost(probs, cost):
    """The risk of each possible prediction at each pixel.

    Args:
      probs: [..., C] class probabilities (softmax outputs, not logits).
      cost: [C, C] cost matrix, `cost[c, c_true]` = cost of predicting c when the truth is c_true.

    Returns:
      [..., C] float32 risks, R[..., c] = sum_c' cost[c, c'] * probs[..., c'].

    Raises:
      ValueError: if `cost` is not [C, C] for the C of `probs`.
    """
    probs = jnp.asarray(probs, jnp.float32)
    cost = jnp.asarray(cost, jnp.float32)
    _check_cost(probs, cost)
    # HIGHEST precision: the default on TPU (bf16 passes) and GPU (TF32) would round the
    # probabilities to ~3 significant digits and flip close decisions.
    return jnp.matmul(probs, cost.T, precision=jax.lax.Precision.HIGHEST)


def bayes_decision(probs, cost):
    """The class of minimum expected cost at each pixel (the Bayes decision).

    decision[...] = argmin_c sum_c' cost[c, c'] * probs[..., c'], ties to the lowest class index.

    With `cost = 1 - eye(C)` this is exactly `map_decision(probs)`, bit for bit: the risks are
    computed from the column-shifted matrix `cost - max(cost, axis=0)` (a per-truth constant, which
    leaves the decision unchanged, see the module docstring), and for the 0-1 cost that matrix is
    `-eye(C)`, whose risks `-p[c]` involve no rounding at all.

    Args:
      probs: [..., C] class probabilities (softmax outputs, not logits).
      cost: [C, C] cost matrix, `cost[c, c_true]` = cost of predicting c when the truth is c_true.

    Returns:
      [...] int32 class ids.

    Raises:
      ValueError: if `cost` is not [C, C] for the C of `probs` (at trace time).
    """
    probs = jnp.asarray(probs, jnp.float32)
    cost = jnp.asarray(cost, jnp.float32)
    _check_cost(probs, cost)
    shifted = cost - jnp.max(cost, axis=0, keepdims=True)
    return jnp.argmin(expected_cost(probs, shifted), axis=-1).astype(jnp.int32)


def threshold_for_binary_cost(cost) -> float:
    """The probability threshold on class 1 that reproduces the binary Bayes decision.

    For C = 2 the risks are R[0] = cost[0,0] p0 + cost[0,1] p1 and R[1] = cost[1,0] p0 + cost[1,1] p1.
    With the regrets a = cost[1,0] - cost[0,0] (extra cost of a false positive of class 1) and
    b = cost[0,1] - cost[1,1] (extra cost of a false negative of class 1), and p0 = 1 - p1:

        R[1] < R[0]  <=>  a p0 < b p1  <=>  a < (a + b) p1  <=>  p1 > t = a / (a + b).

    So `bayes_decision(probs, cost) == (probs[..., 1] > t)`: at p1 == t the risks tie and both
    sides pick class 0. For a zero-diagonal matrix [[0, c01], [c10, 0]] this is t = c10 / (c10 + c01);
    the 0-1 cost gives t = 1/2.

    Args:
      cost: [2, 2] concrete (non-traced) cost matrix, `cost[c, c_true]`.

    Returns:
      t in [0, 1] as a Python float.

    Raises:
      ValueError: if `cost` is not 2x2, or a regret is negative (then one class is never worse and
        the decision does not depend on p1 through a threshold in [0, 1]), or both regrets are 0
        (every decision costs the same).
    """
    cost = np.asarray(cost, np.float64)
    if cost.shape != (2, 2):
        raise ValueError(f"threshold_for_binary_cost needs a [2, 2] cost matrix, got shape {cost.shape}.")
    a = cost[1, 0] - cost[0, 0]
    b = cost[0, 1] - cost[1, 1]
    if a < 0 or b < 0:
        raise ValueError(
            f"A correct prediction must cost no more than a wrong one (cost[1,0] >= cost[0,0] and "
            f"cost[0,1] >= cost[1,1]); got {cost.tolist()}, so one class is always the better choice."
        )
    if a + b == 0:
        raise ValueError(f"Every prediction costs the same under {cost.tolist()}; there is no threshold.")
    return float(a / (a + b))


def realized_cost_sums(predictions, labels, cost, *, ignore_label: int = 255, weights=None):
    """Sufficient statistics of the realized cost: they add across batches and devices.

    Args:
      predictions: [...] int predicted class ids.
      labels: [...] int true class ids, same shape. Pixels equal to `ignore_label`, or outside
        [0, C), count nowhere; so do pixels whose prediction is outside [0, C).
      cost: [C, C] cost matrix, `cost[c, c_true]`.
      ignore_label: the void label.
      weights: optional [...] per-pixel weights.

    Returns:
      (total_cost, num_valid): float32 scalar sum over valid pixels of w * cost[pred, label], and the
      number of valid pixels (int32), or the sum of their weights (float32) with `weights`. Finish
      with `realized_cost_from_sums`; sum `num_valid` on the host in int64 across a dataset.
    """
    cost = jnp.asarray(cost, jnp.float32)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square [C, C] matrix, got shape {tuple(cost.shape)}.")
    num_classes = cost.shape[0]
    predictions = jnp.asarray(predictions).reshape(-1)
    labels = jnp.asarray(labels).reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must have the same size, got {predictions.shape} and {labels.shape}."
        )
    valid = valid_mask(labels, num_classes, ignore_label)
    valid &= (predictions >= 0) & (predictions < num_classes)
    # Invalid pixels index cost[0, 0] and are masked out, so no dynamic shapes are needed.
    per_pixel = cost[jnp.where(valid, predictions, 0), jnp.where(valid, labels, 0)]
    if weights is None:
        return jnp.sum(jnp.where(valid, per_pixel, 0.0)), jnp.sum(valid, dtype=jnp.int32)
    weights = jnp.asarray(weights, jnp.float32).reshape(-1)
    weights = jnp.where(valid, weights, 0.0)
    return jnp.sum(weights * per_pixel), jnp.sum(weights)


def realized_cost_from_sums(total_cost, num_valid):
    """Mean cost per valid pixel, total_cost / num_valid; 0 (never NaN) when num_valid is 0.

    Accepts the device scalars of `realized_cost_sums` or host sums (numpy / Python numbers).
    """
    xp = np if isinstance(total_cost, (np.ndarray, np.generic, float, int)) else jnp
    return xp.where(num_valid > 0, total_cost / xp.where(num_valid > 0, num_valid, 1), 0.0)


def realized_cost(predictions, labels, cost, *, ignore_label: int = 255, weights=None):
    """Mean over valid pixels of cost[prediction, label] (weighted mean with `weights`).

    realized = sum_i w_i cost[pred_i, label_i] / sum_i w_i over valid pixels i (w_i = 1 without
    weights); 0 when no pixel is valid. See `realized_cost_sums` for the arguments and validity.

    Returns:
      float32 scalar.
    """
    total, num_valid = realized_cost_sums(
        predictions, labels, cost, ignore_label=ignore_label, weights=weights
    )
    return realized_cost_from_sums(total, num_valid)


def realized_cost_from_confusion(confusion, cost):
    """The same mean realized cost, from a confusion matrix the evaluator already accumulates.

    With `confusion[t, p]` counting pixels of truth t predicted as p (seg_jax.metrics convention),
    total = sum_{t,p} confusion[t, p] * cost[p, t] = sum(confusion * cost.T), and the result is
    total / confusion.sum(), or 0 when the matrix is empty. Host int64 matrices stay exact.
    """
    xp = np if isinstance(confusion, np.ndarray) else jnp
    confusion = confusion.astype(xp.float64 if xp is np else jnp.float32)
    total = (confusion * xp.asarray(cost, confusion.dtype).T).sum()
    return realized_cost_from_sums(total, confusion.sum())


def cost_matrix_from_config(value, num_classes: int):
    """Turns a config value into a validated float32 [C, C] numpy cost matrix.

    Args:
      value: None for the 0-1 cost `1 - eye(C)` (the MAP decision), or a nested tuple/list (or
        array) with `value[c][c_true]` = cost of predicting c when the truth is c_true.
      num_classes: C, the model's number of classes.

    Returns:
      [C, C] float32 numpy array.

    Raises:
      ValueError: naming the problem and the fix, when the value is ragged or not numeric, not
        [C, C], not finite, negative, or all zero.
    """
    if value is None:
        return (1.0 - np.eye(num_classes)).astype(np.float32)
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"decision.cost must be a nested list of numbers, one row per predicted class; could not "
            f"read it as a matrix ({error}). Give {num_classes} rows of {num_classes} numbers."
        ) from None
    if matrix.shape != (num_classes, num_classes):
        raise ValueError(
            f"decision.cost must be [{num_classes}, {num_classes}] (rows = predicted class, columns "
            f"= true class) for a {num_classes}-class model, got shape {matrix.shape}. Give one row "
            f"per class, each with {num_classes} entries, or None for the 0-1 cost."
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"decision.cost has non-finite entries: {matrix.tolist()}. Use finite costs.")
    if np.any(matrix < 0):
        raise ValueError(
            f"decision.cost has negative entries: {matrix.tolist()}. Costs must be >= 0; adding a "
            f"constant to a column does not change the decision, so shift the offending columns up."
        )
    if not np.any(matrix > 0):
        raise ValueError(
            "decision.cost is all zeros, so every prediction costs the same and the decision is "
            "arbitrary. Use None for the 0-1 cost (argmax), or give the costs of the mistakes."
        )
    return matrix.astype(np.float32)


DECISION_RULES = ("map", "bayes")


def check_rule(rule: str, name: str = "config.decision.rule") -> None:
    """Raises ValueError unless `rule` is one of `DECISION_RULES`."""
    if rule not in DECISION_RULES:
        raise ValueError(f"{name}={rule!r}; choose 'map' (argmax) or 'bayes' (minimum expected cost "
                         "under config.decision.cost).")
