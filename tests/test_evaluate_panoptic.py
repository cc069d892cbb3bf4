"""The panoptic scoring CLI: agreement with cityscapesScripts on COCO files, outputs, clear errors."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from seg_jax.data import panoptic_format
from seg_jax.data.panoptic_format import PanopticFormatError
from seg_jax.evaluate_panoptic import evaluate_panoptic, summary_table
from panoptic_reference import (
    cityscapes_panoptic_quality,
    cityscapes_pq_from_files,
    random_panoptic_case,
    write_case,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# seg_jax.metrics.panoptic computes each match's IoU in float32 on the device, so its scores sit
# up to ~1e-7 from cityscapesScripts' float64 (measured: at most 8e-8 on these cases); TP, FP and
# FN must agree exactly. Tighten to 1e-9 if the IoU sums move to float64.
SCORE_TOLERANCE = 1e-6


def _assert_agrees_with_cityscapes(result, reference):
    for group in ("all", "things", "stuff"):
        assert result[group]["n"] == reference[group]["n"], group
        for key in ("pq", "sq", "rq"):
            got, want = result[group][key], reference[group][key]
            if math.isnan(want):
                assert math.isnan(got), (group, key, got)
            else:
                assert got == pytest.approx(want, abs=SCORE_TOLERANCE), (group, key)
    for name, scores in result["per_class"].items():
        if name not in reference["per_class"]:  # no TP, FP or FN: unscored, NaN here
            assert scores["tp"] == scores["fp"] == scores["fn"] == 0, name
            assert math.isnan(scores["pq"]), name
            continue
        want = reference["per_class"][name]
        assert (scores["tp"], scores["fp"], scores["fn"]) == (want["tp"], want["fp"], want["fn"]), name
        for key in ("pq", "sq", "rq"):
            assert scores[key] == pytest.approx(want[key], abs=SCORE_TOLERANCE), (name, key)
    assert set(reference["per_class"]) <= set(result["per_class"])


@pytest.fixture
def written_case(tmp_path):
    case = random_panoptic_case(np.random.default_rng(0), num_images=3)
    return write_case(str(tmp_path), **case, class_names=["road", "car", "sky", "person", "bike",
                                                          "grass"])


@pytest.mark.parametrize("seed, options", [
    (1, {}),
    (2, {"num_images": 4, "height": 33, "width": 70}),
    (3, {"things": (0, 1), "stuff": (2, 3, 4, 5, 6), "pred_thing_instance_zero": True}),
    (4, {"crowd": False, "void": False}),
])
def test_agrees_with_cityscapes_scripts(tmp_path, seed, options):
    pytest.importorskip("cityscapesscripts")
    case = random_panoptic_case(np.random.default_rng(seed), **options)
    paths = write_case(str(tmp_path), **case)
    result = evaluate_panoptic(**paths, log_every=0)
    reference = cityscapes_pq_from_files(**paths)
    # The generator makes every kind of outcome happen.
    assert result["tp"] > 0 and result["fp"] > 0 and result["fn"] > 0
    assert result["num_images"] == len(case["gt_semantic"])
    _assert_agrees_with_cityscapes(result, reference)


def test_mixed_sizes_string_ids_and_sparse_category_ids(tmp_path):
    """Images of different sizes, Cityscapes-like category ids and segment ids using G and B."""
    pytest.importorskip("cityscapesscripts")
    rng = np.random.default_rng(5)
    cases = [random_panoptic_case(rng, num_images=1, height=h, width=w)
             for h, w in [(20, 30), (45, 17), (64, 64)]]
    maps = {k: [c[k][0] for c in cases] for k in ("pred_semantic", "pred_instance",
                                                    "gt_semantic", "gt_instance")}
    things = cases[0]["things"]
    categories = panoptic_format.PanopticCategories.from_classes(
        ["road", "person", "sky", "car", "bike", "grass"], things,
        category_ids=[7, 24, 23, 26, 33, 9000])
    image_ids = ["frankfurt_000000_000294", "lindau_000001_000019", "munster_000002_000019"]
    paths = {"gt_json": str(tmp_path / "gt.json"), "gt_dir": str(tmp_path / "gt"),
             "pred_json": str(tmp_path / "pred.json"), "pred_dir": str(tmp_path / "pred")}
    panoptic_format.write_panoptic_dataset(
        paths["gt_json"], paths["gt_dir"], maps["gt_semantic"], maps["gt_instance"],
        categories=categories, image_ids=image_ids, id_scheme="category")
    # Predictions listed in another order than the ground truth: matched by image_id.
    panoptic_format.write_panoptic_dataset(
        paths["pred_json"], paths["pred_dir"], maps["pred_semantic"][::-1],
        maps["pred_instance"][::-1], categories=categories, image_ids=image_ids[::-1],
        crowd=False)
    result = evaluate_panoptic(**paths, log_every=1)
    _assert_agrees_with_cityscapes(result, cityscapes_pq_from_files(**paths))
    assert set(result["thing_classes"]) == {"person", "car", "bike"}


def test_command_line_writes_results(written_case, tmp_path):
    output_dir = tmp_path / "out"
    args = [f"--{k}={v}" for k, v in written_case.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "seg_jax.evaluate_panoptic", *args, f"--output_dir={output_dir}",
         "--log_every=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| All |" in proc.stdout and "| Things |" in proc.stdout and "| person |" in proc.stdout
    assert "Scored 3/3 images" in proc.stderr
    with open(output_dir / "results.json") as f:
        saved = json.load(f)
    expected = evaluate_panoptic(**written_case, log_every=0)
    assert saved["num_images"] == 3 and saved["preset"] == "coco"
    for group in ("all", "things", "stuff"):
        assert saved[group]["pq"] == pytest.approx(expected[group]["pq"], abs=1e-12)
    assert saved["over_merge"] == expected["over_merge"]
    assert (output_dir / "results.md").read_text() == summary_table(expected) + "\n"


def test_summary_table_lists_classes_groups_and_counts(written_case):
    table = summary_table(evaluate_panoptic(**written_case, log_every=0))
    assert "| car | thing |" in table and "| road | stuff |" in table
    assert "| All |" in table and "| Stuff |" in table
    assert "Over-merged" in table and "over-split" in table


def test_missing_prediction_names_the_image(written_case):
    with open(written_case["pred_json"]) as f:
        pred = json.load(f)
    pred["annotations"] = pred["annotations"][:2]
    with open(written_case["pred_json"], "w") as f:
        json.dump(pred, f)
    with pytest.raises(PanopticFormatError, match=r"no prediction for 1 of the 3 .*image ids \[2\]"):
        evaluate_panoptic(**written_case, log_every=0)


def test_prediction_of_another_size_is_an_error(written_case, tmp_path):
    png = os.path.join(written_case["pred_dir"], "000000000001.png")
    panoptic_format.write_id_png(png, np.zeros((5, 5), np.int32))
    with open(written_case["pred_json"]) as f:
        pred = json.load(f)
    pred["annotations"][1]["segments_info"] = []
    with open(written_case["pred_json"], "w") as f:
        json.dump(pred, f)
    with pytest.raises(PanopticFormatError, match=r"Image 1: the prediction .* is 5x5"):
        evaluate_panoptic(**written_case, log_every=0)


def test_too_many_segments_names_the_image_and_the_flag(written_case):
    with pytest.raises(PanopticFormatError, match=r"Image 0: .*max_segments=4"):
        evaluate_panoptic(**written_case, max_segments=4, log_every=0)


@pytest.mark.parametrize("breakage, message", [
    ("no_gt_dir", "--gt_dir: no folder at"),
    ("no_pred_json", "No JSON file at"),
    ("bad_pred_json", "is not valid JSON"),
    ("missing_png", "No PNG at"),
])
def test_command_line_errors_are_one_line(written_case, tmp_path, breakage, message):
    paths = dict(written_case)
    if breakage == "no_gt_dir":
        paths["gt_dir"] = str(tmp_path / "nowhere")
    elif breakage == "no_pred_json":
        paths["pred_json"] = str(tmp_path / "nowhere.json")
    elif breakage == "bad_pred_json":
        with open(paths["pred_json"], "a") as f:
            f.write("]")
    else:
        os.remove(os.path.join(paths["pred_dir"], "000000000002.png"))
    proc = subprocess.run(
        [sys.executable, "-m", "seg_jax.evaluate_panoptic", *[f"--{k}={v}" for k, v in paths.items()]],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    fatal = [line for line in proc.stderr.splitlines() if line.startswith("FATAL")]
    assert len(fatal) == 1


def test_unknown_preset_is_named(written_case):
    proc = subprocess.run(
        [sys.executable, "-m", "seg_jax.evaluate_panoptic",
         *[f"--{k}={v}" for k, v in written_case.items()], "--preset=cocoa"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "cocoa" in proc.stderr and "coco" in proc.stderr


def test_reference_harness_on_a_hand_made_case(tmp_path):
    """cityscapes_panoptic_quality on arrays, with values worked out by hand."""
    pytest.importorskip("cityscapesscripts")
    gt_semantic = np.array([[[0, 0, 0, 2]] * 4])  # column 3: the crowd region of thing class 2
    pred_semantic = np.array([[[0, 0, 1, 2]] * 4])
    pred_instance = np.array([[[0, 0, 0, 1]] * 4])  # a car predicted on the crowd: ignored
    result = cityscapes_panoptic_quality(pred_semantic, pred_instance, gt_semantic,
                                         np.zeros_like(gt_semantic), things=[2], stuff=[0, 1],
                                         ignore_label=255, workdir=str(tmp_path))
    # Class 0: IoU 8/12 > 0.5, a TP. Class 1: an FP. Class 2: nothing scored, so Things is NaN.
    assert result["per_class"]["0"] == pytest.approx(
        {"pq": 2 / 3, "sq": 2 / 3, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0, "iou_sum": 2 / 3})
    assert result["per_class"]["1"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 0,
                                        "iou_sum": 0.0}
    assert set(result["per_class"]) == {"0", "1"}
    assert result["all"] == pytest.approx({"pq": 1 / 3, "sq": 1 / 3, "rq": 0.5, "n": 2})
    assert result["stuff"] == result["all"]
    assert result["things"]["n"] == 0 and math.isnan(result["things"]["pq"])


def test_iscrowd_flags_of_predictions_are_not_read(written_case):
    """panopticapi scores a predicted segment marked iscrowd like any other; so does the CLI."""
    pytest.importorskip("cityscapesscripts")
    before = evaluate_panoptic(**written_case, log_every=0)
    with open(written_case["pred_json"]) as f:
        pred = json.load(f)
    for annotation in pred["annotations"]:
        for segment in annotation["segments_info"]:
            segment["iscrowd"] = 1
    with open(written_case["pred_json"], "w") as f:
        json.dump(pred, f)
    after = evaluate_panoptic(**written_case, log_every=0)
    assert after["per_class"] == before["per_class"]
    _assert_agrees_with_cityscapes(after, cityscapes_pq_from_files(**written_case))
