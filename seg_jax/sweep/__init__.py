"""Sweeps declared next to a config: points, their names, validation, running and the results.

A config file may declare a sweep beside `get_config(arg)`:

    from seg_jax import sweep

    def get_sweep(arg=None):      # arg: the text after ':' in --config, as for get_config
        return sweep.product(**{"loss.name": ["cross_entropy", "dice"],
                                "optimizer.learning_rate": [1e-3, 3e-3]})

A point is a dict {config path: value} of overrides of that config. The runner
(`python -m seg_jax.main --config=X --workdir=W ...`):

  --sweep_index=i       trains point i in this process into W/<point name>/ (one task of a job
                        array): its overrides set on the parsed config after the --config.<path>
                        flags (the point's value wins), through seg_jax.main's own training path
  --sweep               runs every point not yet done, each as `python -m seg_jax.main <the same
                        flags> --sweep_index=i` (--sweep_parallel=K at a time)
  --sweep_list          prints each point's index, status, name and overrides, and exits

Every point is checked against the config before anything runs. A point's outcome goes to
W/<name>/sweep_status.json (and, run by --sweep, its output to W/<name>/sweep_log.txt); running
the sweep again skips the finished points and resumes the others from their checkpoints.
W/sweep_results.md, .csv and .png (`collect_results`) rank the points by the main metric.

The modules: `declare` (product / zip_ / concat, point names), `points` (loading get_sweep,
checking points against the config, applying one), `run` (one point in process, the launcher,
--sweep_list), `status` (the workdir's files and a point's state), `report` (the results files),
`in_process` (`run_in_process`: every point in this process, for a notebook's registered losses
and callables). None of them imports JAX (run_in_process's default trainer does, when called).
"""

from seg_jax.sweep.declare import (MAX_NAME_LENGTH, Sweep, concat, format_value, point_names,
                                   product, short_labels, zip_)
from seg_jax.sweep.points import (Point, SweepError, apply_point, cli_value, load_sweep,
                                  resolve)
from seg_jax.sweep.report import RESULTS_CSV, RESULTS_MD, RESULTS_PNG, collect_results
from seg_jax.sweep.in_process import run_in_process
from seg_jax.sweep.run import launch, list_points, prepare_point, run_sweep
from seg_jax.sweep.status import LOG_FILE, MANIFEST, STATUS_FILE, point_state

__all__ = [
    "LOG_FILE", "MANIFEST", "MAX_NAME_LENGTH", "RESULTS_CSV", "RESULTS_MD", "RESULTS_PNG",
    "STATUS_FILE", "Point", "Sweep", "SweepError", "apply_point", "cli_value", "collect_results",
    "concat", "format_value", "launch", "list_points", "load_sweep", "point_names", "point_state",
    "prepare_point", "product", "resolve", "run_in_process", "run_sweep", "short_labels", "zip_",
]
