"""ResNet backbones (He et al. 2016, "Deep Residual Learning") in torchvision's layout, dilated.

Layout and names follow `torchvision.models.resnet` so its weights map one-to-one: stem
`conv1`/`bn1` (here `stem`), stages `layer1..layer4` (here blocks `layer{i}_{j}`), blocks with
`conv1..conv3` + `bn1..bn3` (here `conv{k}`, each holding `conv` and `bn`), and the projection
shortcut `downsample` (1x1 conv + BN). Bottleneck blocks carry the stride on the 3x3 conv
(ResNet v1.5).

Output stride (DeepLabv3, Chen et al. 2017, Sec. 3.1) is obtained as torchvision's
`replace_stride_with_dilation` does it: the strides of the last stages are replaced by dilation,
each replaced stage multiplying the running dilation by 2, and the first block of such a stage
keeps the *previous* dilation on the conv that used to be strided, because that conv still sees
the input-resolution grid. With the same weights, the dilated network then computes exactly the
strided network's features, on a grid that is denser by the ratio of the output strides (tested).
"""

import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models.layers import ConvBNAct
from seg_jax.models.pooling import max_pool

# Number of residual blocks per stage for the standard depths (He et al. 2016, Table 1).
RESNET_PRESETS = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), block="bottleneck"),
}

# Total stride of each stem. 'imagenet' is torchvision's 7x7/2 conv + 3x3/2 max-pool. 'conv3x3' is a
# single 3x3/2 conv + BN + ReLU without max-pool, for 64-128 px inputs: it halves the image once
# instead of twice, so stage 1 works at stride 2 and the low-level features keep finer detail. The
# price: stages 1-2 (and 3 unless output_stride=8) run at twice the resolution, 4x their FLOPs.
STEM_STRIDES = {"imagenet": 4, "conv3x3": 2}

# Stride of each of the four stages in the undilated network (stage 1 follows the stem's pooling).
_STAGE_STRIDES = (1, 2, 2, 2)
VALID_OUTPUT_STRIDES = (8, 16, 32)


class BlockLayout(NamedTuple):
    """Stride and dilations of one residual block.

    strides: stride of the block's strided conv (the 3x3) and of its projection shortcut.
    dilation: dilation of the block's first 3x3 conv, the one that carries the stride in the
      undilated network and so sees the block's input grid.
    output_dilation: dilation of the 3x3 convs after it, on the block's output grid (BasicBlock's
      conv2; Bottleneck has none).
    """

    strides: int
    dilation: int
    output_dilation: int


