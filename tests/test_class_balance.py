"""Class weights computed from the training split (seg_jax.data.class_balance): the two schemes
against plain numpy on `shapes` and against hand-worked values, the workdir cache, the loss they
build, and the config checks."""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from ml_collections import config_dict

from configs import default as default_config
from configs import shapes as shapes_config
from seg_jax import losses, objectives, sharding
from seg_jax.data import class_balance, datasets
from seg_jax.validation import ConfigError, validate_config

VOID = 255
# Three 2x4 images of 4 classes (class 3 never appears), blown up 8x8 so that they can also be
# augmented; every count below is the hand count times SCALE.
SCALE = 64
TINY_LABELS = (
    [0, 0, 0, 0, 0, 0, 1, 1],              # 6 x c0, 2 x c1: 8 labelled pixels
    [0, 0, 2, 2, 2, 2, VOID, VOID],        # 2 x c0, 4 x c2: 6
    [1, 1, 2, 2, VOID, VOID, VOID, VOID],  # 2 x c1, 2 x c2: 4
)
TINY_COUNTS = np.array([[6, 2, 0, 0], [2, 0, 4, 0], [0, 2, 2, 0]]) * SCALE
TINY_NAMES = ("a", "b", "c", "never")


def tiny_source():
    source = []
    for i, flat in enumerate(TINY_LABELS):
        label = np.kron(np.array(flat, np.uint8).reshape(2, 4), np.ones((8, 8), np.uint8))
        image = np.full(label.shape + (3,), 40 * i, np.uint8)
        source.append({"image": image, "label": label})
    return source


# --- the schemes on hand-worked values ------------------------------------------------------------


def test_counts_of_the_tiny_source():
    counts = class_balance.class_pixel_counts(tiny_source(), 4, VOID)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, TINY_COUNTS)


def test_median_frequency_by_hand(caplog):
    # freq(c) = pixels of c / labelled pixels of the images holding c:
    #   c0: 8 / (8 + 6) = 4/7, c1: 4 / (8 + 4) = 1/3, c2: 6 / (6 + 4) = 3/5; c3 absent.
    # median {1/3, 4/7, 3/5} = 4/7 (c3 is left out of it), w_c = (4/7) / freq(c).
    with caplog.at_level("WARNING"):
        weights = class_balance.class_weights(TINY_COUNTS, "median_frequency", TINY_NAMES)
    assert weights.dtype == np.float32 and weights.shape == (4,)
    np.testing.assert_allclose(weights, [1.0, 12 / 7, 20 / 21, 0.0], rtol=1e-6)
    assert "3 (never) has no pixel" in caplog.text


def test_inverse_sqrt_frequency_by_hand():
    # f = (8, 4, 6, 0) / 18 = (4/9, 2/9, 1/3, 0); w_c = 1 / (sqrt(f_c) * S), S = sum sqrt(f_c),
    # so that sum_c f_c w_c = 1.
    s = 2 / 3 + math.sqrt(2) / 3 + 1 / math.sqrt(3)
    weights = class_balance.class_weights(TINY_COUNTS, "inverse_sqrt_frequency")
    np.testing.assert_allclose(weights, [1.5 / s, 3 / (math.sqrt(2) * s), math.sqrt(3) / s, 0.0],
                               rtol=1e-6)
    freq = TINY_COUNTS.sum(0) / TINY_COUNTS.sum()
    assert float(np.sum(freq * weights)) == pytest.approx(1.0, rel=1e-6)


def test_rare_class_distribution_by_hand():
    # min_pixels = 3 (x SCALE): c0 only in image 0 (6), c2 only in image 1 (4); c1 (2 + 2) and
    # c3 nowhere, so P = 0. P over {c0, c2} = softmax((1 - 4/9) / T, (1 - 1/3) / T) with T = 1.
    probs, images = class_balance.rare_class_distribution(TINY_COUNTS, 1.0, 3 * SCALE)
    p0 = math.exp(5 / 9) / (math.exp(5 / 9) + math.exp(2 / 3))
    np.testing.assert_allclose(probs, [p0, 0.0, 1 - p0, 0.0], rtol=1e-12)
    assert [list(i) for i in images] == [[0], [], [1], []]
    sampler = class_balance.RareClassSampler(TINY_COUNTS, 1.0, 3 * SCALE)
    # images(c0) and images(c2) do not overlap: a drawn example holds c0 exactly when c0 is drawn.
    assert sampler.expected_share(0) == pytest.approx(p0)
    assert sampler.expected_share(2) == pytest.approx(1 - p0)
    # A tiny temperature still gives finite probabilities (the softmax subtracts its maximum).
    probs, _ = class_balance.rare_class_distribution(TINY_COUNTS, 1e-6, 1)
    np.testing.assert_array_equal(probs, [0.0, 1.0, 0.0, 0.0])


