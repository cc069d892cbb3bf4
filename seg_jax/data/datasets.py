"""Dataset registry: maps `config.data.name` to a random-access source and its class metadata.

Every source yields examples in one format, whatever the dataset:
  `{'image': uint8 [H, W, 3], 'label': int [H, W], 'instance': int [H, W]}` ('instance' optional),
with `label` holding class ids in [0, num_classes) or `ignore_label`.
"""

import copy
import dataclasses
import importlib
import json
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from seg_jax import reporting
from seg_jax.errors import ConfigError

# The label of void pixels (no loss, no metric) where neither the config nor the dataset says
# otherwise: config.data.ignore_label=None means the dataset's own.
DEFAULT_IGNORE_LABEL = 255


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Class metadata of a dataset, shared by training, evaluation and visualisation."""

    name: str
    class_names: tuple[str, ...]
    ignore_label: int
    thing_classes: tuple[int, ...] = ()
    stuff_classes: tuple[int, ...] = ()
    # uint8 [num_classes, 3]: the fixed colour of each class in mask figures.
    palette: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        """A JSON-ready dict of the info (the palette as lists of RGB ints)."""
        fields = dataclasses.asdict(self)
        fields["palette"] = None if self.palette is None else np.asarray(self.palette).tolist()
        return fields

    @classmethod
    def from_json(cls, fields: Mapping) -> "DatasetInfo":
        palette = fields.get("palette")
        return cls(name=fields["name"], class_names=tuple(fields["class_names"]),
                   ignore_label=int(fields["ignore_label"]),
                   thing_classes=tuple(fields.get("thing_classes", ())),
                   stuff_classes=tuple(fields.get("stuff_classes", ())),
                   palette=None if palette is None else np.asarray(palette, np.uint8))

    @classmethod
    def with_things(cls, name: str, class_names, ignore_label: int, thing_classes,
                    palette=None) -> "DatasetInfo":
        """The info of a dataset whose classes that are not things are stuff."""
        things = tuple(thing_classes)
        return cls(name=name, class_names=tuple(class_names), ignore_label=ignore_label,
                   thing_classes=things,
                   stuff_classes=tuple(c for c in range(len(class_names)) if c not in things),
                   palette=palette)


class MappedSource(Sequence):
    """A random-access view of a source whose examples go through `fn` (e.g. to the common format).

    `fn(example, index) -> example`: the index lets an error name the example.
    """

    def __init__(self, source, fn: Callable[[dict, int], dict]):
        self._source = source
        self._fn = fn

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        index = int(index)
        return self._fn(self._source[index], index)


def rename_keys(key_map: Mapping[str, str]) -> Callable[[dict, int], dict]:
    """An example map for `MappedSource` that renames keys (and drops the others)."""
    key_map = dict(key_map)

    def fn(example, index):
        del index
        return {new: np.asarray(example[old]) for old, new in key_map.items() if old in example}

    return fn


def scene_view(source) -> MappedSource:
    """A built-in scene dataset's source (`image`, `semantic`, `instance`, `id`) in the common
    format: `image`, `label` (the semantic map) and `instance`."""
    return MappedSource(source, rename_keys({"image": "image", "semantic": "label",
                                             "instance": "instance"}))


def void_label(data_config) -> int:
    """The ignore label a loader writes for void pixels: the config's, else the default (255)."""
    value = data_config.ignore_label
    return DEFAULT_IGNORE_LABEL if value is None else int(value)


def _folder(data_config, split):
    from seg_jax.data import folder

    if not data_config.root:
        raise ConfigError("config.data.name='folder' needs --config.data.root=<folder with images/ "
                          "and masks/>.")
    source = folder.FolderSource(data_config.root, split, num_classes=data_config.num_classes,
                                 ignore_label=data_config.ignore_label)
    spec = source.spec
    classes = len(spec["classes"])
    info = DatasetInfo.with_things("folder", spec["classes"], spec["ignore_label"],
                                   spec["things"], palette=folder.voc_palette(classes))
    return source, info


