"""A streaming semantic-segmentation evaluator: add sufficient statistics, then finish once."""

import numpy as np

from seg_jax import decision
from seg_jax.metrics import boundary, calibration, confusion


def _json_per_class(class_names, values) -> dict:
    return {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, values)}


class SemanticEvaluator:
    """Accumulates confusion matrices and calibration bins on the host, in int64 / float64.

    Device-side statistics are per batch (int32 counts hold up to 2^31 pixels per batch); summing
    them here keeps whole-dataset counts exact. `cost` ([C, C], `cost[c, c_true]`) prices the
    decisions: `result()['mean_cost']` is the realised mean cost per pixel with a class prediction,
    which for the default 0-1 cost is the pixel error rate.

    Args:
      class_names: the C class names, in class-id order.
      cost: the cost matrix (see `seg_jax.decision.cost_matrix_from_config`); None for 0-1.
      empty: the score of a class with an empty union, "nan" (default, left out of means),
        "zero" or "one"; see `seg_jax.metrics.confusion.iou`.
      void_prediction: "drop" (default): batches are [C, C] matrices; "false_negative": batches
        are the [C, C + 1] matrices of `confusion_matrix(..., void_prediction="false_negative")`,
        whose void predictions count as false negatives (the Cityscapes rule).
    """

    def __init__(self, class_names, *, cost=None, empty: str = "nan", void_prediction: str = "drop"):
        confusion._check_choice("empty", empty, confusion.EMPTY_CONVENTIONS)
        confusion._check_choice("void_prediction", void_prediction, confusion.VOID_PREDICTIONS)
        self.class_names = tuple(class_names)
        num_classes = len(self.class_names)
        self.cost = decision.cost_matrix_from_config(cost, num_classes)
        self.empty = empty
        self.void_prediction = void_prediction
        num_columns = num_classes + (void_prediction == "false_negative")
        self.confusion = np.zeros((num_classes, num_columns), np.int64)
        self.calibration = None
        # Sums of `confusion.per_image_iou_sums`, when batches bring them.
        self.per_image_iou_sum = np.zeros(num_classes, np.float64)
        self.per_image_pair_count = np.zeros(num_classes, np.int64)
        self.has_per_image = False
        self.boundary = None  # summed `boundary.boundary_statistics`, when batches bring them

    def update(self, batch_confusion, batch_calibration=None, *, batch_per_image_iou=None,
               batch_boundary=None) -> None:
        """Adds one batch's statistics.

        Args:
          batch_confusion: [C, C] (or [C, C + 1] with `void_prediction="false_negative"`) counts.
          batch_calibration: optional reliability bins (`seg_jax.metrics.calibration_bins`).
          batch_per_image_iou: optional `(iou_sum [C], pair_count [C])` from
            `confusion.per_image_iou_sums`; `result()` then reports `per_image_mean_iou`.
          batch_boundary: optional `boundary.boundary_statistics` of the batch; `result()` then
            reports the Boundary F-score.
        """
        batch_confusion = np.asarray(batch_confusion, dtype=np.int64)
        if batch_confusion.shape != self.confusion.shape:
            raise ValueError(
                f"batch confusion matrix has shape {batch_confusion.shape}, but this evaluator "
                f"(void_prediction={self.void_prediction!r}) sums {self.confusion.shape} matrices; "
                "compute the batch matrices with the same void_prediction, or build the evaluator "
                "with the one they used."
            )
        self.confusion += batch_confusion
        if batch_calibration is not None:
            bins = {k: np.asarray(v, np.float64) for k, v in batch_calibration.items()}
            if self.calibration is None:
                self.calibration = bins
            else:
                self.calibration = {k: self.calibration[k] + bins[k] for k in bins}
        if batch_per_image_iou is not None:
            iou_sum, pair_count = batch_per_image_iou
            self.per_image_iou_sum += np.asarray(iou_sum, np.float64)
            self.per_image_pair_count += np.asarray(pair_count, np.int64)
            self.has_per_image = True
        if batch_boundary is not None:
            sums = {k: np.asarray(v, np.float64) for k, v in batch_boundary.items()}
            self.boundary = sums if self.boundary is None else {
                k: self.boundary[k] + sums[k] for k in sums}

    def result(self) -> dict:
        """Scores as plain Python numbers (JSON-ready); a per-class score is None where it is NaN."""
        cm = self.confusion
        num_classes = len(self.class_names)
        results = {
            "mean_iou": float(confusion.mean_iou(cm, empty=self.empty)),
            "frequency_weighted_iou": float(confusion.frequency_weighted_iou(cm)),
            "pixel_accuracy": float(confusion.pixel_accuracy(cm)),
            "mean_accuracy": float(confusion.mean_accuracy(cm)),
            "mean_dice": float(confusion.mean_dice(cm, empty=self.empty)),
            # Void predictions have no entry in the cost matrix, so the cost is over the pixels
            # that received a class (all valid pixels with void_prediction="drop").
            "mean_cost": float(decision.realized_cost_from_confusion(cm[:, :num_classes], self.cost)),
            "per_class_iou": _json_per_class(self.class_names, confusion.iou(cm, empty=self.empty)),
            "per_class_dice": _json_per_class(
                self.class_names, confusion.dice_score(cm, empty=self.empty)
            ),
            # Recall is the per-class accuracy; both NaN (None) where the class has no true,
            # respectively no predicted, pixel.
            "per_class_precision": _json_per_class(self.class_names, confusion.class_precision(cm)),
            "per_class_recall": _json_per_class(self.class_names, confusion.class_accuracy(cm)),
            "num_pixels": int(cm.sum()),
        }
        if self.void_prediction == "false_negative":
            results["num_void_predictions"] = int(cm[:, num_classes].sum())
        if self.has_per_image:
            results["per_image_mean_iou"] = float(
                confusion.per_image_mean_iou(self.per_image_iou_sum, self.per_image_pair_count)
            )
        if self.boundary is not None:
            scores = boundary.boundary_scores(self.boundary)
            results["boundary_f_score"] = float(scores["f_score"])
            results["boundary_precision"] = float(scores["precision"])
            results["boundary_recall"] = float(scores["recall"])
            results["per_class_boundary_f_score"] = _json_per_class(
                self.class_names, scores["per_class_f_score"])
        if self.calibration is not None:
            results["ece"] = float(calibration.expected_calibration_error(self.calibration))
        return results
