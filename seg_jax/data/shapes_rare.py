"""`shapes_rare`: the built-in `shapes` scenes with the rare class `bar` ten times rarer.

The class-imbalance study (experiments/studies/imbalance.py) asks whether a loss's advantage on a
rare class grows as the class gets rarer. This variant changes one thing: an object is a `bar`
with probability 0.01 instead of 0.10, the other four thing classes sharing the difference in
proportion to their `shapes` probabilities. Everything else (renderer, sizes, classes, seeds,
the train split's size) is `shapes`', so an image can differ from its `shapes` twin only through
the class draws; the validation split is five times larger (1,000 images) so that the rare class
is scored on about as many objects as in `shapes`. Generated on first use like `shapes`, as its own tfds dataset.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from seg_jax.data import builtin
from seg_jax.data import datasets
from seg_jax.data import shapes
from seg_jax.data import shapes_render

IMAGE_SIZE = shapes.IMAGE_SIZE
NUM_TRAIN = shapes.NUM_TRAIN
# Five times `shapes`' 200, so that about as many validation images hold a bar (about 3% of
# images have one here): rare-class scores from a handful of bars would be mostly noise.
NUM_VALIDATION = 5 * shapes.NUM_VALIDATION
SEED = shapes.SEED

BAR_PROB = 0.01  # `shapes`: 0.10
_BAR = shapes_render.THING_CLASSES.index(shapes_render.BAR)
_OTHERS = np.arange(len(shapes_render.THING_CLASSES)) != _BAR
THING_PROBS = np.where(
    _OTHERS,
    shapes_render.THING_PROBS * (1 - BAR_PROB) / shapes_render.THING_PROBS[_OTHERS].sum(),
    BAR_PROB)


def render_split_example(split: str, index: int) -> dict:
    """Example `index` of `split`, rendered directly (no tfds, no files)."""
    return shapes_render.render_example(shapes.example_rng(split, index), IMAGE_SIZE,
                                        thing_probs=THING_PROBS)


class ShapesRare(builtin.SceneBuilder):
    """`shapes` with objects drawn as `bar` with probability 0.01 instead of 0.10."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: shapes with the bar class ten times rarer."}
    IMAGE_SIZE = IMAGE_SIZE
    DESCRIPTION = (
        "The built-in `shapes` dataset (seg_jax.data.shapes) with the thing classes drawn with "
        f"probabilities {np.round(THING_PROBS, 4).tolist()} (disc, square, triangle, ring, bar): "
        "the rare class `bar` ten times rarer per object.\n\n" + builtin.features_description(SEED))


def load_scenes(split: str, data_dir: str | None = None) -> Sequence[dict]:
    """Random-access source for a split of `shapes_rare`, generated on first use."""
    return builtin.load_or_generate(ShapesRare, split, data_dir)


def shapes_rare(data_config, split: str):
    """The registry's loader: `(MappedSource, DatasetInfo)` for `split`."""
    source = load_scenes(split, data_dir=data_config.data_dir)
    return datasets.scene_view(source), shapes.dataset_info(
        "shapes_rare", datasets.void_label(data_config))
