"""The gridding study's direct measure of the artifact, and the model pass that feeds it.

Gridding. A stack of 3x3 convolutions whose dilations all share a factor g > 1 only ever combines
inputs on a lattice of period g: the outputs at the g x g residues (i mod g, j mod g) are computed
from g^2 disjoint sets of inputs, so nothing ties neighbouring outputs together and their values
can jump from one cell to the next in a pattern that repeats every g cells. A map that repeats
with period g in both axes has all its Fourier energy at the frequencies (a/g, b/g) cycles per
cell, a, b in 0..g-1, so the artifact is measured there.

Definitions, for an H x W map (H and W multiples of the period p):
- Its power spectrum is |FFT2(x - mean(x))|^2; `power_spectrum` sums it over any number of maps
  (images and class channels), so that each map weighs by its own variance.
- The lattice bins are the (u, v) with u a multiple of H/p and v a multiple of W/p, except DC
  (u = v = 0): the p^2 - 1 frequencies (a/p, b/p). For p = 2 they are the three Nyquist bins
  (H/2, 0), (0, W/2) and (H/2, W/2): the row, column and checkerboard alternations.
- `lattice_energy_fraction`: the lattice bins' share of all the non-DC energy. A p-periodic map
  scores 1; white noise scores (p^2 - 1) / (HW - 1) on average; a smooth map scores near 0.
- `lattice_peak_share`: L / (L + N) summed over the lattice bins, L a bin's energy and N what
  its neighbours predict for it: the larger of the mean of its two neighbours along the rows'
  axis, (u - 1, v) and (u + 1, v), and the mean of its two along the columns' axis. It asks
  whether the lattice frequencies stand out of the spectrum around them: 1 for a p-periodic map,
  about 0.5 for white noise (a flat spectrum), below 0.5 for a smooth map (whose spectrum falls
  towards the Nyquist bins). Content with sharp edges puts energy at every frequency, the lattice
  bins included; the peak share discounts that broadband part, which the energy fraction does
  not. Why the larger of two axis-wise means rather than all eight surrounding bins: edges
  aligned with an axis (a horizon, the sides of squares and bars) make ridges of energy along
  the spectrum's axes, on which the bins (H/2, 0) and (0, W/2) lie; against neighbours off the
  ridge they would look like peaks (the `shapes` ground truth scored 0.73 that way), while the
  neighbours along the ridge predict them (0.50 on the same truth).

The study computes both on the model's class probabilities at the context module's own grid
(output stride 8, before the fixed bilinear upsampling, which can only blur a lattice), for the
period-2 lattice of a stack of rate-2 convolutions, and the same on the ground truth's one-hot maps
averaged over the same 8 x 8 cells, the value of an artifact-free prediction as sharp as the truth.

Nothing here imports JAX at module level: the study module imports this file while it is being
read as a config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------
# The measure


def power_spectrum(maps: np.ndarray) -> np.ndarray:
    """[H, W]: |FFT2|^2 of each map of `maps` ([..., H, W]) minus its own mean, summed over maps."""
    maps = np.asarray(maps, np.float64)
    if maps.ndim < 2:
        raise ValueError(f"maps of shape {maps.shape}: expected [..., H, W].")
    centred = maps - maps.mean(axis=(-2, -1), keepdims=True)
    energy = np.abs(np.fft.fft2(centred)) ** 2
    return energy.reshape((-1,) + energy.shape[-2:]).sum(axis=0)


def lattice_bins(height: int, width: int, period: int) -> np.ndarray:
    """bool [H, W]: the FFT bins at the frequencies (a/period, b/period), DC excluded."""
    if period < 2 or height % period or width % period:
        raise ValueError(f"A {height} x {width} map has no lattice of period {period}: the "
                         f"period must be 2 or more and divide both sides.")
    rows = np.arange(height) % (height // period) == 0
    cols = np.arange(width) % (width // period) == 0
    mask = rows[:, None] & cols[None, :]
    mask[0, 0] = False
    return mask


def lattice_neighbours(height: int, width: int, period: int) -> list[tuple]:
    """Per lattice bin (u, v): (the bin, its two neighbours along the first axis, (u -+ 1, v), and
    its two along the second, (u, v -+ 1)), cyclically. The period must leave at least two bins
    between lattice lines (H / period >= 2 and W / period >= 2), so that no neighbour is a
    lattice bin or DC."""
    lattice = lattice_bins(height, width, period)
    if height // period < 2 or width // period < 2:
        raise ValueError(f"A {height} x {width} map is too small for neighbours of a period-"
                         f"{period} lattice: each side must span at least two periods' bins.")
    return [((u, v), (((u - 1) % height, v), ((u + 1) % height, v)),
             ((u, (v - 1) % width), (u, (v + 1) % width)))
            for u, v in zip(*np.nonzero(lattice))]


def lattice_energy_fraction(spectrum: np.ndarray, period: int) -> float:
    """The lattice bins' share of the spectrum's non-DC energy; nan for a spectrum without any
    (constant maps)."""
    spectrum = np.asarray(spectrum, np.float64)
    total = spectrum.sum() - spectrum[0, 0]
    if total <= 0:
        return float("nan")
    return float(spectrum[lattice_bins(*spectrum.shape, period)].sum() / total)


def lattice_peak_share(spectrum: np.ndarray, period: int) -> float:
    """sum(L) / (sum(L) + sum(N)) over the lattice bins: L a bin's energy, N its neighbours'
    estimate of it, the larger of the means of its two neighbours along each axis; nan when both
    sums are zero."""
    spectrum = np.asarray(spectrum, np.float64)
    on = near = 0.0
    for centre, along_first, along_second in lattice_neighbours(*spectrum.shape, period):
        on += spectrum[centre]
        near += max(np.mean([spectrum[b] for b in along_first]),
                    np.mean([spectrum[b] for b in along_second]))
    if on + near <= 0:
        return float("nan")
    return float(on / (on + near))


# ----------------------------------------------------------------------------------------------
# Label maps


def block_mean(maps: np.ndarray, cell: int) -> np.ndarray:
    """[..., H / cell, W / cell]: the mean of each cell x cell block of `maps` ([..., H, W])."""
    maps = np.asarray(maps, np.float64)
    *lead, height, width = maps.shape
    if height % cell or width % cell:
        raise ValueError(f"{height} x {width} maps do not split into {cell} x {cell} cells.")
    blocks = maps.reshape(*lead, height // cell, cell, width // cell, cell)
    return blocks.mean(axis=(-3, -1))


def one_hot_maps(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float [N, C, H, W] from labels [N, H, W]; a label outside 0..C-1 (void) is all zeros."""
    labels = np.asarray(labels)
    return (labels[:, None] == np.arange(num_classes)[None, :, None, None]).astype(np.float64)


