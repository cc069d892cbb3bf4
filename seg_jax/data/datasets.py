"""Dataset registry: maps `config.data.name` to a random-access source and its class metadata.

Every source yields examples in one format, whatever the dataset:
  `{'image': uint8 [H, W, 3], 'label': int [H, W], 'instance': int [H, W]}` ('instance' optional),
with `label` holding class ids in [0, num_classes) or `ignore_label`.
"""

import dataclasses
import importlib
from typing import Callable, Mapping, Sequence

import numpy as np


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


def _shapes(data_config, split):
    # Imported lazily: building the tfds builder class is only needed when this dataset is used.
    from seg_jax.data import shapes, shapes_render

    source = shapes.load_shapes(split, data_dir=data_config.data_dir)
    info = DatasetInfo(
        name="shapes",
        class_names=tuple(shapes_render.CLASS_NAMES),
        ignore_label=data_config.ignore_label,
        thing_classes=tuple(shapes_render.THING_CLASSES),
        stuff_classes=tuple(shapes_render.STUFF_CLASSES),
        palette=np.asarray(shapes_render.PALETTE, np.uint8),
    )
    view = MappedSource(source, rename_keys({"image": "image", "semantic": "label",
                                             "instance": "instance"}))
    return view, info


def _folder(data_config, split):
    from seg_jax.data import folder

    if not data_config.root:
        raise ValueError("config.data.name='folder' needs --config.data.root=<folder with images/ "
                         "and masks/>.")
    source = folder.FolderSource(data_config.root, split, num_classes=data_config.num_classes,
                                 ignore_label=data_config.ignore_label)
    spec = source.spec
    if spec["ignore_label"] != data_config.ignore_label:
        raise ValueError(
            f"{data_config.root}/classes.json sets ignore_label={spec['ignore_label']} but "
            f"config.data.ignore_label={data_config.ignore_label}; set "
            f"--config.data.ignore_label={spec['ignore_label']}.")
    classes = len(spec["classes"])
    info = DatasetInfo.with_things("folder", spec["classes"], spec["ignore_label"],
                                   spec["things"], palette=folder.voc_palette(classes))
    return source, info


# name -> loader `(data_config, split) -> (source, info)`, or "module:function" naming one, imported
# only when the dataset is used (so tfds builders and optional readers load lazily).
_DATASETS: dict[str, Callable | str] = {
    "shapes": _shapes,
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

    Raises a ValueError naming the known datasets when `data_config.name` is unknown, and one
    naming both numbers when `data_config.num_classes` disagrees with the dataset.
    """
    if data_config.name not in _DATASETS:
        raise ValueError(
            f"Unknown dataset config.data.name={data_config.name!r}; known datasets: "
            f"{sorted(_DATASETS)}."
        )
    source, info = _loader(data_config.name)(data_config, split)
    if data_config.num_classes != info.num_classes:
        raise ValueError(
            f"config.data.num_classes={data_config.num_classes} but dataset {info.name!r} has "
            f"{info.num_classes} classes {info.class_names}; set "
            f"--config.data.num_classes={info.num_classes}."
        )
    return source, info
