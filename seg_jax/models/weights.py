"""Importing torchvision weights (ResNet, DeepLabV3-ResNet, MobileNetV2), without PyTorch.

Reading. `read_torch_state_dict(path)` reads a state dict written by `torch.save(state_dict, path)`
in the zip format of torch >= 1.6 (the default since), or an `.npz` of the same keys. The zip holds
a pickle (`data.pkl`) that names the functions rebuilding each tensor and refers to the raw bytes
of each storage (`data/<key>`). Unpickling it with the standard `pickle` module would call
whatever functions the file names, so this reader uses an unpickler that resolves only the handful
of names a state dict needs (tensor rebuilding, storage types, `OrderedDict`) to NumPy-building
functions here and refuses every other name: a file holding anything else (a whole pickled
`nn.Module`, an optimizer with custom classes, a malicious payload) raises `pickle.UnpicklingError`
before anything from it runs.

Converting. Each torchvision module has one counterpart in this package (see the layout notes of
`resnet.py`, `mobilenet.py`, `deeplab.py`, `aspp.py`): a conv `weight` `[O, I, kh, kw]` becomes a
flax `kernel` `[kh, kw, I, O]`, a BatchNorm `weight`/`bias` becomes `scale`/`bias` in 'params' and
`running_mean`/`running_var` become `mean`/`var` in 'batch_stats'; `num_batches_tracked` has no
use here. The converters walk the flax variable tree the model really creates (from
`jax.eval_shape` of its `init`), fetch the torch key of every leaf, and check that every leaf is
filled exactly once with the right shape and that every torch key is used or explicitly ignored
(e.g. the ImageNet classifier `fc.*`); errors name the keys. The converted variables are host
NumPy float32 arrays, ready to be placed or sharded like the variables from `model.init`.

Inputs: torchvision's pretrained models expect RGB images scaled to [0, 1] and normalised with the
ImageNet mean (0.485, 0.456, 0.406) and standard deviation (0.229, 0.224, 0.225).
"""

import collections
import logging
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax.models import mobilenet
from seg_jax.models.factory import create_model
from seg_jax.models.resnet import RESNET_PRESETS, ResNet

logger = logging.getLogger(__name__)

StateDict = Mapping[str, np.ndarray]
Variables = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Reading torch.save files without torch.
# --------------------------------------------------------------------------------------------

_LEGACY_FORMAT_HELP = (
    "it looks like the legacy (pre-1.6, non-zip) torch.save format, which cannot be read without "
    "executing its pickle. Re-save it with PyTorch in the zip format:\n"
    "  python -c \"import sys, torch; torch.save(torch.load(sys.argv[1], map_location='cpu'), "
    "sys.argv[2], _use_new_zipfile_serialization=True)\" OLD.pth NEW.pth\n"
    "or convert it to .npz:\n"
    "  python -c \"import sys, torch, numpy as np; sd = torch.load(sys.argv[1], "
    "map_location='cpu'); np.savez(sys.argv[2], **{k: v.float().numpy() if v.is_floating_point() "
    "else v.numpy() for k, v in sd.items()})\" OLD.pth NEW.npz"
)


class _StorageType:
    """What the unpickler returns for a torch storage class such as `torch.FloatStorage`."""

    def __init__(self, name: str, dtype: Any):
        self.name = name
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


_STORAGE_TYPES = {
    name: _StorageType(name, dtype)
    for name, dtype in {
        "DoubleStorage": np.float64,
        "FloatStorage": np.float32,
        "HalfStorage": np.float16,
        "BFloat16Storage": jnp.bfloat16,
        "LongStorage": np.int64,
        "IntStorage": np.int32,
        "ShortStorage": np.int16,
        "CharStorage": np.int8,
        "ByteStorage": np.uint8,
        "BoolStorage": np.bool_,
        "ComplexFloatStorage": np.complex64,
        "ComplexDoubleStorage": np.complex128,
    }.items()
}


