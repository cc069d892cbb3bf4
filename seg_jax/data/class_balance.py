"""Class balance computed from the training split: loss class weights and rare-class sampling.

Everything here starts from one table, the per-example pixel count of each class in the raw
(un-augmented) labels of the training split, void excluded: `class_pixel_counts(source, C,
ignore_label) -> int64 [num_examples, C]`. A run caches it in its workdir
(`load_or_compute_counts`, `<workdir>/class_counts.npz`), so a resumed run does not read the split
again. From it:

- `class_weights(counts, scheme)`: per-class loss weights, for `config.loss.<term>.class_weights`
  set to a scheme name (`SCHEMES`):
  * 'median_frequency' (Eigen & Fergus 2015, "Predicting depth, surface normals and semantic
    labels with a common multi-scale convolutional architecture"; also SegNet's): freq(c) = the
    pixels of c / the (non-void) pixels of the images in which c appears; w_c = median_c'
    freq(c') / freq(c). The median class weighs 1, rarer classes more.
  * 'inverse_sqrt_frequency': f_c = the pixels of c / all non-void pixels; w_c proportional to
    1 / sqrt(f_c), scaled so that the pixel-weighted mean sum_c f_c w_c is 1 (an average pixel
    keeps weight 1, so the loss keeps its scale).
  A class with no pixel in the split gets weight 0 (no training pixel carries it, so the loss
  never uses the weight) and is left out of the median; a warning names it.

- `RareClassSampler(counts, temperature, min_pixels)`: DAFormer's rare-class sampling (Hoyer et
  al., CVPR 2022). f_c = the pixel frequency of class c over the split; a class is drawn with
  P(c) = exp((1 - f_c) / T) / sum_c' exp((1 - f_c') / T) over the classes that have at least one
  image with >= min_pixels pixels of them (the others: P = 0), then an image uniformly among those
  with >= min_pixels pixels of c. Small T favours rare classes strongly (DAFormer: T = 0.01); as
  T grows the classes become equally likely. (DAFormer keeps images with strictly more than
  min_pixels; here it is at least min_pixels, so min_pixels=1 means "contains the class".)

- `format_summary`: one log line per class (pixel share, images, weight, sampling probability).
"""

import dataclasses
import json
import os
import time

import numpy as np
from absl import logging

# The class weight schemes `class_weights` computes (the values config.loss.<term>.class_weights
# may name instead of a tuple of floats).
SCHEMES = ("median_frequency", "inverse_sqrt_frequency")
# The cache of `load_or_compute_counts` in a run's workdir.
COUNTS_FILE = "class_counts.npz"
# How often `class_pixel_counts` reports its progress on a long split.
_PROGRESS_SECONDS = 10.0


def check_scheme(scheme, where: str = "class_weights") -> str:
    """Returns `scheme` if it is one of `SCHEMES`, else raises ValueError naming it and them."""
    if scheme not in SCHEMES:
        raise ValueError(f"{where}={scheme!r} is not a class weight scheme; choose one of "
                         f"{list(SCHEMES)}, or give a tuple of one float per class.")
    return scheme


def check_rare_class_sampling(data_config) -> None:
    """Raises ValueError for config.data.rare_class_sampling settings that cannot run (one
    message naming each bad setting, its value and the fix)."""
    settings = data_config.get("rare_class_sampling", None)
    if settings is None:
        return
    key = "config.data.rare_class_sampling"
    temperature, min_pixels = settings.temperature, settings.min_pixels
    problems = []
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        problems.append(f"{key}.temperature={temperature!r} must be >= 0: 0 turns rare-class "
                        f"sampling off, a positive value turns it on (DAFormer uses 0.01).")
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        problems.append(f"{key}.min_pixels={min_pixels!r} must be an integer >= 1: the pixels "
                        f"of a class an image needs to be drawn for it (1: any pixel).")
    if problems:
        raise ValueError(" ".join(problems))


def _class_name(c: int, class_names) -> str:
    return f"{c} ({class_names[c]})" if class_names is not None else str(c)


