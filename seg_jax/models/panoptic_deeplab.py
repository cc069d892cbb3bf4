"""Panoptic-DeepLab (Cheng et al. 2020, "Panoptic-DeepLab: A Simple, Strong, and Fast Baseline for
Bottom-Up Panoptic Segmentation").

Two branches share the backbone. Each has its own ASPP over the high-level features and a decoder
that fuses, in turn, the stride-8 ('stage2') and stride-4 ('low_level') backbone features
(1x1 projections to `low_level_channels`, concatenation with the bilinearly upsampled context,
one 5x5 depthwise-separable conv). The semantic branch predicts class logits; the instance branch
predicts a centre heatmap (1 channel) and, at every pixel, the offset (dy, dx) to its instance's
centre, each from its own 5x5 separable conv + 1x1 head (paper Sec. 3.1, Fig. 2).

Deliberate differences from the paper: every output is upsampled bilinearly to the input size
(the paper predicts at stride 4 and upsamples too, but leaves where unspecified); offsets are in
input pixels, so they are upsampled without rescaling. `separable=False` replaces the 5x5
separable convs by dense ones.

`panoptic_postprocess` turns the three outputs into a panoptic map (Sec. 3.2): centre keypoints by
max-pool non-maximum suppression, a threshold and top-k; each thing pixel joins the centre nearest
to where its offset points; an instance takes the majority class of its pixels; stuff pixels keep
their semantic class with instance 0.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models import factory
from seg_jax.models.aspp import ASPP
from seg_jax.models.layers import ConvBNAct, SeparableConvBNAct, resize_bilinear
from seg_jax.models.outputs import ModelOutput

# Backbone features the decoders fuse, from coarse to fine: stride 8, then stride 4.
LOW_LEVEL_KEYS = ("stage2", "low_level")


class _Fuse(nn.Module):
    """5x5 conv + BN + ReLU, depthwise-separable (the paper) or dense."""

    features: int
    separable: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, *, train: bool):
        conv_cls = SeparableConvBNAct if self.separable else ConvBNAct
        return conv_cls(self.features, 5, dtype=self.dtype, name="conv")(x, train=train)


class PanopticDecoder(nn.Module):
    """ASPP on 'high_level', then fusion with the stride-8 and stride-4 features; stride-4 output.

    Attributes:
      aspp_channels: ASPP width.
      decoder_channels: width after each fusion.
      low_level_channels: 1x1 projection widths of the stride-8 and stride-4 features.
      atrous_rates, dropout_rate: ASPP's.
      separable: separable 5x5 fusion convs (and ASPP branches).
      dtype: computation dtype.
    """

    aspp_channels: int = 256
    decoder_channels: int = 256
    low_level_channels: Sequence[int] = (64, 32)
    atrous_rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.1
    separable: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict, *, train: bool) -> jax.Array:
        missing = [k for k in ("high_level",) + LOW_LEVEL_KEYS if k not in features]
        if missing:
            raise ValueError(
                f"Panoptic-DeepLab needs backbone features {missing} (strides 8 and 4); the "
                f"backbone returns {sorted(features)}. Use a ResNet backbone."
            )
        x = ASPP(self.aspp_channels, self.atrous_rates, self.dropout_rate, self.separable,
                 dtype=self.dtype, name="aspp")(features["high_level"], train=train)
        for index, (key, channels) in enumerate(zip(LOW_LEVEL_KEYS, self.low_level_channels)):
            low = ConvBNAct(channels, 1, dtype=self.dtype, name=f"project{index}")(
                features[key].astype(self.dtype), train=train)
            x = resize_bilinear(x, low.shape[1], low.shape[2])
            x = jnp.concatenate([x, low], axis=-1)
            x = _Fuse(self.decoder_channels, self.separable, self.dtype, name=f"fuse{index}")(
                x, train=train)
        return x


class _Head(nn.Module):
    """5x5 conv + BN + ReLU, then a 1x1 conv with bias to `outputs` channels."""

    channels: int
    outputs: int
    separable: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = _Fuse(self.channels, self.separable, self.dtype, name="fuse")(x, train=train)
        return nn.Conv(self.outputs, (1, 1), use_bias=True, dtype=self.dtype, name="predict")(x)


class PanopticDeepLab(nn.Module):
    """`__call__(images [N, H, W, 3], *, train) -> ModelOutput(logits [N, H, W, C], center
    [N, H, W], offset [N, H, W, 2])`, all float32 at the input size.

    `center` is the raw centre-heatmap regression (trained against Gaussians of peak 1) and
    `offset` the (dy, dx) in pixels from each pixel to its instance's centre.

    Attributes:
      num_classes: semantic classes.
      backbone: returns 'high_level', 'stage2' (stride 8) and 'low_level' (stride 4) features.
      aspp_channels, decoder_channels, low_level_channels: the semantic decoder (256, 256, (64, 32)).
      head_channels: width of the semantic head's 5x5 conv (256).
      instance_aspp_channels, instance_decoder_channels, instance_low_level_channels: the instance
        decoder (256, 128, (32, 16)).
      instance_head_channels: width of the centre and offset heads' 5x5 convs (32).
      atrous_rates, dropout_rate, separable, dtype: shared by both decoders.
    """

    num_classes: int
    backbone: nn.Module
    aspp_channels: int = 256
    decoder_channels: int = 256
    low_level_channels: Sequence[int] = (64, 32)
    head_channels: int = 256
    instance_aspp_channels: int = 256
    instance_decoder_channels: int = 128
    instance_low_level_channels: Sequence[int] = (32, 16)
    instance_head_channels: int = 32
    atrous_rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.1
    separable: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> ModelOutput:
        _, height, width, _ = images.shape
        features = self.backbone(images, train=train)
        shared = dict(atrous_rates=self.atrous_rates, dropout_rate=self.dropout_rate,
                      separable=self.separable, dtype=self.dtype)
        semantic = PanopticDecoder(self.aspp_channels, self.decoder_channels,
                                   self.low_level_channels, name="semantic_decoder",
                                   **shared)(features, train=train)
        instance = PanopticDecoder(self.instance_aspp_channels, self.instance_decoder_channels,
                                   self.instance_low_level_channels, name="instance_decoder",
                                   **shared)(features, train=train)
        logits = _Head(self.head_channels, self.num_classes, self.separable, self.dtype,
                       name="semantic_head")(semantic, train=train)
        center = _Head(self.instance_head_channels, 1, self.separable, self.dtype,
                       name="center_head")(instance, train=train)
        offset = _Head(self.instance_head_channels, 2, self.separable, self.dtype,
                       name="offset_head")(instance, train=train)

        def upsample(x):  # in float32, as DeepLabV3's logits
            return resize_bilinear(x.astype(jnp.float32), height, width)

        return ModelOutput(logits=upsample(logits), center=upsample(center)[..., 0],
                           offset=upsample(offset))


def find_centers(center, *, threshold: float = 0.1, nms_kernel: int = 7, top_k: int = 200):
    """Centre keypoints of a heatmap: local maxima (max-pool NMS) above `threshold`, best `top_k`.

    Args:
      center: [N, H, W] heatmap.

    Returns:
      (positions [N, K, 2] int32 (y, x), valid [N, K] bool), K = min(top_k, H * W), best first.
    """
    n, height, width = center.shape
    pad = nms_kernel // 2
    pooled = jax.lax.reduce_window(center, -jnp.inf, jax.lax.max, (1, nms_kernel, nms_kernel),
                                   (1, 1, 1), ((0, 0), (pad, pad), (pad, pad)))
    peaks = jnp.where((center == pooled) & (center > threshold), center, -jnp.inf)
    k = min(top_k, height * width)
    scores, flat = jax.lax.top_k(peaks.reshape(n, -1), k)
    positions = jnp.stack([flat // width, flat % width], axis=-1).astype(jnp.int32)
    return positions, scores > -jnp.inf


def panoptic_postprocess(semantic, center, offset, *, thing_classes, num_classes: int,
                         center_threshold: float = 0.1, nms_kernel: int = 7, top_k: int = 200):
    """Panoptic maps from Panoptic-DeepLab's outputs (Cheng et al. 2020, Sec. 3.2).

    Args:
      semantic: [N, H, W] int class ids (the MAP or Bayes decision of the logits).
      center: [N, H, W] centre heatmap; offset: [N, H, W, 2] (dy, dx) to the centre, in pixels.
      thing_classes: class ids that have instances.
      num_classes: C.
      center_threshold, nms_kernel, top_k: keypoint selection (paper: 0.1, 7, 200).

    Returns:
      (semantic [N, H, W] int32, instance [N, H, W] int32). A thing pixel joins the kept centre
      nearest to `pixel + offset` (instance = 1 + the centre's rank); its class becomes the majority
      class of its instance's thing pixels. Thing pixels with no centre at all keep their class and
      instance 0. Stuff pixels keep their class, instance 0.
    """
    n, height, width = semantic.shape
    positions, valid = find_centers(center, threshold=center_threshold, nms_kernel=nms_kernel,
                                    top_k=top_k)
    k = positions.shape[1]
    is_thing_class = jnp.zeros(num_classes, bool).at[jnp.asarray(thing_classes, jnp.int32)].set(True)
    is_thing = is_thing_class[jnp.clip(semantic, 0, num_classes - 1)] & (semantic >= 0) & (
        semantic < num_classes)

    ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    target = jnp.stack([ys, xs], axis=-1)[None] + offset  # [N, H, W, 2] where each pixel points
    # The nearest kept centre of every pixel's target, one centre at a time: O(N H W) memory
    # rather than the [N, H, W, K] distance tensor (1.6 GB for one 1024x2048 image and K = 200).
    def closer(index, best):
        best_distance, best_index = best
        distance = jnp.sum((target - positions[:, index][:, None, None, :]) ** 2, axis=-1)
        distance = jnp.where(valid[:, index][:, None, None], distance, jnp.inf)
        better = distance < best_distance
        return jnp.where(better, distance, best_distance), jnp.where(better, index, best_index)

    _, nearest = jax.lax.fori_loop(
        0, k, closer, (jnp.full((n, height, width), jnp.inf), jnp.zeros((n, height, width), jnp.int32)))
    has_center = valid.any(axis=1)[:, None, None]
    instance = jnp.where(is_thing & has_center, nearest + 1, 0).astype(jnp.int32)

    # Majority vote of the thing classes inside each instance: counts [N, K + 1, C].
    image = jnp.arange(n)[:, None, None]
    votes = jnp.zeros((n, k + 1, num_classes), jnp.int32).at[
        image, instance, jnp.clip(semantic, 0, num_classes - 1)].add(is_thing.astype(jnp.int32))
    majority = jnp.argmax(votes, axis=-1).astype(semantic.dtype)  # [N, K + 1]
    voted = jnp.take_along_axis(majority, instance.reshape(n, -1), axis=1).reshape(n, height, width)
    semantic = jnp.where(instance > 0, voted, semantic).astype(jnp.int32)
    return semantic, instance


_PANOPTIC_DEEPLAB_FIELDS = (
    *factory.MODEL_BACKBONE_FIELDS, "name", "num_classes", "aspp_channels", "decoder_channels",
    "low_level_channels", "head_channels", "instance_aspp_channels", "instance_decoder_channels",
    "instance_low_level_channels", "instance_head_channels", "atrous_rates", "dropout_rate",
    "separable",
)


@factory.register_model("panoptic_deeplab")
def _build_panoptic_deeplab(config) -> nn.Module:
    fields = factory.resolve_fields(config, _PANOPTIC_DEEPLAB_FIELDS)
    return PanopticDeepLab(
        num_classes=int(fields["num_classes"]),
        backbone=factory.create_backbone(fields),
        aspp_channels=int(fields["aspp_channels"]),
        decoder_channels=int(fields["decoder_channels"]),
        low_level_channels=tuple(int(c) for c in fields["low_level_channels"]),
        head_channels=int(fields["head_channels"]),
        instance_aspp_channels=int(fields["instance_aspp_channels"]),
        instance_decoder_channels=int(fields["instance_decoder_channels"]),
        instance_low_level_channels=tuple(int(c) for c in fields["instance_low_level_channels"]),
        instance_head_channels=int(fields["instance_head_channels"]),
        atrous_rates=factory.resolve_atrous_rates(fields["atrous_rates"], fields["output_stride"]),
        dropout_rate=float(fields["dropout_rate"]),
        separable=bool(fields["separable"]),
        dtype=factory.parse_dtype(fields["dtype"]),
    )
