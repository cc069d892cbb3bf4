"""The built-in `digits` dataset: handwritten digits composed into scenes, as a tfds builder.

Like `shapes`, it is generated on first use (a few seconds) into the tfds
data_dir as ArrayRecord files and read back as numpy dicts, with the
machinery all built-in datasets share (seg_jax.data.builtin); nothing needs
TensorFlow or a download (the source digits ship with scikit-learn).

Content is a pure function of (SEED, split, index), see `example_rng`, and
`render_split_example(split, i)` reproduces record i of a split without tfds.

`digits(data_config, split)` is the loader that seg_jax.data.datasets
registers under the name 'digits'.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from seg_jax.data import builtin
from seg_jax.data import datasets
from seg_jax.data import digits_render

IMAGE_SIZE = 96
NUM_TRAIN = 2000
NUM_VALIDATION = 200
SEED = 1797

_DESCRIPTION = f"""\
Handwritten digits composed into scenes for semantic and panoptic
segmentation, rendered with numpy (seg_jax.data.digits_render) at
{IMAGE_SIZE}x{IMAGE_SIZE} from scikit-learn's 1,797 8x8 digits.

Stuff class (instance id 0): 0 background, a random colour with smooth colour
noise and sometimes faint stripes. Thing classes (instance ids 1..K per image,
in drawing order): 1 + d for digit d (digit_0 ... digit_9), uniform over the
ten digits. 2 to 6 digits per image, each bilinearly upsampled to 22-38 px
with a small random rotation, shear and aspect change, thresholded into a
mask and painted in a random colour drawn independently of the class: only
the stroke shape tells the classes apart. Later digits occlude earlier ones;
a digit left with under half of its pixels (or under 12) is removed from
the scene. Gaussian pixel noise on top.

Train scenes use a fixed 80% of each digit's source images, validation scenes
the other 20% (digits_render.pool_indices), so validation handwriting is
never seen in training.

""" + builtin.features_description(SEED)


def example_rng(split: str, index: int) -> np.random.Generator:
    """The generator that renders example `index` of `split`."""
    return builtin.example_rng(SEED, split, index)


def render_split_example(split: str, index: int) -> dict:
    """Example `index` of `split`, rendered directly (no tfds, no files).

    Returns the dict of `digits_render.render_example` at IMAGE_SIZE, drawing
    from the split's own pool of source digits.
    """
    return digits_render.render_example(
        example_rng(split, index), split, IMAGE_SIZE
    )


class Digits(builtin.SceneBuilder):
    """Scenes of scikit-learn handwritten digits on textured backgrounds."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 11 classes (background + 10 digits), 96x96.",
    }
    IMAGE_SIZE = IMAGE_SIZE
    DESCRIPTION = _DESCRIPTION


def load_scenes(split: str, data_dir: str | None = None) -> Sequence[dict]:
    """Random-access source for a split of `digits`, generated on first use.

    `split` is a tfds split spec ('train', 'validation[:16]', ...);
    `data_dir` a tfds data directory, None for tfds' default. See
    `builtin.load_or_generate` for the source's interface.
    """
    return builtin.load_or_generate(Digits, split, data_dir)


def dataset_info(ignore_label: int = 255) -> datasets.DatasetInfo:
    """Class metadata of `digits` (names, things and stuff, palette)."""
    return datasets.DatasetInfo(
        name="digits",
        class_names=tuple(digits_render.CLASS_NAMES),
        ignore_label=ignore_label,
        thing_classes=tuple(digits_render.THING_CLASSES),
        stuff_classes=tuple(digits_render.STUFF_CLASSES),
        palette=np.asarray(digits_render.PALETTE, np.uint8),
    )


def digits(data_config, split: str):
    """The registry's loader: `(MappedSource, DatasetInfo)` for `split`.

    Examples are in the common format of seg_jax.data.datasets: `image`,
    `label` (the semantic map) and `instance`.
    """
    source = load_scenes(split, data_dir=data_config.data_dir)
    return datasets.scene_view(source), dataset_info(datasets.void_label(data_config))
