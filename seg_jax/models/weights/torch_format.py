"""Reading state dicts written by `torch.save` (zip format) or as `.npz`, without PyTorch.

The zip holds a pickle (`data.pkl`) that names the functions rebuilding each tensor and refers to
the raw bytes of each storage (`data/<key>`). Unpickling it with the standard `pickle` module would
call whatever functions the file names, so this reader uses an unpickler that resolves only the
handful of names a state dict needs (tensor rebuilding, storage types, `OrderedDict`) to
NumPy-building functions here and refuses every other name: a file holding anything else (a whole
pickled `nn.Module`, an optimizer with custom classes, a malicious payload) raises
`pickle.UnpicklingError` before anything from it runs.
"""

import collections
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np


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
