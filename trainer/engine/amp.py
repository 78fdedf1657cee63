"""Mixed precision and the on-device optimizer-step mask shared by the engines."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from trainer.models.ema import EMA

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """Autocast for bf16/fp16 forward passes; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def keep_ema_float32(module: nn.Module) -> None:
    """Every `EMA` submodule (BYOL's target, a momentum encoder, a teacher) back in float32 after an
    engine cast the whole module (DeepSpeed's fp16): its (1 - m) increments would round away in half
    precision (trainer/models/ema.py). It still computes in half under autocast."""
    for m in module.modules():
        if isinstance(m, EMA):
            m.float()


@torch.no_grad()
def step_if(optimizer: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """`optimizer.step()` whose effect is undone where `ok` (a 0-dim bool tensor) is False.

    Parameters and optimizer state are snapshotted and restored with torch.where, on the device:
    no host sync decides whether to step. State the step creates (momentum on the first step) is
    reset to zeros, which is what the optimizers start from.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def tensors():
        yield from params
        for p in params:
            yield from (v for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v))

    before = {id(t): t.clone() for t in tensors()}
    optimizer.step()
    for t in tensors():
        previous = before.get(id(t))
        t.copy_(torch.where(ok.to(t.device), t, previous if previous is not None else torch.zeros_like(t)))


@torch.no_grad()
def restore_unless(ok: torch.Tensor, tensors: list[torch.Tensor], before: list[torch.Tensor]) -> None:
    """Set `tensors` back to their snapshot `before` where `ok` (0-dim bool) is False, on the device."""
    for t, previous in zip(tensors, before):
        t.copy_(torch.where(ok.to(t.device), t, previous))
