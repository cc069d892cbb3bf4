"""Receptive fields: analytical (per layer and per model), gridding, and measured from gradients.

Analytical receptive field of a chain of convolutions (Araujo et al. 2019, "Computing Receptive
Fields of Convolutional Neural Networks", Distill). Layer l has kernel size k_l, stride s_l,
dilation d_l and padding p_l; with r_0 = 1, j_0 = 1, c_0 = 0:

    r_l = r_{l-1} + (k_l - 1) d_l j_{l-1}           receptive field size (pixels per side)
    j_l = j_{l-1} s_l                               jump: input pixels between output pixels
    c_l = c_{l-1} + ((k_l - 1) d_l / 2 - p_l) j_{l-1}   centre of output pixel 0, input coordinates

Output pixel i of layer l is centred on input pixel `c_l + i j_l` and sees the square of side r_l
around it (pixel centres at integer coordinates). A kxk kernel with dilation d spans
`(k - 1) d + 1` pixels of its own input grid, so it widens the field by `(k - 1) d` steps of that
grid, each `j_{l-1}` input pixels long. With the symmetric padding `p = d (k - 1) / 2` of
`seg_jax.models.layers` (odd k), c_l = 0 for every layer: output pixel i is centred on input pixel
`i * j_l`.

Whole models. The receptive field of a network with branches is the union over all paths from
input to output; each path is a chain as above, and with centred kernels and symmetric padding all
paths are centred on the same input pixel, so the union is the field of the longest path. A skip
(residual, shortcut, concatenation) only adds shorter paths and never enlarges the field: for a
ResNet the longest path runs through the stem conv, the max-pool and every 3x3 conv (1x1 convs add
nothing, strided or not). `module_conv_path` reads that path off `resnet_layout` for `ResNet`
and off the dilations for `DilatedContextModule` / `DilatedContextNet`. A dilated ResNet at output
stride 8 or 16 has exactly the receptive field of the undilated one (each doubled dilation runs on
a grid that is twice as dense), only the jump changes; multi-grid enlarges it. DeepLabV3's ASPP has
an image-pooling branch, so its receptive field is the whole image and is not modelled here.

Gridding. A stack of 3x3 dilated convs reaches the 1-D offsets `sum_l t_l d_l`, t_l in {-1, 0, 1};
a square kernel reaches the 2-D offsets whose row and column offsets are both reachable.
`stack_offsets` / `missing_offsets` compute that exactly; `satisfies_hdc` is Wang et al.'s
(2018) design rule for hybrid dilated convolution.

Measured receptive fields. `coverage_map` marks the input pixels with a non-zero gradient of one
output pixel (which inputs can influence it); `effective_receptive_field` returns the gradient
magnitude itself (Luo et al. 2016, "Understanding the Effective Receptive Field in Deep
Convolutional Neural Networks"). Gradients of random networks can vanish by accident (a dead ReLU,
weights of both signs cancelling), so for coverage use `analysis_variables(..., positive=True)`:
all kernels positive, biases zero, BatchNorm at its initial statistics, and positive inputs make
every pre-activation positive, every ReLU active and every path's contribution a positive product,
so no sum can cancel and the gradient is non-zero exactly where a path exists. Several random
inits would only make an accidental zero unlikely (the one path to a corner of the field crosses
a dead ReLU with probability 1/2 per single-channel layer); positive weights exclude it. One
exception:
max-pooling passes the gradient to one input per window, so through a max-pool the coverage is a
lower bound (`num_samples` > 1 takes the union over several random inputs).
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax.models.context import DilatedContextModule, DilatedContextNet
from seg_jax.models.resnet import STEM_STRIDES, ResNet, resnet_layout


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One layer of a conv path: a `kernel_size` square window (conv or pooling).

    `padding` None means the symmetric padding `dilation * (kernel_size - 1) // 2` of
    `seg_jax.models.layers.symmetric_padding` (and of PyTorch's max-pool with padding 1).
    """

    kernel_size: int
    stride: int = 1
    dilation: int = 1
    padding: Optional[int] = None
    name: str = ""

    def resolved_padding(self) -> int:
        if self.padding is None:
            return self.dilation * (self.kernel_size - 1) // 2
        return self.padding


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of the output of one layer, in input pixels.

    Attributes:
      name: the layer's name.
      size: r, the side of the square of input pixels that one output pixel sees.
      jump: j, the input-pixel distance between neighbouring output pixels (cumulative stride).
      start: c, the input coordinate of the centre of output pixel 0.
    """

    name: str
    size: int
    jump: int
    start: float

    def center(self, index: int) -> float:
        """Input coordinate of the centre of output pixel `index` (along one axis)."""
        return self.start + index * self.jump

    def bounds(self, index: int) -> tuple[float, float]:
        """First and last input coordinate that output pixel `index` sees (inclusive)."""
        half = (self.size - 1) / 2
        return self.center(index) - half, self.center(index) + half


def _as_ints(name: str, values: Sequence[int], minimum: int) -> list[int]:
    values = list(values)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(
                f"{name}={values!r}: every entry must be an integer >= {minimum}, got {value!r}."
            )
    return [int(v) for v in values]


def receptive_field(
    kernel_sizes: Sequence[int],
    strides: Optional[Sequence[int]] = None,
    dilations: Optional[Sequence[int]] = None,
    *,
    paddings: Optional[Sequence[Optional[int]]] = None,
    names: Optional[Sequence[str]] = None,
) -> list[ReceptiveField]:
    """Per-layer receptive field (size, jump, start) of a chain of square convs / poolings.

    Implements the recurrence of the module docstring. `strides` and `dilations` default to all
    ones, `paddings` to the symmetric padding (None entries too), `names` to 'layer{i}'.

    Example: three 3x3 convs with dilations (1, 2, 4) give sizes 3, 7, 15 with jump 1.

    Raises ValueError for an empty chain, sequences of different lengths, or a kernel size,
    stride or dilation below 1, a negative padding.
    """
    kernel_sizes = _as_ints("kernel_sizes", kernel_sizes, 1)
    num_layers = len(kernel_sizes)
    if num_layers == 0:
        raise ValueError("kernel_sizes is empty: a receptive field needs at least one layer.")
    strides = _as_ints("strides", [1] * num_layers if strides is None else strides, 1)
    dilations = _as_ints("dilations", [1] * num_layers if dilations is None else dilations, 1)
    paddings = [None] * num_layers if paddings is None else list(paddings)
    names = [f"layer{i + 1}" for i in range(num_layers)] if names is None else list(names)
    lengths = {
        "kernel_sizes": num_layers, "strides": len(strides), "dilations": len(dilations),
        "paddings": len(paddings), "names": len(names),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"One entry per layer is needed in each sequence; lengths: {lengths}.")
    return path_receptive_field([
        ConvSpec(k, s, d, p, n)
        for k, s, d, p, n in zip(kernel_sizes, strides, dilations, paddings, names)
    ])


def path_receptive_field(path: Sequence[ConvSpec]) -> list[ReceptiveField]:
    """`receptive_field` of a sequence of `ConvSpec`s, one `ReceptiveField` per layer."""
    if not path:
        raise ValueError("The conv path is empty: a receptive field needs at least one layer.")
    size, jump, start = 1, 1, 0.0
    fields = []
    for spec in path:
        for attribute, minimum in (("kernel_size", 1), ("stride", 1), ("dilation", 1)):
            _as_ints(f"{spec.name or 'layer'}.{attribute}", [getattr(spec, attribute)], minimum)
        padding = _as_ints(f"{spec.name or 'layer'}.padding", [spec.resolved_padding()], 0)[0]
        span = (spec.kernel_size - 1) * spec.dilation
        start += (span / 2 - padding) * jump
        size += span * jump
        jump *= spec.stride
        fields.append(ReceptiveField(spec.name, size, jump, start))
    return fields


def resnet_conv_path(
    stage_sizes: Sequence[int],
    block: str = "bottleneck",
    *,
    output_stride: int = 32,
    multi_grid: Sequence[int] = (1, 1, 1),
    stem: str = "imagenet",
) -> list[ConvSpec]:
    """The longest input-to-output path of `ResNet` ('high_level'), read off `resnet_layout`.

    Stem conv (7x7/2 for 'imagenet', 3x3/2 for 'conv3x3'), the 3x3/2 max-pool ('imagenet' only),
    then per block the convs of its residual branch with their strides and dilations: BasicBlock
    conv1 (3x3, stride, `dilation`) and conv2 (3x3, `output_dilation`); Bottleneck conv1 (1x1),
    conv2 (3x3, stride, `dilation`), conv3 (1x1). Shortcuts are shorter paths and are left out.
    """
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"Unknown block {block!r}; valid blocks: ['basic', 'bottleneck'].")
    layout = resnet_layout(
        stage_sizes, output_stride=output_stride, multi_grid=multi_grid, stem=stem
    )
    if stem == "imagenet":
        path = [ConvSpec(7, 2, name="stem"), ConvSpec(3, 2, name="maxpool")]
    else:
        assert STEM_STRIDES[stem] == 2, stem
        path = [ConvSpec(3, 2, name="stem")]
    for stage, blocks in enumerate(layout):
        for index, spec in enumerate(blocks):
            prefix = f"layer{stage + 1}_{index}"
            if block == "basic":
                path += [
                    ConvSpec(3, spec.strides, spec.dilation, name=f"{prefix}/conv1"),
                    ConvSpec(3, 1, spec.output_dilation, name=f"{prefix}/conv2"),
                ]
            else:
                path += [
                    ConvSpec(1, name=f"{prefix}/conv1"),
                    ConvSpec(3, spec.strides, spec.dilation, name=f"{prefix}/conv2"),
                    ConvSpec(1, name=f"{prefix}/conv3"),
                ]
    return path


def context_conv_path(
    dilations: Sequence[int], *, separable: bool = False, prefix: str = ""
) -> list[ConvSpec]:
    """The longest path of `DilatedContextModule`: its 3x3 layers, then the final 1x1.

    The early skip is a shorter path and does not change the field. A separable layer is a
    depthwise 3x3 (the dilated one) followed by a pointwise 1x1.
    """
    dilations = _as_ints("dilations", dilations, 1)
    path = []
    for index, dilation in enumerate(dilations):
        name = f"{prefix}conv{index + 1}"
        if separable:
            path += [
                ConvSpec(3, 1, dilation, name=f"{name}_depthwise"),
                ConvSpec(1, name=f"{name}_pointwise"),
            ]
        else:
            path.append(ConvSpec(3, 1, dilation, name=name))
    return path + [ConvSpec(1, name=f"{prefix}final")]


def module_conv_path(module: nn.Module) -> list[ConvSpec]:
    """The longest conv path of a model whose receptive field can be read off its architecture.

    Supports `ResNet` (its 'high_level' output), `DilatedContextModule` (on its input's grid) and
    `DilatedContextNet` (ResNet backbone + 1x1 score conv + context module, in image pixels).
    Raises TypeError for other modules.
    """
    if isinstance(module, ResNet):
        return resnet_conv_path(
            module.stage_sizes, module.block, output_stride=module.output_stride,
            multi_grid=module.multi_grid, stem=module.stem,
        )
    if isinstance(module, DilatedContextModule):
        return context_conv_path(module.dilations, separable=module.separable)
    if isinstance(module, DilatedContextNet):
        return (
            module_conv_path(module.backbone)
            + [ConvSpec(1, name="scores")]
            + context_conv_path(module.dilations, separable=module.separable, prefix="context/")
        )
    raise TypeError(
        f"No conv path is known for {type(module).__name__}; supported: ResNet, "
        "DilatedContextModule, DilatedContextNet. (DeepLabV3's image pooling makes its receptive "
        "field the whole image.)"
    )


def model_receptive_field(module: nn.Module) -> ReceptiveField:
    """Receptive field of the output of `module` (see `module_conv_path`)."""
    return path_receptive_field(module_conv_path(module))[-1]


# ---------------------------------------------------------------------------------------------
# Gridding: which offsets a stack of dilated convolutions reaches.


def stack_offsets(dilations: Sequence[int], kernel_size: int = 3) -> np.ndarray:
    """Sorted 1-D offsets reached by a stack of `kernel_size`-tap convs with `dilations`.

    Offsets `sum_l t_l d_l` with `t_l` in `{-(k-1)/2, ..., (k-1)/2}` (odd k). For square kernels
    the 2-D offsets reached are the pairs (row, column) of reached 1-D offsets, assuming no
    accidental cancellation of weights.
    """
    dilations = _as_ints("dilations", dilations, 1)
    (kernel_size,) = _as_ints("kernel_size", [kernel_size], 1)
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size={kernel_size}: only odd (centred) kernels are supported.")
    half = (kernel_size - 1) // 2
    radius = half * sum(dilations)
    reached = np.zeros(2 * radius + 1, bool)
    reached[radius] = True
    for dilation in dilations:
        shifted = np.zeros_like(reached)
        for tap in range(-half, half + 1):
            shift = tap * dilation
            shifted[max(shift, 0): len(reached) + min(shift, 0)] |= reached[
                max(-shift, 0): len(reached) - max(shift, 0)
            ]
        reached = shifted
    return np.flatnonzero(reached) - radius


def missing_offsets(dilations: Sequence[int], kernel_size: int = 3) -> np.ndarray:
    """1-D offsets inside the receptive field that the stack never reaches (gridding holes).

    Empty when the stack covers its receptive field contiguously, e.g. (1, 2, 5); for (2, 2, 2)
    every odd offset in [-5, 5]. A 2-D pixel is a hole when its row or its column offset is.
    """
    reached = stack_offsets(dilations, kernel_size)
    radius = int(reached[-1])
    return np.setdiff1d(np.arange(-radius, radius + 1), reached)


def hdc_max_distances(dilations: Sequence[int]) -> tuple[int, ...]:
    """Wang et al.'s (2018) "maximum distance between two nonzero values", M_1 .. M_n.

    `M_n = r_n`, `M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i)`, for 3x3 kernels
    ("Understanding Convolution for Semantic Segmentation", on hybrid dilated convolution).
    """
    rates = _as_ints("dilations", dilations, 1)
    if not rates:
        raise ValueError("dilations is empty.")
    distances = [rates[-1]]
    for rate in reversed(rates[:-1]):
        m = distances[0]
        distances.insert(0, max(m - 2 * rate, m - 2 * (m - rate), rate))
    return tuple(distances)


def satisfies_hdc(dilations: Sequence[int], kernel_size: int = 3) -> bool:
    """Wang et al.'s HDC condition `M_2 <= K` (with the first rate 1, which it presumes).

    `M_2 <= K` says the gaps left by layers 2..n are at most K apart, so that the dense first
    layer fills them; that presumes a first rate of 1 (for (2, 2, 2), M_2 = 2 but every odd
    offset is missed), so a first rate above 1 fails here. The rule is sufficient for a hole-free
    stack (`missing_offsets` empty), not necessary: (1, 3, 1) has M_2 = 5 and no hole.
    """
    rates = _as_ints("dilations", dilations, 1)
    if not rates:
        raise ValueError("dilations is empty.")
    if rates[0] != 1:
        return False
    return len(rates) == 1 or hdc_max_distances(rates)[1] <= kernel_size


# ---------------------------------------------------------------------------------------------
# Measured receptive fields, from the gradient of one output pixel.


def analysis_variables(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    positive: bool = False,
    seed: int = 0,
    **call_kwargs: Any,
) -> dict:
    """Variables for `module` with random kernels, for coverage and ERF analysis.

    Kernels: He normal (fan-in), or with `positive=True` uniform in [0.5, 1.5) / fan-in, so that
    every layer has a gain near one and every path contributes a positive amount (see the module
    docstring). Biases 0; BatchNorm scale 1, offset 0, mean 0, variance 1 (its initial state).
    `input_shape` is `(H, W, C)`; `call_kwargs` are passed to `module.init` (e.g. `train=False`).
    Built with NumPy, so no random-number code is compiled.
    """
    shapes = jax.eval_shape(
        lambda: module.init(
            jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32), **call_kwargs
        )
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            if positive:
                value = rng.uniform(0.5, 1.5, leaf.shape) / fan_in
            else:
                value = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape)
        elif name in ("bias", "mean"):
            value = np.zeros(leaf.shape)
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            raise ValueError(f"analysis_variables does not know how to fill variable {name!r}.")
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


ApplyFn = Callable[[jax.Array], jax.Array]


def _input_gradients(
    apply_fn: ApplyFn,
    input_shape: Sequence[int],
    position: Sequence[int],
    inputs: np.ndarray,
) -> np.ndarray:
    """`d sum_c y[0, row, col, c] / d x` for each x of `inputs: [S, H, W, C]`: `[S, H, W, C]`."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape={input_shape}: expected (H, W, C).")
    out = jax.eval_shape(apply_fn, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim != 4 or out.shape[0] != 1:
        raise ValueError(
            f"apply_fn must map [1, H, W, C] to one [1, h, w, K] array, got {out}; pick the "
            "feature map in apply_fn, e.g. "
            "`lambda x: model.apply(v, x, train=False)['high_level']`."
        )
    row, col = (int(p) for p in position)
    if not (0 <= row < out.shape[1] and 0 <= col < out.shape[2]):
        raise ValueError(
            f"position={tuple(position)} is outside the {out.shape[1]}x{out.shape[2]} output."
        )

    @jax.jit
    def gradient(x):
        return jax.grad(lambda x: jnp.sum(apply_fn(x)[0, row, col].astype(jnp.float32)))(x)

    return np.stack([np.asarray(gradient(jnp.asarray(x[None], jnp.float32))[0]) for x in inputs])


def coverage_map(
    apply_fn: ApplyFn,
    input_shape: Sequence[int],
    position: Sequence[int],
    *,
    num_samples: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Which input pixels can influence output pixel `position`: a boolean `[H, W]` map.

    The support of the gradient of `sum_c y[0, row, col, c]` with respect to the input, at
    positive random inputs (uniform in [0.5, 1.5)), united over `num_samples` inputs. Give
    `apply_fn` positive weights (`analysis_variables(..., positive=True)`) so that no connection
    is hidden by a dead ReLU or a cancellation; with them the map is exact for convolutions,
    ReLU, inference BatchNorm, additions and concatenations, and a lower bound through max-pooling.

    Args:
      apply_fn: `[1, H, W, C] -> [1, h, w, K]`, e.g. `lambda x: module.apply(variables, x)`.
      input_shape: `(H, W, C)`.
      position: `(row, col)` on the output grid.
    """
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(0.5, 1.5, (num_samples, *input_shape))
    gradients = _input_gradients(apply_fn, input_shape, position, inputs)
    return np.any(gradients != 0, axis=(0, -1))


def effective_receptive_field(
    apply_fn: ApplyFn,
    input_shape: Sequence[int],
    position: Sequence[int],
    *,
    num_samples: int = 8,
    seed: int = 0,
    positive_inputs: bool = False,
) -> np.ndarray:
    """Luo et al.'s effective receptive field of output pixel `position`: `[H, W]` float64.

    The mean over `num_samples` random inputs of `sum_C |d sum_c y[0, row, col, c] / dx|` (a
    gradient of one at the chosen output pixel, zero elsewhere, back-propagated to the input).
    Inputs are standard normal, as in Luo et al., or uniform in [0.5, 1.5) with
    `positive_inputs`: with positive weights every ReLU is then active and the map is the
    weighted count of paths from each input pixel. Not normalised. Luo et al. also average over
    random weights: call it for several `analysis_variables(seed=...)` and average.
    """
    rng = np.random.default_rng(seed)
    if positive_inputs:
        inputs = rng.uniform(0.5, 1.5, (num_samples, *input_shape))
    else:
        inputs = rng.standard_normal((num_samples, *input_shape))
    gradients = _input_gradients(apply_fn, input_shape, position, inputs)
    return np.abs(gradients).sum(axis=-1).mean(axis=0)
