"""Declaring a sweep: the product / zip_ / concat algebra of points, and the points' names.

A point is a dict {config path: value} of overrides of a config. `product`, `zip_` and `concat`
(also `*` and `+` on a `Sweep`) build the list; e.g. `product(zip_(a=[..], b=[..]), **{"c": [..]})`
pairs a and b value by value and crosses each pair with every c. `point_names` gives each point
the name of its workdir, e.g. 'loss=dice_lr=0.003'. Nothing here reads a config.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# ----------------------------------------------------------------------------------------------
# Points


class Sweep(Sequence):
    """An ordered list of points, each a dict {config path: value}.

    `a + b` concatenates, `a * b` crosses (as `product(a, b)`); a list of dicts also works as a
    sweep wherever one is taken.
    """

    def __init__(self, points: Iterable[Mapping[str, Any]] = ()):
        checked = []
        for point in points:
            if not isinstance(point, Mapping):
                raise TypeError(f"A sweep point must be a dict {{config path: value}}, "
                                f"got {point!r}.")
            for path in point:
                if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", path):
                    raise ValueError(f"Not a config path: {path!r} (expected e.g. "
                                     f"'optimizer.learning_rate').")
            checked.append(dict(point))
        self._points = tuple(checked)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sweep(self._points[index])
        return dict(self._points[index])

    def __len__(self) -> int:
        return len(self._points)

    def __add__(self, other) -> Sweep:
        return concat(self, other)

    def __radd__(self, other) -> Sweep:
        return concat(other, self)

    def __mul__(self, other) -> Sweep:
        return product(self, other)

    def __eq__(self, other) -> bool:
        if not isinstance(other, (Sweep, list, tuple)):
            return NotImplemented
        return [dict(p) for p in self] == [dict(p) for p in other]

    def __repr__(self) -> str:
        return f"Sweep({list(self._points)!r})"

    @property
    def paths(self) -> list[str]:
        """Every config path that some point sets, in order of first appearance."""
        return list(dict.fromkeys(path for point in self._points for path in point))


def as_sweep(points) -> Sweep:
    """`points` as a Sweep (a Sweep as it is, else a list of point dicts checked as one)."""
    return points if isinstance(points, Sweep) else Sweep(points)


def _axis(path: str, values) -> Sweep:
    # A string is a sequence too: {"loss.name": "dice"} would silently sweep 'd', 'i', 'c', 'e'.
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, range)):
        raise TypeError(f"Sweep axis {path!r}: give a list of values, got {values!r}.")
    if len(values) == 0:
        raise ValueError(f"Sweep axis {path!r} has no values.")
    return Sweep({path: value} for value in values)


def _factors(args, axes: Mapping, combine) -> list[Sweep]:
    """The parts of a product or zip: Sweeps (or lists of points) as they are, dicts of axes
    combined among themselves by `combine`, then the keyword axes one by one."""
    parts = []
    for arg in args:
        if isinstance(arg, Mapping):
            parts.append(combine(*[_axis(path, values) for path, values in arg.items()]))
        else:
            parts.append(as_sweep(arg))
    return parts + [_axis(path, values) for path, values in axes.items()]


def _merge(a: Mapping, b: Mapping) -> dict:
    shared = set(a) & set(b)
    if shared:
        raise ValueError(f"Config path(s) {sorted(shared)} set by two parts of one product or zip.")
    return {**a, **b}


def _merge_all(points) -> dict:
    merged = {}
    for point in points:
        merged = _merge(merged, point)
    return merged


def product(*factors, **axes) -> Sweep:
    """Every combination: the first factor varies slowest (as itertools.product).

    product(**{"loss.name": ["cross_entropy", "dice"], "optimizer.learning_rate": [1e-3, 3e-3]})
    is 4 points. Positional factors may be Sweeps (e.g. a `zip_`), lists of point dicts, or dicts
    of axes {path: [values]}.
    """
    points = [{}]
    for part in _factors(factors, axes, product):
        points = [_merge(a, b) for a, b in itertools.product(points, part)]
    return Sweep(points)


def zip_(*factors, **axes) -> Sweep:
    """Value by value: zip_(**{"optimizer.learning_rate": [1e-3, 1e-2], "optimizer.warmup_steps":
    [0, 100]}) is 2 points. Every factor must have the same length."""
    parts = _factors(factors, axes, zip_)
    if not parts:
        raise ValueError("zip_ needs at least one axis.")
    lengths = [len(p) for p in parts]
    if len(set(lengths)) > 1:
        names = [", ".join(p.paths) for p in parts]
        raise ValueError(f"zip_ of parts with different lengths: {dict(zip(names, lengths))}.")
    return Sweep(_merge_all(points) for points in zip(*parts))


def concat(*sweeps) -> Sweep:
    """The points of each sweep in turn (a sweep may also be a list of point dicts)."""
    return Sweep(point for s in sweeps for point in as_sweep(s))


# ----------------------------------------------------------------------------------------------
# Values


def canonical(value):
    """Plain Python values, as ml_collections holds them: tuples for sequences (numpy arrays
    too), dicts for ConfigDicts, Python numbers for numpy scalars."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    return value


