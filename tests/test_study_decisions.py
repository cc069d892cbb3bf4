"""The `decisions` study (experiments/studies/decisions.py): its cost matrix, its scoring of MAP
and Bayes decisions with and without a cross-fitted temperature (against hand-worked values and
an analytic temperature), and its report on fabricated sweep workdirs whose runs already hold
their cached scores (so no model is restored)."""

import json
import math
import os

import numpy as np
import pytest

from experiments.studies import decisions, driver, report
from seg_jax import sweep
from seg_jax.data import shapes_render
from seg_jax.sweep import status as files
from seg_jax.sweep.points import Point

BAR = shapes_render.CLASS_NAMES.index("bar")
NAMES = shapes_render.CLASS_NAMES
STEP = decisions.STEPS


def test_cost_matrix_prices_a_missed_bar_at_ten():
    cost = np.array(decisions.COST)
    assert cost.shape == (7, 7) and BAR == 6
    for c in range(7):
        for t in range(7):
            expected = 0 if c == t else (10 if t == BAR else 1)
            assert cost[c, t] == expected, (c, t)
    # The README's command line gives the same matrix.
    readme = ((0, 1, 1, 1, 1, 1, 10), (1, 0, 1, 1, 1, 1, 10), (1, 1, 0, 1, 1, 1, 10),
              (1, 1, 1, 0, 1, 1, 10), (1, 1, 1, 1, 0, 1, 10), (1, 1, 1, 1, 1, 0, 10),
              (1, 1, 1, 1, 1, 1, 0))
    np.testing.assert_array_equal(cost, readme)


def test_sweep_trains_each_loss_at_every_seed_and_the_config_carries_the_cost():
    points = list(decisions.get_sweep())
    assert len(points) == len(decisions.LOSSES) * len(driver.SEEDS)
    assert {(p["seed"], p["loss.name"]) for p in points} == {
        (s, loss) for s in driver.SEEDS for loss in decisions.LOSSES}
    assert len(list(decisions.get_sweep("quick"))) == len(decisions.LOSSES)
    config = decisions.get_config()
    assert config.loss.expected_cost.cost == decisions.COST == config.decision.cost
    assert config.num_train_steps == decisions.STEPS and config.decision.rule == "map"
    with pytest.raises(ValueError, match="Unknown variant"):
        decisions.get_config("long")


