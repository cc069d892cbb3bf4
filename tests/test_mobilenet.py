"""Tests of seg_jax.models.mobilenet: torchvision's layout and sizes, output stride, factory.

Feature equality with torchvision's weights is tested in test_weights_import.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import models as model_configs
from seg_jax.models.factory import create_backbone, create_model
# Importing the module registers the 'mobilenet_v2' backbone.
from seg_jax.models.mobilenet import MobileNetV2, make_divisible, mobilenet_v2_layout
from model_helpers import init_shapes, random_variables, rbg_key


def _features(model, images):
    return jax.eval_shape(lambda: model.init_with_output(rbg_key(), images, train=False)[0])


def _param_count(model):
    variables = init_shapes(model, jnp.zeros((1, 32, 32, 3)))
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
    "value, expected", [(32, 32), (16 * 0.5, 8), (24 * 0.5, 16), (32 * 0.35, 16), (1.6, 8),
                        (1280 * 1.3, 1664), (1000 * 0.75, 752), (60, 64)],
)
def test_make_divisible_rounds_like_torchvision(value, expected):
    # Nearest multiple of 8, at least 8, never more than 10% below the value (11.2 -> 16, not 8).
    assert make_divisible(value) == expected


def test_layout_is_the_papers_table():
    layout = mobilenet_v2_layout()
    assert len(layout) == 17
    assert [block.features for block in layout] == (
        [16] + [24] * 2 + [32] * 3 + [64] * 4 + [96] * 3 + [160] * 3 + [320]
    )
    assert [block.expansion for block in layout] == [1] + [6] * 16
    assert [i + 1 for i, block in enumerate(layout) if block.strides == 2] == [2, 4, 7, 14]
    assert [i + 1 for i, block in enumerate(layout) if block.residual] == (
        [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
    )
    assert all(block.dilation == 1 for block in layout)


def test_output_stride_replaces_the_last_strides_by_dilation():
    def strides(layout):
        return [block.strides for block in layout]

    def dilations(layout):
        return [block.dilation for block in layout]

    os16 = mobilenet_v2_layout(output_stride=16)
    assert [i + 1 for i, s in enumerate(strides(os16)) if s == 2] == [2, 4, 7]
    # Block 14 used to be strided: it keeps the previous dilation, the blocks after it get 2.
    assert dilations(os16) == [1] * 13 + [1, 2, 2, 2]
    os8 = mobilenet_v2_layout(output_stride=8)
    assert [i + 1 for i, s in enumerate(strides(os8)) if s == 2] == [2, 4]
    assert dilations(os8) == [1] * 6 + [1, 2, 2, 2] + [2, 2, 2] + [2, 4, 4] + [4]
    # Replacing a stride never changes which blocks add their input.
    assert [b.residual for b in os8] == [b.residual for b in mobilenet_v2_layout()]


def test_residuals_follow_the_undilated_stride_even_when_widths_round_equal():
    # At width 0.1 the widths round so that every strided block keeps its width; such a block
    # must still not add its input, dilated or not (the strided network cannot).
    for output_stride in (8, 16, 32):
        layout = mobilenet_v2_layout(output_stride=output_stride, width_multiplier=0.1)
        for index in (1, 3, 6, 13):  # blocks 2, 4, 7, 14: strided in the undilated network
            block = layout[index]
            assert block.in_features == block.features and not block.residual, index + 1


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("height, width", [(64, 64), (67, 45)])
def test_feature_shapes_and_strides(output_stride, height, width):
    model = MobileNetV2(output_stride=output_stride)
    features = _features(model, jnp.zeros((2, height, width, 3)))
    strides = model.feature_strides()
    assert strides == {
        "low_level": 4, "stage2": 8, "stage3": min(16, output_stride), "high_level": output_stride
    }
    channels = {"low_level": 24, "stage2": 32, "stage3": 96, "high_level": 1280}
    for name, stride in strides.items():
        # PyTorch's padding arithmetic: ceil division of the input size by the stride.
        size = (-(-height // stride), -(-width // stride))
        assert features[name].shape == (2, *size, channels[name]), name


def test_parameter_count_matches_torchvisions_features():
    # torchvision.models.mobilenet_v2().features: 2,223,872 parameters (3,504,872 minus the
    # classifier's 1280 * 1000 + 1000).
    assert _param_count(MobileNetV2(output_stride=8)) == 3_504_872 - 1_281_000 == 2_223_872


def test_width_multiplier_follows_torchvision():
    model = MobileNetV2(width_multiplier=0.5)
    variables = init_shapes(model, jnp.zeros((1, 32, 32, 3)))["params"]
    assert variables["stem"]["conv"]["kernel"].shape == (3, 3, 3, 16)
    widths = [variables[f"block{i}"]["project"]["conv"]["kernel"].shape[-1] for i in range(1, 18)]
    assert widths == [8] + [16] * 2 + [16] * 3 + [32] * 4 + [48] * 3 + [80] * 3 + [160]
    assert variables["last_conv"]["conv"]["kernel"].shape == (1, 1, 160, 1280)  # never narrowed
    assert variables["block1"].keys() == {"depthwise", "project"}  # t = 1: no expansion conv
    assert variables["block2"]["expand"]["conv"]["kernel"].shape == (1, 1, 8, 48)
    assert variables["block2"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 48)


@pytest.mark.parametrize("width_multiplier", [0.25, 0.1])
def test_dilated_network_equals_strided_network_subsampled(width_multiplier):
    # Same weights; output stride 8 must compute output stride 32's features at every 4th pixel.
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 61, 70, 3)), jnp.float32)
    strided = MobileNetV2(width_multiplier=width_multiplier, output_stride=32)
    dilated = MobileNetV2(width_multiplier=width_multiplier, output_stride=8)
    variables = random_variables(strided, images)
    coarse, fine = jax.jit(
        lambda v, x: (strided.apply(v, x, train=False), dilated.apply(v, x, train=False))
    )(variables, images)
    for name in ("low_level", "stage2", "stage3", "high_level"):
        step = strided.feature_strides()[name] // dilated.feature_strides()[name]
        np.testing.assert_allclose(
            fine[name][:, ::step, ::step], coarse[name], rtol=1e-4, atol=1e-4, err_msg=name
        )


def test_relu6_and_linear_bottleneck():
    images = jnp.asarray(np.random.default_rng(1).normal(size=(1, 32, 32, 3)) * 50, jnp.float32)
    model = MobileNetV2(width_multiplier=0.25)
    variables = random_variables(model, images)
    # With these random weights the last conv's outputs stay below 6 (max 4.2), where ReLU and
    # ReLU6 agree; ten times its BatchNorm scale pushes many past 6, where only ReLU6 clips.
    params = dict(variables["params"])
    params["last_conv"] = dict(params["last_conv"])
    params["last_conv"]["bn"] = dict(params["last_conv"]["bn"])
    params["last_conv"]["bn"]["scale"] = 10 * params["last_conv"]["bn"]["scale"]
    variables = dict(variables, params=params)
    features = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    high = np.asarray(features["high_level"])
    assert high.max() == 6.0 and high.min() == 0.0
    clipped, zero = int((high == 6.0).sum()), int((high == 0.0).sum())
    assert clipped > 100 and zero > 100 and clipped + zero < high.size  # measured: 318, 670 of 1280
    # Block outputs are linear (no activation after the projection): they take negative values.
    assert float(features["low_level"].min()) < 0


def test_deeplabv3_with_mobilenet_v2_from_the_factory():
    model = create_model(model_configs.deeplabv3(
        backbone="mobilenet_v2", num_classes=5, base_width=16, output_stride=16, aspp_channels=8,
        aux_head=True))
    assert model.backbone.width_multiplier == 0.25 and model.backbone.output_stride == 16
    images = jnp.zeros((2, 37, 50, 3))
    logits = jax.eval_shape(
        lambda: model.init_with_output(rbg_key(), images, train=False)[0].logits)
    assert logits.shape == (2, 37, 50, 5) and logits.dtype == jnp.float32

    variables = random_variables(model, images)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)(variables, images)
    assert logits.shape == (2, 37, 50, 5) and bool(jnp.all(jnp.isfinite(logits)))

    plus = create_model(model_configs.deeplabv3plus(
        backbone="mobilenet_v2", num_classes=3, base_width=16, aspp_channels=8,
        decoder_channels=8))
    output = jax.eval_shape(lambda: plus.init_with_output(rbg_key(), images, train=False)[0])
    assert output.logits.shape == (2, 37, 50, 3)


def _backbone_config(**overrides) -> dict:
    return {**model_configs.BACKBONE, "backbone": "mobilenet_v2", **overrides}


def test_config_defaults_build_the_standard_network():
    backbone = create_backbone(_backbone_config())
    assert backbone.width_multiplier == 1.0 and backbone.output_stride == 16
    assert _param_count(backbone) == 2_223_872
    bf16 = create_backbone(_backbone_config(dtype="bfloat16"))
    features = _features(bf16, jnp.zeros((1, 32, 32, 3)))
    assert features["high_level"].dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(stem="conv3x3"), "fixed 3x3/2 stem"),
        (dict(multi_grid=(1, 2, 4)), "multi-grid"),
        (dict(zero_init_residual=True), "zero_init_residual"),
        (dict(output_stride=4), "output_stride=4"),
        (dict(base_width=0), "width_multiplier=0.0"),
    ],
)
def test_factory_rejects_resnet_only_options(overrides, message):
    with pytest.raises(ValueError, match=message):
        create_backbone(_backbone_config(**overrides))
