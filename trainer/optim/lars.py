"""LARS: SGD with momentum whose step for each weight tensor is rescaled by a layer-wise trust ratio.

You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017; the variant of
facebookresearch/vicreg `main_vicreg.py` (also used for SimCLR and BYOL): groups marked `lars_exclude`
(biases, norm weights, position embeddings and tokens: trainer/optim/groups.py) get neither weight
decay nor the trust ratio. With `clip` (NVIDIA apex's LARC clip mode, solo-learn's `clip_lr`) the
layer's step is at most the plain SGD step: lr x min(trust ratio / lr, 1).
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """For a tensor p with gradient g in a group without `lars_exclude`:

        d = g + weight_decay * p
        q = trust_coefficient * |p| / |d|;  with clip q = min(q / lr, 1);  q = 1 when either norm is 0
        d = q * d;  m = momentum * m + d;  p = p - lr * m

    In a `lars_exclude` group d = g.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001, clip: bool = False):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                                  "trust_coefficient": trust_coefficient, "clip": clip, "lars_exclude": False})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not group["lars_exclude"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    one = torch.ones_like(p_norm)
                    # torch.where keeps this on the device: no host sync per tensor
                    ratio = group["trust_coefficient"] * p_norm / d_norm
                    if group["clip"]:
                        ratio = torch.clamp(ratio / group["lr"], max=1.0)
                    q = torch.where((p_norm > 0) & (d_norm > 0), ratio, one)
                    d = d.mul(q)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss
