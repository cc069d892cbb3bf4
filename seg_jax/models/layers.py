"""Convolution building blocks shared by the backbones and heads: conv + BatchNorm + ReLU.

Conventions, chosen so that torchvision weights can later be imported without changing any output:

- Padding is explicit and symmetric, `dilation * (kernel_size - 1) // 2` on every side, which is
  what torchvision writes out by hand (`padding=1` for 3x3, `padding=3` for the 7x7 stem,
  `padding=dilation` for atrous 3x3, strided convs included). XLA's 'SAME' would pad a strided conv
  on an even input one pixel more at the bottom/right than at the top/left, shifting the sampling
  grid by one pixel.
- BatchNorm uses `momentum=0.9` in flax's convention (`running = 0.9 * running + 0.1 * batch`),
  which is PyTorch's `momentum=0.1`, and `epsilon=1e-5` (PyTorch's default). One difference
  remains: PyTorch updates the running variance with the unbiased batch variance, flax with the
  biased one; with the hundreds of values per channel of a segmentation batch they agree to <1%.
- Under `jax.jit` with a batch sharded over devices, BatchNorm statistics are computed over the
  global batch (synchronised BatchNorm) without any `axis_name`.
- `dtype` is the computation dtype (e.g. bfloat16); parameters stay float32 and BatchNorm reduces in
  float32 (flax's `force_float32_reductions`).
- BatchNorm is `seg_jax.models.batch_norm.BatchNorm`: flax's variables and arithmetic with a
  closed-form backward pass (2.4x faster on CPU than autodiff of flax's), and convolutions leave
  out kernel taps that only see padding (`conv_without_padding_taps`): both for speed only.
- Kernels are initialised as torchvision initialises ResNets: He normal with fan-out
  (`kaiming_normal_(mode='fan_out', nonlinearity='relu')`).
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models.batch_norm import BatchNorm

# flax's BatchNorm momentum is the weight of the old running value, so 0.9 == PyTorch momentum 0.1.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

Initializer = Callable[..., jax.Array]


def symmetric_padding(
    kernel_size: int, dilation: int = 1
) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch-style explicit padding `((p, p), (p, p))`, `p = dilation * (kernel_size - 1) // 2`.

    With stride 1 the output has the input's spatial size; with stride s it has
    `floor((H + 2p - dilation * (kernel_size - 1) - 1) / s) + 1` rows, as in `torch.nn.Conv2d`.
    """
    if kernel_size % 2 != 1:
        raise ValueError(
            f"kernel_size={kernel_size}: only odd kernel sizes have a symmetric padding that keeps "
            "the sampling grid centred; use an odd kernel size."
        )
    pad = dilation * (kernel_size - 1) // 2
    return ((pad, pad), (pad, pad))


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of `x: [N, h, w, C]` to `[N, height, width, C]`, keeping x's dtype.

    Matches PyTorch's `F.interpolate(x, size, mode='bilinear', align_corners=False)`: pixel centres
    are at half-integer positions (`src = (dst + 0.5) * h / height - 0.5`) and positions outside the
    input are clamped to the border pixel. Antialiasing is turned off so that downsampling also
    matches PyTorch (jax.image.resize antialiases by default, PyTorch does not); for upsampling it
    makes no difference.
    """
    n, _, _, c = x.shape
    return jax.image.resize(x, (n, height, width, c), method="bilinear", antialias=False)


def _live_taps(size: int, kernel: int, stride: int, dilation: int, pad_lo: int, pad_hi: int):
    """(first, last, new_pad_lo, new_pad_hi) of the kernel taps along one spatial axis that see
    at least one input element (the others only ever multiply padding zeros), or None when every
    tap does or the live ones cannot be cut out as one window with the same output size."""
    out = (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1
    if out <= 0:
        return None

    def live(tap: int) -> bool:
        # The first output whose input index o * stride + tap * dilation - pad_lo is >= 0.
        first = max(0, -(-(pad_lo - tap * dilation) // stride))
        return first < out and first * stride + tap * dilation - pad_lo < size

    taps = [t for t in range(kernel) if live(t)]
    if not taps or len(taps) == kernel or taps != list(range(taps[0], taps[-1] + 1)):
        return None
    first, last = taps[0], taps[-1]
    new_lo = pad_lo - first * dilation
    # The padding on the far side that keeps `out` outputs for the narrower window.
    new_hi = (out - 1) * stride + (last - first) * dilation + 1 - size - new_lo
    if new_lo < 0 or new_hi < 0:
        return None
    return first, last, new_lo, new_hi


def conv_without_padding_taps(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                              rhs_dilation=None, dimension_numbers=None, **kwargs):
    """`lax.conv_general_dilated` that leaves out the kernel taps which only see padding.

    An atrous conv whose rate reaches past the feature map (ASPP's rates 12-36 on the 32 x 32
    map of a 256 px input at output stride 8, the context module's rates 8 and 16 on a 12 x 12
    map) multiplies whole kernel rows or columns by padding zeros only: rate 36 on 32 x 32 is a
    1x1 conv with the centre tap. XLA:CPU computes every tap anyway (oneDNN, PyTorch's CPU
    backend, skips them); this cuts the dead rows and columns out of the kernel and adjusts the
    padding, so the result is the same (up to float summation order), as is the gradient: a dead
    tap's gradient is zero either way. Shapes are static, so the choice is made once when tracing.
    Anything but a 2D NHWC/HWIO conv without input dilation is passed through unchanged.

    flax's `nn.Conv(conv_general_dilated=conv_without_padding_taps)` uses it; it takes that
    argument list.
    """
    call = functools.partial(jax.lax.conv_general_dilated, lhs_dilation=lhs_dilation,
                             rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                             **kwargs)
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if (lhs.ndim != 4 or any(d != 1 for d in (lhs_dilation or (1, 1)))
            or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc):
        return call(lhs, rhs, window_strides, padding)
    dilation = tuple(rhs_dilation or (1, 1))
    if isinstance(padding, str):
        dilated_window = [d * (k - 1) + 1 for d, k in zip(dilation, rhs.shape[:2])]
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], dilated_window, window_strides, padding)
    new_padding, kernel = [], rhs
    for axis in range(2):
        pad_lo, pad_hi = padding[axis]
        cut = _live_taps(lhs.shape[1 + axis], rhs.shape[axis], window_strides[axis],
                         dilation[axis], pad_lo, pad_hi)
        if cut is not None:
            first, last, pad_lo, pad_hi = cut
            kernel = jax.lax.slice_in_dim(kernel, first, last + 1, axis=axis)
        new_padding.append((pad_lo, pad_hi))
    return call(lhs, kernel, window_strides, new_padding)


class ConvBNAct(nn.Module):
    """Conv2D (no bias by default) -> BatchNorm -> optional ReLU, NHWC.

    `x: [N, H, W, C_in]` -> `[N, H', W', features]` with `H' = floor((H - 1) / strides) + 1`
    (the padding of `symmetric_padding`).

    Attributes:
      features: output channels.
      kernel_size: odd square kernel size.
      strides: square stride.
      dilation: atrous rate (`kernel_dilation`); the padding grows with it so stride-1 outputs keep
        the input's size.
      feature_group_count: 1 for a dense conv, `C_in` for a depthwise conv.
      use_bias: a conv bias is redundant before BatchNorm, hence False by default (torchvision too).
      act: apply ReLU after BatchNorm.
      bn_scale_init: initialiser of BatchNorm's gamma; zeros makes a residual branch start as zero
        (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1).
      kernel_init: initialiser of the conv kernel.
      dtype: computation dtype; parameters are float32.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    feature_group_count: int = 1
    use_bias: bool = False
    act: bool = True
    bn_scale_init: Initializer = nn.initializers.ones
    kernel_init: Initializer = he_normal_fan_out
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Conv(
            self.features,
            kernel_size=(self.kernel_size, self.kernel_size),
            strides=(self.strides, self.strides),
            padding=symmetric_padding(self.kernel_size, self.dilation),
            kernel_dilation=(self.dilation, self.dilation),
            feature_group_count=self.feature_group_count,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            conv_general_dilated=conv_without_padding_taps,
            name="conv",
        )(x)
        x = BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            scale_init=self.bn_scale_init,
            dtype=self.dtype,
            name="bn",
        )(x)
        return nn.relu(x) if self.act else x


