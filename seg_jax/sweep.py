"""Sweeps declared next to a config: points, their names, validation, running and the results.

A config file may declare a sweep beside `get_config(arg)`:

    from seg_jax import sweep

    def get_sweep(arg=None):      # arg: the text after ':' in --config, as for get_config
        return sweep.product(**{"loss.name": ["cross_entropy", "dice"],
                                "optimizer.learning_rate": [1e-3, 3e-3]})

A point is a dict {config path: value} of overrides of that config. `product`, `zip_` and
`concat` (also `*` and `+` on a `Sweep`) build the list; e.g. `product(zip_(a=[..], b=[..]),
**{"c": [..]})` pairs a and b value by value and crosses each pair with every c.

The runner (`python -m seg_jax.main --config=X --workdir=W ...`):

  --sweep_list          prints each point's index, status, name and overrides, and exits
  --sweep               runs every point into W/<point name>/ (--sweep_parallel=K at a time)
  --sweep_index=i       runs point i only (one task of a job array)

Each point runs as its own `python -m seg_jax.main --config=X --workdir=W/<name>
--config.<path>=<value> ...` process, with the sweep's other flags and --config overrides: a
crash (or an XLA abort) in one point cannot take the others down, and XLA flags and memory are
per process. --config.<path> flags given to the sweep apply to every point (a point's own value
for that path wins). With K > 1 the points allocate accelerator memory as they need it
(XLA_PYTHON_CLIENT_PREALLOCATE=false unless set), so that K of them can share one device. A
point's output goes to W/<name>/sweep_log.txt and its outcome (exit code, the end of the log
when it failed, wall time) to W/<name>/sweep_status.json. Running a sweep again skips the
finished points and re-runs the others, which resume from their checkpoints.

W/sweep_results.md, .csv and .png (`collect_results`) rank the points by the main metric
(mean IoU, or PQ for panoptic runs); they are rebuilt after every point and can be rebuilt at
any time, also for a sweep still running or partly failed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from seg_jax.reporting import atomic_write

MANIFEST = "sweep.json"
STATUS_FILE = "sweep_status.json"
LOG_FILE = "sweep_log.txt"
RESULTS_MD = "sweep_results.md"
RESULTS_CSV = "sweep_results.csv"
RESULTS_PNG = "sweep_results.png"

# Flags that belong to the sweep itself; every other flag given to the sweep reaches each point.
_SWEEP_FLAGS = frozenset({"config", "workdir", "sweep", "sweep_parallel", "sweep_index",
                          "sweep_list", "flagfile"})


class SweepError(ValueError):
    """A sweep that cannot run as declared (raised before any point starts)."""


# ----------------------------------------------------------------------------------------------
# Declaring points


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
            parts.append(arg if isinstance(arg, Sweep) else Sweep(arg))
    return parts + [_axis(path, values) for path, values in axes.items()]


def _merge(a: Mapping, b: Mapping) -> dict:
    shared = set(a) & set(b)
    if shared:
        raise ValueError(f"Config path(s) {sorted(shared)} set by two parts of one product or zip.")
    return {**a, **b}


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


def _merge_all(points) -> dict:
    merged = {}
    for point in points:
        merged = _merge(merged, point)
    return merged


def concat(*sweeps) -> Sweep:
    """The points of each sweep in turn (a sweep may also be a list of point dicts)."""
    return Sweep(point for s in sweeps for point in (s if isinstance(s, Sweep) else Sweep(s)))


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


def format_value(value) -> str:
    """A value as it reads in a point name (before the name is made filesystem-safe)."""
    value = _canonical(value)
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


def _safe(text: str) -> str:
    # Letters, digits and . _ + - only: safe on every filesystem and in a shell; the rest is '-'.
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text)


def _canonical(value):
    """Plain Python values, as ml_collections holds them: tuples for sequences (numpy arrays
    too), dicts for ConfigDicts, Python numbers for numpy scalars."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    return value


