"""The Lovasz-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018)."""

import jax
import jax.numpy as jnp

from seg_jax.losses.common import prepare


# The sort is the whole cost of this loss. XLA sorts one array of unsigned integers several times
# faster than floats (whose comparator orders NaNs and signed zeros) or than several arrays at
# once (a key with payloads), so each pixel's error, truth and index are packed into one uint64:
# [32 bits: the error's bits, complemented] [1 bit: truth] [31 bits: pixel index]. Sorting it
# ascending orders the errors descending (the bits of non-negative floats are monotonic), and the
# low word gives back each sorted pixel's truth and index. 64-bit integers exist in JAX only with
# x64 enabled, so that is enabled inside this function alone (the arrays it returns are 32-bit).
_INDEX_BITS = 31


def _sorted_order(errors, truth, valid):
    """For [C, P] errors >= 0 and 0/1 truth and [P] valid: (truth_sorted [C, P] float32,
    order [C, P] int32), each class's pixels by error descending, ignored pixels last."""
    num_pixels = errors.shape[-1]
    if num_pixels >= 2**_INDEX_BITS:
        raise ValueError(f"lovasz_softmax_loss sorts at most 2^{_INDEX_BITS} pixels at once, "
                         f"got {num_pixels}; use per_image=True or smaller batches.")
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(errors), jnp.uint32)
    # Ignored pixels get the largest key: after every valid one, including errors of 0.
    high = jnp.where(valid[None, :], ~bits, jnp.uint32(0xFFFFFFFF))
    with jax.enable_x64(True):
        index = jax.lax.broadcasted_iota(jnp.uint64, errors.shape, errors.ndim - 1)
        low = (truth.astype(jnp.uint64) << _INDEX_BITS) | index
        packed = jax.lax.sort((high.astype(jnp.uint64) << 32) | low, dimension=errors.ndim - 1)
        low = (packed & jnp.uint64(0xFFFFFFFF)).astype(jnp.uint32)
    truth_sorted = (low >> _INDEX_BITS).astype(jnp.float32)
    order = (low & jnp.uint32(2**_INDEX_BITS - 1)).astype(jnp.int32)
    return truth_sorted, order


def _lovasz_flat(errors, truth, valid):
    """Per-class Lovasz-softmax losses of one flat set of pixels.

    Args:
      errors: [C, P] non-negative errors (|fg - p_c|, times pixel weights), 0 at ignored pixels
        (class-major: each class's sort then runs along contiguous memory).
      truth: [C, P] 0/1 one-hot ground truth, 0 at ignored pixels.
      valid: [P] bool.

    Returns:
      (loss [C], present [C] bool): loss_c = dot(e_sorted, lovasz_grad(truth_sorted)) with the
      errors sorted descending; present_c is whether class c occurs among the valid pixels.
    """
    truth_sorted, order = _sorted_order(errors, truth, valid)
    # Ignored pixels are sorted strictly last with error 0 and truth 0: the cumulative sums at
    # every valid position are those without them, and they add 0 * grad to the dot product.
    gts = truth_sorted.sum(-1, keepdims=True)
    foreground_so_far = jnp.cumsum(truth_sorted, -1)
    intersection = gts - foreground_so_far
    # union >= 1 at every position (either the first sorted pixel is foreground, so gts >= 1, or
    # the cumulative background count is >= 1), so the division is always safe. The background
    # count so far is the position (from 1) less the foreground count: one cumulative sum.
    position = jax.lax.broadcasted_iota(jnp.float32, truth_sorted.shape, 1) + 1.0
    union = gts + (position - foreground_so_far)
    jaccard = 1.0 - intersection / union
    grad = jnp.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    # dot(e_sorted, grad) = sum_i e_i grad[rank of i]: with grad put back in pixel order, the
    # loss is linear in the errors, and its gradient (grad, which the order fixes) needs no
    # differentiation through the sort.
    rows = jnp.arange(errors.shape[0])[:, None]
    grad_by_pixel = jnp.zeros_like(grad).at[rows, order].set(grad, unique_indices=True)
    loss = jnp.sum(errors * jax.lax.stop_gradient(grad_by_pixel), -1)
    return loss, gts[:, 0] > 0


def lovasz_softmax_loss(
    logits,
    labels,
    *,
    classes="present",
    per_image: bool = False,
    ignore_label: int = 255,
    weights=None,
):
    """Lovasz-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018).

    For each class c over the valid pixels: errors e_i = |fg_ic - p_ic| (fg = onehot(labels)),
    sorted descending with the ground truth in the same order, g_sorted; with cumulative sums
    J_k = 1 - (sum(g) - cumsum(g_sorted)_k) / (sum(g) + cumsum(1 - g_sorted)_k) (the Jaccard loss
    of predicting the first k+1 sorted pixels as foreground), lovasz_grad = (J_0, J_1 - J_0,
    J_2 - J_1, ...) and loss_c = dot(e_sorted, lovasz_grad), the Lovasz extension of the Jaccard
    loss evaluated at e.

    Args:
      logits: [N, H, W, C] float.
      labels: [N, H, W] int; `ignore_label` pixels are excluded (exactly: the loss equals the
        loss with those pixels removed).
      classes: 'present' (default): mean over classes present in the labels (of the batch, or of
        each image when per_image); 'all': mean over all C classes (an absent class then costs
        its largest probability); or a sequence of class ids to average over (as the reference).
      per_image: False (default): one sort over all pixels of the batch; True: the loss of each
        image, averaged over images (as the reference `lovasz_softmax(per_image=True)`).
      ignore_label: the void label.
      weights: optional [N, H, W] v_i >= 0: errors become v_i * e_i before sorting; pixels with
        v_i = 0 are treated as ignored. (Not in the paper; None is the reference algorithm.)

    Returns:
      A scalar. With no valid pixel (or, for 'present', no class present) it is 0 with a zero
      gradient.
    """
    if isinstance(classes, str) and classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present', 'all' or class ids, got {classes!r}.")
    log_probs, _, safe_labels, pixel_weight = prepare(logits, labels, ignore_label, weights)
    num_classes = logits.shape[-1]
    probs = jnp.exp(log_probs)
    only_present = isinstance(classes, str) and classes == "present"
    if isinstance(classes, str):
        class_mask = jnp.ones((num_classes,), bool)
    else:
        class_mask = jnp.zeros((num_classes,), bool).at[jnp.asarray(classes, jnp.int32)].set(True)

    def one_set(probs, safe_labels, pixel_weight):
        # Class-major [C, P]: one transpose of the probabilities; the truth is built in place.
        probs = probs.reshape(-1, num_classes).T
        pixel_weight = pixel_weight.reshape(-1)
        valid = pixel_weight > 0
        classes_ = jnp.arange(num_classes)[:, None]
        truth = ((safe_labels.reshape(-1)[None, :] == classes_) & valid[None, :]).astype(
            probs.dtype)
        # pixel_weight is 0 at ignored pixels, so their errors are 0 (with a zero gradient).
        errors = jnp.abs(truth - probs) * pixel_weight[None, :]
        loss, present = _lovasz_flat(errors, truth, valid)
        use = class_mask & present if only_present else class_mask
        return jnp.sum(jnp.where(use, loss, 0.0)) / jnp.maximum(use.sum(), 1)

    if per_image:
        return jnp.mean(jax.vmap(one_set)(probs, safe_labels, pixel_weight))
    return one_set(probs, safe_labels, pixel_weight)
