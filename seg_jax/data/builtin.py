"""What the built-in procedural datasets (`shapes`, `digits`) share as tfds builders.

Each built-in dataset is a numpy renderer plus a module with its constants,
`render_split_example` and a thin `SceneBuilder` subclass.
This module holds the parts that are the same for all of them, so that they
stay the same:

- the per-example seed (`example_rng`), which makes every record a pure
  function of (dataset seed, split, index), whatever the generation order;
- the features (`scene_features`): image as raw bytes, label maps
  zlib-compressed, all `tfds.features.Tensor`s, whose numpy encode/decode
  paths never import TensorFlow (`tfds.features.Image` would, for PNGs);
- generation on first use (`load_or_generate`) into the tfds data_dir as
  ArrayRecord files, read back with `as_data_source` (numpy only), by one
  process at a time: others sharing the data_dir wait for it (a file lock).
"""

from collections.abc import Mapping, Sequence
import contextlib
import fcntl
import inspect
import os
import sys
import time

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

# Stable ids that enter the per-example seed; never renumber them.
SPLIT_IDS = {"train": 0, "validation": 1}


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that renders example `index` of `split` of a dataset seeded by `seed`."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def features_description(seed: int) -> str:
    """The closing paragraph of a built-in dataset's description: its features and seeds."""
    return f"""\
Features: image uint8 [H, W, 3]; semantic uint8 [H, W] class ids; instance
int32 [H, W]; id int64, the index of the example in its split. Record i of a
split is example i (shuffling disabled); it is rendered from
np.random.default_rng([{seed}, split_id, i]) with split_id train=0,
validation=1.
"""


def scene_features(image_size: int) -> tfds.features.FeaturesDict:
    """Features of a square panoptic scene: image, semantic, instance and id."""
    size = image_size
    return tfds.features.FeaturesDict({
        # Raw bytes: noisy pixels barely compress (zlib saves ~7% for 1 ms
        # per image). encoding="none" would be worse still: it stores one
        # protobuf int64 per channel value, slowly.
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
    })


class SceneBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder whose record i of a split is `render(split, i)`, shuffling disabled.

    Subclasses set IMAGE_SIZE, DESCRIPTION, VERSION and RELEASE_NOTES. The
    module that defines a subclass (the dataset's module) provides the rest:
    `NUM_TRAIN` and `NUM_VALIDATION`, the examples per split, and
    `render_split_example(split, index)`, which renders one example without
    tfds. Unregistered: only the subclasses get a tfds name (their
    snake-cased class name).
    """

    IMAGE_SIZE: int
    DESCRIPTION: str

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # tfds computes code_path through `importlib_resources`, a backport
        # that is only installed on Python < 3.9, for any builder that lives
        # in a package; without it download_and_prepare fails with
        # ModuleNotFoundError. A plain class attribute shadows that
        # classproperty with the same value: the subclass's own file.
        cls.code_path = epath.Path(inspect.getfile(cls))

    def _dataset_module(self):
        return sys.modules[type(self).__module__]

    def split_sizes(self) -> Mapping[str, int]:
        """Number of examples per split name (a key of SPLIT_IDS)."""
        module = self._dataset_module()
        return {"train": module.NUM_TRAIN, "validation": module.NUM_VALIDATION}

    def render(self, split: str, index: int) -> dict:
        """Example `index` of `split`: image, semantic and instance arrays."""
        return self._dataset_module().render_split_example(split, index)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly rather than through dataset_info_from_configs, which
        # looks for metadata files (README, CITATIONS) next to the module.
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=scene_features(self.IMAGE_SIZE),
            # Record i must be example i, so that data and `example_rng`
            # agree; training shuffles its own index sampling anyway.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        # Sizes are read at generation time (`split_sizes` reads the module's
        # constants) so that tests can shrink them by patching.
        return {
            split: self._generate_examples(split, num)
            for split, num in self.split_sizes().items()
        }

    def _generate_examples(self, split, num_examples):
        for i in range(num_examples):
            example = self.render(split, i)
            example["id"] = i
            yield i, example


def load_or_generate(
    builder_cls: type[SceneBuilder], split: str, data_dir: str | None
) -> Sequence[dict]:
    """Random-access source for `split` of a built-in dataset, generated on first use.

    Args:
      builder_cls: the dataset's `SceneBuilder` subclass.
      split: a tfds split spec, e.g. 'train', 'validation', 'train[:100]'.
      data_dir: tfds data directory; None uses the tfds default
        ($TFDS_DATA_DIR or ~/tensorflow_datasets).

    Returns:
      A `tensorflow_datasets.core.data_sources.array_record
      .ArrayRecordDataSource` (a Sequence): `len(source)` examples,
      `source[i]` a dict of numpy arrays (`image` uint8 [H, W, 3], `semantic`
      uint8 [H, W], `instance` int32 [H, W], `id` int),
      `source.__getitems__(indices)` a list of them.

    Processes sharing one data_dir (the hosts of a multi-process run, the
    points of `--sweep_parallel` on a fresh machine) generate it once: the
    first takes a lock file beside the dataset's folder and generates, the
    others wait for the lock and then read what it wrote. (The lock is an
    `fcntl.flock`, which a network file system may not honour across hosts;
    there, prepare the data_dir from one process first.)
    """
    builder = builder_cls(data_dir=data_dir)
    if _is_prepared(builder):
        return builder.as_data_source(split)
    with _preparation_lock(builder):
        if not _is_prepared(builder):  # not done by another process while we waited
            sizes = ", ".join(f"{n} {s}" for s, n in builder.split_sizes().items())
            logging.info("Generating the %s dataset (%s examples) in %s",
                         builder.name, sizes, builder.data_dir)
            start = time.perf_counter()
            builder.download_and_prepare(file_format="array_record")
            logging.info("Generated the %s dataset in %.1f s.", builder.name,
                         time.perf_counter() - start)
    # A new builder: this one was made before the dataset existed (another process may have
    # written it meanwhile), and reads its info from disk only when made.
    return builder_cls(data_dir=data_dir).as_data_source(split)


def _is_prepared(builder) -> bool:
    # Checking the folder first avoids tfds' warning about a variant folder
    # without dataset_info.json on every first use.
    return builder.data_path.exists() and builder.is_prepared()


@contextlib.contextmanager
def _preparation_lock(builder):
    """Holds `<data_dir>/<dataset>/.<version>.lock` exclusively (waiting, with a log line, while
    another process holds it)."""
    folder = os.path.dirname(str(builder.data_dir))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f".{builder.version}.lock")
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("Another process is generating the %s dataset in %s; waiting for it "
                         "(lock file %s).", builder.name, builder.data_dir, path)
            start = time.perf_counter()
            fcntl.flock(lock, fcntl.LOCK_EX)
            logging.info("Waited %.1f s for the %s dataset.", time.perf_counter() - start,
                         builder.name)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