def test_decision_scores_against_hand_counts():
    # Truth / prediction per pixel: bar->bar (0), bar->sky (a missed bar: 10), sky->sky (0),
    # ground->bar (1), and one void pixel that counts nowhere.
    labels = np.array([[6, 6, 0, 1, 255]])
    pred = np.array([[6, 0, 0, 6, 3]])
    scores = decisions.decision_scores(pred, labels, decisions.COST, NAMES, 255)
    assert scores["mean_cost"] == pytest.approx(11 / 4)
    assert scores["per_class_recall"]["bar"] == pytest.approx(1 / 2)
    assert scores["per_class_precision"]["bar"] == pytest.approx(1 / 2)
    # IoU: sky 1 / 2, ground 0 / 1, bar 1 / 3; classes absent from truth and prediction are
    # left out of the mean.
    assert scores["per_class_iou"]["sky"] == pytest.approx(1 / 2)
    assert scores["per_class_iou"]["bar"] == pytest.approx(1 / 3)
    assert scores["per_class_iou"]["disc"] is None
    assert scores["mean_iou"] == pytest.approx((1 / 2 + 0 + 1 / 3) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(2 / 4)


def _logits(probs):
    """[N, H, W, 7] logits whose softmax is `probs` over ground and bar (others ~1e-9)."""
    probs = np.asarray(probs, np.float64)
    full = np.full(probs.shape[:-1] + (7,), 1e-9)
    full[..., 1] = probs[..., 0]
    full[..., BAR] = probs[..., 1]
    return np.log(full).astype(np.float32)


def test_bayes_calls_a_likely_bar_and_the_temperature_decides_how_likely():
    # p(ground) = 0.8, p(bar) = 0.2: MAP says ground; the risks are 10 * 0.2 = 2 for ground
    # and 1 * 0.8 = 0.8 for bar, so Bayes says bar. At T = 1/4 the probabilities become
    # 0.8^4 : 0.2^4 (p(bar) = 1/257), the risks 10/257 against 256/257, and Bayes says ground.
    logits = _logits(np.broadcast_to([0.8, 0.2], (2, 1, 1, 2)))
    temperatures = np.array([1.0, 0.25])
    assert decisions.decide(logits, temperatures, decisions.COST, "map").ravel().tolist() == [1, 1]
    assert decisions.decide(logits, temperatures, decisions.COST, "bayes").ravel().tolist() == [
        BAR, 1]


def _binary_fold(accuracy, a, n_pixels):
    """Pixels whose logits are (a, -a) over (ground, bar) and whose label is ground on a fraction
    `accuracy` of them, bar elsewhere: the NLL's optimum is sigmoid(2a / T) = accuracy, so
    T = 2a / log(accuracy / (1 - accuracy))."""
    logits = np.full((1, 1, n_pixels, 7), -1000.0, np.float32)
    logits[..., 1], logits[..., BAR] = a, -a
    labels = np.full((1, 1, n_pixels), BAR, np.int32)
    labels[..., :round(accuracy * n_pixels)] = 1
    return logits, labels


def test_temperatures_are_cross_fitted_on_the_other_fold():
    a = 2.0
    fold_logits, fold_labels = zip(_binary_fold(0.8, a, 100), _binary_fold(0.95, a, 100))
    # Images alternate between the folds: 0, 2 hold the 80% pixels, 1, 3 the 95% ones.
    logits = np.concatenate([fold_logits[i % 2] for i in range(4)])
    labels = np.concatenate([fold_labels[i % 2] for i in range(4)])
    per_image, by_fold = decisions.fold_temperatures(logits, labels, ignore_label=255)
    t80, t95 = 2 * a / math.log(0.8 / 0.2), 2 * a / math.log(0.95 / 0.05)
    # Fold 0's images get the temperature of fold 1's pixels, and the other way round.
    np.testing.assert_allclose(by_fold, [t95, t80], rtol=1e-4)
    np.testing.assert_allclose(per_image, [t95, t80, t95, t80], rtol=1e-4)


def test_score_all_decisions_map_ignores_the_temperature_and_bayes_does_not():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, BAR], p=[0.45, 0.45, 0.1], size=(4, 6, 6)).astype(np.int32)
    # Confident logits that favour the true class 70% of the time.
    noisy = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 7, labels.shape))
    logits = (4.0 * np.eye(7)[noisy] + rng.normal(size=labels.shape + (7,))).astype(np.float32)
    scores = decisions.score_all_decisions(logits, labels, decisions.COST, NAMES, 255)
    arms = scores["arms"]
    assert set(arms) == {decisions.arm_key(r, t) for r in decisions.RULES
                         for t in decisions.TEMPERATURES}
    raw, fitted = arms["map raw"], arms["map fitted"]
    assert {k: v for k, v in raw.items() if k not in ("ece", "temperature")} == {
        k: v for k, v in fitted.items() if k not in ("ece", "temperature")}
    assert raw["temperature"] == 1.0
    assert fitted["temperature"] == pytest.approx(np.mean(scores["fold_temperatures"]))
    # The Bayes arm's cost is that of its own decisions, recomputed here independently.
    pred = decisions.decide(logits, np.ones(4), decisions.COST, "bayes")
    valid = labels != 255
    cost = np.array(decisions.COST)[pred[valid], labels[valid]].mean()
    assert arms["bayes raw"]["mean_cost"] == pytest.approx(cost)
    assert arms["bayes raw"]["per_class_recall"]["bar"] >= raw["per_class_recall"]["bar"]


# ----------------------------------------------------------------------------------------------
# The report on fabricated runs


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def _arm_scores(cost, recall, miou):
    return {"mean_cost": cost, "mean_iou": miou, "pixel_accuracy": 0.97, "ece": 0.01,
            "temperature": 1.0, "per_class_iou": {"bar": 0.7},
            "per_class_precision": {"bar": 0.8}, "per_class_recall": {"bar": recall}}


