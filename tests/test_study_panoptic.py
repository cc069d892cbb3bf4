"""The `panoptic` study (experiments/studies/panoptic.py): its scoring of one set of model outputs
at several centre thresholds and by connected components (against a hand-worked scene of two
touching objects), and its report and verdict on fabricated sweep workdirs whose runs already
hold their cached scores (so no model is restored)."""

import json
import os
import types

import numpy as np
import pytest

from experiments.studies import driver, panoptic, report
from seg_jax import sweep
from seg_jax.data import shapes_render as sr
from seg_jax.sweep import status as files
from seg_jax.sweep.points import Point

STEP = panoptic.STEPS
INFO = types.SimpleNamespace(num_classes=sr.NUM_CLASSES, ignore_label=255,
                             class_names=sr.CLASS_NAMES, thing_classes=sr.THING_CLASSES,
                             stuff_classes=sr.STUFF_CLASSES)


def _two_touching_discs():
    """A 16 x 16 scene of ground with two touching discs: A (rows 4-9, cols 2-7, 36 px, centre
    (7, 5)) and B (rows 5-8, cols 8-11, 16 px, centre (7, 10)). The model's outputs: logits that
    give the true semantics, a centre heatmap of 0.6 at A's centre and 0.2 at B's, and offsets
    from every disc pixel to its own object's centre."""
    labels = np.full((1, 16, 16), sr.GROUND, np.int32)
    instances = np.zeros((1, 16, 16), np.int32)
    labels[0, 4:10, 2:8], instances[0, 4:10, 2:8] = sr.DISC, 1
    labels[0, 5:9, 8:12], instances[0, 5:9, 8:12] = sr.DISC, 2
    center = np.zeros((1, 16, 16), np.float32)
    center[0, 7, 5], center[0, 7, 10] = 0.6, 0.2
    ys, xs = np.mgrid[:16, :16]
    offset = np.zeros((1, 16, 16, 2), np.float32)
    for inst, (cy, cx) in ((1, (7, 5)), (2, (7, 10))):
        mask = instances[0] == inst
        offset[0, mask, 0], offset[0, mask, 1] = cy - ys[mask], cx - xs[mask]
    logits = 5.0 * np.eye(sr.NUM_CLASSES, dtype=np.float32)[labels]
    return {"logits": logits, "center": center, "offset": offset}, labels, instances


@pytest.fixture(scope="module")
def scene_scores():
    outputs, labels, instances = _two_touching_discs()
    return panoptic.score_methods(outputs, labels, instances, panoptic.get_config("quick"), INFO)


def test_both_centres_kept_give_both_discs(scene_scores):
    for t in (0.03, 0.1):  # below B's peak of 0.2: A and B are found (and ground, stuff)
        s = scene_scores[panoptic.method_key(t)]
        assert (s["pq"], s["tp"], s["fp"], s["fn"]) == (1.0, 3, 0, 0), t
        assert (s["over_merge"], s["over_split"]) == (0, 0)


def test_a_threshold_above_one_centre_merges_the_discs(scene_scores):
    # Only A's centre survives; B's pixels join it: one disc segment of 52 px matches A (IoU
    # 36/52), B is a false negative inside it (an over-merge); ground is the other match. Disc
    # PQ = (36/52) / (1 + 1/2), ground PQ = 1, and PQ averages the two classes present.
    for t in (0.3, 0.5):
        s = scene_scores[panoptic.method_key(t)]
        assert (s["tp"], s["fp"], s["fn"], s["over_merge"], s["over_split"]) == (2, 0, 1, 1, 0)
        assert s["pq"] == pytest.approx(((36 / 52) / 1.5 + 1) / 2)
        assert s["rq"] == pytest.approx((1 / 1.5 + 1) / 2)
        assert s["sq"] == pytest.approx((36 / 52 + 1) / 2)


def test_components_merge_touching_discs_whatever_the_semantics_say(scene_scores):
    for key in (panoptic.MODEL_COMPONENTS, panoptic.TRUE_COMPONENTS):
        s = scene_scores[key]
        assert (s["over_merge"], s["fn"]) == (1, 1), key


def test_miou_is_the_same_for_every_method(scene_scores):
    assert {s["mean_iou"] for s in scene_scores.values()} == {1.0}
    assert {s["panoptic_mean_iou"] for s in scene_scores.values()} == {1.0}


def test_segment_bound_fits_the_maps():
    semantic = np.full((2, 4, 4), sr.DISC, np.int32)
    instance = np.zeros((2, 4, 4), np.int32)
    assert panoptic.segment_bound(semantic, instance, sr.NUM_CLASSES, 64) == 64
    instance[1, 0, 0] = 70  # an id of 70 needs a bound above it
    assert panoptic.segment_bound(semantic, instance, sr.NUM_CLASSES, 64) == 128
    semantic[0] = 255  # void pixels count nowhere
    instance[0] = 500
    assert panoptic.segment_bound(semantic, instance, sr.NUM_CLASSES, 64) == 128


# ----------------------------------------------------------------------------------------------
# The report on fabricated runs


def _method_scores(pq, merges, splits, miou=0.9, pan_miou=0.9):
    return {"pq": pq, "sq": 0.9, "rq": pq / 0.9, "pq_things": pq, "pq_stuff": 0.95, "tp": 100,
            "fp": splits + 5, "fn": merges + 5, "over_merge": merges, "over_split": splits,
            "mean_iou": miou, "panoptic_mean_iou": pan_miou}


