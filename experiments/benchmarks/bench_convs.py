"""Where a model's convolution time goes: each of its convolutions timed alone, JAX against PyTorch.

    python -m experiments.benchmarks.bench_convs                       # DeepLabV3-R50, ~10 min
    python -m experiments.benchmarks.bench_convs --models shapes --repeats 5

A train step's cost on CPU is mostly convolutions: forward, the gradient with respect to the
input (dx) and the gradient with respect to the kernel (dw). This benchmark lists every
convolution of a model (the models and batch sizes of bench_vs_pytorch, recorded by intercepting
flax's `nn.Conv` while the model is traced), and times each distinct one (input shape, kernel,
stride, dilation, groups) three ways in both frameworks, on the same random data, float32:
- JAX: the convolution as the model's layers compute it (`seg_jax.models.layers.
  conv_without_padding_taps`: `lax.conv_general_dilated` in NHWC/HWIO without the kernel taps
  that only see padding), and its VJP with respect to the input or to the kernel, each jitted
  alone, with the runner's XLA:CPU flags (set below before JAX starts);
- PyTorch: `F.conv2d` on channels_last tensors (the faster layout in bench_vs_pytorch) and
  `aten.convolution_backward` for dx or dw alone.
The first convolution sees the image, whose gradient neither framework computes in training, so
its dx is left out. Times are medians of `--repeats` calls after a warm-up, the frameworks
alternating call by call. The tables give each distinct convolution, then the sums over the
model's convolutions by kind (count x time), so the kinds where JAX falls behind stand out.

Timing one op at a time leaves out what a whole step adds or saves (fusion of BatchNorm and ReLU
with its neighbours, memory traffic between ops, scheduling); compare the sums with
bench_vs_pytorch's step times to see how much of the step the convolutions are.
"""

import argparse
import collections
import dataclasses
import os
import time

from seg_jax import xla_flags  # JAX-free

xla_flags.use_cpu_fast_conv()  # the runner's XLA:CPU flags, before JAX starts

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from experiments.benchmarks.bench_vs_pytorch import MODELS  # noqa: E402
from seg_jax.models import create_model  # noqa: E402
from seg_jax.models.layers import conv_without_padding_taps  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    input_shape: tuple[int, int, int, int]  # N, H, W, C_in
    features: int
    kernel: int
    stride: int
    dilation: int
    padding: int
    groups: int
    first: bool  # sees the image: no input gradient in training

    @property
    def kind(self) -> str:
        if self.kernel == 1:
            return "1x1" + (" strided" if self.stride > 1 else "")
        name = f"{self.kernel}x{self.kernel}"
        if self.groups > 1:
            name += " depthwise"
        if self.stride > 1:
            return f"{name} stride {self.stride}"
        return f"{name} dilation {self.dilation}" if self.dilation > 1 else name

    def describe(self) -> str:
        n, h, w, c = self.input_shape
        return (f"{n}x{h}x{w}x{c} -> {self.features}, {self.kind}"
                + (f" (groups {self.groups})" if 1 < self.groups < c else ""))


def _pair(value) -> int:
    values = set(value) if isinstance(value, (tuple, list)) else {value}
    if len(values) != 1:
        raise ValueError(f"non-square convolution setting {value}")
    return int(values.pop())


def _symmetric_padding(padding, kernel: int, stride: int, dilation: int) -> int:
    """The one padding on every side that `padding` (flax's argument) amounts to."""
    if padding == "VALID":
        return 0
    if padding == "SAME" and stride == 1:  # odd kernels only, as every conv here
        return dilation * (kernel - 1) // 2
    if isinstance(padding, str):
        raise ValueError(f"padding {padding!r} at stride {stride} is not symmetric")
    return _pair(tuple({p for pair in padding for p in pair}))


def model_convs(fields: dict, batch: int, size: int) -> list[ConvSpec]:
    """Every convolution the model applies to a [batch, size, size, 3] input, in order."""
    model = create_model(fields)
    specs = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Conv) and context.method_name == "__call__":
            shape = tuple(int(d) for d in args[0].shape)
            kernel, stride = _pair(module.kernel_size), _pair(module.strides or 1)
            dilation = _pair(module.kernel_dilation or 1)
            specs.append(ConvSpec(
                input_shape=shape, features=module.features, kernel=kernel, stride=stride,
                dilation=dilation, padding=_symmetric_padding(module.padding, kernel, stride,
                                                              dilation),
                groups=module.feature_group_count, first=not specs))
        return next_fun(*args, **kwargs)

    images = jnp.zeros((batch, size, size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init({"params": jax.random.key(0),
                                           "dropout": jax.random.key(1)}, images, train=True))
    return specs


def jax_programs(spec: ConvSpec, rng) -> dict:
    n, h, w, c = spec.input_shape
    x = jnp.asarray(rng.normal(size=spec.input_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=(spec.kernel, spec.kernel, c // spec.groups, spec.features)),
                    jnp.float32)

    dimension_numbers = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))

    def conv(x, k):  # as the model's layers run it: taps that only see padding left out
        return conv_without_padding_taps(
            x, k, (spec.stride,) * 2, [(spec.padding, spec.padding)] * 2,
            rhs_dilation=(spec.dilation,) * 2, dimension_numbers=dimension_numbers,
            feature_group_count=spec.groups)

    y = jax.jit(conv)(x, k)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    forward = jax.jit(conv).lower(x, k).compile()
    dx = jax.jit(lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0]).lower(x, k, g).compile()
    dw = jax.jit(lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0]).lower(x, k, g).compile()
    programs = {"forward": lambda: forward(x, k).block_until_ready(),
                "dw": lambda: dw(x, k, g).block_until_ready()}
    if not spec.first:
        programs["dx"] = lambda: dx(x, k, g).block_until_ready()
    return programs


