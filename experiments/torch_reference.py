"""PyTorch references of this package's ResNet and DeepLabV3, with torchvision's module names.

Used by the weight-conversion tests (tests/test_weights_import.py: outputs equal after converting
the state dict) and by the speed comparison (experiments/benchmarks/bench_vs_pytorch.py: the same
network timed in both frameworks). PyTorch is needed here and only here: the package never
imports this module.

The modules follow torchvision (`torchvision.models.resnet`, `...segmentation.deeplabv3`) key for
key, so their state dicts load into torchvision's models and convert with
`seg_jax.models.weights`; they add what torchvision lacks and this package has:
- a free stem and stage width (`base`, 64 in torchvision), so tests and benchmarks can be small;
- dilation in BasicBlock (torchvision refuses it), as `seg_jax.models.resnet.BasicBlock` does it:
  the first 3x3 conv takes the block's dilation (the previous stage's on a stage's first block,
  where that conv used to carry the stride), the second the stage's;
- the ASPP rates, its width and the classifier's output stride as arguments (torchvision fixes
  output stride 8, rates 12/24/36, width 256).
"""

import torch
import torch.nn.functional as F
from torch import nn

from seg_jax.models.resnet import RESNET_PRESETS

# torchvision's `replace_stride_with_dilation` for each output stride of the backbone.
REPLACE_STRIDE_WITH_DILATION = {32: (False, False, False), 16: (False, False, True),
                                8: (False, True, True)}


def conv_bn(in_channels, out_channels, kernel_size, *, act=None, **conv_kwargs) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ `act()`), the Sequential torchvision's heads use."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, bias=False, **conv_kwargs),
              nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample, dilation, output_dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=output_dilation,
                               dilation=output_dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """ResNet v1.5: the stride, and the dilation, on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, dilation, output_dilation):
        del output_dilation  # one 3x3 conv: it takes `dilation`, as in torchvision
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """torchvision.models.ResNet with stem width `base`; a classifier `fc` only with
    `num_classes` (torchvision's segmentation models drop it)."""

    def __init__(self, preset="resnet50", *, base=64, output_stride=32, num_classes=None):
        super().__init__()
        spec = RESNET_PRESETS[preset]
        block = BLOCKS[spec["block"]]
        self.inplanes, self.dilation = base, 1
        self.conv1 = nn.Conv2d(3, base, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        dilate = (False, *REPLACE_STRIDE_WITH_DILATION[output_stride])
        for index, blocks in enumerate(spec["stage_sizes"]):
            layer = self._make_layer(block, base * 2**index, blocks, 1 if index == 0 else 2,
                                     dilate[index])
            setattr(self, f"layer{index + 1}", layer)
        self.out_channels = self.inplanes
        if num_classes:
            self.fc = nn.Linear(self.out_channels, num_classes)

    def _make_layer(self, block, planes, blocks, stride, dilate):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = conv_bn(self.inplanes, planes * block.expansion, 1, stride=stride)
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation,
                        self.dilation)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, self.dilation, self.dilation)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x) -> dict:
        """{'layer1': ..., 'layer4': ...}: each stage's output."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        outputs = {}
        for index in range(1, 5):
            x = outputs[f"layer{index}"] = getattr(self, f"layer{index}")(x)
        return outputs


class ASPP(nn.Module):
    """torchvision.models.segmentation.deeplabv3.ASPP: a 1x1 branch, one 3x3 branch per rate,
    image pooling, and a 1x1 projection with dropout."""

    def __init__(self, in_channels, rates, channels, dropout=0.5):
        super().__init__()
        convs = [conv_bn(in_channels, channels, 1, act=nn.ReLU)]
        convs += [conv_bn(in_channels, channels, 3, act=nn.ReLU, padding=r, dilation=r)
                  for r in rates]
        pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                *conv_bn(in_channels, channels, 1, act=nn.ReLU))
        self.convs = nn.ModuleList([*convs, pooling])
        self.project = nn.Sequential(
            *conv_bn(len(self.convs) * channels, channels, 1, act=nn.ReLU), nn.Dropout(dropout))

    def forward(self, x):
        branches = [conv(x) for conv in self.convs]
        branches[-1] = F.interpolate(branches[-1], size=x.shape[-2:], mode="bilinear",
                                     align_corners=False)
        return self.project(torch.cat(branches, dim=1))


class DeepLabV3(nn.Module):
    """torchvision's `deeplabv3_resnet50(num_classes, aux_loss=aux)` by default; returns
    {'out': logits} (and 'aux') at the input's size, as torchvision does."""

    def __init__(self, num_classes, *, backbone="resnet50", base=64, output_stride=8,
                 rates=(12, 24, 36), channels=256, dropout=0.5, aux=False):
        super().__init__()
        self.backbone = ResNet(backbone, base=base, output_stride=output_stride)
        self.classifier = nn.Sequential(
            ASPP(self.backbone.out_channels, rates, channels, dropout),
            *conv_bn(channels, channels, 3, act=nn.ReLU, padding=1),
            nn.Conv2d(channels, num_classes, 1))
        if aux:
            aux_in = self.backbone.out_channels // 2
            self.aux_classifier = nn.Sequential(
                *conv_bn(aux_in, aux_in // 4, 3, act=nn.ReLU, padding=1), nn.Dropout(0.1),
                nn.Conv2d(aux_in // 4, num_classes, 1))

    def forward(self, x) -> dict:
        features = self.backbone.features(x)
        resize = lambda y: F.interpolate(y, size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)
        outputs = {"out": resize(self.classifier(features["layer4"]))}
        if hasattr(self, "aux_classifier"):
            outputs["aux"] = resize(self.aux_classifier(features["layer3"]))
        return outputs
