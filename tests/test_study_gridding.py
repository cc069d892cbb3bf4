"""The gridding study: its artifact measure against known answers and an independent computation,
its sweep and configs, and its report step on fabricated run directories."""

import json
import os

import numpy as np
import pytest
from ml_collections.config_flags import config_path

import study_runs
from configs import shapes_context
from experiments.studies import driver, gridding, report
from experiments.studies import gridding_analysis as analysis

# ----------------------------------------------------------------------------------------------
# The measure


def _bins(mask):
    return set(zip(*map(lambda a: a.tolist(), np.nonzero(mask))))


def test_lattice_bins_hand_worked():
    assert _bins(analysis.lattice_bins(4, 4, 2)) == {(0, 2), (2, 0), (2, 2)}
    assert _bins(analysis.lattice_bins(6, 6, 3)) == {(0, 2), (0, 4), (2, 0), (2, 2), (2, 4),
                                                     (4, 0), (4, 2), (4, 4)}
    assert _bins(analysis.lattice_bins(12, 10, 2)) == {(0, 5), (6, 0), (6, 5)}
    with pytest.raises(ValueError, match="divide"):
        analysis.lattice_bins(12, 10, 4)


def test_lattice_neighbours_hand_worked():
    assert sorted(analysis.lattice_neighbours(8, 8, 2)) == [
        ((0, 4), ((7, 4), (1, 4)), ((0, 3), (0, 5))),
        ((4, 0), ((3, 0), (5, 0)), ((4, 7), (4, 1))),
        ((4, 4), ((3, 4), (5, 4)), ((4, 3), (4, 5)))]
    with pytest.raises(ValueError, match="too small"):
        analysis.lattice_neighbours(2, 8, 2)


def test_peak_share_hand_worked_spectrum():
    spectrum = np.zeros((8, 8))
    spectrum[0, 4], spectrum[7, 4], spectrum[1, 4] = 6, 2, 2  # first-axis neighbours: mean 2
    spectrum[0, 3] = spectrum[0, 5] = 4  # second-axis neighbours: mean 4, the larger
    spectrum[4, 0] = 3  # no neighbour energy
    spectrum[4, 4], spectrum[3, 4], spectrum[5, 4] = 1, 1, 3  # means 2 and 0
    spectrum[0, 0] = 100  # DC counts nowhere
    assert analysis.lattice_peak_share(spectrum, 2) == pytest.approx(10 / (10 + 6))
    assert analysis.lattice_energy_fraction(spectrum, 2) == pytest.approx(10 / 26)


