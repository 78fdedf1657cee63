"""Optimizers (LARS, SGD, AdamW) over the method's parameter groups, and the lr schedule."""

from __future__ import annotations

import torch

from trainer.config import OptimConfig
from trainer.optim.lars import LARS
from trainer.optim.schedule import lr_at

__all__ = ["LARS", "build_optimizer", "lr_at", "split_decay"]


def split_decay(groups: list[dict], weight_decay: float) -> list[dict]:
    """Each named group -> `name` (weights, decayed) and `name.no_decay` (ndim == 1: biases and norm
    weights, no weight decay), dropping empty ones."""
    out = []
    for g in groups:
        weights = [p for p in g["params"] if p.ndim > 1]
        vectors = [p for p in g["params"] if p.ndim <= 1]
        if weights:
            out.append({"name": g["name"], "params": weights, "weight_decay": weight_decay})
        if vectors:
            out.append({"name": g["name"] + ".no_decay", "params": vectors, "weight_decay": 0.0})
    return out


def build_optimizer(cfg: OptimConfig, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """A torch optimizer over `groups` (from `method.parameter_groups()`) at peak lr `lr`.

    Plain torch implementations (foreach, no fused or JIT-built kernels), so DeepSpeed can take them too.
    """
    params = split_decay(groups, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(params, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas))
    raise ValueError(f"optim.name = {cfg.name!r}: choose lars, sgd or adamw")