# name -> loader `(data_config, split) -> (source, info)`, or "module:function" naming one, imported
# only when the dataset is used (so tfds builders and optional readers load lazily).
_DATASETS: dict[str, Callable | str] = {
    "shapes": "seg_jax.data.shapes:shapes",
    "shapes_rare": "seg_jax.data.shapes_rare:shapes_rare",
    "folder": _folder,
    "digits": "seg_jax.data.digits:digits",
    "oxford_iiit_pet": "seg_jax.data.tfds_sources:oxford_iiit_pet",
    "cityscapes": "seg_jax.data.tfds_sources:cityscapes",
    "scene_parse150": "seg_jax.data.tfds_sources:scene_parse150",
    "ade20k": "seg_jax.data.ade20k:ade20k",
    "coco_panoptic": "seg_jax.data.coco_panoptic:coco_panoptic",
}
DATASET_NAMES = tuple(sorted(_DATASETS))


def _loader(name: str) -> Callable:
    loader = _DATASETS[name]
    if isinstance(loader, str):
        module, function = loader.split(":")
        loader = getattr(importlib.import_module(module), function)
    return loader


def get_dataset(data_config, split: str):
    """Returns `(source, info)`: a random-access sequence of examples and its `DatasetInfo`.

    Raises a ValueError naming the known datasets when `data_config.name` is unknown. The class
    count and ignore label are the dataset's: `check_data_config` compares them with explicit
    config values.
    """
    if data_config.name not in _DATASETS:
        raise ConfigError(
            f"Unknown dataset config.data.name={data_config.name!r}; known datasets: "
            f"{sorted(_DATASETS)}."
        )
    return _loader(data_config.name)(data_config, split)


def check_data_config(data_config, info: DatasetInfo) -> None:
    """Raises ValueError when an explicit config.data.num_classes or ignore_label (not None)
    disagrees with what the dataset declares, naming both values and the fix."""
    for key, actual in (("num_classes", info.num_classes), ("ignore_label", info.ignore_label)):
        given = data_config[key]
        if given is not None and int(given) != actual:
            raise ConfigError(
                f"config.data.{key}={given} but dataset {info.name!r} has {key}={actual} "
                f"(classes {info.class_names}); leave config.data.{key} unset (None) to take the "
                f"dataset's, or set --config.data.{key}={actual}.")


# The config fields that hold the dataset's class count or ignore label besides config.data's.
_DATASET_FIELDS = (("model", "num_classes"), ("loss", "ignore_label"))


def with_dataset_info(config, info: DatasetInfo):
    """A copy of `config` whose data.num_classes and data.ignore_label are the dataset's.

    `config.model.num_classes` and `config.loss.ignore_label` refer to them in the configs and so
    follow; where a config holds them as plain values, None is filled in too. Raises like
    `check_data_config` when an explicit value disagrees.
    """
    check_data_config(config.data, info)
    resolved = copy.deepcopy(config)
    resolved.data.num_classes = info.num_classes
    resolved.data.ignore_label = info.ignore_label
    for block, key in _DATASET_FIELDS:
        if block not in resolved or key not in resolved[block]:
            continue
        actual = resolved.data[key]
        if resolved[block][key] is None:
            resolved[block][key] = actual
        elif int(resolved[block][key]) != actual:
            raise ConfigError(f"config.{block}.{key}={resolved[block][key]} but dataset "
                              f"{info.name!r} has {key}={actual}; leave it unset (None) to take "
                              "the dataset's.")
    return resolved


# A run's workdir keeps its dataset's info, so that prediction needs only the workdir.
INFO_FILE = "dataset_info.json"


def write_info(workdir: str, info: DatasetInfo) -> None:
    """Writes `<workdir>/dataset_info.json`."""
    text = json.dumps(info.to_json(), indent=2) + "\n"
    reporting.atomic_write(os.path.join(workdir, INFO_FILE), text)


def read_info(workdir: str) -> DatasetInfo | None:
    """The info a training run stored in `workdir`, or None where it stored none."""
    path = os.path.join(workdir, INFO_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return DatasetInfo.from_json(json.load(f))
