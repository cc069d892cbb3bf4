"""Real datasets read through tensorflow-datasets' random-access sources, without TensorFlow.

Three loaders for `seg_jax.data.datasets` (`config.data.name`):

  oxford_iiit_pet   tfds `oxford_iiit_pet` (splits train, test): the trimaps as 2 classes
  cityscapes        tfds `cityscapes/semantic_segmentation` (train, validation, test): 19 classes
  scene_parse150    tfds `scene_parse150` (train, test): ADE20K, 150 class ids (see below)

Each returns `(source, info)`: a random-access `datasets.MappedSource` over
`tfds.data_source(...)` whose examples are `{'image': uint8 [H, W, 3], 'label': int32 [H, W]}`
with class ids in [0, C) or `config.data.ignore_label`, and its `datasets.DatasetInfo`.

Reading needs no TensorFlow: `tfds.data_source` reads ArrayRecord files and decodes the PNG /
JPEG features with PIL (or OpenCV where installed). *Preparing* a dataset does need TensorFlow
(the builders list and extract files with `tf.io.gfile`), so it is a one-off step, in any
environment with `pip install tensorflow tensorflow-datasets`, into the data_dir the runs then
read with `--config.data.data_dir=DIR`:

  tfds build oxford_iiit_pet --data_dir=DIR --file_format=array_record
  tfds build scene_parse150 --data_dir=DIR --file_format=array_record
  # Cityscapes needs a login: download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip
  # from https://www.cityscapes-dataset.com/downloads/ into MANUAL (default DIR/downloads/manual):
  tfds build cityscapes/semantic_segmentation --data_dir=DIR --manual_dir=MANUAL \\
      --file_format=array_record

`--file_format=array_record` matters: tfds' default (tfrecord) has no random access, and the
loaders say so if they find it. TensorFlow can be uninstalled afterwards.

The label conventions, each a lookup table over the stored uint8 values (values outside the
dataset's documented range are an error naming the example and the value, so a wrongly prepared
dataset stops instead of training on garbage):

- Pets trimap (`segmentation_mask`): 1 pet -> class 1 'pet', 2 background -> class 0
  'background', 3 border / not classified -> ignore_label.
- Cityscapes (`segmentation_label`, gtFine labelIds 0..33, 255 where a negative id such as the
  licence plate was written as uint8) -> the 19 standard train ids (road 0, ..., bicycle 18); every
  other valid id (unlabeled, ego vehicle, parking, caravan, ...) -> ignore_label.
- scene_parse150 (`annotation`): tfds builds this dataset from the Places Challenge 2017
  *instance* annotations (annotations_instance.tar), not from the SceneParsing semantic maps:
  the red channel holds one of the 100 *instance* categories (1 bed, 2 windowpane, ..., 100
  flag; CSAILVision/placeschallenge instanceInfo100) and 0 elsewhere, the green channel the
  instance id. So the red channel is mapped by name onto the 150 SceneParsing class ids
  (bed -> 7, windowpane -> 8, ..., flag -> 149) and 0 -> ignore_label. The 50 stuff classes
  (wall, building, sky, floor, ...) are therefore never labelled in tfds' copy: its scores are
  not comparable with ADE20K SceneParsing results, which need the ADEChallengeData2016 semantic
  maps. The class ids agree with that benchmark, so a model trained on it can be scored here.
"""

import numpy as np

from seg_jax.data import datasets, folder
from seg_jax.errors import DataError


# Table entry of a stored value outside a dataset's convention (any ignore_label stays usable).
INVALID = np.iinfo(np.int32).min


class TfdsDataError(DataError):
    """A tfds dataset that cannot be read; the message names the dataset, example and fix."""


_PREPARE = {
    "oxford_iiit_pet":
        "tfds build oxford_iiit_pet --data_dir={data_dir} --file_format=array_record",
    "scene_parse150": "tfds build scene_parse150 --data_dir={data_dir} --file_format=array_record",
    "cityscapes/semantic_segmentation": (
        "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (login at "
        "https://www.cityscapes-dataset.com/downloads/) into a folder MANUAL, then "
        "tfds build cityscapes/semantic_segmentation --data_dir={data_dir} --manual_dir=MANUAL "
        "--file_format=array_record"),
}