def torch_programs(spec: ConvSpec, rng) -> dict:
    n, h, w, c = spec.input_shape
    channels_last = torch.channels_last
    x = torch.from_numpy(rng.normal(size=(n, c, h, w)).astype(np.float32)).contiguous(
        memory_format=channels_last)
    k = torch.from_numpy(rng.normal(size=(spec.features, c // spec.groups, spec.kernel,
                                          spec.kernel)).astype(np.float32)).contiguous(
        memory_format=channels_last)
    args = dict(stride=(spec.stride,) * 2, padding=(spec.padding,) * 2,
                dilation=(spec.dilation,) * 2, groups=spec.groups)
    with torch.no_grad():
        y = F.conv2d(x, k, None, **args)
    g = torch.from_numpy(rng.normal(size=tuple(y.shape)).astype(np.float32)).contiguous(
        memory_format=channels_last)

    def backward(mask):
        return torch.ops.aten.convolution_backward(
            g, x, k, None, args["stride"], args["padding"], args["dilation"], False, (0, 0),
            spec.groups, mask)

    def forward():
        with torch.no_grad():
            return F.conv2d(x, k, None, **args)

    programs = {"forward": forward, "dw": lambda: backward([False, True, False])}
    if not spec.first:
        programs["dx"] = lambda: backward([True, False, False])
    return programs


def median_ms(programs: dict, repeats: int) -> dict:
    """{name: median ms}; one warm-up call each, then the programs alternate call by call."""
    for run in programs.values():
        run()
    times = collections.defaultdict(list)
    for _ in range(repeats):
        for name, run in programs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


PARTS = ("forward", "dx", "dw")


def bench(name: str, repeats: int, log) -> None:
    make_fields, batch, size = MODELS[name]
    specs = model_convs(make_fields(), batch, size)
    counts = collections.Counter(specs)
    log(f"\n{name}: batch {batch} x {size} x {size}, {len(specs)} convolutions, "
        f"{len(counts)} distinct; median ms of {repeats} calls\n")
    log("| convolution | count | JAX fwd / dx / dw | PyTorch fwd / dx / dw | JAX / PyTorch "
        "(sum of the three) |")
    log("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    by_kind = collections.defaultdict(lambda: np.zeros((2, 3)))
    for spec, count in counts.items():
        jax_progs, torch_progs = jax_programs(spec, rng), torch_programs(spec, rng)
        timed = median_ms({**{("jax", k): v for k, v in jax_progs.items()},
                           **{("torch", k): v for k, v in torch_progs.items()}}, repeats)
        row = np.array([[timed.get((side, part), 0.0) for part in PARTS]
                        for side in ("jax", "torch")])
        by_kind[spec.kind] += count * row
        text = [" / ".join("-" if (side, p) not in timed else f"{timed[side, p]:.1f}"
                           for p in PARTS) for side in ("jax", "torch")]
        log(f"| {spec.describe()} | {count} | {text[0]} | {text[1]} | "
            f"{row[0].sum() / row[1].sum():.2f} |")

    log(f"\n{name}: sums over the model's convolutions, ms (count x median)\n")
    log("| kind | JAX fwd / dx / dw | PyTorch fwd / dx / dw | JAX / PyTorch fwd | "
        "dx | dw | all |")
    log("|---|---|---|---|---|---|---|")
    total = np.zeros((2, 3))
    for kind, sums in sorted(by_kind.items(), key=lambda item: -item[1][0].sum()):
        total += sums
        log(_sum_row(kind, sums))
    log(_sum_row("**all**", total))


def _sum_row(label: str, sums) -> str:
    ratio = lambda a, b: f"{a / b:.2f}" if b else "-"
    parts = [" / ".join(f"{v:.0f}" for v in side) for side in sums]
    return (f"| {label} | {parts[0]} | {parts[1]} | "
            + " | ".join(ratio(sums[0, i], sums[1, i]) for i in range(3))
            + f" | {ratio(sums[0].sum(), sums[1].sum())} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["deeplabv3_resnet50"],
                        choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    log = lambda line: print(line, flush=True)
    log(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{os.cpu_count()} CPUs, 1-min load {os.getloadavg()[0]:.1f} at start; "
        f"XLA_FLAGS={os.environ['XLA_FLAGS']!r}")
    for name in args.models:
        bench(name, args.repeats, log)
    log(f"\n1-min load at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