def class_pixel_counts(source, num_classes: int, ignore_label: int) -> np.ndarray:
    """int64 [len(source), num_classes]: the pixels of each class in `source[i]['label']`.

    The labels are read as stored (no augmentation); void (`ignore_label`) pixels are not
    counted. A label outside [0, num_classes) that is not void raises ValueError (as in the
    training pipeline). Long splits report their progress in the log about every 10 s.
    """
    from seg_jax.data import pipeline  # pipeline imports this module

    num_examples = len(source)
    counts = np.zeros((num_examples, num_classes), np.int64)
    start = last = time.perf_counter()
    for index in range(num_examples):
        label = np.asarray(source[index]["label"])
        pipeline.check_labels(label, num_classes, ignore_label,
                              where=f"training example {index}")
        valid = label[label != ignore_label].astype(np.int64)
        counts[index] = np.bincount(valid, minlength=num_classes)
        now = time.perf_counter()
        if now - last >= _PROGRESS_SECONDS:
            last = now
            logging.info("Class pixel counts: %d of %d examples read (%.0f s).", index + 1,
                         num_examples, now - start)
    if num_examples and time.perf_counter() - start >= _PROGRESS_SECONDS:
        logging.info("Class pixel counts of %d examples took %.0f s.", num_examples,
                     time.perf_counter() - start)
    return counts


def dataset_id(data_config) -> str:
    """The name of `data_config`'s dataset as the counts cache records it: config.data.name, and
    for a dataset read from a folder (config.data.root set) that folder too."""
    root = data_config.get("root", "") if hasattr(data_config, "get") else ""
    return f"{data_config.name}:{os.path.abspath(root)}" if root else str(data_config.name)


def _cache_key(*, dataset, split, num_examples, num_classes, ignore_label) -> dict:
    return {"dataset": str(dataset), "split": str(split), "num_examples": int(num_examples),
            "num_classes": int(num_classes), "ignore_label": int(ignore_label)}


def _read_cache(path: str):
    """(counts, key) stored at `path`; raises OSError / ValueError / KeyError if unreadable."""
    with np.load(path, allow_pickle=False) as stored:
        return np.asarray(stored["counts"], np.int64), json.loads(str(stored["key"]))


