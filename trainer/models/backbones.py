"""Backbones: torchvision networks with their classifier removed, [B, 3, H, W] -> [B, D] features.

The modules stay plain torchvision ones (same class, same parameter names), so a ResNet-18 state_dict
at width 64 loads into `torchvision.models.resnet18()` whose `fc` is `nn.Identity()`.
"""

from __future__ import annotations

import torchvision
from torch import nn

from trainer.config import ModelConfig

_RESNETS = {
    "resnet18": (torchvision.models.resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet50": (torchvision.models.resnet.Bottleneck, [3, 4, 6, 3]),
}


def _init_like_torchvision(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _resnet(name: str, width: int, small_stem: bool) -> tuple[nn.Module, int]:
    block, depths = _RESNETS[name]
    net = torchvision.models.ResNet(block, depths)
    if width != 64:  # torchvision fixes the first stage at 64 channels: rebuild the stages at `width`
        net.inplanes = width
        net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(width)
        for i, depth in enumerate(depths):
            setattr(
                net, f"layer{i + 1}", net._make_layer(block, width * 2**i, depth, stride=1 if i == 0 else 2)
            )
    if small_stem:  # CIFAR-style stem: 32-96 px images keep their resolution into layer1
        net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    if width != 64 or small_stem:
        _init_like_torchvision(net)
    net.fc = nn.Identity()
    return net, 8 * width * block.expansion


def _mobilenet_v2(small_stem: bool) -> tuple[nn.Module, int]:
    net = torchvision.models.mobilenet_v2()
    if small_stem:  # stride 1 in the first conv, as CIFAR variants of MobileNetV2 do
        net.features[0][0].stride = (1, 1)
    net.classifier = nn.Identity()
    return net, net.last_channel


def build_backbone(model: ModelConfig) -> tuple[nn.Module, int]:
    """The configured backbone (random init, no pretrained weights) and its feature dim D.

    ResNet-18: D = 8 x width (512 at width 64); ResNet-50: D = 32 x width (2048); MobileNetV2: D = 1280.
    """
    if model.width < 1:
        raise ValueError(f"model.width must be >= 1, got {model.width}")
    if model.backbone in _RESNETS:
        return _resnet(model.backbone, model.width, model.small_stem)
    if model.backbone == "mobilenet_v2":
        if model.width != 64:
            raise ValueError(f"model.width = {model.width} applies to ResNets only; mobilenet_v2 needs 64")
        return _mobilenet_v2(model.small_stem)
    raise ValueError(f"model.backbone = {model.backbone!r}: choose one of resnet18, resnet50, mobilenet_v2")
