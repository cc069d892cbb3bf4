"""Evaluating a panoptic model: its settings (`PanopticEvalOptions`) and the statistics of a batch.

A panoptic model's `ModelOutput` carries a centre heatmap and offsets beside the semantic logits.
At evaluation the semantic decision (MAP or Bayes) and those heads are grouped into panoptic maps
(`panoptic_postprocess`) and scored against the batch's labels and instance ids by Panoptic
Quality's sufficient statistics (`seg_jax.metrics.panoptic_statistics`).
"""

import dataclasses

import jax
import jax.numpy as jnp

from seg_jax import inference
from seg_jax.metrics import panoptic as panoptic_metrics
from seg_jax.models.outputs import ModelOutput
from seg_jax.models.panoptic_deeplab import panoptic_postprocess


@dataclasses.dataclass(frozen=True)
class PanopticEvalOptions:
    """How panoptic maps are made and scored (static: each setting compiles its own step).

    Attributes:
      thing_classes, stuff_classes: the dataset's class ids of each kind.
      center_threshold, nms_kernel, top_k: centre keypoint selection (`config.panoptic`).
      max_segments: PQ's static bound on segments per image.
      preset: PQ's conventions ('coco', 'deeplab2' or 'torchmetrics').
    """

    thing_classes: tuple[int, ...]
    stuff_classes: tuple[int, ...]
    center_threshold: float
    nms_kernel: int
    top_k: int
    max_segments: int
    preset: str

    def __post_init__(self):
        panoptic_metrics.check_preset(self.preset)
        if not self.thing_classes:
            raise ValueError("Panoptic evaluation needs a dataset with thing classes; this one "
                             "declares none.")
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise ValueError(f"config.panoptic.nms_kernel={self.nms_kernel} must be a positive odd "
                             "number (a window centred on each pixel), e.g. 7.")
        for name in ("top_k", "max_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.panoptic.{name}={getattr(self, name)} must be positive.")

    @classmethod
    def from_config(cls, config, info) -> "PanopticEvalOptions":
        """From `config.panoptic` and the dataset's `info` (things and stuff)."""
        settings = config.panoptic
        return cls(thing_classes=tuple(info.thing_classes),
                   stuff_classes=tuple(info.stuff_classes),
                   center_threshold=float(settings.center_threshold),
                   nms_kernel=int(settings.nms_kernel), top_k=int(settings.top_k),
                   max_segments=int(settings.max_segments), preset=str(settings.preset))


def panoptic_batch_statistics(outputs: ModelOutput, semantic: jax.Array, batch: dict,
                              options: PanopticEvalOptions, *, num_classes: int,
                              ignore_label: int) -> dict:
    """PQ's sufficient statistics of a batch (`seg_jax.metrics.panoptic_statistics`).

    Args:
      outputs: the model's output, with `center` [N, H, W] and `offset` [N, H, W, 2].
      semantic: [N, H, W] the per-pixel decision of the semantic logits.
      batch: 'label' and 'instance' [N, H, W]; with 'size' [N, 2] (padded evaluation batches)
        no segment is made on padding, as if the maps were cropped back to each image.
    """
    pan_semantic, pan_instance = panoptic_postprocess(
        semantic, outputs.center, outputs.offset, thing_classes=options.thing_classes,
        num_classes=num_classes, center_threshold=options.center_threshold,
        nms_kernel=options.nms_kernel, top_k=options.top_k)
    if "size" in batch:
        outside = ~inference.valid_region(batch["size"], *pan_semantic.shape[1:])
        pan_semantic = jnp.where(outside, ignore_label, pan_semantic)
        pan_instance = jnp.where(outside, 0, pan_instance)
    return panoptic_metrics.panoptic_statistics(
        pan_semantic, pan_instance, batch["label"], batch["instance"], num_classes=num_classes,
        things=options.thing_classes, stuff=options.stuff_classes,
        max_segments=options.max_segments, preset=options.preset)
