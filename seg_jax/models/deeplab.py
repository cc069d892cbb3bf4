"""DeepLabv3 and DeepLabv3+ with an optional auxiliary FCN head.

- `DeepLabV3` (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation"),
  head layout of torchvision's `DeepLabHead`: ASPP -> 3x3 conv + BN + ReLU -> 1x1 conv with bias
  to the classes; the logits are upsampled bilinearly to the input size (paper Sec. 4.1: "upsample
  the output ... to the input size" instead of downsampling the labels).
- `DeepLabV3Plus` (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution for
  Semantic Image Segmentation", Sec. 3.1 and Fig. 2): the same encoder (backbone + ASPP, without
  V3's 3x3 head conv) and a decoder over the backbone's stride-4 'low_level' features.
- `FCNHead`: torchvision's auxiliary head on the 'stage3' features (`aux_loss=True`), available
  to both models with `aux_head=True`.

Deliberate differences from the V3+ paper, which uses Xception and TensorFlow:
- The encoder's output is resized to the low-level features' own size (PyTorch's
  `align_corners=False` convention, `resize_bilinear`) rather than upsampled "by a factor of 4",
  so inputs of any size work, odd ones included. (The paper's TensorFlow code resizes with
  `align_corners=True` on crops like 513 = 32 * 16 + 1, where a factor of 4 is exact.)
- The decoder has no dropout (the paper mentions none; ASPP keeps its dropout).
- `separable` switches every 3x3 conv of the heads (ASPP's atrous branches, V3's head conv, V3+'s
  decoder convs) to depthwise-separable convs; the backbone always keeps standard convs, so that
  torchvision's ResNet weights import unchanged. The auxiliary FCN head keeps standard convs too:
  it mirrors torchvision's `FCNHead` (parameter parity) and is dropped after training.

The auxiliary head and the return value
---------------------------------------
Both models return a `ModelOutput` whose `logits` are the semantic logits `[N, H, W, num_classes]`
float32. With `aux_head`, a training call (`train=True`) also fills `aux_logits` (the FCN head's
logits upsampled to the input size, float32), which the training objective adds with
`config.loss.aux_weight` (torchvision's recipe: 0.5):

    out, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, images, train=True,
        mutable=['batch_stats'], rngs={'dropout': key})
    loss = loss_fn(out.logits, labels) + 0.5 * loss_fn(out.aux_logits, labels)

Evaluation (`train=False`) never runs the head and leaves `aux_logits` None. `model.init` creates
the head's parameters whatever `train` is; note that `aux_head` changes the parameter tree, so a
checkpoint restores only into a model with the same setting.
"""

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models.aspp import context_module
from seg_jax.models.layers import ConvBNAct, conv_bn_act_or_separable, resize_bilinear
from seg_jax.models.outputs import ModelOutput

def _feature(features: Mapping[str, jax.Array], name: str, needed_by: str) -> jax.Array:
    if name not in features:
        raise ValueError(
            f"{needed_by} needs the backbone feature {name!r}, but the backbone returns only "
            f"{sorted(features)}; use a backbone that provides it."
        )
    return features[name]


