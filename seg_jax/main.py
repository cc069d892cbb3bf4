"""Command-line entry point: flags and dispatch only.

  python -m seg_jax.main --config=configs/shapes.py --workdir=runs/shapes
  python -m seg_jax.main --config=configs/shapes.py:quick --workdir=runs/quick
  python -m seg_jax.main --config=configs/shapes.py --workdir=runs/shapes --mode=eval
  python -m seg_jax.main --config=configs/shapes.py --config.optimizer.learning_rate=0.02 ...
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, optionally with ':arg' (e.g. configs/shapes.py:quick).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval"],
    "train: train (resuming from the workdir's checkpoints), then evaluate. "
    "eval: evaluate the newest checkpoint in the workdir.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _make_config_package_importable(argv) -> None:
    # Config files derive from their base with `from configs import default`; put the folder that
    # holds `configs/` on the path so that works from any working directory.
    for arg in argv:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1].split(":", 1)[0]
            root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
            if root not in sys.path:
                sys.path.insert(0, root)


def _parse_flags(argv):
    """absl's parser, but a bad --config.<key> override ends with a one-line message, no traceback."""
    _make_config_package_importable(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"FATAL flags error: {e}\nPass --helpfull to list the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these for an unknown config key or a value of the wrong type.
        message = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        sys.exit(
            f"FATAL bad --config override: {message}\n"
            f"Every config key must exist in the config file; check the spelling."
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Imported after flag parsing so that `--help` and flag errors are instant.
    from seg_jax import train

    logging.set_verbosity(logging.INFO)
    config = _CONFIG.value
    if _MODE.value == "train":
        train.train_and_evaluate(config, _WORKDIR.value)
    else:
        train.evaluate_checkpoint(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