@pytest.mark.parametrize("size,period", [((16, 16), 2), ((12, 18), 3), ((16, 12), 4)])
def test_a_periodic_map_scores_one(size, period):
    tile = np.random.default_rng(period).normal(size=(period, period))
    maps = np.tile(tile, (size[0] // period, size[1] // period))
    spectrum = analysis.power_spectrum(maps)
    assert analysis.lattice_energy_fraction(spectrum, period) == pytest.approx(1.0)
    assert analysis.lattice_peak_share(spectrum, period) == pytest.approx(1.0)


def test_a_smooth_map_scores_low():
    # Periodic von Mises bumps, off centre: smooth across the wrap-around too (a Gaussian cut
    # at the border would not be), with a spectrum that falls fast towards the Nyquist bins.
    i, j = np.mgrid[:16, :16]
    angle = lambda x, c: 2 * np.pi * (x - c) / 16  # noqa: E731
    bumps = np.stack([np.exp(2.0 * (np.cos(angle(i, ci)) + np.cos(angle(j, cj))))
                      for ci, cj in ((5.3, 9.1), (2.0, 12.6))])
    spectrum = analysis.power_spectrum(bumps)
    assert analysis.lattice_energy_fraction(spectrum, 2) < 1e-6
    assert analysis.lattice_peak_share(spectrum, 2) < 0.1


def test_white_noise_scores_the_chance_values():
    noise = np.random.default_rng(0).normal(size=(4000, 16, 16))
    spectrum = analysis.power_spectrum(noise)
    assert analysis.lattice_energy_fraction(spectrum, 2) == pytest.approx(3 / 255, rel=0.1)
    assert analysis.lattice_peak_share(spectrum, 2) == pytest.approx(0.5, abs=0.02)


def test_energy_fraction_matches_direct_alternating_sums():
    """Independent of the FFT: the period-2 bins are the row, column and checkerboard
    alternations, and Parseval gives the non-DC total as H W sum((x - mean)^2)."""
    maps = np.random.default_rng(3).normal(size=(5, 12, 10)) + np.linspace(0, 2, 10)
    i, j = np.mgrid[:12, :10]
    centred = maps - maps.mean(axis=(1, 2), keepdims=True)
    on = sum(((centred * sign).sum(axis=(1, 2)) ** 2).sum()
             for sign in ((-1.0) ** i, (-1.0) ** j, (-1.0) ** (i + j)))
    total = 12 * 10 * (centred ** 2).sum()
    spectrum = analysis.power_spectrum(maps)
    assert analysis.lattice_energy_fraction(spectrum, 2) == pytest.approx(on / total)


def test_constant_maps_have_no_measure():
    spectrum = analysis.power_spectrum(np.full((2, 8, 8), 0.3))
    assert np.isnan(analysis.lattice_energy_fraction(spectrum, 2))
    assert np.isnan(analysis.lattice_peak_share(spectrum, 2))


def test_one_hot_block_mean_and_foreground_counts():
    labels = np.array([[[0, 1, 1, 1], [255, 1, 1, 1], [0, 0, 2, 2], [0, 0, 2, 255]]])
    cells = analysis.block_mean(analysis.one_hot_maps(labels, 3), 2)
    np.testing.assert_allclose(cells[0, 0], [[0.25, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(cells[0, 1], [[0.5, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(cells[0, 2], [[0.0, 0.0], [0.0, 0.75]])
    pred = np.array([[[1, 1, 0, 0], [1, 1, 1, 1], [0, 2, 2, 0], [0, 0, 0, 1]]])
    # Foreground {1, 2} on the 14 labelled pixels: 9 true, 7 predicted (the void (1, 0) and
    # (3, 3) do not count), 5 both (row 0: 1, row 1: 3, row 2: 1): union 9 + 7 - 5.
    np.testing.assert_array_equal(analysis.foreground_counts(pred, labels, (1, 2), 255), [5, 11])


def test_truth_of_a_checkerboard_of_cells_is_a_pure_lattice_and_chunks_add_up():
    cell = gridding.OUTPUT_STRIDE
    i, j = np.mgrid[:16 * cell, :16 * cell]
    checker = ((i // cell + j // cell) % 2).astype(np.int64)
    truth = gridding._truth(checker[None], 2)
    assert truth["lattice_fraction"] == pytest.approx(1.0)
    assert truth["peak_share"] == pytest.approx(1.0)
    labels = np.random.default_rng(1).integers(0, 3, size=(5, 4 * cell, 4 * cell))
    assert gridding._truth(labels, 3, chunk=2) == pytest.approx(gridding._truth(labels, 3))


def test_forward_captures_the_context_module_output():
    """The model pass reads the module's output at output stride 8 (its `intermediates`) and the
    upsampled logits' classes; shapes only (jax.eval_shape: nothing is compiled or run)."""
    import jax

    from seg_jax.models import create_model

    config = gridding.get_config("quick")
    config_path.set_value("model.dilations", config, gridding.RATE_2)
    with config.unlocked():
        config.model.num_classes = 3
    model = create_model(config.model)
    images = jax.ShapeDtypeStruct((2, 32, 48, 3), np.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    probs, pred = jax.eval_shape(analysis._forward(model.apply), variables, images)
    assert (probs.shape, probs.dtype) == ((2, 4, 6, 3), np.float32)
    assert pred.shape == (2, 32, 48)


# ----------------------------------------------------------------------------------------------
# Sweep and configs


def test_sweep_is_every_arm_on_both_datasets_at_every_seed():
    points = list(gridding.get_sweep())
    keys = {(p["data.name"], tuple(p["model.dilations"]), p["model.early_skip"], p["seed"])
            for p in points}
    assert len(points) == len(keys) == 2 * 5 * 3
    assert keys == {(d, a.dilations, a.early_skip, s) for d in gridding.DATASETS
                    for a in gridding.ARMS for s in driver.SEEDS}
    assert all(p.get("data.hflip", True) is (p["data.name"] == "shapes") for p in points)
    assert len(list(gridding.get_sweep("quick"))) == 10
    config = gridding.get_config()
    for point in points[:10]:  # every point's overrides fit the config
        for path, value in point.items():
            config_path.set_value(path, config, value)


def test_configs():
    from seg_jax.models import context

    assert shapes_context.HDC_DILATIONS == context.HDC_DILATIONS
    assert gridding.YU_KOLTUN == context.YU_KOLTUN_DILATIONS
    base = shapes_context.get_config()
    assert base.model.name == "dilated_context" and base.model.dilations == gridding.YU_KOLTUN
    assert (base.model.base_width, base.model.output_stride, base.num_train_steps) == (16, 8, 2400)
    both = shapes_context.get_config("hdc,skip,quick")
    assert both.model.dilations == gridding.HDC and both.model.early_skip
    assert both.num_train_steps == 30 and both.model.base_width == 8
    with pytest.raises(ValueError, match="Unknown variant"):
        shapes_context.get_config("rate2")
    assert gridding.get_config().num_train_steps == gridding.STEPS
    quick = gridding.get_config("quick")
    assert quick.model.name == "dilated_context" and quick.num_train_steps == driver.QUICK_STEPS


# ----------------------------------------------------------------------------------------------
# The verdict's arithmetic


def _row(label, values):
    runs = tuple(report.Run(index=i, name=f"{label}{i}", path="", overrides={}, status="done",
                            results={"v": v}, wall_time_s=1.0, seed=i)
                 for i, v in enumerate(values))
    return report.summarise({label: runs}, ["v"])[0]


def test_compare_against_the_larger_std():
    rows = {gridding.arm_label("shapes", gridding.ARM_BY_KEY[k]): _row(k, v) for k, v in {
        "rate2": [0.8, 0.9, 1.0], "hdc": [0.5, 0.55, 0.6], "yu_koltun": [0.7, 0.9, 1.1],
        "rate2_skip": [0.5]}.items()}
    compare = lambda a, b, sign: gridding.compare(  # noqa: E731
        rows, gridding.Comparison("shapes", a, b, "v", sign))
    assert compare("rate2", "hdc", +1) == (gridding.SUPPORTS, pytest.approx(0.35))
    assert compare("rate2", "hdc", -1)[0] == gridding.AGAINST
    assert compare("rate2", "yu_koltun", +1) == (gridding.WITHIN_NOISE, pytest.approx(0.0))
    assert compare("hdc", "yu_koltun", -1)[0] == gridding.SUPPORTS  # 0.35 > the larger std 0.2
    assert compare("rate2_skip", "rate2", -1) == (gridding.TOO_FEW, pytest.approx(-0.4))
    assert compare("yu_koltun_skip", "rate2", -1) == (gridding.TOO_FEW, None)


def test_part_verdicts():
    s, a, w, f = gridding.SUPPORTS, gridding.AGAINST, gridding.WITHIN_NOISE, gridding.TOO_FEW
    assert gridding.part_verdict([s, s, s]) == "holds"
    assert gridding.part_verdict([s, w, a]) == "mixed"
    assert gridding.part_verdict([w, a]) == "does not hold"
    assert gridding.part_verdict([s, f]) == "not enough runs"
    assert gridding.part_verdict([]) == "not enough runs"


# ----------------------------------------------------------------------------------------------
# The report on fabricated runs

SHAPES_CLASSES = ("sky", "ground", "disc", "square", "triangle", "ring", "bar")
DIGITS_CLASSES = ("background",) + tuple(f"digit_{d}" for d in range(10))
# What the fabricated runs score: rate 2 shows a lattice that HDC and the skip on rate 2 lower;
# the skip on Yu & Koltun and HDC against Yu & Koltun change it within noise; HDC leaves the thin
# IoU within noise and the skip lowers it.
PEAK = {"yu_koltun": 0.45, "hdc": 0.455, "yu_koltun_skip": 0.455, "rate2": 0.80,
        "rate2_skip": 0.60}
THIN = {"yu_koltun": 0.50, "hdc": 0.505, "yu_koltun_skip": 0.40, "rate2": 0.505,
        "rate2_skip": 0.40}
EXPECTED = {
    "the rate-2 stack shows the lattice (higher peak share than the gap-free stacks)": "holds",
    "HDC lowers the lattice peak share": "mixed",
    "HDC raises the thin-structure IoU": "does not hold",
    "the early skip lowers the lattice peak share": "mixed",
    "the early skip raises the thin-structure IoU": "does not hold",
}


def _noise(seed):
    return 0.01 * (seed - 1)  # seeds 0, 1, 2: std 0.01


def _results(point):
    dataset, arm = gridding.arm_of(report.Run(0, "", "", point.overrides, "done", {}, 0, 0))
    thin = THIN[arm.key] + _noise(point.overrides["seed"])
    names = SHAPES_CLASSES if dataset == "shapes" else DIGITS_CLASSES
    per_class = {c: (thin if c == "bar" or c.startswith("digit") else 0.9) for c in names}
    return {"mean_iou": 0.6 + _noise(point.overrides["seed"]), "pixel_accuracy": 0.9,
            "boundary_f_score": 0.5, "per_class_iou": per_class}


def _scenes(dataset):
    names = SHAPES_CLASSES if dataset == "shapes" else DIGITS_CLASSES
    things = tuple(range(2, 7)) if dataset == "shapes" else tuple(range(1, 11))
    thin = gridding.thin_classes(dataset, names, things)
    label = np.zeros((16, 16), np.int64)
    label[4:12, 6:8] = names.index(thin[0])
    return gridding.Scenes(
        name=dataset, split="validation", class_names=names, thin_classes=thin,
        foreground=things, ignore_label=255, images=None, labels=None, example_index=3,
        example_image=np.zeros((16, 16, 3), np.uint8), example_label=label,
        truth={"peak_share": 0.5, "lattice_fraction": 0.004})


class FakeAnalysis:
    """Stands in for the checkpoint pass: the fabricated measures, counting its calls."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, run, scenes):
        self.calls.append(run.name)
        if run.name in self.fail:
            raise RuntimeError("no checkpoint")
        _, arm = gridding.arm_of(run)
        peak = PEAK[arm.key] + _noise(run.seed)
        return {"step": run.results["step"], "peak_share": peak, "lattice_fraction": peak / 50,
                "foreground_iou": 0.7, "example": [[0.0, 1.0], [1.0, 0.0]]}


def _study(tmp_path, seeds=driver.SEEDS):
    workdir = tmp_path / "runs"
    study_runs.fabricate_study(workdir, list(gridding.get_sweep() if len(seeds) == 3 else
                                             gridding.get_sweep("quick")), _results)
    args = driver.StudyArgs(name=gridding.NAME, quick=len(seeds) == 1, out=str(tmp_path / "out"),
                            workdir=str(workdir), data_dir=None, parallel=1, report_only=True,
                            command="python -m experiments.studies.gridding")
    scenes = {d: _scenes(d) for d in gridding.DATASETS}
    return report.load_runs(str(workdir)), args, scenes


def _page(args):
    with open(os.path.join(args.out, "gridding.md"), encoding="utf-8") as f:
        return f.read()


def test_report_computes_the_verdict_from_the_runs(tmp_path):
    runs, args, scenes = _study(tmp_path)
    fake = FakeAnalysis()
    verdicts = gridding.write_gridding_report(runs, args, 100.0, scenes, fake)
    assert verdicts == EXPECTED
    assert len(fake.calls) == 30
    text = _page(args)
    for part, verdict in EXPECTED.items():
        assert f"- {part}: **{verdict}**" in text
    assert ("| the rate-2 stack shows the lattice (higher peak share than the gap-free stacks) "
            "| `digits` | rate 2 x7 vs HDC (1,2,5,1,2,5,1) | lattice peak share | +0.3450 | "
            "supports |") in text
    assert ("| the early skip raises the thin-structure IoU | `shapes` | rate 2 x7 + early skip "
            "vs rate 2 x7 | thin-structure IoU | -10.50 pts | against |") in text
    # Main table: the thin IoU (bar on shapes, the digits' mean on digits) and the measures.
    assert ("| digits: rate 2 x7 | 60.00 ± 1.00 (n=3) | 90.00 ± 0.00 (n=3) | 50.00 ± 0.00 (n=3) "
            "| 50.50 ± 1.00 (n=3) | 70.00 ± 0.00 (n=3) | 0.8 ± 0.01 (n=3) | 0.016 ± 2.000e-04 "
            "(n=3) | 3 of 3 |") in text
    assert "| `shapes` | `validation` | 0.5000 | 0.0040 |" in text
    assert "Runs without results" not in text and "Analyses that failed" not in text
    assert "reaching 15 of its 29 offsets per axis" in text
    assert os.path.getsize(os.path.join(args.out, "gridding.png")) > 10_000


def test_cached_measures_are_reused_and_recomputed_after_new_training(tmp_path):
    runs, _, scenes = _study(tmp_path)
    gridding.with_measures(runs, scenes, FakeAnalysis())
    cached = json.load(open(os.path.join(runs[0].path, gridding.ANALYSIS_FILE)))
    assert cached["step"] == study_runs.STEPS and cached["split"] == "validation"
    # Every run cached: an analysis that would fail is never called.
    refuse = FakeAnalysis(fail={r.name for r in runs})
    measured, analyses, problems = gridding.with_measures(runs, scenes, refuse)
    assert refuse.calls == [] and problems == [] and len(analyses) == 30
    assert measured[0].results["gridding"]["peak_share"] == pytest.approx(0.44)
    # A run trained further since: its cache is stale, the others are not.
    with open(os.path.join(runs[4].path, "results.json"), "w") as f:
        json.dump({**runs[4].results, "step": study_runs.STEPS + 1}, f)
    again = FakeAnalysis()
    gridding.with_measures(report.load_runs(str(tmp_path / "runs")), scenes, again)
    assert again.calls == [runs[4].name]


def test_a_failed_analysis_is_listed_and_the_other_scores_kept(tmp_path):
    runs, _, scenes = _study(tmp_path)
    broken = runs[3].name  # rate 2 on shapes, seed 0
    measured, analyses, problems = gridding.with_measures(runs, scenes,
                                                          FakeAnalysis(fail={broken}))
    assert problems == [f"shapes: rate 2 x7, seed 0 (`{broken}`): the analysis failed: "
                        "RuntimeError: no checkpoint"]
    assert broken not in analyses and len(analyses) == 29
    row = {r.label: r for r in gridding.rows_by_arm(measured)}["shapes: rate 2 x7"]
    assert row.stat("mean_iou").n == 3  # its other scores count
    assert row.stat(gridding.THIN).n == 3
    assert row.stat(gridding.PEAK).n == 2 and row.stat(gridding.PEAK).seeds == (1, 2)


def test_one_seed_is_not_enough_for_a_verdict(tmp_path):
    runs, _, scenes = _study(tmp_path, seeds=driver.QUICK_SEEDS)
    measured, _, _ = gridding.with_measures(runs, scenes, FakeAnalysis())
    text, verdicts = gridding.verdict_section(gridding.rows_by_arm(measured))
    assert set(verdicts.values()) == {"not enough runs"}
    assert "| +0.3450 | too few runs |" in text  # the difference is still shown