def test_bad_input():
    with pytest.raises(ValueError, match=r"'median'.*'median_frequency', 'inverse_sqrt_frequency'"):
        class_balance.class_weights(TINY_COUNTS, "median")
    assert class_balance.SCHEMES == ("median_frequency", "inverse_sqrt_frequency")
    with pytest.raises(ValueError, match="no labelled"):
        class_balance.class_weights(np.zeros((2, 3), np.int64), "median_frequency")
    bad = tiny_source()
    bad[1]["label"][0, 0] = 7
    with pytest.raises(ValueError, match=r"training example 1: label ids \[7\] are outside"):
        class_balance.class_pixel_counts(bad, 4, VOID)


def test_summary_lines():
    sampler = class_balance.RareClassSampler(TINY_COUNTS, 1.0, 1)
    weights = class_balance.class_weights(TINY_COUNTS, "median_frequency")
    text = class_balance.format_summary(TINY_COUNTS, TINY_NAMES, weights=weights, sampler=sampler)
    lines = text.splitlines()
    assert len(lines) == 5 and "3 examples" in lines[0]
    assert "never" in lines[4] and "images 0/3" in lines[4] and "weight 0" in lines[4]
    assert "pixels  44.44%" in lines[1] and "sampling P" in lines[1]


# --- the schemes on shapes, against an independent numpy computation ------------------------------


@pytest.fixture(scope="module")
def shapes_train(shapes_data_dir):
    config = shapes_config.get_config("quick")
    config.data.data_dir = shapes_data_dir
    source, info = datasets.get_dataset(config.data, "train")
    return source, info


def _numpy_weights(source, num_classes):
    """Both schemes written out from the raw labels, one example at a time."""
    pixels = np.zeros(num_classes)
    pixels_of_images_with = np.zeros(num_classes)
    for i in range(len(source)):
        label = np.asarray(source[i]["label"]).ravel()
        hist = np.bincount(label[label != VOID], minlength=num_classes)
        pixels += hist
        pixels_of_images_with += (hist > 0) * hist.sum()
    freq = pixels / pixels_of_images_with
    median = np.median(freq)
    f = pixels / pixels.sum()
    inv_sqrt = 1 / np.sqrt(f)
    inv_sqrt = inv_sqrt / np.sum(f * inv_sqrt)
    return median / freq, inv_sqrt


def test_shapes_weights_match_numpy(shapes_train):
    source, info = shapes_train
    counts = class_balance.class_pixel_counts(source, info.num_classes, info.ignore_label)
    assert counts.shape == (len(source), 7) and counts.sum() == len(source) * 128 * 128
    median, inv_sqrt = _numpy_weights(source, info.num_classes)
    np.testing.assert_allclose(
        class_balance.class_weights(counts, "median_frequency"), median, rtol=1e-5)
    np.testing.assert_allclose(
        class_balance.class_weights(counts, "inverse_sqrt_frequency"), inv_sqrt, rtol=1e-5)
    # bar, the rare class, weighs most under both.
    assert np.argmax(median) == np.argmax(inv_sqrt) == info.class_names.index("bar")


# --- the cache in the workdir ---------------------------------------------------------------------


KEY = dict(dataset="tiny", split="train", num_classes=4, ignore_label=VOID)


