"""The runner's train step and inference, compiled for a benchmark on one fixed batch.

bench_vs_pytorch and bench_accelerator time these: the step is `seg_jax.steps.make_train_step`
(forward in training mode, cross-entropy with the ignore label, backward, the optimizer update),
jitted with the train state donated as `seg_jax.train` does; inference is the model in eval mode
and the argmax over classes. Each program is compiled ahead, so a benchmark can read XLA's cost
analysis and time calls without compilation.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from seg_jax import losses, steps

IGNORE_LABEL = 255


@dataclasses.dataclass
class StepPrograms:
    train: Callable[[], Any]  # one optimizer update; blocks until done
    inference: Callable[[], Any]  # one forward + argmax; blocks until done
    train_flops: float  # XLA's cost analysis of one compiled train step
    inference_flops: float


def flops(compiled) -> float:
    """FLOPs of a compiled program by XLA's cost analysis (a multiply-add counts 2); jax 0.4.30+
    returns a dict, older versions a list with one dict per program."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def compile_programs(model, variables, images, labels, tx: optax.GradientTransformation,
                     learning_rate: float) -> StepPrograms:
    """The runner's train step and inference for `model` with `variables` ({'params',
    'batch_stats'}) on one batch of `images` [N, H, W, 3] and int `labels` [N, H, W]."""
    # The train state owns copies: the step donates its buffers, which inference still reads.
    copy = lambda tree: jax.tree.map(jnp.array, tree)
    state = steps.TrainState.create(
        apply_fn=model.apply, params=copy(variables["params"]),
        batch_stats=copy(variables["batch_stats"]), tx=tx,
        dropout_key=jax.random.key_data(jax.random.key(0)))

    def objective(outputs, batch):
        return losses.cross_entropy(outputs.logits, batch["label"],
                                    ignore_label=IGNORE_LABEL), {}

    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    train_step = jax.jit(steps.make_train_step(objective, optax.constant_schedule(learning_rate)),
                         donate_argnums=0).lower(state, batch).compile()
    holder = {"state": state}

    def train():
        holder["state"], out = train_step(holder["state"], batch)
        return jax.block_until_ready(out.loss)

    inference_state = steps.InferenceState(model.apply, variables["params"],
                                           variables["batch_stats"])
    infer_step = jax.jit(lambda state, images: jnp.argmax(
        steps.inference_model_fn(state)(images).logits, axis=-1)).lower(
        inference_state, batch["image"]).compile()

    def inference():
        return jax.block_until_ready(infer_step(inference_state, batch["image"]))

    return StepPrograms(train=train, inference=inference, train_flops=flops(train_step),
                        inference_flops=flops(infer_step))
