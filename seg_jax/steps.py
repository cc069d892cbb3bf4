"""The train state and the pure step functions that `train.py` jit-compiles over the mesh."""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from seg_jax import decision, inference
from seg_jax.metrics import boundary, calibration, confusion, extra
from seg_jax.panoptic_eval import PanopticEvalOptions, panoptic_batch_statistics


class TrainState(train_state.TrainState):
    """Params, optimizer state and step (from flax), plus BatchNorm statistics, a dropout key and
    the weights' moving average.

    `dropout_key` is a raw uint32[2] key so that checkpoints hold plain arrays; each step's
    dropout randomness is `fold_in(dropout_key, step)`, a pure function of the step. `ema` is
    None, or with `config.ema_decay` > 0 `{'params': ..., 'batch_stats': ...}`, the exponential
    moving average of both (`ema_weights` gives it as a state to evaluate).
    """

    batch_stats: Any
    dropout_key: jax.Array
    ema: Any = None


def create_train_state(model, tx, *, seed: int, input_shape, ema: bool = False) -> TrainState:
    """Initialises the model on a dummy batch of `input_shape` [N, H, W, 3]; with `ema`, the
    moving average starts at the initial weights."""
    # Parameters are drawn with the 'rbg' generator: XLA:CPU compiles its dozens of initialiser
    # calls ~4x faster than threefry's (seconds per run). Values are deterministic given the seed
    # and the backend, which is all resuming and device-count equivalence need.
    init_key = jax.random.key(seed, impl="rbg")
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    variables = model.init(
        {"params": init_key, "dropout": init_key}, jnp.zeros(input_shape, jnp.float32), train=False
    )
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        batch_stats=batch_stats,
        tx=tx,
        dropout_key=dropout_key,
        ema={"params": params, "batch_stats": batch_stats} if ema else None,
    )


def start_ema(state: TrainState) -> TrainState:
    """`state` with a moving average that starts at its weights, as copies: a donated train
    state must not hold one buffer twice (XLA refuses to donate it), and placing an array where
    it already is (`jax.device_put`) returns the same buffer."""
    return state.replace(ema=jax.tree.map(
        jnp.copy, {"params": state.params, "batch_stats": state.batch_stats}))


def ema_weights(state: TrainState) -> TrainState:
    """`state` with its moving-average weights in place of its weights (to evaluate them)."""
    if state.ema is None:
        raise ValueError("This run keeps no moving average of its weights; set config.ema_decay "
                         "(e.g. 0.999) before training to have one.")
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


@flax.struct.dataclass
class StepOutput:
    loss: jax.Array
    parts: dict  # the objective's named terms (seg_jax.objectives)
    grad_norm: jax.Array
    learning_rate: jax.Array
    skipped: jax.Array  # bool: the update was left out (non-finite loss or gradients)


def split_micro_batches(batch: dict, num: int) -> dict:
    """[B, ...] arrays as [num, B / num, ...]: micro-batch i holds rows i, i + num, i + 2 num, ...

    Interleaved rather than contiguous so that a batch sharded over D devices in contiguous
    blocks stays so: each device's block holds B / (D num) rows of every micro-batch, and no
    row moves between devices (needs B divisible by D * num, see `check_accumulation`).
    """
    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def check_accumulation(accumulate_steps: int, batch_size: int, num_devices: int) -> None:
    """Raises ValueError unless every micro-batch splits evenly over the devices."""
    if accumulate_steps < 1:
        raise ValueError(f"config.optimizer.accumulate_steps must be >= 1, got {accumulate_steps}.")
    # Without accumulation the batch only has to split over the devices (checked elsewhere).
    if accumulate_steps > 1 and batch_size % (accumulate_steps * num_devices):
        raise ValueError(
            f"config.batch_size={batch_size} must be divisible by config.optimizer."
            f"accumulate_steps={accumulate_steps} times the {num_devices} device(s), so that each "
            f"micro-batch of batch_size / accumulate_steps splits evenly over the devices; choose "
            f"a batch size that is a multiple of {accumulate_steps * num_devices}.")


def check_ema_decay(ema_decay: float) -> None:
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"config.ema_decay must be in [0, 1) (0 turns the moving average off; "
                         f"0.999 is common), got {ema_decay}.")