def open_tfds_source(name: str, split: str, data_dir):
    """`tfds.data_source(name, split=split, data_dir=data_dir)` that never downloads or prepares.

    Preparing needs TensorFlow (and, for Cityscapes, a manual download), so it is never started
    implicitly; a dataset that is not prepared, or prepared without random access, is an error
    that gives the one-off command.
    """
    import tensorflow_datasets as tfds  # Lazily: only these datasets need tfds imported.

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # Re-raised below unless a clearer cause is found.
        builder = tfds.builder(name, data_dir=data_dir)
        where = str(builder.data_dir)
        prepare = _PREPARE.get(name, f"tfds build {name} --data_dir={{data_dir}} "
                                     "--file_format=array_record")
        prepare = prepare.format(data_dir=data_dir or "~/tensorflow_datasets")
        if not builder.is_prepared():
            raise TfdsDataError(
                f"tfds dataset {name!r} is not prepared in {where}. Prepare it once, where "
                f"TensorFlow is installed (pip install tensorflow; only this step needs it): "
                f"{prepare}; then pass --config.data.data_dir=<that data_dir>.") from error
        if isinstance(error, NotImplementedError):
            raise TfdsDataError(
                f"tfds dataset {name!r} in {where} was prepared without random access (tfds' "
                f"default tfrecord format); delete it and rebuild it as ArrayRecord: "
                f"{prepare}.") from error
        if isinstance(error, ValueError) and "Unknown split" in str(error):
            raise TfdsDataError(
                f"tfds dataset {name!r}: {error} Set --config.data.train_split / "
                "--config.data.eval_split accordingly (slices such as 'test[:100]' work too)."
            ) from error
        raise


def _rgb(image, *, dataset: str, index: int) -> np.ndarray:
    """uint8 [H, W, 3]: grayscale ([H, W] or [H, W, 1]) repeated over three channels."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise TfdsDataError(
            f"{dataset} example {index}: image of shape {image.shape} is not an RGB image "
            "[H, W, 3].")
    return image.astype(np.uint8, copy=False)


def _mask(mask, *, dataset: str, index: int, feature: str) -> np.ndarray:
    """[H, W] from a tfds single-channel image feature ([H, W, 1])."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise TfdsDataError(
            f"{dataset} example {index}: '{feature}' of shape {mask.shape} is not a "
            "single-channel mask [H, W, 1].")
    return mask


def _lookup(table: np.ndarray, values, *, dataset: str, index, what: str) -> np.ndarray:
    """`table[values]` for uint8 `values`; values whose entry is INVALID are an error."""
    values = np.asarray(values)
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise TfdsDataError(
                f"{dataset} example {index}: {what} values lie in "
                f"[{values.min()}, {values.max()}], "
                "outside the uint8 range of the stored masks.")
        values = values.astype(np.uint8)
    mapped = table[values]
    bad = mapped == INVALID
    if bad.any():
        raise TfdsDataError(
            f"{dataset} example {index}: {what} values {np.unique(values[bad]).tolist()[:10]} "
            f"are not part of the dataset's label convention (tfds_sources documents it); the "
            "dataset was prepared from the wrong files or is damaged.")
    return mapped


def _check_same_size(image, label, *, dataset: str, index: int) -> None:
    if image.shape[:2] != label.shape:
        raise TfdsDataError(
            f"{dataset} example {index}: image is {image.shape[0]}x{image.shape[1]} but its mask "
            f"is {label.shape[0]}x{label.shape[1]} (HxW).")


def _ignore_label(data_config, num_classes: int) -> int:
    """config.data.ignore_label, which must not be a class id (the maps would be ambiguous)."""
    ignore = datasets.void_label(data_config)
    if 0 <= ignore < num_classes:
        raise TfdsDataError(
            f"config.data.ignore_label={ignore} is also a class id of this dataset's "
            f"{num_classes} classes; use an ignore label >= {num_classes} (255 by default).")
    return ignore


def _table(mapping: dict, ignore_label: int, *, ignored=(), size: int = 256) -> np.ndarray:
    """int32 [size]: mapping[v] for its keys, ignore_label for `ignored`, INVALID elsewhere."""
    table = np.full(size, INVALID, np.int32)
    for value in ignored:
        table[value] = ignore_label
    for value, class_id in mapping.items():
        table[value] = class_id
    return table


