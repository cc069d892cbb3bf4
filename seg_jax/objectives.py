"""What a model is trained to minimise: `make_objective(config, info)`.

A semantic model's output is its logits and its objective the configured semantic loss
(`seg_jax.losses.get_loss(config.loss)`). A panoptic model (Panoptic-DeepLab) returns a dict of
logits, centre heatmap and offsets; its objective adds the centre (squared error) and offset (L1)
losses against targets built on the device from the batch's labels and instance ids
(`seg_jax.data.panoptic_targets`), weighted as in the paper (200 and 0.01).

An objective is `objective(outputs, batch, aux_logits=None) -> (loss, parts)`, where `parts`
names each term (the training log reports them). A model with an auxiliary head (`aux_head`)
passes its logits as `aux_logits`: the semantic loss on them, times `config.loss.aux_weight`, is
added (torchvision's recipe).
"""

from typing import Callable

from seg_jax import losses
from seg_jax.data.panoptic_targets import panoptic_targets

# Models whose outputs are a dict with "logits", "center" and "offset", trained on instance ids.
PANOPTIC_MODELS = ("panoptic_deeplab",)


def is_panoptic(config) -> bool:
    return config.model.name in PANOPTIC_MODELS


def semantic_logits(outputs):
    """The semantic logits of any model's outputs (an array, or a panoptic model's dict)."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def make_objective(config, info) -> Callable:
    """`objective(outputs, batch) -> (loss, parts)` for `config.model` on a dataset with `info`."""
    semantic_loss = losses.get_loss(config.loss)
    aux_weight = config.loss.get("aux_weight", 0.5)

    def with_aux(loss, parts, aux_logits, labels):
        if aux_logits is None:
            return loss, parts
        parts["aux"] = semantic_loss(aux_logits, labels)
        return loss + aux_weight * parts["aux"], parts

    if not is_panoptic(config):
        def semantic_objective(outputs, batch, aux_logits=None):
            loss = semantic_loss(outputs, batch["label"])
            return with_aux(loss, {"semantic": loss}, aux_logits, batch["label"])

        return semantic_objective

    if not info.thing_classes:
        raise ValueError(f"{config.model.name} needs a dataset with thing classes; "
                         f"{config.data.name!r} declares none.")
    settings = config.panoptic

    def panoptic_objective(outputs, batch, aux_logits=None):
        targets = panoptic_targets(
            batch["label"], batch["instance"], thing_classes=info.thing_classes,
            num_classes=info.num_classes, ignore_label=info.ignore_label,
            max_instances=settings.max_instances, sigma=settings.center_sigma)
        parts = {
            "semantic": semantic_loss(outputs["logits"], batch["label"]),
            "center": losses.center_heatmap_loss(outputs["center"], targets["center"],
                                                 weights=targets["center_weight"]),
            "offset": losses.offset_loss(outputs["offset"], targets["offset"],
                                         weights=targets["offset_weight"]),
        }
        loss = (parts["semantic"] + settings.center_loss_weight * parts["center"]
                + settings.offset_loss_weight * parts["offset"])
        return with_aux(loss, parts, aux_logits, batch["label"])

    return panoptic_objective
