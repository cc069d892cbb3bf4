"""A streaming semantic-segmentation evaluator: add sufficient statistics, then finish once."""

import numpy as np

from seg_jax import decision
from seg_jax.metrics import calibration, confusion


class SemanticEvaluator:
    """Accumulates confusion matrices and calibration bins on the host, in int64 / float64.

    Device-side statistics are per batch (int32 counts hold up to 2^31 pixels per batch); summing
    them here keeps whole-dataset counts exact. `cost` ([C, C], `cost[c, c_true]`) prices the
    decisions: `result()['mean_cost']` is the realised mean cost per valid pixel, which for the
    default 0-1 cost is the pixel error rate.
    """

    def __init__(self, class_names, *, cost=None):
        self.class_names = tuple(class_names)
        num_classes = len(self.class_names)
        self.cost = decision.cost_matrix_from_config(cost, num_classes)
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.calibration = None

    def update(self, batch_confusion, batch_calibration=None) -> None:
        self.confusion += np.asarray(batch_confusion, dtype=np.int64)
        if batch_calibration is not None:
            bins = {k: np.asarray(v, np.float64) for k, v in batch_calibration.items()}
            if self.calibration is None:
                self.calibration = bins
            else:
                self.calibration = {k: self.calibration[k] + bins[k] for k in bins}

    def result(self) -> dict:
        """Scores as plain Python numbers (JSON-ready); per-class IoU is None for an absent class."""
        cm = self.confusion
        per_class = confusion.iou(cm)
        results = {
            "mean_iou": float(confusion.mean_iou(cm)),
            "pixel_accuracy": float(confusion.pixel_accuracy(cm)),
            "mean_accuracy": float(confusion.mean_accuracy(cm)),
            "mean_cost": float(decision.realized_cost_from_confusion(cm, self.cost)),
            "per_class_iou": {
                name: (None if np.isnan(v) else float(v))
                for name, v in zip(self.class_names, per_class)
            },
            "num_pixels": int(cm.sum()),
        }
        if self.calibration is not None:
            results["ece"] = float(calibration.expected_calibration_error(self.calibration))
        return results
