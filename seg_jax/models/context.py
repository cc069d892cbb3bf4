"""The context module of Yu & Koltun (2016) and the 'dilated_context' model built around it.

Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions" (ICLR 2016), Sec. 3 and
Table 1: a stack of 3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1, each followed by ReLU,
then a 1x1 convolution back to the C input channels. Its input and output are C-channel maps (the
class scores of a front-end), so it can be appended to any dense predictor. The receptive field
grows exponentially with depth (67x67 after the seven 3x3 layers) while the resolution stays.

Padding is symmetric and equal to the dilation, so every layer keeps the spatial size; that is
what the authors' released Caffe definition does (`pad=dilation`), zero padding included.
The basic module keeps C channels in every layer; the large module widens them (Table 1: 2C, 2C,
4C, 8C, 16C, 32C, 32C, then C): `width_multipliers=LARGE_WIDTH_MULTIPLIERS`.

Identity initialisation (Sec. 3). The authors found that random initialisation did not train the
module and instead initialised every layer to pass its input on: the centre tap of each 3x3 kernel
is the identity between channels, all other taps are zero, biases are zero. A widened layer from
c_i to c_{i+1} channels gets the centre tap `C / c_{i+1}` between input channel a and output
channel b when `floor(a C / c_i) == floor(b C / c_{i+1})`: every input class is copied into a group
of `c_{i+1} / C` channels that together carry its value, so the final 1x1 layer adds the group back
up to the class score. The other entries of a widened module are small Gaussian noise
`N(0, (identity_noise * C / c_{i+1})^2)` (the paper's epsilon, sigma << C / c_{i+1}), without
which channels copied from the same class would stay identical forever (same weights, same
gradients). Because each 3x3 layer is followed by ReLU (the final 1x1 is not, as in the released
model), the initialised module computes `relu(x)`: the identity on non-negative inputs, and
negative scores are clipped at initialisation exactly as in the paper.

Gridding and its two remedies. Stacked dilated convolutions whose rates all share a factor g > 1,
such as (2, 2, 2), only ever sample pixels on a lattice: the output sees every g-th row and
column of its receptive field (Wang et al. 2018, "Understanding Convolution for Semantic
Segmentation"; `seg_jax.models.receptive_field` measures it). The default rates do not
grid (the two leading non-dilated layers fill every gap of the doubling rates), but a user-chosen
sequence can, hence two options:

- Hybrid dilated convolution (HDC, Wang et al.): rates chosen so that the stack covers its whole
  receptive field, e.g. (1, 2, 5) repeated: `dilations=HDC_DILATIONS`, checked with
  `seg_jax.models.receptive_field.satisfies_hdc`.
- `early_skip`: the output of an early non-dilated 3x3 layer is carried past the dilated layers
  and concatenated with the input of the final 1x1 layer. The source is the first layer when its
  dilation is 1 (no extra parameters); otherwise a dedicated non-dilated 3x3 conv `skip_conv`
  reads the module input. Concatenation rather than addition: the final layer then weighs the
  dense local view and the dilated context with separate weights (after an addition it sees only
  their sum, and can neither tell them apart nor keep one from drowning the other), and identity
  initialisation survives unchanged (the skip's columns of the final kernel start at zero, or
  noise), whereas an addition would double the signal at initialisation. The cost is
  `c_skip * C` extra weights in the 1x1 layer. The skip fills the holes only within its own
  reach (3x3 pixels on the module's input grid); beyond it the lattice remains, so HDC is the
  remedy for the far context and the skip is the remedy for local detail.

As in the paper the module has no BatchNorm and no dropout. Deliberate differences and
additions: He (fan-in) initialisation, the usual one for a ReLU stack without normalisation,
when `identity_init=False`; `separable=True` replaces each dense 3x3 by a depthwise 3x3 (dilated, no
bias) and a pointwise 1x1 (with bias) followed by the same ReLU, for cheaper wide modules; the two
gridding remedies above. In `DilatedContextNet` the front-end is a dilated ResNet at output stride
8 (the paper used VGG-16 with its last two poolings removed, also output stride 8), the logits are
upsampled bilinearly to the input size (the paper used a fixed bilinear 8x deconvolution), and
front-end and module are trained jointly (the paper trained the front-end first, then the module).

Model config of 'dilated_context' (unknown keys are rejected, as by every model of the factory):

  field               values                                   default
  name                'dilated_context'                        required
  num_classes         int                                      required
  backbone, base_width, stem, multi_grid, zero_init_residual, dtype: as for 'deeplabv3'
  output_stride       8 | 16 | 32                              8 (the paper's front-end)
  dilations           3x3 rates of the context module          (1, 1, 2, 4, 8, 16, 1)
                      (HDC_DILATIONS: (1, 2, 5, 1, 2, 5, 1))
  context_width       'basic' (C everywhere) | 'large'         'basic'
                      ('large' needs 7 dilations)
  identity_init       the paper's identity initialisation      True
  early_skip          early non-dilated skip, concatenated     False
  separable           depthwise-separable 3x3s in the module   False
"""

