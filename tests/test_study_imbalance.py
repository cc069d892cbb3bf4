"""The imbalance and Tversky studies: their sweeps, the `shapes_rare` variant, the baselines that
train nothing, and the report steps on fabricated runs (the quick modes run in
tests/test_studies_quick.py)."""

import numpy as np
import pytest

import study_runs
from experiments.studies import driver, imbalance, report, tversky
from seg_jax import sweep
from seg_jax.data import datasets, shapes, shapes_rare, shapes_render


# --- The sweeps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module, arms", [(imbalance, 18), (tversky, 5)])
def test_sweeps_fit_their_config_seed_major(module, arms):
    points = sweep.resolve(driver.config_arg(module.__file__, quick=False))
    assert len(points) == arms * len(driver.SEEDS)
    # Seed-major: a study stopped early has every arm at seed 0 first.
    assert [p.overrides["seed"] for p in points[:arms]] == [0] * arms
    quick = sweep.resolve(driver.config_arg(module.__file__, quick=True))
    assert len(quick) == arms


def test_tversky_arms_pair_alpha_with_one_minus_beta():
    points = tversky.get_sweep()[:5]
    assert [(p["loss.tversky.alpha"], p["loss.tversky.beta"]) for p in points] == [
        (0.5, 0.5), (0.4, 0.6), (0.3, 0.7), (0.2, 0.8), (0.1, 0.9)]


# --- shapes_rare --------------------------------------------------------------------------------


def test_shapes_rare_draws_bar_ten_times_less_and_the_rest_in_proportion():
    probs = shapes_rare.THING_PROBS
    bar = shapes_render.THING_CLASSES.index(shapes_render.BAR)
    assert probs.sum() == pytest.approx(1.0)
    assert probs[bar] == pytest.approx(shapes_render.THING_PROBS[bar] / 10)
    others = np.delete(probs, bar) / np.delete(shapes_render.THING_PROBS, bar)
    np.testing.assert_allclose(others, others[0])  # the same factor for every other class


def test_shapes_rare_images_hold_bars_far_less_often():
    def with_bar(render):
        return sum((render("train", i)["semantic"] == shapes_render.BAR).any() for i in range(80))

    rare, common = with_bar(shapes_rare.render_split_example), with_bar(shapes.render_split_example)
    assert common >= 15 and rare <= common / 4
    # Rendering is a pure function of (split, index).
    a, b = (shapes_rare.render_split_example("validation", 3) for _ in range(2))
    np.testing.assert_array_equal(a["image"], b["image"])


def test_shapes_rare_is_registered_with_the_shapes_classes():
    class DataConfig:
        name, data_dir, ignore_label = "shapes_rare", None, None

    loader = datasets._loader("shapes_rare")
    assert loader is shapes_rare.shapes_rare
    info = shapes.dataset_info("shapes_rare", 255)
    assert info.class_names == tuple(shapes_render.CLASS_NAMES) and info.name == "shapes_rare"


# --- The baselines ------------------------------------------------------------------------------


def test_baselines_golden(monkeypatch):
    # Two 2 x 3 label maps over shapes' 7 classes; 255 is void. Class counts: sky 3, ground 4,
    # disc 1, bar 2 (10 valid pixels), so `ground` is the majority class.
    labels = [np.array([[0, 0, 1], [1, 6, 255]]), np.array([[1, 1, 6], [2, 0, 255]])]
    info = shapes.dataset_info("shapes", 255)
    monkeypatch.setattr(datasets, "get_dataset",
                        lambda data_config, split: ([{"label": x} for x in labels], info))
    scores = imbalance.baseline_scores("shapes", None, "validation")
    everywhere, oracle = scores.values()
    assert everywhere["pixel_accuracy"] == pytest.approx(4 / 10)
    # Ground everywhere: IoU of ground 4/10, every other present class 0; absent classes
    # (square, triangle, ring) are left out of the mean: (0.4 + 0 + 0 + 0) / 4.
    assert everywhere["mean_iou"] == pytest.approx(0.1)
    assert everywhere["per_class_recall/bar"] == 0.0
    assert oracle["pixel_accuracy"] == pytest.approx(8 / 10)
    # Oracle: bar's 2 pixels predicted ground: ground IoU 4/6, sky 1, disc 1, bar 0.
    assert oracle["mean_iou"] == pytest.approx((4 / 6 + 1 + 1 + 0) / 4)
    assert np.isnan(oracle["per_class_precision/bar"])  # never predicted
    assert oracle["rare_share"] == pytest.approx(2 / 10)


# --- The reports --------------------------------------------------------------------------------


def _args(tmp_path, quick=False):
    return driver.StudyArgs(name="x", quick=quick, out=str(tmp_path / "out"),
                            workdir=str(tmp_path / "runs"), data_dir=None, parallel=1,
                            report_only=True, command="python -m experiments.studies.x")


