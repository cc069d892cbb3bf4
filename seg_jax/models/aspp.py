"""Atrous Spatial Pyramid Pooling (DeepLabv3, Chen et al. 2017, "Rethinking Atrous Convolution").

Layout of torchvision's `ASPP` (and of the paper's Sec. 3.3 / Fig. 5): a 1x1 conv branch, one 3x3
atrous branch per rate, an image-level pooling branch, all `channels` wide with BN + ReLU, then
concatenation, a 1x1 projection + BN + ReLU and dropout. No conv has a bias (each feeds a BN).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models.layers import ConvBNAct, conv_bn_act_or_separable


class ASPP(nn.Module):
    """ASPP: `features: [N, h, w, C_in]` -> `[N, h, w, channels]`.

    Attributes:
      channels: width of every branch and of the projection (256 in the paper).
      atrous_rates: one 3x3 branch per rate; (6, 12, 18) at output stride 16 in the paper, doubled
        to (12, 24, 36) at output stride 8 (torchvision's deeplabv3_resnet50 uses the latter).
        When a rate approaches the feature size most taps fall into the zero padding and the branch
        degenerates towards a 1x1 conv (Sec. 3.3), which is why the pooling branch exists.
      dropout_rate: dropout after the projection in training (torchvision: 0.5). Needs the
        'dropout' rng when `train=True` and the rate is positive.
      separable: depthwise-separable atrous branches (DeepLabv3+, Sec. 3.1): each 3x3 branch
        becomes a depthwise 3x3 atrous conv + BN + ReLU and a pointwise 1x1 conv + BN + ReLU. The
        1x1, pooling and projection convs are unchanged (they have nothing to separate).
      dtype: computation dtype; parameters are float32.
    """

    channels: int = 256
    atrous_rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.5
    separable: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
        conv1x1 = ConvBNAct(self.channels, 1, dtype=self.dtype, name="conv1x1")
        branches = [conv1x1(features, train=train)]
        atrous_cls = conv_bn_act_or_separable(self.separable)
        for index, rate in enumerate(self.atrous_rates):
            # Named by position, not rate, so repeated rates and weight import stay unambiguous.
            branch = atrous_cls(
                self.channels, 3, dilation=rate, dtype=self.dtype, name=f"atrous{index}"
            )
            branches.append(branch(features, train=train))
        branches.append(self._image_pooling(features, train))
        x = jnp.concatenate(branches, axis=-1)
        x = ConvBNAct(self.channels, 1, dtype=self.dtype, name="project")(x, train=train)
        return nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)

    def _image_pooling(self, features: jax.Array, train: bool) -> jax.Array:
        """Global average pool -> 1x1 conv + BN + ReLU -> broadcast to `[N, h, w, channels]`.

        torchvision upsamples the 1x1 map bilinearly, which is the same as broadcasting it. In
        training its BatchNorm sees one value per image and channel: with a batch of one image
        the normalised value is 0 and the branch outputs a constant (PyTorch raises instead).
        """
        # Average in float32: a bfloat16 sum over thousands of pixels would lose precision.
        pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2), keepdims=True)
        pooled = ConvBNAct(self.channels, 1, dtype=self.dtype, name="pooling")(
            pooled.astype(self.dtype), train=train
        )
        n, h, w, _ = features.shape
        return jnp.broadcast_to(pooled, (n, h, w, self.channels))
