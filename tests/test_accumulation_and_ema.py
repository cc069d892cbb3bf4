"""Gradient accumulation (config.optimizer.accumulate_steps) and the moving average of the
weights (config.ema_decay): the step functions against their definitions, and whole runs that
stop, resume, report and predict with them."""

import json
import os
import shutil
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from run_helpers import read_jsonl
from seg_jax import checkpointing, losses, optim, predict, sharding, steps, train
from seg_jax.data import datasets, pipeline
from seg_jax.models import ModelOutput
from seg_jax.validation import ConfigError


class _TinyNet(nn.Module):
    """Two convolutions, with BatchNorm between them only when asked."""

    num_classes: int = 7
    batch_norm: bool = False

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = nn.Conv(8, (3, 3))(images)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.8)(x)
        x = nn.Conv(self.num_classes, (1, 1))(nn.relu(x))
        return ModelOutput(logits=x)


def _dice_objective(outputs, batch):
    # Soft Dice per image, then the mean over images: the mean over k micro-batches of their
    # means is the full batch's mean, whatever the void pixels, so accumulation must match it.
    loss = losses.dice_loss(outputs.logits, batch["label"], ignore_label=255, per_image=True)
    return loss, {"semantic": loss}


def _shapes_batches(quick_config, num):
    source, info = datasets.get_dataset(quick_config.data, "train")
    loader = pipeline.TrainLoader(source, quick_config.data, global_batch_size=16, seed=0,
                                  num_classes=info.num_classes)
    return [loader.batch(step) for step in range(num)]


def _state(model, tx):
    return steps.create_train_state(model, tx, seed=0, input_shape=(1, 64, 64, 3), ema=True)


def test_two_micro_batches_of_8_give_the_parameters_of_one_batch_of_16(quick_config):
    batches = _shapes_batches(quick_config, 3)
    tx = optax.sgd(0.5, momentum=0.9)
    mesh = sharding.create_mesh()  # the session's 4 CPU devices: micro-batches stay sharded
    assert mesh.devices.size == 4
    final = {}
    for k in (1, 2):
        step = jax.jit(steps.make_train_step(_dice_objective, lambda s: 0.5, accumulate_steps=k),
                       in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)))
        state = _state(_TinyNet(), tx)
        for batch in batches:
            state, out = step(state, sharding.put_batch(batch, mesh))
        final[k] = (state.params, float(out.loss))
    moved = optax.tree.norm(jax.tree.map(jnp.subtract, final[1][0], _state(_TinyNet(), tx).params))
    assert moved > 1e-2  # the updates are not negligible next to the tolerance below
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                 final[1][0], final[2][0])
    np.testing.assert_allclose(final[1][1], final[2][1], rtol=1e-5)  # the mean of the means


def test_micro_batches_interleave_rows_so_shards_stay_on_their_devices():
    batch = {"image": np.arange(16)[:, None], "label": np.arange(16)}
    micro = steps.split_micro_batches(batch, 4)
    np.testing.assert_array_equal(micro["label"], np.arange(16).reshape(4, 4).T)
    assert micro["image"].shape == (4, 4, 1)


def test_the_moving_average_is_the_closed_form_of_the_recorded_weights(quick_config):
    decay, batches = 0.8, _shapes_batches(quick_config, 4)
    step = jax.jit(steps.make_train_step(_dice_objective, lambda s: 0.1, ema_decay=decay))
    state = _state(_TinyNet(batch_norm=True), optax.sgd(0.1))
    recorded = [{"params": state.params, "batch_stats": state.batch_stats}]
    for batch in batches:
        state, _ = step(state, batch)
        recorded.append({"params": state.params, "batch_stats": state.batch_stats})
    n = len(batches)
    # ema_n = d^n w_0 + (1 - d) sum_{t=1..n} d^(n - t) w_t, BatchNorm statistics included.
    coefficients = [decay ** n] + [(1 - decay) * decay ** (n - t) for t in range(1, n + 1)]
    expected = jax.tree.map(lambda *ws: sum(c * np.asarray(w, np.float64)
                                            for c, w in zip(coefficients, ws)), *recorded)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 state.ema, expected)
    assert not np.allclose(state.ema["batch_stats"]["BatchNorm_0"]["mean"],
                           state.batch_stats["BatchNorm_0"]["mean"])
    evaluated = steps.ema_weights(state)
    assert evaluated.params is state.ema["params"]


def test_bad_accumulation_and_decay_are_config_errors(quick_config, tmp_path):
    quick_config.optimizer.accumulate_steps = 3  # batch 8 does not split into 3 micro-batches
    quick_config.ema_decay = 1.0
    with pytest.raises(ConfigError) as error:
        train.train_and_evaluate(quick_config, str(tmp_path))
    message = str(error.value)
    assert "accumulate_steps=3" in message and "multiple of 12" in message
    assert "config.ema_decay must be in [0, 1)" in message


def _state_item(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), checkpointing.STATE_ITEM)
    return ocp.StandardCheckpointer().restore(path)


@pytest.fixture(scope="module")
def accumulated_ema_run(tmp_path_factory, shapes_data_dir):
    """Six updates of 2 micro-batches with a moving average, uninterrupted."""
    from configs import shapes as shapes_config

    config = shapes_config.get_config("quick")
    config.data.data_dir = shapes_data_dir
    config.optimizer.accumulate_steps = 2
    config.ema_decay = 0.7
    config.num_train_steps = 6
    config.log_every_steps = 1
    config.checkpoint_every_steps = 3
    config.data.num_workers = 1
    config.data.prefetch = 1
    config.data.eval_split = "validation[:8]"  # one evaluation batch: the scores are not the point
    workdir = str(tmp_path_factory.mktemp("accumulated_ema"))
    results = train.train_and_evaluate(config, workdir)
    return config, workdir, results


