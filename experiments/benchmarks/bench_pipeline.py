"""Images/s the training input pipeline delivers, against images/s the train step consumes.

    python -m experiments.benchmarks.bench_pipeline                     # both cases, ~4 min on 2 cores
    python -m experiments.benchmarks.bench_pipeline --cases shapes --workers 1,2
    python -m experiments.benchmarks.bench_pipeline --cases large --large-step-batch 2

Two cases:
  shapes  configs/shapes.py as it is (the built-in dataset's 128 px images, crop 96, batch 16,
          scale 0.75-1.25, flip, no jitter); its DeepLabV3 (ResNet-18 width 16, output stride 8).
  large   configs/folder.py on a generated folder dataset of 512 x 1024 JPEGs (quality 90) with
          PNG masks of 19 classes: crop 512, batch 8, scale 0.5-2.0 (the default), flip, and photometric
          jitter on (brightness, contrast, saturation 0.4, hue 0.1); its DeepLabV3+ ResNet-50 at
          output stride 16.

Pipeline: images/s of `TrainLoader.iterate` (read, decode, augment, normalise, stack) for each
`num_workers` in --workers (`iterate` keeps at least one batch per worker in flight), after one
warm-up batch; the best of --repeats alternating repeats
(load from other processes can only slow a repeat down). For comparison the same loader is timed
at 1 worker with the step-by-step reference augmentation (`random_scale` -> `pad_to_size` ->
`random_crop` -> flip -> jitter, which resizes the whole image before cropping) in place of
`train_augment` (which resamples only the crop window).

Consumption: images/s of the jitted train step alone (forward, backward and the config's
optimizer on pixel-wise cross-entropy, `experiments.bench_model_step.make_train_step`) on one
pre-built batch already on the device, compilation excluded. The large model is slow on CPU, so
it gets --large-step-steps timed steps (1 by default) after one warm-up step.

The ratio is pipeline / consumption: above 1 the step, not the input, limits training, and >= 2
leaves the step room to get faster (or the input room to slow down under load). Both sides are
timed alone; in training they share the CPU, so on a CPU-only machine the real margin is smaller.
The generated images sit in the page cache after the first epoch, so file reading costs nothing.

Like `seg_jax.main`, this sets XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution
before JAX starts (unless XLA_FLAGS already sets that option), as training on CPU runs with it.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from unittest import mock

from seg_jax import xla_flags  # JAX-free

xla_flags.use_cpu_fast_conv()

import jax  # noqa: E402  (after XLA_FLAGS, which XLA reads once when JAX starts)
import numpy as np  # noqa: E402
import optax  # noqa: E402
from PIL import Image  # noqa: E402

from configs import folder as folder_config  # noqa: E402
from configs import shapes as shapes_config  # noqa: E402
from experiments.bench_model_step import make_train_step  # noqa: E402
from seg_jax.data import augment, datasets, pipeline  # noqa: E402
from seg_jax.models import create_model  # noqa: E402

LARGE_CLASSES = 19
LARGE_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)


def reference_train_augment(example, rng, data_config):
    """`train_augment` step by step, resizing the whole image before the crop (the reference)."""
    crop = data_config.crop_size
    fill = np.round(np.asarray(data_config.mean) * 255).astype(np.uint8)
    example = augment.random_scale(example, rng, data_config.min_scale, data_config.max_scale)
    example = augment.pad_to_size(example, crop, crop, image_fill=fill,
                                  ignore_label=data_config.ignore_label)
    example = augment.random_crop(example, rng, crop, crop)
    if data_config.hflip:
        example = augment.random_hflip(example, rng)
    strengths = augment.check_jitter(data_config)
    if any(strengths.values()):
        example = dict(example, image=augment.photometric_jitter(example["image"], rng, **strengths))
    return example


def write_folder_dataset(root: str, count: int, height: int, width: int) -> None:
    """`count` street-scene-sized examples: JPEG images and PNG masks of LARGE_CLASSES classes.

    Masks are blocky regions (an 8 x 16 grid of random classes, blurred by nearest upsampling of
    jittered cell sizes); images colour each class, add a gradient and noise, so the JPEGs are
    about as large (~200-300 KB) as real photographs of this size.
    """
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(LARGE_CLASSES, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        cells = rng.integers(0, LARGE_CLASSES, size=(8, 16))
        rows = np.minimum((yy + rng.integers(0, 24)) * 8 // height, 7)
        cols = np.minimum((xx + rng.integers(0, 48)) * 16 // width, 15)
        mask = cells[rows, cols].astype(np.uint8)
        image = palette[mask] + (xx[..., None] * 40 // width) + rng.normal(0, 12, (height, width, 3))
        image = np.clip(image, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, "images", f"{i:04d}.jpg"), quality=90)
        Image.fromarray(mask, mode="L").save(os.path.join(root, "masks", f"{i:04d}.png"))


def pipeline_rate(source, config, workers: int, batches: int) -> float:
    """Images/s of `TrainLoader.iterate` over `batches` batches, after one warm-up batch."""
    data = config.data.copy_and_resolve_references()
    data.num_workers = workers
    loader = pipeline.TrainLoader(source, data, global_batch_size=config.batch_size,
                                  seed=config.seed, num_classes=config.data.num_classes)
    stream = loader.iterate(0, batches + 1)
    next(stream)
    start = time.perf_counter()
    for _ in stream:
        pass
    return batches * config.batch_size / (time.perf_counter() - start)


def step_rate(config, source, batch_size: int, steps: int, repeats: int) -> tuple[float, float]:
    """(best images/s, compile seconds) of the jitted train step of `config`'s model."""
    model = create_model(config.model)
    loader = pipeline.TrainLoader(source, config.data, global_batch_size=batch_size,
                                  seed=config.seed, num_classes=config.data.num_classes)
    batch = loader.batch(0)
    images, labels = jax.device_put(batch["image"]), jax.device_put(batch["label"])
    variables = jax.jit(lambda key: model.init(key, images[:1], train=False))(jax.random.key(0))
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt = config.optimizer
    if opt.name == "adamw":
        tx = optax.adamw(opt.learning_rate, weight_decay=opt.weight_decay)
    else:
        tx = optax.sgd(opt.learning_rate, momentum=opt.momentum)
    opt_state = tx.init(params)
    key = jax.random.key(1)
    start = time.perf_counter()
    step = make_train_step(model, tx, None, config.data.num_classes).lower(
        params, batch_stats, opt_state, images, labels, key).compile()
    compile_s = time.perf_counter() - start
    state = (params, batch_stats, opt_state)
    *state, loss = step(*state, images, labels, key)  # warm-up
    jax.block_until_ready(loss)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            *state, loss = step(*state, images, labels, key)
        jax.block_until_ready(loss)
        best = max(best, steps * batch_size / (time.perf_counter() - start))
        if not np.isfinite(float(loss)):
            raise RuntimeError("non-finite loss in the timed train step")
    return best, compile_s


