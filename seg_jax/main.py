"""Command-line entry point: flags and dispatch only.

  python -m seg_jax.main --config=configs/shapes.py --workdir=runs/shapes
  python -m seg_jax.main --config=configs/shapes.py:quick --workdir=runs/quick
  python -m seg_jax.main --config=configs/shapes.py --workdir=runs/shapes --mode=eval
  python -m seg_jax.main --config=configs/shapes.py --workdir=runs/shapes --mode=predict \
      --predict.input=images/
  python -m seg_jax.main --config=configs/shapes.py --config.optimizer.learning_rate=0.02 ...
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from seg_jax import xla_flags
from seg_jax.errors import USER_ERROR_EXIT_CODE, UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, optionally with ':arg' (e.g. configs/shapes.py:quick).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "predict"],
    "train: train (resuming from the workdir's checkpoints), then evaluate. "
    "eval: evaluate the newest checkpoint in the workdir. "
    "predict: write mask and overlay PNGs for --predict.input with the newest checkpoint.",
)
_PREDICT_INPUT = flags.DEFINE_string(
    "predict.input", None, "--mode=predict: a folder of .png/.jpg images, or one image file.")
_PREDICT_OUTPUT = flags.DEFINE_string(
    "predict.output_dir", None, "--mode=predict: where the PNGs go (default <workdir>/predict).")
_PREDICT_RULE = flags.DEFINE_enum(
    "predict.rule", None, ["map", "bayes"],
    "--mode=predict: the decision at each pixel (default: config.decision.rule).")
_PREDICT_WEIGHTS = flags.DEFINE_enum(
    "predict.weights", "raw", ["raw", "ema"],
    "--mode=predict: the trained weights (raw) or their moving average (ema; a run trained with "
    "config.ema_decay > 0).")
# Multi-process runs (seg_jax.distributed): every process runs the same command with its own id.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 in a multi-process run (env SEG_JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes of a multi-process run (env SEG_JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's id, 0 .. num_processes - 1 (env SEG_JAX_PROCESS_ID).")
_DISTRIBUTED = flags.DEFINE_string(
    "distributed", None,
    "'auto': let JAX detect a multi-process run from the cluster (SLURM, Open MPI, TPU); or a "
    "JAX detection method such as 'slurm' (env SEG_JAX_DISTRIBUTED).")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_float(
    "distributed_timeout", None,
    "Seconds to wait for the coordinator and all processes before failing (default 300; env "
    "SEG_JAX_DISTRIBUTED_TIMEOUT).")
# Sweeps (seg_jax.sweep): the points of the config file's get_sweep(arg), each its own run.
_SWEEP = flags.DEFINE_bool(
    "sweep", False, "Run every point of the config file's sweep (get_sweep) into "
    "<workdir>/<point name>/, each as its own process (this command with --sweep_index=i); "
    "finished points are skipped, the others resume. Writes <workdir>/sweep_results.md/.csv/.png.")
_SWEEP_PARALLEL = flags.DEFINE_integer(
    "sweep_parallel", 1, "--sweep: how many points run at a time.", lower_bound=1)
_SWEEP_INDEX = flags.DEFINE_integer(
    "sweep_index", None, "Train only point i (0-based, as --sweep_list numbers them), in this "
    "process, into <workdir>/<point name>/; one task of a job array: e.g. "
    "--sweep_index=$SLURM_ARRAY_TASK_ID (SLURM) or $JOB_COMPLETION_INDEX (Kubernetes indexed "
    "Job).", lower_bound=0)
_SWEEP_LIST = flags.DEFINE_bool(
    "sweep_list", False, "Print the sweep's points (index, status, name, overrides) and exit.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show the traceback of a user error (a config value, the data, a workdir) "
    "too; without it such an error prints one 'FATAL <message>' and exits with status 2 "
    "(env SEG_JAX_DEBUG=1 does the same).")
flags.mark_flags_as_required(["config", "workdir"])


def _fatal(message: str) -> None:
    """Ends the process for a mistake of the user's: `FATAL <message>` on stderr, status 2."""
    print(f"FATAL {message}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT_CODE)


def _config_path(argv) -> str | None:
    for arg in argv:
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":", 1)[0]
    return None


