"""The ASPP study: its sweep, the tap and FLOP analysis (against hand-worked values and XLA's own
count), the comparisons against the seed spread, and the report step on fabricated runs with a
fabricated cost measurement (the quick mode runs in tests/test_studies_quick.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import study_runs
from experiments.studies import aspp, driver, report
from experiments.studies.aspp import Arm, Cost
from seg_jax import sweep
from seg_jax.models import ResNet

MAIN, LARGE = aspp.CROP_SIZES
R6, R12, R1 = aspp.RATE_VARIANTS  # (6, 12, 18), (12, 24, 36), (1, 2, 3)


# --- The sweep ----------------------------------------------------------------------------------


def test_sweep_has_every_arm_at_every_seed_seed_major():
    points = sweep.resolve(driver.config_arg(aspp.__file__, quick=False))  # fits the config
    arms = 2 * len(aspp.VARIANTS) + 2 * len(aspp.RATE_SETS)
    assert len(points) == arms * len(driver.SEEDS) == 54
    assert [p.overrides["seed"] for p in points[:arms]] == [0] * arms
    found = [aspp.arm_of(p.overrides, MAIN) for p in points[:arms]]
    assert len(set(found)) == arms
    assert {a.crop for a in found} == {MAIN, LARGE}
    assert {a.variant for a in found if a.crop == LARGE} == set(aspp.RATE_VARIANTS)
    assert {a.output_stride for a in found} == {8, 16}


def test_quick_sweep_has_every_arm_once_on_the_quick_crops():
    quick = aspp.get_sweep("quick")
    assert len(quick) == 18
    assert {p.get("data.crop_size") for p in quick} == {None, aspp.QUICK_CROP_SIZES[1]}
    assert aspp.get_config("quick").data.crop_size == aspp.QUICK_CROP_SIZES[0]
    assert aspp.get_config().data.crop_size == MAIN and aspp.get_config().num_train_steps == 1200
    with pytest.raises(ValueError, match="Unknown variant"):
        aspp.get_config("slow")


def test_arm_of_reads_json_lists_and_refuses_strangers():
    assert aspp.arm_of({"seed": 2, "model.output_stride": 16, "model.aspp": "full",
                        "model.atrous_rates": [1, 2, 3], "data.crop_size": 128}, 96) == \
        Arm(R1, 16, 128)
    with pytest.raises(ValueError, match="no arm"):
        aspp.arm_of({"model.output_stride": 8, "model.aspp": "full",
                     "model.atrous_rates": [2, 4]}, 96)


# --- Taps and FLOPs ------------------------------------------------------------------------------


@pytest.mark.parametrize("size, stride", [(96, 8), (96, 16), (128, 8), (128, 16), (33, 8)])
def test_feature_size_is_the_backbones(size, stride):
    backbone = ResNet(stage_sizes=(1, 1, 1, 1), block="basic", base_width=4,
                      output_stride=stride)
    shape = jax.eval_shape(lambda: backbone.init_with_output(
        jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))[0]["high_level"].shape
    assert shape[1:3] == (aspp.feature_size(size, stride),) * 2


def test_live_tap_fraction_hand_worked():
    assert aspp.live_tap_fraction(12, 6) == 3 / 8  # each axis half inside: (1 + 1)^2 - 1 = 3
    assert aspp.live_tap_fraction(8, 2) == pytest.approx((2.5 ** 2 - 1) / 8)
    assert aspp.live_tap_fraction(16, 1) == pytest.approx(((46 / 16) ** 2 - 1) / 8)
    assert aspp.live_tap_fraction(6, 6) == aspp.live_tap_fraction(6, 18) == 0.0


@pytest.mark.parametrize("size, rate", [(10, 1), (10, 3), (7, 5), (6, 6)])
def test_xla_counts_the_live_taps_of_a_dilated_conv(size, rate):
    # XLA counts 2 FLOPs per multiply-add and none for taps that read padding: a 3x3 conv does
    # 2 * N * C_in * C_out * H * W * (1 + 8 * live fraction) of them.
    n, c_in, c_out = 2, 3, 5
    conv = nn.Conv(c_out, (3, 3), kernel_dilation=rate, padding=rate, use_bias=False)
    x = jnp.zeros((n, size, size, c_in))
    variables = jax.eval_shape(conv.init, jax.random.key(0), x)  # shapes suffice to lower
    compiled = jax.jit(conv.apply).lower(variables, x).compile()
    expected = 2 * n * c_in * c_out * size ** 2 * (1 + 8 * aspp.live_tap_fraction(size, rate))
    assert aspp.xla_flops(compiled) == pytest.approx(expected)


def test_taps_section_lists_every_rate_set_at_both_strides():
    text = aspp.taps_section(128, (96, 128))
    # (6, 12, 18) at stride 8: a 12 px map in training, 16 px at evaluation.
    assert "| rates (6, 12, 18) | 8 | 38% / 0% / 0% | 51% / 16% / 0% | 51% / 16% / 0% |" in text
    assert "(map 12 / 6 px)" in text


# --- Comparisons ----------------------------------------------------------------------------------


def _stat(mean, std=None, n=3):
    return report.Stat(mean, std, n, (), ())


def test_compare_against_the_larger_seed_std():
    better = aspp.compare(_stat(0.80, 0.01), _stat(0.70, 0.02))
    assert better.outcome == "better" and better.diff == pytest.approx(0.1)
    assert better.noise == 0.02
    assert aspp.compare(_stat(0.70, 0.01), _stat(0.72, 0.03)).outcome == "within noise"
    assert aspp.compare(_stat(0.60, 0.01), _stat(0.72, 0.03)).outcome == "worse"
    assert aspp.compare(_stat(0.8, None, 1), _stat(0.7, 0.1)).outcome == "not enough runs"
    assert aspp.compare(_stat(None, None, 0), _stat(0.7, 0.1)).diff is None


def test_crop_answer():
    same = {8: {96: (R1, "clear"), 128: (R1, "clear")}, 16: {96: (R6, "clear"),
                                                           128: (R6, "clear")}}
    assert aspp.crop_answer(same) == "no"
    moved = {**same, 16: {96: (R6, "clear"), 128: (R12, "clear")}}
    assert aspp.crop_answer(moved) == "yes"
    vague = {**same, 16: {96: (R6, "within noise"), 128: (R12, "clear")}}
    assert aspp.crop_answer(vague) == "not resolved by the seeds"
    assert aspp.crop_answer({**same, 8: {96: (None, "not enough runs"),
                                         128: (R1, "clear")}}) == "not enough runs"


# --- The report on fabricated runs ---------------------------------------------------------------

SPREAD = 0.005  # seeds at mean - SPREAD, mean, mean + SPREAD: a sample std of exactly SPREAD


def _means(rate_gain, crop_winner):
    """mIoU of each arm: the baselines 0.70 (no ASPP) and 0.72 (pooling only), each rate set
    `rate_gain` above pooling only, separable 0.01 below dense; at the large crop
    `crop_winner` gains 0.03 over the others."""
    means = {}
    for stride in aspp.OUTPUT_STRIDES:
        means[Arm(aspp.NO_ASPP, stride, MAIN)] = 0.70
        means[Arm(aspp.POOLING_ONLY, stride, MAIN)] = 0.72
        for variant in aspp.RATE_VARIANTS:
            # At the main crop (1, 2, 3) is best by 0.02; at the large one `crop_winner`.
            means[Arm(variant, stride, MAIN)] = 0.72 + rate_gain + (0.02 if variant == R1 else 0)
            means[Arm(variant, stride, LARGE)] = 0.75 + (0.03 if variant == crop_winner else 0)
        means[Arm(aspp.SEPARABLE, stride, MAIN)] = means[Arm(R6, stride, MAIN)] - 0.01
    return means


def _fabricate(tmp_path, means):
    overrides = list(aspp.get_sweep())
    offsets = {0: -SPREAD, 1: 0.0, 2: SPREAD}

    def results_of(point):
        mean = means[aspp.arm_of(point.overrides, MAIN)] + offsets[point.overrides["seed"]]
        return {"mean_iou": mean, "pixel_accuracy": 0.95, "boundary_f_score": 0.6}

    study_runs.fabricate_study(tmp_path / "runs", overrides, results_of)
    return report.load_runs(str(tmp_path / "runs"))


def _costs(quick):
    costs = {}
    for stride in aspp.OUTPUT_STRIDES:
        for variant in aspp.VARIANTS:
            separable = variant == aspp.SEPARABLE
            costs[(variant, stride)] = Cost(
                params=500 if separable else 1000, context_params=100 if separable else 400,
                flops=(2e9 if separable else 4e9) / stride, images_per_s=60.0 if separable
                else 80.0, images_per_s_range=(50.0, 90.0))
    return costs, dict(image_size=128, batch=16, rounds=5, calls=3)


def _page(tmp_path, runs):
    args = driver.parse_args(aspp.NAME, [f"--out={tmp_path / 'out'}"])
    aspp.make_report(runs, args, 12.0, measure=_costs)
    assert (tmp_path / "out" / "aspp.png").stat().st_size > 10_000
    return (tmp_path / "out" / "aspp.md").read_text()


def test_report_where_the_claim_holds_and_the_best_rates_move_with_the_crop(tmp_path):
    page = _page(tmp_path, _fabricate(tmp_path, _means(rate_gain=0.03, crop_winner=R6)))
    assert report.SMOKE_LINE not in page
    assert "| OS 8, rates (1, 2, 3), crop 96 | 77.00 ± 0.50 (n=3) |" in page
    # The cost table: params, context params, GFLOPs per image (4e9 / 8), images/s, mIoU.
    assert ("| rates (6, 12, 18) | 8 | 1,000 | 400 | 0.5000 | 80.0 (50.0-90.0) | "
            "75.00 ± 0.50 (n=3) |") in page
    # (1, 2, 3) is 0.05 above pooling only (std 0.005 each): better.
    assert "| rates (1, 2, 3) | 16 | +7.00 (std 0.50): better | +5.00 (std 0.50): better |" in page
    # Separable: half the params, a quarter of the context params, half the FLOPs, 0.75 speed.
    assert "| 8 | 0.500 | 0.250 | 0.500 | 0.750 | -1.00 (std 0.50): worse |" in page
    assert "| 16 | rates (6, 12, 18) | 75.00 ± 0.50 (n=3) | 78.00 ± 0.50 (n=3) |" in page
    assert "| 8 | rates (1, 2, 3) (clear) | rates (6, 12, 18) (clear) |" in page
    assert "Several atrous rates beat no ASPP (every rate set, both strides, beyond the seed " \
           "spread): **holds**" in page
    assert "beat image pooling only (the same test): **holds**" in page
    assert ("cuts FLOPs and parameters: **holds (cost cut), at an mIoU cost beyond the seed "
            "spread at some stride**; measured on this machine, separable ASPP runs slower "
            "(images/s ratio 0.75-0.75)") in page
    assert "depends on the training crop size: **yes**" in page


def test_report_where_the_rates_add_nothing_and_the_best_stays(tmp_path):
    page = _page(tmp_path, _fabricate(tmp_path, _means(rate_gain=-0.02, crop_winner=R1)))
    # Rate sets at 0.70 / 0.72: never better than pooling only (0.72), tied or above no ASPP.
    assert "beat image pooling only (the same test): **does not hold**" in page
    assert "beat no ASPP (every rate set, both strides, beyond the seed spread): **mixed**" in page
    assert "depends on the training crop size: **no**" in page


def test_report_with_missing_runs_says_not_enough(tmp_path):
    runs = _fabricate(tmp_path, _means(rate_gain=0.03, crop_winner=R6))
    kept = [r for r in runs if r.seed == 0]  # one seed: no spread to compare against
    page = _page(tmp_path, kept)
    assert page.count("**not enough runs**") == 3
    assert "its mIoU cost: not enough runs" in page
