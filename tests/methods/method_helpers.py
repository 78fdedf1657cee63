"""Tiny methods for tests: ResNet-18 at width 8 with the small stem (or timm's ViT-Tiny, patch 4), 32-wide heads."""

from __future__ import annotations

import dataclasses
import socket

import torch
from torch import nn

from trainer.methods import METHODS
from trainer.registry import load_config
from trainer.types import Batch, ViewSpec

VIT = "timm:vit_tiny_patch16_224"
BACKBONES = ("resnet18", VIT)  # what the contract tests loop over
VIT_ONLY = {"mae"}  # methods built on patches: they refuse a ResNet (tested in their own file)


def tiny_method(name: str, *, image_size: int = 16, local_crops: int = 1, width: int = 8, head_dim: int = 32,
                backbone: str = "resnet18", overrides: tuple[str, ...] = ()):
    """(method, its views) built from the typed config with every `*_dim` head size set to head_dim;
    `backbone=VIT` is ViT-Tiny with 4 px patches (width and stem apply to the ResNet only)."""
    model = ([f"model.backbone={backbone}", "model.patch_size=4"] if backbone.startswith("timm:")
             else [f"model.width={width}", "model.small_stem=true"])
    cfg = load_config(
        overrides=[
            f"method.name={name}",
            *model,
            f"data.image_size={image_size}",
            f"aug.local_crops={local_crops}",
            *overrides,
        ]
    )
    dims = {f.name: head_dim for f in dataclasses.fields(cfg.method) if f.name.endswith("_dim")}
    method_cfg = dataclasses.replace(cfg.method, **dims)
    cls = METHODS[name]
    return cls(method_cfg, cfg.model, cfg.data.image_size), cls.views(method_cfg, cfg.data, cfg.aug)


# The longest accumulation chain of a float64 gradient of a BN-free tiny_method(image_size=8, width=4,
# head_dim=16) over a batch of at most 8: ~20 layers forward and backward, each a fan-in of at most
# 9 x 32 and a batch reduction of at most 8 rows x 8 x 8 positions (tolerance.rounding_bound's length).
TINY_CHAIN = 2 * 20 * (9 * 32 + 8 * 8 * 8)


def random_batch(views: list[ViewSpec], n: int, seed: int = 0, dtype=torch.float32) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch([torch.randn(n, 3, v.size, v.size, generator=gen, dtype=dtype) for v in views])


def without_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm replaced by Identity, in place: per-sample networks, so a batch split over
    ranks computes exactly what the whole batch does in one process."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now, for a gloo rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
