"""Optimizers (LARS, SGD, AdamW) over the method's parameter groups, and the schedules."""

from __future__ import annotations

import torch

from trainer.config import OptimConfig
from trainer.optim.groups import no_decay, set_hyperparameters, split_decay
from trainer.optim.lars import LARS
from trainer.optim.schedule import cosine, lr_at

__all__ = ["LARS", "build_optimizer", "cosine", "lr_at", "no_decay", "set_hyperparameters", "split_decay"]


def build_optimizer(cfg: OptimConfig, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """A torch optimizer over `groups` (from `method.parameter_groups()`, see groups.py) at peak lr `lr`.

    Plain torch implementations (foreach, no fused or JIT-built kernels), so DeepSpeed can take them too.
    """
    params = split_decay(groups, cfg.weight_decay)
    for group in params:
        group["lr"] = lr * group["lr_scale"]
    if cfg.name == "lars":
        return LARS(params, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient,
                    clip=cfg.trust_clip)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas))
    raise ValueError(f"optim.name = {cfg.name!r}: choose lars, sgd or adamw")
