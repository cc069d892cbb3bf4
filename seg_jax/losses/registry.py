"""Losses by name, and `get_loss(config.loss)`: a weighted sum of named terms.

`_LOSSES` maps each name a config may use to its loss function; the table and `get_loss`, which
reads it, live here, so whatever adds names to the table belongs here too.
"""

from typing import Callable

import ml_collections

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


def get_loss(loss_config) -> Callable:
    """Returns `loss(logits, labels) -> scalar` for `loss_config`, a sum of weighted terms.

    Args:
      loss_config: a loss name (str, all options at their defaults), or a ConfigDict (or anything
        with attribute access and `.get`) with
        name: a loss name or several joined by '+', e.g. 'cross_entropy+dice'; names are
          'cross_entropy', 'focal', 'dice', 'jaccard', 'tversky', 'lovasz', 'expected_cost'.
        weights: optional tuple of floats, one per term (default: all 1.0; None or () too).
        ignore_label: passed to every term.
        <name>: optional sub-dict of keyword options for that term, e.g. `focal.gamma`,
          `dice.smooth`, `tversky.alpha`, `expected_cost.cost` ([C][C] nested tuple, required
          for 'expected_cost'). Options not given take the function defaults.

    Returns:
      loss(logits, labels) = sum_k weights[k] * term_k(logits, labels, ignore_label=..., **opts_k).

    Raises:
      ValueError: unknown names (listing the valid ones), a weights length that differs from the
        number of terms, or 'expected_cost' without a cost matrix.
    """
    if isinstance(loss_config, str):  # get_loss('cross_entropy+dice'): every option at its default
        loss_config = ml_collections.ConfigDict({"name": loss_config})
    names = [n.strip() for n in str(loss_config.name).split("+")]
    unknown = [n for n in names if n not in _LOSSES]
    if unknown or not names:
        raise ValueError(
            f"Unknown loss config.loss.name={loss_config.name!r} ({unknown}); valid names: "
            f"{sorted(_LOSSES)}, or several joined by '+'."
        )
    term_weights = loss_config.get("weights", None) if hasattr(loss_config, "get") else None
    if term_weights is None or len(term_weights) == 0:
        term_weights = (1.0,) * len(names)
    if len(term_weights) != len(names):
        raise ValueError(
            f"config.loss.weights={tuple(term_weights)} has {len(term_weights)} entries but "
            f"config.loss.name={loss_config.name!r} has {len(names)} terms."
        )
    ignore_label = loss_config.get("ignore_label", 255) if hasattr(loss_config, "get") else 255
    terms = []
    for name, term_weight in zip(names, term_weights):
        options = _options(loss_config, name)
        if name == "expected_cost" and "cost" not in options:
            raise ValueError(
                "The 'expected_cost' loss needs config.loss.expected_cost.cost ([C][C])."
            )
        terms.append((_LOSSES[name], float(term_weight), options))

    def loss(logits, labels):
        total = 0.0
        for fn, term_weight, options in terms:
            total = total + term_weight * fn(logits, labels, ignore_label=ignore_label, **options)
        return total

    return loss
