"""Data parallelism: one device and four devices train to the same numbers."""

import jax
import numpy as np
import pytest

from seg_jax import sharding, train
from seg_jax.data import datasets, pipeline

pytestmark = pytest.mark.skipif(
    jax.device_count() < 4,
    reason="needs 4 devices: XLA_FLAGS=--xla_force_host_platform_device_count=4 (README test command)",
)


def _train_losses(config, workdir, devices, num_steps):
    experiment = train.Experiment(config, workdir, mesh=sharding.create_mesh(devices))
    source, info = datasets.get_dataset(config.data, config.data.train_split)
    loader = pipeline.TrainLoader(
        source, config.data, global_batch_size=config.batch_size, seed=config.seed,
        num_classes=info.num_classes,
    )
    state, _ = experiment.initial_state()
    initial_params = jax.device_get(state.params)
    losses = []
    for batch in loader.iterate(0, num_steps):
        state, out = experiment.train_step(state, sharding.put_batch(batch, experiment.mesh))
        losses.append(float(out.loss))
    return np.array(losses), initial_params, jax.device_get(state.params)


def _assert_same_update(initial, params_a, params_b, rtol):
    """Asserts |a - b| <= rtol * max|a - initial| + the float32 rounding of storing a and b."""
    def check(p0, pa, pb):
        rounding = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(pa), np.abs(pb))
        np.testing.assert_array_less(np.abs(pa - pb), rtol * np.abs(pa - p0).max() + rounding + 1e-30)

    jax.tree.map(check, initial, params_a, params_b)


def test_one_and_four_devices_give_the_same_losses(quick_config, tmp_path):
    # Plain SGD from the first step: the first update is then -lr * gradient, so comparing it
    # compares the gradients (Adam would divide float noise in near-zero gradients by itself).
    quick_config.optimizer.name = "sgd"
    quick_config.optimizer.learning_rate = 0.01
    quick_config.optimizer.warmup_steps = 0
    devices = jax.devices()
    runs = {}
    for n in (1, 4):
        runs[n] = [_train_losses(quick_config, str(tmp_path / f"{n}_{k}"), devices[:n], k)
                   for k in (1, 4)]
    (one_step_1, multi_1), (one_step_4, multi_4) = runs[1], runs[4]

    # BatchNorm statistics are over the global batch under jit, so only the order of float
    # additions (per-shard partial sums, then an all-reduce) separates the two: the first
    # update agrees to float32 rounding of the gradient ...
    _assert_same_update(one_step_1[1], one_step_1[2], one_step_4[2], rtol=1e-4)
    # ... and the losses of the first steps agree within float tolerance (rounding compounds
    # from step to step, so later steps get a looser bound).
    np.testing.assert_allclose(multi_4[0][:2], multi_1[0][:2], rtol=1e-6)
    np.testing.assert_allclose(multi_4[0], multi_1[0], rtol=1e-3)


def test_metric_statistics_are_the_same_on_a_sharded_batch():
    # Sufficient statistics computed by jit over a batch split across 4 devices (XLA inserts the
    # cross-device sums) equal those of one device: the contract every evaluator relies on.
    from seg_jax.metrics import confusion, panoptic

    rng = np.random.default_rng(0)
    gt_sem = rng.integers(0, 4, (8, 24, 24)).astype(np.int32)
    gt_inst = np.where(gt_sem >= 2, rng.integers(1, 5, gt_sem.shape), 0).astype(np.int32)
    pred_sem = np.where(rng.random(gt_sem.shape) < 0.2, 0, gt_sem).astype(np.int32)
    pred_inst = np.where(pred_sem >= 2, rng.integers(1, 4, gt_sem.shape), 0).astype(np.int32)

    def stats(*maps):
        return {
            "confusion": confusion.confusion_matrix(maps[0], maps[2], 4),
            **panoptic.panoptic_statistics(*maps, num_classes=4, things=(2, 3), stuff=(0, 1),
                                           max_segments=32),
        }

    mesh = sharding.create_mesh(jax.devices()[:4])
    sharded = [jax.device_put(m, sharding.batch_sharded(mesh)) for m in
               (pred_sem, pred_inst, gt_sem, gt_inst)]
    many = jax.device_get(jax.jit(stats)(*sharded))
    one = jax.device_get(jax.jit(stats)(*(jax.device_put(m, jax.devices()[0]) for m in
                                          (pred_sem, pred_inst, gt_sem, gt_inst))))
    for key in one:
        np.testing.assert_allclose(many[key], one[key], rtol=1e-6, err_msg=key)
