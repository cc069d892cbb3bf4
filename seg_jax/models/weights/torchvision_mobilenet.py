"""torchvision MobileNetV2 weights: module names and the converter."""

import re
from typing import Any, Mapping

from seg_jax.models import mobilenet
from seg_jax.models.weights.convert import ModuleKey, NoCounterpart, StateDict, Variables
from seg_jax.models.weights.convert import conv_bn, convert_torchvision, variable_shapes


def mobilenet_v2_module_key(target_params: Mapping[str, Any]) -> ModuleKey:
    """torchvision MobileNetV2 module names for a flax `MobileNetV2` with params `target_params`.

    The index of a block's depthwise and projection convs in torchvision's `conv` Sequential
    depends on whether the block has an expansion conv, read from the params.
    """
    blocks = [name for name in target_params if re.fullmatch(r"block\d+", name)]
    last_index = len(blocks) + 1

    def module_key(path: tuple[str, ...]) -> str:
        if len(path) == 2 and path[0] == "stem":
            return conv_bn("features.0.0", "features.0.1")(path[1])
        if len(path) == 2 and path[0] == "last_conv":
            return conv_bn(f"features.{last_index}.0", f"features.{last_index}.1")(path[1])
        match = re.fullmatch(r"block(\d+)", path[0])
        if match and len(path) == 3:
            base = f"features.{match[1]}.conv"
            depthwise = 1 if "expand" in target_params[path[0]] else 0
            unit, child = path[1], path[2]
            keys = {
                "expand": conv_bn(f"{base}.0.0", f"{base}.0.1"),
                "depthwise": conv_bn(f"{base}.{depthwise}.0", f"{base}.{depthwise}.1"),
                "project": conv_bn(f"{base}.{depthwise + 1}", f"{base}.{depthwise + 2}"),
            }
            return keys[unit](child)
        raise NoCounterpart()

    return module_key


def mobilenet_v2_variables_from_torchvision(
    state_dict: StateDict, *, width_multiplier: float = 1.0
) -> Variables:
    """Variables of `MobileNetV2(width_multiplier)` from torchvision's `mobilenet_v2` state dict.

    Any output stride and dtype accept them. The classifier (`classifier.*`) is ignored (and
    logged).
    """
    model = mobilenet.MobileNetV2(width_multiplier=width_multiplier)
    target = variable_shapes(model)
    return convert_torchvision(
        state_dict, target, mobilenet_v2_module_key(target["params"]),
        ignore_prefixes=("classifier.",), description="torchvision mobilenet_v2",
    )