def fabricate(workdir, costs, *, statuses=None):
    """A finished sweep of the study: `costs[(loss, rule, temperature)]` is one mean cost per
    seed; each done run holds results.json and its cached decision scores."""
    overrides = list(decisions.get_sweep())
    names = sweep.point_names(overrides)
    points = [Point(index=i, name=n, overrides=o, num_train_steps=STEP,
                    config_args=tuple(f"--config.{k}={v}" for k, v in o.items()))
              for i, (n, o) in enumerate(zip(names, overrides))]
    os.makedirs(workdir, exist_ok=True)
    files.write_manifest(str(workdir), "experiments/studies/decisions.py", [], points)
    statuses = statuses or {}
    for p in points:
        point_dir = os.path.join(workdir, p.name)
        os.makedirs(point_dir)
        seed, loss = p.overrides["seed"], p.overrides["loss.name"]
        status = statuses.get((loss, seed), "done")
        record = files.begin_attempt(point_dir, p, pid=1, command=["python"])
        if status == "done":
            arms = {}
            for rule in decisions.RULES:
                for t in decisions.TEMPERATURES:
                    cost = costs[(loss, rule, t)][seed]
                    arms[decisions.arm_key(rule, t)] = _arm_scores(
                        cost, 0.6 if rule == "map" else 0.9, 0.89 if rule == "map" else 0.86)
            _write_json(os.path.join(point_dir, "results.json"),
                        {**arms["map raw"], "step": STEP, "temperature": 0.83})
            _write_json(os.path.join(point_dir, decisions.SCORES_FILE), {
                "version": decisions.SCORES_VERSION, "step": STEP, "split": "validation",
                "cost": [list(r) for r in decisions.COST], "arms": arms,
                "fold_temperatures": [0.8, 0.85]})
        error = ["RuntimeError: boom"] if status != "done" else []
        files.finish_attempt(point_dir, record, status=status, exit_code=int(status != "done"),
                             elapsed=100.0, error=error)
    return report.load_runs(str(workdir))


def _costs(bayes_ce_fitted=(0.030, 0.031, 0.032)):
    """MAP at 0.040 ± 0.001; Bayes at 0.034 ± 0.001, except (CE, T fitted) as given."""
    costs = {}
    for loss in decisions.LOSSES:
        for t in decisions.TEMPERATURES:
            costs[(loss, "map", t)] = (0.039, 0.040, 0.041)
            costs[(loss, "bayes", t)] = (0.033, 0.034, 0.035)
    costs[(decisions.LOSSES[0], "bayes", "fitted")] = bayes_ce_fitted
    return costs


def _args(tmp_path, quick=False):
    return driver.StudyArgs(name=decisions.NAME, quick=quick, out=str(tmp_path / "out"),
                            workdir=str(tmp_path / "w"), data_dir=None, parallel=1,
                            report_only=True, command="python -m experiments.studies.decisions")


def _no_predictor():
    raise AssertionError("every run's scores are cached; nothing should be restored")


def test_rows_take_each_decision_from_the_cached_scores(tmp_path):
    runs = fabricate(tmp_path / "w", _costs())
    rows = decisions.arm_rows(runs, _no_predictor, "validation")
    assert len(rows) == len(decisions.LOSSES) * 4
    by_label = {row.label: row for row in rows}
    stat = by_label["CE: BAYES, T fitted"].stat("mean_cost")
    assert stat.values == (0.030, 0.031, 0.032) and stat.seeds == (0, 1, 2)
    # The training's wall time counts once per run, not once per decision.
    assert sum(r.wall_time_s or 0 for row in rows for r in row.runs) == 100.0 * len(runs)