def _digest(point: Mapping) -> str:
    text = repr(sorted((k, _canonical(v)) for k, v in point.items()))
    return hashlib.sha1(text.encode()).hexdigest()


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
    seen: dict[str, int] = {}
    for i, point in enumerate(points):
        key = repr(sorted((k, _canonical(v)) for k, v in point.items()))
        if key in seen:
            raise ValueError(f"Sweep points {seen[key]} and {i} are the same: {point}.")
        seen[key] = i
    labels = short_labels(list(dict.fromkeys(path for p in points for path in p)))
    order = {path: n for n, path in enumerate(labels)}
    names = []
    for point in points:
        parts = [f"{labels[path]}={_safe(format_value(point[path]))}"
                 for path in sorted(point, key=order.__getitem__)]
        name = "_".join(parts) if parts else "base"
        if len(name) > MAX_NAME_LENGTH:
            name = f"{name[:MAX_NAME_LENGTH - 9]}~{_digest(point)[:8]}"
        names.append(name)
    # Safe values have no '~': a name with a '~<hash>' can only meet another such name, and only
    # when the hashes' prefixes agree (the index then decides).
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.lower(), []).append(i)
    for group in groups.values():
        if len(group) > 1:
            for i in group:
                names[i] = f"{names[i][:MAX_NAME_LENGTH - 9]}~{_digest(points[i])[:8]}"
    if len({n.lower() for n in names}) < len(names):  # a hash prefix collision: index decides
        names = [f"{name}~{i}" for i, name in enumerate(names)]
    return names


# ----------------------------------------------------------------------------------------------
# Points bound to a config: loading, validation and the command of each


@dataclasses.dataclass(frozen=True)
class Point:
    index: int
    name: str
    overrides: dict
    # The --config.<path>=<value> flags of this point's run: the sweep's own --config overrides
    # (those the point does not set), then the point's. Validated by parsing them.
    config_args: tuple = ()
    num_train_steps: int | None = None


def _config_file(config_arg: str) -> str:
    return config_arg.split(":", 1)[0]


def _ensure_import_root(path: str) -> None:
    # As seg_jax.main does: config files import their base with `from configs import default`.
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)


