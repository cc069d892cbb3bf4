"""Tests of seg_jax.models.weights: reading torch.save files without torch, and converting
torchvision ResNet / DeepLabV3 / MobileNetV2 weights so that this package computes the same outputs.

The comparisons need PyTorch (skipped without it). The reference models are the small PyTorch
modules below, written with torchvision's module names and semantics (the ResNet one also takes a
narrow stem width, for speed); where torchvision imports, the full-size DeepLabV3 and MobileNetV2
comparisons use torchvision's own models, and `test_references_have_torchvisions_layout` checks the
references' keys and shapes against torchvision's.
"""

import logging
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import models as model_configs
from seg_jax.models import weights
from seg_jax.models.deeplab import FCNHead
from seg_jax.models.factory import create_backbone, create_model
from seg_jax.models.layers import resize_bilinear
from seg_jax.models.mobilenet import MobileNetV2
from seg_jax.models.resnet import RESNET_PRESETS, ResNet
from model_helpers import init_shapes, random_variables

try:
    import torch
    from torch import nn as tnn

    from experiments import torch_reference
except ImportError:  # The reader tests below run without torch; the comparisons are skipped.
    torch = None

try:
    import torchvision
except Exception:  # Not installed, or a build that does not match torch (its ops fail to load).
    torchvision = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
needs_torchvision = pytest.mark.skipif(torchvision is None, reason="torchvision does not import")

# Reference classes subclass torch.nn.Module when torch is there; without it they are never built.
_TorchModule = tnn.Module if torch is not None else object

FEATURE_OF_LAYER = {"layer1": "low_level", "layer2": "stage2", "layer3": "stage3",
                    "layer4": "high_level"}


# ----------------------------------------------------------------------------------------------
# Reading: files made by hand (no torch needed).
# ----------------------------------------------------------------------------------------------


def _text(value: str) -> bytes:
    encoded = value.encode()
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(*values: int) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _tensor_pickle(size, stride, offset=0, numel=4) -> bytes:
    """The protocol-2 pickle that torch.save writes for `{'w': tensor}` (cf. pickletools.dis)."""
    storage = (
        b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") + _text("cpu")
        + _int(numel) + b"tQ"
    )
    rebuild = (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + storage + _int(offset) + _tuple(*size) + _tuple(*stride) + b"\x89}tR"
    )
    return b"\x80\x02}(" + _text("w") + rebuild + b"u."


def _write_archive(path, data_pkl: bytes, storages=None):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


def test_reads_a_strided_tensor_from_a_handmade_archive(tmp_path):
    raw = np.arange(4, dtype="<f4").tobytes()
    path = _write_archive(tmp_path / "w.pth", _tensor_pickle((2, 2), (1, 2)), {"0": raw})
    state_dict = weights.read_torch_state_dict(path)
    np.testing.assert_array_equal(state_dict["w"], [[0.0, 2.0], [1.0, 3.0]])
    assert state_dict["w"].flags.c_contiguous and state_dict["w"].flags.owndata


@pytest.mark.parametrize(
    "size, stride, offset", [((16,), (1,), 0), ((2, 2), (1, 2), 1), ((2,), (-1,), 1)]
)
def test_tensors_reaching_outside_their_storage_are_refused(tmp_path, size, stride, offset):
    raw = np.arange(4, dtype="<f4").tobytes()
    pickled = _tensor_pickle(size, stride, offset=offset)
    path = _write_archive(tmp_path / "w.pth", pickled, {"0": raw})
    with pytest.raises(pickle.UnpicklingError, match="Malformed tensor"):
        weights.read_torch_state_dict(path)


def test_pickled_callables_are_refused_and_never_run(tmp_path):
    target = tmp_path / "created_by_the_pickle"
    # What a malicious file would hold: "call os.mkdir(target)" while unpickling.
    payload = b"\x80\x02cos\nmkdir\n(" + _text(str(target)) + b"tR."
    path = _write_archive(tmp_path / "evil.pth", payload)
    with pytest.raises(pickle.UnpicklingError, match="os.mkdir"):
        weights.read_torch_state_dict(path)
    assert not target.exists()