def _write_cache(path: str, counts: np.ndarray, key: dict) -> None:
    """Writes the cache so that a reader sees the old file or the new one, never a part."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, counts=counts, key=np.asarray(json.dumps(key, sort_keys=True)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_or_compute_counts(workdir: str, source, *, dataset: str, split: str, num_classes: int,
                           ignore_label: int) -> np.ndarray:
    """`class_pixel_counts(source, ...)`, cached as `<workdir>/class_counts.npz`.

    The file holds the counts and their key (dataset, split, num_examples, num_classes,
    ignore_label); a file whose key differs from this call's (or that cannot be read) is
    recomputed, with a log line saying why. Only process 0 writes it, atomically (a temporary
    file, then a rename), so a killed run never leaves a partial file; every process reads or
    computes the same counts. `dataset`: e.g. `dataset_id(config.data)`. The key cannot see a
    dataset whose content changed under the same name, split and size: delete the file then.
    """
    key = _cache_key(dataset=dataset, split=split, num_examples=len(source),
                     num_classes=num_classes, ignore_label=ignore_label)
    path = os.path.join(workdir, COUNTS_FILE)
    if os.path.exists(path):
        try:
            counts, stored_key = _read_cache(path)
        except (OSError, ValueError, KeyError) as error:
            reason = f"it could not be read ({error})"
        else:
            if stored_key == key and counts.shape == (key["num_examples"], num_classes):
                logging.info("Class pixel counts of %s split %r read from %s.", dataset, split,
                             path)
                return counts
            changed = [f"{k} {stored_key.get(k)!r} -> {v!r}" for k, v in key.items()
                       if stored_key.get(k) != v] or [f"counts of shape {counts.shape}"]
            reason = "its key differs: " + ", ".join(changed)
        logging.info("Recomputing the class pixel counts in %s because %s.", path, reason)
    import jax  # lazily: the data modules import without JAX

    counts = class_pixel_counts(source, num_classes, ignore_label)
    if jax.process_index() == 0:
        _write_cache(path, counts, key)
        logging.info("Class pixel counts of %s split %r (%d examples) written to %s.", dataset,
                     split, len(source), path)
    return counts


def _check_counts(counts) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be [num_examples, num_classes] (class_pixel_counts), got "
                         f"shape {counts.shape}.")
    if np.any(counts < 0):
        raise ValueError("counts must be non-negative pixel counts.")
    if counts.sum() == 0:
        raise ValueError("The training split has no labelled (non-void) pixel, so no class "
                         "balance can be computed from it.")
    return counts.astype(np.int64)


def class_weights(counts, scheme: str, class_names=None) -> np.ndarray:
    """float32 [C]: the loss weight of each class under `scheme` (one of `SCHEMES`).

    `counts`: int [num_examples, C] (`class_pixel_counts`). See the module docstring for the two
    schemes. A class with no pixel in the split gets weight 0 (no pixel carries it, so the loss
    never uses it) and is left out of the median; a warning names it (`class_names` [C], if
    given, name the classes). An unknown scheme raises ValueError naming it and `SCHEMES`.
    """
    check_scheme(scheme)
    counts = _check_counts(counts)
    pixels = counts.sum(0).astype(np.float64)
    present = pixels > 0
    for c in np.flatnonzero(~present):
        logging.warning("Class %s has no pixel in the training split: its %s class weight is 0.",
                        _class_name(int(c), class_names), scheme)
    weights = np.zeros(counts.shape[1], np.float64)
    if scheme == "median_frequency":
        image_pixels = counts.sum(1).astype(np.float64)  # every non-void pixel of each image
        in_images = np.array([image_pixels[counts[:, c] > 0].sum() for c in range(len(pixels))])
        freq = pixels[present] / in_images[present]
        weights[present] = np.median(freq) / freq
    else:  # inverse_sqrt_frequency
        freq = pixels[present] / pixels.sum()
        weights[present] = 1.0 / (np.sqrt(freq) * np.sum(np.sqrt(freq)))
    return weights.astype(np.float32)


def rare_class_distribution(counts, temperature: float, min_pixels: int = 1):
    """DAFormer's rare-class sampling distribution: `(class_probs, images_per_class)`.

    class_probs: float64 [C], P(c) = softmax_c((1 - f_c) / temperature) over the classes with at
    least one image holding >= min_pixels of their pixels (others 0), f_c the pixel frequency of
    c over the split. images_per_class: for each class, the int64 indices of those images.
    """
    counts = _check_counts(counts)
    if not temperature > 0:
        raise ValueError(f"Rare-class sampling needs a temperature > 0, got {temperature}.")
    if min_pixels < 1:
        raise ValueError(f"Rare-class sampling needs min_pixels >= 1, got {min_pixels}.")
    pixels = counts.sum(0).astype(np.float64)
    freq = pixels / pixels.sum()
    images = [np.flatnonzero(counts[:, c] >= min_pixels) for c in range(counts.shape[1])]
    eligible = np.array([len(i) > 0 for i in images])
    if not eligible.any():
        raise ValueError(f"No training image holds {min_pixels} or more pixels of any class; "
                         f"lower config.data.rare_class_sampling.min_pixels.")
    logits = (1.0 - freq[eligible]) / float(temperature)
    exp = np.exp(logits - logits.max())  # stable: the largest term is exp(0) = 1
    probs = np.zeros(counts.shape[1], np.float64)
    probs[eligible] = exp / exp.sum()
    return probs, images


@dataclasses.dataclass(frozen=True, eq=False)
class RareClassSampler:
    """Draws training examples by DAFormer's rare-class sampling (see the module docstring).

    `example_index(rng)` draws a class c ~ `class_probs`, then an image uniformly among
    `images_per_class[c]`; it uses exactly two draws of `rng` (uniform floats), so a sequence of
    examples is a pure function of the generators' seeds.
    """

    counts: np.ndarray
    temperature: float
    min_pixels: int = 1
    class_probs: np.ndarray = dataclasses.field(init=False)
    images_per_class: tuple = dataclasses.field(init=False)

    def __post_init__(self):
        counts = _check_counts(self.counts)
        probs, images = rare_class_distribution(counts, self.temperature, self.min_pixels)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "class_probs", probs)
        object.__setattr__(self, "images_per_class", tuple(images))
        object.__setattr__(self, "_cdf", np.cumsum(probs))

    @property
    def num_classes(self) -> int:
        return self.counts.shape[1]

    def example_index(self, rng: np.random.Generator) -> int:
        """One example's source index, drawn with `rng`."""
        cdf = self._cdf
        c = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        c = min(c, self.num_classes - 1)
        while self.class_probs[c] == 0:  # only at a rounding edge of the cdf
            c -= 1
        images = self.images_per_class[c]
        return int(images[min(int(rng.random() * len(images)), len(images) - 1)])

    def _eligible(self) -> np.ndarray:
        return self.counts >= self.min_pixels

    def expected_shares(self) -> np.ndarray:
        """float64 [C]: for each class c, the probability that one drawn example holds >=
        min_pixels pixels of c: sum_c' P(c') |images(c') & images(c)| / |images(c')|."""
        eligible = self._eligible().astype(np.float64)
        overlap = eligible.T @ eligible  # [c', c]: images holding both
        sizes = np.maximum(np.diag(overlap), 1.0)
        return (self.class_probs / sizes) @ overlap

    def expected_share(self, c: int) -> float:
        """The probability that one drawn example holds >= min_pixels pixels of class `c`."""
        return float(self.expected_shares()[c])

    def uniform_shares(self) -> np.ndarray:
        """float64 [C]: the same probability under uniform sampling of the split (the shuffled
        epochs): the fraction of images holding >= min_pixels pixels of each class."""
        return self._eligible().mean(0)


