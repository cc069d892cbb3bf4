"""Fabricated study workdirs for the report steps' tests: what the runner's `--sweep` leaves.

Written with the runner's own writers (seg_jax.sweep.status: the manifest and the points' status
records), so `experiments.studies.report.load_runs` reads them as it reads a real sweep.
"""

import json
import os

from seg_jax import sweep
from seg_jax.sweep import status as files
from seg_jax.sweep.points import Point

STEPS = 100


def write_manifest(workdir, overrides, *, steps=STEPS, config="configs/study.py") -> list[Point]:
    """W/sweep.json for a sweep of these points ({config path: value} each); returns them."""
    points = [Point(index=i, name=name, overrides=o, num_train_steps=steps,
                    config_args=tuple(f"--config.{k}={v}" for k, v in o.items()))
              for i, (name, o) in enumerate(zip(sweep.point_names(overrides), overrides))]
    os.makedirs(workdir, exist_ok=True)
    files.write_manifest(str(workdir), config, [], points)
    return points


def write_point(workdir, p, *, status, results=None, config_seed=None, elapsed=60.0,
                steps=STEPS) -> None:
    """One point's workdir as the runner leaves it: results.json, config.json and the status
    record (begun, then finished unless still 'running'); status None: never started."""
    point_dir = os.path.join(workdir, p.name)
    if status is None:
        return
    os.makedirs(point_dir)
    if results is not None:
        with open(os.path.join(point_dir, "results.json"), "w") as f:
            json.dump(results, f)
    if config_seed is not None:
        with open(os.path.join(point_dir, "config.json"), "w") as f:
            json.dump({"seed": config_seed, "num_train_steps": steps}, f)
    record = files.begin_attempt(point_dir, p, pid=1234, command=["python", "-m", "seg_jax.main"])
    if status == "running":
        files.write_json(os.path.join(point_dir, files.STATUS_FILE), record)
        return
    error = ["Traceback (most recent call last):", "ValueError: boom"] if status == "failed" else []
    files.finish_attempt(point_dir, record, status=status, exit_code=int(status != "done"),
                         elapsed=elapsed, error=error)


def fabricate_study(workdir, overrides, results_of, *, steps=STEPS) -> list[Point]:
    """A finished sweep: every point done with `results_of(point)` (its 'step' set to `steps`)."""
    points = write_manifest(workdir, overrides, steps=steps)
    for p in points:
        write_point(workdir, p, status="done", results={**results_of(p), "step": steps},
                    config_seed=p.overrides.get("seed"), steps=steps)
    return points
