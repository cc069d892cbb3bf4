"""Tests of DeepLabV3, ASPP and create_model: sizes, torchvision parity, train/eval, gradients."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seg_jax.models import ASPP, DeepLabV3, ResNet, create_model, register_model
from model_helpers import init_shapes, random_variables, rbg_key


def _count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _tiny_model(output_stride=8, dtype=jnp.float32, **kwargs) -> DeepLabV3:
    backbone = ResNet(
        stage_sizes=(1, 1, 1, 1), block="basic", base_width=4, output_stride=output_stride,
        dtype=dtype,
    )
    return DeepLabV3(
        num_classes=3, backbone=backbone, aspp_channels=8, atrous_rates=(2, 3), dtype=dtype,
        **kwargs,
    )


def _config(**overrides) -> ml_collections.ConfigDict:
    fields = dict(
        name="deeplabv3", num_classes=7, backbone="resnet18", base_width=8, stem="imagenet",
        output_stride=8, multi_grid=(1, 1), atrous_rates=(12, 24, 36), aspp_channels=16,
        dropout_rate=0.1, separable=False, dtype="float32",
    )
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("height, width", [(33, 47), (64, 64), (9, 13), (1, 2)])
def test_logits_have_the_input_size(output_stride, height, width):
    model = _tiny_model(output_stride)
    images = jnp.zeros((2, height, width, 3))
    logits = jax.eval_shape(lambda: model.init_with_output(rbg_key(), images, train=False)[0])
    assert logits.shape == (2, height, width, 3)
    assert logits.dtype == jnp.float32


def test_deeplabv3_resnet50_parameter_count_matches_torchvision():
    # torchvision.models.segmentation.deeplabv3_resnet50(num_classes=21, aux_loss=False): backbone
    # 23,508,032 (no fc) + ASPP 15,535,104 + head 3x3 conv/BN 590,336 + classifier 5,397.
    # BatchNorm gamma/beta count as parameters, running statistics do not.
    config = _config(backbone="resnet50", base_width=64, num_classes=21, aspp_channels=256,
                     multi_grid=(1, 1, 1))
    variables = init_shapes(create_model(config), jnp.zeros((1, 64, 64, 3)))
    assert _count(variables["params"]) == 39_638_869
    assert _count(variables["params"]["aspp"]) == 15_535_104


def test_aspp_branches_follow_torchvision_layout():
    features = jnp.zeros((2, 5, 5, 32))
    params = init_shapes(ASPP(channels=8, atrous_rates=(6, 12, 18)), features)["params"]
    assert sorted(params) == ["atrous0", "atrous1", "atrous2", "conv1x1", "pooling", "project"]
    assert params["atrous1"]["conv"]["kernel"].shape == (3, 3, 32, 8)
    assert params["pooling"]["conv"] == {"kernel": jax.ShapeDtypeStruct((1, 1, 32, 8), jnp.float32)}
    assert params["project"]["conv"]["kernel"].shape == (1, 1, 5 * 8, 8)

    separable = init_shapes(ASPP(channels=8, separable=True), features)["params"]
    assert separable["atrous0"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 32)
    assert separable["atrous0"]["pointwise"]["conv"]["kernel"].shape == (1, 1, 32, 8)


def test_aspp_rates_beyond_the_feature_map_degenerate_to_1x1_convs():
    # DeepLabv3 Sec. 3.3: with the rate (6) beyond the 3x3 feature map every off-centre tap reads
    # zero padding, so the atrous branch is a 1x1 conv. A rate-1 conv, or a pooling branch that was
    # not broadcast evenly, would make the output vary near the border for a constant input.
    aspp = ASPP(channels=4, atrous_rates=(6,), dropout_rate=0.0)
    features = jnp.broadcast_to(jnp.arange(6.0), (1, 3, 3, 6))
    out = aspp.apply(random_variables(aspp, features), features, train=False)
    np.testing.assert_allclose(out, jnp.broadcast_to(out[:, :1, :1], out.shape), atol=1e-6)


@pytest.fixture(scope="module")
def train_step_outputs():
    """One jitted forward + backward pass of a tiny model in training mode, shared by the tests."""
    model = _tiny_model(dropout_rate=0.5)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 33, 47, 3)), jnp.float32)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 3, size=(2, 33, 47)))
    variables = random_variables(model, images)

    @jax.jit
    def step(variables, dropout_key):
        def loss_fn(params):
            logits, updates = model.apply(
                {**variables, "params": params}, images, train=True, mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            log_probs = jax.nn.log_softmax(logits)
            nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)
            return nll.mean(), (logits, updates)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, updates)), grads = grad_fn(variables["params"])
        return loss, logits, updates, grads

    return dict(model=model, images=images, variables=variables, step=step,
                outputs=step(variables, rbg_key(1)))


def test_gradients_are_finite_and_reach_the_stem(train_step_outputs):
    loss, _, _, grads = train_step_outputs["outputs"]
    assert np.isfinite(loss)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert jnp.any(grads["backbone"]["stem"]["conv"]["kernel"] != 0)
    assert jnp.any(grads["classifier"]["bias"] != 0)


def test_training_updates_batch_stats(train_step_outputs):
    _, _, updates, _ = train_step_outputs["outputs"]
    old = train_step_outputs["variables"]["batch_stats"]
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(old)
    new_leaves, old_leaves = jax.tree.leaves(updates["batch_stats"]), jax.tree.leaves(old)
    assert all(np.any(np.asarray(new) != np.asarray(o)) for new, o in zip(new_leaves, old_leaves))


def test_training_dropout_is_reproducible_given_the_rng(train_step_outputs):
    step, variables = train_step_outputs["step"], train_step_outputs["variables"]
    _, logits, _, _ = train_step_outputs["outputs"]
    np.testing.assert_array_equal(step(variables, rbg_key(1))[1], logits)
    assert jnp.any(step(variables, rbg_key(2))[1] != logits)


def test_training_requires_mutable_batch_stats_and_dropout_rng(train_step_outputs):
    model, images, variables = (train_step_outputs[k] for k in ("model", "images", "variables"))
    # The errors are raised while tracing, so eval_shape finds them without computing anything.
    with pytest.raises(flax.errors.ModifyScopeVariableError):
        jax.eval_shape(lambda: model.apply(variables, images, train=True, rngs={"dropout": rbg_key()}))
    with pytest.raises(flax.errors.InvalidRngError):
        jax.eval_shape(lambda: model.apply(variables, images, train=True, mutable=["batch_stats"]))


def test_evaluation_is_deterministic_and_needs_no_rng(train_step_outputs):
    model, images, variables = (train_step_outputs[k] for k in ("model", "images", "variables"))
    evaluate = jax.jit(lambda variables, images: model.apply(variables, images, train=False))
    first = evaluate(variables, images)
    np.testing.assert_array_equal(evaluate(variables, images), first)
    assert first.shape == (2, 33, 47, 3)
    # Evaluation uses the running statistics, so it differs from the training-mode logits.
    assert jnp.any(first != train_step_outputs["outputs"][1])


def test_bfloat16_computes_in_bfloat16_but_returns_float32_logits_and_params():
    model = _tiny_model(dtype=jnp.bfloat16)
    images = jnp.zeros((1, 16, 16, 3))
    variables = init_shapes(model, images)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
    conv_dtypes = {
        eqn.invars[0].aval.dtype
        for eqn in jaxpr.eqns
        if eqn.primitive.name == "conv_general_dilated"
    }
    assert conv_dtypes == {jnp.dtype(jnp.bfloat16)}
    assert jaxpr.out_avals[0].dtype == jnp.float32


def test_create_model_builds_the_configured_model():
    model = create_model(_config(separable=True, dtype="bfloat16", multi_grid=(1, 2)))
    assert isinstance(model, DeepLabV3) and isinstance(model.backbone, ResNet)
    assert model.num_classes == 7 and model.atrous_rates == (12, 24, 36) and model.separable
    assert model.backbone.stage_sizes == (2, 2, 2, 2) and model.backbone.block == "basic"
    assert model.backbone.multi_grid == (1, 2) and model.backbone.base_width == 8
    assert model.dtype == jnp.bfloat16 and model.backbone.dtype == jnp.bfloat16
    images = jnp.zeros((1, 20, 30, 3))
    logits = jax.eval_shape(lambda: model.init_with_output(rbg_key(), images, train=False)[0])
    assert logits.shape == (1, 20, 30, 7)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(name="deeplabv4"), r"Unknown model name 'deeplabv4'; valid names: \[.*'deeplabv3'"),
        (dict(backbone="resnet152"), r"Unknown backbone 'resnet152'; valid backbones: \[.*"),
        (dict(output_stride=12), r"output_stride=12; valid output strides: \[8, 16, 32\]"),
        (dict(output_stride=32, stem="conv3x3"), r"not reachable with the 'conv3x3' stem"),
        (dict(multi_grid=(1, 2, 4)), r"one factor per block of the last stage, which has 2"),
        (dict(dtype="float16"), r"Unknown dtype 'float16'"),
        (dict(output_strid=8), r"Unknown model config keys \['output_strid'\]"),
        (dict(num_classes=None), r"missing required keys \['num_classes'\]"),
    ],
)
def test_create_model_rejects_bad_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model(_config(**overrides))


def test_register_model_refuses_to_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        register_model("deeplabv3")(lambda config: None)