def test_comparisons_are_paired_by_seed_against_the_arms_spread(tmp_path):
    runs = fabricate(tmp_path / "w", _costs())
    found = decisions.comparisons(decisions.arm_rows(runs, _no_predictor, "validation"))
    first = found[0]  # CE, T = 1: Bayes - MAP = -0.006 at every seed
    assert (first.loss, first.temperature) == ("cross_entropy", "raw")
    assert first.cost_change.mean == pytest.approx(-0.006)
    assert first.cost_change.std == pytest.approx(0.0, abs=1e-12)
    assert first.spread == pytest.approx(0.001)
    assert first.outcome == "lower"
    assert first.miou_change.mean == pytest.approx(-0.03)
    assert first.recall_change.mean == pytest.approx(0.3)
    assert decisions.overall_verdict(found) == "holds"


def test_the_verdict_is_mixed_when_one_setting_stays_within_the_spread(tmp_path):
    # CE with the fitted temperature: Bayes at 0.0395 ± 0.0015 against MAP's 0.040 ± 0.001.
    runs = fabricate(tmp_path / "w", _costs(bayes_ce_fitted=(0.038, 0.0395, 0.041)))
    rows = decisions.arm_rows(runs, _no_predictor, "validation")
    found = decisions.comparisons(rows)
    assert [c.outcome for c in found] == ["lower", "within spread", "lower", "lower"]
    assert decisions.overall_verdict(found) == "mixed"
    # The expected-cost model against CE, unpaired: 0.034 against 0.0395, stds 0.001 / 0.0015.
    training = decisions._training_section(rows)
    assert "| BAYES, T fitted | -0.0055 | lower |" in training
    assert "| MAP, T = 1 | +0.0000 | within spread |" in training


def test_compare_needs_two_seeds_and_names_the_direction():
    stat = lambda values: report.Stat(  # noqa: E731
        mean=float(np.mean(values)), std=float(np.std(values, ddof=1)) if len(values) > 1
        else None, n=len(values), values=tuple(values), seeds=tuple(range(len(values))))
    assert decisions.compare(stat([0.01, 0.012]), 0.001) == "higher"
    assert decisions.compare(stat([-0.01, -0.012]), 0.02) == "within spread"
    assert decisions.compare(stat([-0.01]), None) == "not enough runs"


def test_make_report_writes_the_page_with_a_computed_verdict(tmp_path):
    runs = fabricate(tmp_path / "w", _costs())
    decisions.make_report(runs, _args(tmp_path), seconds=12.0)
    page = (tmp_path / "out" / "decisions.md").read_text()
    assert "**The claim holds**" in page
    assert "Bayes lowers the realised cost beyond the seed spread in 4 of 4" in page
    assert "| CE | T = 1 | -0.0060 ± 0.0000 | 0.0010 | lower | +30.00 ± 0.00 |" in page
    assert "| CE: BAYES, T fitted | 0.031 ± 0.001 (n=3)" in page
    assert "differ by at most 0.00e+00 in mean cost" in page  # results.json = MAP at T = 1
    assert "smoke" not in page.lower().split("\n")[0]
    assert (tmp_path / "out" / "decisions.png").stat().st_size > 0


def test_failed_runs_are_listed_and_one_seed_gives_no_verdict(tmp_path):
    failed = {(loss, seed): "failed" for loss in decisions.LOSSES for seed in (1, 2)}
    runs = fabricate(tmp_path / "w", _costs(), statuses=failed)
    decisions.make_report(runs, _args(tmp_path), seconds=1.0)
    page = (tmp_path / "out" / "decisions.md").read_text()
    assert "**Not enough runs for a verdict**" in page
    assert "## Runs without results" in page and "RuntimeError: boom" in page


def test_a_stale_cache_is_not_used(tmp_path):
    runs = fabricate(tmp_path / "w", _costs())
    assert decisions._cached(runs[0], "validation") is not None
    assert decisions._cached(runs[0], "validation[:8]") is None  # another split
    with open(os.path.join(runs[0].path, decisions.SCORES_FILE)) as f:
        cached = json.load(f)
    _write_json(os.path.join(runs[0].path, decisions.SCORES_FILE), {**cached, "step": 5})
    assert decisions._cached(runs[0], "validation") is None  # another checkpoint
