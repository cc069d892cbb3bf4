"""Loading torchvision weights into the backbone of a model's variables."""

from pathlib import Path
from typing import Any, Mapping

from absl import logging

from seg_jax.models.resnet import RESNET_PRESETS
from seg_jax.models.weights.convert import Variables, convert_torchvision
from seg_jax.models.weights.torch_format import read_torch_state_dict
from seg_jax.models.weights.torchvision_mobilenet import mobilenet_v2_module_key
from seg_jax.models.weights.torchvision_resnet import check_resnet_preset, resnet_module_key



BACKBONE_PRESETS = (*RESNET_PRESETS, "mobilenet_v2")


def load_pretrained_backbone(
    variables: Mapping[str, Any],
    path: str | Path,
    *,
    preset: str,
    scope: str | None = "backbone",
) -> Variables:
    """`variables` with the backbone's subtree replaced by torchvision weights read from `path`.

    The backbone's own variables (its current arrays or `jax.ShapeDtypeStruct`s) are the target:
    every leaf must be filled with a matching shape, so a width or depth that differs from the
    weights fails with the key named. The rest of `variables` (ASPP, heads) is kept as it is.

    Args:
      variables: `{'params': ..., 'batch_stats': ...}` of a model whose backbone is the child
        `scope` (DeepLabV3 and DeepLabV3Plus: 'backbone'), or of the backbone itself (None).
      path: a torchvision classification state dict (`resnet50-*.pth`, `mobilenet_v2-*.pth`; `fc`
        or `classifier` ignored) or a segmentation one (`deeplabv3_resnet50_*.pth`: its
        `backbone.*` keys are used, the heads ignored); `.pth` or `.npz`.
      preset: the backbone, as `config.model.backbone`: one of `BACKBONE_PRESETS`.
      scope: the backbone's name in the variables.

    Returns:
      A new `{'params': ..., 'batch_stats': ...}`; the backbone leaves are NumPy float32 arrays.
    """
    if preset not in BACKBONE_PRESETS:
        raise ValueError(
            f"Unknown backbone {preset!r}; valid backbones: {list(BACKBONE_PRESETS)}."
        )
    state_dict = read_torch_state_dict(path)
    description = f"{preset} weights from {path}"
    prefix = "backbone."
    if any(key.startswith(prefix) for key in state_dict):
        heads = sorted({key.split(".")[0] for key in state_dict if not key.startswith(prefix)})
        if heads:
            logging.info("%s: ignored the non-backbone keys under %s", description, heads)
        state_dict = {
            key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)
        }

    def subtree(collection: str) -> Any:
        tree = variables.get(collection, {})
        if scope is None:
            return tree
        if scope not in tree:
            raise ValueError(
                f"The variables have no {collection!r} subtree {scope!r}; their top level is "
                f"{sorted(tree)}. Pass scope= the backbone's name (None: the backbone itself)."
            )
        return tree[scope]

    target = {collection: subtree(collection) for collection in ("params", "batch_stats")}
    if preset == "mobilenet_v2":
        module_key = mobilenet_v2_module_key(target["params"])
        ignore = ("classifier.",)
    else:
        check_resnet_preset(target["params"], preset)
        module_key, ignore = resnet_module_key, ("fc.",)
    loaded = convert_torchvision(
        state_dict, target, module_key, ignore_prefixes=ignore, description=description
    )
    if scope is None:
        return {**variables, **loaded}
    return {
        **variables,
        **{
            collection: {**variables[collection], scope: loaded[collection]}
            for collection in loaded
        },
    }
