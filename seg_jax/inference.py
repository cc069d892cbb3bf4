"""Whole-image prediction: one pass or sliding windows, optional multi-scale + flip averaging.

Training sees fixed crops; evaluation and `--mode=predict` see whole images of any size. Every
function here is traced inside a jitted step on a padded batch `[N, H, W, 3]` (see
`seg_jax.data.pipeline.eval_batches`), and takes `logits_fn(images) -> logits [n, h, w, C]` (the
model applied with fixed variables), so it works for any model that returns full-size logits;
`predict_outputs` does the same for a model's whole `ModelOutput` (a panoptic model's centre and
offset heads included).

Conventions, where published code differs:

* Sliding windows average *logits* over the windows that cover a pixel (mmsegmentation's
  `slide_inference`); windows are placed at a regular stride and the last one is moved back to
  end at the image edge (never past it), so every window lies inside the image. An image
  smaller than the window is padded up to it (with zeros: the normalised mean colour) and the
  logits are cropped back.
* Test-time augmentation averages softmax *probabilities* over the scales and flips (as
  mmsegmentation's `aug_test`); logits of each pass are resized back to the input size
  (bilinear, no antialiasing) before the softmax. The returned logits are then `log(mean probs)`,
  a valid logit vector (softmax gives back the averaged probabilities) for calibration.
"""

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seg_jax.models.layers import resize_bilinear
from seg_jax.models.outputs import ModelOutput

