"""The train state and the pure step functions that `train.py` jit-compiles over the mesh."""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from seg_jax import decision, inference
from seg_jax.metrics import boundary, calibration, confusion
from seg_jax.metrics import panoptic as panoptic_metrics
from seg_jax.models import deeplab, panoptic_deeplab


class TrainState(train_state.TrainState):
    """Params, optimizer state and step (from flax), plus BatchNorm statistics and a dropout key.

    `dropout_key` is a raw uint32[2] key so that checkpoints hold plain arrays; each step's
    dropout randomness is `fold_in(dropout_key, step)`, a pure function of the step.
    """

    batch_stats: Any
    dropout_key: jax.Array


def create_train_state(model, tx, *, seed: int, input_shape) -> TrainState:
    """Initialises the model on a dummy batch of `input_shape` [N, H, W, 3]."""
    # Parameters are drawn with the 'rbg' generator: XLA:CPU compiles its dozens of initialiser
    # calls ~4x faster than threefry's (seconds per run). Values are deterministic given the seed
    # and the backend, which is all resuming and device-count equivalence need.
    init_key = jax.random.key(seed, impl="rbg")
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    variables = model.init(
        {"params": init_key, "dropout": init_key}, jnp.zeros(input_shape, jnp.float32), train=False
    )
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        dropout_key=dropout_key,
    )


@flax.struct.dataclass
class StepOutput:
    loss: jax.Array
    parts: dict  # the objective's named terms (seg_jax.objectives)
    grad_norm: jax.Array
    learning_rate: jax.Array
    skipped: jax.Array  # bool: the update was left out (non-finite loss or gradients)


def make_train_step(objective: Callable, schedule: optax.Schedule, *,
                    skip_nonfinite: bool = False) -> Callable:
    """Returns `train_step(state, batch) -> (state, StepOutput)`.

    `objective(outputs, batch, aux_logits=None) -> (loss, parts)` scores the model's outputs (see
    `seg_jax.objectives`); `aux_logits` are an auxiliary head's, when the model has one.
    BatchNorm runs in training mode and its running statistics are carried in the state; under
    `jax.jit` over a sharded batch, the batch statistics are those of the whole global batch.

    With `skip_nonfinite`, a step whose loss or gradient norm is not finite keeps the previous
    parameters, optimizer state and BatchNorm statistics (only the step counter advances, so the
    input stream and the schedule move on) and reports `skipped=True`.
    """

    def train_step(state: TrainState, batch: dict):
        dropout_rng = jax.random.fold_in(state.dropout_key, state.step)

        def loss_and_stats(params):
            # 'intermediates' collects what a model sows in training, such as an auxiliary
            # head's logits; it is read here and never kept in the state.
            outputs, new_vars = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats", "intermediates"],
                rngs={"dropout": dropout_rng},
            )
            loss, parts = objective(outputs, batch, aux_logits=deeplab.aux_logits(new_vars))
            return loss, (parts, new_vars["batch_stats"])

        (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_and_stats, has_aux=True)(
            state.params)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
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