def _parse_flags(argv):
    """absl's parser, but config mistakes end with a short message naming the problem.

    Also puts the folder holding `configs/` on the path: config files derive from their base with
    `from configs import default`, which then works from any working directory.
    """
    path = _config_path(argv)
    if path is not None:
        if not os.path.isfile(path):
            _fatal(f"--config: no config file at {path!r} (working directory {os.getcwd()}).")
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        if root not in sys.path:
            sys.path.insert(0, root)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        if "Traceback" in message:  # an exception inside get_config(): keep its first/last lines
            lines = [l for l in message.splitlines() if l.strip()]
            message = f"{lines[0]} {lines[-1]}"
        _fatal(f"flags error: {message}\nPass --helpfull to list the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these for an unknown config key or a value of the wrong type.
        message = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        _fatal(f"bad --config override: {message}\n"
               f"Every config key must exist in the config file; check the spelling.")


def _set_xla_flags(config) -> None:
    # XLA flags are read once when JAX starts, so they are set here before JAX is imported.
    if config.xla_cpu_fast_conv:
        xla_flags.use_cpu_fast_conv()


def _set_compilation_cache(config) -> None:
    """Points JAX's persistent compilation cache at config.compilation_cache_dir, through the
    environment (read when JAX starts, and inherited by a sweep's point processes), unless the
    caller already chose one."""
    folder = config.get("compilation_cache_dir", "")
    if folder and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(os.path.expanduser(folder))


class _QuietLibraries:
    """absl log filter: drops INFO chatter of orbax (a dozen lines per checkpoint) and tfds."""

    _NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")

    def filter(self, record) -> bool:
        return record.levelno > 20 or not any(p in record.pathname for p in self._NOISY)


def main(argv):
    """Runs the mode; a user error ends as one FATAL line (exit 2) unless --verbose."""
    try:
        _main(argv)
    except UserError as error:
        if _VERBOSE.value or os.environ.get("SEG_JAX_DEBUG", "") not in ("", "0"):
            raise
        _fatal(f"{error} (--verbose shows where it was raised.)")


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _MODE.value == "predict" and not _PREDICT_INPUT.value:
        raise app.UsageError("--mode=predict needs --predict.input=<folder of images or a file>.")
    if _SWEEP.value or _SWEEP_LIST.value or _SWEEP_PARALLEL.value != 1:
        from seg_jax import sweep  # no JAX here: each point runs as its own --sweep_index process

        sys.exit(sweep.launch(flags.FLAGS, workdir=_WORKDIR.value, run_all=_SWEEP.value,
                              parallel=_SWEEP_PARALLEL.value, index=_SWEEP_INDEX.value,
                              list_only=_SWEEP_LIST.value))
    point, workdir = None, _WORKDIR.value
    if _SWEEP_INDEX.value is not None:  # one point, trained below: its overrides set on the config
        from seg_jax import sweep

        point = sweep.prepare_point(flags.FLAGS, _SWEEP_INDEX.value)
        workdir = point.point_dir
    if "jax" not in sys.modules:
        _set_xla_flags(_CONFIG.value)
        _set_compilation_cache(_CONFIG.value)
    from seg_jax import distributed

    logging.set_verbosity(logging.INFO)
    try:  # before anything asks JAX for devices
        process = distributed.initialize(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
            method=_DISTRIBUTED.value, timeout_s=_DISTRIBUTED_TIMEOUT.value)
    except distributed.DistributedInitError as e:
        sys.exit(f"FATAL {e}")
    # Imported after flag parsing so that `--help` and flag errors are instant (and XLA_FLAGS set).
    from seg_jax import train

    if not process.is_primary:  # progress is logged once; the others log warnings and errors
        logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    if _MODE.value == "train" and point is not None:  # records the point's outcome
        sys.exit(point.run(lambda: train.train_and_evaluate(config, workdir),
                           record=process.is_primary))
    if _MODE.value == "train":
        train.train_and_evaluate(config, workdir)
    elif _MODE.value == "eval":
        train.evaluate_checkpoint(config, _WORKDIR.value)
    else:
        from seg_jax import predict

        predict.predict_images(config, _WORKDIR.value, _PREDICT_INPUT.value,
                               output_dir=_PREDICT_OUTPUT.value, rule=_PREDICT_RULE.value,
                               weights=_PREDICT_WEIGHTS.value)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