def test_npz_files_are_read_whatever_their_suffix(tmp_path):
    arrays = {"conv1.weight": np.random.default_rng(0).normal(size=(4, 3, 7, 7)).astype(np.float32),
              "bn1.num_batches_tracked": np.array(7)}
    np.savez(tmp_path / "w.npz", **arrays)
    (tmp_path / "w.weights").write_bytes((tmp_path / "w.npz").read_bytes())
    for path in (tmp_path / "w.npz", tmp_path / "w.weights"):
        state_dict = weights.read_torch_state_dict(path)
        assert list(state_dict) == list(arrays)
        for name, value in arrays.items():
            np.testing.assert_array_equal(state_dict[name], value)


def test_legacy_pickle_files_explain_how_to_convert(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))  # Starts like torch's legacy format.
    with pytest.raises(ValueError, match="_use_new_zipfile_serialization=True") as error:
        weights.read_torch_state_dict(path)
    assert "np.savez" in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [(b"just text", "neither a torch.save zip archive nor an .npz"), (None, "without data.pkl")],
)
def test_other_formats_are_rejected(tmp_path, content, message):
    path = tmp_path / "w.pth"
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("something/else.txt", "x")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        weights.read_torch_state_dict(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        weights.read_torch_state_dict(tmp_path / "nothing.pth")


# ----------------------------------------------------------------------------------------------
# PyTorch reference models with torchvision's module names: ResNet and DeepLabV3 are in
# experiments/torch_reference.py (the PyTorch speed comparison times them too); MobileNetV2's,
# used only here, follows.
# ----------------------------------------------------------------------------------------------


class _TorchInvertedResidual(_TorchModule):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(torch_reference.conv_bn(inp, hidden, 1, act=tnn.ReLU6))
        layers += [
            torch_reference.conv_bn(hidden, hidden, 3, act=tnn.ReLU6, stride=stride, padding=1,
                           groups=hidden),
            tnn.Conv2d(hidden, oup, 1, bias=False),
            tnn.BatchNorm2d(oup),
        ]
        self.conv = tnn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class _TorchMobileNetV2(_TorchModule):
    """torchvision.models.mobilenet_v2() (width multiplier 1, so no channel rounding)."""

    def __init__(self):
        super().__init__()
        # (t, c, n, s) of Sandler et al. 2018, Table 2.
        table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1)]
        features = [torch_reference.conv_bn(3, 32, 3, act=tnn.ReLU6, stride=2, padding=1)]
        channels = 32
        for t, c, n, s in table:
            for index in range(n):
                features.append(_TorchInvertedResidual(channels, c, s if index == 0 else 1, t))
                channels = c
        features.append(torch_reference.conv_bn(channels, 1280, 1, act=tnn.ReLU6))
        self.features = tnn.Sequential(*features)
        self.classifier = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(1280, 10))


def _randomize(module, seed=0):
    """He-normal conv weights and random BatchNorm affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor, std):
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    def uniform(tensor, low, high):
        tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, tnn.Conv2d):
                normal(layer.weight, (2.0 / layer.weight[0].numel()) ** 0.5)
                if layer.bias is not None:
                    normal(layer.bias, 0.1)
            elif isinstance(layer, tnn.BatchNorm2d):
                uniform(layer.weight, 0.5, 1.5)
                normal(layer.bias, 0.1)
                normal(layer.running_mean, 0.1)
                uniform(layer.running_var, 0.5, 1.5)
                layer.num_batches_tracked.fill_(3)
    return module.eval()


def _torch_resnet(preset, *, base=64, output_stride=32):
    """torchvision's ResNet (`preset`, stem width `base`) with a 10-way classifier."""
    return torch_reference.ResNet(preset, base=base, output_stride=output_stride, num_classes=10)


def _torch_deeplabv3(num_classes, **kwargs):
    """torchvision's deeplabv3_resnet50(num_classes, aux_loss=True), `base` and width free."""
    return torch_reference.DeepLabV3(num_classes, aux=True, **kwargs)


def _nhwc(tensor) -> np.ndarray:
    return tensor.detach().permute(0, 2, 3, 1).numpy()


def _assert_close(actual, expected, name):
    expected = np.asarray(expected)
    np.testing.assert_allclose(
        np.asarray(actual), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=name
    )


def _images(height, width, seed=0):
    return np.random.default_rng(seed).normal(size=(1, height, width, 3)).astype(np.float32)


