"""`validate_config`: every check of a run's config in one pass, before anything compiles.

Each module owns the checks of its own settings (the decision rule and cost matrix in
`seg_jax.decision`, the NaN policy in `seg_jax.faults`, whole-image inference in
`seg_jax.inference`, panoptic evaluation in `seg_jax.panoptic_eval`, batch divisibility in
`seg_jax.sharding`, gradient accumulation and the weights' moving average in `seg_jax.steps`,
class weights in `seg_jax.objectives`, rare-class sampling in `seg_jax.data.class_balance`, input
threads in `seg_jax.data.pipeline`); this pass runs the ones a mode needs, so that training,
evaluation and prediction check the same things the same way, and reports every problem at once.
"""

from seg_jax import decision, errors, faults, inference, objectives, sharding, steps
from seg_jax.data import class_balance, pipeline
from seg_jax.losses import registry as loss_registry
from seg_jax.metrics import extra
from seg_jax.models import factory
from seg_jax.panoptic_eval import PanopticEvalOptions

MODES = ("train", "eval", "predict")


# A config that cannot run; the message lists each problem with its fix.
ConfigError = errors.ConfigError


def _check_schedule(config) -> None:
    for name in ("num_train_steps", "log_every_steps", "checkpoint_every_steps",
                 "keep_checkpoints", "steps_in_flight"):
        if config[name] <= 0:
            raise ValueError(f"config.{name} must be positive, got {config[name]}.")
    if config.eval_every_steps < 0:
        raise ValueError(f"config.eval_every_steps must be >= 0, got {config.eval_every_steps}.")


def _checks(config, info, mesh, mode: str, config_loss: bool, config_model: bool) -> list:
    """The checks of `mode`, each a no-argument callable that raises ValueError."""
    checks = [
        lambda: sharding.check_divisible(config.eval_batch_size, mesh, "config.eval_batch_size"),
        lambda: decision.check_rule(config.decision.rule),
        lambda: decision.cost_matrix_from_config(config.decision.cost, info.num_classes),
        lambda: inference.InferenceOptions.from_config(config),
    ]
    if config_model:
        checks.append(lambda: factory.check_model_name(config.model))
    if mode != "predict":
        checks.append(lambda: extra.resolve_metrics(config.evaluation.metrics))
    if mode != "predict" and info.thing_classes:
        checks.append(lambda: PanopticEvalOptions.from_config(config, info))
    if mode == "train" and config_loss:
        checks.append(lambda: loss_registry.loss_terms(config.loss))
        checks.append(lambda: objectives.check_class_weight_options(config.loss, info.num_classes))
    if mode == "train":
        checks += [
            lambda: _check_schedule(config),
            lambda: sharding.check_divisible(config.batch_size, mesh, "config.batch_size"),
            lambda: faults.check_nan_policy(config.nan_policy, config.nan_max_consecutive_skips),
            lambda: class_balance.check_rare_class_sampling(config.data),
            lambda: pipeline.check_num_workers(config.data.num_workers),
            lambda: steps.check_accumulation(config.optimizer.accumulate_steps, config.batch_size,
                                             mesh.devices.size),
            lambda: steps.check_ema_decay(config.ema_decay),
        ]
    return checks


def validate_config(config, info, mesh, *, mode: str = "train", config_loss: bool = True,
                    config_model: bool = True) -> None:
    """Checks `config` for `mode` ('train', 'eval' or 'predict') on a dataset with `info`.

    `config` must already hold the dataset's class count and ignore label
    (`seg_jax.data.datasets.with_dataset_info`); `mesh` is the device mesh batches are split over.
    `config_loss` / `config_model`: the run takes its loss / model from the config (False when
    train_and_evaluate was given a `loss_fn` / `model`, whose config entries are then not read).
    Raises `ConfigError` listing every problem found, each naming the setting and the fix.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose one of {MODES}.")
    problems = []
    for check in _checks(config, info, mesh, mode, config_loss, config_model):
        try:
            check()
        except ValueError as error:
            problems.append(str(error))
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"The config has {len(problems)} problems:\n" +
                          "\n".join(f"  - {p}" for p in problems))
