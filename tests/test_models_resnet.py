"""Tests of seg_jax.models.resnet: torchvision layout and sizes, output stride, dilation rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax.models.layers import ConvBNAct
from seg_jax.models.resnet import RESNET_PRESETS, BasicBlock, Bottleneck, ResNet, resnet_layout
from model_helpers import init_shapes, random_variables, rbg_key


def _tiny(block: str = "basic", **kwargs) -> ResNet:
    return ResNet(stage_sizes=(1, 2, 1, 2), block=block, base_width=4, **kwargs)


def _dilations(stage):
    return tuple(spec.dilation for spec in stage)


def _strides(stage):
    return tuple(spec.strides for spec in stage)


def test_layout_matches_torchvision_replace_stride_with_dilation():
    sizes = RESNET_PRESETS["resnet50"]["stage_sizes"]
    # torchvision resnet50(replace_stride_with_dilation=[False, True, True]): the first block of a
    # dilated stage gets the previous dilation.
    os8 = resnet_layout(sizes, output_stride=8)
    assert [_strides(stage) for stage in os8] == [(1, 1, 1), (2, 1, 1, 1), (1,) * 6, (1, 1, 1)]
    assert [_dilations(stage) for stage in os8] == [
        (1, 1, 1), (1, 1, 1, 1), (1, 2, 2, 2, 2, 2), (2, 4, 4)
    ]
    assert [spec.output_dilation for spec in os8[3]] == [4, 4, 4]
    # [False, False, True]
    os16 = resnet_layout(sizes, output_stride=16)
    assert _strides(os16[2])[0] == 2 and _strides(os16[3]) == (1, 1, 1)
    assert _dilations(os16[2]) == (1,) * 6 and _dilations(os16[3]) == (1, 2, 2)
    os32 = resnet_layout(sizes, output_stride=32)
    assert all(d == 1 for stage in os32 for d in _dilations(stage))


def test_multi_grid_multiplies_last_stage_dilations():
    sizes = RESNET_PRESETS["resnet101"]["stage_sizes"]
    layout = resnet_layout(sizes, output_stride=16, multi_grid=(1, 2, 4))
    assert _dilations(layout[3]) == (1, 4, 8)  # (1, 2, 2) times (1, 2, 4)
    assert _dilations(layout[2]) == (1,) * 23  # other stages untouched
    layout = resnet_layout(sizes, output_stride=8, multi_grid=(1, 2, 1))
    assert _dilations(layout[3]) == (2, 8, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(output_stride=4), "output_stride=4"),
        (dict(output_stride=32, stem="conv3x3"), "choose one of \\[8, 16\\]"),
        (dict(multi_grid=(1, 2)), "one factor per block"),
        (dict(stem="cifar"), "valid stems"),
    ],
)
def test_layout_rejects_invalid_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet_layout((3, 4, 6, 3), **kwargs)


def test_all_ones_multi_grid_of_any_length_means_none():
    sizes = (2, 2, 2, 2)
    assert resnet_layout(sizes, multi_grid=(1, 1, 1)) == resnet_layout(sizes, multi_grid=(1, 1))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("stem, stem_stride", [("imagenet", 4), ("conv3x3", 2)])
@pytest.mark.parametrize("block, expansion", [("basic", 1), ("bottleneck", 4)])
def test_feature_strides_and_channels(output_stride, stem, stem_stride, block, expansion):
    if stem == "conv3x3" and output_stride == 32:
        pytest.skip("unreachable: the conv3x3 stem's undilated stride is 16")
    model = _tiny(block, output_stride=output_stride, stem=stem)
    images = jnp.zeros((2, 64, 64, 3))
    features = jax.eval_shape(lambda: model.init_with_output(rbg_key(), images, train=False)[0])
    strides = model.feature_strides()
    assert strides["low_level"] == stem_stride and strides["high_level"] == output_stride
    assert strides["stage3"] == min(output_stride, stem_stride * 4)
    for name, width in [("low_level", 4), ("stage3", 16), ("high_level", 32)]:
        size = 64 // strides[name]
        assert features[name].shape == (2, size, size, width * expansion), name


def test_odd_input_sizes_give_ceil_divided_features():
    model = _tiny(output_stride=16)
    features = jax.eval_shape(
        lambda: model.init_with_output(rbg_key(), jnp.zeros((1, 33, 47, 3)), train=False)[0]
    )
    assert features["low_level"].shape[1:3] == (9, 12)  # ceil(33 / 4), ceil(47 / 4)
    assert features["high_level"].shape[1:3] == (3, 3)  # ceil(33 / 16), ceil(47 / 16)


# torchvision's resnetXX() parameter counts minus the 1000-way fc layer (in_features * 1000 + 1000).
@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet18", 11_689_512 - 513_000),
        ("resnet34", 21_797_672 - 513_000),
        ("resnet50", 25_557_032 - 2_049_000),
        ("resnet101", 44_549_160 - 2_049_000),
    ],
)
def test_parameter_counts_match_torchvision(name, expected):
    model = ResNet(**RESNET_PRESETS[name], output_stride=8)  # dilation does not change the count
    variables = init_shapes(model, jnp.zeros((1, 32, 32, 3)))
    assert sum(leaf.size for leaf in jax.tree.leaves(variables["params"])) == expected


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize(
    "stem, dilated_stride, strided_stride", [("imagenet", 8, 32), ("conv3x3", 8, 16)]
)
def test_dilated_network_equals_strided_network_subsampled(
    block, stem, dilated_stride, strided_stride
):
    # With the same weights, replacing strides by dilation (torchvision semantics) computes exactly
    # the strided network's features at every k-th pixel (Yu & Koltun 2016; DeepLabv3 Sec. 3.1).
    # This pins the "previous dilation on the first block" rule: any other rule breaks equality.
    images = jnp.asarray(np.random.default_rng(1).normal(size=(1, 64, 64, 3)), jnp.float32)
    strided = _tiny(block, output_stride=strided_stride, stem=stem)
    dilated = _tiny(block, output_stride=dilated_stride, stem=stem)

    variables = random_variables(strided, images)
    apply_both = jax.jit(
        lambda variables, images: (
            strided.apply(variables, images, train=False),
            dilated.apply(variables, images, train=False),
        )
    )
    coarse, fine = apply_both(variables, images)
    for name in ("stage3", "high_level"):
        step = strided.feature_strides()[name] // dilated.feature_strides()[name]
        np.testing.assert_allclose(
            fine[name][:, ::step, ::step], coarse[name], rtol=1e-4, atol=1e-4, err_msg=name
        )


@pytest.mark.parametrize("block_cls, last_conv", [(BasicBlock, "conv2"), (Bottleneck, "conv3")])
def test_zero_init_residual_makes_each_block_start_as_its_shortcut(block_cls, last_conv):
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 8, 3)), jnp.float32)
    block = block_cls(4, strides=2, zero_init_residual=True)
    variables = block.init(rbg_key(), images, train=False)
    assert not jnp.any(variables["params"][last_conv]["bn"]["scale"])
    assert jnp.all(variables["params"]["conv1"]["bn"]["scale"] == 1.0)

    shortcut = ConvBNAct(4 * block_cls.expansion, 1, strides=2, act=False)
    shortcut_variables = {collection: tree["downsample"] for collection, tree in variables.items()}
    expected = jax.nn.relu(shortcut.apply(shortcut_variables, images, train=False))
    np.testing.assert_allclose(block.apply(variables, images, train=False), expected, atol=1e-6)


# Why the output-stride-16 network's 'high_level' features subsampled by 2 at offset 0 ([::2, ::2])
# equal the output-stride-32 features, for EVERY input size (odd, even, mixed), in eval mode:
#
# 1. One grid. With the symmetric padding p = d (k - 1) / 2 of `symmetric_padding`, output i of
#    every stride-2 op reads the window centred on input pixel 2i: the 7x7 stem (p = 3), the 3x3
#    max-pool (p = 1), the strided 3x3 conv (p = 1) and the 1x1 projection shortcut (p = 0) alike,
#    whatever the parity of the input. So the strided net's pixel i is the dilated net's pixel 2i.
# 2. Closure. After the replaced stride the dilated net's 3x3 convs have twice the dilation, so
#    pixel 2j only reads even pixels 2(j +- d), exactly the pixels j +- d that the strided net
#    reads; 1x1 convs, eval-mode BatchNorm, ReLU and the residual sum act per pixel.
# 3. Borders. The strided map has h_c = ceil(h / 2) rows, so h is 2 h_c - 1 or 2 h_c. A tap
#    j + d >= h_c (zero padding in the strided net) lands on 2(j + d) >= 2 h_c >= h (zero padding
#    in the dilated net) and every in-range tap stays in range, at both borders.
#
# Hence equality up to float summation order (~1e-7 relative here). Offset 1 ([1::2, 1::2]) is the
# interleaved set of new samples, not the strided grid. Conditions: eval mode (training-mode
# BatchNorm normalises with statistics over all the dilated net's pixels, 4x as many), and the
# explicit symmetric padding: with XLA's 'SAME' a stride-2 3x3 conv on an even input pads (0, 1)
# and is centred on 2i + 1 while the 1x1 shortcut stays centred on 2i, so the strided net adds two
# misaligned grids that no subsampling of the dilated net reproduces; that is why TensorFlow's
# DeepLab uses crops of size 32k + 1, where every strided layer sees an odd input
# (test_same_padding_breaks_the_equality_on_even_inputs below).
@pytest.mark.parametrize("block, height, width", [("basic", 65, 64), ("bottleneck", 33, 47)])
def test_output_stride_16_subsampled_at_offset_0_equals_output_stride_32(block, height, width):
    # 65 x 64 gives stage-3 maps of 5 x 4 rows/columns: an odd and an even size at the replaced
    # stride in one image; 33 x 47 gives 3 x 3. (64 x 64, both blocks: the test above.)
    images = jnp.asarray(np.random.default_rng(2).normal(size=(1, height, width, 3)), jnp.float32)
    os32 = _tiny(block, output_stride=32)
    os16 = _tiny(block, output_stride=16)
    variables = random_variables(os32, images)
    apply_both = jax.jit(
        lambda variables, images: (
            os32.apply(variables, images, train=False)["high_level"],
            os16.apply(variables, images, train=False)["high_level"],
        )
    )
    coarse, fine = (np.asarray(a) for a in apply_both(variables, images))
    assert fine.shape[1:3] == (-(-height // 16), -(-width // 16))
    assert coarse.shape[1:3] == (-(-height // 32), -(-width // 32))
    scale = np.abs(coarse).max()
    np.testing.assert_allclose(fine[:, ::2, ::2], coarse, rtol=1e-5, atol=1e-5 * scale)
    odd = fine[:, 1::2, 1::2]
    assert np.abs(odd - coarse[:, : odd.shape[1], : odd.shape[2]]).max() > 0.1 * scale


def _conv(x, kernel, *, strides=1, dilation=1, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, (strides, strides), padding, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("padding", ["symmetric", "SAME"])
def test_same_padding_breaks_the_equality_on_even_inputs(size, padding, shortcut):
    # A residual unit with a 1x1 projection shortcut (or without it), then a 3x3 conv: strided
    # (stride 2, then rate 1) against dilated (stride 1, then rate 2), as in the ResNet tests above
    # but with raw convs.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, size, size, 2)), jnp.float32)
    k3, k1, k_next = (jnp.asarray(rng.normal(size=s), jnp.float32)
                      for s in [(3, 3, 2, 2), (1, 1, 2, 2), (3, 3, 2, 2)])
    sym = lambda p: ((p, p), (p, p))  # noqa: E731
    pad3, pad1 = (sym(1), sym(0)) if padding == "symmetric" else ("SAME", "SAME")
    strided = _conv(x, k3, strides=2, padding=pad3)
    dilated = _conv(x, k3, padding=sym(1))
    if shortcut:
        strided = strided + _conv(x, k1, strides=2, padding=pad1)
        dilated = dilated + _conv(x, k1, padding=sym(0))
    strided = _conv(strided, k_next, padding=sym(1))
    dilated = _conv(dilated, k_next, dilation=2, padding=sym(2))

    def matches_at(offset):
        sub = dilated[:, offset::2, offset::2]
        rows, cols = min(sub.shape[1], strided.shape[1]), min(sub.shape[2], strided.shape[2])
        return bool(np.allclose(sub[:, :rows, :cols], strided[:, :rows, :cols], atol=1e-4))

    matches = [matches_at(0), matches_at(1)]
    if padding == "symmetric" or size % 2 == 1:
        assert matches == [True, False]
    elif not shortcut:  # 'SAME', even input: the 3x3 conv alone is centred on 2i + 1.
        assert matches == [False, True]
    else:  # ... but the 1x1 shortcut on 2i: the sum mixes two grids and no offset works.
        assert matches == [False, False]
