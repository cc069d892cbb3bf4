"""The studies' shared report step (experiments/studies/report.py) on fabricated sweep workdirs.

The workdirs are written with the runner's own writers (seg_jax.sweep.status: the manifest and
the points' status records), so they are what `--sweep` leaves, and a test checks their keys
against a real sweep's files when one is at hand.
"""

import json
import os

import numpy as np
import pytest

import study_runs
from experiments.studies import plots, report
from experiments.studies.report import Metric
from seg_jax import sweep
from seg_jax.sweep import status as files

STEPS = study_runs.STEPS
LOSS = "loss.name"
METRICS = [Metric("mean_iou", "mIoU", percent=True),
           Metric("per_class_iou/bar", "bar IoU", percent=True),
           Metric("ema/mean_iou", "EMA mIoU", percent=True),
           Metric("mean_cost", "cost")]


def _results(rng, step=STEPS, ema=True):
    scores = {"mean_iou": rng.uniform(0.5, 0.9), "pixel_accuracy": rng.uniform(0.9, 1.0),
              "mean_cost": rng.uniform(0.01, 0.1), "step": step,
              "per_class_iou": {"sky": rng.uniform(0.8, 1.0), "bar": rng.uniform(0.1, 0.6)}}
    if ema:
        scores["ema"] = {"mean_iou": rng.uniform(0.5, 0.9)}
    return scores


_point = study_runs.write_point
_manifest = study_runs.write_manifest


@pytest.fixture
def study(tmp_path):
    """A sweep still running: cross_entropy (3 seeds done), dice (seed 1 failed, seed 2 done
    without EMA scores, seed 0 done), a baseline point without a seed override (its config.json
    says seed 7), focal seed 0 training and focal seed 1 not started."""
    overrides = (list(sweep.product(**{LOSS: ["cross_entropy", "dice"], "seed": [0, 1, 2]}))
                 + [{}, {LOSS: "focal", "seed": 0}, {LOSS: "focal", "seed": 1}])
    points = _manifest(tmp_path, overrides)
    rng = np.random.default_rng(0)
    plan = ["done", "done", "done", "done", "failed", "done", "done", "running", None]
    results = {}
    for p, status in zip(points, plan):
        if status == "done":
            results[p.name] = _results(rng, ema=p.name != "loss=dice_seed=2")
        _point(tmp_path, p, status=status, results=results.get(p.name),
               config_seed=7 if not p.overrides else p.overrides.get("seed"),
               elapsed=60.0 + 10 * p.index)
    return tmp_path, points, results


def test_load_runs_reads_every_point_of_a_running_sweep(study):
    workdir, points, results = study
    runs = report.load_runs(str(workdir))
    assert [r.name for r in runs] == [p.name for p in points]
    assert [r.status for r in runs] == ["done", "done", "done", "done", "failed", "done", "done",
                                        "running", "pending"]
    assert [r.seed for r in runs] == [0, 1, 2, 0, 1, 2, 7, 0, 1]
    assert runs[0].results == results[points[0].name]
    assert all(r.results is None for r in runs if r.status != "done")
    assert runs[0].wall_time_s == 60.0 and runs[7].wall_time_s is None
    assert runs[4].error == "ValueError: boom"
    assert runs[6].overrides == {}


def test_seed_defaults_to_zero_without_override_or_config(tmp_path):
    points = _manifest(tmp_path, [{LOSS: "dice"}])
    _point(tmp_path, points[0], status="done", results=_results(np.random.default_rng(1)))
    assert [r.seed for r in report.load_runs(str(tmp_path))] == [0]


def test_a_workdir_without_a_manifest_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweep.json"):
        report.load_runs(str(tmp_path))


def test_arms_drop_the_seed_and_keep_the_sweep_order(study):
    groups = report.group_by_arm(report.load_runs(str(study[0])))
    assert list(groups) == ["loss=cross_entropy", "loss=dice", "baseline", "loss=focal"]
    assert [r.seed for r in groups["loss=dice"]] == [0, 1, 2]
    assert [r.seed for r in groups["baseline"]] == [7]


