"""The built-in procedural `shapes` dataset as a tensorflow-datasets builder.

The data are generated on first use by `load_shapes` (a few seconds) into the
tfds data_dir as ArrayRecord files, and read back through tfds' random-access
data sources as numpy dicts. Nothing here needs TensorFlow:

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
import time

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from seg_jax.data import shapes_render

IMAGE_SIZE = 128
NUM_TRAIN = 2000
NUM_VALIDATION = 200
SEED = 1729

# Stable ids that enter the per-example seed; never renumber them.
SPLIT_IDS = {"train": 0, "validation": 1}

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

Features: image uint8 [H, W, 3]; semantic uint8 [H, W] class ids; instance
int32 [H, W]; id int64, the index of the example in its split. Record i of a
split is example i (shuffling disabled); it is rendered from
np.random.default_rng([{SEED}, split_id, i]) with split_id train=0,
validation=1.
"""


def example_rng(split: str, index: int) -> np.random.Generator:
    """The generator that renders example `index` of `split`."""
    return np.random.default_rng([SEED, SPLIT_IDS[split], index])


def render_split_example(split: str, index: int) -> dict:
    """Example `index` of `split`, rendered directly (no tfds, no files).

    Returns the dict of `shapes_render.render_example` at IMAGE_SIZE.
    """
    return shapes_render.render_example(example_rng(split, index), IMAGE_SIZE)


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Sky/ground scenes with discs, squares, triangles, rings and bars."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 7 classes (2 stuff, 5 things), 128x128.",
    }
    # tfds computes code_path through `importlib_resources`, a backport that
    # is only installed on Python < 3.9, for any builder that lives in a
    # package; without it download_and_prepare fails with ModuleNotFoundError.
    # A plain class attribute shadows that classproperty with the same value.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly rather than through dataset_info_from_configs, which
        # looks for metadata files (README, CITATIONS) next to this module.
        size = IMAGE_SIZE
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                # Raw bytes: noisy pixels barely compress (zlib saves ~7% for
                # 1 ms per image). encoding="none" would be worse still: it
                # stores one protobuf int64 per channel value, slowly.
                "image": tfds.features.Tensor(
                    shape=(size, size, 3), dtype=np.uint8, encoding="bytes"
                ),
                "semantic": tfds.features.Tensor(
                    shape=(size, size), dtype=np.uint8, encoding="zlib"
                ),
                "instance": tfds.features.Tensor(
                    shape=(size, size), dtype=np.int32, encoding="zlib"
                ),
                "id": tfds.features.Scalar(dtype=np.int64),
            }),
            # Record i must be example i, so that data and `example_rng`
            # agree; training shuffles its own index sampling anyway.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        # Split sizes are read at generation time so that tests can shrink
        # them by patching the module constants.
        return {
            "train": self._generate_examples("train", NUM_TRAIN),
            "validation": self._generate_examples(
                "validation", NUM_VALIDATION
            ),
        }

    def _generate_examples(self, split, num_examples):
        for i in range(num_examples):
            example = render_split_example(split, i)
            example["id"] = i
            yield i, example


def load_shapes(split: str, data_dir: str | None = None) -> Sequence[dict]:
    """Random-access source for a split of `shapes`, generated on first use.

    Args:
      split: a tfds split spec, e.g. 'train', 'validation', 'train[:100]'.
      data_dir: tfds data directory; None uses the tfds default
        ($TFDS_DATA_DIR or ~/tensorflow_datasets).

    Returns:
      A `tensorflow_datasets.core.data_sources.array_record
      .ArrayRecordDataSource` (a Sequence): `len(source)` examples,
      `source[i]` a dict of numpy arrays as described by the builder's
      features (`image` uint8 [H, W, 3], `semantic` uint8 [H, W], `instance`
      int32 [H, W], `id` int), `source.__getitems__(indices)` a list of them.

    Generation is not coordinated between processes: with several processes
    (e.g. JAX hosts) sharing one data_dir, prepare it from one process first.
    """
    builder = Shapes(data_dir=data_dir)
    # Checking the folder first avoids tfds' warning about a variant folder
    # without dataset_info.json on every first use.
    if not (builder.data_path.exists() and builder.is_prepared()):
        logging.info(
            "Generating the shapes dataset (%d train, %d validation examples) "
            "in %s", NUM_TRAIN, NUM_VALIDATION, builder.data_dir,
        )
        start = time.perf_counter()
        builder.download_and_prepare(file_format="array_record")
        logging.info(
            "Generated the shapes dataset in %.1f s.",
            time.perf_counter() - start,
        )
    return builder.as_data_source(split)