class FCNHead(nn.Module):
    """Auxiliary head of torchvision's `FCNHead`: `[N, h, w, C_in] -> [N, h, w, num_classes]`.

    3x3 conv C_in -> C_in / 4 (no bias) + BN + ReLU, dropout, 1x1 conv with bias to the classes.
    Returns logits at the features' resolution in the computation dtype. With C_in = 1024
    (ResNet-50's stage 3) and 21 classes it has 2,365,205 parameters, as in torchvision.

    Attributes:
      num_classes: channels of the logits.
      dropout_rate: dropout before the classifier in training (torchvision: 0.1).
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
        hidden = max(features.shape[-1] // 4, 1)
        x = ConvBNAct(hidden, 3, dtype=self.dtype, name="conv")(features, train=train)
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return nn.Conv(
            self.num_classes, kernel_size=(1, 1), use_bias=True, dtype=self.dtype,
            name="classifier",
        )(x)


def _encode(module: nn.Module, features: Mapping[str, jax.Array], train: bool) -> jax.Array:
    """DeepLab's encoder head: the context module `module.aspp` names (ASPP by default; named
    'aspp' inside `module` whatever the mode) on the 'high_level' features."""
    return context_module(
        module.aspp,
        channels=module.aspp_channels,
        atrous_rates=module.atrous_rates,
        dropout_rate=module.dropout_rate,
        separable=module.separable,
        dtype=module.dtype,
        name="aspp",
    )(_feature(features, "high_level", type(module).__name__), train=train)


def _auxiliary_logits(
    module: nn.Module, features: Mapping[str, jax.Array], height: int, width: int, train: bool
) -> jax.Array | None:
    """`FCNHead` on 'stage3', upsampled to (height, width) in float32; None outside training.

    Called from a model's compact `__call__`, so the head becomes that model's child 'aux_head'.
    At `init` the head is built (its parameters belong to the model) even with `train=False`.
    """
    if not (train or module.is_initializing()):
        return None
    stage3 = _feature(features, "stage3", "aux_head=True")
    head = FCNHead(module.num_classes, dtype=module.dtype, name="aux_head")
    logits = head(stage3.astype(module.dtype), train=train)
    return resize_bilinear(logits.astype(jnp.float32), height, width) if train else None


def _output(module: nn.Module, logits: jax.Array, features, height: int, width: int,
            train: bool) -> ModelOutput:
    """The model's `ModelOutput`: logits upsampled to the input size, and the auxiliary head's.

    Upsampling is in float32 so that bf16 rounding does not blur class boundaries, and so that
    losses always receive float32 logits.
    """
    aux = _auxiliary_logits(module, features, height, width, train) if module.aux_head else None
    return ModelOutput(logits=resize_bilinear(logits.astype(jnp.float32), height, width),
                       aux_logits=aux)


class _DeepLab(nn.Module):
    """The fields DeepLabV3 and DeepLabV3Plus share (documented on each)."""

    num_classes: int
    backbone: nn.Module
    aspp_channels: int = 256
    atrous_rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.5
    separable: bool = False
    aux_head: bool = False
    dtype: Any = jnp.float32
    aspp: str = "full"


class DeepLabV3(_DeepLab):
    """DeepLabv3: `__call__(images: [N, H, W, 3], *, train) -> ModelOutput`.

    Any H, W works, odd ones included: the backbone pads like PyTorch and the logits are resized
    to the input's own H, W (`resize_bilinear`, PyTorch's `align_corners=False`).

    Variables: 'params' and 'batch_stats' (pass `mutable=['batch_stats']` when `train=True`); rngs:
    'dropout' when `train=True` and `dropout_rate > 0` (or `aux_head`). The output's `logits` are
    `[N, H, W, num_classes]` float32; with `aux_head`, see the module docstring for `aux_logits`.

    Attributes:
      num_classes: channels of the logits.
      backbone: a module mapping `images, *, train` to a dict with a 'high_level' feature map (and
        'stage3' for `aux_head`), such as `ResNet(...)`; it carries its own output stride and dtype.
      aspp_channels: width of ASPP and of the head's 3x3 conv (256 in the paper).
      atrous_rates: ASPP rates; (6, 12, 18) suits output stride 16, (12, 24, 36) output stride 8.
      dropout_rate: ASPP dropout in training.
      separable: depthwise-separable 3x3 convs in the head: ASPP's atrous branches and the head
        conv. The backbone is not affected.
      aux_head: add torchvision's auxiliary `FCNHead` on the 'stage3' features.
      dtype: computation dtype of ASPP and heads; the returned logits are always float32.
      aspp: the context module (`seg_jax.models.aspp.ASPP_MODES`): 'full' (ASPP), 'pooling_only'
        (ASPP's 1x1 and image-pooling branches, no atrous ones; `atrous_rates` unused) or 'none'
        (a 1x1 conv + BN + ReLU of width `aspp_channels` and the dropout instead of ASPP).
    """

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> ModelOutput:
        _, height, width, _ = images.shape
        features = self.backbone(images, train=train)
        x = _encode(self, features, train)
        head_cls = conv_bn_act_or_separable(self.separable)
        x = head_cls(self.aspp_channels, 3, dtype=self.dtype, name="head")(x, train=train)
        logits = nn.Conv(
            self.num_classes, kernel_size=(1, 1), use_bias=True, dtype=self.dtype, name="classifier"
        )(x)
        return _output(self, logits, features, height, width, train)


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabv3+ decoder (Fig. 2): `(encoded [N, h, w, C], low_level [N, h4, w4, C_low])` ->
    `[N, h4, w4, channels]`.

    The low-level features are reduced by a 1x1 conv + BN + ReLU to `low_level_channels` (48 in
    the paper, Table 1, so they do not outweigh the encoder's 256 channels); the encoder output is
    resized bilinearly to their size and concatenated before them (the order of the paper's
    TensorFlow code); two 3x3 convs + BN + ReLU of `channels` refine the result (Table 2's best).

    Attributes:
      low_level_channels: width of the low-level projection.
      channels: width of the two 3x3 convs.
      separable: depthwise-separable 3x3 convs.
      dtype: computation dtype; parameters are float32.
    """

    low_level_channels: int = 48
    channels: int = 256
    separable: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, encoded: jax.Array, low_level: jax.Array, *, train: bool) -> jax.Array:
        low_level = ConvBNAct(
            self.low_level_channels, 1, dtype=self.dtype, name="low_level_project"
        )(low_level.astype(self.dtype), train=train)
        _, h, w, _ = low_level.shape
        x = jnp.concatenate([resize_bilinear(encoded, h, w), low_level], axis=-1)
        conv_cls = conv_bn_act_or_separable(self.separable)
        for index in range(2):
            x = conv_cls(self.channels, 3, dtype=self.dtype, name=f"conv{index}")(x, train=train)
        return x


