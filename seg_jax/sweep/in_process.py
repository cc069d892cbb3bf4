"""`run_in_process`: every point of a sweep trained in this process, one after another.

For notebooks: a loss or metric registered in the notebook's kernel, or a `loss_fn`, model or
callback passed to `train_and_evaluate`, exists only in this process, so the command line's
sweep (a child process per point) cannot run it. The points train here instead, with the same
workdir layout, status files and results tables (`collect_results`) as `--sweep`; running it
again skips the finished points and resumes the others from their checkpoints. Unlike the rest
of `seg_jax.sweep`, the default `train` imports JAX (seg_jax.train) when called.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Callable

from seg_jax.sweep import status as files
from seg_jax.sweep.declare import as_sweep, display_value, point_names
from seg_jax.sweep.points import Point, SweepError
from seg_jax.sweep.report import collect_results
from seg_jax.sweep.run import PointRun


def _point_configs(config, sweep) -> list[tuple[Point, object]]:
    """Each point with its config (a copy of `config` with the overrides set); every point is
    checked (unknown keys, values of the wrong type) before any trains."""
    from ml_collections.config_flags import config_path

    sweep = as_sweep(sweep)
    try:
        names = point_names(sweep)
    except ValueError as e:
        raise SweepError(str(e)) from e
    resolved, problems = [], []
    for index, (name, overrides) in enumerate(zip(names, sweep)):
        point_config = copy.deepcopy(config)
        try:
            for path, value in overrides.items():
                config_path.set_value(path, point_config, value)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
            problems.append(f"point {index} ({name}): {path}={value!r}: {e}")
            continue
        point = Point(index=index, name=name, overrides=dict(overrides),
                      num_train_steps=point_config.get("num_train_steps", None))
        resolved.append((point, point_config))
    if problems:
        raise SweepError("The sweep does not fit the config:\n" +
                         "\n".join(f"  - {p}" for p in problems))
    return resolved


def run_in_process(config, sweep, workdir: str, *, train: Callable | None = None,
                   out=None) -> list[dict]:
    """Trains each point of `sweep` on `config` into workdir/<point name>/; returns the rows of
    W/sweep_results.md (best first, as `collect_results` returns them).

    Args:
      config: the base config (not modified).
      sweep: a `seg_jax.sweep.product(...)` (or any list of {config path: value} dicts).
      workdir: the sweep's workdir.
      train: `train(config, workdir) -> results`; default `seg_jax.train.train_and_evaluate`.
        Bind notebook arguments with functools.partial, e.g.
        `functools.partial(train_and_evaluate, callbacks=[curves])`.
      out: where progress lines go (default sys.stdout).

    A point that raises is recorded as failed (its status file holds the error) and the others
    still run; the sweep then raises SweepError naming the failed points.
    """
    if train is None:
        from seg_jax.train import train_and_evaluate as train
    say = lambda text: print(text, file=out or sys.stdout, flush=True)  # noqa: E731
    workdir = os.path.abspath(workdir)
    resolved = _point_configs(config, sweep)
    points = [point for point, _ in resolved]
    failed = []
    for point, point_config in resolved:
        run = PointRun(point=point, points=points, config_arg="<in process>", workdir=workdir,
                       point_args=[], command=["<in process: seg_jax.sweep.run_in_process>"])
        state = files.point_state(run.point_dir, point.num_train_steps)
        if state["status"] == "done":
            say(f"Sweep point {point.index} {point.name}: finished "
                f"({files.main_metric_value(state['results'])}); nothing to run.")
            continue
        overrides = " ".join(f"{k}={display_value(v)}" for k, v in point.overrides.items())
        say(f"Sweep point {point.index} of {len(points)} into {run.point_dir}: {overrides}")
        try:
            run.run(lambda: train(point_config, run.point_dir))
        except Exception as error:  # recorded in the point's status file; the others still run
            failed.append(f"{point.name} ({type(error).__name__}: {error})")
    rows = collect_results(workdir, points)
    if failed:
        raise SweepError(f"{len(failed)} point(s) failed: {'; '.join(failed)}; their status "
                         f"files in {workdir} hold the errors.")
    return rows