def test_nested_metric_paths(study):
    workdir, points, results = study
    run = report.load_runs(str(workdir))[0]
    scores = results[points[0].name]
    assert report.metric(run, "per_class_iou/bar") == scores["per_class_iou"]["bar"]
    assert report.metric(run, "ema/mean_iou") == scores["ema"]["mean_iou"]
    assert report.metric(run, "per_class_iou/unicorn") is None
    assert report.metric(run, "per_class_iou") is None  # a dict, not a number
    assert report.metric(run, "step") == STEPS


def test_mean_std_and_n_match_numpy_and_missing_runs_are_not_averaged(study):
    workdir, points, results = study
    rows = report.summarise(report.group_by_arm(report.load_runs(str(workdir))), METRICS)
    by_label = {row.label: row for row in rows}
    ce = [results[p.name]["per_class_iou"]["bar"] for p in points[:3]]
    stat = by_label["loss=cross_entropy"].stats["per_class_iou/bar"]
    assert stat.n == 3 and stat.values == tuple(ce) and stat.seeds == (0, 1, 2)
    assert stat.mean == pytest.approx(np.mean(ce))
    assert stat.std == pytest.approx(np.std(ce, ddof=1))

    dice = by_label["loss=dice"]
    assert [r.status for r in dice.missing] == ["failed"]
    miou = [results[points[i].name]["mean_iou"] for i in (3, 5)]
    assert dice.stats["mean_iou"].seeds == (0, 2)
    assert dice.stats["mean_iou"].mean == pytest.approx(np.mean(miou))
    assert dice.stats["ema/mean_iou"].n == 1 and dice.stats["ema/mean_iou"].std is None

    assert by_label["baseline"].stats["mean_iou"].n == 1
    focal = by_label["loss=focal"].stats["mean_iou"]
    assert (focal.n, focal.mean, focal.std) == (0, None, None)


def test_markdown_table_header_and_missing_runs(study):
    workdir, points, results = study
    rows = report.summarise(report.group_by_arm(report.load_runs(str(workdir))), METRICS)
    text = report.markdown_report("Losses under imbalance", rows, METRICS,
                                  command="python -m experiments.studies.imbalance",
                                  hardware="test CPU, 2 cores; no GPU", wall_time=3725.0,
                                  notes="Schedules shortened to 100 steps.")
    assert text.startswith("# Losses under imbalance\n")
    assert "Smoke" not in text and "SMOKE" not in text
    assert "`python -m experiments.studies.imbalance`" in text
    assert "test CPU, 2 cores; no GPU" in text
    assert "1h02m05s for the whole study" in text
    assert "Seeds: 0, 1, 2, 7" in text
    assert "Schedules shortened to 100 steps." in text
    assert "| arm | mIoU (%) | bar IoU (%) | EMA mIoU (%) | cost | runs |" in text

    ce = [results[p.name]["mean_iou"] for p in points[:3]]
    cell = f"{100 * np.mean(ce):.2f} ± {100 * np.std(ce, ddof=1):.2f} (n=3)"
    costs = [results[p.name]["mean_cost"] for p in points[:3]]
    plain = f"{np.mean(costs):.4g} ± {np.std(costs, ddof=1):.4g} (n=3)"
    assert f"| loss=cross_entropy | {cell} | " in text and f" | {plain} | 3 of 3 |" in text
    base = results[points[6].name]["mean_iou"]
    assert f"| baseline | {100 * base:.2f} (n=1) |" in text
    assert "| loss=focal | no results (n=0) |" in text and "0 of 2 (1 running, 1 pending) |" in text
    assert "2 of 3 (1 failed) |" in text

    missing = text.split("## Runs without results", 1)[1]
    assert "loss=dice, seed 1 (`loss=dice_seed=1`): failed: ValueError: boom" in missing
    assert "loss=focal, seed 0 (`loss=focal_seed=0`): running" in missing
    assert "loss=focal, seed 1 (`loss=focal_seed=1`): pending" in missing
    assert "loss=dice, seed 2 (`loss=dice_seed=2`): finished without `ema/mean_iou`" in missing
    # Per-run wall times: 60, 70, 80, 90, 100 (failed), 110, 120 seconds; running: none yet.
    assert "10m30s summed over 7 runs; per run 1m30s on average (1m00s to 2m00s)" in text


