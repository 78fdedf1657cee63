"""An exponential moving average of a module, kept in float32: BYOL's target, MoCo v3's momentum
encoder, DINO's teacher.

The EMA increment (1 - m) x (source - target) is ~4e-3 of the gap at m = 0.996, below bf16's and near
fp16's resolution, so a half-precision copy would round the update away: the copy stays float32 whatever
dtype the source is trained in (engines cast every `EMA` back to float32 after wrapping the model).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """`EMA(source)`: a float32 copy of `source` (parameters and buffers) with requires_grad=False;
    `forward` runs the copy. It is trained by `update` only, never by the optimizer."""

    def __init__(self, source: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(source).float().requires_grad_(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, source: nn.Module, momentum: float) -> None:
        """target = momentum x target + (1 - momentum) x source, in float32, for every parameter;
        buffers (BatchNorm running statistics) are copied from the source."""
        targets = list(self.module.parameters())
        torch._foreach_lerp_(targets, [p.detach().to(t.dtype) for p, t in zip(source.parameters(), targets)],
                             1 - momentum)
        for t, s in zip(self.module.buffers(), source.buffers()):
            t.copy_(s)
