"""The boundary study: its degradations against hand-worked and independent results, its
analysis (relative drops, ratios, verdicts) against hand-worked values, and its report step on
fabricated runs whose re-evaluations are already cached (so no model and no dataset is read)."""

import json
import math
import os

import numpy as np
import pytest
from scipy import ndimage

import study_runs
from experiments.studies import boundary, degradations, driver, report
from seg_jax import sweep

# --- Degradations --------------------------------------------------------------------------------


def test_one_hot_leaves_void_pixels_empty():
    labels = np.array([[[0, 2, 255]]])
    np.testing.assert_array_equal(degradations.one_hot(labels, 3)[0, 0],
                                  [[1, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_block_majority_hand_worked_with_ties_and_void():
    labels = np.array([[[1, 0, 1, 1],
                        [0, 1, 1, 255],
                        [2, 2, 255, 255],
                        [2, 3, 255, 3]]])
    # Blocks: {1, 0, 0, 1} a tie -> 0 (lowest id); {1, 1, 1, void} -> 1; {2, 2, 2, 3} -> 2;
    # {void, void, void, 3} -> 3 (void never votes).
    np.testing.assert_array_equal(degradations.block_majority(labels, 4, 2), [[[0, 1], [2, 3]]])
    with pytest.raises(ValueError, match="stride 3"):
        degradations.block_majority(labels, 4, 3)


@pytest.mark.parametrize("shape_in, shape_out", [((4, 4), (32, 32)), ((5, 3), (13, 7))])
def test_bilinear_upsampling_matches_the_models_resize(shape_in, shape_out):
    from seg_jax.models.layers import resize_bilinear

    x = np.random.default_rng(0).normal(size=(2, *shape_in, 3)).astype(np.float32)
    np.testing.assert_allclose(degradations.upsample_bilinear(x, *shape_out),
                               np.asarray(resize_bilinear(x, *shape_out)), atol=1e-5)


def test_strided_labels_at_stride_two_repeat_the_block_majority():
    # Upsampling x2 with half-pixel centres weighs a pixel's own block 0.75 and a neighbour
    # 0.25 (per axis), so the argmax keeps the own block: nearest-neighbour replication.
    labels = np.random.default_rng(1).integers(0, 4, size=(2, 8, 8))
    majority = degradations.block_majority(labels, 4, 2)
    expected = majority.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(degradations.strided_labels(labels, 4, 2), expected)
    np.testing.assert_array_equal(degradations.strided_labels(labels, 4, 1), labels)


def test_blur_keeps_a_straight_edge_and_removes_a_one_pixel_line():
    labels = np.zeros((1, 32, 32), np.int32)
    labels[:, :, 16:] = 1  # a straight vertical edge: a symmetric blur leaves it in place
    np.testing.assert_array_equal(degradations.blur_labels(labels, 3, 3.0), labels)
    np.testing.assert_array_equal(degradations.blur_labels(labels, 3, 0), labels)
    labels[:, :, 8] = 2  # a line 1 px wide: at sigma 2 its peak is about 1 / (2.5 * 2) < 0.5
    blurred = degradations.blur_labels(labels, 3, 2.0)
    assert not (blurred == 2).any() and (blurred[:, :, 16:] == 1).all()


def test_pooled_probabilities_at_stride_one_is_the_argmax():
    probs = np.random.default_rng(2).dirichlet(np.ones(5), size=(2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(degradations.pooled_probabilities(probs, 1),
                                  probs.argmax(-1))
    with pytest.raises(ValueError, match="sigma"):
        degradations.gaussian_blur(probs, -1)


def _disk(k):
    y, x = np.mgrid[-k:k + 1, -k:k + 1]
    return y * y + x * x <= k * k


@pytest.mark.parametrize("k", [1, 2, 3])
def test_morphology_of_one_thing_equals_scipys_with_a_disk(k):
    rng = np.random.default_rng(k)
    mask = ndimage.binary_opening(rng.random((40, 40)) < 0.6, iterations=2)
    mask[:, :5] = False  # stuff on the left, and the thing touches the top and bottom edges
    labels = np.where(mask, 2, 0)[None]
    instances = mask.astype(np.int32)[None]
    dilated = degradations.morph_things(labels, instances, k)[0]
    np.testing.assert_array_equal(dilated == 2,
                                  ndimage.binary_dilation(mask, structure=_disk(k)))
    eroded = degradations.morph_things(labels, instances, -k)[0]
    # border_value=1: the frame is not background, so a thing is not eroded from it.
    np.testing.assert_array_equal(eroded == 2, ndimage.binary_erosion(
        mask, structure=_disk(k), border_value=1))
    assert set(np.unique(eroded)) <= {0, 2}


def test_morphology_conflicts_hand_worked():
    # One row: stuff 0 | thing 1 (class 2) | thing 2 (class 3, drawn later, in front) | stuff 1.
    labels = np.array([[[0, 0, 2, 2, 2, 3, 3, 3, 1, 1]]])
    instances = np.array([[[0, 0, 1, 1, 1, 2, 2, 2, 0, 0]]])
    # Dilation by 1: thing 1 grows onto columns 1 and 5; thing 2, in front, keeps 5 and grows
    # onto 4 and 8.
    np.testing.assert_array_equal(degradations.morph_things(labels, instances, 1),
                                  [[[0, 2, 2, 2, 3, 3, 3, 3, 3, 1]]])
    # Erosion by 1: each thing loses its outer pixels, against stuff and against the other
    # thing alike, and they show the nearest stuff pixel: column 4 is 3 px from column 1 and 4
    # px from column 8, column 5 the other way round.
    np.testing.assert_array_equal(degradations.morph_things(labels, instances, -1),
                                  [[[0, 0, 0, 2, 0, 1, 3, 1, 1, 1]]])
    np.testing.assert_array_equal(degradations.morph_things(labels, instances, 0), labels)


# --- Scores and analysis -----------------------------------------------------------------------


def test_atrous_rates_keep_their_reach_in_input_pixels():
    assert [boundary.atrous_rates(s) for s in boundary.OUTPUT_STRIDES] == [
        (6, 12, 18), (3, 6, 9), (2, 3, 5)]


def test_score_predictions_against_hand_worked_values():
    labels = np.zeros((1, 12, 12), np.int32)
    labels[:, :, 6:] = 1
    shifted = np.zeros_like(labels)
    shifted[:, :, 7:] = 1  # the edge moved one pixel right
    scores = boundary.score_predictions(shifted, labels, num_classes=2, ignore_label=255,
                                        thin_class=1, tolerances=(0, 1))
    # Confusion: class 0 has 72 true pixels, 84 predicted, 72 shared -> IoU 72/84; class 1 has
    # 72 true, 60 predicted, 60 shared -> IoU 60/72.
    assert scores["mean_iou"] == pytest.approx((72 / 84 + 60 / 72) / 2)
    assert scores["thin_iou"] == pytest.approx(60 / 72)
    assert scores["bf@1"] == pytest.approx(1.0)  # every boundary pixel within 1 px
    assert scores["bf@0"] < 1.0


def _curve(miou, bf, level_values=None):
    levels = level_values or list(range(len(miou)))
    return [{"level": lvl, "mean_iou": m, "bf@2": b} for lvl, m, b in zip(levels, miou, bf)]


def test_relative_drops_and_their_ratio_hand_worked():
    curve = _curve([0.8, 0.72, 0.64], [0.5, 0.4, 0.2])
    # mIoU drops 10% and 20%; BF drops 20% and 60%: the ratio of the sums is 0.8 / 0.3.
    np.testing.assert_allclose(boundary.drops(curve, "mean_iou"), [0.1, 0.2])
    np.testing.assert_allclose(boundary.drops(curve, "bf@2"), [0.2, 0.6])
    assert boundary.drop_ratio(curve, "bf@2") == pytest.approx(0.8 / 0.3)
    assert boundary.drop_ratio(_curve([0.8, 0.8], [0.5, 0.4]), "bf@2") == math.inf
    assert boundary.drop_ratio(_curve([0.8, 0.8], [0.5, 0.5]), "bf@2") is None
    assert boundary.relative_drop(0.0, 0.0) is None


def test_first_visible_level():
    curve = _curve([1.0, 0.999, 0.98, 0.9], [1.0, 1.0, 1.0, 0.95], [0, 0.5, 1, 2])
    assert boundary.first_visible([curve], "mean_iou") == 1
    assert boundary.first_visible([curve], "bf@2") == 2
    assert boundary.first_visible([_curve([1.0, 1.0], [1.0, 1.0])], "bf@2") is None


def _family(smoothing=True):
    return boundary.Family("f", "F", "x", (1,), False, smoothing)


def _verdict(ratios, smoothing=True):
    return boundary.FamilyVerdict(_family(smoothing), {t: list(ratios)
                                                        for t in boundary.TOLERANCES})


def test_family_outcomes_need_every_seed_on_one_side():
    assert _verdict([1.2, 1.5]).outcome() == "BF drops more"
    assert _verdict([0.4, 0.9]).outcome() == "mIoU drops more"
    assert _verdict([0.8, 1.2]).outcome() == "mixed over seeds"
    assert _verdict([None]).outcome() == "n/a"


def test_part1_verdict_counts_only_smoothing_families():
    more, less = _verdict([2.0]), _verdict([0.5])
    assert boundary.part1_verdict([more, more, _verdict([0.1], smoothing=False)]) == "holds"
    assert boundary.part1_verdict([less, less]) == "does not hold"
    assert boundary.part1_verdict([more, less]) == "mixed"
    assert boundary.part1_verdict([_verdict([None])]) == "not enough runs"


def test_overall_verdict():
    assert boundary.overall_verdict("holds", "holds") == "holds"
    assert boundary.overall_verdict("holds", "not enough runs") == "holds"
    assert boundary.overall_verdict("not enough runs", "does not hold") == "does not hold"
    assert boundary.overall_verdict("holds", "does not hold") == "mixed"


# --- The report step on fabricated runs ---------------------------------------------------------


SEEDS = (0, 1, 2)
TOL = boundary.VERDICT_TOLERANCE


def _scores(miou, bf):
    """Scores with BF the same at every tolerance (enough for the verdicts)."""
    return {"mean_iou": miou, "thin_iou": 0.5, **{boundary.bf_key(t): bf
                                                  for t in boundary.TOLERANCES}}


def _family_curve(family, miou_drop, bf_drop, base=(0.9, 0.8)):
    """A curve whose mIoU and BF fall linearly with the level index to the given drops."""
    n = len(family.levels)
    points = [{"level": 0, **_scores(*base)}]
    for i, level in enumerate(family.levels, start=1):
        points.append({"level": level, **_scores(base[0] * (1 - miou_drop * i / n),
                                                 base[1] * (1 - bf_drop * i / n))})
    return points


def _fabricate(tmp_path, *, bf_gap, model_bf_drop, truth_bf_drop):
    """A finished study: 3 output strides x 3 seeds with results.json and cached
    re-evaluations, and a cached truth part; mIoU drops 30% over every family, BF by the given
    drops; mIoU loses 10% from OS 8 to OS 32 and BF `bf_gap`."""
    workdir = tmp_path / "w"
    overrides = list(boundary.get_sweep())
    rng = np.random.default_rng(0)

    def stride_scores(p):
        position = boundary.OUTPUT_STRIDES.index(p["model.output_stride"]) / 2
        noise = rng.normal(0, 0.002, 2)
        return (0.8 * (1 - 0.10 * position) + noise[0], 0.7 * (1 - bf_gap * position) + noise[1])

    scores = {}

    def results_of(p):
        miou, bf = scores[p.name] = stride_scores(p.overrides)
        return {"mean_iou": miou, "boundary_f_score": bf, "per_class_iou": {"bar": 0.4},
                "per_class_boundary_f_score": {"bar": 0.5}}

    points = study_runs.fabricate_study(workdir, overrides, results_of)
    args = driver.parse_args(boundary.NAME, ["--workdir", str(workdir), "--out",
                                             str(tmp_path / "out")])
    split = boundary.run_config(args, {}).data.eval_split
    for run in report.load_runs(str(workdir)):
        curves = {}
        if boundary._output_stride(run) == 8:
            curves = {f.key: _family_curve(f, 0.3, model_bf_drop) for f in boundary.FAMILIES
                      if f.on_model}
        value = {"scores": _scores(*scores[run.name]), "curves": curves}
        with open(os.path.join(run.path, boundary.RUN_CACHE), "w") as f:
            json.dump({"key": boundary.run_cache_key(run, split), "value": value}, f)
    truth = {"num_images": 200, "size": [128, 128],
             "curves": {f.key: _family_curve(f, 0.3, truth_bf_drop, base=(1.0, 1.0))
                        for f in boundary.FAMILIES if not f.on_model}}
    with open(workdir / boundary.TRUTH_CACHE, "w") as f:
        json.dump({"key": boundary.truth_cache_key(args, split), "value": truth}, f)
    return args, points


def _page(args, monkeypatch=None):
    """The page make_report writes; with `monkeypatch`, without drawing the figure (drawing
    it, most of a report's time, is tested once)."""
    if monkeypatch is not None:
        monkeypatch.setattr(boundary, "draw_figure", lambda path, *a: open(path, "wb").close())
    boundary.make_report(report.load_runs(args.workdir), args, 12.0)
    with open(os.path.join(args.out, "boundary.md")) as f:
        return f.read()


def test_report_holds_when_bf_drops_more_everywhere(tmp_path):
    args, points = _fabricate(tmp_path, bf_gap=0.3, model_bf_drop=0.6, truth_bf_drop=0.6)
    page = _page(args)
    assert "**holds** (degradations: holds; trained output strides: holds)" in page
    assert os.path.getsize(os.path.join(args.out, "boundary.png")) > 10_000
    # Truth families: BF drops 0.6 * k / n against mIoU's 0.3 * k / n at every level: ratio 2.
    assert "| Truth, Gaussian blur | yes | 2.00 | 2.00 | 2.00 | 2.00 | BF drops more |" in page
    # OS 8 > 16 > 32 under both; BF loses 60% of its value, mIoU 20%: 3 times as much.
    assert "| mIoU | OS 8 > OS 16 > OS 32 |" in page
    assert "is the same under BF@1px, BF@2px, BF@3px, BF@5px." in page
    assert "differs from the runs' results.json by at most" in page
    assert "no results" not in page


def test_report_does_not_hold_when_miou_drops_more(tmp_path, monkeypatch):
    args, _ = _fabricate(tmp_path, bf_gap=0.02, model_bf_drop=0.1, truth_bf_drop=0.15)
    page = _page(args, monkeypatch)
    assert "**does not hold** (degradations: does not hold; trained output strides: does not " \
           "hold)" in page
    assert "| Truth at output stride s (block majority) | yes | 0.50 |" in page


def test_report_with_one_seed_per_stride_has_not_enough_runs_for_part_two(tmp_path,
                                                                          monkeypatch):
    args, points = _fabricate(tmp_path, bf_gap=0.3, model_bf_drop=0.6, truth_bf_drop=0.6)
    for p in points[len(boundary.ARMS):]:  # seeds 1 and 2 lose their results
        os.remove(os.path.join(args.workdir, p.name, "results.json"))
    page = _page(args, monkeypatch)
    assert "trained output strides: not enough runs" in page
    assert "**holds** (degradations: holds;" in page


def test_the_sweep_fits_its_config_seed_major():
    points = sweep.resolve(driver.config_arg(boundary.__file__, quick=False))
    assert len(points) == len(boundary.ARMS) * len(driver.SEEDS)
    assert [p.overrides["model.output_stride"] for p in points[:3]] == [8, 16, 32]
    assert len(sweep.resolve(driver.config_arg(boundary.__file__, quick=True))) == 3


def _stride_rows(miou, bf, std=0.001):
    """Rows of OS 8, 16, 32 with three seeds each around the given means."""
    rows = []
    for stride, m, b in zip(boundary.OUTPUT_STRIDES, miou, bf):
        runs = tuple(report.Run(index=0, name=f"os{stride}_{seed}", path="", overrides={
            "model.output_stride": stride, "seed": seed}, status="done", results={
                "mean_iou": m + std * (seed - 1), "reeval": {"bf@2": b + std * (seed - 1)}},
            wall_time_s=None, seed=seed) for seed in SEEDS)
        rows.append(report.Row(label=str(stride), runs=runs, stats={}))
    return rows


@pytest.mark.parametrize("miou, bf, verdict", [
    ((0.8, 0.75, 0.7), (0.6, 0.5, 0.4), "holds"),  # BF loses 33%, mIoU 12.5%
    ((0.8, 0.75, 0.7), (0.6, 0.59, 0.58), "does not hold"),  # BF loses 3%
    ((0.7, 0.75, 0.8), (0.58, 0.59, 0.6), "does not hold"),  # coarser is better under both
    ((0.8, 0.8, 0.7998), (0.6, 0.6, 0.5995), "mixed"),  # BF loses more, within the spread
])
def test_part2_verdict(miou, bf, verdict):
    assert boundary.part2_verdict(_stride_rows(miou, bf))[0] == verdict


def test_stride_comparison_ranks_and_measures_the_gap():
    rows = _stride_rows((0.8, 0.82, 0.6), (0.6, 0.5, 0.3))
    miou = boundary.compare_strides(rows, report.Metric("mean_iou"))
    assert miou.ranking == (16, 8, 32) and miou.gap == pytest.approx(0.25) and miou.beyond_noise