def test_smoke_output_is_marked(study):
    rows = report.summarise(report.group_by_arm(report.load_runs(str(study[0]))), METRICS[:1])
    text = report.markdown_report("Losses", rows, METRICS[:1], command="c", hardware="h",
                                  smoke=True)
    assert text.startswith("# Losses (smoke test)\n\n" + report.SMOKE_LINE + "\n")
    assert "say nothing about the claim" in report.SMOKE_LINE


def test_plain_numbers_keep_their_scale():
    plain, pct = Metric("x"), Metric("x", percent=True)
    assert report.format_number(0.8123456, pct) == "81.23"
    assert report.format_number(0.8123456, plain) == "0.8123"
    assert report.format_number(2_345_678, plain) == "2,345,678"
    assert report.format_number(0.0, plain) == "0"


def test_write_report_writes_page_and_bar_plot(study, tmp_path):
    rows = report.summarise(report.group_by_arm(report.load_runs(str(study[0]))), METRICS)
    out = tmp_path / "docs"
    md, png = report.write_report(str(out), "imbalance", "Imbalance", rows, METRICS,
                                  command="python -m experiments.studies.imbalance --quick",
                                  hardware="h", smoke=True)
    assert md == str(out / "imbalance.md") and png == str(out / "imbalance.png")
    assert "![Imbalance](imbalance.png)" in (out / "imbalance.md").read_text()
    assert (out / "imbalance.png").read_bytes()[:4] == b"\x89PNG"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp") or ".tmp." in f]


def test_write_report_draws_a_line_plot_for_a_one_value_sweep(tmp_path):
    betas = [0.5, 0.6, 0.7, 0.8, 0.9]
    overrides = list(sweep.product(**{"loss.tversky.beta": betas, "seed": [0, 1, 2]}))
    points = _manifest(tmp_path / "sweep", overrides)
    rng = np.random.default_rng(2)
    for p in points:
        status = "failed" if p.index == 4 else "done"
        _point(tmp_path / "sweep", p, status=status,
               results=_results(rng) if status == "done" else None)
    groups = report.group_by_arm(report.load_runs(str(tmp_path / "sweep")))
    assert list(groups) == [f"beta={b}" for b in betas]
    metrics = [Metric("per_class_iou/bar", "bar IoU", percent=True), Metric("mean_cost")]
    rows = report.summarise(groups, metrics)
    _, png = report.write_report(str(tmp_path / "out"), "tversky", "Tversky beta", rows, metrics,
                                 command="c", x_values=betas, x_label="beta", hardware="h")
    assert os.path.getsize(png) > 1000
    with pytest.raises(ValueError, match="x values"):
        plots.line_plot(str(tmp_path / "x.png"), rows, betas[:2], metrics)


def test_hardware_description_names_cpu_cores_and_a_given_gpu():
    text = report.hardware_description(gpu="1 x NVIDIA H200")
    assert "logical cores" in text and text.endswith("GPU: 1 x NVIDIA H200")


def test_a_run_in_several_arms_counts_its_wall_time_once():
    def run(seed, wall):
        return report.Run(index=seed, name=f"seed={seed}", path=f"/w/seed={seed}", overrides={},
                          status="done", results={"mean_iou": 0.5}, wall_time_s=wall, seed=seed)

    rows = report.summarise({"MAP": [run(0, 100.0), run(1, 300.0)],
                             "Bayes": [run(0, None), run(1, None)]}, ["mean_iou"])
    page = report.markdown_report("t", rows, ["mean_iou"], command="c", wall_time=None)
    assert "6m40s summed over 2 runs" in page, page.splitlines()[:6]