def load_sweep(config_arg: str) -> Sweep:
    """The points of `get_sweep(arg)` in the config file of `config_arg` ('path.py[:arg]')."""
    path, has_arg, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise SweepError(f"No config file at {path!r} (working directory {os.getcwd()}).")
    _ensure_import_root(path)
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    module_name = f"_seg_jax_sweep_config_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - reported as the config file's problem
        raise SweepError(f"{path} does not load: {type(e).__name__}: {e}") from e
    get_sweep = getattr(module, "get_sweep", None)
    if get_sweep is None:
        raise SweepError(
            f"{path} declares no sweep: define get_sweep(arg) next to get_config(arg), returning "
            f"its points (seg_jax.sweep.product / zip_ / concat; see configs/shapes.py).")
    try:
        raw = get_sweep(arg) if has_arg else get_sweep()
        points = raw if isinstance(raw, Sweep) else Sweep(raw)
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
    value = _canonical(value)
    if field_type is str and isinstance(value, str):
        return value
    if field_type is bool and isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _clean_error(error: Exception) -> str:
    message = str(error).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
    hint = re.search(r"Did you mean [^?]*\?", message)
    return hint.group(0) if hint and isinstance(error, AttributeError) else message


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
    config_file = _config_file(config_arg)
    if points is None:
        sweep = load_sweep(config_arg)
    else:
        sweep = points if isinstance(points, Sweep) else Sweep(points)
    try:
        names = point_names(sweep)
    except ValueError as e:
        raise SweepError(f"{config_file}: {e}") from e
    base_overrides = dict(base_overrides or {})
    try:
        base_config = _parse_config(config_arg, [])
    except Exception as e:  # noqa: BLE001 - a config that does not load is not a sweep problem
        raise SweepError(f"{config_file}: the config does not load: {_clean_error(e)}") from e

    def field_type(path):
        from ml_collections.config_flags import config_path

        return config_path.get_type(path, base_config)

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
    if unknown:
        raise SweepError(_problems(config_arg, [
            f"unknown config key {path!r} (point{'s' if len(at) > 1 else ''} "
            f"{', '.join(map(str, at))}){why}" for path, (why, at) in unknown.items()]))

    problems = []

    resolved = []
    for i, (name, overrides) in enumerate(zip(names, sweep)):
        # The sweep's own overrides except those the point replaces (also those under a dict it
        # replaces as a whole): a tuple given twice would otherwise be concatenated.
        kept = {p: v for p, v in base_overrides.items()
                if not any(p == q or p.startswith(q + ".") for q in overrides)}
        args = [f"--config.{p}={cli_value(v, field_type(p))}"
                for p, v in {**kept, **overrides}.items()]
        try:
            config = _parse_config(config_arg, args)
        except Exception as e:  # noqa: BLE001 - flags.Error, ValueError, TypeError, ...
            problems.append(f"point {i} ({name}): {_clean_error(e)}")
            continue
        from ml_collections.config_flags import config_path

        for path, value in overrides.items():
            read_back = _canonical(config_path.get_value(path, config))
            if read_back != _canonical(value):
                problems.append(
                    f"point {i} ({name}): {path}={value!r} does not reach the run unchanged (a "
                    f"{getattr(field_type(path), '__name__', field_type(path))} field: it reads "
                    f"back as {read_back!r}).")
        resolved.append(Point(index=i, name=name, overrides=dict(overrides),
                              config_args=tuple(args),
                              num_train_steps=config.get("num_train_steps", None)))
    if problems:
        raise SweepError(_problems(config_arg, problems))
    return resolved


def _problems(config_arg: str, problems: list[str]) -> str:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    return (f"the sweep of {config_arg} does not fit its config (nothing was run):\n  "
            + "\n  ".join(shown))


# ----------------------------------------------------------------------------------------------
# The state of a point's workdir


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, value) -> None:
    atomic_write(path, json.dumps(value, indent=2, default=repr) + "\n")


def point_state(point_dir: str, num_train_steps: int | None = None) -> dict:
    """{'status', 'results', 'record'} of one point's workdir.

    status: 'done' (results.json at step num_train_steps, or a status file saying done for that
    many steps; any step when num_train_steps is None), else what the status file says
    ('failed', 'interrupted', 'running'), 'incomplete' (a run left results or checkpoints for
    fewer steps) or 'pending'.
    """
    record = _read_json(os.path.join(point_dir, STATUS_FILE))
    results = _read_json(os.path.join(point_dir, "results.json"))
    if not isinstance(results, dict) or "step" not in results:
        results = None
    done = results is not None and num_train_steps in (None, results["step"])
    if not done and isinstance(record, dict) and record.get("status") == "done":
        done = num_train_steps in (None, record.get("num_train_steps"))
    if done:
        status = "done"
    elif isinstance(record, dict) and record.get("status") in ("failed", "interrupted", "running"):
        status = record["status"]
    elif results is not None or os.path.isdir(os.path.join(point_dir, "checkpoints")):
        status = "incomplete"
    else:
        status = "pending"
    return {"status": status, "results": results if done else None,
            "record": record if isinstance(record, dict) else None}


