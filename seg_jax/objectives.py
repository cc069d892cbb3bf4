"""What a model is trained to minimise: `make_objective(config, info, panoptic=...)`.

An objective is `objective(outputs: ModelOutput, batch) -> (loss, parts)`, where `parts` names
each term (the training log reports them):

- 'semantic': the configured loss (`semantic_loss`: the terms of `config.loss`, with class weights
  named by a scheme computed from the training split's class pixel counts, or a `loss_fn` passed
  to `train_and_evaluate`) on `outputs.logits`;
- 'aux': with an auxiliary head (`outputs.aux_logits`, DeepLab's `aux_head`), the same loss on its
  logits, added times `config.loss.aux_weight` (torchvision's recipe);
- 'center' and 'offset': for a panoptic model (Panoptic-DeepLab), the centre heatmap (squared
  error) and offset (L1) losses against targets built on the device from the batch's labels and
  instance ids (`seg_jax.data.panoptic_targets`), weighted by `config.panoptic`'s
  `center_loss_weight` and `offset_loss_weight` (the paper's 200 and 0.01).
"""

import dataclasses
import functools
from typing import Callable

import numpy as np
from absl import logging

from seg_jax import losses
from seg_jax.data import class_balance
from seg_jax.data.panoptic_targets import panoptic_targets
from seg_jax.errors import ConfigError
from seg_jax.models.outputs import ModelOutput


def describe(fn) -> str:
    """A callable's name for logs and config.json (a functools.partial's function's name)."""
    return getattr(fn, "__qualname__", None) or getattr(getattr(fn, "func", None), "__qualname__",
                                                        repr(fn))


def _class_weight_options(loss_config) -> list[tuple[str, object]]:
    """(term name, class_weights value) of each term of config.loss.name that has the option."""
    found = []
    for name in losses.registry.term_names(loss_config.name):
        sub = loss_config.get(name, None) if hasattr(loss_config, "get") else None
        if sub is not None and "class_weights" in sub:
            found.append((name, sub["class_weights"]))
    return found


def needs_class_counts(config, *, config_loss: bool = True) -> bool:
    """Whether a training run must compute the training split's class pixel counts
    (`class_balance.load_or_compute_counts`): some term of config.loss names a class weight
    scheme (when the loss comes from the config: `config_loss`), or rare-class sampling is on."""
    settings = config.data.get("rare_class_sampling", None)
    if settings is not None and float(settings.temperature) > 0:
        return True
    return config_loss and any(isinstance(value, str)
                               for _, value in _class_weight_options(config.loss))


def check_class_weight_options(loss_config, num_classes: int) -> None:
    """Raises ValueError for a `class_weights` option of a term of config.loss.name that is
    neither () / None, a known scheme name (`class_balance.SCHEMES`) nor one float per class.
    An unknown loss name is left to `losses.registry.loss_terms`, which reports it."""
    try:
        options = _class_weight_options(loss_config)
    except ValueError:
        return
    for name, value in options:
        key = f"config.loss.{name}.class_weights"
        if value is None or (isinstance(value, (tuple, list)) and not len(value)):
            continue
        if isinstance(value, str):
            class_balance.check_scheme(value, key)
            continue
        fix = (f"give one float per class in class id order, a scheme computed from the training "
               f"split ({', '.join(repr(s) for s in class_balance.SCHEMES)}), or () for none")
        try:
            weights = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not a tuple of numbers; {fix}.") from None
        if weights.shape != (num_classes,):
            raise ConfigError(f"{key}={value!r} has shape {weights.shape} but the dataset has "
                              f"{num_classes} classes; {fix}.")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ConfigError(f"{key}={value!r} must be finite and >= 0; {fix}.")


def _resolve_class_weights(terms, class_counts, info) -> list:
    """`terms` with each class_weights scheme name replaced by its weights from the counts."""
    resolved = []
    for term in terms:
        scheme = term.options.get("class_weights")
        if isinstance(scheme, str):
            key = f"config.loss.{term.entry.name}.class_weights"
            class_balance.check_scheme(scheme, key)
            if class_counts is None:
                raise ValueError(
                    f"{key}={scheme!r} needs the training split's class pixel counts: pass "
                    f"semantic_loss(..., class_counts=class_balance.load_or_compute_counts(...)) "
                    f"(seg_jax.train does), or give a tuple of one float per class.")
            counts = np.asarray(class_counts)
            if counts.ndim != 2 or counts.shape[1] != info.num_classes:
                raise ValueError(f"class_counts has shape {counts.shape}; {key}={scheme!r} needs "
                                 f"[num_examples, {info.num_classes}] (class_pixel_counts).")
            weights = class_balance.class_weights(counts, scheme, info.class_names)
            logging.info("%s=%r: %s", key, scheme,
                         ", ".join(f"{n} {w:.4g}" for n, w in zip(info.class_names, weights)))
            options = dict(term.options, class_weights=tuple(float(w) for w in weights))
            term = dataclasses.replace(term, options=options)
        resolved.append(term)
    return resolved


def semantic_loss(config, info, loss_fn: Callable | None = None, *,
                  class_counts=None) -> Callable:
    """`loss(logits, labels) -> scalar`: `loss_fn` (a callable taking `(logits, labels, *,
    ignore_label)`, its other options already bound, e.g. with functools.partial) if given, else
    `config.loss`. Each part that is not one of the package's losses is probed first
    (`seg_jax.losses.check_loss`), so a broken loss fails here, naming itself, not in the train
    step's compilation.

    A term whose `class_weights` option names a scheme (`class_balance.SCHEMES`, e.g.
    'median_frequency') gets `class_balance.class_weights(class_counts, scheme)`: `class_counts`
    (int [num_examples, C], the training split's per-example class pixel counts,
    `class_balance.load_or_compute_counts`) is then required, else a ValueError says so."""
    probe = functools.partial(losses.check_loss, num_classes=info.num_classes,
                              ignore_label=info.ignore_label)
    if loss_fn is not None:
        loss = functools.partial(loss_fn, ignore_label=info.ignore_label)
        probe(loss, name=describe(loss_fn))
        logging.info("Semantic loss: %s (passed as loss_fn; config.loss.name=%r is not used).",
                     describe(loss_fn), config.loss.name)
        return loss
    terms = _resolve_class_weights(losses.registry.loss_terms(config.loss), class_counts, info)
    for term in terms:
        if not term.entry.builtin:
            probe(functools.partial(term.entry.fn, ignore_label=info.ignore_label,
                                    **term.options), name=term.entry.name)
    return losses.registry.weighted_loss(terms, config.loss.ignore_label)


def make_objective(config, info, *, panoptic: bool, loss: Callable | None = None) -> Callable:
    """`objective(outputs, batch) -> (loss, parts)` for a dataset with `info`.

    `panoptic`: the model has centre and offset heads (`ModelOutput.is_panoptic`); the dataset
    must then declare thing classes and its batches carry 'instance' ids. `loss`: the semantic
    loss (default: `semantic_loss(config, info)`), also applied to auxiliary logits.
    """
    semantic_loss_fn = semantic_loss(config, info) if loss is None else loss
    aux_weight = float(config.loss.aux_weight)
    if panoptic and not info.thing_classes:
        raise ConfigError(f"{config.model.name} is a panoptic model and needs a dataset with thing "
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