def _semantic_logits_fn(state: TrainState) -> Callable:
    """`images -> logits` of the state's model in inference mode (a panoptic model's semantics)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def logits_fn(images):
        outputs = state.apply_fn(variables, images, train=False)
        return outputs["logits"] if isinstance(outputs, dict) else outputs

    return logits_fn


def _decide(probs, cost):
    if cost is None:
        return decision.map_decision(probs)
    return decision.bayes_decision(probs, jnp.asarray(cost))


def make_predict_step(
    *, cost=None, inference_options: inference.InferenceOptions = inference.InferenceOptions(),
) -> Callable:
    """Returns `predict_step(state, images) -> predictions [N, H, W] int32`.

    The MAP decision, or with `cost` ([C, C], `cost[c, c_true]`) the Bayes decision, of the
    probabilities of `seg_jax.inference.predict_logits` under `inference_options`.
    """

    def predict_step(state: TrainState, images):
        probs, _ = inference.predict_logits(_semantic_logits_fn(state), images, inference_options)
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
    panoptic: dict | None = None,
    inference_options: inference.InferenceOptions = inference.InferenceOptions(),
) -> Callable:
    """Returns `eval_step(state, batch) -> (stats, predictions [N, H, W] int32)`.

    The probabilities come from `seg_jax.inference.predict_logits` with `inference_options` (one
    pass by default; sliding windows, multi-scale and flip averaging as configured). Batches are
    whole images padded to one canvas (`seg_jax.data.pipeline.eval_batches`): padded pixels are
    labelled `ignore_label`, so every statistic below equals that of the predictions cropped back
    to each image's 'size'.

    Predictions are the MAP (argmax) decision, or with a `cost` matrix ([C, C], `cost[c, c_true]`)
    the Bayes decision that minimises the expected cost at every pixel. `stats` holds the sufficient
    statistics of the batch: 'confusion' [C, C] int32, 'per_image_iou' (the (image, class) IoU
    sums of `seg_jax.metrics.per_image_iou_sums`) and 'calibration' (the reliability bins of the
    softmax probabilities, see `seg_jax.metrics.calibration_bins`); with `boundary_tolerance`
    (pixels) also 'boundary' (`seg_jax.metrics.boundary_statistics`); and with `logits_stride`
    k > 0 also 'logits' [N, H/k, W/k, C] and 'labels' of every k-th row and column, for fitting a
    temperature on the host.

    With `panoptic` (a panoptic model and a batch with 'instance'), the outputs are also turned into
    panoptic maps (`panoptic_postprocess` with the dict's 'thing_classes', 'center_threshold',
    'nms_kernel', 'top_k') and scored: 'panoptic' holds `panoptic_statistics` against the batch's
    labels and instances (with the dict's 'stuff_classes', 'max_segments', 'preset').
    """

    if panoptic is not None and (inference_options.mode != "whole"
                                 or not inference_options.is_single_pass):
        raise ValueError(
            "Panoptic models are evaluated in one whole-image pass: set "
            "config.evaluation.mode='whole', scales=(1.0,) and flip=False (centre and offset "
            "maps are not averaged over windows, scales or flips).")

    def eval_step(state: TrainState, batch: dict):
        if panoptic is not None:
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            outputs = state.apply_fn(variables, batch["image"], train=False)
            logits = outputs["logits"]
            probs = jax.nn.softmax(logits, axis=-1)
        else:
            probs, logits = inference.predict_logits(
                _semantic_logits_fn(state), batch["image"], inference_options)
        predictions = _decide(probs, cost)
        stats = {
            "confusion": confusion.confusion_matrix(
                predictions, batch["label"], num_classes, ignore_label=ignore_label
            ),
            "per_image_iou": confusion.per_image_iou_sums(confusion.per_image_confusion_matrix(
                predictions, batch["label"], num_classes, ignore_label=ignore_label
            )),
            "calibration": calibration.calibration_bins(
                probs, batch["label"], num_bins=num_calibration_bins, ignore_label=ignore_label
            ),
        }
        if boundary_tolerance is not None:
            stats["boundary"] = boundary.boundary_statistics(
                predictions, batch["label"], num_classes, tolerance=boundary_tolerance,
                ignore_label=ignore_label,
            )
        if panoptic is not None:
            pan_semantic, pan_instance = panoptic_deeplab.panoptic_postprocess(
                predictions, outputs["center"], outputs["offset"],
                thing_classes=panoptic["thing_classes"], num_classes=num_classes,
                center_threshold=panoptic["center_threshold"], nms_kernel=panoptic["nms_kernel"],
                top_k=panoptic["top_k"])
            if "size" in batch:  # no segment on padding: as if the maps were cropped back
                outside = ~inference.valid_region(batch["size"], *pan_semantic.shape[1:])
                pan_semantic = jnp.where(outside, ignore_label, pan_semantic)
                pan_instance = jnp.where(outside, 0, pan_instance)
            stats["panoptic"] = panoptic_metrics.panoptic_statistics(
                pan_semantic, pan_instance, batch["label"], batch["instance"],
                num_classes=num_classes, things=tuple(panoptic["thing_classes"]),
                stuff=tuple(panoptic["stuff_classes"]), max_segments=panoptic["max_segments"],
                preset=panoptic["preset"])
        if logits_stride:
            stats["logits"] = logits[:, ::logits_stride, ::logits_stride]
            stats["labels"] = batch["label"][:, ::logits_stride, ::logits_stride]
        return stats, predictions

    return eval_step
