"""The built-in procedural `shapes` dataset as a tensorflow-datasets builder.

The data are generated on first use by `load_shapes` (a few seconds) into the
tfds data_dir as ArrayRecord files, and read back through tfds' random-access
data sources as numpy dicts, by the machinery that all built-in datasets
share (seg_jax.data.builtin). Nothing here needs TensorFlow:

- features are `tfds.features.Tensor`s (image as raw bytes, labels
  zlib-compressed), whose numpy encode/decode paths do not touch TF
  (`tfds.features.Image` would need TF to encode PNGs);
- `as_data_source` decodes with numpy only.

Content is a pure function of (SEED, split, index), see `example_rng`, so the
files are the same whatever the generation order or parallelism, and
`shapes_render.render_example(example_rng(split, i))` reproduces record i of a
split without tfds.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from seg_jax.data import builtin
from seg_jax.data import datasets
from seg_jax.data import shapes_render

IMAGE_SIZE = 128
NUM_TRAIN = 2000
NUM_VALIDATION = 200
SEED = 1729

# Stable ids that enter the per-example seed (shared by the built-in datasets).
SPLIT_IDS = builtin.SPLIT_IDS

_DESCRIPTION = f"""\
Procedural scenes for semantic and panoptic segmentation, rendered with numpy
(seg_jax.data.shapes_render) at {IMAGE_SIZE}x{IMAGE_SIZE}.

Stuff classes (instance id 0): 0 sky, above a random wavy horizon, smooth
vertical gradient plus low-frequency noise; 1 ground, below it, oriented
stripes plus speckle. Both base colours are random per image, so only texture
and position tell them apart.

Thing classes (instance ids 1..K per image, in drawing order): 2 disc,
3 square (rotated), 4 triangle, 5 ring, 6 bar (thin rotated rectangle, the
rare class). 2 to 6 objects per image with random colours independent of the
class; later objects occlude earlier ones. Gaussian pixel noise on top.

""" + builtin.features_description(SEED)


def example_rng(split: str, index: int) -> np.random.Generator:
    """The generator that renders example `index` of `split`."""
    return builtin.example_rng(SEED, split, index)


def render_split_example(split: str, index: int) -> dict:
    """Example `index` of `split`, rendered directly (no tfds, no files).

    Returns the dict of `shapes_render.render_example` at IMAGE_SIZE.
    """
    return shapes_render.render_example(example_rng(split, index), IMAGE_SIZE)


class Shapes(builtin.SceneBuilder):
    """Sky/ground scenes with discs, squares, triangles, rings and bars."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 7 classes (2 stuff, 5 things), 128x128.",
    }
    IMAGE_SIZE = IMAGE_SIZE
    DESCRIPTION = _DESCRIPTION


def load_shapes(split: str, data_dir: str | None = None) -> Sequence[dict]:
    """Random-access source for a split of `shapes`, generated on first use.

    `split` is a tfds split spec ('train', 'validation[:16]', ...);
    `data_dir` a tfds data directory, None for tfds' default. See
    `builtin.load_or_generate` for the source's interface (`source[i]` is a
    dict with `image` uint8 [H, W, 3], `semantic` uint8 [H, W], `instance`
    int32 [H, W] and `id`) and for sharing a data_dir between processes.
    """
    return builtin.load_or_generate(Shapes, split, data_dir)


def dataset_info(name: str = "shapes", ignore_label: int = 255) -> datasets.DatasetInfo:
    """Class metadata of `shapes` and its variants (names, things and stuff, palette)."""
    return datasets.DatasetInfo(
        name=name,
        class_names=tuple(shapes_render.CLASS_NAMES),
        ignore_label=ignore_label,
        thing_classes=tuple(shapes_render.THING_CLASSES),
        stuff_classes=tuple(shapes_render.STUFF_CLASSES),
        palette=np.asarray(shapes_render.PALETTE, np.uint8),
    )


def shapes(data_config, split: str):
    """The registry's loader: `(MappedSource, DatasetInfo)` for `split`."""
    source = load_shapes(split, data_dir=data_config.data_dir)
    return datasets.scene_view(source), dataset_info("shapes", datasets.void_label(data_config))
