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
flags.mark_flags_as_required(["config", "workdir"])


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
            sys.exit(f"FATAL --config: no config file at {path!r} (working directory {os.getcwd()}).")
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
        sys.exit(f"FATAL flags error: {message}\nPass --helpfull to list the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these for an unknown config key or a value of the wrong type.
        message = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        sys.exit(
            f"FATAL bad --config override: {message}\n"
            f"Every config key must exist in the config file; check the spelling."
        )


# On XLA:CPU most convolutions otherwise run one at a time through YNNPACK on a single core;
# excluding them from YNNPACK fusion lets XLA's multi-threaded kernels run them (README: speed).
# It is an XLA flag, read once when JAX starts, so it is set here before JAX is imported.
_CPU_FAST_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _set_xla_flags(config) -> None:
    flags_now = os.environ.get("XLA_FLAGS", "")
    if config.xla_cpu_fast_conv and "xla_cpu_experimental_ynn_fusion_type" not in flags_now:
        os.environ["XLA_FLAGS"] = f"{flags_now} {_CPU_FAST_CONV_FLAG}".strip()


class _QuietLibraries:
    """absl log filter: drops INFO chatter of orbax (a dozen lines per checkpoint) and tfds."""

    _NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")

    def filter(self, record) -> bool:
        return record.levelno > 20 or not any(p in record.pathname for p in self._NOISY)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _MODE.value == "predict" and not _PREDICT_INPUT.value:
        raise app.UsageError("--mode=predict needs --predict.input=<folder of images or a file>.")
    if "jax" not in sys.modules:
        _set_xla_flags(_CONFIG.value)
    # Imported after flag parsing so that `--help` and flag errors are instant (and XLA_FLAGS set).
    from seg_jax import train

    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    if _MODE.value == "train":
        train.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == "eval":
        train.evaluate_checkpoint(config, _WORKDIR.value)
    else:
        from seg_jax import predict

        predict.predict_images(config, _WORKDIR.value, _PREDICT_INPUT.value,
                               output_dir=_PREDICT_OUTPUT.value, rule=_PREDICT_RULE.value)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