def _scores(bar_iou, miou=0.8, recall=0.5, precision=0.5):
    return {"mean_iou": miou, "pixel_accuracy": 0.97,
            "per_class_iou": {"bar": bar_iou}, "per_class_recall": {"bar": recall},
            "per_class_precision": {"bar": precision}}


def test_imbalance_report_compares_each_loss_with_cross_entropy(tmp_path, monkeypatch):
    bar_iou = {("shapes", "cross_entropy"): [0.50, 0.52, 0.54], ("shapes", "dice"): [0.60, 0.61, 0.62],
               ("shapes_rare", "cross_entropy"): [0.20, 0.30, 0.40],
               ("shapes_rare", "dice"): [0.25, 0.35, 0.45]}
    overrides = [{"seed": s, "data.name": d, "loss.name": loss}
                 for s in range(3) for d, loss in bar_iou]
    study_runs.fabricate_study(
        tmp_path / "runs", overrides,
        lambda p: _scores(bar_iou[p.overrides["data.name"], p.overrides["loss.name"]][
            p.overrides["seed"]]))
    monkeypatch.setattr(imbalance, "baseline_scores", lambda d, data_dir, split: {
        "`ground` everywhere": {**{m.path: 0.0 for m in imbalance.METRICS},
                                "pixel_accuracy": 0.5, "rare_share": 0.01}})
    args = _args(tmp_path)
    imbalance.make_report(report.load_runs(args.workdir), args, 1.0)
    page = (tmp_path / "out" / "imbalance.md").read_text()
    assert "| shapes: dice | " in page and "| shapes_rare: cross_entropy | " in page
    # bar IoU 0.61 vs 0.52 (std 0.02, 0.01): +9.00 points; on shapes_rare +5.00, within the
    # seeds' std of 0.10.
    assert "| dice | +9.00 | +5.00 (within noise) |" in page
    assert "| cross_entropy (class_weights=median_frequency) | no results | no results |" in page
    assert "| `shapes` | `ground` everywhere | 1.000% |" in page
    assert (tmp_path / "out" / "imbalance.png").stat().st_size > 0


def test_monotone():
    assert tversky.monotone([0.1, 0.2, 0.3], +1) is True
    assert tversky.monotone([0.1, 0.3, 0.2], +1) is False
    assert tversky.monotone([0.3, 0.2, 0.1], -1) is True
    assert tversky.monotone([0.3, None, 0.1], -1) is None


def _plus(value, jitter):
    return None if value is None else value + jitter


def _tversky_study(tmp_path, recall, precision):
    overrides = [{"seed": s, "loss.tversky.beta": b, "loss.tversky.alpha": round(1 - b, 10)}
                 for s in range(3) for b in tversky.BETAS]
    jitter = {0: -0.01, 1: 0.0, 2: 0.01}
    study_runs.fabricate_study(tmp_path / "runs", overrides, lambda p: _scores(
        0.5, recall=recall[tversky.BETAS.index(p.overrides["loss.tversky.beta"])]
        + jitter[p.overrides["seed"]],
        precision=_plus(precision[tversky.BETAS.index(p.overrides["loss.tversky.beta"])],
                        jitter[p.overrides["seed"]])))
    args = _args(tmp_path)
    tversky.make_report(report.load_runs(args.workdir), args, 1.0)
    return (tmp_path / "out" / "tversky.md").read_text()


def test_tversky_verdict_holds_when_recall_rises_and_precision_falls(tmp_path):
    page = _tversky_study(tmp_path, [0.5, 0.6, 0.7, 0.8, 0.9], [0.9, 0.8, 0.7, 0.6, 0.5])
    assert "**holds**" in page
    assert "50.00% to 90.00% (+40.00 points; the larger seed std of the two ends is 1.00)" in page


def test_tversky_verdict_is_mixed_or_fails_as_the_numbers_say(tmp_path):
    page = _tversky_study(tmp_path, [0.5, 0.6, 0.55, 0.8, 0.9], [0.9, 0.8, 0.7, 0.6, 0.5])
    assert "**mixed**" in page and "not monotone" in page
    page = _tversky_study(tmp_path / "b", [0.5] * 5, [0.5] * 5)
    assert "**does not hold**" in page


def test_tversky_arms_that_predict_no_rare_pixel_are_results_not_missing_runs(tmp_path):
    # Finished runs whose models never predict `bar`: recall 0, precision 0 / 0 (no value).
    page = _tversky_study(tmp_path, [0.86, 0.85, 0.84, 0.0, 0.0],
                          [0.72, 0.68, 0.61, None, None])
    assert "undefined at beta 0.8, 0.9, whose models predict no `bar` pixel" in page
    assert "**does not hold**" in page

