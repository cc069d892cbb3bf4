"""Size, FLOPs and speed of every registered semantic segmentation model, and of ASPP alone.

    python -m experiments.benchmarks.bench_models                    # 256x256, batch 8, all
    python -m experiments.benchmarks.bench_models --size 128 --batch 4 \\
        --models deeplabv3_resnet18 deeplabv3plus_resnet18 --separable standard

For each model (DeepLabV3 and DeepLabV3+ on ResNet-18 and ResNet-50, on MobileNetV2 when it is
registered, and any other registered model that returns `[N, H, W, C]` logits, such as the
dilated context model), with standard and with depthwise-separable 3x3 head convs: parameters,
FLOPs per image (XLA's cost analysis of the compiled inference and train-step programs), and
images/s of a jitted train step (forward + backward + SGD with momentum on cross-entropy,
BatchNorm in training mode) and of jitted inference. A second table does the same for ASPP alone on
the ResNet-50 output-stride-16 features of the same input size.

Models: 21 classes, output stride 16, ASPP rates (6, 12, 18) and 256 channels, V3+ decoder 48/256,
float32, the widths of the papers (`--base-width` shrinks the backbones). Timings are medians
(`experiments.benchmarks.timing.median_ms`) after a warm-up call; compilation is excluded.

FLOPs are XLA's `compiled.cost_analysis()['flops']` (this jax returns a dict; older ones a list
of dicts), divided by the batch; the train-step count includes the backward pass and the
optimizer update. XLA counts a multiply-add as 2 FLOPs and only the kernel taps that land inside
the input: on the 16x16 map of a 256 px input at output stride 16, ASPP's rate-18 branch counts
as a 1x1 conv and the rate-12 branch nearly so. They are the FLOPs of the program XLA compiled,
not of the model on paper: on XLA:CPU the gradient of a depthwise conv's kernel is compiled into
a dense convolution (for a 3x3 depthwise conv on [8, 16, 16, 2048], 87 GFLOPs instead of 0.04,
and 1.6 s), so separable heads count *more* train-step FLOPs and train slower on CPU, even though
they have fewer parameters and fewer inference FLOPs.

Like `seg_jax.main`, this sets
XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution before JAX starts (unless
XLA_FLAGS already sets that option): on XLA:CPU it runs convolutions with XLA's multi-threaded
kernels instead of one at a time through YNNPACK (README: speed).
"""

import argparse
import os

from seg_jax import xla_flags  # JAX-free

xla_flags.use_cpu_fast_conv()

import jax  # noqa: E402  (after XLA_FLAGS, which XLA reads once when JAX starts)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import models as model_configs  # noqa: E402
from experiments.bench_model_step import make_train_step  # noqa: E402
from experiments.benchmarks.step_programs import flops  # noqa: E402
from experiments.benchmarks.timing import median_ms  # noqa: E402
from seg_jax.models import factory  # noqa: E402
from seg_jax.models.aspp import ASPP  # noqa: E402

NUM_CLASSES = 21
# Registered models that are not semantic-logits models, or that are listed explicitly below.
_NOT_BENCHMARKED = {"panoptic_deeplab"}

# Fields every model of the factory takes (the backbone's, the class count, the separable switch).
COMMON_FIELDS = dict(num_classes=NUM_CLASSES, base_width=64, dtype="float32", separable=False)
DEEPLAB_FIELDS = dict(output_stride=16, atrous_rates=(6, 12, 18), aspp_channels=256,
                      dropout_rate=0.1)


def candidate_models() -> dict[str, dict]:
    """Benchmark name -> model config fields, for what is registered in this checkout."""
    models = {}
    backbones = [b for b in ("resnet18", "resnet50", "mobilenet_v2")
                 if b in factory.registered_backbones()]
    for name in ("deeplabv3", "deeplabv3plus"):
        for backbone in backbones:
            models[f"{name}_{backbone}"] = dict(
                COMMON_FIELDS, **DEEPLAB_FIELDS, name=name, backbone=backbone
            )
    # Other semantic models (e.g. the dilated context model): the common fields only, so each
    # keeps its own defaults (output stride included).
    known = {"deeplabv3", "deeplabv3plus"} | _NOT_BENCHMARKED
    for name in factory.registered_models():
        if name not in known:
            for backbone in ("resnet18", "resnet50"):
                models[f"{name}_{backbone}"] = dict(COMMON_FIELDS, name=name, backbone=backbone)
    return models


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def bench_model(fields: dict, size: int, batch: int, repeats: int) -> dict:
    # The complete model block (configs/models.py's defaults) with the benchmark's fields.
    overrides = {k: v for k, v in fields.items() if k != "name"}
    model = factory.create_model(model_configs.model_config(fields["name"], **overrides))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, size=(batch, size, size)), jnp.int32)

    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), images[:1],
                                                        train=False)[0])
    if out.is_panoptic or out.logits.shape != (1, size, size, NUM_CLASSES):
        raise ValueError(f"returns {jax.tree.map(lambda a: a.shape, out)}, not only [N, H, W, C] "
                         "logits")
    variables = jax.jit(lambda key: model.init(key, images[:1], train=False))(
        jax.random.key(0, impl="rbg"))
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd(0.01, momentum=0.9)
    opt_state = tx.init(params)

    def infer(params, batch_stats, images):
        return model.apply({"params": params, "batch_stats": batch_stats}, images,
                           train=False).logits

    key = jax.random.key(1)
    train_args = (params, batch_stats, opt_state, images, labels, key)
    # The same SGD + cross-entropy step that experiments/bench_model_step.py times.
    train = make_train_step(model, tx, None, NUM_CLASSES).lower(*train_args).compile()
    infer_compiled = jax.jit(infer).lower(params, batch_stats, images).compile()
    train_ms = median_ms(lambda: jax.block_until_ready(train(*train_args)), repeats)
    infer_ms = median_ms(
        lambda: jax.block_until_ready(infer_compiled(params, batch_stats, images)), repeats
    )
    return dict(
        output_stride=getattr(model.backbone, "output_stride", "?"),
        params=_count(params),
        infer_gflops=flops(infer_compiled) / batch / 1e9,
        train_gflops=flops(train) / batch / 1e9,
        train_ips=batch / (train_ms / 1e3),
        infer_ips=batch / (infer_ms / 1e3),
    )


