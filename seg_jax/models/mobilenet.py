"""MobileNetV2 backbone (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks") in torchvision's layout, dilated.

Layout and names follow `torchvision.models.mobilenet_v2(...).features` so its weights map
one-to-one (`seg_jax.models.weights.mobilenet_v2_variables_from_torchvision`):

  torchvision      here         what
  features.0       stem         3x3/2 conv, 32 channels (times the width multiplier), BN, ReLU6
  features.1..17   block1..17   inverted residual blocks, index for index (Table 2 of the paper)
  features.18      last_conv    1x1 conv to 1280 channels, BN, ReLU6

An inverted residual block is a 1x1 expansion to `t * C_in` channels (omitted when t = 1), a 3x3
depthwise conv that carries the stride, each followed by BN + ReLU6, then a linear 1x1 projection
+ BN (no activation: the "linear bottleneck"), plus the input when the block keeps the stride and
the width. Convs have no bias; BatchNorm and initialisation are those of `layers.ConvBNAct`
(torchvision's: eps 1e-5, PyTorch momentum 0.1, He normal fan-out). With width multiplier 1 the
feature extractor has 2,223,872 parameters, as torchvision's `mobilenet_v2().features`.

Output stride. The undilated network has stride 32. Output stride 16 or 8 replaces the stride of
the last one or two strided stages (the 160- and 64-channel stages) by dilation, with the rule of
`resnet.resnet_layout` (torchvision's `replace_stride_with_dilation`, and the DeepLab TF slim
MobileNetV2): the block that used to be strided keeps the *previous* dilation on its depthwise
conv, because that conv still sees its input grid, and the blocks after it use the new one. With
the same weights the dilated network then computes exactly the strided network's features on a
grid denser by the ratio of the output strides (tested). Two consequences worth knowing:
- torchvision's own dilated MobileNetV3 (`deeplabv3_mobilenet_v3_large`) instead gives the
  formerly strided block the new dilation already; its dilated features are not a denser sampling
  of its strided ones. torchvision has no dilated MobileNetV2, so no weights depend on the choice.
- Whether a block adds its input is decided by its undilated stride, so replacing a stride never
  adds a residual connection that the strided network (and its pretrained weights) lacks.

Returned features, named as `ResNet`'s so that every head works with either backbone; each is the
output of the last block at its nominal stride (the end of a stride stage, like ResNet's stages):
  'low_level'  features.3 output, stride 4, 24 channels. torchvision's MobileNetV3 segmentation
               models take their low-level features at the output of the first block of a stride
               stage (`_is_cn`); the stage at stride 4 of V2 is features.2-3, and features.3 is its
               complete output (TF DeepLab's V3+ taps features.3's depthwise conv instead).
  'stage2'     features.6 output, stride 8, 32 channels.
  'stage3'     features.13 output, stride 16 (or the output stride if smaller), 96 channels.
  'high_level' features.18 output at `output_stride`, 1280 channels.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models.factory import (
    backbone_fields, parse_dtype, register_backbone,
)
from seg_jax.models.layers import ConvBNAct
from seg_jax.models.resnet import VALID_OUTPUT_STRIDES

# (expansion t, channels c, repeats n, stride s) of each stage: the paper's Table 2, as in
# torchvision's `inverted_residual_setting`.
MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_FEATURES = 32
LAST_FEATURES = 1280
STEM_STRIDE = 2
# Channel counts are rounded to multiples of this (torchvision's `round_nearest`).
CHANNEL_DIVISOR = 8

# Returned feature -> the nominal (undilated) stride whose last block produces it.
_FEATURE_NOMINAL_STRIDES = {"low_level": 4, "stage2": 8, "stage3": 16}


def make_divisible(value: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """`value` rounded to the nearest multiple of `divisor` (at least `divisor`), and never more
    than 10% below `value`: the channel rounding of the MobileNet papers' code and torchvision."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidualLayout(NamedTuple):
    """Widths, stride and dilation of one inverted residual block.

    expansion: t, the expansion factor of the hidden width (1: no expansion conv).
    in_features, features: input and output channels.
    strides: stride of the depthwise conv (1 where the output stride replaced it by dilation).
    dilation: dilation of the depthwise conv.
    residual: add the input, decided on the undilated stride (see the module docstring).
    nominal_stride: stride of the block's output in the undilated network.
    """

    expansion: int
    in_features: int
    features: int
    strides: int
    dilation: int
    residual: bool
    nominal_stride: int