def foreground_counts(pred: np.ndarray, label: np.ndarray, foreground: Sequence[int],
                      ignore_label: int) -> np.ndarray:
    """[intersection, union] of the pixels of any `foreground` class, predicted vs true, over the
    labelled pixels: the foreground IoU is their ratio."""
    valid = label != ignore_label
    predicted = np.isin(pred, foreground) & valid
    true = np.isin(label, foreground) & valid
    return np.array([(predicted & true).sum(), (predicted | true).sum()], np.int64)


# ----------------------------------------------------------------------------------------------
# One trained run


@dataclasses.dataclass
class Accumulator:
    """Sums over a split's batches: the probabilities' power spectrum and the foreground counts."""
    spectrum: np.ndarray | None = None
    foreground: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2, np.int64))

    def add(self, probs: np.ndarray, pred: np.ndarray, label: np.ndarray,
            foreground: Sequence[int], ignore_label: int) -> None:
        """probs [N, h, w, C] at the module's grid; pred and label [N, H, W]."""
        spectrum = power_spectrum(np.moveaxis(probs, -1, 1))
        self.spectrum = spectrum if self.spectrum is None else self.spectrum + spectrum
        self.foreground += foreground_counts(pred, label, foreground, ignore_label)


def measures(acc: Accumulator, period: int) -> dict:
    intersection, union = acc.foreground
    return {"lattice_fraction": lattice_energy_fraction(acc.spectrum, period),
            "peak_share": lattice_peak_share(acc.spectrum, period),
            "foreground_iou": float(intersection / union) if union else float("nan")}


def _forward(apply_fn):
    """jit((variables, images) -> (softmax of the context module's output [N, h, w, K], the MAP
    classes of the model's upsampled logits [N, H, W]))."""
    import jax
    import jax.numpy as jnp

    def forward(variables, images):
        output, state = apply_fn(
            variables, images, train=False, mutable=["intermediates"],
            capture_intermediates=lambda module, method: module.name == "context")
        scores = state["intermediates"]["context"]["__call__"][0]
        return jax.nn.softmax(scores.astype(jnp.float32), axis=-1), jnp.argmax(output.logits, -1)

    return jax.jit(forward)


def analyse_checkpoint(config, workdir: str, images: np.ndarray, labels: np.ndarray, *,
                       foreground: Sequence[int], ignore_label: int, period: int,
                       example_index: int, example_classes: Sequence[int],
                       batch_size: int = 8) -> dict:
    """The artifact measures of the run in `workdir` (its newest checkpoint) on `images`
    (normalised float32 [N, H, W, 3], all one size) with `labels` [N, H, W].

    Returns {'step', 'lattice_fraction', 'peak_share', 'foreground_iou', 'example'}: 'example' is
    the summed probability of `example_classes` at the module's grid for image `example_index`,
    as nested lists. The last batch is padded with copies of the first image (one compiled
    program per run), whose outputs are dropped.
    """
    from seg_jax import predict

    state, step = predict.restore_for_inference(config, workdir)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    forward = _forward(state.apply_fn)
    acc, example = Accumulator(), None
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        real = len(batch)
        if real < batch_size:
            batch = np.concatenate([batch, np.repeat(images[:1], batch_size - real, axis=0)])
        probs, pred = (np.asarray(x)[:real] for x in forward(variables, batch))
        acc.add(probs, pred, labels[start:start + real], foreground, ignore_label)
        if start <= example_index < start + real:
            example = probs[example_index - start][..., list(example_classes)].sum(-1)
    return {"step": int(step), **measures(acc, period),
            "example": None if example is None else example.tolist()}


def truth_measures(labels: np.ndarray, num_classes: int, *, cell: int, period: int) -> dict:
    """The measures of the ground truth: its one-hot maps averaged over cell x cell blocks (the
    module's grid), i.e. what an artifact-free prediction as sharp as the truth would score."""
    maps = block_mean(one_hot_maps(labels, num_classes), cell)
    spectrum = power_spectrum(maps)
    return {"lattice_fraction": lattice_energy_fraction(spectrum, period),
            "peak_share": lattice_peak_share(spectrum, period)}