def test_steps_logs_and_checkpoints_count_updates(accumulated_ema_run):
    config, workdir, _ = accumulated_ema_run
    records = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
               if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    # The learning rate of update s is the schedule's at s - 1: it moves once per update, not
    # once per micro-batch.
    schedule = optim.create_schedule(config.optimizer, config.num_train_steps)
    np.testing.assert_allclose([r["learning_rate"] for r in records],
                               [float(schedule(s)) for s in range(6)], rtol=1e-6)
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert saved == [3, 6]


def test_a_preempted_accumulating_run_resumes_to_the_uninterrupted_weights_and_average(
        accumulated_ema_run, tmp_path, monkeypatch):
    config, reference, _ = accumulated_ema_run
    original = pipeline.TrainLoader.batch

    def batch(self, step):  # a preemption notice while update 3 or 4 is being accumulated
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step)

    monkeypatch.setattr(pipeline.TrainLoader, "batch", batch)
    workdir = str(tmp_path / "run")
    stopped = train.train_and_evaluate(config, workdir)
    assert stopped["preempted"] and 2 <= stopped["step"] < 6
    monkeypatch.undo()
    train.train_and_evaluate(config, workdir)
    expected, got = _state_item(reference, 6), _state_item(workdir, 6)
    for key in ("params", "ema", "opt_state"):  # bitwise: the same program on the same numbers
        jax.tree.map(np.testing.assert_array_equal, expected[key], got[key])


def test_evaluation_reports_the_moving_average_beside_the_weights(accumulated_ema_run):
    _, workdir, results = accumulated_ema_run
    ema = results["ema"]
    assert set(ema["per_class_iou"]) == set(results["per_class_iou"])
    assert ema["mean_iou"] != results["mean_iou"]
    assert "step" not in ema
    evals = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "eval"]
    assert evals[-1]["ema/mean_iou"] == pytest.approx(ema["mean_iou"])
    assert "ema/iou/bar" in evals[-1]
    with open(os.path.join(workdir, "results.md")) as f:
        table = f.read()
    assert "EMA weights" in table and "IoU, EMA" in table
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["ema"]["mean_iou"] == pytest.approx(ema["mean_iou"])


def test_predict_reads_either_weights(accumulated_ema_run):
    config, workdir, _ = accumulated_ema_run
    checkpoint = _state_item(workdir, 6)
    for weights, key in (("raw", None), ("ema", "ema")):
        state, step = predict.restore_for_inference(config, workdir, weights=weights)
        stored = checkpoint[key] if key else checkpoint
        assert step == 6
        jax.tree.map(np.testing.assert_array_equal, state.params, stored["params"])
        jax.tree.map(np.testing.assert_array_equal, state.batch_stats, stored["batch_stats"])


def test_predict_with_ema_weights_of_a_run_without_them_names_the_fix(finished_run):
    config, workdir, _ = finished_run
    with pytest.raises(ValueError, match="config.ema_decay=0.*--predict.weights=raw"):
        predict.restore_for_inference(config, workdir, weights="ema")


def test_turning_the_moving_average_on_at_resume_starts_it_at_the_restored_weights(
        finished_run, tmp_path):
    config, finished, _ = finished_run
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(finished, "checkpoints"), os.path.join(workdir, "checkpoints"))
    config = config.copy_and_resolve_references()
    config.ema_decay, config.num_train_steps = 0.5, 31
    config.data.eval_split = "validation[:8]"
    results = train.train_and_evaluate(config, workdir)
    assert results["step"] == 31 and "ema" in results
    before, after = _state_item(finished, 30), _state_item(workdir, 31)
    # One update after the start: ema = 0.5 * w_30 + 0.5 * w_31.
    jax.tree.map(lambda e, w0, w1: np.testing.assert_allclose(e, 0.5 * w0 + 0.5 * w1, rtol=1e-6,
                                                              atol=1e-7),
                 after["ema"]["params"], before["params"], after["params"])


def test_evaluating_without_the_moving_average_drops_it(accumulated_ema_run, tmp_path):
    config, trained, results = accumulated_ema_run
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(trained, "checkpoints"), os.path.join(workdir, "checkpoints"))
    config = config.copy_and_resolve_references()
    config.ema_decay = 0.0
    again = train.evaluate_checkpoint(config, workdir)
    assert "ema" not in again and again["mean_iou"] == pytest.approx(results["mean_iou"])


def test_a_started_average_holds_its_own_buffers_so_the_state_can_be_donated(quick_config):
    # Weights placed where they already are share buffers with the originals; an average started
    # from them (a pretrained backbone, a resume that turns EMA on) must not, or the donating
    # train step fails with "Attempt to donate the same buffer twice".
    state = _state(_TinyNet(), optax.sgd(0.1)).replace(ema=None)
    placed = state.replace(params=jax.device_put(state.params, sharding.replicated(
        sharding.create_mesh(jax.devices()[:1]))))
    started = steps.start_ema(placed)
    jax.tree.map(np.testing.assert_array_equal, started.ema["params"], started.params)
    step = jax.jit(steps.make_train_step(_dice_objective, lambda s: 0.1, ema_decay=0.5),
                   donate_argnums=0)
    step(started, _shapes_batches(quick_config, 1)[0])