def format_value(value) -> str:
    """A value as it reads in a point name (before the name is made filesystem-safe)."""
    value = canonical(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        return "-".join(f"{k}-{format_value(v)}" for k, v in value.items()) or "empty"
    if isinstance(value, (list, tuple)):
        return "-".join(format_value(v) for v in value) or "empty"
    return str(value) or "empty"


def display_value(value) -> str:
    """A value as the tables and listings show it: floats to 6 digits, strings as they are."""
    value = canonical(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return repr(value)


# ----------------------------------------------------------------------------------------------
# Names

# Short labels for common leaves; a generic leaf ('loss.name') is shown by its parent ('loss').
_ABBREVIATIONS = {"learning_rate": "lr", "weight_decay": "wd", "batch_size": "bs",
                  "num_train_steps": "steps"}
_GENERIC_LEAVES = frozenset({"name"})
MAX_NAME_LENGTH = 100  # well under the 255 bytes of a file name, readable in a listing


def _label_candidates(path: str) -> list[str]:
    """Ever longer labels for `path`, ending with the full path (always unique)."""
    parts = path.split(".")
    if parts[-1] in _GENERIC_LEAVES and len(parts) > 1:
        parts = parts[:-1]
    else:
        parts = parts[:-1] + [_ABBREVIATIONS.get(parts[-1], parts[-1])]
    candidates = [".".join(parts[-k:]) for k in range(1, len(parts) + 1)] + [path]
    return list(dict.fromkeys(candidates))


def short_labels(paths: Sequence[str]) -> dict[str, str]:
    """{path: label}: the shortest labels that tell the paths apart (case-insensitively), e.g.
    'optimizer.learning_rate' -> 'lr', 'loss.dice.smooth' + 'loss.jaccard.smooth' -> 'dice.smooth',
    'jaccard.smooth'."""
    level = {path: 0 for path in paths}
    while True:
        labels = {path: _label_candidates(path)[level[path]] for path in paths}
        groups: dict[str, list[str]] = {}
        for path, label in labels.items():
            groups.setdefault(label.lower(), []).append(path)
        clashing = [p for group in groups.values() if len(group) > 1 for p in group
                    if level[p] < len(_label_candidates(p)) - 1]
        if not clashing:
            return labels
        for path in clashing:
            level[path] += 1


def _safe(text: str) -> str:
    # Letters, digits and . _ + - only: safe on every filesystem and in a shell; the rest is '-'.
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text)


def _key(point: Mapping) -> str:
    """The same text for two points exactly when they set the same values."""
    return repr(sorted((k, canonical(v)) for k, v in point.items()))


def _hashed(name: str, point: Mapping) -> str:
    """`name` cut to fit with '~' and a hash of the point's overrides appended."""
    digest = hashlib.sha1(_key(point).encode()).hexdigest()
    return f"{name[:MAX_NAME_LENGTH - 9]}~{digest[:8]}"


def _check_distinct(points: Sequence[Mapping]) -> None:
    seen: dict[str, int] = {}
    for i, point in enumerate(points):
        key = _key(point)
        if key in seen:
            raise ValueError(f"Sweep points {seen[key]} and {i} are the same: {point}.")
        seen[key] = i


def point_names(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """One readable, filesystem-safe, unique name per point, e.g. 'loss=dice_lr=0.003'.

    Labels are the paths' last components (see `short_labels`), in the order the sweep first
    sets them; values are made filesystem-safe. Two different points whose names would still
    coincide (values that differ only in unsafe characters or in case, for case-insensitive
    filesystems) get '~' and a hash of their overrides appended; a name over MAX_NAME_LENGTH is
    cut and gets the hash. The same points always get the same names, so a re-run finds its
    workdirs. Raises ValueError for two identical points.
    """
    points = [dict(p) for p in points]
    _check_distinct(points)
    labels = short_labels(list(dict.fromkeys(path for p in points for path in p)))
    order = {path: n for n, path in enumerate(labels)}
    names = []
    for point in points:
        parts = [f"{labels[path]}={_safe(format_value(point[path]))}"
                 for path in sorted(point, key=order.__getitem__)]
        name = "_".join(parts) if parts else "base"
        names.append(_hashed(name, point) if len(name) > MAX_NAME_LENGTH else name)
    # Safe values have no '~': a name with a '~<hash>' can only meet another such name, and only
    # when the hashes' prefixes agree (the index then decides).
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.lower(), []).append(i)
    for group in groups.values():
        if len(group) > 1:
            for i in group:
                names[i] = _hashed(names[i], points[i])
    if len({n.lower() for n in names}) < len(names):  # a hash prefix collision: index decides
        names = [f"{name}~{i}" for i, name in enumerate(names)]
    return names
