"""Losses by name: `register_loss` adds one, `get_loss(config.loss)` builds a weighted sum of them.

The package's own losses are registered here, with the same decorator a notebook or a user module
uses, so a config, a sweep or the command line can name any of them alike:

    from seg_jax import losses

    @losses.register_loss("boundary_ce")
    def boundary_ce(logits, labels, *, ignore_label, weights=None, width=3):
        ...                                   # a scalar, nothing from ignored pixels

    config.loss.name = "cross_entropy+boundary_ce"
    config.loss.boundary_ce = ml_collections.ConfigDict({"width": 5})

A config file (or a module listed in `config.extra_modules`) that imports the registering module
makes the name usable from the command line and in every point of a sweep. Before training, a loss
that is not the package's own is run once on a small probe (`seg_jax.losses.checks`).
"""

import dataclasses
import inspect
import keyword
from typing import Callable

from seg_jax.losses.lovasz import lovasz_softmax_loss
from seg_jax.losses.pixel import cross_entropy, expected_cost_loss, focal_loss
from seg_jax.losses.region import dice_loss, jaccard_loss, tversky_loss

# Keys of config.loss itself: a loss of one of these names could not have its own options there.
RESERVED_NAMES = frozenset({"name", "ignore_label", "term_weights", "aux_weight", "weights"})
# What every loss gets from the registry rather than from its options.
_SHARED_ARGUMENTS = ("ignore_label",)


@dataclasses.dataclass(frozen=True)
class RegisteredLoss:
    name: str
    fn: Callable
    builtin: bool  # the package's own (tested in its suite, so not probed before each run)

    @property
    def where(self) -> str:
        """Where the function is defined, for error messages."""
        return f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', self.fn)}"


_REGISTRY: dict[str, RegisteredLoss] = {}


def _check_name(name) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(
            f"Loss name {name!r} is not usable: a config names a loss as config.loss.name and "
            f"keeps its options in config.loss.<name>, so the name must be a Python identifier "
            f"(letters, digits, '_'), e.g. 'boundary_ce'.")
    if name in RESERVED_NAMES:
        raise ValueError(f"Loss name {name!r} is a key of config.loss itself "
                         f"({sorted(RESERVED_NAMES)}); choose another name.")