# --- Oxford-IIIT Pet ---------------------------------------------------------------------------

PET_CLASSES = ("background", "pet")
# Trimap value -> class: 1 is the pet (foreground), 2 the background; 3 (border) is ignored.
PET_TRIMAP_TO_CLASS = {1: 1, 2: 0}
PET_TRIMAP_IGNORED = (3,)


def pet_table(ignore_label: int = 255) -> np.ndarray:
    """int32 [256]: trimap value -> class id or ignore_label; INVALID for other values."""
    return _table(PET_TRIMAP_TO_CLASS, ignore_label, ignored=PET_TRIMAP_IGNORED)


def pet_label(trimap, ignore_label: int = 255, *, index="?") -> np.ndarray:
    """A trimap ([H, W] or [H, W, 1], values 1..3) -> int32 [H, W] class ids / ignore_label."""
    trimap = _mask(trimap, dataset="oxford_iiit_pet", index=index, feature="segmentation_mask")
    return _lookup(pet_table(ignore_label), trimap, dataset="oxford_iiit_pet", index=index,
                   what="trimap")


def _semantic_source(data_config, split, *, dataset: str, tfds_name: str, image_key: str,
                     label_key: str, to_label, class_names, thing_classes, palette):
    """The loader shared by the tfds datasets: `(source, info)` with examples mapped by
    `to_label(stored, ignore_label, index=)` and checked for matching image and label sizes."""
    source = open_tfds_source(tfds_name, split, data_config.data_dir)
    ignore = _ignore_label(data_config, len(class_names))

    def fn(example, index):
        image = _rgb(example[image_key], dataset=dataset, index=index)
        label = to_label(example[label_key], ignore, index=index)
        _check_same_size(image, label, dataset=dataset, index=index)
        return {"image": image, "label": label}

    info = datasets.DatasetInfo.with_things(dataset, class_names, ignore, thing_classes,
                                            palette=palette)
    return datasets.MappedSource(source, fn), info


def oxford_iiit_pet(data_config, split):
    """Oxford-IIIT Pet (tfds `oxford_iiit_pet`, splits 'train' 3680 and 'test' 3669 images)."""
    return _semantic_source(
        data_config, split, dataset="oxford_iiit_pet", tfds_name="oxford_iiit_pet",
        image_key="image", label_key="segmentation_mask", to_label=pet_label,
        class_names=PET_CLASSES, thing_classes=(1,), palette=folder.voc_palette(len(PET_CLASSES)))


# --- Cityscapes --------------------------------------------------------------------------------

# The 19 evaluated classes in train-id order, with the gtFine label id of each and its colour
# (the Cityscapes colours, so figures look like every other Cityscapes figure).
CITYSCAPES_CLASSES = (
    # name, label id, colour
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)
CITYSCAPES_CLASS_NAMES = tuple(name for name, _, _ in CITYSCAPES_CLASSES)
CITYSCAPES_LABEL_TO_TRAIN_ID = {
    label_id: c for c, (_, label_id, _) in enumerate(CITYSCAPES_CLASSES)}
# Classes with instances among the 19 (person ... bicycle); the rest are stuff.
CITYSCAPES_THINGS = tuple(range(11, 19))
CITYSCAPES_PALETTE = np.asarray([colour for _, _, colour in CITYSCAPES_CLASSES], np.uint8)
# gtFine labelIds are 0..33; a negative id (-1, licence plate) can only be stored as 255 in uint8.
CITYSCAPES_VALID_IDS = tuple(range(34)) + (255,)


def cityscapes_table(ignore_label: int = 255) -> np.ndarray:
    """int32 [256]: label id -> train id; ignore_label for the other valid ids; INVALID 34..254."""
    others = [i for i in CITYSCAPES_VALID_IDS if i not in CITYSCAPES_LABEL_TO_TRAIN_ID]
    return _table(CITYSCAPES_LABEL_TO_TRAIN_ID, ignore_label, ignored=others)