def _save(module_or_state_dict, path):
    state_dict = getattr(module_or_state_dict, "state_dict", lambda: module_or_state_dict)()
    torch.save(state_dict, path)
    return path


# ----------------------------------------------------------------------------------------------
# Reading real torch.save files.
# ----------------------------------------------------------------------------------------------


@needs_torch
def test_reads_torch_save_files_bitwise(tmp_path):
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=generator)
    module = tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.BatchNorm2d(4))
    state_dict = {
        **module.state_dict(),  # an OrderedDict carrying `_metadata`, as every state dict does
        "float64": torch.randn(3, 2, dtype=torch.float64, generator=generator),
        "float16": torch.randn(7, generator=generator).half(),
        "bfloat16": torch.randn(2, 3, generator=generator).bfloat16(),
        "int64": torch.arange(-3, 9).reshape(3, 4),
        "int32": torch.arange(5, dtype=torch.int32),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "int8": torch.arange(-4, 4, dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "transposed_view": base.t(),  # non-contiguous, shares base's storage
        "offset_view": base[2:, 1:4],  # non-zero storage offset
        "base": base,
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    path = _save(state_dict, tmp_path / "w.pth")
    loaded = weights.read_torch_state_dict(path)

    assert list(loaded) == list(state_dict)
    for name, tensor in state_dict.items():
        value = loaded[name]
        assert value.shape == tuple(tensor.shape), name
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16: compare the bits.
            assert value.dtype == jnp.bfloat16
            expected = tensor.view(torch.int16).numpy()
        else:
            expected = tensor.numpy()
            assert value.dtype == expected.dtype, name
        assert value.tobytes() == expected.tobytes(), name


@needs_torch
def test_reads_parameters_saved_with_keep_vars(tmp_path):
    module = tnn.Linear(3, 2)
    path = _save(module.state_dict(keep_vars=True), tmp_path / "w.pth")
    loaded = weights.read_torch_state_dict(path)
    np.testing.assert_array_equal(loaded["weight"], module.weight.detach().numpy())


@needs_torch
def test_whole_pickled_modules_are_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(tnn.Linear(3, 2), path)
    with pytest.raises(pickle.UnpicklingError, match=r"model.state_dict\(\)"):
        weights.read_torch_state_dict(path)


@needs_torch
def test_checkpoint_dicts_need_the_key_of_their_state_dict(tmp_path):
    module = tnn.Linear(3, 2)
    path = _save({"model": module.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")
    with pytest.raises(ValueError, match=r"key= one of \['model'\]"):
        weights.read_torch_state_dict(path)
    loaded = weights.read_torch_state_dict(path, key="model")
    np.testing.assert_array_equal(loaded["bias"], module.bias.detach().numpy())


@needs_torch
def test_legacy_torch_files_explain_how_to_convert(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy"):
        weights.read_torch_state_dict(path)


# ----------------------------------------------------------------------------------------------
# ResNet.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    """torchvision-layout state dicts with random weights, saved with torch.save.

    {(preset, base width): path}; the narrow ResNet-50 keeps the dilated tests fast (torchvision's
    own widths are checked at output stride 32 here and at output stride 8 by the DeepLabV3 test).
    """
    if torch is None:
        pytest.skip("PyTorch is not installed")
    directory = tmp_path_factory.mktemp("resnets")
    files = {}
    for seed, (preset, base) in enumerate([("resnet18", 64), ("resnet50", 64), ("resnet50", 16)]):
        reference = _randomize(_torch_resnet(preset, base=base), seed)
        files[preset, base] = _save(reference, directory / f"{preset}_{base}.pth")
    return files


@needs_torch
@pytest.mark.parametrize(
    "preset, base, output_stride",
    # resnet18 at output stride 8: dilated BasicBlocks, which torchvision refuses; the reference
    # dilates them as this package does (experiments/torch_reference.py).
    [("resnet18", 64, 32), ("resnet18", 64, 8), ("resnet50", 64, 32), ("resnet50", 16, 16),
     ("resnet50", 16, 8)],
)
def test_resnet_features_equal_torchvisions(resnet_files, preset, base, output_stride):
    reference = _torch_resnet(preset, base=base, output_stride=output_stride)
    reference.load_state_dict(torch.load(resnet_files[preset, base]))
    reference.eval()

    state_dict = weights.read_torch_state_dict(resnet_files[preset, base])
    for name, tensor in reference.state_dict().items():
        np.testing.assert_array_equal(state_dict[name], tensor.numpy(), err_msg=name)
    variables = weights.resnet_variables_from_torchvision(
        state_dict, preset=preset, base_width=base
    )

    images = _images(67, 45)  # odd sizes: PyTorch's padding arithmetic must be matched exactly
    with torch.no_grad():
        expected = reference.features(torch.from_numpy(images).permute(0, 3, 1, 2))
    model = ResNet(**RESNET_PRESETS[preset], base_width=base, output_stride=output_stride)
    features = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    for layer, name in FEATURE_OF_LAYER.items():
        _assert_close(features[name], _nhwc(expected[layer]), f"{preset} {name}")


@needs_torch
def test_resnet_conversion_logs_the_ignored_classifier(resnet_files, caplog):
    state_dict = weights.read_torch_state_dict(resnet_files["resnet18", 64])
    with caplog.at_level(logging.INFO, logger="absl"):  # the package logs through absl
        variables = weights.resnet_variables_from_torchvision(state_dict, preset="resnet18")
    assert "['fc.weight', 'fc.bias']" in caplog.text
    assert "num_batches_tracked" not in caplog.text
    kernel = variables["params"]["layer2_0"]["downsample"]["conv"]["kernel"]
    torch_weight = state_dict["layer2.0.downsample.0.weight"]  # [O, I, kh, kw] -> [kh, kw, I, O]
    np.testing.assert_array_equal(kernel, torch_weight.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        variables["batch_stats"]["stem"]["bn"]["var"], state_dict["bn1.running_var"]
    )


@needs_torch
@pytest.mark.parametrize(
    "edit, preset, message",
    [
        (lambda sd: sd, "resnet34", r"missing torch keys \(\d+\): 'layer1\.2\."),
        (lambda sd: sd, "resnet50", r"'layer1.0.conv1.weight' has shape \(64, 64, 3, 3\)"),
        (lambda sd: {**sd, "layer5.0.conv1.weight": sd["conv1.weight"]}, "resnet18",
         r"torch keys with no place in this model \(1\): 'layer5.0.conv1.weight'"),
        (lambda sd: {**sd, "layer1.0.bn2.running_var": np.ones(3, np.float32)}, "resnet18",
         r"shape mismatches \(1\): 'layer1.0.bn2.running_var' has shape \(3,\) but "
         r"'batch_stats/layer1_0/conv2/bn/var' has \(64,\)"),
        (lambda sd: {k: v for k, v in sd.items() if k != "layer4.1.bn2.bias"}, "resnet18",
         r"missing torch keys \(1\): 'layer4.1.bn2.bias' \(for 'params/layer4_1/conv2/bn/bias'"),
        (lambda sd: {f"backbone.{k}": v for k, v in sd.items()}, "resnet18",
         "deeplabv3_variables_from_torchvision"),
        (lambda sd: sd, "resnet200", "valid presets"),
    ],
)
def test_resnet_conversion_errors_name_the_key(resnet_files, edit, preset, message):
    state_dict = edit(weights.read_torch_state_dict(resnet_files["resnet18", 64]))
    with pytest.raises(ValueError, match=message):
        weights.resnet_variables_from_torchvision(state_dict, preset=preset)


@needs_torch
def test_load_pretrained_backbone_replaces_only_the_backbone(resnet_files):
    config = model_configs.deeplabv3(backbone="resnet18", num_classes=3, aspp_channels=8)
    model = create_model(config)
    variables = random_variables(model, jnp.zeros((1, 32, 32, 3)))
    loaded = weights.load_pretrained_backbone(variables, resnet_files["resnet18", 64],
                                              preset="resnet18")
    expected = weights.resnet_variables_from_torchvision(
        weights.read_torch_state_dict(resnet_files["resnet18", 64]), preset="resnet18"
    )
    for collection in ("params", "batch_stats"):
        assert jax.tree.all(jax.tree.map(
            np.array_equal, loaded[collection]["backbone"], expected[collection]
        ))
        for name in variables[collection]:
            if name != "backbone":
                assert loaded[collection][name] is variables[collection][name]
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)

    config.base_width = 32
    narrow = create_model(config)
    with pytest.raises(ValueError, match=r"mismatches .*'layer1.0.bn1.bias' has shape \(64,\)"):
        weights.load_pretrained_backbone(
            init_shapes(narrow, jnp.zeros((1, 32, 32, 3))), resnet_files["resnet18", 64],
            preset="resnet18",
        )
    with pytest.raises(ValueError, match=r"preset='resnet34', but the model's backbone has "
                                         r"blocks per stage \(2, 2, 2, 2\)"):
        weights.load_pretrained_backbone(variables, resnet_files["resnet18", 64], preset="resnet34")
    with pytest.raises(ValueError, match=r"Pass scope="):
        weights.load_pretrained_backbone(
            variables, resnet_files["resnet18", 64], preset="resnet18", scope="encoder"
        )


# ----------------------------------------------------------------------------------------------
# DeepLabV3.
# ----------------------------------------------------------------------------------------------


def _subtree(variables, name):
    return {collection: tree[name] for collection, tree in variables.items()}


def _compare_deeplabv3(reference, path, images):
    """Converts the state dict at `path`; compares logits and auxiliary logits with those of
    `reference` (torchvision's interface: a dict with 'out' and 'aux')."""
    state_dict = weights.read_torch_state_dict(path)
    config = weights.deeplabv3_config_from_torchvision(state_dict)
    model = create_model(config)
    backbone = create_backbone(config)
    variables = weights.deeplabv3_variables_from_torchvision(state_dict)

    @jax.jit
    def logits_and_aux(variables, images):
        logits = model.apply(variables, images, train=False).logits
        # Eval mode runs no auxiliary head; apply it as the model does (on 'stage3', upsampled),
        # with the running statistics as torchvision's eval mode does.
        stage3 = backbone.apply(_subtree(variables, "backbone"), images, train=False)["stage3"]
        aux = FCNHead(config["num_classes"]).apply(
            _subtree(variables, "aux_head"), stage3, train=False
        )
        return logits, resize_bilinear(aux, *images.shape[1:3])

    logits, aux = logits_and_aux(variables, images)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
    _assert_close(logits, _nhwc(expected["out"]), "logits")
    _assert_close(aux, _nhwc(expected["aux"]), "aux logits")
    return config

    _assert_close(logits, _nhwc(expected), "logits")
    _assert_close(aux, _nhwc(expected_aux), "aux logits")
    return config


@needs_torch
def test_small_deeplabv3_logits_equal_the_references(tmp_path):
    reference = _randomize(_torch_deeplabv3(5, base=8, channels=16), seed=3)
    path = _save(reference, tmp_path / "deeplab.pth")
    config = _compare_deeplabv3(reference, path, _images(37, 29))
    assert config == dict(
        name="deeplabv3", backbone="resnet50", base_width=8, num_classes=5, output_stride=8,
        atrous_rates=(12, 24, 36), aspp_channels=16, aux_head=True, stem="imagenet",
        multi_grid=(1, 1, 1), zero_init_residual=False, dropout_rate=0.5, separable=False,
        dtype="float32", pretrained="",
    )
    without_aux = weights.deeplabv3_variables_from_torchvision(
        weights.read_torch_state_dict(path), aux_head=False
    )
    assert "aux_head" not in without_aux["params"]


@needs_torch
def test_deeplabv3_resnet50_logits_equal_torchvisions(tmp_path):
    # The real size (~42M parameters): every key, shape and rate of torchvision's model.
    if torchvision is not None:
        reference = torchvision.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=21, aux_loss=True
        )
    else:
        reference = _torch_deeplabv3(21)
    reference = _randomize(reference, seed=4)
    path = _save(reference, tmp_path / "deeplabv3_resnet50.pth")
    config = _compare_deeplabv3(reference, path, _images(33, 41))
    assert config["backbone"] == "resnet50" and config["num_classes"] == 21


@needs_torch
def test_deeplabv3_conversion_refuses_a_separable_head():
    reference = _randomize(_torch_deeplabv3(5, base=8, channels=16))
    state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
    config = {**weights.deeplabv3_config_from_torchvision(state_dict), "separable": True}
    target = init_shapes(create_model(config), jnp.zeros((1, 16, 16, 3)))
    module_key = weights.deeplabv3_module_key(target["params"])
    with pytest.raises(ValueError, match=r"without a torchvision counterpart \(\d+\): .*"
                                         r"'params/aspp/atrous0/depthwise/conv/kernel'"):
        weights.convert_torchvision(state_dict, target, module_key)


@needs_torch
def test_load_pretrained_backbone_takes_the_backbone_of_a_segmentation_state_dict(tmp_path):
    reference = _randomize(_torch_deeplabv3(5, base=8, channels=16), seed=5)
    path = _save(reference, tmp_path / "deeplab.pth")
    model = create_model(model_configs.deeplabv3plus(backbone="resnet50", base_width=8,
                                                     num_classes=2, aspp_channels=8))
    variables = random_variables(model, jnp.zeros((1, 32, 32, 3)))
    loaded = weights.load_pretrained_backbone(variables, path, preset="resnet50")
    np.testing.assert_array_equal(
        loaded["params"]["backbone"]["layer3_5"]["conv3"]["bn"]["scale"],
        reference.backbone.layer3[5].bn3.weight.detach().numpy(),
    )
    assert loaded["params"]["decoder"] is variables["params"]["decoder"]


# ----------------------------------------------------------------------------------------------
# MobileNetV2.
# ----------------------------------------------------------------------------------------------


def _torch_mobilenet_v2():
    if torchvision is not None:
        return torchvision.models.mobilenet_v2(weights=None)
    return _TorchMobileNetV2()


@needs_torch
def test_mobilenet_v2_features_equal_torchvisions(tmp_path):
    reference = _randomize(_torch_mobilenet_v2(), seed=6)
    assert sum(p.numel() for p in reference.features.parameters()) == 2_223_872
    path = _save(reference, tmp_path / "mobilenet_v2.pth")
    variables = weights.mobilenet_v2_variables_from_torchvision(
        weights.read_torch_state_dict(path)
    )

    images = _images(67, 45)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        expected = {}
        for index, layer in enumerate(reference.features):
            x = expected[index] = layer(x)
    model = MobileNetV2()
    features = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    for index, name in [(3, "low_level"), (6, "stage2"), (13, "stage3"), (18, "high_level")]:
        _assert_close(features[name], _nhwc(expected[index]), name)

    deeplab = create_model(model_configs.deeplabv3(backbone="mobilenet_v2", num_classes=2,
                                                   aspp_channels=8))
    shapes = init_shapes(deeplab, jnp.zeros((1, 32, 32, 3)))
    loaded = weights.load_pretrained_backbone(shapes, path, preset="mobilenet_v2")
    np.testing.assert_array_equal(
        loaded["params"]["backbone"]["block1"]["project"]["conv"]["kernel"][0, 0],
        reference.features[1].conv[1].weight.detach().numpy()[:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(
        loaded["batch_stats"]["backbone"]["block2"]["project"]["bn"]["mean"],
        reference.features[2].conv[3].running_mean.numpy(),
    )


# ----------------------------------------------------------------------------------------------
# The references themselves, where torchvision is available.
# ----------------------------------------------------------------------------------------------


@needs_torch
@needs_torchvision
def test_references_have_torchvisions_layout():
    def layout(module):
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    models = torchvision.models
    without_fc = lambda m: {k: v for k, v in layout(m).items() if not k.startswith("fc.")}
    assert without_fc(_torch_resnet("resnet50")) == without_fc(models.resnet50(weights=None))
    assert layout(_TorchMobileNetV2()) == layout(models.mobilenet_v2(weights=None, num_classes=10))
    assert layout(_torch_deeplabv3(21)) == layout(models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True))


@needs_torch
def test_training_starts_from_config_model_pretrained(quick_config, tmp_path):
    # config.model.pretrained puts the converted weights into a fresh run's backbone; the heads
    # keep their initialisation.
    from seg_jax import train

    reference = _randomize(_torch_resnet("resnet18", base=quick_config.model.base_width))
    path = _save(reference, tmp_path / "resnet18.pth")
    expected = weights.resnet_variables_from_torchvision(
        weights.read_torch_state_dict(path), preset="resnet18",
        base_width=quick_config.model.base_width)
    quick_config.model.pretrained = str(path)
    state, step = train.Experiment(quick_config, str(tmp_path / "run")).initial_state()
    assert step == 0
    for collection, loaded in (("params", state.params), ("batch_stats", state.batch_stats)):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded["backbone"]),
                     expected[collection])
