"""DAFormer's rare-class sampling in the training stream (TrainLoader with
config.data.rare_class_sampling.temperature > 0): the share of drawn examples holding the rare
class `bar` of `shapes` is the predicted one, the stream stays a pure function of (seed, step,
position), and the checkpointed data state records the sampling mode."""

import math

import numpy as np
import pytest

from seg_jax.data import class_balance, datasets, pipeline

BAR = 6  # shapes' rare class
BATCH = 8
STEPS = 1000
DRAWS = BATCH * STEPS
SIGMAS = 4.5  # binomial tolerance: a correct sampler fails about once in 150,000 runs


@pytest.fixture(scope="module")
def shapes_train(shapes_data_dir):
    """The shapes train split and its per-example class pixel counts, computed once."""
    from configs import shapes as shapes_config

    config = shapes_config.get_config("quick")
    config.data.data_dir = shapes_data_dir
    source, info = datasets.get_dataset(config.data, "train")
    counts = class_balance.class_pixel_counts(source, info.num_classes, info.ignore_label)
    return source, info, counts


def _loader(source, data_config, counts, temperature, *, min_pixels=1, seed=0, process_index=0,
            process_count=1):
    data_config.rare_class_sampling.temperature = temperature
    data_config.rare_class_sampling.min_pixels = min_pixels
    return pipeline.TrainLoader(
        source, data_config, global_batch_size=BATCH, seed=seed, num_classes=counts.shape[1],
        process_index=process_index, process_count=process_count, class_counts=counts)


def _drawn(loader, steps=STEPS):
    return np.array([loader.example_index(s, p) for s in range(steps) for p in range(BATCH)])


def _tolerance(p, n=DRAWS):
    return SIGMAS * math.sqrt(p * (1 - p) / n)


def test_rare_class_sampling_draws_bar_as_often_as_predicted(shapes_train, quick_config):
    source, info, counts = shapes_train
    assert info.class_names[BAR] == "bar"
    has_bar = counts[:, BAR] >= 1
    loader = _loader(source, quick_config.data, counts, 0.01)
    sampler = loader.sampler
    predicted = sampler.expected_share(BAR)
    share = has_bar[_drawn(loader)].mean()
    assert abs(share - predicted) < _tolerance(predicted), (share, predicted)

    # The shuffled epochs: 1,000 batches of 8 are exactly 4 epochs of the 2,000 examples, so the
    # share is the split's own, the base the sampler's prediction divides.
    shuffled = _loader(source, quick_config.data, counts, 0.0)
    assert shuffled.sampler is None
    base = has_bar[_drawn(shuffled)].mean()
    assert base == pytest.approx(has_bar.mean()) == pytest.approx(sampler.uniform_shares()[BAR])
    factor = predicted / base
    assert factor > 2  # on shapes at T = 0.01, bar is drawn first about 4 times in 5
    assert share / base == pytest.approx(factor, abs=_tolerance(predicted) / base)


def test_each_class_is_drawn_with_its_softmax_probability():
    # Every image holds one class only, so the class of a drawn image is the class drawn first.
    sizes = np.array([400, 50, 30, 20])  # images per class; each image holds 100 pixels
    counts = np.zeros((sizes.sum(), 4), np.int64)
    counts[np.arange(sizes.sum()), np.repeat(np.arange(4), sizes)] = 100
    temperature = 0.2
    sampler = class_balance.RareClassSampler(counts, temperature, 1)
    freq = sizes / sizes.sum()
    softmax = np.exp((1 - freq) / temperature)
    np.testing.assert_allclose(sampler.class_probs, softmax / softmax.sum(), rtol=1e-12)
    rng = np.random.default_rng(0)
    drawn = np.array([sampler.example_index(rng) for _ in range(DRAWS)])
    classes = np.repeat(np.arange(4), sizes)[drawn]
    for c in range(4):
        p = sampler.class_probs[c]
        assert abs(np.mean(classes == c) - p) < _tolerance(p)
    # Inside a class the images are drawn uniformly: every one of class 3's 20 images shows up.
    assert len(set(drawn[classes == 3])) == 20


def test_a_large_temperature_draws_classes_uniformly(shapes_train, quick_config):
    source, _, counts = shapes_train
    loader = _loader(source, quick_config.data, counts, 1e9)
    np.testing.assert_allclose(loader.sampler.class_probs, np.full(7, 1 / 7), rtol=1e-6)
    # Uniform classes: the share of bar is the mean over classes c of the fraction of c's images
    # that also hold bar.
    present = counts >= 1
    uniform = np.mean([present[present[:, c], BAR].mean() for c in range(7)])
    share = present[_drawn(loader, 500), BAR].mean()
    assert abs(share - uniform) < _tolerance(uniform, 500 * BATCH)
    assert loader.sampler.expected_share(BAR) == pytest.approx(uniform, rel=1e-6)


def test_min_pixels_restricts_the_images_of_a_class(shapes_train, quick_config):
    source, _, counts = shapes_train
    min_pixels = 200
    loader = _loader(source, quick_config.data, counts, 0.01, min_pixels=min_pixels)
    for c, images in enumerate(loader.sampler.images_per_class):
        np.testing.assert_array_equal(images, np.flatnonzero(counts[:, c] >= min_pixels))
    drawn = _drawn(loader, 200)
    # Whatever class is drawn first, its image holds at least min_pixels of it.
    assert np.all((counts[drawn] >= min_pixels).any(1))


