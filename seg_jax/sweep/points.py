"""A sweep bound to its config: loading `get_sweep`, checking every point against the config,
and applying one point's overrides to a parsed config in place.

Every point is checked with the parser that `python -m seg_jax.main` uses for its
`--config.<path>=<value>` flags (ml_collections' overrides of the locked config), before anything
runs: unknown keys (with ml_collections' suggestion), values of the wrong type, and values that
would not reach the run unchanged. A point's value for a path wins over the sweep's own
`--config.<path>` flags (also over those under a dict the point replaces as a whole).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from seg_jax.errors import ConfigError
from seg_jax.sweep.declare import Sweep, as_sweep, canonical, display_value, point_names


class SweepError(ConfigError):
    """A sweep that cannot run as declared (raised before any point starts)."""


@dataclasses.dataclass(frozen=True)
class Point:
    index: int
    name: str
    overrides: dict
    # The --config.<path>=<value> flags that give a run of the config this point: the sweep's own
    # --config overrides (those the point does not set), then the point's. Validated by parsing.
    config_args: tuple = ()
    num_train_steps: int | None = None
    # {path: value} for each override as that parse read it back (the field's own type): what
    # `apply_point` sets on a config.
    values: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


def _config_file(config_arg: str) -> str:
    return config_arg.split(":", 1)[0]


def _ensure_import_root(path: str) -> None:
    # As seg_jax.main does: config files import their base with `from configs import default`.
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)


def _load_module(path: str):
    _ensure_import_root(path)
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"_seg_jax_sweep_config_{digest}", path)
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs, as an import would: a dataclass defined in the file looks its
    # module up in sys.modules (to resolve string annotations).
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - reported as the config file's problem
        del sys.modules[spec.name]
        raise SweepError(f"{path} does not load: {type(e).__name__}: {e}") from e
    return module


def load_sweep(config_arg: str) -> Sweep:
    """The points of `get_sweep(arg)` in the config file of `config_arg` ('path.py[:arg]')."""
    path, has_arg, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise SweepError(f"No config file at {path!r} (working directory {os.getcwd()}).")
    get_sweep = getattr(_load_module(path), "get_sweep", None)
    if get_sweep is None:
        raise SweepError(
            f"{path} declares no sweep: define get_sweep(arg) next to get_config(arg), returning "
            f"its points (seg_jax.sweep.product / zip_ / concat; see configs/shapes.py).")
    try:
        points = as_sweep(get_sweep(arg) if has_arg else get_sweep())
    except Exception as e:  # noqa: BLE001 - any mistake in get_sweep is reported the same way
        raise SweepError(f"{path}: get_sweep({arg!r}) failed: {type(e).__name__}: {e}") from e
    if not points:
        raise SweepError(f"{path}: get_sweep({arg!r}) returned no points.")
    return points


def _parse_config(config_arg: str, config_args: Sequence[str]):
    """The config exactly as `--config=<config_arg> <config_args>` gives it to seg_jax.main."""
    from absl import flags
    from ml_collections import config_flags

    _ensure_import_root(_config_file(config_arg))
    argv = ["seg_jax.main", f"--config={config_arg}", *config_args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    with warnings.catch_warnings():  # ml_collections loads config files with a deprecated call
        warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
        flag_values(argv)
    return flag_values["config"].value


def cli_value(value, field_type) -> str:
    """`value` written so that ml_collections' parser for a `field_type` field reads it back.

    str fields take the text as it is; bool fields true/false; numbers and tuples their Python
    literal (parsed by float() / int() / ast.literal_eval); other fields a literal too, so that a
    string stays a string.
    """
    value = canonical(value)
    if field_type is str and isinstance(value, str):
        return value
    if field_type is bool and isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _clean_error(error: Exception) -> str:
    message = str(error).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
    hint = re.search(r"Did you mean [^?]*\?", message)
    return hint.group(0) if hint and isinstance(error, AttributeError) else message


def _field_types(config_arg: str):
    """path -> the type of that field of the config (raises for an unknown path)."""
    from ml_collections.config_flags import config_path

    try:
        base_config = _parse_config(config_arg, [])
    except Exception as e:  # noqa: BLE001 - a config that does not load is not a sweep problem
        raise SweepError(f"{_config_file(config_arg)}: the config does not load: "
                         f"{_clean_error(e)}") from e
    return lambda path: config_path.get_type(path, base_config)


def _flag_args(overrides: Mapping[str, Any], field_type) -> list[str]:
    return [f"--config.{p}={cli_value(v, field_type(p))}" for p, v in overrides.items()]


def config_flag_args(config_arg: str, overrides: Mapping[str, Any]) -> list[str]:
    """The --config.<path>=<value> flags that give `overrides` to a run of `config_arg`."""
    return _flag_args(overrides, _field_types(config_arg)) if overrides else []


def _problems(config_arg: str, problems: list[str]) -> str:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    return (f"the sweep of {config_arg} does not fit its config (nothing was run):\n  "
            + "\n  ".join(shown))


def _unknown_keys(sweep: Sweep, field_type) -> list[str]:
    """One line per config path that the config does not have, naming the points that set it."""
    unknown: dict[str, tuple[str, list[int]]] = {}  # path -> (why, the points that set it)
    for i, overrides in enumerate(sweep):
        for path in overrides:
            if path in unknown:
                unknown[path][1].append(i)
                continue
            try:
                field_type(path)
            except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
                detail = _clean_error(e)  # a suggestion, or why ('... is a float, not a dict')
                unknown[path] = ("" if detail.strip("'\"") in path else f": {detail}", [i])
    return [f"unknown config key {path!r} (point{'s' if len(at) > 1 else ''} "
            f"{', '.join(map(str, at))}){why}" for path, (why, at) in unknown.items()]


def _resolve_point(config_arg: str, index: int, name: str, overrides: dict,
                   base_overrides: dict, field_type) -> tuple[Point | None, list[str]]:
    """One point with its flags, parsed as its run parses them; or the problems found."""
    from ml_collections.config_flags import config_path

    # The sweep's own overrides except those the point replaces (also those under a dict it
    # replaces as a whole): a tuple given twice would otherwise be concatenated.
    kept = {p: v for p, v in base_overrides.items()
            if not any(p == q or p.startswith(q + ".") for q in overrides)}
    args = _flag_args({**kept, **overrides}, field_type)
    try:
        config = _parse_config(config_arg, args)
    except Exception as e:  # noqa: BLE001 - flags.Error, ValueError, TypeError, ...
        return None, [f"point {index} ({name}): {_clean_error(e)}"]
    problems, values = [], {}
    for path, value in overrides.items():
        values[path] = config_path.get_value(path, config)
        if canonical(values[path]) != canonical(value):
            kind = field_type(path)
            problems.append(
                f"point {index} ({name}): {path}={value!r} does not reach the run unchanged (a "
                f"{getattr(kind, '__name__', kind)} field: it reads back as "
                f"{canonical(values[path])!r}).")
    point = Point(index=index, name=name, overrides=dict(overrides), config_args=tuple(args),
                  num_train_steps=config.get("num_train_steps", None), values=values)
    return point, problems


def resolve(config_arg: str, base_overrides: Mapping[str, Any] | None = None,
            points: Iterable[Mapping[str, Any]] | None = None) -> list[Point]:
    """The sweep of `config_arg` as runnable points: named, validated, with their flags.

    Args:
      config_arg: 'path/to/config.py' or 'path/to/config.py:arg', as given to --config.
      base_overrides: {path: value} applied to every point first (the --config.<path> flags given
        to the sweep); a point's own value for a path wins.
      points: the points (default: the config file's get_sweep(arg)).

    Every point is checked before anything runs, with the runner's own parser (ml_collections'
    --config overrides on the locked config): unknown keys (with ml_collections' suggestion),
    values of the wrong type, and values that would not read back unchanged from the command
    line. Raises SweepError listing every problem.
    """
    sweep = load_sweep(config_arg) if points is None else as_sweep(points)
    try:
        names = point_names(sweep)
    except ValueError as e:
        raise SweepError(f"{_config_file(config_arg)}: {e}") from e
    field_type = _field_types(config_arg)
    unknown = _unknown_keys(sweep, field_type)
    if unknown:
        raise SweepError(_problems(config_arg, unknown))
    resolved, problems = [], []
    for i, (name, overrides) in enumerate(zip(names, sweep)):
        point, found = _resolve_point(config_arg, i, name, overrides, dict(base_overrides or {}),
                                      field_type)
        problems += found
        resolved.append(point)
    if problems:
        raise SweepError(_problems(config_arg, problems))
    return resolved


def from_flags(flag_values, index: int | None = None) -> tuple[str, list[Point]]:
    """(config_arg, points) of the sweep that seg_jax.main's flags name, every point checked
    against the config with the command line's --config.<path> overrides; raises SweepError."""
    config_flag = flag_values["config"]
    if "mode" in flag_values and flag_values["mode"].value != "train":
        raise SweepError(f"sweeps train (--mode=train); got --mode={flag_values['mode'].value}.")
    points = resolve(config_flag.config_filename, config_flag.override_values)
    if index is not None and not 0 <= index < len(points):
        raise SweepError(f"--sweep_index={index}, but the sweep of {config_flag.config_filename} "
                         f"has {len(points)} points (0 to {len(points) - 1}).")
    return config_flag.config_filename, points


def swept_flag_notes(override_values: Mapping[str, Any], points: Sequence[Point]) -> list[str]:
    """A note for each --config.<path> flag that some point overrides with its own value."""
    return [f"Note: --config.{path}={display_value(value)} is swept; the points that set it use "
            f"their own value." for path, value in override_values.items()
            if any(path == q or path.startswith(q + ".") for p in points for q in p.overrides)]


def apply_point(config, point: Point) -> None:
    """Sets `point`'s overrides on `config` (a parsed ConfigDict, locked or not) in place, as its
    --config.<path> flags would: the same values, set the same way, after those already there."""
    from ml_collections.config_flags import config_path

    for path in point.overrides:
        config_path.set_value(path, config, point.values[path])
