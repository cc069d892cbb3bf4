"""Real-dataset tfds sources (oxford_iiit_pet, cityscapes, scene_parse150), read without TensorFlow.

Pets and ADE20K are *prepared* here for real, as tiny ArrayRecord datasets written through the
installed tfds builders (their `_split_generators` patched to yield a few in-memory examples
instead of downloading), so the test reads them exactly as a user's prepared data: ArrayRecord
files, PIL decoding, tfds split slicing. Cityscapes' features are fixed at 1024x2048, too big for
a quick test, so it goes through `tfds.testing.mock_data` with a data source of small examples.
"""

import io
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import ade20k as ade20k_config
from configs import cityscapes as cityscapes_config
from configs import oxford_pet as oxford_pet_config
from run_helpers import check_semantic_results
from seg_jax import train
from seg_jax.data import datasets, tfds_sources
from seg_jax.data.tfds_sources import TfdsDataError

IGNORE = 255
SIZES = ((48, 64), (64, 80))  # (H, W) of alternating examples: evaluation sees mixed sizes
CITYSCAPES_SIZE = (64, 80)  # Cityscapes images all share one size (1024x2048 for real)


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _prepare(name, data_dir, splits):
    """Writes `splits` ({split: [feature dicts]}) as the prepared ArrayRecord dataset `name`."""
    builder_cls = tfds.builder_cls(name)

    def split_generators(self, dl_manager):
        del self, dl_manager
        return {split: ((f"{split}{i}", ex) for i, ex in enumerate(examples))
                for split, examples in splits.items()}

    with mock.patch.object(builder_cls, "_split_generators", split_generators):
        tfds.builder(name, data_dir=data_dir).download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def _pet_arrays(rng, n):
    """Decoded pet examples (as a data source returns them): trimaps [H, W, 1] in 1..3."""
    examples = []
    for i in range(n):
        h, w = SIZES[i % 2]
        trimap = rng.integers(1, 4, (h, w, 1), dtype=np.uint8)
        trimap[: h // 2, : w // 2] = 1  # a pet in every image
        examples.append({
            "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "label": i % 37, "species": i % 2, "file_name": f"pet_{i}.jpg",
            "segmentation_mask": trimap,
            "head_bbox": tfds.features.BBox(0.1, 0.2, 0.5, 0.6),
        })
    return examples


def _pet_examples(rng, n):
    """Pet examples as the builder yields them: JPEG image, PNG trimap."""
    return [dict(ex, image=_encode(ex["image"], "JPEG"),
                 segmentation_mask=_encode(ex["segmentation_mask"][..., 0], "PNG"))
            for ex in _pet_arrays(rng, n)]


def _ade_examples(rng, n):
    examples = []
    for i in range(n):
        h, w = SIZES[i % 2]
        annotation = np.zeros((h, w, 3), np.uint8)
        annotation[..., 0] = rng.choice(np.asarray([0, 1, 4, 9, 100], np.uint8), (h, w))
        annotation[..., 1] = rng.integers(0, 5, (h, w))  # instance ids, not read
        examples.append({
            "image": _encode(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "JPEG"),
            "annotation": _encode(annotation, "PNG"),
        })
    return examples


@pytest.fixture(scope="module")
def pet_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_pets"))
    rng = np.random.default_rng(0)
    _prepare("oxford_iiit_pet", data_dir,
             {"train": _pet_examples(rng, 4), "test": _pet_examples(rng, 4)})
    return data_dir


@pytest.fixture(scope="module")
def ade_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_ade"))
    rng = np.random.default_rng(1)
    _prepare("scene_parse150", data_dir,
             {"train": _ade_examples(rng, 4), "test": _ade_examples(rng, 4)})
    return data_dir


def _quick(config_module, **data):
    # ADE20K's config reads the release folder by default; its tfds variant reads scene_parse150.
    config = config_module.get_config("tfds_quick" if config_module is ade20k_config else "quick")
    for key, value in data.items():
        config.data[key] = value
    return config


def _train_and_check(config, workdir):
    results = train.train_and_evaluate(config, str(workdir))
    assert results["step"] == config.num_train_steps
    eval_source, info = datasets.get_dataset(config.data, config.data.eval_split)
    check_semantic_results(results, str(workdir), eval_source, info)
    return results


# --- Label tables: golden cases ----------------------------------------------------------------

def test_pet_trimap_mapping():
    trimap = np.array([[1, 2, 3]], np.uint8)[..., None]  # tfds stores [H, W, 1]
    np.testing.assert_array_equal(tfds_sources.pet_label(trimap), [[1, 0, IGNORE]])
    np.testing.assert_array_equal(tfds_sources.pet_label(trimap[..., 0], ignore_label=200),
                                  [[1, 0, 200]])
    with pytest.raises(TfdsDataError, match=r"oxford_iiit_pet example 5: trimap values \[0, 4\]"):
        tfds_sources.pet_label(np.array([[0, 1, 4]], np.uint8), index=5)


def test_cityscapes_mapping():
    ids = np.array([[7, 8, 26, 33, 24, 0, 1, 9, 29, 255]], np.uint8)
    np.testing.assert_array_equal(
        tfds_sources.cityscapes_label(ids),
        [[0, 1, 13, 18, 11, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]])
    assert tfds_sources.CITYSCAPES_CLASS_NAMES[13] == "car"
    table = tfds_sources.cityscapes_table(IGNORE)
    assert table.shape == (256,) and table.dtype == np.int32
    assert sorted(set(table[:34].tolist())) == list(range(19)) + [IGNORE]
    with pytest.raises(TfdsDataError, match=r"cityscapes example 3: label id values \[34, 200\]"):
        tfds_sources.cityscapes_label(np.array([[7, 34, 200]], np.uint8), index=3)


def test_cityscapes_agrees_with_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    table = tfds_sources.cityscapes_table(IGNORE)
    for label in labels.labels:
        if label.id >= 0:
            assert table[label.id] == label.trainId, label.name  # trainId 255 = ignored
    evaluated = sorted((l for l in labels.labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)
    assert tfds_sources.CITYSCAPES_CLASS_NAMES == tuple(l.name for l in evaluated)
    np.testing.assert_array_equal(tfds_sources.CITYSCAPES_PALETTE, [l.color for l in evaluated])
    assert tfds_sources.CITYSCAPES_THINGS == tuple(l.trainId for l in evaluated if l.hasInstances)


def test_scene_parse150_mapping():
    names = tfds_sources.ADE20K_CLASS_NAMES
    assert len(names) == len(set(names)) == 150
    assert names[:5] == ("wall", "building", "sky", "floor", "tree") and names[-1] == "flag"
    instance_names = tfds_sources.ADE20K_INSTANCE_NAMES
    assert len(instance_names) == len(set(instance_names)) == 100
    assert len(tfds_sources.ADE20K_THINGS) == 100
    annotation = np.zeros((1, 5, 3), np.uint8)
    annotation[0, :, 0] = [0, 1, 4, 9, 100]  # other, bed, person, car, flag
    annotation[0, :, 1] = 7  # the instance channel does not change the class
    np.testing.assert_array_equal(tfds_sources.scene_parse150_label(annotation),
                                  [[IGNORE, 7, 12, 20, 149]])
    annotation[0, 0, 0] = 101
    with pytest.raises(TfdsDataError, match=r"scene_parse150 example 2: instance category "
                                            r"\(red channel\) values \[101\]"):
        tfds_sources.scene_parse150_label(annotation, index=2)


# --- Sources -------------------------------------------------------------------------------------

def test_pets_read_without_tensorflow(pet_data_dir):
    # TensorFlow is not installed in the test environment (requirements.txt leaves it out), so
    # reading these ArrayRecord files here is the proof that reading does not need it.
    config = _quick(oxford_pet_config, data_dir=pet_data_dir)
    source, info = datasets.get_dataset(config.data, "test[:3]")
    assert len(source) == 3 and info.class_names == ("background", "pet")
    assert info.palette.shape == (2, 3) and info.thing_classes == (1,)
    for i in range(3):
        example = source[i]
        assert example["image"].dtype == np.uint8 and example["image"].ndim == 3
        assert example["image"].shape[2] == 3
        assert example["label"].shape == example["image"].shape[:2]
        assert example["label"].dtype == np.int32
        assert set(np.unique(example["label"]).tolist()) == {0, 1, IGNORE}
    with pytest.raises(TfdsDataError,
                       match=r"Unknown split 'validation'.*--config.data.eval_split"):
        datasets.get_dataset(config.data, "validation")


def test_scene_parse150_reads_classes_by_name(ade_data_dir):
    config = _quick(ade20k_config, data_dir=ade_data_dir)
    source, info = datasets.get_dataset(config.data, "test")
    assert len(source) == 4 and info.num_classes == 150 and len(info.stuff_classes) == 50
    assert set(np.unique(source[0]["label"]).tolist()) == {7, 12, 20, 149, IGNORE}
    assert info.class_names[7] == "bed" and 7 in info.thing_classes and 0 in info.stuff_classes


def test_unprepared_dataset_gives_the_command(tmp_path):
    config = _quick(oxford_pet_config, data_dir=str(tmp_path))
    with pytest.raises(TfdsDataError, match=r"'oxford_iiit_pet' is not prepared in .*tfds build "
                                            r"oxford_iiit_pet .*--file_format=array_record"):
        datasets.get_dataset(config.data, "train")


def _mock_source(examples_by_split):
    """An `as_data_source` for `tfds.testing.mock_data` serving fixed examples per split."""
    def as_data_source(self, split, decoders=None, deserialize_method=None, **kwargs):
        del self, decoders, deserialize_method, kwargs
        name, _, rest = split.partition("[")
        examples = examples_by_split[name]
        if rest:  # 'validation[:n]'
            start, stop = rest.rstrip("]").split(":")
            examples = examples[int(start or 0):int(stop) if stop else None]
        return examples
    return as_data_source


def _cityscapes_examples(rng, n):
    valid_ids = np.asarray(tfds_sources.CITYSCAPES_VALID_IDS, np.uint8)
    examples = []
    h, w = CITYSCAPES_SIZE
    for i in range(n):
        examples.append({
            "image_id": f"city_{i:06d}_000019",
            "image_left": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "segmentation_label": rng.choice(valid_ids, (h, w, 1)),
        })
    return examples


def test_invalid_stored_values_name_the_example(tmp_path):
    rng = np.random.default_rng(2)
    pets = _pet_arrays(rng, 2)
    pets[1]["segmentation_mask"][0, 0] = 7
    cities = _cityscapes_examples(rng, 2)
    cities[1]["segmentation_label"][0, 0] = 40
    with tfds.testing.mock_data(as_data_source_fn=_mock_source({"train": pets}),
                                data_dir=str(tmp_path)):
        source, _ = datasets.get_dataset(_quick(oxford_pet_config).data, "train")
        assert source[0]["label"].shape == pets[0]["image"].shape[:2]
        with pytest.raises(TfdsDataError, match=r"oxford_iiit_pet example 1: trimap values \[7\]"):
            source[1]
    with tfds.testing.mock_data(as_data_source_fn=_mock_source({"train": cities}),
                                data_dir=str(tmp_path)):
        source, _ = datasets.get_dataset(_quick(cityscapes_config).data, "train")
        with pytest.raises(TfdsDataError, match=r"cityscapes example 1: label id values \[40\]"):
            source[1]


# --- End to end: source -> two training steps -> evaluation -------------------------------------

def test_pets_train_and_evaluate(pet_data_dir, tmp_path):
    config = _quick(oxford_pet_config, data_dir=pet_data_dir)
    results = _train_and_check(config, tmp_path / "run")
    assert set(results["per_class_iou"]) == {"background", "pet"}
    assert results["num_examples"] == 4


def test_scene_parse150_train_and_evaluate(ade_data_dir, tmp_path):
    config = _quick(ade20k_config, data_dir=ade_data_dir)
    assert config.evaluation.mode == "sliding"
    results = _train_and_check(config, tmp_path / "run")
    assert results["num_examples"] == 4 and results["split"] == "test"


def test_cityscapes_train_and_evaluate(tmp_path):
    rng = np.random.default_rng(3)
    splits = {"train": _cityscapes_examples(rng, 4), "validation": _cityscapes_examples(rng, 4)}
    config = _quick(cityscapes_config, data_dir=str(tmp_path / "tfds"))
    assert config.evaluation.mode == "sliding"
    with tfds.testing.mock_data(as_data_source_fn=_mock_source(splits),
                                data_dir=str(tmp_path / "tfds")):
        results = _train_and_check(config, tmp_path / "run")
    assert len(results["per_class_iou"]) == 19 and results["num_examples"] == 4
