"""Panoptic Quality against independent implementations on random realistic cases.

- preset "coco" against cityscapesScripts' `evalPanopticSemanticLabeling` (the panopticapi rules),
  fed the same maps written in the COCO panoptic format;
- preset "torchmetrics" against torchmetrics' `panoptic_quality`.
IoUs are float32 on device (exact integer areas, one correctly rounded division), so scores agree
to about 1e-7, not to the last float64 bit.
"""

import numpy as np
import pytest

from seg_jax import metrics
from panoptic_reference import cityscapes_panoptic_quality, random_panoptic_case

TOLERANCE = 1e-6


def _assert_close(actual, expected):
    if np.isnan(expected):
        assert np.isnan(actual)
    else:
        assert actual == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("seed", range(6))
def test_coco_preset_matches_cityscapes_scripts(seed, tmp_path):
    pytest.importorskip("cityscapesscripts")
    rng = np.random.default_rng(seed)
    case = random_panoptic_case(rng, num_images=3, pred_thing_instance_zero=seed % 2 == 1)
    expected = cityscapes_panoptic_quality(**case, workdir=str(tmp_path))
    actual = metrics.panoptic_quality(**case)
    for group in ("all", "things", "stuff"):
        assert actual[group]["n"] == expected[group]["n"]
        for key in ("pq", "sq", "rq"):
            _assert_close(actual[group][key], expected[group][key])
    scored = {name: v for name, v in actual["per_class"].items() if not np.isnan(v["pq"])}
    assert set(scored) == set(expected["per_class"])
    for name, reference in expected["per_class"].items():
        for key in ("tp", "fp", "fn"):
            assert scored[name][key] == reference[key], (name, key)
        for key in ("pq", "sq", "rq"):
            _assert_close(scored[name][key], reference[key])
    # The random perturbations include merges and splits; the diagnosis must find some of them.
    assert actual["tp"] > 0 and actual["fp"] > 0 and actual["fn"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_torchmetrics_preset_matches_torchmetrics(seed):
    torch = pytest.importorskip("torch")
    detection = pytest.importorskip("torchmetrics.functional.detection")
    rng = np.random.default_rng(100 + seed)
    # torchmetrics has no crowd regions: a ground-truth thing pixel with instance 0 is a segment.
    case = random_panoptic_case(rng, num_images=2, crowd=seed % 2 == 0)
    things, stuff = case["things"], case["stuff"]
    pred = np.stack([case["pred_semantic"], case["pred_instance"]], -1)
    target = np.stack([case["gt_semantic"], case["gt_instance"]], -1)
    reference = detection.panoptic_quality(
        torch.from_numpy(pred).long(), torch.from_numpy(target).long(), things=set(things),
        stuffs=set(stuff), allow_unknown_preds_category=True, return_per_class=True,
        return_sq_and_rq=True).numpy()  # [num classes, 3]: things sorted, then stuff sorted
    average = detection.panoptic_quality(
        torch.from_numpy(pred).long(), torch.from_numpy(target).long(), things=set(things),
        stuffs=set(stuff), allow_unknown_preds_category=True, return_sq_and_rq=True).numpy()

    actual = metrics.panoptic_quality(**case, preset="torchmetrics")
    for row, cls in enumerate(sorted(things) + sorted(stuff)):
        ours = actual["per_class"][str(cls)]
        # torchmetrics reports 0 for a class it cannot score; this project reports NaN.
        values = [0.0 if np.isnan(ours[k]) else ours[k] for k in ("pq", "sq", "rq")]
        np.testing.assert_allclose(values, reference[row], atol=TOLERANCE, err_msg=f"class {cls}")
    np.testing.assert_allclose([actual["all"][k] for k in ("pq", "sq", "rq")], average,
                               atol=TOLERANCE)


def _reference_merge_split(pred_semantic, pred_instance, gt_semantic, gt_instance, *, things,
                           stuff, ignore_label):
    """The merge/split diagnosis by plain dictionaries over segments, under the COCO rules."""
    over_merge = over_split = 0
    for image in range(gt_semantic.shape[0]):
        def segments(semantic, instance):
            found = {}
            for cls in things + stuff:
                for inst in np.unique(instance[image][semantic[image] == cls]):
                    inst = 0 if cls in stuff else inst
                    mask = (semantic[image] == cls) & ((instance[image] == inst) | (cls in stuff))
                    found[(cls, int(inst))] = mask
            return found

        gts, preds = segments(gt_semantic, gt_instance), segments(pred_semantic, pred_instance)
        void = ~np.isin(gt_semantic[image], things + stuff)
        crowd = {g for g in gts if g[0] in things and g[1] == 0}
        matches = set()
        for g, gmask in gts.items():
            for p, pmask in preds.items():
                if g[0] != p[0] or g in crowd:
                    continue
                inter = (gmask & pmask).sum()
                union = gmask.sum() + pmask.sum() - inter - (pmask & void).sum()
                if inter / union > 0.5:
                    matches.add((g, p))
        matched_gt, matched_pred = {g for g, _ in matches}, {p for _, p in matches}
        for g, gmask in gts.items():
            if g in matched_gt or g in crowd:
                continue
            over_merge += any(p in matched_pred and p[0] == g[0] and 2 * (gmask & pmask).sum() > gmask.sum()
                              for p, pmask in preds.items())
        for p, pmask in preds.items():
            if p in matched_pred:
                continue
            excused = (pmask & void).sum() + sum((pmask & gts[g]).sum() for g in crowd if g[0] == p[0])
            if 2 * excused > pmask.sum():
                continue
            over_split += any(g in matched_gt and g[0] == p[0] and 2 * (gmask & pmask).sum() > pmask.sum()
                              for g, gmask in gts.items())
    return over_merge, over_split


@pytest.mark.parametrize("seed", range(4))
def test_merge_split_counts_match_a_dictionary_reference(seed):
    case = random_panoptic_case(np.random.default_rng(200 + seed), num_images=6)
    actual = metrics.panoptic_quality(**case)
    assert (actual["over_merge"], actual["over_split"]) == _reference_merge_split(**case)
