"""torchvision ResNet weights: module names, presets read from the weights, the converter."""

import re
from typing import Any, Mapping

from seg_jax.models.resnet import RESNET_PRESETS, ResNet
from seg_jax.models.weights.convert import NoCounterpart, StateDict, Variables
from seg_jax.models.weights.convert import conv_bn, convert_torchvision, variable_shapes


def resnet_module_key(path: tuple[str, ...]) -> str:
    """torchvision ResNet module name of a flax `ResNet` Conv/BatchNorm module path."""
    if len(path) == 2 and path[0] == "stem":
        return conv_bn("conv1", "bn1")(path[1])
    match = re.fullmatch(r"layer(\d+)_(\d+)", path[0])
    if match and len(path) == 3:
        block = f"layer{match[1]}.{match[2]}"
        unit, child = path[1], path[2]
        if unit == "downsample":
            return conv_bn(f"{block}.downsample.0", f"{block}.downsample.1")(child)
        conv = re.fullmatch(r"conv(\d+)", unit)
        if conv:
            return conv_bn(f"{block}.conv{conv[1]}", f"{block}.bn{conv[1]}")(child)
    raise NoCounterpart()


def resnet_variables_from_torchvision(
    state_dict: StateDict, *, preset: str, base_width: int = 64
) -> Variables:
    """Variables of `ResNet(**RESNET_PRESETS[preset])` from a torchvision `resnetXX` state dict.

    Any output stride, multi-grid and dtype of that ResNet accept them: dilation changes no shape.
    The classifier (`fc.*`) is ignored (and logged).

    Args:
      state_dict: e.g. `read_torch_state_dict('resnet50-0676ba61.pth')`.
      preset: 'resnet18', 'resnet34', 'resnet50' or 'resnet101'.
      base_width: the ResNet's `base_width`; torchvision's are 64.

    Returns:
      `{'params': ..., 'batch_stats': ...}` NumPy float32.
    """
    if preset not in RESNET_PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; valid presets: {sorted(RESNET_PRESETS)}.")
    if "conv1.weight" not in state_dict and "backbone.conv1.weight" in state_dict:
        raise ValueError(
            "This is a segmentation state dict (keys 'backbone.*'): use "
            "`deeplabv3_variables_from_torchvision`, or `load_pretrained_backbone` for its "
            "backbone alone."
        )
    model = ResNet(**RESNET_PRESETS[preset], base_width=base_width)
    return convert_torchvision(
        state_dict, variable_shapes(model), resnet_module_key, ignore_prefixes=("fc.",),
        description=f"torchvision {preset}",
    )


def _count_blocks(state_dict: StateDict, prefix: str, stage: int) -> int:
    pattern = re.compile(rf"{re.escape(prefix)}layer{stage}\.(\d+)\.")
    indices = {int(m[1]) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def infer_resnet_preset(state_dict: StateDict, *, prefix: str = "") -> str:
    """The `RESNET_PRESETS` name of a torchvision ResNet state dict (keys under `prefix`)."""
    stage_sizes = tuple(_count_blocks(state_dict, prefix, stage) for stage in range(1, 5))
    block = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state_dict else "basic"
    for name, preset in RESNET_PRESETS.items():
        if tuple(preset["stage_sizes"]) == stage_sizes and preset["block"] == block:
            return name
    raise ValueError(
        f"The state dict's ResNet (blocks per stage {stage_sizes}, {block} blocks) matches no "
        f"preset of {sorted(RESNET_PRESETS)}."
    )


# What torchvision's deeplabv3_resnet50/101 fix in code rather than in the weights.
TORCHVISION_DEEPLABV3_OUTPUT_STRIDE = 8  # replace_stride_with_dilation=[False, True, True]
TORCHVISION_DEEPLABV3_ATROUS_RATES = (12, 24, 36)


def check_resnet_preset(params: Mapping[str, Any], preset: str) -> None:
    """Raises ValueError unless the flax ResNet `params` have the blocks of `preset`."""
    blocks = [m for name in params if (m := re.fullmatch(r"layer(\d+)_(\d+)", name))]
    stage_sizes = tuple(sum(1 for m in blocks if m[1] == str(stage)) for stage in range(1, 5))
    bottleneck = "conv3" in params.get("layer1_0", {})
    expected = RESNET_PRESETS[preset]
    if stage_sizes != tuple(expected["stage_sizes"]) or bottleneck != (
        expected["block"] == "bottleneck"
    ):
        raise ValueError(
            f"preset={preset!r}, but the model's backbone has blocks per stage {stage_sizes} "
            f"({'bottleneck' if bottleneck else 'basic'} blocks); pass the model's backbone name."
        )