def make_train_step(objective: Callable, schedule: optax.Schedule, *,
                    skip_nonfinite: bool = False, accumulate_steps: int = 1,
                    ema_decay: float = 0.0) -> Callable:
    """Returns `train_step(state, batch) -> (state, StepOutput)`: one optimizer update.

    `objective(outputs, batch) -> (loss, parts)` scores the model's `ModelOutput` (see
    `seg_jax.objectives`), whatever heads the model has. BatchNorm runs in training mode and its
    running statistics are carried in the state; under `jax.jit` over a sharded batch, the batch
    statistics are those of the whole global batch.

    With `accumulate_steps` k > 1, the batch is split into k micro-batches
    (`split_micro_batches`) that run one after another in a `lax.scan`, so only one
    micro-batch's activations are alive at a time; the update applies the mean of their
    gradients, and the loss and its parts reported are the means of theirs. This equals the
    full batch's gradient whenever the loss is a mean over images, or over pixels with as many
    valid pixels in each micro-batch. BatchNorm normalises each micro-batch by its own statistics
    and updates its running averages k times. Micro-batch i's dropout key is
    `fold_in(fold_in(dropout_key, step), i)`.

    With `skip_nonfinite`, a step whose loss or gradient norm is not finite keeps the previous
    parameters, optimizer state, BatchNorm statistics and moving average (only the step counter
    advances, so the input stream and the schedule move on) and reports `skipped=True`.

    With `ema_decay` d > 0 (the state made with `ema=True`), after the update
    ema <- d * ema + (1 - d) * (params, batch_stats).
    """

    def gradients(apply_fn, params, batch_stats, batch, dropout_rng):
        def loss_and_stats(params):
            outputs, new_vars = apply_fn(
                {"params": params, "batch_stats": batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_rng},
            )
            loss, parts = objective(outputs, batch)
            return loss, (parts, new_vars["batch_stats"])

        (loss, (parts, new_stats)), grads = jax.value_and_grad(loss_and_stats, has_aux=True)(
            params)
        return loss, parts, grads, new_stats

    def accumulated_gradients(apply_fn, params, batch_stats, batch, dropout_rng):
        def micro_step(carry, inputs):
            grad_sum, stats = carry
            index, micro_batch = inputs
            loss, parts, grads, stats = gradients(
                apply_fn, params, stats, micro_batch, jax.random.fold_in(dropout_rng, index))
            return (jax.tree.map(jnp.add, grad_sum, grads), stats), (loss, parts)

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grad_sum, stats), (losses, parts) = jax.lax.scan(
            micro_step, (zeros, batch_stats),
            (jnp.arange(accumulate_steps), split_micro_batches(batch, accumulate_steps)))
        mean = lambda x: jnp.mean(x, axis=0)
        return (mean(losses), jax.tree.map(mean, parts),
                jax.tree.map(lambda g: g / accumulate_steps, grad_sum), stats)

    def train_step(state: TrainState, batch: dict):
        dropout_rng = jax.random.fold_in(state.dropout_key, state.step)
        compute = gradients if accumulate_steps == 1 else accumulated_gradients
        loss, parts, grads, batch_stats = compute(state.apply_fn, state.params,
                                                  state.batch_stats, batch, dropout_rng)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        if ema_decay:
            weights = {"params": new_state.params, "batch_stats": new_state.batch_stats}
            new_state = new_state.replace(ema=jax.tree.map(
                lambda average, w: ema_decay * average + (1.0 - ema_decay) * w,
                state.ema, weights))
        grad_norm = optax.tree.norm(grads)
        skipped = jnp.asarray(False)
        if skip_nonfinite:
            skipped = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
            kept = jax.tree.map(lambda new, old: jnp.where(skipped, old, new), new_state, state)
            new_state = kept.replace(step=new_state.step)
        out = StepOutput(loss=loss, parts=parts, grad_norm=grad_norm,
                         learning_rate=schedule(state.step), skipped=skipped)
        return new_state, out

    return train_step


@flax.struct.dataclass
class InferenceState:
    """A model's apply function and variables: all that inference needs (a `TrainState` also
    serves wherever this does)."""

    apply_fn: Callable = flax.struct.field(pytree_node=False)
    params: Any
    batch_stats: Any