def resnet_layout(
    stage_sizes: Sequence[int],
    *,
    output_stride: int = 32,
    multi_grid: Sequence[int] = (1, 1, 1),
    stem: str = "imagenet",
) -> list[list[BlockLayout]]:
    """Per stage, the list of `BlockLayout`s realising `output_stride` (torchvision semantics).

    Example, ResNet-50 at output stride 8 (torchvision's `replace_stride_with_dilation=[F, T, T]`):
    layer3 dilations (1, 2, 2, 2, 2, 2), layer4 (2, 4, 4), all strides 1 in layer3 and layer4.

    `multi_grid` (DeepLabv3, Sec. 3.2) multiplies the dilations of the last stage's blocks, one
    factor per block. All ones (any length) means no multi-grid. Because the first block of a
    dilated stage keeps the previous dilation, Multi_Grid (1, 2, 4) at output stride 16 gives rates
    (1, 4, 8) here where the paper quotes 2 * (1, 2, 4) = (2, 4, 8); the blocks after the first
    agree.

    Raises ValueError for an unknown stem, an output stride that the stem cannot reach, or a
    multi-grid whose length differs from the number of blocks in the last stage.
    """
    if stem not in STEM_STRIDES:
        raise ValueError(f"Unknown stem {stem!r}; valid stems: {sorted(STEM_STRIDES)}.")
    if len(stage_sizes) != len(_STAGE_STRIDES):
        raise ValueError(f"stage_sizes={tuple(stage_sizes)} must have 4 entries, one per stage.")
    native_stride = STEM_STRIDES[stem] * math.prod(_STAGE_STRIDES)
    # Strides can only be replaced in stages 2-4, i.e. divided by at most 2**3.
    reachable = [s for s in VALID_OUTPUT_STRIDES if native_stride // 8 <= s <= native_stride]
    if output_stride not in reachable:
        raise ValueError(
            f"output_stride={output_stride} is not reachable with the {stem!r} stem (undilated "
            f"stride {native_stride}); choose one of {reachable}."
        )
    num_dilated = int(math.log2(native_stride // output_stride))
    multi_grid = tuple(multi_grid)
    use_multi_grid = any(m != 1 for m in multi_grid)
    if use_multi_grid and len(multi_grid) != stage_sizes[-1]:
        raise ValueError(
            f"multi_grid={multi_grid} needs one factor per block of the last stage, which has "
            f"{stage_sizes[-1]} blocks."
        )

    layout = []
    dilation = 1
    for stage, (num_blocks, stride) in enumerate(zip(stage_sizes, _STAGE_STRIDES)):
        previous_dilation = dilation
        if stage >= len(stage_sizes) - num_dilated:
            dilation *= stride
            stride = 1
        is_last_stage = stage == len(stage_sizes) - 1
        blocks = []
        for index in range(num_blocks):
            grid = multi_grid[index] if (is_last_stage and use_multi_grid) else 1
            first_dilation = previous_dilation if index == 0 else dilation
            blocks.append(
                BlockLayout(
                    strides=stride if index == 0 else 1,
                    dilation=first_dilation * grid,
                    output_dilation=dilation * grid,
                )
            )
        layout.append(blocks)
    return layout


class _ResidualBlock(nn.Module):
    """What every ResNet block takes (`ResNet` builds them all alike from a `BlockLayout`).

    Subclasses set `expansion` (output channels / `features`) and define `__call__`.
    """

    features: int
    strides: int = 1
    dilation: int = 1
    output_dilation: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    def last_bn_scale_init(self) -> Callable:
        """The init of the block's last BN gamma: zeros with `zero_init_residual` (the block then
        starts as its shortcut), else ones."""
        return nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones


class BasicBlock(_ResidualBlock):
    """ResNet-18/34 block: 3x3 conv -> 3x3 conv, plus the (projected) input. Expansion 1.

    `x: [N, H, W, C_in]` -> `[N, H / strides, W / strides, features]`. torchvision refuses dilation
    in BasicBlock; here conv1 takes `dilation` and conv2 `output_dilation`, the choice that keeps
    the dilated network equal to the strided one (see `BlockLayout`).
    """

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        last_scale_init = self.last_bn_scale_init()
        y = ConvBNAct(
            self.features, 3, strides=self.strides, dilation=self.dilation, dtype=self.dtype,
            name="conv1",
        )(x, train=train)
        y = ConvBNAct(
            self.features, 3, dilation=self.output_dilation, act=False,
            bn_scale_init=last_scale_init, dtype=self.dtype, name="conv2",
        )(y, train=train)
        return nn.relu(y + _shortcut(x, self.features, self.strides, self.dtype, train))


class Bottleneck(_ResidualBlock):
    """ResNet-50/101 block: 1x1 (features) -> 3x3 strided -> 1x1 (4 * features), plus the input.

    `x: [N, H, W, C_in]` -> `[N, H / strides, W / strides, 4 * features]`. The stride sits on the
    3x3 conv as in torchvision (ResNet v1.5), which therefore takes `dilation`; `output_dilation`
    is unused since no 3x3 conv follows.
    """

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        last_scale_init = self.last_bn_scale_init()
        y = ConvBNAct(self.features, 1, dtype=self.dtype, name="conv1")(x, train=train)
        y = ConvBNAct(
            self.features, 3, strides=self.strides, dilation=self.dilation, dtype=self.dtype,
            name="conv2",
        )(y, train=train)
        out_features = self.features * self.expansion
        y = ConvBNAct(
            out_features, 1, act=False, bn_scale_init=last_scale_init, dtype=self.dtype,
            name="conv3",
        )(y, train=train)
        return nn.relu(y + _shortcut(x, out_features, self.strides, self.dtype, train))


def _shortcut(x: jax.Array, features: int, strides: int, dtype: Any, train: bool) -> jax.Array:
    """Identity, or torchvision's `downsample` (1x1 conv + BN) when the shape changes.

    Called inside a block's compact `__call__`, so the module is created as that block's child.
    """
    if strides == 1 and x.shape[-1] == features:
        return x
    return ConvBNAct(features, 1, strides=strides, act=False, dtype=dtype, name="downsample")(
        x, train=train
    )


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Dilated ResNet feature extractor (no classifier), NHWC.

    `__call__(images: [N, H, W, 3], *, train) -> dict` with
      'low_level':  stage-1 output, `[N, ~H/s, ~W/s, base_width * expansion]`, s = stem stride
                    (4 for the 'imagenet' stem, 2 for 'conv3x3');
      'stage2':     stage-2 output, `2 * base_width * expansion` channels (stride 8 with the
                    'imagenet' stem; Panoptic-DeepLab's second low-level feature);
      'stage3':     stage-3 output, `4 * base_width * expansion` channels;
      'high_level': stage-4 output at `output_stride`, `8 * base_width * expansion` channels
                    (2048 for ResNet-50, 512 for ResNet-18 at base_width 64).
    Spatial sizes are ceil-divisions of H, W by the strides (PyTorch's floor formula with padding).

    Atrous consistency: in eval mode the output-stride-16 'high_level' features subsampled at
    offset 0 (`[:, ::2, ::2]`) equal the output-stride-32 ones exactly, for every input size:
    symmetric padding centres every stride-2 op's output i on input 2i, so the sampling grids and
    the zero borders coincide (with 'SAME' padding it would need 32k + 1 inputs, as in TF DeepLab).

    Attributes:
      stage_sizes: blocks per stage, e.g. `RESNET_PRESETS['resnet50']['stage_sizes']`.
      block: 'basic' (ResNet-18/34) or 'bottleneck' (ResNet-50/101).
      base_width: channels of the stem and of stage 1's 3x3 convs (64 in the paper; stage i uses
        `base_width * 2**(i-1)`). Not torchvision's `width_per_group`.
      output_stride: 8, 16 or 32, the stride of 'high_level' (see `resnet_layout`).
      multi_grid: per-block dilation factors of the last stage (DeepLabv3 Sec. 3.2); all ones
        (any length) means none.
      stem: 'imagenet' or 'conv3x3' (see `STEM_STRIDES`).
      zero_init_residual: start every block's last BN gamma at zero, so each block starts as its
        shortcut (torchvision's `zero_init_residual`, Goyal et al. 2017).
      dtype: computation dtype; parameters are float32.
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    base_width: int = 64
    output_stride: int = 32
    multi_grid: Sequence[int] = (1, 1, 1)
    stem: str = "imagenet"
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    def layout(self) -> list[list[BlockLayout]]:
        """Strides and dilations of every block; raises ValueError on an invalid configuration."""
        return resnet_layout(
            self.stage_sizes, output_stride=self.output_stride, multi_grid=self.multi_grid,
            stem=self.stem,
        )

    def feature_strides(self) -> dict[str, int]:
        """The stride of each returned feature map relative to the input image."""
        strides = []
        stride = STEM_STRIDES[self.stem]
        for stage in self.layout():
            stride *= stage[0].strides
            strides.append(stride)
        return {"low_level": strides[0], "stage2": strides[1], "stage3": strides[2],
                "high_level": strides[3]}

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        if self.block not in _BLOCKS:
            raise ValueError(f"Unknown block {self.block!r}; valid blocks: {sorted(_BLOCKS)}.")
        block_cls = _BLOCKS[self.block]
        layout = self.layout()

        x = images.astype(self.dtype)
        stem_kernel_size = 7 if self.stem == "imagenet" else 3
        x = ConvBNAct(self.base_width, stem_kernel_size, strides=2, dtype=self.dtype, name="stem")(
            x, train=train
        )
        if self.stem == "imagenet":
            # PyTorch's MaxPool2d(3, 2, padding=1), with a gradient XLA:CPU computes fast.
            x = max_pool(x, window=3, stride=2, padding=1)

        features = []
        for stage, blocks in enumerate(layout):
            for index, spec in enumerate(blocks):
                x = block_cls(
                    features=self.base_width * 2**stage,
                    strides=spec.strides,
                    dilation=spec.dilation,
                    output_dilation=spec.output_dilation,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{index}",
                )(x, train=train)
            features.append(x)
        return {"low_level": features[0], "stage2": features[1], "stage3": features[2],
                "high_level": features[3]}
