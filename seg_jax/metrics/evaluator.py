"""A streaming semantic-segmentation evaluator: add confusion matrices, then finish once."""

import numpy as np

from seg_jax.metrics import confusion


class SemanticEvaluator:
    """Accumulates [C, C] confusion matrices on the host in int64 and reports the scores.

    Device-side matrices are int32 per batch (at most 2^31 pixels per batch); summing them here
    in int64 keeps whole-dataset counts exact.
    """

    def __init__(self, class_names):
        self.class_names = tuple(class_names)
        num_classes = len(self.class_names)
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def update(self, batch_confusion) -> None:
        self.confusion += np.asarray(batch_confusion, dtype=np.int64)

    def result(self) -> dict:
        """Scores as plain Python numbers (JSON-ready); per-class IoU is None for an absent class."""
        cm = self.confusion
        per_class = confusion.iou(cm)
        return {
            "mean_iou": float(confusion.mean_iou(cm)),
            "pixel_accuracy": float(confusion.pixel_accuracy(cm)),
            "mean_accuracy": float(confusion.mean_accuracy(cm)),
            "per_class_iou": {
                name: (None if np.isnan(v) else float(v))
                for name, v in zip(self.class_names, per_class)
            },
            "num_pixels": int(cm.sum()),
        }
