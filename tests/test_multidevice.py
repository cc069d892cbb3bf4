"""Data parallelism: one device and four devices train to the same numbers."""

import os

import jax
import numpy as np

from seg_jax import sharding, train
from seg_jax.data import datasets, pipeline


def _four_devices():
    """The first 4 devices; a session without them is a failure, not a skip (conftest.py sets 4
    CPU devices unless XLA_FLAGS already names a count)."""
    devices = jax.devices()
    assert len(devices) >= 4, (
        f"these tests need 4 devices, found {len(devices)} with "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}: leave the device count out of XLA_FLAGS "
        "(conftest.py then sets 4) or set at least 4")
    return devices[:4]


def _train_losses(config, workdir, devices, num_steps):
    """`(losses of steps 1..num_steps, initial params, params after step 1)` on `devices`."""
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
        placed = sharding.put_batch(batch, experiment.mesh)
        image = placed["image"]  # each device holds its 1/n of the batch
        assert image.sharding.shard_shape(image.shape)[0] == config.batch_size // len(devices)
        state, out = experiment.train_step(state, placed)
        losses.append(float(out.loss))
        if len(losses) == 1:
            first_params = jax.device_get(state.params)
    return np.array(losses), initial_params, first_params


def _assert_same_update(initial, params_a, params_b, rtol):
    """Asserts |a - b| <= rtol * max|a - initial| + the float32 rounding of storing a and b."""
    def check(p0, pa, pb):
        rounding = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(pa), np.abs(pb))
        bound = rtol * np.abs(pa - p0).max() + rounding + 1e-30
        np.testing.assert_array_less(np.abs(pa - pb), bound)

    jax.tree.map(check, initial, params_a, params_b)


# Per step: the bound on |loss(4 devices) - loss(1 device)| / loss(1 device). Rounding compounds
# from step to step. Measured on one device (this test's settings), scaling the initial
# parameters by (1 + 1e-7 * noise), about one ulp, moved the losses of steps 1-4 by up to 1e-7,
# 0, 3.2e-6 and 2.7e-3 (relative, 4 noise draws); 4 devices moved them by 0, 1.1e-7, 3.3e-6 and
# 2.7e-3. Step 4 is thus dominated by that chaos (a bound of 1e-3 there failed), so the
# comparison stops at step 3, with about ten times its one-ulp spread.
LOSS_RTOL = np.array([1e-6, 1e-6, 3e-5])


def test_one_and_four_devices_give_the_same_losses(quick_config, tmp_path):
    # Plain SGD from the first step: the first update is then -lr * gradient, so comparing it
    # compares the gradients (Adam would divide float noise in near-zero gradients by itself).
    quick_config.optimizer.name = "sgd"
    quick_config.optimizer.learning_rate = 0.01
    quick_config.optimizer.warmup_steps = 0
    devices = _four_devices()
    (losses_1, initial, first_1), (losses_4, initial_4, first_4) = (
        _train_losses(quick_config, str(tmp_path / str(n)), devices[:n], len(LOSS_RTOL))
        for n in (1, 4))
    jax.tree.map(np.testing.assert_array_equal, initial, initial_4)  # the same starting point

    # BatchNorm statistics are over the global batch under jit, so only the order of float
    # additions (per-shard partial sums, then an all-reduce) separates the two: the first
    # update agrees to float32 rounding of the gradient ...
    _assert_same_update(initial, first_1, first_4, rtol=1e-4)
    # ... and the losses of the first steps agree within float tolerance (see LOSS_RTOL).
    relative = np.abs(losses_4 - losses_1) / np.abs(losses_1)
    assert np.all(relative <= LOSS_RTOL), f"relative loss differences {relative} > {LOSS_RTOL}"


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

    mesh = sharding.create_mesh(_four_devices())
    sharded = [jax.device_put(m, sharding.batch_sharded(mesh)) for m in
               (pred_sem, pred_inst, gt_sem, gt_inst)]
    assert all(m.sharding.shard_shape(m.shape) == (2, 24, 24) for m in sharded)  # split 4 ways
    many = jax.device_get(jax.jit(stats)(*sharded))
    one = jax.device_get(jax.jit(stats)(*(jax.device_put(m, jax.devices()[0]) for m in
                                          (pred_sem, pred_inst, gt_sem, gt_inst))))
    for key in one:
        np.testing.assert_allclose(many[key], one[key], rtol=1e-6, err_msg=key)
