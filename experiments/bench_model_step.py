"""Speed of one jitted DeepLabV3 train step (forward + backward + SGD) for CPU-sized models.

  python -m experiments.bench_model_step     # from the repository root; a few minutes on 2 cores
  python -m experiments.bench_model_step --sizes=64 --stems=conv3x3 --steps=5
  python -m experiments.bench_model_step --sizes=96 --stems=imagenet \
      --variants=default,-individual_convolution,"onednn individual_convolution"

Model: ResNet-18 stage sizes at base_width 16, output stride 8, ASPP 64 channels, 7 classes, batch
16; for each input size and stem, the step is compiled once per XLA:CPU option set of --variants
(COMPILER_VARIANTS): XLA's defaults, `xla_cpu_experimental_ynn_fusion_type=-individual_convolution`
(convolutions not offloaded one by one to YNNPACK: the runner's setting), and that with single
convolutions offered to oneDNN or XNNPACK instead. Prints a Markdown table of steps/s (best of
alternating repeats) and compile time.

Why YNNPACK is slower here (jaxlib 0.10.2; XLA's and YNNPACK's sources and
TF_CPP_VMODULE=ynn_fusion_thunk=3): XLA hands YNNPACK its intra-op thread pool, but YNNPACK
schedules a kernel-gradient convolution serially (`concurrency=1`: its reduction runs over batch
and space, and YNNPACK does not split reductions across threads; small forward convolutions too),
so one of the two cores idles through the largest part of the backward pass. No XLA flag changes
that schedule.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs import models
from seg_jax.models import create_model

NUM_CLASSES = 7
# XLA's default YNNPACK fusion types on CPU are {INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION, REDUCE}.
# XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution removes one entry; jit's
# compiler_options cannot parse that '-' syntax and replaces the whole repeated field instead, so
# the equivalent is the list without INDIVIDUAL_CONVOLUTION (identical debug options, checked with
# --xla_dump_to).
_NO_YNN_CONVOLUTION = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE")
}
COMPILER_VARIANTS = {
    "default": None,
    "-individual_convolution": _NO_YNN_CONVOLUTION,
    # The other libraries XLA:CPU can hand single convolutions to, in place of YNNPACK (flags
    # accepted by jaxlib 0.10.2; whether a build routes convolutions there shows in the timing).
    "onednn individual_convolution": dict(
        _NO_YNN_CONVOLUTION,
        xla_cpu_experimental_onednn_fusion_type="LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"),
    "xnnpack individual_convolution": dict(
        _NO_YNN_CONVOLUTION,
        xla_cpu_experimental_xnn_fusion_type="LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"),
}


def tiny_config(stem: str) -> ml_collections.ConfigDict:
    return models.deeplabv3(
        num_classes=NUM_CLASSES, backbone="resnet18", base_width=16, stem=stem, output_stride=8,
        multi_grid=(1, 1, 1), atrous_rates=(6, 12, 18), aspp_channels=64, dropout_rate=0.1,
        separable=False, dtype="float32",
    )


def make_train_step(model, tx, compiler_options, num_classes: int = NUM_CLASSES):
    """A jitted SGD step on pixel-wise cross-entropy (also used by benchmarks/bench_models.py)."""
    def train_step(params, batch_stats, opt_state, images, labels, dropout_key):
        def loss_fn(params):
            output, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, images, train=True,
                mutable=["batch_stats"], rngs={"dropout": dropout_key},
            )
            logits = output.logits
            # One-hot rather than take_along_axis: its scatter-add gradient makes XLA spend
            # seconds constant-folding at 128 px, which would pollute the compile times.
            one_hot = jax.nn.one_hot(labels, num_classes)
            loss = -jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    # No buffer donation: the variants are timed alternately from the same initial state.
    return jax.jit(train_step, compiler_options=compiler_options)


def bench(stem: str, size: int, batch: int, steps: int, repeats: int, variants: list[str]):
    """{variant: (best steps/s, compile seconds)} for one input size and stem.

    The variants are timed alternately (A B A B ...) and the best repeat is kept (as `timeit`
    advises): load from other processes on the machine can only slow a repeat down, so the best
    one is the closest to the step's own cost, and alternation exposes every variant alike.
    """
    model = create_model(tiny_config(stem))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, size=(batch, size, size)), jnp.int32)

    variables = jax.jit(lambda key: model.init(key, images[:1], train=False))(jax.random.key(0))
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd(0.01, momentum=0.9)
    opt_state = tx.init(params)
    key = jax.random.key(1)
    args = (params, batch_stats, opt_state, images, labels, key)

    compiled, compile_s = {}, {}
    for variant in variants:
        options = COMPILER_VARIANTS[variant]
        start = time.perf_counter()
        compiled[variant] = make_train_step(model, tx, options).lower(*args).compile()
        compile_s[variant] = time.perf_counter() - start
        jax.block_until_ready(compiled[variant](*args))  # warm-up

    rates = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant, step in compiled.items():
            state = (params, batch_stats, opt_state)
            start = time.perf_counter()
            for _ in range(steps):
                *state, loss = step(*state, images, labels, key)
            jax.block_until_ready(loss)
            rates[variant].append(steps / (time.perf_counter() - start))
            if not np.isfinite(float(loss)):
                raise RuntimeError(f"non-finite loss: stem={stem} size={size} {variant}")
    return {v: (max(rates[v]), compile_s[v]) for v in variants}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128", help="comma-separated input sizes")
    parser.add_argument("--stems", default="imagenet,conv3x3")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--variants", default="default,-individual_convolution",
                        help=f"comma-separated XLA CPU options, of {list(COMPILER_VARIANTS)}")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(COMPILER_VARIANTS))
    if unknown or "default" not in variants:
        parser.error(f"--variants {unknown or variants}: choose among {list(COMPILER_VARIANTS)}, "
                     "'default' included (the speed column is relative to it)")

    load = os.getloadavg()[0]
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs (1-min load {load:.1f} at start), "
          f"batch {args.batch}\n")
    print("| input | stem | XLA CPU option | steps/s | images/s | compile s | speed vs default |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for stem in args.stems.split(","):
            results = bench(stem, size, args.batch, args.steps, args.repeats, variants)
            baseline = results["default"][0]
            for variant, (rate, compile_s) in results.items():
                print(
                    f"| {size}x{size} | {stem} | {variant} | {rate:.2f} | {rate * args.batch:.0f} "
                    f"| {compile_s:.1f} | {rate / baseline:.2f}x |",
                    flush=True,
                )
    print(f"\n1-min load at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