class DeepLabV3Plus(_DeepLab):
    """DeepLabv3+: `__call__(images: [N, H, W, 3], *, train) -> ModelOutput`.

    backbone -> ASPP on 'high_level' -> `DeepLabV3PlusDecoder` with 'low_level' -> 1x1 conv with
    bias to the classes -> bilinear resize to the input's H, W (float32). Any H, W works. Variables,
    rngs and the auxiliary head as for `DeepLabV3`.

    Attributes:
      num_classes: channels of the logits.
      backbone: a module mapping `images, *, train` to a dict with 'high_level' and 'low_level'
        feature maps (and 'stage3' for `aux_head`), such as `ResNet(...)`, whose 'low_level' has
        stride 4 with the 'imagenet' stem (2 with 'conv3x3').
      aspp_channels: width of ASPP (256 in the paper).
      atrous_rates: ASPP rates; (6, 12, 18) at output stride 16, the paper's default.
      dropout_rate: ASPP dropout in training.
      low_level_channels: width of the decoder's 1x1 projection of the low-level features (48).
      decoder_channels: width of the decoder's two 3x3 convs (256).
      separable: depthwise-separable 3x3 convs in ASPP's atrous branches and in the decoder. The
        backbone is not affected.
      aux_head: add torchvision's auxiliary `FCNHead` on the 'stage3' features.
      dtype: computation dtype of ASPP, decoder and heads; the returned logits are always float32.
      aspp: the context module, as for `DeepLabV3`.
    """

    low_level_channels: int = 48
    decoder_channels: int = 256

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> ModelOutput:
        _, height, width, _ = images.shape
        features = self.backbone(images, train=train)
        encoded = _encode(self, features, train)
        x = DeepLabV3PlusDecoder(
            low_level_channels=self.low_level_channels,
            channels=self.decoder_channels,
            separable=self.separable,
            dtype=self.dtype,
            name="decoder",
        )(encoded, _feature(features, "low_level", "DeepLabV3Plus"), train=train)
        logits = nn.Conv(
            self.num_classes, kernel_size=(1, 1), use_bias=True, dtype=self.dtype, name="classifier"
        )(x)
        return _output(self, logits, features, height, width, train)
