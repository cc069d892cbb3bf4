"""The pieces the speed benchmarks rest on: the compiled runner step they time, and the PyTorch
twin of a seg_jax model that bench_vs_pytorch times against it (the same function)."""

import importlib
import os

import jax
import numpy as np
import optax
import pytest

from configs import models as model_configs
from experiments.benchmarks import step_programs
from seg_jax.models import create_model

try:
    import torch  # noqa: F401
except ImportError:
    torch = None


def _tiny_fields(**overrides):
    # The shapes main job's family (dilated ResNet-18 at output stride 8), narrower.
    return model_configs.deeplabv3(
        num_classes=3, backbone="resnet18", base_width=4, output_stride=8,
        atrous_rates=(2, 4, 6), aspp_channels=8, **overrides)


def test_compiled_programs_train_and_infer_from_their_own_copies():
    model = create_model(_tiny_fields())
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 32, 32)).astype(np.int32)
    variables = jax.jit(lambda key: model.init(key, images[:1], train=False))(
        jax.random.key(0, impl="rbg"))
    before = np.asarray(variables["params"]["classifier"]["kernel"]).copy()
    programs = step_programs.compile_programs(
        model, variables, images, labels, optax.sgd(0.1, momentum=0.9), 0.1)
    losses = [float(programs.train()) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The step donates its state; inference reads the untouched variables it was given.
    predictions = np.asarray(programs.inference())
    assert predictions.shape == (2, 32, 32) and predictions.max() < 3
    np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"], before)
    assert programs.train_flops > programs.inference_flops > 0


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_pytorch_twin_computes_the_seg_jax_models_logits(monkeypatch):
    # The benchmark sets XLA_FLAGS when imported (for its own process): keep that out of the
    # environment later tests' subprocesses inherit.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    bench_vs_pytorch = importlib.import_module("experiments.benchmarks.bench_vs_pytorch")
    fields = _tiny_fields(dropout_rate=0.1)
    module = bench_vs_pytorch.torch_twin(fields)
    images = np.random.default_rng(1).normal(size=(1, 40, 36, 3)).astype(np.float32)
    error = bench_vs_pytorch.check_same_function(
        create_model(fields), bench_vs_pytorch.jax_variables(module), module, images)
    assert error < 1e-5
    with pytest.raises(ValueError, match="no PyTorch reference"):
        bench_vs_pytorch.torch_twin(dict(fields, separable=True))
