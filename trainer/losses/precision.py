"""Losses run in full precision: autocast off, low-precision inputs cast up to float32."""

from __future__ import annotations

import functools

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 are kept (tests use float64 end to end)."""
    return x.to(torch.promote_types(x.dtype, torch.float32)) if x.is_floating_point() else x


def full_precision(loss_fn):
    """Decorator: normalization, similarities and log-sum-exp must not run in bf16/fp16, where the
    softmax over thousands of keys and the 1e-4 of VICReg's std hinge are lost to rounding."""

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
        args = [upcast(a) if isinstance(a, torch.Tensor) else a for a in args]
        with torch.autocast(device_type=device, enabled=False):
            return loss_fn(*args, **kwargs)

    return wrapper