class _Storage(np.ndarray):
    """Marks the flat arrays made by `persistent_load`, the only valid input of tensor rebuilds."""


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> np.ndarray:
    """NumPy version of `torch._utils._rebuild_tensor_v2`: a strided view of `storage`, copied.

    The view is bounds-checked first: `as_strided` on untrusted sizes could read outside the
    storage's memory.
    """
    del unused  # requires_grad, backward_hooks, metadata: nothing to do with them here.
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("Malformed state dict: a tensor without a storage.")
    size, stride = tuple(size), tuple(stride)
    ints = (storage_offset, *size, *stride)
    if len(size) != len(stride) or not all(type(v) is int and v >= 0 for v in ints):
        raise pickle.UnpicklingError(
            f"Malformed tensor: size {size}, stride {stride}, offset {storage_offset}."
        )
    base = storage.view(np.ndarray)
    if 0 in size:
        return np.zeros(size, base.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= base.size:
        raise pickle.UnpicklingError(
            f"Malformed tensor: size {size} and stride {stride} at offset {storage_offset} reach "
            f"element {last} of a storage of {base.size} elements."
        )
    view = np.lib.stride_tricks.as_strided(
        base[storage_offset:],
        shape=size,
        strides=tuple(s * base.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view, order="C")  # A C-contiguous copy that owns its memory.


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *state) -> np.ndarray:
    """`torch._utils._rebuild_parameter(_with_state)`: a saved `nn.Parameter` is its data."""
    del requires_grad, backward_hooks, state
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError("Malformed state dict: a parameter without a tensor.")
    return data


# The only globals a state dict pickle may name, and what they become.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch.save archive's `data.pkl` into NumPy arrays, refusing other globals."""

    def __init__(self, file, archive: zipfile.ZipFile, root: str, byteorder: str):
        super().__init__(file)
        self._archive = archive
        self._root = root
        self._byteorder = byteorder
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refusing to load the global '{module}.{name}': only state dicts (tensors in "
                "plain or ordered dicts) are read, and nothing named in the file is executed. If "
                "the file holds a whole model or a training checkpoint, save "
                "`model.state_dict()` instead."
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and type(pid[4]) is int
        ):
            raise pickle.UnpicklingError(f"Unsupported persistent id {pid!r} in a state dict.")
        _, storage_type, key, _, numel = pid
        if key not in self._storages:
            dtype = storage_type.dtype
            if self._byteorder != sys.byteorder:
                dtype = dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            name = f"{self._root}/data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise pickle.UnpicklingError(f"The archive lacks the storage {name!r}.") from None
            if len(raw) < numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"Storage {name!r} holds {len(raw)} bytes, fewer than {numel} x {dtype}."
                )
            flat = np.frombuffer(raw, dtype, count=numel).astype(storage_type.dtype)
            self._storages[key] = flat.view(_Storage)
        return self._storages[key]