# ----------------------------------------------------------------------------------------------
# Running


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _log_tail(path: str, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


def _headline(tail: list[str]) -> str:
    """The line of a failed run's log that says why: its exception or FATAL line, else the last."""
    for line in reversed(tail):
        if re.match(r"^(FATAL|[A-Za-z_.]*(Error|Exception|Interrupt)\b)", line):
            return line[:300]
    return tail[-1][:300] if tail else "(empty log)"


def _main_metric_value(results: dict | None) -> str:
    if not results:
        return ""
    key = "pq" if results.get("pq") is not None else "mean_iou"
    value = results.get(key)
    return f"{key} {value:.4f}" if isinstance(value, (int, float)) else ""


@dataclasses.dataclass
class _Job:
    point: Point
    proc: subprocess.Popen
    started: float
    record: dict


def _child_env(parallel: int) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # JAX takes 75% of an accelerator's memory up front: K processes sharing one device would
    # fail to start. Allocating on demand lets them share it (a user's own setting wins).
    if parallel > 1 and not any(k in env for k in ("XLA_PYTHON_CLIENT_PREALLOCATE",
                                                   "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                                   "XLA_PYTHON_CLIENT_ALLOCATOR")):
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def run_sweep(workdir: str, points: Sequence[Point], *, config_arg: str,
              extra_args: Sequence[str] = (), parallel: int = 1,
              only: Sequence[int] | None = None, out=None) -> int:
    """Runs the points (those with index in `only`, default all) each as a seg_jax.main process.

    Points already done are skipped; the others run (and resume from their checkpoints),
    `parallel` at a time. The results files are rebuilt after every point. SIGINT / SIGTERM
    asks the running points to checkpoint and stop (a second one kills them) and starts no more.
    Returns 0 when every selected point is done, else 1.
    """
    out = out or sys.stdout
    say = lambda text: print(text, file=out, flush=True)  # noqa: E731
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, MANIFEST), {
        "config": config_arg, "extra_args": list(extra_args),
        "points": [{"index": p.index, "name": p.name, "overrides": p.overrides,
                    "num_train_steps": p.num_train_steps, "config_args": list(p.config_args)}
                   for p in points]})
    selected = [p for p in points if only is None or p.index in set(only)]
    states = {p.index: point_state(os.path.join(workdir, p.name), p.num_train_steps)
              for p in selected}
    todo = [p for p in selected if states[p.index]["status"] != "done"]
    total = len(selected)
    finished = total - len(todo)
    say(f"Sweep {config_arg}: {total} point(s) into {workdir}/<point>, {len(todo)} to run, "
        f"{parallel} at a time; each logs to <point>/{LOG_FILE}.")
    for p in selected:
        if states[p.index]["status"] == "done":
            metric = _main_metric_value(states[p.index]["results"]) or "done"
            say(f"  skip  {p.index} {p.name}: finished ({metric})")

    env = _child_env(parallel)
    queue, running = deque(todo), {}
    outcomes: dict[int, str] = {}
    durations: list[float] = []
    stop = {"signals": 0}

    def on_signal(signum, frame):
        del frame
        stop["signals"] += 1
        say(f"{signal.Signals(signum).name}: " + (
            "asking the running points to checkpoint and stop, starting no more (again: kill them)."
            if stop["signals"] == 1 else "killing the running points."))
        for job in running.values():
            try:
                job.proc.send_signal(signal.SIGTERM if stop["signals"] == 1 else signal.SIGKILL)
            except ProcessLookupError:
                pass

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread (a notebook's worker): no forwarding
            pass
    sweep_start = time.monotonic()
    try:
        while queue or running:
            while queue and len(running) < parallel and not stop["signals"]:
                p = queue.popleft()
                try:
                    running[p.index] = _start(workdir, p, config_arg, extra_args, env)
                except OSError as e:  # e.g. its workdir cannot be made: that point fails alone
                    outcomes[p.index] = "failed"
                    finished += 1
                    say(f"[{finished}/{total}] failed {p.index} {p.name}: could not start: {e}")
                    continue
                say(f"  start {p.index} {p.name}")
            if stop["signals"] and not running:
                break
            time.sleep(0.2)
            for index, job in list(running.items()):
                code = job.proc.poll()
                if code is None:
                    continue
                del running[index]
                status, elapsed, summary = _finish(workdir, job, code, bool(stop["signals"]))
                outcomes[index] = status
                finished += 1
                if status == "done":
                    durations.append(elapsed)
                _rebuild(workdir, points, say)
                failed = sum(s != "done" for s in outcomes.values())
                left = len(queue) + len(running)
                typical = (sum(durations) / len(durations)) if durations else elapsed
                eta = typical * math.ceil(left / parallel) if left else 0.0
                say(f"[{finished}/{total}{f', {failed} not done' if failed else ''}] {status} "
                    f"{job.point.index} {job.point.name} in {_duration(elapsed)}: {summary}"
                    + (f"; ETA {_duration(eta)}" if left and not stop["signals"] else ""))
    except BaseException:
        # The sweep itself broke: its points are in sessions of their own, so stop them here.
        for job in running.values():
            job.proc.send_signal(signal.SIGTERM)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _rebuild(workdir, points, say)
    not_done = [p for p in selected if point_state(
        os.path.join(workdir, p.name), p.num_train_steps)["status"] != "done"]
    say(f"Sweep ran {len(outcomes)} point(s) in {_duration(time.monotonic() - sweep_start)}: "
        f"{total - len(not_done)} of {total} done. Results: {os.path.join(workdir, RESULTS_MD)} "
        f"(.csv, .png).")
    for p in not_done:
        state = point_state(os.path.join(workdir, p.name), p.num_train_steps)
        record = state["record"] or {}
        say(f"  not done: {p.index} {p.name}: {state['status']}"
            + (f" (exit {record['exit_code']}): {_headline(record['error'])}"
               if record.get("error") else "")
            + (f"; log {os.path.join(workdir, p.name, LOG_FILE)}" if record else ""))
    return 0 if not not_done else 1


def _start(workdir: str, p: Point, config_arg: str, extra_args, env) -> _Job:
    point_dir = os.path.join(workdir, p.name)
    os.makedirs(point_dir, exist_ok=True)
    command = [sys.executable, "-m", "seg_jax.main", f"--config={config_arg}",
               f"--workdir={point_dir}", *extra_args, *p.config_args]
    record = _read_json(os.path.join(point_dir, STATUS_FILE)) or {}
    attempts = int(record.get("attempts", 0)) + 1
    with open(os.path.join(point_dir, LOG_FILE), "a", encoding="utf-8") as log:
        separator = "\n" if log.tell() else ""
        log.write(f"{separator}===== sweep point {p.index} ({p.name}), attempt {attempts}, "
                  f"{_now()} on {socket.gethostname()}\n$ {shlex.join(command)}\n")
        log.flush()
        # A session of its own: a Ctrl-C at the terminal reaches the sweep, which then asks each
        # point to checkpoint (SIGTERM) instead of every point dying mid-step.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    record.update(index=p.index, name=p.name, overrides=p.overrides, status="running",
                  num_train_steps=p.num_train_steps, attempts=attempts, started=_now(),
                  finished=None, host=socket.gethostname(), pid=proc.pid, exit_code=None,
                  error=None, command=command)
    _write_json(os.path.join(point_dir, STATUS_FILE), record)
    return _Job(point=p, proc=proc, started=time.monotonic(), record=record)


def _finish(workdir: str, job: _Job, code: int, stopping: bool) -> tuple[str, float, str]:
    point_dir = os.path.join(workdir, job.point.name)
    elapsed = time.monotonic() - job.started
    state = point_state(point_dir, job.point.num_train_steps)
    if state["status"] == "done":
        status = "done"
    elif stopping or code == 0:  # code 0 without results: the run checkpointed on a SIGTERM
        status = "interrupted"
    else:
        status = "failed"
    record = dict(job.record)
    # Why it ended, for a failure or a kill; a run that checkpointed on SIGTERM said so itself.
    tail = _log_tail(os.path.join(point_dir, LOG_FILE)) if status != "done" and code != 0 else []
    record.update(status=status, exit_code=code, finished=_now(), last_attempt_s=round(elapsed, 1),
                  wall_time_s=round(float(record.get("wall_time_s") or 0.0) + elapsed, 1),
                  error=tail or None)
    _write_json(os.path.join(point_dir, STATUS_FILE), record)
    if status == "done":
        summary = _main_metric_value(state["results"])
    elif tail:
        summary = f"exit {code}: {_headline(tail)}"
    else:
        summary = "stopped with a checkpoint; running the sweep again resumes it"
    return status, elapsed, summary


def _rebuild(workdir, points, say) -> None:
    # The tables are a convenience: a failure to draw them must not stop the sweep.
    try:
        collect_results(workdir, points)
    except Exception as e:  # noqa: BLE001
        say(f"  (could not rebuild the results files: {type(e).__name__}: {e})")


# ----------------------------------------------------------------------------------------------
# Results

_METRICS = (("mean_iou", "mIoU"), ("pixel_accuracy", "pixel acc."),
            ("boundary_f_score", "boundary F"), ("pq", "PQ"))
_METRIC_TITLES = {"mean_iou": "mean IoU", "pq": "panoptic quality (PQ)"}


def _as_points(workdir: str, points) -> tuple[list[Point], str | None]:
    manifest = _read_json(os.path.join(workdir, MANIFEST)) or {}
    if points is None:
        if not manifest.get("points"):
            raise SweepError(f"No {MANIFEST} in {workdir}: pass the points (e.g. "
                             f"seg_jax.sweep.load_sweep('configs/x.py')).")
        points = [Point(index=m["index"], name=m["name"], overrides=m["overrides"],
                        num_train_steps=m.get("num_train_steps")) for m in manifest["points"]]
    else:
        points = list(points)
        if not all(isinstance(p, Point) for p in points):
            points = [Point(index=i, name=n, overrides=dict(p))
                      for i, (n, p) in enumerate(zip(point_names(points), points))]
    return points, manifest.get("config")


def _display(value) -> str:
    value = _canonical(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return repr(value)


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else ""


def collect_results(workdir: str, points=None) -> list[dict]:
    """Writes workdir/sweep_results.md, .csv and .png from the points' workdirs; returns the rows.

    Args:
      workdir: the sweep's workdir (the points' runs are in workdir/<point name>/).
      points: Points (from `resolve`), a Sweep or list of override dicts (named as the runner
        names them), or None for the points recorded in workdir/sweep.json by the runner.

    One row per point, best first by the main metric (PQ when the runs are panoptic, else mean
    IoU); points without results (failed, running, pending) follow in sweep order. Works on a
    sweep that is still running or partly failed: the rows say each point's status.
    """
    workdir = os.path.abspath(workdir)
    points, config_arg = _as_points(workdir, points)
    paths = list(dict.fromkeys(path for p in points for path in p.overrides))
    rows = []
    for p in points:
        state = point_state(os.path.join(workdir, p.name), p.num_train_steps)
        results, record = state["results"] or {}, state["record"] or {}
        row = {"index": p.index, "name": p.name, "status": state["status"],
               **{path: p.overrides.get(path) for path in paths},
               **{key: results.get(key) for key, _ in _METRICS},
               "step": results.get("step"), "wall_time_s": record.get("wall_time_s"),
               "exit_code": record.get("exit_code"),
               "error": (_headline(record.get("error") or [])
                         if state["status"] in ("failed", "interrupted") else None)}
        rows.append(row)
    panoptic = any(r["pq"] is not None for r in rows)
    main = "pq" if panoptic else "mean_iou"
    scored = sorted((r for r in rows if isinstance(r[main], (int, float))),
                    key=lambda r: (-r[main], r["index"]))
    rows = scored + [r for r in rows if r not in scored]
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row in scored else None
    metrics = [(k, t) for k, t in _METRICS if k != "pq" or panoptic]
    atomic_write(os.path.join(workdir, RESULTS_MD),
                _markdown(rows, paths, metrics, main, config_arg))
    atomic_write(os.path.join(workdir, RESULTS_CSV), _csv(rows, paths, metrics))
    _plot(os.path.join(workdir, RESULTS_PNG), rows, paths, main, config_arg)
    return rows


def _markdown(rows, paths, metrics, main, config_arg) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    esc = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = [f"# Sweep results{f': `{config_arg}`' if config_arg else ''}", "",
             f"{len(rows)} points ({', '.join(f'{n} {s}' for s, n in counts.items())}); ranked by "
             f"{_METRIC_TITLES[main]}, best first. Rebuilt {_now()}.", "",
             "| rank | point | " + " | ".join(paths) + (" | " if paths else "")
             + " | ".join(t for _, t in metrics) + " | status | wall time |",
             "|---:|---|" + "---|" * len(paths) + "---:|" * len(metrics) + "---|---:|"]
    for r in rows:
        status = r["status"] + (f" (exit {r['exit_code']})" if r["status"] == "failed" else "")
        cells = [str(r["rank"] or "-"), f"`{r['name']}`",
                 *[esc(_display(r[p])) if r[p] is not None else "" for p in paths],
                 *[_pct(r[k]) for k, _ in metrics], status,
                 _duration(r["wall_time_s"]) if r["wall_time_s"] is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", f"Not finished (the end of each log is in `<point>/{STATUS_FILE}`, the whole "
                      f"log in `<point>/{LOG_FILE}`; running the sweep again retries them):", ""]
        lines += [f"- `{r['name']}` ({r['status']}, exit {r['exit_code']}): {esc(r['error'])}"
                  for r in failed]
    return "\n".join(lines) + "\n"


def _csv(rows, paths, metrics) -> str:
    columns = ["rank", "index", "name", "status", *paths, *(k for k, _ in metrics), "step",
               "wall_time_s", "exit_code", "error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else (_display(r[c]) if c in paths else r[c])
                         for c in columns])
    return buffer.getvalue()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plot(path: str, rows, paths, main, config_arg) -> None:
    """The main metric across the swept values: a line per value of one axis against the other
    for a two-axis grid, bars (one per point) otherwise. Object-oriented matplotlib: no pyplot,
    so a notebook's backend is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_index = sorted(rows, key=lambda r: r["index"])
    varying = [p for p in paths if len({repr(_canonical(r[p])) for r in by_index}) > 1]
    scored = [r for r in by_index if _is_number(r[main])]
    ylabel = f"{_METRIC_TITLES[main]} (%)"
    title = (f"{config_arg or 'sweep'}: {_METRIC_TITLES[main]}\n"
             f"({len(scored)} of {len(rows)} points finished)")
    grid = len(varying) == 2 and all(r[p] is not None for r in by_index for p in varying)
    if grid:
        a, b = varying
        numeric = {p: all(_is_number(r[p]) for r in by_index) for p in varying}
        distinct = {p: len({repr(_canonical(r[p])) for r in by_index}) for p in varying}
        if numeric[a] != numeric[b]:
            x_path = a if numeric[a] else b
        else:  # the axis with more values (the faster-varying one on a tie) goes along x
            x_path = a if distinct[a] > distinct[b] else b
        line_path = b if x_path == a else a
        fig = Figure(figsize=(7, 4.5))
        ax = fig.add_subplot()
        x_values = list(dict.fromkeys(_canonical(r[x_path]) for r in by_index))
        if numeric[x_path]:
            x_values.sort()
            position = {v: v for v in x_values}
            positive = all(v > 0 for v in x_values)
            # Values spaced by factors (1e-3, 3e-3, 1e-2) read best on a log axis.
            if positive and max(x_values) / min(x_values) >= 3:
                ax.set_xscale("log")
        else:
            position = {v: i for i, v in enumerate(x_values)}
        for line_value in dict.fromkeys(_canonical(r[line_path]) for r in by_index):
            pts = sorted((position[_canonical(r[x_path])], 100 * r[main]) for r in scored
                         if _canonical(r[line_path]) == line_value)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=_display(line_value))
        ax.set_xticks([position[v] for v in x_values], [_display(v) for v in x_values])
        ax.minorticks_off()
        ax.set_xlabel(x_path)
        if scored:
            ax.legend(title=line_path, fontsize="small")
    else:
        fig = Figure(figsize=(max(6.0, 0.7 * len(by_index) + 2), 4.5))
        ax = fig.add_subplot()
        one_axis = len(varying) == 1 and all(r[varying[0]] is not None for r in by_index)
        labels = [_display(r[varying[0]]) if one_axis else r["name"] for r in by_index]
        heights = [100 * r[main] if _is_number(r[main]) else 0.0 for r in by_index]
        bars = ax.bar(range(len(by_index)), heights, color="tab:blue")
        for bar, r, h in zip(bars, by_index, heights):
            text = f"{h:.1f}" if _is_number(r[main]) else r["status"]
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, h), ha="center", va="bottom",
                        fontsize="small", xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(by_index)), labels, rotation=0 if one_axis else 30,
                      ha="center" if one_axis else "right", fontsize="small")
        ax.set_xlabel(varying[0] if one_axis else "point")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    tmp = f"{path}.{os.getpid()}.tmp"
    FigureCanvasAgg(fig)
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# The runner's flags


def _passthrough_args(flag_values) -> list[str]:
    """The flags given to the sweep that each point's run gets too (--mode, logging, ...)."""
    args, seen = [], set()
    for name in list(flag_values):
        flag = flag_values[name]
        if (id(flag) in seen or not flag.present or flag.name in _SWEEP_FLAGS
                or flag.name.startswith("config.")):
            continue
        seen.add(id(flag))
        args += [line for line in flag.serialize().splitlines() if line]
    return args


def list_points(workdir: str, points: Sequence[Point], config_arg: str, out=None) -> None:
    out = out or sys.stdout
    width = max(len(p.name) for p in points)
    print(f"{config_arg}: {len(points)} point(s), each into {os.path.abspath(workdir)}/<name>",
          file=out)
    print(f"{'index':>5}  {'status':<11}  {'name':<{width}}  overrides", file=out)
    for p in points:
        status = point_state(os.path.join(workdir, p.name), p.num_train_steps)["status"]
        overrides = " ".join(f"{k}={_display(v)}" for k, v in p.overrides.items())
        print(f"{p.index:>5}  {status:<11}  {p.name:<{width}}  {overrides}", file=out)
    out.flush()


def main(flag_values, *, workdir: str, run_all: bool, parallel: int, index: int | None,
         list_only: bool) -> int:
    """seg_jax.main's --sweep / --sweep_index / --sweep_list; returns the exit code."""
    config_flag = flag_values["config"]
    config_arg = config_flag.config_filename
    try:
        if not (run_all or list_only or index is not None):
            raise SweepError("--sweep_parallel applies to --sweep; add --sweep.")
        if "mode" in flag_values and flag_values["mode"].value != "train":
            raise SweepError(f"sweeps train (--mode=train); got "
                             f"--mode={flag_values['mode'].value}.")
        points = resolve(config_arg, config_flag.override_values)
        if index is not None and not 0 <= index < len(points):
            raise SweepError(f"--sweep_index={index}, but the sweep of {config_arg} has "
                             f"{len(points)} points (0 to {len(points) - 1}).")
    except SweepError as e:
        sys.exit(f"FATAL sweep: {e}")
    if list_only:
        list_points(workdir, points, config_arg)
        return 0
    for path, value in config_flag.override_values.items():
        if any(path == q or path.startswith(q + ".") for p in points for q in p.overrides):
            print(f"Note: --config.{path}={_display(value)} is swept; the points that set it use "
                  f"their own value.", flush=True)
    return run_sweep(workdir, points, config_arg=config_arg,
                     extra_args=_passthrough_args(flag_values), parallel=parallel,
                     only=None if index is None else [index])
