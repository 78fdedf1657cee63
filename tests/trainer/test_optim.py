"""LARS against a hand-written float64 step; parameter groups; the warmup + cosine schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tolerance import rounding_bound
from torch import nn

from trainer.config import OptimConfig
from trainer.optim import LARS, build_optimizer, lr_at


def lars_reference(p, g, buf, lr, wd, momentum, eta):
    """One LARS step in float64 (VICReg's main_vicreg.py, written out): ndim == 1 skips decay and trust ratio."""
    p, g, buf = p.double(), g.double(), buf.double()
    if p.ndim > 1:
        d = g + wd * p
        pn, dn = p.norm().item(), d.norm().item()
        if pn > 0 and dn > 0:
            d = d * (eta * pn / dn)
    else:
        d = g
    buf = momentum * buf + d
    return p - lr * buf, buf


def test_lars_matches_float64_reference_over_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    with torch.no_grad():
        model[2].weight.zero_()  # |p| = 0: the trust ratio must fall back to 1
    groups = [{"name": "all", "params": list(model.parameters())}]
    cfg = OptimConfig(name="lars", weight_decay=0.05, momentum=0.9, trust_coefficient=0.01)
    opt = build_optimizer(cfg, groups, lr=0.7)
    assert isinstance(opt, LARS)
    ref = {n: (p.detach().double().clone(), torch.zeros_like(p, dtype=torch.float64)) for n, p in model.named_parameters()}
    for step in range(3):
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
            ref[n] = lars_reference(ref[n][0], grads[n], ref[n][1], 0.7, 0.05, 0.9, 0.01)
        opt.step()
        for n, p in model.named_parameters():
            # per step a weight takes a length-numel norm twice (trust ratio), then a few elementwise
            # ops at the scale of the weight and of lr x momentum buffer; float32 against float64
            scale = p.detach().abs().max().item() + 0.7 * ref[n][1].abs().max().item()
            bound = rounding_bound(torch.float32, scale, (step + 1) * (2 * p.numel() + 8))
            torch.testing.assert_close(p.detach().double(), ref[n][0], rtol=0, atol=bound, msg=n)


def test_groups_split_no_decay_for_vectors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    groups = [{"name": "backbone", "params": list(model.parameters())}]
    for name in ("lars", "sgd", "adamw"):
        opt = build_optimizer(OptimConfig(name=name, weight_decay=0.1), groups, lr=1.0)
        by_name = {g["name"]: g for g in opt.param_groups}
        assert by_name["backbone"]["weight_decay"] == 0.1
        assert [p.ndim for p in by_name["backbone"]["params"]] == [4]
        assert by_name["backbone.no_decay"]["weight_decay"] == 0.0
        assert len(by_name["backbone.no_decay"]["params"]) == 3  # conv bias, bn weight, bn bias


@pytest.mark.parametrize("final_ratio", [0.0, 0.1])
def test_schedule_warmup_then_cosine(final_ratio):
    lrs = [lr_at(s, peak_lr=2.0, warmup_steps=4, total_steps=14, final_lr_ratio=final_ratio) for s in range(16)]
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[4] == pytest.approx(2.0)
    final = 2.0 * final_ratio
    assert lrs[9] == pytest.approx(final + (2.0 - final) * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[14] == pytest.approx(final) and lrs[15] == pytest.approx(final)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
