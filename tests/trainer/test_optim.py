"""LARS against a hand-written float64 step; parameter groups; the warmup + cosine schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tolerance import rounding_bound
from torch import nn

from trainer.config import OptimConfig
from trainer.optim import LARS, build_optimizer, cosine, lr_at, set_hyperparameters


def lars_reference(p, g, buf, lr, wd, momentum, eta, clip, clipped):
    """One LARS step in float64 (VICReg's main_vicreg.py, written out; with `clip`, solo-learn's
    `clip_lr`: the ratio divided by lr and capped at 1): ndim == 1 skips decay and trust ratio. Appends to
    `clipped` whether the cap bound, for tensors the ratio applies to."""
    p, g, buf = p.double(), g.double(), buf.double()
    if p.ndim > 1:
        d = g + wd * p
        pn, dn = p.norm().item(), d.norm().item()
        if pn > 0 and dn > 0:
            q = eta * pn / dn
            if clip:
                clipped.append(q / lr > 1)
                q = min(q / lr, 1.0)
            d = d * q
    else:
        d = g
    buf = momentum * buf + d
    return p - lr * buf, buf


@pytest.mark.parametrize("eta, clip, lr", [(0.01, False, 0.7), (5.0, True, 1.5)])
def test_lars_matches_float64_reference_over_steps(eta, clip, lr):
    """lr 1.5 under clip: a zero-norm tensor's step stays lr x d, not divided by lr as the cap would."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3), nn.Linear(3, 3))
    with torch.no_grad():
        model[2].weight.zero_()  # |p| = 0: the trust ratio must fall back to 1
    groups = [{"name": "all", "params": list(model.named_parameters())}]
    cfg = OptimConfig(name="lars", weight_decay=0.05, momentum=0.9, trust_coefficient=eta, trust_clip=clip)
    opt = build_optimizer(cfg, groups, lr=lr)
    assert isinstance(opt, LARS)
    ref = {n: (p.detach().double().clone(), torch.zeros_like(p, dtype=torch.float64)) for n, p in model.named_parameters()}
    clipped = []
    for step in range(3):
        # the first layer's gradients 100x larger: under clip its ratio stays below the cap, the last's not
        grads = {n: torch.randn_like(p) * (100.0 if n.startswith("0.") else 1.0) for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
            ref[n] = lars_reference(ref[n][0], grads[n], ref[n][1], lr, 0.05, 0.9, eta, clip, clipped)
        opt.step()
        for n, p in model.named_parameters():
            # per step a weight takes a length-numel norm twice (trust ratio), then a few elementwise
            # ops at the scale of the weight and of lr x momentum buffer; float32 against float64
            scale = p.detach().abs().max().item() + lr * ref[n][1].abs().max().item()
            bound = rounding_bound(torch.float32, scale, (step + 1) * (2 * p.numel() + 8))
            torch.testing.assert_close(p.detach().double(), ref[n][0], rtol=0, atol=bound, msg=n)
    assert not clip or (any(clipped) and not all(clipped))  # the cap both bound and did not


def test_groups_split_no_decay_for_vectors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    groups = [{"name": "backbone", "params": list(model.named_parameters())}]
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


def test_cosine_warmup_from_and_constant_after_warmup():
    """DINO's teacher temperature: linear 0.04 -> 0.07 over the warmup, then constant (start == end)."""
    temps = [cosine(s, start=0.07, end=0.07, total_steps=10, warmup_steps=3, warmup_from=0.04) for s in range(12)]
    assert temps[:3] == pytest.approx([0.05, 0.06, 0.07])
    assert temps[3:] == pytest.approx([0.07] * 9)
    # EMA momentum from 0.996 up to 1: 1 - (1 - 0.996)(cos(pi s / T) + 1) / 2, no warmup
    taus = [cosine(s, start=0.996, end=1.0, total_steps=8) for s in range(9)]
    assert taus == pytest.approx([1 - 0.004 * (math.cos(math.pi * s / 8) + 1) / 2 for s in range(9)], abs=1e-15)


class TinyViT(nn.Module):
    """The parameter names a timm ViT has: tokens and position embedding are 3-D but never decayed."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.reg_token = nn.Parameter(torch.zeros(1, 2, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


def test_no_decay_by_name_and_shape():
    net = TinyViT()
    groups = [{"name": "backbone", "params": [(f"backbone.{n}", p) for n, p in net.named_parameters()]}]
    opt = build_optimizer(OptimConfig(name="lars", weight_decay=0.1), groups, lr=1.0)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert [p is net.proj.weight for p in by_name["backbone"]["params"]] == [True]
    no_decay = {id(p) for p in by_name["backbone.no_decay"]["params"]}
    assert no_decay == {id(p) for p in (net.cls_token, net.reg_token, net.pos_embed, net.proj.bias,
                                        net.norm.weight, net.norm.bias)}
    assert by_name["backbone.no_decay"]["lars_exclude"] and not by_name["backbone"]["lars_exclude"]


def test_group_hyperparameters_are_honoured():
    """lr_scale, no_decay_lr_scale, a group's own weight decay and a cosine weight-decay schedule."""
    torch.manual_seed(0)
    head, body = nn.Linear(3, 2), nn.Linear(3, 2)
    groups = [{"name": "head", "params": list(head.named_parameters()), "lr_scale": 0.5,
               "no_decay_lr_scale": 0.024, "weight_decay": 0.04, "weight_decay_end": 0.4},
              {"name": "body", "params": list(body.named_parameters())}]
    opt = build_optimizer(OptimConfig(name="sgd", momentum=0.0, weight_decay=1e-3), groups, lr=2.0)
    by_name = {g["name"]: g for g in opt.param_groups}
    total = 10
    for step in (0, 5, 10):
        set_hyperparameters(opt, 2.0, step, total)
        wd = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * step / total))
        assert (by_name["head"]["lr"], by_name["head"]["weight_decay"]) == pytest.approx((1.0, wd))
        assert (by_name["head.no_decay"]["lr"], by_name["head.no_decay"]["weight_decay"]) == pytest.approx((0.048, 0))
        assert (by_name["body"]["lr"], by_name["body"]["weight_decay"]) == pytest.approx((2.0, 1e-3))
        assert by_name["body.no_decay"]["lr"] == pytest.approx(2.0)
    # the optimizer steps with them: SGD, no momentum, p - lr (g + wd p) in float64
    w0, b0 = head.weight.detach().double().clone(), head.bias.detach().double().clone()
    head.weight.grad, head.bias.grad = torch.ones_like(head.weight), torch.ones_like(head.bias)
    opt.step()
    # float32: a product, a sum and a difference per element, each rounding within eps32/2 of |w| + lr (1 + wd |w|)
    bound = rounding_bound(torch.float32, (w0.abs() + 1.0 * (1 + 0.4 * w0.abs())).max().item(), 2)
    torch.testing.assert_close(head.weight.detach().double(), w0 - 1.0 * (1 + 0.4 * w0), rtol=0, atol=bound)
    bound = rounding_bound(torch.float32, b0.abs().max().item() + 0.048, 2)
    torch.testing.assert_close(head.bias.detach().double(), b0 - 0.048 * 1, rtol=0, atol=bound)


def test_lars_exclude_group_is_plain_momentum_sgd():
    """A 2-D tensor in a `lars_exclude` group (a position embedding) gets neither decay nor trust ratio."""
    p = nn.Parameter(torch.randn(1, 5, 4))
    opt = LARS([{"params": [p], "lars_exclude": True, "weight_decay": 0.5}], lr=0.1, momentum=0.0)
    before = p.detach().clone()
    p.grad = torch.full_like(p, 2.0)
    opt.step()
    # the update and the test's subtraction each round within eps32/2 of |p| + 0.2
    torch.testing.assert_close(p.detach(), before - 0.2, rtol=0, atol=rounding_bound(torch.float32,
                                                                                   before.abs().max().item() + 0.2, 1))