def test_the_stream_is_a_pure_function_of_seed_step_and_position(shapes_train, quick_config):
    source, _, counts = shapes_train
    whole = _loader(source, quick_config.data, counts, 0.01)
    again = _loader(source, quick_config.data, counts, 0.01)
    steps = [0, 1, 17, 999, 123456]
    assert ([[whole.example_index(s, p) for p in range(BATCH)] for s in steps] ==
            [[again.example_index(s, p) for p in range(BATCH)] for s in reversed(steps)][::-1])
    # Four processes each draw their own positions: together the same global batch.
    parts = [_loader(source, quick_config.data, counts, 0.01, process_index=i, process_count=4)
             for i in range(4)]
    for step in steps:
        global_batch = [whole.example_index(step, p) for p in range(BATCH)]
        per_process = [part.example_index(step, p) for i, part in enumerate(parts)
                       for p in range(i * BATCH // 4, (i + 1) * BATCH // 4)]
        assert per_process == global_batch
    # Another seed, another stream; and not the shuffled epochs' order.
    other = _loader(source, quick_config.data, counts, 0.01, seed=1)
    assert _drawn(other, 20).tolist() != _drawn(whole, 20).tolist()


def test_batches_are_built_from_the_drawn_examples(quick_config):
    # Three images of 4 classes (class 3 never appears), 16x32 pixels each.
    source = []
    for i, flat in enumerate(([0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 2, 2, 2, 2, 255, 255],
                              [1, 1, 2, 2, 255, 255, 255, 255])):
        label = np.kron(np.array(flat, np.uint8).reshape(2, 4), np.ones((8, 8), np.uint8))
        source.append({"image": np.full(label.shape + (3,), 40 * i, np.uint8), "label": label})
    counts = class_balance.class_pixel_counts(source, 4, 255)
    np.testing.assert_array_equal(counts, [[384, 128, 0, 0], [128, 0, 256, 0], [0, 128, 128, 0]])
    config = quick_config.data
    config.rare_class_sampling.temperature = 0.5
    whole = pipeline.TrainLoader(source, config, global_batch_size=4, seed=3, num_classes=4,
                                 class_counts=counts)
    halves = [pipeline.TrainLoader(source, config, global_batch_size=4, seed=3, num_classes=4,
                                   process_index=i, process_count=2, class_counts=counts)
              for i in range(2)]
    for step in (0, 5):
        batch = whole.batch(step)
        assert batch["image"].shape == (4, config.crop_size, config.crop_size, 3)
        parts = [h.batch(step) for h in halves]
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
        # Labels come from the drawn examples: class 3 is in none of them.
        assert not np.any(batch["label"] == 3)
    first = next(whole.iterate(5, 1))
    np.testing.assert_array_equal(first["label"], whole.batch(5)["label"])


def test_data_state_records_the_sampling_mode(shapes_train, quick_config):
    source, _, counts = shapes_train
    shuffled = _loader(source, quick_config.data.copy_and_resolve_references(), counts, 0.0)
    rare = _loader(source, quick_config.data.copy_and_resolve_references(), counts, 0.01,
                   min_pixels=5)
    state = rare.data_state(40)
    assert state["sampling"] == "rare_class"
    assert (state["rare_class_temperature"], state["rare_class_min_pixels"]) == (0.01, 5)
    assert state["examples_seen"] == 40 * BATCH and state["step"] == 40
    assert shuffled.data_state(40)["sampling"] == "shuffled_epochs"
    assert rare.check_resume(state, 40) == []
    assert shuffled.check_resume(shuffled.data_state(40), 40) == []
    assert "sampling shuffled_epochs -> rare_class" in rare.check_resume(
        shuffled.data_state(40), 40)
    assert "sampling rare_class -> shuffled_epochs" in shuffled.check_resume(state, 40)
    hotter = _loader(source, quick_config.data.copy_and_resolve_references(), counts, 0.1,
                     min_pixels=5)
    assert hotter.check_resume(state, 40) == ["rare_class_temperature 0.01 -> 0.1"]
    # A checkpoint from before the mode was recorded was trained on the shuffled epochs.
    old = {k: v for k, v in shuffled.data_state(40).items() if k != "sampling"}
    assert shuffled.check_resume(old, 40) == []
    assert "sampling shuffled_epochs -> rare_class" in rare.check_resume(old, 40)


def test_rare_class_sampling_needs_the_counts(shapes_train, quick_config):
    source, _, counts = shapes_train
    config = quick_config.data
    config.rare_class_sampling.temperature = 0.01
    with pytest.raises(ValueError, match=r"temperature=0.01 needs the training split's class "
                                         r"pixel counts: pass TrainLoader\(\.\.\., class_counts="):
        pipeline.TrainLoader(source, config, global_batch_size=BATCH, seed=0, num_classes=7)
    with pytest.raises(ValueError, match=r"class_counts has shape \(10, 7\), but the training "
                                         r"split has 2000 examples"):
        pipeline.TrainLoader(source, config, global_batch_size=BATCH, seed=0, num_classes=7,
                             class_counts=counts[:10])
    config.rare_class_sampling.temperature = 0.0  # off: the counts are not needed
    pipeline.TrainLoader(source, config, global_batch_size=BATCH, seed=0, num_classes=7)