def _check_signature(name: str, fn: Callable) -> None:
    """A loss is `fn(logits, labels, *, ignore_label, ...)`: check what can be checked now."""
    if not callable(fn):
        raise TypeError(f"register_loss({name!r}) got {fn!r}, which is not callable.")
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return
    kinds = [p.kind for p in parameters.values()]
    positional = [p for p in parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and inspect.Parameter.VAR_POSITIONAL not in kinds:
        raise TypeError(f"Loss {name!r} ({fn}) must take (logits, labels, *, ignore_label, ...); "
                        f"its signature is {inspect.signature(fn)}.")
    if "ignore_label" not in parameters and inspect.Parameter.VAR_KEYWORD not in kinds:
        raise TypeError(
            f"Loss {name!r} has no `ignore_label` keyword (signature {inspect.signature(fn)}); "
            f"every loss gets the dataset's void label and must leave those pixels out.")


def register_loss(name: str, fn: Callable | None = None, *, override: bool = False):
    """Registers `fn(logits, labels, *, ignore_label, weights=None, **options) -> scalar` as `name`.

    Used as a decorator (`@register_loss("my_loss")`, returning the function unchanged) or called
    (`register_loss("my_loss", fn)`). The name can then appear in `config.loss.name` (alone or in a
    '+' sum) and in sweeps; the options come from `config.loss.<name>`. Registering a name that is
    already taken (the package's own included) raises ValueError unless `override=True`, which is
    what re-running a notebook cell needs.
    """
    _check_name(name)

    def register(function: Callable) -> Callable:
        _check_signature(name, function)
        if name in _REGISTRY and not override:
            raise ValueError(
                f"A loss named {name!r} is already registered ({_REGISTRY[name].where}); pass "
                f"override=True to replace it, or choose another name.")
        _REGISTRY[name] = RegisteredLoss(name, function, builtin=False)
        return function

    return register if fn is None else register(fn)


def unregister_loss(name: str) -> None:
    """Removes a loss registered with `register_loss` (the package's own cannot be removed)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise KeyError(f"No loss named {name!r} is registered; registered: {registered_losses()}.")
    if entry.builtin:
        raise ValueError(f"{name!r} is one of seg_jax's own losses and stays registered.")
    del _REGISTRY[name]


def registered_losses() -> tuple[str, ...]:
    """Every loss name a config may use, sorted (the package's and the user-registered ones)."""
    return tuple(sorted(_REGISTRY))


def lookup_loss(name: str) -> RegisteredLoss:
    """The registered loss `name`; an unknown name is a ValueError listing the registered ones."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown loss {name!r}; registered losses: {list(registered_losses())}. A loss "
            f"defined outside seg_jax is registered with @seg_jax.losses.register_loss(name) in a "
            f"module that the config file imports (or that config.extra_modules lists).")
    return _REGISTRY[name]


for _name, _fn in {
    "cross_entropy": cross_entropy,
    "focal": focal_loss,
    "dice": dice_loss,
    "jaccard": jaccard_loss,
    "tversky": tversky_loss,
    "lovasz": lovasz_softmax_loss,
    "expected_cost": expected_cost_loss,
}.items():
    _REGISTRY[_name] = RegisteredLoss(_name, _fn, builtin=True)


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


def check_options(entry: RegisteredLoss, options: dict) -> None:
    """Raises ValueError naming any option in `config.loss.<name>` that the loss does not take,
    and any keyword-only argument without a default that the options leave out."""
    try:
        parameters = inspect.signature(entry.fn).parameters
    except (TypeError, ValueError):
        return
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    keywords = [p for p in list(parameters.values())[2:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    known = {p.name for p in keywords} - set(_SHARED_ARGUMENTS)
    unknown = sorted(set(options) - known)
    if unknown and not accepts_any:
        raise ValueError(
            f"config.loss.{entry.name}.{unknown[0]} is not an option of loss {entry.name!r} "
            f"({entry.where}); its options are {sorted(known)}. Remove the key or rename it.")
    missing = [p.name for p in keywords if p.default is p.empty
               and p.name not in options and p.name not in _SHARED_ARGUMENTS]
    if missing:
        raise ValueError(
            f"Loss {entry.name!r} ({entry.where}) requires option {missing[0]!r}: set "
            f"config.loss.{entry.name}.{missing[0]}.")


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


def term_names(name) -> list[str]:
    """The registered loss names of `config.loss.name` ('cross_entropy+dice' has two)."""
    names = [n.strip() for n in str(name).split("+")]
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown or not all(names):
        raise ValueError(
            f"Unknown loss config.loss.name={name!r} ({unknown or 'an empty term'}); registered "
            f"losses: {list(registered_losses())}, or several joined by '+'. A loss defined "
            f"outside seg_jax is registered with @seg_jax.losses.register_loss(name) in a module "
            f"that the config file imports (or that config.extra_modules lists).")
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


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One term of a configured loss: `weight * entry.fn(logits, labels, **shared, **options)`."""

    entry: RegisteredLoss
    weight: float
    options: dict


def loss_terms(loss_config) -> list[LossTerm]:
    """The checked terms of `config.loss` (names registered, options matching signatures)."""
    names = term_names(loss_config.name)
    term_weights = _term_weights(loss_config, names)
    terms = []
    for name, term_weight in zip(names, term_weights):
        entry = lookup_loss(name)
        options = _options(loss_config, name)
        if name == "expected_cost" and "cost" not in options:
            raise ValueError(
                "The 'expected_cost' loss needs config.loss.expected_cost.cost ([C][C])."
            )
        check_options(entry, options)
        terms.append(LossTerm(entry, term_weight, options))
    return terms


def get_loss(loss_config) -> Callable:
    """Returns `loss(logits, labels) -> scalar` for `loss_config`, a sum of weighted terms.

    Args:
      loss_config: a loss name (str: 'cross_entropy+dice', every term weighing 1 and every option,
        `ignore_label` included, at the function's default), or a ConfigDict (or anything with
        attribute access and `.get`) with
        name: a registered loss name or several joined by '+', e.g. 'cross_entropy+dice'; the
          package's are 'cross_entropy', 'focal', 'dice', 'jaccard', 'tversky', 'lovasz',
          'expected_cost', and `register_loss` adds more.
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
      ValueError: unknown names (listing the registered ones), an option a term's function does
        not take (naming it), a missing `term_weights` or `ignore_label` (naming the key
        `config.loss.<key>`), an `ignore_label` of None, a `term_weights` length that differs
        from the number of terms, 'expected_cost' without a cost matrix, or a `class_weights`
        option naming a scheme computed from the training data ('median_frequency', ...), which
        only `seg_jax.objectives.semantic_loss` (given the split's class counts) can resolve.
    """
    if isinstance(loss_config, str):
        return _weighted_sum(
            [LossTerm(lookup_loss(name), 1.0, {}) for name in term_names(loss_config)], {})
    terms = loss_terms(loss_config)
    for term in terms:
        scheme = term.options.get("class_weights")
        if isinstance(scheme, str):
            raise ValueError(
                f"config.loss.{term.entry.name}.class_weights={scheme!r} is computed from the "
                f"training split by seg_jax.train; get_loss has no data to compute it from. "
                f"Build the loss with seg_jax.objectives.semantic_loss(config, info, "
                f"class_counts=...) (counts from seg_jax.data.class_balance), or give a tuple of "
                f"one float per class.")
    return weighted_loss(terms, _config_field(loss_config, "ignore_label"))


def weighted_loss(terms: list[LossTerm], ignore_label: int) -> Callable:
    """loss(logits, labels) = sum over `terms` (`loss_terms`) of weight * fn(logits, labels,
    ignore_label=ignore_label, **options): the loss `get_loss` returns, for terms whose options
    the caller has completed (e.g. class weights computed from the training data)."""
    if ignore_label is None:
        raise ValueError("config.loss.ignore_label is None; it must be the dataset's void label.")
    return _weighted_sum(list(terms), {"ignore_label": ignore_label})


def _weighted_sum(terms: list[LossTerm], shared: dict) -> Callable:
    """loss(logits, labels) = sum of weight * fn(logits, labels, **shared, **options) over terms."""

    def loss(logits, labels):
        total = 0.0
        for term in terms:
            total = total + term.weight * term.entry.fn(logits, labels, **shared, **term.options)
        return total

    return loss
