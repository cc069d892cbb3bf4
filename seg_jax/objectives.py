"""What a model is trained to minimise: `make_objective(config, info, panoptic=...)`.

An objective is `objective(outputs: ModelOutput, batch) -> (loss, parts)`, where `parts` names
each term (the training log reports them):

- 'semantic': the configured loss (`seg_jax.losses.get_loss(config.loss)`) on `outputs.logits`;
- 'aux': with an auxiliary head (`outputs.aux_logits`, DeepLab's `aux_head`), the same loss on its
  logits, added times `config.loss.aux_weight` (torchvision's recipe);
- 'center' and 'offset': for a panoptic model (Panoptic-DeepLab), the centre heatmap (squared
  error) and offset (L1) losses against targets built on the device from the batch's labels and
  instance ids (`seg_jax.data.panoptic_targets`), weighted by `config.panoptic`'s
  `center_loss_weight` and `offset_loss_weight` (the paper's 200 and 0.01).
"""

from typing import Callable

from seg_jax import losses
from seg_jax.data.panoptic_targets import panoptic_targets
from seg_jax.models.outputs import ModelOutput


def make_objective(config, info, *, panoptic: bool) -> Callable:
    """`objective(outputs, batch) -> (loss, parts)` for a dataset with `info`.

    `panoptic`: the model has centre and offset heads (`ModelOutput.is_panoptic`); the dataset
    must then declare thing classes and its batches carry 'instance' ids.
    """
    semantic_loss = losses.get_loss(config.loss)
    aux_weight = float(config.loss.aux_weight)
    if panoptic and not info.thing_classes:
        raise ValueError(f"{config.model.name} is a panoptic model and needs a dataset with thing "
                         f"classes; {config.data.name!r} declares none.")
    settings = config.panoptic

    def objective(outputs: ModelOutput, batch: dict):
        labels = batch["label"]
        parts = {"semantic": semantic_loss(outputs.logits, labels)}
        loss = parts["semantic"]
        if panoptic:
            targets = panoptic_targets(
                labels, batch["instance"], thing_classes=info.thing_classes,
                num_classes=info.num_classes, ignore_label=info.ignore_label,
                max_instances=settings.max_instances, sigma=settings.center_sigma)
            parts["center"] = losses.center_heatmap_loss(
                outputs.center, targets["center"], weights=targets["center_weight"])
            parts["offset"] = losses.offset_loss(
                outputs.offset, targets["offset"], weights=targets["offset_weight"])
            loss = (loss + settings.center_loss_weight * parts["center"]
                    + settings.offset_loss_weight * parts["offset"])
        if outputs.aux_logits is not None:
            parts["aux"] = semantic_loss(outputs.aux_logits, labels)
            loss = loss + aux_weight * parts["aux"]
        return loss, parts

    return objective