class SeparableConvBNAct(nn.Module):
    """Depthwise-separable conv: depthwise kxk (atrous) + BN + ReLU, then pointwise 1x1 + BN + ReLU.

    The atrous separable convolution of DeepLabv3+ (Chen et al. 2018, "Encoder-Decoder with Atrous
    Separable Convolution", Sec. 3.1 and Fig. 3), with BN + ReLU after both convs as in Sec. 4.
    `x: [N, H, W, C_in]` -> `[N, H', W', features]`; the depthwise conv keeps `C_in` channels and
    carries the stride and dilation.

    Attributes:
      features: output channels of the pointwise conv.
      kernel_size: odd square kernel size of the depthwise conv.
      strides: stride of the depthwise conv.
      dilation: atrous rate of the depthwise conv.
      dtype: computation dtype; parameters are float32.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        in_features = x.shape[-1]
        x = ConvBNAct(
            in_features,
            kernel_size=self.kernel_size,
            strides=self.strides,
            dilation=self.dilation,
            feature_group_count=in_features,
            dtype=self.dtype,
            name="depthwise",
        )(x, train=train)
        return ConvBNAct(self.features, kernel_size=1, dtype=self.dtype, name="pointwise")(
            x, train=train
        )


def conv_bn_act_or_separable(separable: bool) -> type[nn.Module]:
    """`SeparableConvBNAct` if `separable` else `ConvBNAct`, for the kxk convs of the heads.

    Both take `(features, kernel_size, *, strides, dilation, dtype, name)` and map
    `[N, H, W, C_in] -> [N, H', W', features]`, so a head switches between them with one flag. For
    a kxk conv from C_in to C_out channels (BN included) the separable version saves
    `(k*k - 1) * C_in * C_out - (k*k + 2) * C_in` parameters: `8 C_in C_out - 11 C_in` for 3x3.
    """
    return SeparableConvBNAct if separable else ConvBNAct