from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax.models.factory import (
    MODEL_BACKBONE_FIELDS,
    create_backbone,
    parse_dtype,
    register_model,
    resolve_fields,
)
from seg_jax.models.layers import conv_without_padding_taps, resize_bilinear
from seg_jax.models.outputs import ModelOutput

# Table 1 of Yu & Koltun: dilations of the seven 3x3 layers (the final 1x1 layer has none).
YU_KOLTUN_DILATIONS = (1, 1, 2, 4, 8, 16, 1)
# Table 1, large module: output channels of the seven 3x3 layers in units of C.
LARGE_WIDTH_MULTIPLIERS = (2, 2, 4, 8, 16, 32, 32)
# Wang et al.'s HDC group (1, 2, 5) twice, then the non-dilated 3x3 of Yu & Koltun's layer 7.
# Receptive field 35 (the default's is 67); every pixel of it is sampled.
HDC_DILATIONS = (1, 2, 5, 1, 2, 5, 1)

# Plain ReLU stacks without normalisation keep their activation variance with He fan-in scaling.
_he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

Initializer = Callable[..., jax.Array]


def identity_kernel_init(
    num_channels: int,
    *,
    identity_in_channels: Optional[int] = None,
    noise: float = 0.0,
    depthwise: bool = False,
) -> Initializer:
    """Yu & Koltun's identity initialiser for a conv kernel `[kh, kw, c_in, c_out]`.

    The centre tap maps input channel a to output channel b with weight `C / c_out` when
    `floor(a C / c_in) == floor(b C / c_out)`, C = `num_channels` (the module's width); every
    other entry is 0, or `N(0, (noise * C / c_out)^2)` when `noise > 0`. For `c_in == c_out == C`
    this is the identity. Only the first `identity_in_channels` input channels (default: all)
    take part; the rest (a concatenated skip) start at zero or noise. A `depthwise` kernel
    `[kh, kw, 1, c]` gets a centre tap of 1 per channel (noise std `noise`).
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        kh, kw, c_in_total, c_out = shape
        if depthwise:
            c_in, centre_value = 1, 1.0
            same_class = jnp.ones((1, c_out), bool)
        else:
            c_in = c_in_total if identity_in_channels is None else identity_in_channels
            centre_value = num_channels / c_out
            a = jnp.arange(c_in)[:, None]
            b = jnp.arange(c_out)[None, :]
            same_class = (a * num_channels // c_in) == (b * num_channels // c_out)
        # jnp rather than NumPy: under jit the mask is computed, not embedded as a large constant.
        mask = jnp.zeros((c_in_total, c_out), bool).at[:c_in].set(same_class)
        centre = jnp.where(mask, centre_value, 0.0)
        is_identity = jnp.zeros(shape, bool).at[kh // 2, kw // 2].set(mask)
        kernel = jnp.zeros(shape, jnp.float32).at[kh // 2, kw // 2].set(centre)
        if noise > 0:
            epsilon = noise * centre_value * jax.random.normal(key, shape, jnp.float32)
            kernel = jnp.where(is_identity, kernel, epsilon)
        return kernel.astype(dtype)

    return init


def _check_positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values
    ):
        raise ValueError(f"{name}={values!r}: expected a non-empty sequence of positive integers.")
    return tuple(int(v) for v in values)


class DilatedContextModule(nn.Module):
    """Yu & Koltun's context module: `x: [N, H, W, C] -> [N, H, W, C]` in `dtype`.

    See the module docstring for the paper, the identity initialisation and the gridding remedies.
    There is no BatchNorm or dropout, hence no `train` argument.

    Attributes:
      dilations: one 3x3 layer per rate; default Table 1's (1, 1, 2, 4, 8, 16, 1).
        `HDC_DILATIONS` is a gridding-free alternative.
      width_multipliers: output channels of each 3x3 layer in units of C, one per layer; None keeps
        C everywhere (the basic module), `LARGE_WIDTH_MULTIPLIERS` is the large module.
      identity_init: the paper's identity initialisation (True) or He normal (False).
      identity_noise: relative std of the noise added to the identity initialisation of a widened
        module (ignored by the basic module, which starts as an exact identity on x >= 0).
      early_skip: concatenate the output of an early non-dilated 3x3 layer to the input of the
        final 1x1 layer.
      separable: depthwise 3x3 + pointwise 1x1 instead of each dense 3x3.
      dtype: computation dtype; parameters are float32.
    """

    dilations: Sequence[int] = YU_KOLTUN_DILATIONS
    width_multipliers: Optional[Sequence[int]] = None
    identity_init: bool = True
    identity_noise: float = 1e-3
    early_skip: bool = False
    separable: bool = False
    dtype: Any = jnp.float32

    def layer_widths(self, num_channels: int) -> tuple[int, ...]:
        """Output channels of each 3x3 layer for a C = `num_channels` input; validates the rates."""
        dilations = _check_positive_ints("dilations", self.dilations)
        if self.width_multipliers is None:
            return (num_channels,) * len(dilations)
        multipliers = _check_positive_ints("width_multipliers", self.width_multipliers)
        if len(multipliers) != len(dilations):
            raise ValueError(
                f"width_multipliers={multipliers} has {len(multipliers)} entries but there are "
                f"{len(dilations)} dilations; give one multiplier per 3x3 layer (or None)."
            )
        return tuple(m * num_channels for m in multipliers)

    def _kernel_init(self, num_channels: int, noisy: bool, **kwargs) -> Initializer:
        if not self.identity_init:
            return _he_normal_fan_in
        noise = self.identity_noise if noisy else 0.0
        return identity_kernel_init(num_channels, noise=noise, **kwargs)

    def _conv3x3(
        self, x: jax.Array, features: int, dilation: int, num_channels: int, noisy: bool, name: str
    ) -> jax.Array:
        """One 3x3 layer (dense or separable) + ReLU; padding `dilation` keeps H, W."""
        padding = ((dilation, dilation), (dilation, dilation))
        if self.separable:
            x = nn.Conv(
                x.shape[-1], (3, 3), padding=padding, kernel_dilation=(dilation, dilation),
                feature_group_count=x.shape[-1], use_bias=False,
                kernel_init=self._kernel_init(num_channels, noisy, depthwise=True),
                dtype=self.dtype, conv_general_dilated=conv_without_padding_taps,
                name=f"{name}_depthwise",
            )(x)
            x = nn.Conv(
                features, (1, 1), kernel_init=self._kernel_init(num_channels, noisy),
                dtype=self.dtype, name=f"{name}_pointwise",
            )(x)
        else:
            x = nn.Conv(
                features, (3, 3), padding=padding, kernel_dilation=(dilation, dilation),
                kernel_init=self._kernel_init(num_channels, noisy), dtype=self.dtype,
                conv_general_dilated=conv_without_padding_taps, name=name,
            )(x)
        return nn.relu(x)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        num_channels = x.shape[-1]
        widths = self.layer_widths(num_channels)
        noisy = any(w != num_channels for w in widths)
        x = x.astype(self.dtype)

        skip = None
        if self.early_skip and self.dilations[0] != 1:
            skip = self._conv3x3(x, widths[0], 1, num_channels, noisy, name="skip_conv")
        h = x
        for index, (dilation, features) in enumerate(zip(self.dilations, widths)):
            h = self._conv3x3(h, features, dilation, num_channels, noisy, name=f"conv{index + 1}")
            if self.early_skip and index == 0 and skip is None:
                skip = h
        context_channels = h.shape[-1]
        if skip is not None:
            h = jnp.concatenate([h, skip], axis=-1)
        # With identity init the skip's columns start at zero (or noise): the module still starts
        # as relu(x), and the final layer learns how much local detail to take from the skip.
        final_init = self._kernel_init(
            num_channels, noisy, identity_in_channels=context_channels
        )
        return nn.Conv(
            num_channels, (1, 1), kernel_init=final_init, dtype=self.dtype, name="final"
        )(h)


class DilatedContextNet(nn.Module):
    """Front-end + context module: `__call__(images: [N, H, W, 3], *, train) -> ModelOutput`.

    The backbone's 'high_level' features (output stride 8 in the paper's design) go through a 1x1
    conv with bias to `num_classes` scores, the `DilatedContextModule` aggregates context on that
    K-channel score map, and the result is upsampled bilinearly, in float32, to the input size
    (`resize_bilinear`, PyTorch's `align_corners=False`): the output's `logits` [N, H, W, K],
    always float32.

    Variables: 'params' and the backbone's 'batch_stats' (pass `mutable=['batch_stats']` when
    `train=True`); no rngs.

    Attributes:
      num_classes: K, the channels of the score map and of the logits.
      backbone: maps `images, *, train` to a dict with 'high_level', e.g. `ResNet(...)`.
      dilations, width_multipliers, identity_init, early_skip, separable: of the context module.
      dtype: computation dtype of the score conv and the context module.
    """

    num_classes: int
    backbone: nn.Module
    dilations: Sequence[int] = YU_KOLTUN_DILATIONS
    width_multipliers: Optional[Sequence[int]] = None
    identity_init: bool = True
    early_skip: bool = False
    separable: bool = False
    dtype: Any = jnp.float32

    def context_fields(self) -> dict[str, Any]:
        """The `DilatedContextModule` attributes, e.g. to analyse the module on its own."""
        return dict(
            dilations=self.dilations, width_multipliers=self.width_multipliers,
            identity_init=self.identity_init, early_skip=self.early_skip,
            separable=self.separable, dtype=self.dtype,
        )

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> ModelOutput:
        _, height, width, _ = images.shape
        features = self.backbone(images, train=train)["high_level"]
        scores = nn.Conv(
            self.num_classes, (1, 1), use_bias=True, dtype=self.dtype, name="scores"
        )(features.astype(self.dtype))
        logits = DilatedContextModule(**self.context_fields(), name="context")(scores)
        # Upsample in float32 so that bf16 rounding does not blur class boundaries.
        return ModelOutput(logits=resize_bilinear(logits.astype(jnp.float32), height, width))


_CONTEXT_WIDTHS = {"basic": None, "large": LARGE_WIDTH_MULTIPLIERS}

# The backbone fields are factory's own, so every backbone option works here unchanged.
_DILATED_CONTEXT_FIELDS = (*MODEL_BACKBONE_FIELDS, "name", "num_classes", "dilations",
                           "context_width", "identity_init", "early_skip", "separable")


@register_model("dilated_context")
def _build_dilated_context(config: Mapping[str, Any]) -> nn.Module:
    """`DilatedContextNet` from a model config (fields: `_DILATED_CONTEXT_FIELDS`)."""
    fields = resolve_fields(config, _DILATED_CONTEXT_FIELDS)
    dilations = _check_positive_ints("dilations", fields["dilations"])
    if fields["context_width"] not in _CONTEXT_WIDTHS:
        raise ValueError(
            f"context_width={fields['context_width']!r}; valid: {sorted(_CONTEXT_WIDTHS)}."
        )
    width_multipliers = _CONTEXT_WIDTHS[fields["context_width"]]
    if width_multipliers is not None and len(width_multipliers) != len(dilations):
        raise ValueError(
            f"context_width='large' follows Yu & Koltun's Table 1 and needs "
            f"{len(width_multipliers)} dilations, got {dilations}; use context_width='basic' "
            "or 7 dilations."
        )
    return DilatedContextNet(
        num_classes=int(fields["num_classes"]),
        backbone=create_backbone(fields),
        dilations=dilations,
        width_multipliers=width_multipliers,
        identity_init=bool(fields["identity_init"]),
        early_skip=bool(fields["early_skip"]),
        separable=bool(fields["separable"]),
        dtype=parse_dtype(fields["dtype"]),
    )