def moving_methods(seed):
    """Scores per method for one seed: merges rise and splits fall with the threshold, PQ
    peaks in between; the semantic head's mIoU is the seed's own at every threshold."""
    miou = 0.89 + 0.001 * seed
    methods = {}
    for t, pq, merges, splits in zip(panoptic.THRESHOLDS, (0.80, 0.86, 0.84, 0.78),
                                     (0, 1, 6, 15), (30, 12, 4, 2)):
        methods[panoptic.method_key(t)] = _method_scores(pq + 0.002 * seed, merges + seed,
                                                         splits + seed, miou, miou + 0.001)
    methods[panoptic.MODEL_COMPONENTS] = _method_scores(0.7, 50, 10, miou, miou)
    methods[panoptic.TRUE_COMPONENTS] = _method_scores(0.94, 51, 14, 1.0, 1.0)
    return methods


def flat_methods(seed):
    """Nothing depends on the threshold."""
    methods = moving_methods(seed)
    for t in panoptic.THRESHOLDS:
        methods[panoptic.method_key(t)] = methods[panoptic.method_key(0.1)]
    return methods


def fabricate(workdir, methods_of_seed, *, seeds=driver.SEEDS, failed=()):
    overrides = [{"seed": s} for s in seeds]
    names = sweep.point_names(overrides)
    points = [Point(index=i, name=n, overrides=o, num_train_steps=STEP,
                    config_args=tuple(f"--config.{k}={v}" for k, v in o.items()))
              for i, (n, o) in enumerate(zip(names, overrides))]
    os.makedirs(workdir, exist_ok=True)
    files.write_manifest(str(workdir), "experiments/studies/panoptic.py", [], points)
    for p in points:
        point_dir = os.path.join(workdir, p.name)
        os.makedirs(point_dir)
        seed = p.overrides["seed"]
        record = files.begin_attempt(point_dir, p, pid=1, command=["python"])
        status = "failed" if seed in failed else "done"
        if status == "done":
            methods = methods_of_seed(seed)
            with open(os.path.join(point_dir, "results.json"), "w") as f:
                json.dump({**methods[panoptic.method_key(0.1)], "step": STEP}, f)
            with open(os.path.join(point_dir, panoptic.SCORES_FILE), "w") as f:
                json.dump({"version": panoptic.SCORES_VERSION, "step": STEP,
                           "split": "validation", "thresholds": list(panoptic.THRESHOLDS),
                           "connectivity": panoptic.CONNECTIVITY, "methods": methods}, f)
        files.finish_attempt(point_dir, record, status=status, exit_code=int(status != "done"),
                             elapsed=600.0, error=["RuntimeError: boom"] if failed else [])
    return report.load_runs(str(workdir))


def _no_predictor():
    raise AssertionError("every run's scores are cached; nothing should be restored")


def _rows(runs):
    return panoptic.method_rows(runs, _no_predictor, "validation")


def _args(tmp_path):
    return driver.StudyArgs(name=panoptic.NAME, quick=False, out=str(tmp_path / "out"),
                            workdir=str(tmp_path / "w"), data_dir=None, parallel=1,
                            report_only=True, command="python -m experiments.studies.panoptic")


def test_movement_against_hand_computed_ranges(tmp_path):
    rows = _rows(fabricate(tmp_path / "w", moving_methods))
    pd_rows = rows[:len(panoptic.THRESHOLDS)]
    merges = panoptic.movement(pd_rows, "over_merge")
    # Means 1, 2, 7, 16 (seeds add 0, 1, 2): range 15; every row's std is 1.
    assert merges == {"range": pytest.approx(15.0), "spread": pytest.approx(1.0),
                      "seed_range": pytest.approx(15.0), "moves": True}
    miou = panoptic.movement(pd_rows, "mean_iou")
    assert miou["range"] == 0.0 and miou["seed_range"] == 0.0 and miou["moves"] is False


def test_the_claim_holds_when_instances_move_and_miou_does_not(tmp_path):
    outcome, moved = panoptic.verdict(_rows(fabricate(tmp_path / "w", moving_methods)))
    assert outcome == "holds"
    assert moved["pq"]["range"] == pytest.approx(0.08)
    assert moved["truth_errors"] == 65 and moved["truth_miou"] == 1.0


def test_the_claim_does_not_hold_when_nothing_moves(tmp_path):
    assert panoptic.verdict(_rows(fabricate(tmp_path / "w", flat_methods)))[0] == "does not hold"


def test_the_claim_does_not_hold_when_miou_moves_with_the_threshold(tmp_path):
    def miou_moves(seed):
        methods = moving_methods(seed)
        methods[panoptic.method_key(0.5)]["mean_iou"] -= 0.01
        return methods

    assert panoptic.verdict(_rows(fabricate(tmp_path / "w", miou_moves)))[0] == "does not hold"


def test_make_report_writes_the_page_with_a_computed_verdict(tmp_path):
    runs = fabricate(tmp_path / "w", moving_methods)
    panoptic.make_report(runs, _args(tmp_path), seconds=30.0)
    page = (tmp_path / "out" / "panoptic.md").read_text()
    assert "**The claim holds.**" in page
    assert ("| Panoptic-DeepLab, centre threshold 0.5 | 78.20 ± 0.20 (n=3) |" in page)
    assert "- over-merges: means range over 15.00 across the thresholds" in page
    assert "differ by at most 0.00e+00 in PQ" in page  # results.json = threshold 0.1's scores
    assert "has 65 over-merges and over-splits together" in page
    assert (tmp_path / "out" / "panoptic.png").stat().st_size > 0


def test_one_seed_gives_no_verdict_and_failed_runs_are_listed(tmp_path):
    runs = fabricate(tmp_path / "w", moving_methods, failed=(1, 2))
    panoptic.make_report(runs, _args(tmp_path), seconds=30.0)
    page = (tmp_path / "out" / "panoptic.md").read_text()
    assert "**Not enough runs for a verdict.**" in page
    assert "## Runs without results" in page and "RuntimeError: boom" in page
