"""torchvision DeepLabV3-ResNet weights: module names, the model config they fill, the converter."""

import re
from typing import Any, Mapping

from seg_jax.models.factory import create_model
from seg_jax.models.weights.convert import ModuleKey, NoCounterpart, StateDict, Variables
from seg_jax.models.weights.convert import conv_bn, convert_torchvision, variable_shapes
from seg_jax.models.weights.torchvision_resnet import infer_resnet_preset, resnet_module_key


def deeplabv3_module_key(target_params: Mapping[str, Any]) -> ModuleKey:
    """torchvision `deeplabv3_resnet*` module names for a flax `DeepLabV3` (non-separable).

    torchvision's `DeepLabHead` is `Sequential(ASPP, Conv3x3, BN, ReLU, Conv1x1)` and its ASPP's
    `convs` are [1x1, one per rate, pooling (`AdaptiveAvgPool2d`, conv, BN, ReLU)], each
    `Sequential(conv, BN, ReLU)`; the auxiliary `FCNHead` is
    `Sequential(Conv3x3, BN, ReLU, Dropout, Conv1x1)`.
    """
    num_rates = sum(1 for name in target_params.get("aspp", {}) if name.startswith("atrous"))
    aspp = "classifier.0"
    heads = {
        ("aspp", "conv1x1"): conv_bn(f"{aspp}.convs.0.0", f"{aspp}.convs.0.1"),
        ("aspp", "pooling"): conv_bn(
            f"{aspp}.convs.{num_rates + 1}.1", f"{aspp}.convs.{num_rates + 1}.2"
        ),
        ("aspp", "project"): conv_bn(f"{aspp}.project.0", f"{aspp}.project.1"),
        ("head",): conv_bn("classifier.1", "classifier.2"),
        ("aux_head", "conv"): conv_bn("aux_classifier.0", "aux_classifier.1"),
        **{
            ("aspp", f"atrous{i}"): conv_bn(f"{aspp}.convs.{i + 1}.0", f"{aspp}.convs.{i + 1}.1")
            for i in range(num_rates)
        },
    }
    plain_convs = {("classifier",): "classifier.4", ("aux_head", "classifier"): "aux_classifier.4"}

    def module_key(path: tuple[str, ...]) -> str:
        if path[0] == "backbone":
            return "backbone." + resnet_module_key(path[1:])
        if path in plain_convs:
            return plain_convs[path]
        if path[:-1] in heads:
            return heads[path[:-1]](path[-1])
        raise NoCounterpart()

    return module_key


# What torchvision's deeplabv3_resnet50/101 fix in code rather than in the weights.
TORCHVISION_DEEPLABV3_OUTPUT_STRIDE = 8  # replace_stride_with_dilation=[False, True, True]
TORCHVISION_DEEPLABV3_ATROUS_RATES = (12, 24, 36)


def deeplabv3_config_from_torchvision(state_dict: StateDict) -> dict[str, Any]:
    """The complete `create_model` config of the DeepLabV3 that a torchvision DeepLabV3-ResNet state
    dict fills: backbone, base_width, num_classes, aspp_channels and aux_head read from the weights;
    output stride 8 and ASPP rates (12, 24, 36) as torchvision builds the model (the weights do not
    record them, and the ASPP's number of rates must be 3)."""
    required = ("backbone.conv1.weight", "classifier.0.convs.0.0.weight", "classifier.4.weight")
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise ValueError(
            f"Not a torchvision DeepLabV3-ResNet state dict (e.g. an FCN or a MobileNetV3 one): "
            f"it lacks {missing}."
        )
    atrous = [k for k in state_dict if re.fullmatch(r"classifier\.0\.convs\.\d+\.0\.weight", k)]
    num_rates = len(atrous) - 1  # convs.0 is the 1x1 branch; the pooling conv is convs.N.1.
    if num_rates != len(TORCHVISION_DEEPLABV3_ATROUS_RATES):
        raise ValueError(
            f"The state dict's ASPP has {num_rates} atrous branches; torchvision's has "
            f"{len(TORCHVISION_DEEPLABV3_ATROUS_RATES)}."
        )
    return {
        "name": "deeplabv3",
        "backbone": infer_resnet_preset(state_dict, prefix="backbone."),
        "base_width": int(state_dict["backbone.conv1.weight"].shape[0]),
        "num_classes": int(state_dict["classifier.4.weight"].shape[0]),
        "output_stride": TORCHVISION_DEEPLABV3_OUTPUT_STRIDE,
        "atrous_rates": TORCHVISION_DEEPLABV3_ATROUS_RATES,
        "aspp_channels": int(state_dict["classifier.0.project.0.weight"].shape[0]),
        "aux_head": "aux_classifier.0.weight" in state_dict,
        # What torchvision's architecture fixes and the weights do not record; create_model
        # requires every field, so the config is complete.
        "stem": "imagenet",
        "multi_grid": (1, 1, 1),
        "zero_init_residual": False,
        "dropout_rate": 0.5,  # torchvision's ASPP dropout (inference does not use it)
        "separable": False,
        "dtype": "float32",
        "pretrained": "",
    }


def deeplabv3_variables_from_torchvision(
    state_dict: StateDict, *, aux_head: bool | None = None
) -> Variables:
    """Variables of this package's DeepLabV3 from torchvision's `deeplabv3_resnet50/101` weights.

    The model to apply them to is built from `deeplabv3_config_from_torchvision(state_dict)`
    (DeepLabV3 with `separable=False`; the config's dropout and dtype are free), which computes
    torchvision's logits in eval mode (tested).

    Args:
      state_dict: keys `backbone.*`, `classifier.*` and optionally `aux_classifier.*`.
      aux_head: convert the auxiliary FCN head (`aux_classifier.*` -> 'aux_head'); None: if the
        state dict has one. With False, its keys are ignored (and logged).
    """
    config = deeplabv3_config_from_torchvision(state_dict)
    if aux_head is not None:
        config["aux_head"] = bool(aux_head)
    target = variable_shapes(create_model(config))
    return convert_torchvision(
        state_dict, target, deeplabv3_module_key(target["params"]),
        ignore_prefixes=() if config["aux_head"] else ("aux_classifier.",),
        description=f"torchvision deeplabv3_{config['backbone']}",
    )