def summary_lines(counts, class_names=None, *, weights=None, sampler=None) -> list[str]:
    """One line per class: pixel share, images holding it, and, where given, its loss weight
    (`weights` [C]) and its rare-class sampling probability with the share of drawn examples
    holding it (against the shuffled epochs') (`sampler`)."""
    counts = np.asarray(counts)
    num_classes = counts.shape[1]
    names = class_names if class_names is not None else [str(c) for c in range(num_classes)]
    width = max(len(str(n)) for n in names)
    pixels = counts.sum(0)
    share = pixels / max(int(pixels.sum()), 1)
    images = (counts > 0).sum(0)
    image_share = (counts > 0).mean(0) if len(counts) else np.zeros(num_classes)
    if sampler is not None:
        drawn, uniform = sampler.expected_shares(), sampler.uniform_shares()
    lines = []
    for c in range(num_classes):
        line = (f"{c:3d} {str(names[c]):<{width}}  pixels {100 * share[c]:6.2f}%  images "
                f"{int(images[c])}/{len(counts)} ({100 * image_share[c]:5.1f}%)")
        if weights is not None:
            line += f"  weight {float(weights[c]):.4g}"
        if sampler is not None:
            line += (f"  sampling P {sampler.class_probs[c]:.4f}  in drawn examples "
                     f"{100 * drawn[c]:5.1f}% (shuffled {100 * uniform[c]:5.1f}%)")
        lines.append(line)
    return lines


def format_summary(counts, class_names=None, *, weights=None, sampler=None,
                   title: str = "Class balance of the training split") -> str:
    """`title`, then `summary_lines(...)` one per line: for `logging.info("%s", ...)`."""
    counts = np.asarray(counts)
    head = f"{title} ({len(counts)} examples, {int(counts.sum())} labelled pixels):"
    return "\n".join([head] + ["  " + line for line in summary_lines(
        counts, class_names, weights=weights, sampler=sampler)])