def mobilenet_v2_layout(
    *, output_stride: int = 32, width_multiplier: float = 1.0
) -> list[InvertedResidualLayout]:
    """The 17 blocks of MobileNetV2 (torchvision's features.1..17) realising `output_stride`.

    Example, output stride 8: the 64-channel stage (blocks 7-10) has strides (1, 1, 1, 1) and
    dilations (1, 2, 2, 2), the 96-channel stage (11-13) dilation 2, the 160-channel stage (14-16)
    strides 1 and dilations (2, 4, 4), and block 17 dilation 4.

    Raises ValueError for an output stride other than 8, 16 or 32 or a non-positive multiplier.
    """
    if output_stride not in VALID_OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride={output_stride!r}; MobileNetV2 supports {list(VALID_OUTPUT_STRIDES)}."
        )
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier={width_multiplier!r} must be positive.")
    in_features = make_divisible(STEM_FEATURES * width_multiplier)
    nominal_stride = STEM_STRIDE
    current_stride = STEM_STRIDE
    dilation = 1
    blocks = []
    for expansion, channels, repeats, stage_stride in MOBILENET_V2_STAGES:
        features = make_divisible(channels * width_multiplier)
        for index in range(repeats):
            stride = stage_stride if index == 0 else 1
            nominal_stride *= stride
            block_dilation = dilation
            if current_stride * stride > output_stride:
                # The formerly strided block keeps the previous dilation; later ones get the new.
                dilation *= stride
                stride_here = 1
            else:
                current_stride *= stride
                stride_here = stride
            blocks.append(
                InvertedResidualLayout(
                    expansion=expansion,
                    in_features=in_features,
                    features=features,
                    strides=stride_here,
                    dilation=block_dilation,
                    residual=stride == 1 and in_features == features,
                    nominal_stride=nominal_stride,
                )
            )
            in_features = features
    return blocks


