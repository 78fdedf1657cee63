"""Parameter groups: the method's named groups -> optimizer groups with their own hyperparameters.

A method's `parameter_groups()` returns dicts {"name": str, "params": [(param_name, tensor), ...]} that
may also carry:
  lr_scale            multiplies the scheduled lr (default 1)
  no_decay_lr_scale   lr_scale of the group's no-decay half (default lr_scale; Barlow Twins' biases)
  weight_decay        default optim.weight_decay
  weight_decay_end    if set, weight decay follows the cosine schedule from weight_decay to this (DINO)
Each group is split into `name` (decayed, LARS-adapted) and `name.no_decay`: biases and norm weights
(ndim <= 1) and, by name, position embeddings and class/register/distillation/mask tokens, which get
neither weight decay nor LARS adaptation (`lars_exclude`), as the ViT, MoCo v3 and DINO code do.
"""

from __future__ import annotations

import torch

from trainer.optim.schedule import cosine

# timm's names (VisionTransformer.no_weight_decay() and friends); matched on the last name component
NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "reg_token", "dist_token", "mask_token",
                            "relative_position_bias_table"})


def no_decay(name: str, p: torch.Tensor) -> bool:
    """Whether parameter `name` is a bias, a norm weight, a position embedding or a token."""
    return p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES


def split_decay(groups: list[dict], weight_decay: float) -> list[dict]:
    """The method's named groups -> torch optimizer groups (plain tensors), empty halves dropped."""
    out = []
    for g in groups:
        decayed = [p for n, p in g["params"] if not no_decay(n, p)]
        vectors = [p for n, p in g["params"] if no_decay(n, p)]
        lr_scale = g.get("lr_scale", 1.0)
        wd = g.get("weight_decay", weight_decay)
        if decayed:
            group = {"name": g["name"], "params": decayed, "lr_scale": lr_scale, "weight_decay": wd,
                     "lars_exclude": False}
            if "weight_decay_end" in g:
                group.update(weight_decay_start=wd, weight_decay_end=g["weight_decay_end"])
            out.append(group)
        if vectors:
            out.append({"name": g["name"] + ".no_decay", "params": vectors, "weight_decay": 0.0,
                        "lr_scale": g.get("no_decay_lr_scale", lr_scale), "lars_exclude": True})
    return out


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, step: int, total_steps: int) -> None:
    """Before optimizer step `step`: each group's lr = lr x lr_scale, scheduled weight decays set.

    Works on the group dicts, which ZeRO-wrapped optimizers keep (DeepSpeed reads them at its step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
        if "weight_decay_end" in group:
            group["weight_decay"] = cosine(step, start=group["weight_decay_start"], end=group["weight_decay_end"],
                                           total_steps=total_steps)
