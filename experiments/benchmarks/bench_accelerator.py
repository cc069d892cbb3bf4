"""Train and eval speed on one accelerator, and the share of its peak the train step reaches.

    python -m experiments.benchmarks.bench_accelerator                  # GPU: ~5 min
    python -m experiments.benchmarks.bench_accelerator --peak_tflops 989 --batch 16
    python -m experiments.benchmarks.bench_accelerator --smoke          # any device, tiny sizes

For DeepLabV3-ResNet-50 and DeepLabV3+-ResNet-50 (output stride 16, rates 6/12/18, 19 classes,
the papers' widths) at 512 x 512 and 769 x 769 (Cityscapes' crop), in float32 and bfloat16
(`model.dtype`: activations and convolutions in bfloat16, parameters, BatchNorm statistics and
the loss in float32), on the first device: train images/s and step time (the runner's step:
`seg_jax.steps.make_train_step` with SGD + momentum on cross-entropy, donated state), eval
images/s (forward + argmax), peak device memory (`memory_stats()['peak_bytes_in_use']`, where
the device reports it; it is a high-water mark over the whole process, so configurations run
from small to large), and model FLOPs utilisation:

    MFU = XLA's cost-analysis FLOPs of one train step x steps/s / the device's peak FLOP/s.

The peak is the dense (no sparsity) tensor-core figure of the device's datasheet for the compute
dtype (float32 convolutions on NVIDIA GPUs run in TF32 under XLA's default precision, so they
are measured against the TF32 peak), taken from PEAK_TFLOPS for the device kinds listed there, or
given with --peak_tflops (then used for both dtypes, as printed). A device not listed and no flag:
MFU is left out rather than guessed.

A configuration that does not fit in memory is reported as such and the benchmark goes on.
Timings: --steps calls per repeat after a warm-up, median of --repeats repeats; compilation
excluded (its time is printed).
"""

import argparse
import os
import time

from seg_jax import xla_flags  # JAX-free

xla_flags.use_cpu_fast_conv()  # on CPU (the smoke run), the runner's flags; ignored elsewhere

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import models as model_configs  # noqa: E402
from experiments.benchmarks import step_programs  # noqa: E402
from seg_jax.models import create_model  # noqa: E402

NUM_CLASSES = 19
LEARNING_RATE = 0.01

# Dense peak TFLOP/s by device kind substring: {compute dtype: peak}. NVIDIA datasheets, SXM
# parts, without sparsity; float32 is the TF32 tensor-core peak.
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float32": 494.0},
    "H100": {"bfloat16": 989.0, "float32": 494.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}

MODELS = {
    "deeplabv3_r50": lambda dtype: model_configs.deeplabv3(
        num_classes=NUM_CLASSES, backbone="resnet50", output_stride=16, dtype=dtype),
    "deeplabv3plus_r50": lambda dtype: model_configs.deeplabv3plus(
        num_classes=NUM_CLASSES, backbone="resnet50", output_stride=16, dtype=dtype),
}


def peak_flops(device, dtype: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for kind, peaks in PEAK_TFLOPS.items():
        if kind.lower() in device.device_kind.lower():
            return peaks[dtype] * 1e12
    return None


def peak_memory_gib(device) -> float | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**30


def median_seconds(run, steps: int, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            run()
        times.append((time.perf_counter() - start) / steps)
    return float(np.median(times))


def bench_one(name: str, size: int, dtype: str, batch: int, args, device) -> str:
    fields = MODELS[name](dtype)
    if args.smoke:
        fields.update(base_width=8, aspp_channels=16)
        if "decoder_channels" in fields:
            fields.update(decoder_channels=16, low_level_channels=8)
    model = create_model(fields)
    rng = np.random.default_rng(0)
    with jax.default_device(device):
        images = jax.device_put(rng.normal(size=(batch, size, size, 3)).astype(np.float32),
                                device)
        labels = jax.device_put(rng.integers(0, NUM_CLASSES, size=(batch, size, size)).astype(
            np.int32), device)
        variables = jax.jit(lambda key: model.init(key, images[:1], train=False))(
            jax.random.key(0, impl="rbg"))
        start = time.perf_counter()
        try:
            programs = step_programs.compile_programs(
                model, variables, images, labels, optax.sgd(LEARNING_RATE, momentum=0.9),
                LEARNING_RATE)
            compile_s = time.perf_counter() - start
            train_s = median_seconds(programs.train, args.steps, args.repeats)
            eval_s = median_seconds(programs.inference, args.steps, args.repeats)
        except Exception as error:  # out of memory at this batch: report it, go on
            if "RESOURCE_EXHAUSTED" not in str(error) and "out of memory" not in str(error):
                raise
            return f"| {name} | {size} | {dtype} | {batch} | does not fit: {str(error)[:80]} |"
    peak = peak_flops(device, dtype, args.peak_tflops)
    achieved = programs.train_flops / train_s
    mfu = f"{100 * achieved / peak:.1f}%" if peak else "- (peak unknown)"
    memory = peak_memory_gib(device)
    return (f"| {name} | {size} | {dtype} | {batch} | {batch / train_s:.1f} | "
            f"{1e3 * train_s:.1f} | {batch / eval_s:.1f} | "
            f"{'-' if memory is None else f'{memory:.1f}'} | "
            f"{programs.train_flops / batch / 1e9:.1f} | {achieved / 1e12:.2f} | {mfu} | "
            f"{compile_s:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", default="512,769", help="comma-separated square input sizes")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=16, help="images per step at 512 px; "
                        "scaled by (512 / size)^2 for other sizes (at least 1)")
    parser.add_argument("--steps", type=int, default=10, help="calls per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the device's peak TFLOP/s (default: PEAK_TFLOPS by device kind)")
    parser.add_argument("--smoke", action="store_true",
                        help="narrow models, 64 px, 2 images, 1 step: checks the script anywhere")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.smoke:
        sizes, args.batch, args.steps, args.repeats = [64], 2, 1, 1

    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}), "
          f"{jax.device_count()} device(s), first one used; host {os.cpu_count()} CPUs",
          flush=True)
    print("\n| model | size | dtype | batch | train images/s | train step ms | eval images/s "
          "| peak memory GiB | train GFLOPs/image | achieved TFLOP/s | MFU | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for size in sizes:
        batch = max(1, round(args.batch * (512 / size) ** 2)) if not args.smoke else args.batch
        for name in args.models:
            for dtype in args.dtypes.split(","):
                print(bench_one(name, size, dtype, batch, args, device), flush=True)


if __name__ == "__main__":
    main()