def _read_zip_state_dict(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if names and all(name.endswith(".npy") for name in names):
            with np.load(path, allow_pickle=False) as npz:  # An .npz under another suffix.
                return {name: npz[name] for name in npz.files}
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if not pickles:
            kind = (
                "a TorchScript archive (torch.jit.save)"
                if any(n.endswith("/constants.pkl") for n in names)
                else "a zip file without data.pkl"
            )
            raise ValueError(
                f"{path} is {kind}, not a torch.save state dict; save "
                "`torch.save(model.state_dict(), path)` from the eager model."
            )
        root = pickles[0][: -len("/data.pkl")]
        byteorder = "little"
        if f"{root}/byteorder" in names:
            byteorder = archive.read(f"{root}/byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise ValueError(f"{path}: unknown byte order {byteorder!r}.")
        with archive.open(pickles[0]) as file:
            return _StateDictUnpickler(file, archive, root, byteorder).load()


def read_torch_state_dict(path: str | Path, *, key: str | None = None) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict into `{name: np.ndarray}` without importing torch.

    Args:
      path: a file written by `torch.save(module.state_dict(), path)` (zip format, torch >= 1.6),
        or an `.npz` of the same keys (`np.savez(path, **arrays)`).
      key: when the file holds a checkpoint dict around the state dict (e.g.
        `{'model': state_dict, 'epoch': 3}`), the entry holding it.

    Returns:
      Arrays in their saved dtype (float32 for pretrained weights; bfloat16 becomes
      `ml_dtypes.bfloat16`), C-contiguous and owning their memory, in the file's key order.

    Raises:
      pickle.UnpicklingError: the pickle names anything but tensors, storages and ordered dicts
        (whole pickled modules, custom classes); nothing of it is executed.
      ValueError: a legacy (non-zip) torch file, a TorchScript archive, another format, or a file
        whose content is not a flat `{str: tensor}` dict; each message says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No state dict file at {path}.")
    if zipfile.is_zipfile(path):  # Both torch.save archives and .npz files are zip files.
        contents = _read_zip_state_dict(path)
    else:
        with open(path, "rb") as file:
            head = file.read(2)
        if head[:1] == b"\x80":  # A pickle protocol opcode: torch's legacy format.
            raise ValueError(f"Cannot read {path}: {_LEGACY_FORMAT_HELP}")
        raise ValueError(
            f"Cannot read {path}: neither a torch.save zip archive nor an .npz file."
        )

    if key is not None:
        if not isinstance(contents, Mapping) or key not in contents:
            found = sorted(contents) if isinstance(contents, Mapping) else type(contents).__name__
            raise ValueError(f"{path} has no entry {key!r}; it holds {found}.")
        contents = contents[key]
    if not isinstance(contents, Mapping):
        raise ValueError(f"{path} holds a {type(contents).__name__}, not a state dict.")
    not_arrays = [k for k, v in contents.items() if not isinstance(v, np.ndarray)]
    if not_arrays or not all(isinstance(k, str) for k in contents):
        nested = [k for k in not_arrays if isinstance(contents[k], Mapping)]
        hint = f" Pass key= one of {nested} if the state dict is inside." if nested else ""
        raise ValueError(
            f"{path} is not a flat state dict: the entries {not_arrays[:5]} are not tensors.{hint}"
        )
    return {name: np.asarray(value) for name, value in contents.items()}


# --------------------------------------------------------------------------------------------
# Converting torchvision state dicts to flax variables.
# --------------------------------------------------------------------------------------------

# Flax leaf name -> torch parameter/buffer name, per collection.
_TORCH_LEAF_NAMES = {
    "params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
    "batch_stats": {"mean": "running_mean", "var": "running_var"},
}

# Maps the path of a flax Conv/BatchNorm module, e.g. ('layer1_0', 'conv2', 'bn'), to the name of
# its torch module, e.g. 'layer1.0.bn2'; raises `_NoCounterpart` for modules torch does not have.
ModuleKey = Callable[[tuple[str, ...]], str]


class _NoCounterpart(ValueError):
    pass


def _conv_bn(conv_key: str, bn_key: str) -> Callable[[str], str]:
    """For a `ConvBNAct` child: its 'conv' maps to `conv_key`, its 'bn' to `bn_key`."""
    return lambda child: {"conv": conv_key, "bn": bn_key}[child]


def _torch_value(array: np.ndarray) -> np.ndarray:
    # Conv weight [O, I, kh, kw] -> flax kernel [kh, kw, I, O]; a Linear weight [O, I] -> [I, O].
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


def _is_ignored(key: str, ignore_prefixes: Iterable[str]) -> bool:
    return key.endswith(".num_batches_tracked") or any(key.startswith(p) for p in ignore_prefixes)


def convert_torchvision(
    state_dict: StateDict,
    target: Mapping[str, Any],
    module_key: ModuleKey,
    *,
    ignore_prefixes: Iterable[str] = (),
    description: str = "model",
) -> Variables:
    """Fills every leaf of `target` from `state_dict`; the engine of the converters below.

    Args:
      state_dict: `{torch name: array}`, e.g. from `read_torch_state_dict`.
      target: `{'params': ..., 'batch_stats': ...}` of the flax model, arrays or
        `jax.ShapeDtypeStruct`s (e.g. `jax.eval_shape` of `model.init`); gives the paths, shapes
        and dtypes of the result.
      module_key: flax Conv/BatchNorm module path -> torch module name.
      ignore_prefixes: torch keys that may stay unused (e.g. 'fc.'); they are logged.
        `num_batches_tracked` buffers are always ignored.
      description: what is converted, for error messages.

    Returns:
      `{'params': ..., 'batch_stats': ...}` with `target`'s structure, NumPy arrays of its dtypes.

    Raises:
      ValueError listing every problem, with the keys (up to 5 of each kind): flax variables
      without a torchvision counterpart, torch keys missing, claimed twice, of the wrong shape,
      or unused.
    """
    ignore_prefixes = tuple(ignore_prefixes)
    problems: dict[str, list[str]] = collections.defaultdict(list)
    claimed: dict[str, str] = {}
    variables: Variables = {}
    # 'params' first: the order a reader expects in the messages (pytrees sort 'batch_stats' first).
    for collection in sorted(target, key=lambda c: (c != "params", c)):
        if collection not in _TORCH_LEAF_NAMES:
            problems["variable collections without a torchvision counterpart"].append(collection)
            continue
        converted = {}
        for path, leaf in flax.traverse_util.flatten_dict(target[collection]).items():
            flax_name = f"{collection}/{'/'.join(path)}"
            leaf_name = _TORCH_LEAF_NAMES[collection].get(path[-1])
            try:
                if leaf_name is None:
                    raise _NoCounterpart()
                torch_key = f"{module_key(tuple(path[:-1]))}.{leaf_name}"
            except (_NoCounterpart, KeyError, IndexError):
                problems["flax variables without a torchvision counterpart"].append(
                    repr(flax_name)
                )
                continue
            if torch_key in claimed:
                problems["torch keys claimed twice"].append(
                    f"{torch_key!r} by {claimed[torch_key]!r} and {flax_name!r}"
                )
                continue
            claimed[torch_key] = flax_name
            if torch_key not in state_dict:
                problems["missing torch keys"].append(
                    f"{torch_key!r} (for {flax_name!r}, shape {tuple(leaf.shape)})"
                )
                continue
            torch_shape = tuple(np.shape(state_dict[torch_key]))
            value = _torch_value(np.asarray(state_dict[torch_key]))
            if value.shape != tuple(leaf.shape):
                as_flax = f" ({value.shape} as a flax value)" if value.shape != torch_shape else ""
                problems["shape mismatches"].append(
                    f"{torch_key!r} has shape {torch_shape}{as_flax} but {flax_name!r} has "
                    f"{tuple(leaf.shape)}"
                )
                continue
            converted[path] = np.ascontiguousarray(value, dtype=leaf.dtype)
        variables[collection] = flax.traverse_util.unflatten_dict(converted)

    unused = [key for key in state_dict if key not in claimed]
    unexpected = [key for key in unused if not _is_ignored(key, ignore_prefixes)]
    if unexpected:
        problems["torch keys with no place in this model"] = [repr(key) for key in unexpected]
    if problems:
        lines = [
            f"  {kind} ({len(items)}): {'; '.join(items[:5])}{'; ...' if len(items) > 5 else ''}"
            for kind, items in problems.items()
        ]
        raise ValueError(
            f"{description}: the state dict does not fill this model exactly. Does the file hold "
            "this architecture (preset, width)?\n" + "\n".join(lines)
        )
    ignored = [key for key in unused if not key.endswith(".num_batches_tracked")]
    if ignored:
        logger.info("%s: ignored %d torch keys: %s", description, len(ignored), ignored)
    return variables


def resnet_module_key(path: tuple[str, ...]) -> str:
    """torchvision ResNet module name of a flax `ResNet` Conv/BatchNorm module path."""
    if len(path) == 2 and path[0] == "stem":
        return _conv_bn("conv1", "bn1")(path[1])
    match = re.fullmatch(r"layer(\d+)_(\d+)", path[0])
    if match and len(path) == 3:
        block = f"layer{match[1]}.{match[2]}"
        unit, child = path[1], path[2]
        if unit == "downsample":
            return _conv_bn(f"{block}.downsample.0", f"{block}.downsample.1")(child)
        conv = re.fullmatch(r"conv(\d+)", unit)
        if conv:
            return _conv_bn(f"{block}.conv{conv[1]}", f"{block}.bn{conv[1]}")(child)
    raise _NoCounterpart()


def mobilenet_v2_module_key(target_params: Mapping[str, Any]) -> ModuleKey:
    """torchvision MobileNetV2 module names for a flax `MobileNetV2` with params `target_params`.

    The index of a block's depthwise and projection convs in torchvision's `conv` Sequential
    depends on whether the block has an expansion conv, read from the params.
    """
    blocks = [name for name in target_params if re.fullmatch(r"block\d+", name)]
    last_index = len(blocks) + 1

    def module_key(path: tuple[str, ...]) -> str:
        if len(path) == 2 and path[0] == "stem":
            return _conv_bn("features.0.0", "features.0.1")(path[1])
        if len(path) == 2 and path[0] == "last_conv":
            return _conv_bn(f"features.{last_index}.0", f"features.{last_index}.1")(path[1])
        match = re.fullmatch(r"block(\d+)", path[0])
        if match and len(path) == 3:
            base = f"features.{match[1]}.conv"
            depthwise = 1 if "expand" in target_params[path[0]] else 0
            unit, child = path[1], path[2]
            keys = {
                "expand": _conv_bn(f"{base}.0.0", f"{base}.0.1"),
                "depthwise": _conv_bn(f"{base}.{depthwise}.0", f"{base}.{depthwise}.1"),
                "project": _conv_bn(f"{base}.{depthwise + 1}", f"{base}.{depthwise + 2}"),
            }
            return keys[unit](child)
        raise _NoCounterpart()

    return module_key


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
        ("aspp", "conv1x1"): _conv_bn(f"{aspp}.convs.0.0", f"{aspp}.convs.0.1"),
        ("aspp", "pooling"): _conv_bn(
            f"{aspp}.convs.{num_rates + 1}.1", f"{aspp}.convs.{num_rates + 1}.2"
        ),
        ("aspp", "project"): _conv_bn(f"{aspp}.project.0", f"{aspp}.project.1"),
        ("head",): _conv_bn("classifier.1", "classifier.2"),
        ("aux_head", "conv"): _conv_bn("aux_classifier.0", "aux_classifier.1"),
        **{
            ("aspp", f"atrous{i}"): _conv_bn(f"{aspp}.convs.{i + 1}.0", f"{aspp}.convs.{i + 1}.1")
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
        raise _NoCounterpart()

    return module_key


def _target(model: Any, height: int = 64, width: int = 64) -> Variables:
    """Shapes and dtypes of `model.init`'s variables, computed without running it."""
    images = jnp.zeros((1, height, width, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))


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
        state_dict, _target(model), resnet_module_key, ignore_prefixes=("fc.",),
        description=f"torchvision {preset}",
    )


def mobilenet_v2_variables_from_torchvision(
    state_dict: StateDict, *, width_multiplier: float = 1.0
) -> Variables:
    """Variables of `MobileNetV2(width_multiplier)` from torchvision's `mobilenet_v2` state dict.

    Any output stride and dtype accept them. The classifier (`classifier.*`) is ignored (and
    logged).
    """
    model = mobilenet.MobileNetV2(width_multiplier=width_multiplier)
    target = _target(model)
    return convert_torchvision(
        state_dict, target, mobilenet_v2_module_key(target["params"]),
        ignore_prefixes=("classifier.",), description="torchvision mobilenet_v2",
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


def deeplabv3_config_from_torchvision(state_dict: StateDict) -> dict[str, Any]:
    """The `create_model` config of the DeepLabV3 that a torchvision DeepLabV3-ResNet state dict
    fills: backbone, base_width, num_classes, aspp_channels and aux_head read from the weights;
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
    }


def deeplabv3_variables_from_torchvision(
    state_dict: StateDict, *, aux_head: bool | None = None
) -> Variables:
    """Variables of this package's DeepLabV3 from torchvision's `deeplabv3_resnet50/101` weights.

    The model to apply them to is `create_model(deeplabv3_config_from_torchvision(state_dict))`
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
    target = _target(create_model(config))
    return convert_torchvision(
        state_dict, target, deeplabv3_module_key(target["params"]),
        ignore_prefixes=() if config["aux_head"] else ("aux_classifier.",),
        description=f"torchvision deeplabv3_{config['backbone']}",
    )


BACKBONE_PRESETS = (*RESNET_PRESETS, "mobilenet_v2")


def _check_resnet_preset(params: Mapping[str, Any], preset: str) -> None:
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
            logger.info("%s: ignored the non-backbone keys under %s", description, heads)
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
        _check_resnet_preset(target["params"], preset)
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
