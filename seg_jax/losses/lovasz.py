"""The Lovasz-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018)."""

import jax
import jax.numpy as jnp

from seg_jax.losses.common import prepare


def _lovasz_flat(errors, truth, valid):
    """Per-class Lovasz-softmax losses of one flat set of pixels.

    Args:
      errors: [P, C] non-negative errors (|fg - p_c|, times pixel weights), 0 at ignored pixels.
      truth: [P, C] 0/1 one-hot ground truth, 0 at ignored pixels.
      valid: [P] bool.

    Returns:
      (loss [C], present [C] bool): loss_c = dot(e_sorted, lovasz_grad(truth_sorted)) with the
      errors sorted descending; present_c is whether class c occurs among the valid pixels.
    """
    # Sizes must be static under jit, so ignored pixels are kept but sorted strictly last (key -1
    # is below every valid error, which is >= 0) with error 0 and truth 0: the cumulative sums at
    # every valid position are then those without them, and they add 0 * grad to the dot product.
    key = jnp.where(valid[:, None], jax.lax.stop_gradient(errors), -1.0)
    order = jnp.argsort(key, axis=0, descending=True)
    errors_sorted = jnp.take_along_axis(errors, order, axis=0)
    truth_sorted = jnp.take_along_axis(truth, order, axis=0)
    gts = truth_sorted.sum(0)
    intersection = gts - jnp.cumsum(truth_sorted, 0)
    # union >= 1 at every position (either the first sorted pixel is foreground, so gts >= 1, or
    # the cumulative background count is >= 1), so the division is always safe.
    union = gts + jnp.cumsum(1.0 - truth_sorted, 0)
    jaccard = 1.0 - intersection / union
    grad = jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)
    return jnp.sum(errors_sorted * grad, 0), gts > 0


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
    log_probs, onehot, _, pixel_weight = prepare(logits, labels, ignore_label, weights)
    num_classes = logits.shape[-1]
    valid = pixel_weight > 0
    truth = onehot * valid[..., None]
    # pixel_weight is 0 at ignored pixels, so their errors are 0 (with a zero gradient).
    errors = jnp.abs(truth - jnp.exp(log_probs)) * pixel_weight[..., None]
    only_present = isinstance(classes, str) and classes == "present"
    if isinstance(classes, str):
        class_mask = jnp.ones((num_classes,), bool)
    else:
        class_mask = jnp.zeros((num_classes,), bool).at[jnp.asarray(classes, jnp.int32)].set(True)

    def one_set(errors, truth, valid):
        loss, present = _lovasz_flat(
            errors.reshape(-1, num_classes), truth.reshape(-1, num_classes), valid.reshape(-1)
        )
        use = class_mask & present if only_present else class_mask
        return jnp.sum(jnp.where(use, loss, 0.0)) / jnp.maximum(use.sum(), 1)

    if per_image:
        return jnp.mean(jax.vmap(one_set)(errors, truth, valid))
    return one_set(errors, truth, valid)