class InvertedResidual(nn.Module):
    """`[N, H, W, C_in] -> [N, H / strides, W / strides, features]`; see the module docstring.

    Children (torchvision's `InvertedResidual.conv` indices in brackets, t > 1 / t = 1): 'expand'
    [0 / -], 'depthwise' [1 / 0], 'project' [2-3 / 1-2], each a `ConvBNAct` without activation,
    ReLU6 applied here after 'expand' and 'depthwise'.

    Attributes:
      features: output channels.
      expansion: hidden width = `round(C_in * expansion)`; 1 drops the expansion conv.
      strides: stride of the depthwise conv.
      dilation: dilation of the depthwise conv.
      residual: add the input (needs `C_in == features` and an unchanged grid).
      dtype: computation dtype; parameters are float32.
    """

    features: int
    expansion: int
    strides: int = 1
    dilation: int = 1
    residual: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        in_features = x.shape[-1]
        if self.residual and (in_features != self.features or self.strides != 1):
            raise ValueError(
                f"A residual block needs stride 1 and equal widths, got strides={self.strides}, "
                f"{in_features} -> {self.features} channels."
            )
        hidden = int(round(in_features * self.expansion))
        y = x
        if self.expansion != 1:
            y = ConvBNAct(hidden, 1, act=False, dtype=self.dtype, name="expand")(y, train=train)
            y = nn.relu6(y)
        y = ConvBNAct(
            hidden, 3, strides=self.strides, dilation=self.dilation, feature_group_count=hidden,
            act=False, dtype=self.dtype, name="depthwise",
        )(y, train=train)
        y = nn.relu6(y)
        y = ConvBNAct(self.features, 1, act=False, dtype=self.dtype, name="project")(y, train=train)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """Dilated MobileNetV2 feature extractor (no classifier), NHWC.

    `__call__(images: [N, H, W, 3], *, train) -> dict` with 'low_level', 'stage2', 'stage3' and
    'high_level' (module docstring). Spatial sizes are ceil-divisions of H, W by the strides.

    Attributes:
      width_multiplier: torchvision's `width_mult`: every width is `make_divisible(width * m)`,
        except the last conv's 1280, which is only ever widened (`1280 * max(1, m)`).
      output_stride: 8, 16 or 32, the stride of 'high_level' (see `mobilenet_v2_layout`).
      dtype: computation dtype; parameters are float32.
    """

    width_multiplier: float = 1.0
    output_stride: int = 32
    dtype: Any = jnp.float32

    def layout(self) -> list[InvertedResidualLayout]:
        """Widths, strides and dilations of the 17 blocks; raises ValueError when invalid."""
        return mobilenet_v2_layout(
            output_stride=self.output_stride, width_multiplier=self.width_multiplier
        )

    def feature_strides(self) -> dict[str, int]:
        """The stride of each returned feature map relative to the input image."""
        strides = {
            name: min(nominal, self.output_stride)
            for name, nominal in _FEATURE_NOMINAL_STRIDES.items()
        }
        return {**strides, "high_level": self.output_stride}

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        layout = self.layout()
        # The last block at each nominal stride produces the feature named for that stride.
        taps = {
            max(i for i, block in enumerate(layout) if block.nominal_stride == stride): name
            for name, stride in _FEATURE_NOMINAL_STRIDES.items()
        }

        x = images.astype(self.dtype)
        x = ConvBNAct(
            make_divisible(STEM_FEATURES * self.width_multiplier), 3, strides=STEM_STRIDE,
            act=False, dtype=self.dtype, name="stem",
        )(x, train=train)
        x = nn.relu6(x)
        features = {}
        for index, block in enumerate(layout):
            x = InvertedResidual(
                features=block.features,
                expansion=block.expansion,
                strides=block.strides,
                dilation=block.dilation,
                residual=block.residual,
                dtype=self.dtype,
                name=f"block{index + 1}",
            )(x, train=train)
            if index in taps:
                features[taps[index]] = x
        last_features = make_divisible(LAST_FEATURES * max(1.0, self.width_multiplier))
        x = ConvBNAct(last_features, 1, act=False, dtype=self.dtype, name="last_conv")(
            x, train=train
        )
        features["high_level"] = nn.relu6(x)
        return features


# `base_width` is shared with the ResNets, whose standard is 64: the multiplier is base_width / 64,
# so the shared default builds the standard network for every backbone (base_width=16 gives
# torchvision's mobilenet_v2(width_mult=0.25)).
_RESNET_STANDARD_WIDTH = 64


@register_backbone("mobilenet_v2")
def build_mobilenet_v2(config: Any) -> nn.Module:
    """MobileNetV2 from the backbone config fields (`factory.BACKBONE_FIELDS`).

    Reads `base_width` (width multiplier `base_width / 64`), `output_stride` and `dtype`. Rejects
    the ResNet-only options it cannot honour: a `stem` other than 'imagenet' (MobileNetV2 has its
    own 3x3/2 stem), a `multi_grid` other than all ones, and `zero_init_residual`.
    """
    fields = backbone_fields(config)
    if fields["stem"] != "imagenet":
        raise ValueError(
            f"stem={fields['stem']!r}: MobileNetV2 has a fixed 3x3/2 stem; leave `stem` at "
            "'imagenet' (the other stems are ResNet options)."
        )
    if any(int(m) != 1 for m in fields["multi_grid"]):
        raise ValueError(
            f"multi_grid={tuple(fields['multi_grid'])}: MobileNetV2 does not support multi-grid; "
            "use all ones."
        )
    if fields["zero_init_residual"]:
        raise ValueError("zero_init_residual=True is a ResNet option; MobileNetV2 has none.")
    model = MobileNetV2(
        width_multiplier=float(fields["base_width"]) / _RESNET_STANDARD_WIDTH,
        output_stride=int(fields["output_stride"]),
        dtype=parse_dtype(fields["dtype"]),
    )
    model.layout()  # Fail at construction on an invalid output stride or width.
    return model