MODES = ("whole", "sliding")


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How to predict a whole image (static: each setting compiles its own step)."""

    mode: str = "whole"
    window: tuple[int, int] | None = None  # (H, W) of sliding windows
    window_overlap: float = 1.0 / 3.0
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"config.evaluation.mode={self.mode!r}; choose one of {MODES}.")
        if self.mode == "sliding":
            if self.window is None or len(self.window) != 2 or min(self.window) < 1:
                raise ValueError(f"Sliding windows need a (height, width) window of positive "
                                 f"sizes; got config.evaluation.window={self.window!r}.")
            if not 0.0 <= self.window_overlap < 1.0:
                raise ValueError(f"config.evaluation.window_overlap={self.window_overlap} must be "
                                 "in [0, 1) (0: windows touch, 0.5: each pixel in two windows).")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"config.evaluation.scales={self.scales!r} must be positive numbers, "
                             "e.g. (0.75, 1.0, 1.25).")

    @property
    def is_single_pass(self) -> bool:
        return tuple(self.scales) == (1.0,) and not self.flip

    @classmethod
    def from_config(cls, config) -> "InferenceOptions":
        """From `config.evaluation`; an empty window means the training crop."""
        evaluation = config.evaluation
        window = tuple(evaluation.window) or (config.data.crop_size, config.data.crop_size)
        return cls(mode=evaluation.mode, window=tuple(int(w) for w in window),
                   window_overlap=float(evaluation.window_overlap),
                   scales=tuple(float(s) for s in evaluation.scales), flip=bool(evaluation.flip))


def window_starts(size: int, window: int, overlap: float) -> tuple[int, ...]:
    """Start offsets of windows of `window` px covering `size` px with the given overlap.

    The stride is `max(1, round(window * (1 - overlap)))`; the last window ends at `size`.
    `size <= window` gives one window at 0 (the caller pads the image up to the window).
    """
    if size <= window:
        return (0,)
    stride = max(1, round(window * (1.0 - overlap)))
    count = math.ceil((size - window) / stride) + 1
    return tuple(min(i * stride, size - window) for i in range(count))


def sliding_window_logits(logits_fn: Callable, images: jax.Array, window: Sequence[int],
                          overlap: float) -> jax.Array:
    """Logits `[N, H, W, C]` averaged over overlapping `window`-sized crops of `images`.

    One compiled window pass is scanned over the window positions, so the compile time does not
    grow with their number; the division by each pixel's window count uses a static count map.
    """
    n, height, width, _ = images.shape
    win_h, win_w = (int(w) for w in window)
    # An image smaller than the window is padded up to it, so the model always sees windows.
    pad_h, pad_w = max(0, win_h - height), max(0, win_w - width)
    if pad_h or pad_w:
        images = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    full_h, full_w = height + pad_h, width + pad_w
    starts = np.array([(t, l) for t in window_starts(full_h, win_h, overlap)
                       for l in window_starts(full_w, win_w, overlap)], np.int32)
    counts = np.zeros((full_h, full_w), np.float32)
    for top, left in starts:
        counts[top:top + win_h, left:left + win_w] += 1
    num_classes = jax.eval_shape(
        logits_fn, jax.ShapeDtypeStruct((n, win_h, win_w, 3), images.dtype)).shape[-1]

    def add_window(total, start):
        corner = (0, start[0], start[1], 0)
        crop = jax.lax.dynamic_slice(images, corner, (n, win_h, win_w, 3))
        logits = logits_fn(crop).astype(jnp.float32)
        current = jax.lax.dynamic_slice(total, corner, (n, win_h, win_w, num_classes))
        return jax.lax.dynamic_update_slice(total, current + logits, corner), None

    total = jnp.zeros((n, full_h, full_w, num_classes), jnp.float32)
    total, _ = jax.lax.scan(add_window, total, jnp.asarray(starts))
    logits = total / jnp.asarray(counts)[None, :, :, None]
    return logits[:, :height, :width]


def _single_pass(logits_fn, images, options: InferenceOptions):
    if options.mode == "sliding":
        return sliding_window_logits(logits_fn, images, options.window, options.window_overlap)
    return logits_fn(images).astype(jnp.float32)


def predict_logits(logits_fn: Callable, images: jax.Array,
                   options: InferenceOptions = InferenceOptions()) -> tuple[jax.Array, jax.Array]:
    """`(probs, logits)`, both `[N, H, W, C]` float32, for a batch of whole (padded) images.

    Without test-time augmentation, `logits` are the model's (or the sliding-window average) and
    `probs` their softmax. With scales other than (1.0,) or flip, `probs` is the mean of the
    passes' softmax probabilities and `logits = log(probs)`.
    """
    if options.is_single_pass:
        logits = _single_pass(logits_fn, images, options)
        return jax.nn.softmax(logits, axis=-1), logits
    n, height, width, _ = images.shape
    probs = 0.0
    passes = 0
    for scale in options.scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else resize_bilinear(images, *size)
        for flipped in ((False, True) if options.flip else (False,)):
            inputs = scaled[:, :, ::-1] if flipped else scaled
            logits = _single_pass(logits_fn, inputs, options)
            if flipped:
                logits = logits[:, :, ::-1]
            if size != (height, width):
                logits = resize_bilinear(logits, height, width)
            probs = probs + jax.nn.softmax(logits, axis=-1)
            passes += 1
    probs = probs / passes
    # Probabilities can underflow to 0 in float32; the floor keeps log finite (softmax of it
    # still gives back probs to float precision).
    return probs, jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))


def predict_outputs(model_fn: Callable, images: jax.Array,
                    options: InferenceOptions = InferenceOptions()) -> tuple[jax.Array, ModelOutput]:
    """`(probs, outputs)` of a model for a batch of whole (padded) images.

    `model_fn(images) -> ModelOutput` is the model applied with fixed variables. The semantic
    `probs` and `outputs.logits` follow `options` exactly as `predict_logits` (sliding windows,
    scales, flips). A panoptic model's centre heatmap and offsets are the one place where the
    options do not apply: they come from one whole-image pass at scale 1, because averaging
    offsets over flips and scales would need each pass's vectors mirrored and rescaled, and
    centre peaks of different windows do not average into peaks. Without test-time augmentation in
    'whole' mode the model runs once for every head.
    """
    if options.mode == "whole" and options.is_single_pass:
        outputs = model_fn(images)
        logits = outputs.logits.astype(jnp.float32)
        return jax.nn.softmax(logits, axis=-1), outputs.replace(logits=logits)
    probs, logits = predict_logits(lambda x: model_fn(x).logits, images, options)
    if not jax.eval_shape(model_fn, images).is_panoptic:
        return probs, ModelOutput(logits=logits)
    return probs, model_fn(images).replace(logits=logits, aux_logits=None)


def valid_region(sizes: jax.Array, height: int, width: int) -> jax.Array:
    """bool `[N, height, width]`: True inside each image's original `sizes[i] = (h, w)`."""
    rows = jnp.arange(height)[None, :, None] < sizes[:, 0, None, None]
    cols = jnp.arange(width)[None, None, :] < sizes[:, 1, None, None]
    return rows & cols