def bench_aspp(separable: bool, size: int, batch: int, repeats: int) -> dict:
    """ASPP alone on ResNet-50 output-stride-16 features: [batch, size/16, size/16, 2048]."""
    aspp = ASPP(channels=256, atrous_rates=(6, 12, 18), dropout_rate=0.1, separable=separable)
    side = -(-size // 16)
    features = jnp.asarray(np.random.default_rng(0).normal(size=(batch, side, side, 2048)),
                           jnp.float32)
    variables = jax.jit(lambda key: aspp.init(key, features[:1], train=False))(
        jax.random.key(0, impl="rbg"))
    params, batch_stats = variables["params"], variables["batch_stats"]
    key = jax.random.key(1)

    def loss_and_grad(params, batch_stats, features, key):
        def loss_fn(params):
            out, updates = aspp.apply({"params": params, "batch_stats": batch_stats}, features,
                                      train=True, mutable=["batch_stats"], rngs={"dropout": key})
            return jnp.mean(out**2), updates

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def infer(params, batch_stats, features):
        return aspp.apply({"params": params, "batch_stats": batch_stats}, features, train=False)

    grad = jax.jit(loss_and_grad).lower(params, batch_stats, features, key).compile()
    forward = jax.jit(infer).lower(params, batch_stats, features).compile()
    grad_ms = median_ms(lambda: jax.block_until_ready(grad(params, batch_stats, features, key)),
                        repeats)
    infer_ms = median_ms(lambda: jax.block_until_ready(forward(params, batch_stats, features)),
                         repeats)
    return dict(
        output_stride=16,
        params=_count(params),
        infer_gflops=flops(forward) / batch / 1e9,
        train_gflops=flops(grad) / batch / 1e9,
        train_ips=batch / (grad_ms / 1e3),
        infer_ips=batch / (infer_ms / 1e3),
    )


def _row(name: str, variant: str, r: dict) -> str:
    return (f"| {name} | {r['output_stride']} | {variant} | {r['params'] / 1e6:.2f} "
            f"| {r['infer_gflops']:.2f} | {r['train_gflops']:.2f} | {r['train_ips']:.2f} "
            f"| {r['infer_ips']:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="square input size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per program")
    parser.add_argument("--base-width", type=int, default=64, help="backbone width (64: paper)")
    parser.add_argument("--models", nargs="*", default=None,
                        help="benchmark names (default: all registered, listed at the start)")
    parser.add_argument("--separable", choices=["both", "standard", "separable"], default="both")
    parser.add_argument("--no-aspp", action="store_true", help="skip the ASPP-only table")
    args = parser.parse_args()

    candidates = candidate_models()
    names = args.models or list(candidates)
    unknown = sorted(set(names) - set(candidates))
    if unknown:
        parser.error(f"unknown --models {unknown}; registered here: {list(candidates)}")
    variants = {"both": [False, True], "standard": [False], "separable": [True]}[args.separable]

    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{os.cpu_count()} CPUs, 1-min load {os.getloadavg()[0]:.1f} at start")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} (set before importing jax, "
          "as seg_jax.main does)")
    print(f"input {args.size}x{args.size}, batch {args.batch}, {NUM_CLASSES} classes, float32, "
          f"base_width {args.base_width}; median of {args.repeats} runs; GFLOPs per image from "
          "XLA's cost analysis (multiply-add = 2, in-bounds kernel taps only)\n")
    print("| model | output stride | 3x3 head convs | params (M) | inference GFLOPs/img "
          "| train-step GFLOPs/img | train images/s | inference images/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        for separable in variants:
            fields = dict(candidates[name], separable=separable, base_width=args.base_width)
            variant = "separable" if separable else "standard"
            try:
                result = bench_model(fields, args.size, args.batch, args.repeats)
            except ValueError as error:  # a model whose config or output does not fit the table
                print(f"| {name} | | {variant} | skipped: {error} | | | | |", flush=True)
                continue
            print(_row(name, variant, result), flush=True)

    if not args.no_aspp:
        side = -(-args.size // 16)
        print(f"\nASPP alone on [{args.batch}, {side}, {side}, 2048] (ResNet-50, output stride "
              "16), 256 channels, rates (6, 12, 18); 'train' is forward + backward\n")
        print("| module | output stride | 3x3 convs | params (M) | inference GFLOPs/img "
              "| train GFLOPs/img | train images/s | inference images/s |")
        print("|---|---|---|---|---|---|---|---|")
        for separable in variants:
            result = bench_aspp(separable, args.size, args.batch, args.repeats)
            print(_row("ASPP", "separable" if separable else "standard", result), flush=True)
    print(f"\n1-min load at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