def cityscapes_label(label_ids, ignore_label: int = 255, *, index="?") -> np.ndarray:
    """gtFine labelIds ([H, W] or [H, W, 1]) -> int32 [H, W] train ids / ignore_label."""
    label_ids = _mask(label_ids, dataset="cityscapes", index=index, feature="segmentation_label")
    return _lookup(cityscapes_table(ignore_label), label_ids, dataset="cityscapes", index=index,
                   what="label id")


def cityscapes(data_config, split):
    """Cityscapes fine annotations (tfds `cityscapes/semantic_segmentation`; 2975 train, 500
    validation images of 1024x2048; the test split's labels are not public)."""
    return _semantic_source(
        data_config, split, dataset="cityscapes", tfds_name="cityscapes/semantic_segmentation",
        image_key="image_left", label_key="segmentation_label", to_label=cityscapes_label,
        class_names=CITYSCAPES_CLASS_NAMES, thing_classes=CITYSCAPES_THINGS,
        palette=CITYSCAPES_PALETTE.copy())


# --- ADE20K SceneParsing (tfds scene_parse150) ---------------------------------------------------

# The 150 SceneParsing classes in id order (objectInfo150; short names). Their ids are the
# benchmark's 1..150 minus one.
ADE20K_CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)
# The 100 instance categories of the Places Challenge 2017 instance annotations, in the order of
# their ids 1..100 (the values of the red channel of tfds' scene_parse150 `annotation`).
ADE20K_INSTANCE_NAMES = (
    "bed", "windowpane", "cabinet", "person", "door", "table", "curtain", "chair", "car",
    "painting", "sofa", "shelf", "mirror", "armchair", "seat", "fence", "desk", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "box", "column", "signboard", "chest of drawers", "counter",
    "sink", "fireplace", "refrigerator", "stairs", "case", "pool table", "pillow", "screen door",
    "bookcase", "coffee table", "toilet", "flower", "book", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "arcade machine", "bus", "towel",
    "light", "truck", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "apparel", "pole", "bannister", "ottoman", "bottle", "van", "ship", "fountain",
    "washer", "plaything", "stool", "barrel", "basket", "bag", "minibike", "oven", "ball", "food",
    "step", "trade name", "microwave", "pot", "animal", "bicycle", "dishwasher", "screen",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "plate",
    "monitor", "bulletin board", "radiator", "glass", "clock", "flag",
)
# Instance category id (1..100) -> SceneParsing class id (0..149), matched by name.
ADE20K_INSTANCE_TO_CLASS = {
    i + 1: ADE20K_CLASS_NAMES.index(name) for i, name in enumerate(ADE20K_INSTANCE_NAMES)
}
# The classes with instances (ADE20K panoptic's 100 things); the other 50 are stuff.
ADE20K_THINGS = tuple(sorted(ADE20K_INSTANCE_TO_CLASS.values()))


def scene_parse150_table(ignore_label: int = 255) -> np.ndarray:
    """int32 [256]: red-channel value -> class id; 0 -> ignore_label; INVALID for 101..255."""
    return _table(ADE20K_INSTANCE_TO_CLASS, ignore_label, ignored=(0,))


def scene_parse150_label(annotation, ignore_label: int = 255, *, index="?") -> np.ndarray:
    """tfds scene_parse150 `annotation` [H, W, 3] -> int32 [H, W] class ids / ignore_label."""
    annotation = np.asarray(annotation)
    if annotation.ndim != 3 or annotation.shape[-1] != 3:
        raise TfdsDataError(
            f"scene_parse150 example {index}: annotation of shape {annotation.shape} is not the "
            "3-channel instance annotation [H, W, 3] (red: category, green: instance).")
    return _lookup(scene_parse150_table(ignore_label), annotation[..., 0],
                   dataset="scene_parse150", index=index, what="instance category (red channel)")


def scene_parse150(data_config, split):
    """ADE20K through tfds `scene_parse150` ('train' 20210 images; 'test' is the 2000 validation
    images). Only the 100 instance categories are labelled there; see the module docstring."""
    return _semantic_source(
        data_config, split, dataset="scene_parse150", tfds_name="scene_parse150",
        image_key="image", label_key="annotation", to_label=scene_parse150_label,
        class_names=ADE20K_CLASS_NAMES, thing_classes=ADE20K_THINGS,
        palette=folder.voc_palette(len(ADE20K_CLASS_NAMES)))
