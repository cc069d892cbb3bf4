"""What whole-image inference costs: one pass, sliding windows, multi-scale + flip.

    python -m experiments.benchmarks.bench_inference                  # 512 x 1024, ResNet-50 V3+
    python -m experiments.benchmarks.bench_inference --height 256 --width 512 --backbone resnet18

Times `seg_jax.inference.predict_logits` (jitted, batch 1, after a compile run; median of
--repeats) for the settings of `config.evaluation` that the configs use: 'whole' (one pass),
'sliding' with windows of --window px and a third of overlap (Cityscapes / ADE20K configs), and
test-time augmentation (scales 0.75 / 1.0 / 1.25 with flips, 6 passes) over each. The reference
is the whole-image pass of the same run: the table gives each setting's time and its ratio to it,
beside the number of model evaluations and the pixels they cover relative to the image.

Model: DeepLabV3+ (output stride 16, 19 classes, the config defaults), float32, random weights
(timing does not depend on them). Like `seg_jax.main`, this sets
XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution before JAX starts.
"""

import argparse

from seg_jax import xla_flags  # JAX-free

xla_flags.use_cpu_fast_conv()

import jax  # noqa: E402  (after XLA_FLAGS, which XLA reads once when JAX starts)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import cityscapes  # noqa: E402
from experiments.benchmarks.timing import median_ms  # noqa: E402
from seg_jax import inference  # noqa: E402
from seg_jax.models import create_model  # noqa: E402

TTA_SCALES = (0.75, 1.0, 1.25)


def _settings(window):
    sliding = dict(mode="sliding", window=(window, window), window_overlap=1.0 / 3.0)
    return {
        "whole": inference.InferenceOptions(),
        f"sliding {window} px, overlap 1/3": inference.InferenceOptions(**sliding),
        "whole + TTA (3 scales x flip)": inference.InferenceOptions(scales=TTA_SCALES, flip=True),
        "sliding + TTA": inference.InferenceOptions(**sliding, scales=TTA_SCALES, flip=True),
    }


def _passes(options, height, width):
    """(model evaluations, pixels they cover / image pixels) of one prediction."""
    count, pixels = 0, 0
    for scale in options.scales:
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        flips = 2 if options.flip else 1
        if options.mode == "sliding":
            wh, ww = options.window
            windows = (len(inference.window_starts(max(h, wh), wh, options.window_overlap))
                       * len(inference.window_starts(max(w, ww), ww, options.window_overlap)))
            count += flips * windows
            pixels += flips * windows * wh * ww
        else:
            count += flips
            pixels += flips * h * w
    return count, pixels / (height * width)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = cityscapes.get_config()
    config.model.backbone = args.backbone
    model = create_model(config.model)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, args.height, args.width, 3)),
                         jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), images[:, :64, :64], train=False)

    def logits_fn(x):
        return model.apply(variables, x, train=False).logits

    print(f"DeepLabV3+ {args.backbone}, one {args.height} x {args.width} image, "
          f"{jax.devices()[0].platform}, jax {jax.__version__}\n")
    rows, reference = [], None
    for name, options in _settings(args.window).items():
        predict = jax.jit(lambda x, o=options: inference.predict_logits(logits_fn, x, o)[0])
        ms = median_ms(lambda: jax.block_until_ready(predict(images)), args.repeats)
        reference = reference or ms
        count, coverage = _passes(options, args.height, args.width)
        rows.append((name, count, coverage, ms, ms / reference))
        print(f"  {name}: {ms:.0f} ms", flush=True)
    print("\n| setting | model passes | pixels / image pixels | ms / image | x whole |")
    print("|---|---:|---:|---:|---:|")
    for name, count, coverage, ms, ratio in rows:
        print(f"| {name} | {count} | {coverage:.2f} | {ms:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
