"""The backbone registry, [B, 3, H, W] -> [B, D] features, classifier removed, random init.

  resnet18 | resnet50 | mobilenet_v2   torchvision networks; the modules stay plain torchvision ones (same
                                       class, same parameter names), so a ResNet-18 state_dict at width 64
                                       loads into `torchvision.models.resnet18()` whose `fc` is Identity
  timm:<name>                          any timm model by name (`timm.list_models()`), never pretrained;
                                       with model.patch_size > 0 a patch model (ViT, DeiT, ...) built for
                                       the global view size with that patch and timm's dynamic image size,
                                       so multi-crop local views of another size run through the same
                                       network (position embeddings interpolated; sides that are not a
                                       multiple of the patch are zero-padded up to one)
"""

from __future__ import annotations

import timm
import torchvision
from torch import nn

from trainer.config import ModelConfig

TIMM_PREFIX = "timm:"
_RESNETS = {
    "resnet18": (torchvision.models.resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet50": (torchvision.models.resnet.Bottleneck, [3, 4, 6, 3]),
}
TORCHVISION = (*_RESNETS, "mobilenet_v2")


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


def _timm(name: str, patch_size: int, image_size: int) -> tuple[nn.Module, int]:
    # dynamic_img_pad: a view whose side is not a multiple of the patch (14 px local crops of 32 px
    # images) is zero-padded up to one; set aug.local_size to a multiple of the patch to avoid padding
    patch = ({"img_size": image_size, "patch_size": patch_size, "dynamic_img_size": True, "dynamic_img_pad": True}
             if patch_size else {})
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, **patch)
    except TypeError as err:  # a convolutional network takes no image or patch size
        raise ValueError(f"model.patch_size = {patch_size}: {TIMM_PREFIX}{name} is not a patch model ({err}); "
                         "set model.patch_size = 0") from None
    return net, net.num_features


def check_backbone(name: str) -> None:
    """ValueError unless `name` is in the registry (the config's check, before anything is built)."""
    if name not in TORCHVISION and not (name.startswith(TIMM_PREFIX) and timm.is_model(name[len(TIMM_PREFIX):])):
        raise ValueError(f"'model.backbone' = {name!r}: choose one of {', '.join(TORCHVISION)} or "
                         f"{TIMM_PREFIX}<a name in timm.list_models()>, e.g. {TIMM_PREFIX}vit_tiny_patch16_224")


def build_backbone(model: ModelConfig, image_size: int) -> tuple[nn.Module, int]:
    """The configured backbone for global views of `image_size` px and its feature dim D.

    ResNet-18: D = 8 x width (512 at width 64); ResNet-50: D = 32 x width (2048); MobileNetV2: D = 1280;
    timm: the model's num_features (192 for ViT-Tiny).
    """
    check_backbone(model.backbone)
    if model.width < 1:
        raise ValueError(f"model.width must be >= 1, got {model.width}")
    if model.backbone not in _RESNETS and model.width != 64:
        raise ValueError(f"model.width = {model.width} applies to ResNets only; {model.backbone} needs 64")
    if model.patch_size and not model.backbone.startswith(TIMM_PREFIX):
        raise ValueError(f"model.patch_size = {model.patch_size} applies to timm patch models only, "
                         f"not {model.backbone}")
    if model.backbone.startswith(TIMM_PREFIX):
        if model.small_stem:
            raise ValueError(f"model.small_stem applies to torchvision networks, not {model.backbone}")
        return _timm(model.backbone[len(TIMM_PREFIX):], model.patch_size, image_size)
    if model.backbone in _RESNETS:
        return _resnet(model.backbone, model.width, model.small_stem)
    return _mobilenet_v2(model.small_stem)