def test_cache_is_read_back_and_recomputed_when_its_key_differs(tmp_path, monkeypatch, caplog):
    source = tiny_source()
    counts = class_balance.load_or_compute_counts(str(tmp_path), source, **KEY)
    np.testing.assert_array_equal(counts, TINY_COUNTS)
    path = tmp_path / class_balance.COUNTS_FILE
    assert sorted(os.listdir(tmp_path)) == [class_balance.COUNTS_FILE]  # no temporary left
    with np.load(path) as stored:  # complete: counts and key
        np.testing.assert_array_equal(stored["counts"], TINY_COUNTS)
        assert json.loads(str(stored["key"])) == dict(KEY, num_examples=3)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    real = class_balance.class_pixel_counts
    monkeypatch.setattr(class_balance, "class_pixel_counts", fail)
    np.testing.assert_array_equal(
        class_balance.load_or_compute_counts(str(tmp_path), source, **KEY), TINY_COUNTS)

    calls = []
    monkeypatch.setattr(class_balance, "class_pixel_counts",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    with caplog.at_level("INFO"):
        counts = class_balance.load_or_compute_counts(str(tmp_path), source[:2],
                                                      **dict(KEY, split="train[:2]"))
    assert len(calls) == 1 and counts.shape == (2, 4)
    assert "split 'train' -> 'train[:2]'" in caplog.text
    assert "num_examples 3 -> 2" in caplog.text
    with np.load(path) as stored:
        assert json.loads(str(stored["key"]))["split"] == "train[:2]"

    # A damaged file is recomputed, not trusted.
    path.write_bytes(b"not a zip")
    np.testing.assert_array_equal(
        class_balance.load_or_compute_counts(str(tmp_path), source, **KEY), TINY_COUNTS)
    assert len(calls) == 2


def test_only_process_zero_writes_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    counts = class_balance.load_or_compute_counts(str(tmp_path), tiny_source(), **KEY)
    np.testing.assert_array_equal(counts, TINY_COUNTS)
    assert os.listdir(tmp_path) == []


def test_dataset_id():
    config = default_config.get_config()
    assert class_balance.dataset_id(config.data) == "shapes"
    config.data.name, config.data.root = "folder", "/data/mine"
    assert class_balance.dataset_id(config.data) == "folder:/data/mine"


# --- the loss -------------------------------------------------------------------------------------

INFO = datasets.DatasetInfo(name="tiny", class_names=TINY_NAMES, ignore_label=VOID)


def _loss_config(name="cross_entropy", **class_weights):
    config = default_config.get_config()
    config.data.ignore_label = VOID
    config.loss.name = name
    for term, value in class_weights.items():
        if term == "cross_entropy":  # the one term whose class_weights may be a scheme name
            config.loss[term].class_weights = value
        else:  # the others' fields are typed tuples in configs/default.py: retype for the test
            options = config.loss[term].to_dict()
            options["class_weights"] = config_dict.FieldReference(value, field_type=object)
            with config.unlocked():
                config.loss[term] = ml_collections.ConfigDict(options)
    return config


def _batch():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 6, 4)), jnp.float32)
    labels = rng.integers(0, 4, size=(2, 5, 6))
    labels[0, 0, :3] = VOID
    return logits, jnp.asarray(labels, jnp.int32)


def test_semantic_loss_with_a_scheme_is_cross_entropy_with_those_weights():
    logits, labels = _batch()
    config = _loss_config(cross_entropy="median_frequency")
    loss = objectives.semantic_loss(config, INFO, class_counts=TINY_COUNTS)
    weights = (1.0, 12 / 7, 20 / 21, 0.0)
    expected = losses.cross_entropy(logits, labels, ignore_label=VOID, class_weights=weights)
    assert float(loss(logits, labels)) == pytest.approx(float(expected), rel=1e-6)
    assert float(jax.jit(loss)(logits, labels)) == pytest.approx(float(expected), rel=1e-5)
    # Several terms: each scheme is resolved in its own term.
    config = _loss_config("cross_entropy+dice", cross_entropy="median_frequency",
                          dice="inverse_sqrt_frequency")
    loss = objectives.semantic_loss(config, INFO, class_counts=TINY_COUNTS)
    dice_weights = class_balance.class_weights(TINY_COUNTS, "inverse_sqrt_frequency")
    expected = expected + losses.dice_loss(logits, labels, ignore_label=VOID,
                                           class_weights=dice_weights)
    assert float(loss(logits, labels)) == pytest.approx(float(expected), rel=1e-5)
    # Explicit weights and none work as before, without counts.
    plain = objectives.semantic_loss(_loss_config(), INFO)
    assert float(plain(logits, labels)) == pytest.approx(
        float(losses.cross_entropy(logits, labels, ignore_label=VOID)), rel=1e-6)


