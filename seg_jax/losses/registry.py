"""Losses by name, and `get_loss(config.loss)`: a weighted sum of named terms.

`_LOSSES` maps each name a config may use to its loss function; the table and `get_loss`, which
reads it, live here, so whatever adds names to the table belongs here too.
"""

from typing import Callable


from seg_jax.losses.lovasz import lovasz_softmax_loss
from seg_jax.losses.pixel import cross_entropy, expected_cost_loss, focal_loss
from seg_jax.losses.region import dice_loss, jaccard_loss, tversky_loss

_LOSSES: dict[str, Callable] = {
    "cross_entropy": cross_entropy,
    "focal": focal_loss,
    "dice": dice_loss,
    "jaccard": jaccard_loss,
    "tversky": tversky_loss,
    "lovasz": lovasz_softmax_loss,
    "expected_cost": expected_cost_loss,
}


def _is_unset(value) -> bool:
    return value is None or (isinstance(value, (tuple, list)) and len(value) == 0)


def _options(loss_config, name: str) -> dict:
    """The options in `loss_config.<name>` as keyword arguments, with empty values dropped.

    None and () mean "use the function default" (e.g. `focal.alpha = ()` is alpha=None), so that
    every option can have a typed default in the config and still be overridden from the
    command line.
    """
    sub = loss_config.get(name, None) if hasattr(loss_config, "get") else None
    if sub is None:
        return {}
    items = sub.to_dict() if hasattr(sub, "to_dict") else dict(sub)
    return {k: v for k, v in items.items() if not _is_unset(v)}


_MISSING = object()


def _lookup(loss_config, key: str):
    if hasattr(loss_config, "get"):
        return loss_config.get(key, _MISSING)
    return getattr(loss_config, key, _MISSING)


def _config_field(loss_config, key: str):
    """`config.loss.<key>`, which must be there: the config file holds every key's default, and a
    default repeated here could silently disagree with it."""
    value = _lookup(loss_config, key)
    if value is _MISSING:
        # The per-term weights were `config.loss.weights`, the name every loss uses for per-pixel
        # weights; an old config that still says so must not lose its term weights silently.
        renamed = key == "term_weights" and _lookup(loss_config, "weights") is not _MISSING
        hint = " (config.loss.weights is its former name: rename it)" if renamed else ""
        raise ValueError(f"config.loss.{key} is missing{hint}; configs/default.py defines it.")
    return value


def _term_names(name) -> list[str]:
    names = [n.strip() for n in str(name).split("+")]
    unknown = [n for n in names if n not in _LOSSES]
    if unknown or not names:
        raise ValueError(
            f"Unknown loss config.loss.name={name!r} ({unknown}); valid names: "
            f"{sorted(_LOSSES)}, or several joined by '+'."
        )
    return names


def _term_weights(loss_config, names: list[str]) -> tuple[float, ...]:
    """`config.loss.term_weights` as floats, one per term; None or () weighs every term 1."""
    term_weights = _config_field(loss_config, "term_weights")
    if _is_unset(term_weights):
        return (1.0,) * len(names)
    if len(term_weights) != len(names):
        raise ValueError(
            f"config.loss.term_weights={tuple(term_weights)} has {len(term_weights)} entries but "
            f"config.loss.name={loss_config.name!r} has {len(names)} terms."
        )
    return tuple(float(w) for w in term_weights)


def get_loss(loss_config) -> Callable:
    """Returns `loss(logits, labels) -> scalar` for `loss_config`, a sum of weighted terms.

    Args:
      loss_config: a loss name (str: 'cross_entropy+dice', every term weighing 1 and every option,
        `ignore_label` included, at the function's default), or a ConfigDict (or anything with
        attribute access and `.get`) with
        name: a loss name or several joined by '+', e.g. 'cross_entropy+dice'; names are
          'cross_entropy', 'focal', 'dice', 'jaccard', 'tversky', 'lovasz', 'expected_cost'.
        term_weights: a tuple of floats, one per term; None or () weigh every term 1.0. (Not
          `weights`: that is every loss's per-pixel weight argument.)
        ignore_label: passed to every term.
        <name>: optional sub-dict of keyword options for that term, e.g. `focal.gamma`,
          `dice.smooth`, `tversky.alpha`, `expected_cost.cost` ([C][C] nested tuple, required
          for 'expected_cost'). Options not given take the function defaults.

    Returns:
      loss(logits, labels) =
        sum_k term_weights[k] * term_k(logits, labels, ignore_label=..., **opts_k).

    Raises:
      ValueError: unknown names (listing the valid ones), a missing `term_weights` or
        `ignore_label` (naming the key `config.loss.<key>`), an `ignore_label` of None, a
        `term_weights` length that differs from the number of terms, or 'expected_cost' without
        a cost matrix.
    """
    if isinstance(loss_config, str):
        return _weighted_sum([(_LOSSES[name], 1.0, {}) for name in _term_names(loss_config)], {})
    names = _term_names(loss_config.name)
    term_weights = _term_weights(loss_config, names)
    ignore_label = _config_field(loss_config, "ignore_label")
    if ignore_label is None:
        raise ValueError("config.loss.ignore_label is None; it must be the dataset's void label.")
    terms = []
    for name, term_weight in zip(names, term_weights):
        options = _options(loss_config, name)
        if name == "expected_cost" and "cost" not in options:
            raise ValueError(
                "The 'expected_cost' loss needs config.loss.expected_cost.cost ([C][C])."
            )
        terms.append((_LOSSES[name], term_weight, options))
    return _weighted_sum(terms, {"ignore_label": ignore_label})


def _weighted_sum(terms, shared: dict) -> Callable:
    """loss(logits, labels) = sum of weight * fn(logits, labels, **shared, **options) over terms."""

    def loss(logits, labels):
        total = 0.0
        for fn, term_weight, options in terms:
            total = total + term_weight * fn(logits, labels, **shared, **options)
        return total

    return loss