def inference_model_fn(state: TrainState | InferenceState) -> Callable:
    """`images -> ModelOutput` of the state's model in inference mode."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return lambda images: state.apply_fn(variables, images, train=False)


def _decide(probs, cost):
    if cost is None:
        return decision.map_decision(probs)
    return decision.bayes_decision(probs, jnp.asarray(cost))


def make_predict_step(
    *, cost=None, inference_options: inference.InferenceOptions = inference.InferenceOptions(),
) -> Callable:
    """Returns `predict_step(state, images) -> predictions [N, H, W] int32`.

    The MAP decision, or with `cost` ([C, C], `cost[c, c_true]`) the Bayes decision, of the
    probabilities of `seg_jax.inference.predict_outputs` under `inference_options`.
    """

    def predict_step(state: TrainState, images):
        probs, _ = inference.predict_outputs(inference_model_fn(state), images, inference_options)
        return _decide(probs, cost)

    return predict_step


def make_eval_step(
    num_classes: int,
    ignore_label: int,
    *,
    cost=None,
    num_calibration_bins: int = 15,
    logits_stride: int = 0,
    boundary_tolerance: float | None = None,
    panoptic: PanopticEvalOptions | None = None,
    inference_options: inference.InferenceOptions = inference.InferenceOptions(),
    batch_metrics=(),
) -> Callable:
    """Returns `eval_step(state, batch) -> (stats, predictions [N, H, W] int32)`.

    The model's outputs come from `seg_jax.inference.predict_outputs` with `inference_options`
    (one pass by default; sliding windows, multi-scale and flip averaging of the semantic head as
    configured). Batches are whole images padded to one canvas
    (`seg_jax.data.pipeline.eval_batches`): padded pixels are labelled `ignore_label`, so every
    statistic below equals that of the predictions cropped back to each image's 'size'.

    Predictions are the MAP (argmax) decision, or with a `cost` matrix ([C, C], `cost[c, c_true]`)
    the Bayes decision that minimises the expected cost at every pixel. `stats` holds the sufficient
    statistics of the batch: 'confusion' [C, C] int32, 'per_image_iou' (the (image, class) IoU
    sums of `seg_jax.metrics.per_image_iou_sums`) and 'calibration' (the reliability bins of the
    softmax probabilities, see `seg_jax.metrics.calibration_bins`); with `boundary_tolerance`
    (pixels) also 'boundary' (`seg_jax.metrics.boundary_statistics`); and with `logits_stride`
    k > 0 also 'logits' [N, H/k, W/k, C] and 'labels' of every k-th row and column, for fitting a
    temperature on the host. With `panoptic` options (a panoptic model and a batch with
    'instance'), also 'panoptic': `seg_jax.panoptic_eval.panoptic_batch_statistics`. With
    `batch_metrics` (`seg_jax.metrics.BatchMetric`s), also 'extra': {name: its statistics}.
    """

    def eval_step(state: TrainState, batch: dict):
        probs, outputs = inference.predict_outputs(
            inference_model_fn(state), batch["image"], inference_options)
        predictions = _decide(probs, cost)
        labels = batch["label"]
        stats = {
            "confusion": confusion.confusion_matrix(
                predictions, labels, num_classes, ignore_label=ignore_label),
            "per_image_iou": confusion.per_image_iou_sums(confusion.per_image_confusion_matrix(
                predictions, labels, num_classes, ignore_label=ignore_label)),
            "calibration": calibration.calibration_bins(
                probs, labels, num_bins=num_calibration_bins, ignore_label=ignore_label),
        }
        if boundary_tolerance is not None:
            stats["boundary"] = boundary.boundary_statistics(
                predictions, labels, num_classes, tolerance=boundary_tolerance,
                ignore_label=ignore_label)
        if panoptic is not None:
            stats["panoptic"] = panoptic_batch_statistics(
                outputs, predictions, batch, panoptic, num_classes=num_classes,
                ignore_label=ignore_label)
        if batch_metrics:
            stats["extra"] = extra.batch_statistics(
                batch_metrics, predictions, labels, num_classes=num_classes,
                ignore_label=ignore_label)
        if logits_stride:
            stats["logits"] = outputs.logits[:, ::logits_stride, ::logits_stride]
            stats["labels"] = labels[:, ::logits_stride, ::logits_stride]
        return stats, predictions

    return eval_step
