"""Atrous Spatial Pyramid Pooling (DeepLabv3, Chen et al. 2017, "Rethinking Atrous Convolution").

Layout of torchvision's `ASPP` (and of the paper's Sec. 3.3 / Fig. 5): a 1x1 conv branch, one 3x3
atrous branch per rate, an image-level pooling branch, all `channels` wide with BN + ReLU, then
concatenation, a 1x1 projection + BN + ReLU and dropout. No conv has a bias (each feeds a BN).

The context module of a DeepLab model is chosen by `model.aspp` (`ASPP_MODES`, built by
`context_module`): 'full' is the ASPP above; 'pooling_only' keeps its 1x1 and image-pooling
branches and drops the atrous ones (global context without the multi-scale one); 'none' replaces
ASPP by `PointwiseProjection`, one 1x1 conv + BN + ReLU of the same output width with the same
dropout, which adds no context beyond the backbone's. The last two exist to measure what ASPP's
branches contribute (experiments/studies/aspp.py).
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
      image_pooling: the image-level pooling branch (Sec. 3.3); False drops it. With no atrous
        rates either, ASPP is the 1x1 branch and the projection.
      dtype: computation dtype; parameters are float32.
    """

    channels: int = 256
    atrous_rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.5
    separable: bool = False
    image_pooling: bool = True
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
        if self.image_pooling:
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


class PointwiseProjection(nn.Module):
    """The no-ASPP baseline: `[N, h, w, C_in]` -> 1x1 conv + BN + ReLU -> dropout -> `[N, h, w,
    channels]`.

    ASPP's output width and dropout without any of its branches: each output pixel sees exactly
    the backbone feature below it, so a model with it has the backbone's receptive field (plus
    the head's). It is ASPP's 'project' conv applied to the features directly, hence the name of
    its conv.

    Attributes:
      channels: output width (ASPP's `channels`).
      dropout_rate: dropout after the conv in training (ASPP's).
      dtype: computation dtype; parameters are float32.
    """

    channels: int = 256
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
        x = ConvBNAct(self.channels, 1, dtype=self.dtype, name="project")(features, train=train)
        return nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)


# model.aspp: which context module sits between the backbone and the head.
ASPP_MODES = ("full", "pooling_only", "none")


def check_aspp_mode(mode: str) -> str:
    """`mode` if it is one of ASPP_MODES; a ValueError naming the valid ones otherwise."""
    if mode not in ASPP_MODES:
        raise ValueError(
            f"model.aspp={mode!r}; valid values: {list(ASPP_MODES)} ('full': 1x1, atrous and "
            f"image-pooling branches; 'pooling_only': 1x1 and image-pooling branches; 'none': a "
            f"1x1 conv of the same width instead of ASPP)."
        )
    return mode


def context_module(
    mode: str,
    *,
    channels: int,
    atrous_rates: Sequence[int],
    dropout_rate: float,
    separable: bool,
    dtype: Any,
    name: str | None = None,
) -> nn.Module:
    """The context module `mode` (ASPP_MODES) names, `[N, h, w, C_in]` -> `[N, h, w, channels]`.

    'full': `ASPP` with `atrous_rates`. 'pooling_only': `ASPP` without atrous branches (the rates
    are unused). 'none': `PointwiseProjection` (rates and `separable` are unused).
    """
    check_aspp_mode(mode)
    if mode == "none":
        return PointwiseProjection(channels, dropout_rate, dtype=dtype, name=name)
    rates = tuple(atrous_rates) if mode == "full" else ()
    return ASPP(channels, rates, dropout_rate, separable, image_pooling=True, dtype=dtype,
                name=name)
