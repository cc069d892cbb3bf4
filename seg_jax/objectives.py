"""What a model is trained to minimise: `make_objective(config, info, panoptic=...)`.

An objective is `objective(outputs: ModelOutput, batch) -> (loss, parts)`, where `parts` names
each term (the training log reports them):

- 'semantic': the configured loss (`seg_jax.losses.get_loss(config.loss)`, or a `loss_fn` passed
  to `train_and_evaluate`) on `outputs.logits`;
- 'aux': with an auxiliary head (`outputs.aux_logits`, DeepLab's `aux_head`), the same loss on its
  logits, added times `config.loss.aux_weight` (torchvision's recipe);
- 'center' and 'offset': for a panoptic model (Panoptic-DeepLab), the centre heatmap (squared
  error) and offset (L1) losses against targets built on the device from the batch's labels and
  instance ids (`seg_jax.data.panoptic_targets`), weighted by `config.panoptic`'s
  `center_loss_weight` and `offset_loss_weight` (the paper's 200 and 0.01).
"""

import functools
from typing import Callable

from absl import logging

from seg_jax import losses
from seg_jax.data.panoptic_targets import panoptic_targets
from seg_jax.models.outputs import ModelOutput


def describe(fn) -> str:
    """A callable's name for logs and config.json (a functools.partial's function's name)."""
    return getattr(fn, "__qualname__", None) or getattr(getattr(fn, "func", None), "__qualname__",
                                                        repr(fn))


def semantic_loss(config, info, loss_fn: Callable | None = None) -> Callable:
    """`loss(logits, labels) -> scalar`: `loss_fn` (a callable taking `(logits, labels, *,
    ignore_label)`, its other options already bound, e.g. with functools.partial) if given, else
    `config.loss`. Each part that is not one of the package's losses is probed first
    (`seg_jax.losses.check_loss`), so a broken loss fails here, naming itself, not in the train
    step's compilation."""
    probe = functools.partial(losses.check_loss, num_classes=info.num_classes,
                              ignore_label=info.ignore_label)
    if loss_fn is not None:
        loss = functools.partial(loss_fn, ignore_label=info.ignore_label)
        probe(loss, name=describe(loss_fn))
        logging.info("Semantic loss: %s (passed as loss_fn; config.loss.name=%r is not used).",
                     describe(loss_fn), config.loss.name)
        return loss
    for term in losses.registry.loss_terms(config.loss):
        if not term.entry.builtin:
            probe(functools.partial(term.entry.fn, ignore_label=info.ignore_label,
                                    **term.options), name=term.entry.name)
    return losses.get_loss(config.loss)


def make_objective(config, info, *, panoptic: bool, loss: Callable | None = None) -> Callable:
    """`objective(outputs, batch) -> (loss, parts)` for a dataset with `info`.

    `panoptic`: the model has centre and offset heads (`ModelOutput.is_panoptic`); the dataset
    must then declare thing classes and its batches carry 'instance' ids. `loss`: the semantic
    loss (default: `semantic_loss(config, info)`), also applied to auxiliary logits.
    """
    semantic_loss_fn = semantic_loss(config, info) if loss is None else loss
    aux_weight = float(config.loss.aux_weight)
    if panoptic and not info.thing_classes:
        raise ValueError(f"{config.model.name} is a panoptic model and needs a dataset with thing "
                         f"classes; {config.data.name!r} declares none.")
    settings = config.panoptic

    def objective(outputs: ModelOutput, batch: dict):
        labels = batch["label"]
        parts = {"semantic": semantic_loss_fn(outputs.logits, labels)}
        loss = parts["semantic"]
        if panoptic:
            targets = panoptic_targets(
                labels, batch["instance"], thing_classes=info.thing_classes,
                num_classes=info.num_classes, ignore_label=info.ignore_label,
                max_instances=settings.max_instances, sigma=settings.center_sigma)
            parts["center"] = losses.center_heatmap_loss(
                outputs.center, targets["center"], weights=targets["center_weight"])
            parts["offset"] = losses.offset_loss(
                outputs.offset, targets["offset"], weights=targets["offset_weight"])
            loss = (loss + settings.center_loss_weight * parts["center"]
                    + settings.offset_loss_weight * parts["offset"])
        if outputs.aux_logits is not None:
            parts["aux"] = semantic_loss_fn(outputs.aux_logits, labels)
            loss = loss + aux_weight * parts["aux"]
        return loss, parts

    return objective