def test_a_scheme_needs_the_counts():
    config = _loss_config(cross_entropy="median_frequency")
    with pytest.raises(ValueError, match=r"cross_entropy.class_weights='median_frequency' needs "
                                         r"the training split's class pixel counts"):
        objectives.semantic_loss(config, INFO)
    with pytest.raises(ValueError, match=r"computed from the training split by seg_jax.train"):
        losses.get_loss(config.loss)
    with pytest.raises(ValueError, match=r"class_counts has shape \(3, 3\)"):
        objectives.semantic_loss(config, INFO, class_counts=TINY_COUNTS[:, :3])


def test_needs_class_counts():
    assert not objectives.needs_class_counts(_loss_config())
    assert not objectives.needs_class_counts(_loss_config(cross_entropy=(1.0, 2.0, 1.0, 1.0)))
    config = _loss_config("cross_entropy+dice", dice="median_frequency")
    assert objectives.needs_class_counts(config)
    assert not objectives.needs_class_counts(config, config_loss=False)
    # A scheme in a term that config.loss.name does not use is not read.
    assert not objectives.needs_class_counts(_loss_config(dice="median_frequency"))
    config = _loss_config()
    config.data.rare_class_sampling.temperature = 0.01
    assert objectives.needs_class_counts(config, config_loss=False)


def test_registry_weighted_loss_is_get_loss():
    logits, labels = _batch()
    config = _loss_config("cross_entropy+dice")
    terms = losses.registry.loss_terms(config.loss)
    got = losses.registry.weighted_loss(terms, VOID)(logits, labels)
    assert float(got) == pytest.approx(float(losses.get_loss(config.loss)(logits, labels)))
    with pytest.raises(ValueError, match="ignore_label is None"):
        losses.registry.weighted_loss(terms, None)


# --- config checks --------------------------------------------------------------------------------


VALIDATION_INFO = datasets.DatasetInfo(name="toy", class_names=("sky", "disc", "bar"),
                                       ignore_label=VOID, thing_classes=(1, 2),
                                       stuff_classes=(0,))


@pytest.fixture
def train_config():
    return datasets.with_dataset_info(shapes_config.get_config(), VALIDATION_INFO)


@pytest.fixture
def mesh():
    return sharding.create_mesh(jax.devices()[:1])


def test_validation_accepts_schemes_and_tuples(train_config, mesh):
    for value in ("median_frequency", "inverse_sqrt_frequency", (1.0, 2.0, 0.5), ()):
        train_config.loss.cross_entropy.class_weights = value
        validate_config(train_config, VALIDATION_INFO, mesh, mode="train")
    train_config.data.rare_class_sampling.temperature = 0.01
    train_config.data.rare_class_sampling.min_pixels = 100
    validate_config(train_config, VALIDATION_INFO, mesh, mode="train")


def test_validation_reports_each_class_balance_problem(train_config, mesh):
    train_config.loss.cross_entropy.class_weights = "median_freq"
    train_config.data.rare_class_sampling.temperature = -1.0
    train_config.data.rare_class_sampling.min_pixels = 0
    with pytest.raises(ConfigError) as error:
        validate_config(train_config, VALIDATION_INFO, mesh, mode="train")
    message = str(error.value)
    assert message.startswith("The config has 2 problems:")
    assert ("config.loss.cross_entropy.class_weights='median_freq' is not a class weight "
            "scheme; choose one of ['median_frequency', 'inverse_sqrt_frequency']") in message
    assert "config.data.rare_class_sampling.temperature=-1.0 must be >= 0" in message
    assert "config.data.rare_class_sampling.min_pixels=0 must be an integer >= 1" in message
    # Evaluation does not train: none of these matter there.
    validate_config(train_config, VALIDATION_INFO, mesh, mode="eval")


def test_validation_rejects_a_tuple_of_the_wrong_length(train_config, mesh):
    train_config.loss.name = "cross_entropy+dice"
    train_config.loss.dice.class_weights = (1.0, 2.0)
    with pytest.raises(ConfigError, match=r"config.loss.dice.class_weights=\(1.0, 2.0\) has shape "
                                          r"\(2,\) but the dataset has 3 classes; give one float"):
        validate_config(train_config, VALIDATION_INFO, mesh, mode="train")
    # Not checked when a loss_fn replaces the config's loss.
    validate_config(train_config, VALIDATION_INFO, mesh, mode="train", config_loss=False)
