"""The engine of the torchvision converters: torch state dict -> flax variables, checked.

A conv `weight` `[O, I, kh, kw]` becomes a flax `kernel` `[kh, kw, I, O]`, a BatchNorm
`weight`/`bias` becomes `scale`/`bias` in 'params' and `running_mean`/`running_var` become
`mean`/`var` in 'batch_stats'; `num_batches_tracked` has no use here. `convert_torchvision` walks
the flax variable tree the model really creates, fetches the torch key of every leaf through a
per-architecture `ModuleKey`, and checks that every leaf is filled exactly once with the right
shape and that every torch key is used or explicitly ignored; errors name the keys.
"""

import collections
from typing import Any, Callable, Iterable, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging


StateDict = Mapping[str, np.ndarray]
Variables = dict[str, Any]


# Flax leaf name -> torch parameter/buffer name, per collection.
_TORCH_LEAF_NAMES = {
    "params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
    "batch_stats": {"mean": "running_mean", "var": "running_var"},
}

# Maps the path of a flax Conv/BatchNorm module, e.g. ('layer1_0', 'conv2', 'bn'), to the name of
# its torch module, e.g. 'layer1.0.bn2'; raises `NoCounterpart` for modules torch does not have.
ModuleKey = Callable[[tuple[str, ...]], str]


class NoCounterpart(ValueError):
    """Raised by a `ModuleKey` for a flax module that has no torch counterpart."""


def conv_bn(conv_key: str, bn_key: str) -> Callable[[str], str]:
    """For a `ConvBNAct` child: its 'conv' maps to `conv_key`, its 'bn' to `bn_key`."""
    return lambda child: {"conv": conv_key, "bn": bn_key}[child]


def _torch_value(array: np.ndarray) -> np.ndarray:
    # Conv weight [O, I, kh, kw] -> flax kernel [kh, kw, I, O]; a Linear weight [O, I] -> [I, O].
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


def _is_ignored(key: str, ignore_prefixes: Iterable[str]) -> bool:
    return key.endswith(".num_batches_tracked") or any(key.startswith(p) for p in ignore_prefixes)


def convert_torchvision(
    state_dict: StateDict,
    target: Mapping[str, Any],
    module_key: ModuleKey,
    *,
    ignore_prefixes: Iterable[str] = (),
    description: str = "model",
) -> Variables:
    """Fills every leaf of `target` from `state_dict`; the engine of the converters below.

    Args:
      state_dict: `{torch name: array}`, e.g. from `read_torch_state_dict`.
      target: `{'params': ..., 'batch_stats': ...}` of the flax model, arrays or
        `jax.ShapeDtypeStruct`s (e.g. `jax.eval_shape` of `model.init`); gives the paths, shapes
        and dtypes of the result.
      module_key: flax Conv/BatchNorm module path -> torch module name.
      ignore_prefixes: torch keys that may stay unused (e.g. 'fc.'); they are logged.
        `num_batches_tracked` buffers are always ignored.
      description: what is converted, for error messages.

    Returns:
      `{'params': ..., 'batch_stats': ...}` with `target`'s structure, NumPy arrays of its dtypes.

    Raises:
      ValueError listing every problem, with the keys (up to 5 of each kind): flax variables
      without a torchvision counterpart, torch keys missing, claimed twice, of the wrong shape,
      or unused.
    """
    ignore_prefixes = tuple(ignore_prefixes)
    problems: dict[str, list[str]] = collections.defaultdict(list)
    claimed: dict[str, str] = {}
    variables: Variables = {}
    # 'params' first: the order a reader expects in the messages (pytrees sort 'batch_stats' first).
    for collection in sorted(target, key=lambda c: (c != "params", c)):
        if collection not in _TORCH_LEAF_NAMES:
            problems["variable collections without a torchvision counterpart"].append(collection)
            continue
        converted = {}
        for path, leaf in flax.traverse_util.flatten_dict(target[collection]).items():
            flax_name = f"{collection}/{'/'.join(path)}"
            leaf_name = _TORCH_LEAF_NAMES[collection].get(path[-1])
            try:
                if leaf_name is None:
                    raise NoCounterpart()
                torch_key = f"{module_key(tuple(path[:-1]))}.{leaf_name}"
            except (NoCounterpart, KeyError, IndexError):
                problems["flax variables without a torchvision counterpart"].append(
                    repr(flax_name)
                )
                continue
            if torch_key in claimed:
                problems["torch keys claimed twice"].append(
                    f"{torch_key!r} by {claimed[torch_key]!r} and {flax_name!r}"
                )
                continue
            claimed[torch_key] = flax_name
            if torch_key not in state_dict:
                problems["missing torch keys"].append(
                    f"{torch_key!r} (for {flax_name!r}, shape {tuple(leaf.shape)})"
                )
                continue
            torch_shape = tuple(np.shape(state_dict[torch_key]))
            value = _torch_value(np.asarray(state_dict[torch_key]))
            if value.shape != tuple(leaf.shape):
                as_flax = f" ({value.shape} as a flax value)" if value.shape != torch_shape else ""
                problems["shape mismatches"].append(
                    f"{torch_key!r} has shape {torch_shape}{as_flax} but {flax_name!r} has "
                    f"{tuple(leaf.shape)}"
                )
                continue
            converted[path] = np.ascontiguousarray(value, dtype=leaf.dtype)
        variables[collection] = flax.traverse_util.unflatten_dict(converted)

    unused = [key for key in state_dict if key not in claimed]
    unexpected = [key for key in unused if not _is_ignored(key, ignore_prefixes)]
    if unexpected:
        problems["torch keys with no place in this model"] = [repr(key) for key in unexpected]
    if problems:
        lines = [
            f"  {kind} ({len(items)}): {'; '.join(items[:5])}{'; ...' if len(items) > 5 else ''}"
            for kind, items in problems.items()
        ]
        raise ValueError(
            f"{description}: the state dict does not fill this model exactly. Does the file hold "
            "this architecture (preset, width)?\n" + "\n".join(lines)
        )
    ignored = [key for key in unused if not key.endswith(".num_batches_tracked")]
    if ignored:
        logging.info("%s: ignored %d torch keys: %s", description, len(ignored), ignored)
    return variables


def variable_shapes(model: Any, height: int = 64, width: int = 64) -> Variables:
    """Shapes and dtypes of `model.init`'s variables, computed without running it."""
    images = jnp.zeros((1, height, width, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