def run_case(name, config, source, args, step_batch, step_steps, step_repeats):
    workers = [int(w) for w in args.workers.split(",")]
    batches = args.batches if name == "shapes" else args.large_batches
    rates = {w: 0.0 for w in workers}
    reference = 0.0
    for _ in range(args.repeats):  # alternate the settings, keep each one's best repeat
        for w in workers:
            rates[w] = max(rates[w], pipeline_rate(source, config, w, batches))
        with mock.patch.object(augment, "train_augment", reference_train_augment):
            reference = max(reference, pipeline_rate(source, config, 1, batches))
    if args.skip_step:
        consumed, compile_s = float("nan"), float("nan")
    else:
        consumed, compile_s = step_rate(config, source, step_batch, step_steps, step_repeats)
    desc = (f"{name}: crop {config.data.crop_size}, batch {config.batch_size}, "
            f"{config.model.name} {config.model.backbone}")
    rows = [(desc, "train_augment", w, rates[w]) for w in workers]
    rows.append((desc, "step-by-step reference", 1, reference))
    for desc_, aug, w, rate in rows:
        print(f"| {desc_} | {aug} | {w} | {rate:.0f} | {consumed:.2f} | {rate / consumed:.1f}x |",
              flush=True)
    return compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="shapes,large")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated num_workers")
    parser.add_argument("--batches", type=int, default=40, help="timed batches (shapes)")
    parser.add_argument("--large-batches", type=int, default=6, help="timed batches (large)")
    parser.add_argument("--repeats", type=int, default=3, help="pipeline repeats (best kept)")
    parser.add_argument("--large-images", type=int, default=32)
    parser.add_argument("--large-size", default="512,1024", help="H,W of the generated images")
    parser.add_argument("--large-root", default="",
                        help="folder for the generated dataset (default: a temporary one)")
    parser.add_argument("--step-steps", type=int, default=5, help="timed steps per repeat (shapes)")
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--large-step-steps", type=int, default=1)
    parser.add_argument("--large-step-batch", type=int, default=0,
                        help="batch of the large train step (0: the config's); images/s per "
                             "image barely depends on it on CPU, and a smaller one saves memory")
    parser.add_argument("--skip-step", action="store_true", help="time the pipeline only")
    args = parser.parse_args()
    cases = args.cases.split(",")

    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"numpy {np.__version__}, Pillow {Image.__version__}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at start\n")
    print("| case | augmentation | num_workers | pipeline images/s | train step images/s "
          "| pipeline / step |")
    print("|---|---|---|---|---|---|")
    notes = []
    if "shapes" in cases:
        config = shapes_config.get_config()
        source, _ = datasets.get_dataset(config.data, config.data.train_split)
        compile_s = run_case("shapes", config, source, args, config.batch_size, args.step_steps,
                             args.step_repeats)
        notes.append(f"shapes train step: batch {config.batch_size}, compile {compile_s:.0f} s")
    if "large" in cases:
        root = args.large_root or tempfile.mkdtemp(prefix="bench_pipeline_")
        try:
            height, width = (int(v) for v in args.large_size.split(","))
            if not os.path.isdir(os.path.join(root, "images")):
                write_folder_dataset(root, args.large_images, height, width)
            config = folder_config.get_config()
            config.data.root = root
            config.data.num_classes = LARGE_CLASSES
            config.data.jitter.update(LARGE_JITTER)
            source, _ = datasets.get_dataset(config.data, config.data.train_split)
            step_batch = args.large_step_batch or config.batch_size
            compile_s = run_case("large", config, source, args, step_batch,
                                 args.large_step_steps, 1)
            notes.append(f"large: {len(source)} images of {height}x{width}; train step batch "
                         f"{step_batch}, {args.large_step_steps} timed step(s), compile "
                         f"{compile_s:.0f} s")
        finally:
            if not args.large_root:
                shutil.rmtree(root, ignore_errors=True)
    print()
    for note in notes:
        print(note)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end")


if __name__ == "__main__":
    sys.exit(main())
