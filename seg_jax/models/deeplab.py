"""DeepLabv3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation").

Head layout of torchvision's `DeepLabHead`: ASPP -> 3x3 conv + BN + ReLU -> 1x1 conv with bias to
the classes; the logits are upsampled bilinearly to the input size (paper Sec. 4.1: "upsample the
output ... to the input size" instead of downsampling the labels).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models.aspp import ASPP
from seg_jax.models.layers import ConvBNAct, resize_bilinear


class DeepLabV3(nn.Module):
    """DeepLabv3: `__call__(images: [N, H, W, 3], *, train) -> [N, H, W, num_classes]` float32.

    Any H, W works, odd ones included: the backbone pads like PyTorch and the logits are resized
    to the input's own H, W (`resize_bilinear`, PyTorch's `align_corners=False`).

    Variables: 'params' and 'batch_stats' (pass `mutable=['batch_stats']` when `train=True`); rngs:
    'dropout' when `train=True` and `dropout_rate > 0`.

    Attributes:
      num_classes: channels of the logits.
      backbone: a module mapping `images, *, train` to a dict with a 'high_level' feature map, such
        as `ResNet(...)`; it carries its own output stride and dtype.
      aspp_channels: width of ASPP and of the head's 3x3 conv (256 in the paper).
      atrous_rates: ASPP rates; (6, 12, 18) suits output stride 16, (12, 24, 36) output stride 8.
      dropout_rate: ASPP dropout in training.
      separable: depthwise-separable ASPP atrous branches.
      dtype: computation dtype of ASPP and head; the returned logits are always float32.
    """

    num_classes: int
    backbone: nn.Module
    aspp_channels: int = 256
    atrous_rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.5
    separable: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        _, height, width, _ = images.shape
        features = self.backbone(images, train=train)["high_level"]
        x = ASPP(
            channels=self.aspp_channels,
            atrous_rates=self.atrous_rates,
            dropout_rate=self.dropout_rate,
            separable=self.separable,
            dtype=self.dtype,
            name="aspp",
        )(features, train=train)
        x = ConvBNAct(self.aspp_channels, 3, dtype=self.dtype, name="head")(x, train=train)
        logits = nn.Conv(
            self.num_classes, kernel_size=(1, 1), use_bias=True, dtype=self.dtype, name="classifier"
        )(x)
        # Upsample in float32 so that bf16 rounding does not blur class boundaries, and so losses
        # always receive float32 logits.
        return resize_bilinear(logits.astype(jnp.float32), height, width)
