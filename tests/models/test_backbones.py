"""Backbones: torchvision networks stay plain torchvision ones (same modules, same names, loadable both
ways); timm models come by name, ViTs built for small images with dynamic image size."""

import pytest
import timm
import torch
import torchvision
from torch import nn

from trainer.config import ModelConfig
from trainer.models import build_backbone, mlp
from trainer.optim import no_decay


def test_resnet18_state_dict_loads_into_torchvision():
    net, dim = build_backbone(ModelConfig(backbone="resnet18"), 32)
    reference = torchvision.models.resnet18()
    reference.fc = nn.Identity()
    reference.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    net.eval(), reference.eval()
    assert dim == 512
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,width,dim", [("resnet18", 8, 64), ("resnet50", 4, 128)])
def test_resnet_width_and_small_stem(name, width, dim):
    net, got_dim = build_backbone(ModelConfig(backbone=name, small_stem=True, width=width), 32)
    assert got_dim == dim
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.out_channels) == ((3, 3), (1, 1), width)
    assert isinstance(net.maxpool, nn.Identity)
    assert net.layer1[0].conv1.in_channels == width
    # 8 px stays 8 px into layer1 (no stride-2 conv, no max-pool): 1 px after three stride-2 stages
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    assert trunk(torch.randn(2, 3, 8, 8)).shape == (2, dim, 1, 1)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, dim)


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_keeps_torchvision_names(name, dim):
    """Any width and stem: the parameter names of torchvision's network of that depth (fc removed)."""
    reference = getattr(torchvision.models, name)()
    reference.fc = nn.Identity()
    for width, small_stem in ((64, False), (4, True)):
        net, got_dim = build_backbone(ModelConfig(backbone=name, small_stem=small_stem, width=width), 32)
        assert got_dim == dim * width // 64
        assert net.state_dict().keys() == reference.state_dict().keys()


def test_resnet_init_follows_torchvision():
    net, _ = build_backbone(ModelConfig(backbone="resnet18", small_stem=True, width=8), 32)
    conv = net.layer2[0].conv1  # kaiming normal, fan_out, relu gain: std = sqrt(2 / (out x k x k))
    std = conv.weight.std().item()
    assert abs(std - (2 / (conv.out_channels * 9)) ** 0.5) < 0.15 * std
    assert torch.equal(net.bn1.weight, torch.ones(8)) and torch.equal(net.bn1.bias, torch.zeros(8))


@pytest.mark.parametrize("small_stem,out_px", [(False, 1), (True, 2)])
def test_mobilenet_v2(small_stem, out_px):
    net, dim = build_backbone(ModelConfig(backbone="mobilenet_v2", small_stem=small_stem), 32)
    assert dim == 1280 and isinstance(net, torchvision.models.MobileNetV2)
    assert net.features(torch.randn(2, 3, 32, 32)).shape[-1] == out_px  # overall stride 32, or 16
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 1280)


@pytest.mark.parametrize(
    "model,key",
    [
        (ModelConfig(backbone="vit"), "model.backbone"),
        (ModelConfig(backbone="timm:no_such_net"), "model.backbone"),
        (ModelConfig(backbone="mobilenet_v2", width=8), "model.width"),
        (ModelConfig(width=0), "model.width"),
        (ModelConfig(backbone="resnet18", patch_size=4), "model.patch_size"),
        (ModelConfig(backbone="timm:resnet18", patch_size=4), "model.patch_size"),
        (ModelConfig(backbone="timm:vit_tiny_patch16_224", patch_size=4, width=8), "model.width"),
        (ModelConfig(backbone="timm:vit_tiny_patch16_224", patch_size=4, small_stem=True), "model.small_stem"),
    ],
)
def test_bad_model_config_names_the_key(model, key):
    with pytest.raises(ValueError, match=key):
        build_backbone(model, 32)


def test_mlp_shapes():
    simclr = mlp([512, 512, 128])
    assert [type(m) for m in simclr] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    vicreg = mlp([64, 32, 32, 16], last_bias=False)
    assert [type(m) for m in vicreg] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert vicreg[-1].bias is None and vicreg[0].bias is not None
    plain = mlp([8, 4, 2], bn=False, last_bn=True)
    assert [type(m) for m in plain] == [nn.Linear, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert [(m.in_features, m.out_features) for m in vicreg if isinstance(m, nn.Linear)] == [
        (64, 32),
        (32, 32),
        (32, 16),
    ]
    assert vicreg(torch.randn(5, 64)).shape == (5, 16)
    with pytest.raises(ValueError):
        mlp([8])


def test_timm_vit_at_32px_patch_4_takes_local_crops_of_another_size():
    model = ModelConfig(backbone="timm:vit_tiny_patch16_224", patch_size=4)
    torch.manual_seed(0)
    net, dim = build_backbone(model, 32)
    assert dim == 192 and net.patch_embed.patch_size == (4, 4)
    assert net.pos_embed.shape[1] == net.num_prefix_tokens + (32 // 4) ** 2  # built for the global view size
    net.eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 192)  # a local crop: 16 patches, embeddings interpolated
    assert net(torch.randn(2, 3, 14, 14)).shape == (2, 192)  # padded up to 16 px
    # same weights as timm builds by itself (no pretrained download), the class token read out
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                                  patch_size=4, dynamic_img_size=True, dynamic_img_pad=True).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
    # no weight decay where timm's own list says (tokens, position embedding) and on biases and norms
    excluded = {n for n, p in net.named_parameters() if no_decay(n, p)}
    params = dict(net.named_parameters())
    assert excluded == {n for n in params if n in net.no_weight_decay() or params[n].ndim <= 1}
    assert {"cls_token", "pos_embed"} <= excluded


def test_timm_convnet_by_name():
    net, dim = build_backbone(ModelConfig(backbone="timm:resnet18"), 32)
    assert dim == 512 and net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
