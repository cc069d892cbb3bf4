"""Tests of DeepLabV3, ASPP and create_model: sizes, torchvision parity, train/eval, gradients;
every registered model's shapes and dtypes; the auxiliary head; the separable switch."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import models as model_configs
from seg_jax.models import (
    ASPP, DeepLabV3, ModelOutput, ResNet, create_model, register_model, registered_models,
)
from seg_jax.models.context import YU_KOLTUN_DILATIONS
from seg_jax.models.factory import create_backbone
from model_helpers import init_shapes, random_variables, rbg_key


# For tests that run a model only to check values, not speed: halves XLA:CPU compile times.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


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
        num_classes=7, backbone="resnet18", base_width=8, stem="imagenet", output_stride=8,
        multi_grid=(1, 1), atrous_rates=(12, 24, 36), aspp_channels=16, dropout_rate=0.1,
        separable=False, dtype="float32",
    )
    fields.update(overrides)
    return model_configs.model_config(fields.pop("name", "deeplabv3"), **fields)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("height, width", [(33, 47), (64, 64), (9, 13), (1, 2)])
def test_logits_have_the_input_size(output_stride, height, width):
    model = _tiny_model(output_stride)
    images = jnp.zeros((2, height, width, 3))
    logits = jax.eval_shape(
        lambda: model.init_with_output(rbg_key(), images, train=False)[0].logits)
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
            out, updates = model.apply(
                {**variables, "params": params}, images, train=True, mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            logits = out.logits
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
    output = evaluate(variables, images)
    assert isinstance(output, ModelOutput) and output.aux_logits is None
    assert output.center is None and output.offset is None and not output.is_panoptic
    first = output.logits
    np.testing.assert_array_equal(evaluate(variables, images).logits, first)
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
    output = jax.eval_shape(lambda: model.init_with_output(rbg_key(), images, train=False)[0])
    assert output.logits.shape == (1, 20, 30, 7)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(name="deeplabv4"), r"Unknown model name config.model.name='deeplabv4'; valid names: \[.*'deeplabv3'"),
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
    config = _config()
    config.update(overrides)  # as a hand-written config would (the block itself checks keys)
    with pytest.raises(ValueError, match=message):
        create_model(config)


def test_builders_require_every_field_and_take_no_default_of_their_own():
    config = _config()
    del config["dropout_rate"]
    with pytest.raises(ValueError, match=r"missing required keys \['dropout_rate'\]; the config "
                                         r"files hold their defaults \(configs/models.py"):
        create_model(config)
    with pytest.raises(ValueError, match=r"missing required keys \['stem'\]"):
        create_backbone({key: value for key, value in _config().items() if key != "stem"})
    # The configs' block is complete for every registered model, and only the configs hold it.
    assert set(model_configs.MODELS) == set(registered_models())
    assert model_configs.DILATED_CONTEXT["dilations"] == YU_KOLTUN_DILATIONS
    for name in model_configs.MODELS:
        create_model(model_configs.model_config(name, num_classes=3, base_width=8))


def test_register_model_refuses_to_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        register_model("deeplabv3")(lambda config: None)


# --- Every model of the factory: shapes at every output stride, odd sizes, bfloat16 -------------


_DEEPLAB_HEAD = dict(atrous_rates=(12, 24, 36), aspp_channels=16, dropout_rate=0.1,
                     separable=False, aux_head=False)
_PLUS_DECODER = dict(decoder_channels=16, low_level_channels=8)
_MOBILENET = dict(backbone="mobilenet_v2", multi_grid=(1, 1, 1))

# name -> model config fields beyond the backbone's. Tiny widths: the shape tests trace without
# compiling.
MODEL_CASES = {
    "deeplabv3_resnet18": dict(name="deeplabv3", **_DEEPLAB_HEAD),
    "deeplabv3plus_resnet18": dict(name="deeplabv3plus", **_DEEPLAB_HEAD, **_PLUS_DECODER),
    "deeplabv3_mobilenet_v2": dict(name="deeplabv3", **_DEEPLAB_HEAD, **_MOBILENET),
    "deeplabv3plus_mobilenet_v2": dict(
        name="deeplabv3plus", **_DEEPLAB_HEAD, **_PLUS_DECODER, **_MOBILENET),
    # Yu & Koltun's context module on a dilated ResNet; it has no auxiliary head.
    "dilated_context_resnet18": dict(name="dilated_context"),
}


def test_every_model_case_is_registered():
    assert {fields["name"] for fields in MODEL_CASES.values()} <= set(registered_models())


def _case_config(case: str, **overrides) -> ml_collections.ConfigDict:
    fields = MODEL_CASES[case]
    backbone = dict(num_classes=7, backbone="resnet18", base_width=8, stem="imagenet",
                    output_stride=8, multi_grid=(1, 1), dtype="float32")
    if "aux_head" not in fields:
        overrides.pop("aux_head", None)
    fields = {**backbone, **fields, **overrides}
    return model_configs.model_config(fields.pop("name"), **fields)


def _has_aux_head(case: str) -> bool:
    return "aux_head" in MODEL_CASES[case]


_FULL_GRID = [(stride, size) for stride in (8, 16, 32) for size in ((65, 97), (33, 47))]
# DeepLabV3+ (new here) on the full grid. DeepLabV3's logits are checked on a grid above, and
# the other backbones and models have their own shape tests: two points check them here.
_SHAPE_CASES = [
    (case, stride, size)
    for case in sorted(MODEL_CASES)
    for stride, size in (
        _FULL_GRID if case == "deeplabv3plus_resnet18" else [(8, (65, 97)), (32, (33, 47))]
    )
]


@pytest.mark.parametrize("case, output_stride, size", _SHAPE_CASES)
def test_every_model_returns_input_sized_float32_logits_and_aux_logits(case, output_stride, size):
    model = create_model(_case_config(case, output_stride=output_stride, aux_head=True))
    height, width = size
    images = jnp.zeros((2, height, width, 3))
    variables = init_shapes(model, images)
    output, _ = jax.eval_shape(
        lambda v: model.apply(v, images, train=True, rngs={"dropout": rbg_key()},
                              mutable=["batch_stats"]),
        variables,
    )
    assert output.logits.shape == (2, height, width, 7) and output.logits.dtype == jnp.float32
    aux = output.aux_logits
    if _has_aux_head(case):
        assert aux.shape == (2, height, width, 7) and aux.dtype == jnp.float32
    else:
        assert aux is None


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_every_model_runs_in_bfloat16_and_returns_float32(case):
    model = create_model(_case_config(case, dtype="bfloat16", output_stride=16, aux_head=True))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 17, 23, 3)), jnp.float32)
    variables = random_variables(model, images)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))

    def train_forward(variables):
        output, _ = model.apply(variables, images, train=True, rngs={"dropout": rbg_key()},
                                mutable=["batch_stats"])
        return output

    jaxpr = jax.make_jaxpr(train_forward)(variables)
    conv_dtypes = {eqn.invars[0].aval.dtype for eqn in jaxpr.eqns
                   if eqn.primitive.name == "conv_general_dilated"}
    assert conv_dtypes == {jnp.dtype(jnp.bfloat16)}
    outputs = 2 if _has_aux_head(case) else 1
    assert [aval.dtype for aval in jaxpr.out_avals] == [jnp.float32] * outputs
    if case not in ("deeplabv3_resnet18", "deeplabv3plus_resnet18"):
        return  # Compiling costs seconds; the other models' own tests run them.
    # Run the evaluation graph for real.
    evaluate = jax.jit(lambda v: model.apply(v, images, train=False).logits,
                       compiler_options=_FAST_COMPILE)
    logits = np.asarray(evaluate(variables))
    assert logits.shape == (1, 17, 23, 7) and logits.dtype == np.float32
    assert np.isfinite(logits).all()


# --- The auxiliary FCN head ----------------------------------------------------------------------


def test_aux_head_parameter_count_matches_torchvision_deeplabv3_resnet50():
    # torchvision deeplabv3_resnet50(num_classes=21, aux_loss=True) has 42,004,074 parameters: the
    # 39,638,869 above plus FCNHead(1024, 21): 3x3 conv 1024 -> 256 without bias 2,359,296, BN 512,
    # 1x1 conv 256 -> 21 with bias 5,397.
    config = _config(backbone="resnet50", base_width=64, num_classes=21, aspp_channels=256,
                     multi_grid=(1, 1, 1), aux_head=True)
    params = init_shapes(create_model(config), jnp.zeros((1, 64, 64, 3)))["params"]
    assert _count(params) == 42_004_074
    assert _count(params["aux_head"]) == 2_359_296 + 512 + 5_397
    assert params["aux_head"]["conv"]["conv"]["kernel"].shape == (3, 3, 1024, 256)
    assert params["aux_head"]["classifier"]["kernel"].shape == (1, 1, 256, 21)


@pytest.fixture(scope="module")
def aux_model():
    model = _tiny_model(aux_head=True, dropout_rate=0.0)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 17, 23, 3)), jnp.float32)
    return model, images, random_variables(model, images)


@pytest.fixture(scope="module")
def aux_outputs(aux_model):
    """The outputs of evaluation and training, and the gradient of an aux-only loss.

    One compiled program for all, as compiling is what costs time here.
    """
    model, images, variables = aux_model
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 3, size=(2, 17, 23)))
    rngs = {"dropout": rbg_key()}

    def aux_loss(params):
        output, updates = model.apply({**variables, "params": params}, images, train=True,
                                      rngs=rngs, mutable=["batch_stats"])
        log_probs = jax.nn.log_softmax(output.aux_logits)
        one_hot = jax.nn.one_hot(labels, 3)  # not take_along_axis: slow to compile on CPU
        return -jnp.sum(one_hot * log_probs, axis=-1).mean(), (output, updates)

    @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
    def run(variables):
        evaluation = model.apply(variables, images, train=False)
        grads, training = jax.grad(aux_loss, has_aux=True)(variables["params"])
        return evaluation, training, grads

    return dict(zip(("evaluation", "training", "grads"), run(variables)))


def test_aux_head_is_created_at_init_whatever_train_is(aux_model):
    model, images, _ = aux_model
    variables = init_shapes(model, images)
    assert set(variables) == {"params", "batch_stats"}
    assert "aux_head" in variables["params"] and "aux_head" in variables["batch_stats"]
    # stage 3 of the tiny ResNet has 4 * base_width = 16 channels -> 16 / 4 = 4 hidden.
    assert variables["params"]["aux_head"]["conv"]["conv"]["kernel"].shape == (3, 3, 16, 4)
    train_init = jax.eval_shape(
        lambda: model.init({"params": rbg_key(), "dropout": rbg_key(1)}, images, train=True)
    )
    assert set(train_init) == {"params", "batch_stats"}


def test_aux_logits_only_in_training(aux_model, aux_outputs):
    old = aux_model[2]["batch_stats"]["aux_head"]
    same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))  # noqa: E731
    assert aux_outputs["evaluation"].aux_logits is None
    assert aux_outputs["evaluation"].logits.shape == (2, 17, 23, 3)
    output, updates = aux_outputs["training"]
    assert set(updates) == {"batch_stats"}
    assert output.aux_logits.shape == (2, 17, 23, 3)
    assert output.aux_logits.dtype == jnp.float32
    assert jnp.any(output.aux_logits != output.logits)
    assert not same(updates["batch_stats"]["aux_head"], old)  # the head's statistics train


def test_aux_loss_trains_the_aux_head_and_the_backbone_up_to_stage3_only(aux_outputs):
    grads = aux_outputs["grads"]
    def nonzero(tree):
        return any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(tree))

    assert nonzero(grads["aux_head"]) and nonzero(grads["backbone"]["layer3_0"])
    assert nonzero(grads["backbone"]["stem"])
    for unused in ("aspp", "head", "classifier"):
        assert not nonzero(grads[unused]), unused
    assert not nonzero(grads["backbone"]["layer4_0"])  # stage 4 comes after 'stage3'



# --- The depthwise-separable switch ---------------------------------------------------------------


def test_separable_switch_reaches_every_3x3_head_conv_but_not_the_backbone():
    # ResNet-50 deeplabv3 as above. Each 3x3 conv from C_in to C_out (+ BN) saves
    # 8 C_in C_out - 11 C_in parameters when separable (tests/test_models_layers.py):
    #   3 ASPP atrous branches 2048 -> 256: 3 * (4,194,304 - 22,528) = 12,515,328
    #   head conv 256 -> 256:                    524,288 -  2,816  =    521,472
    # total 13,036,800, so 39,638,869 - 13,036,800 = 26,602,069 parameters.
    config = _config(backbone="resnet50", base_width=64, num_classes=21, aspp_channels=256,
                     multi_grid=(1, 1, 1))
    images = jnp.zeros((1, 64, 64, 3))
    standard = init_shapes(create_model(config), images)["params"]
    config.separable = True
    separable = init_shapes(create_model(config), images)["params"]
    assert _count(standard) - _count(separable) == 13_036_800
    assert _count(separable) == 26_602_069
    assert separable["head"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 256)
    assert jax.tree.map(jnp.shape, separable["backbone"]) == jax.tree.map(
        jnp.shape, standard["backbone"]
    )


@pytest.mark.parametrize("output_stride,rates", [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))])
def test_default_aspp_rates_follow_the_output_stride(output_stride, rates):
    # DeepLabv3 Sec. 3.3: (6, 12, 18) at output stride 16, doubled at 8; explicit rates win.
    config = model_configs.deeplabv3(num_classes=3, output_stride=output_stride)
    assert config.atrous_rates == ()  # the configs' default: follow the output stride
    assert create_model(config).atrous_rates == rates
    config.atrous_rates = (2, 4)
    assert create_model(config).atrous_rates == (2, 4)
