"""Segmentation metrics built from sufficient statistics that add across batches and devices."""

from seg_jax.metrics.boundary import boundary_f_score, boundary_scores, boundary_statistics
from seg_jax.metrics.calibration import (
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    max_calibration_error,
    reliability,
    temperature_nll,
)
from seg_jax.metrics.confusion import (
    class_accuracy,
    class_precision,
    confusion_matrix,
    dice_score,
    frequency_weighted_iou,
    iou,
    mean_accuracy,
    mean_dice,
    mean_iou,
    per_image_confusion_matrix,
    per_image_iou_sums,
    per_image_mean_iou,
    pixel_accuracy,
)
from seg_jax.metrics.evaluator import SemanticEvaluator
from seg_jax.metrics.extra import (
    BatchMetric,
    ConfusionMetric,
    register_batch_metric,
    register_metric,
    registered_metrics,
    unregister_metric,
)
from seg_jax.metrics.panoptic import (
    PanopticEvaluator,
    panoptic_quality,
    panoptic_scores,
    panoptic_statistics,
)
