"""SyncBN: with `engine.sync_bn`, W real ranks (gloo, 127.0.0.1) compute the BatchNorm statistics,
the loss and every parameter gradient of one process on the whole batch; the DeepSpeed engine
honours the key too.

The methods keep their BatchNorms (ResNet and heads) and run in float64, so only the regrouped sums
of the per-rank statistics separate the two sides.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from method_helpers import (
    ddp_step,
    float64_method,
    on_gloo_ranks,
    random_batch,
    tiny_method,
    whole_batch_runs,
)
from tolerance import rounding_bound
from torch import nn

from trainer.config import Config, EngineConfig, OptimConfig, TrainConfig
from trainer.dist import DistContext
from trainer.engine.sync_bn import GlobalBatchNorm, convert_sync_batchnorm

NAMES = ("simclr", "byol", "vicreg")
PER_RANK = 3
# the longest accumulation chain of a float64 gradient: ~20 layers of a width-4 ResNet-18 at 8 px,
# forward and backward, each a fan-in of at most 9 x 32 and a batch reduction of at most 12 x 8 x 8
CHAIN = 2 * 20 * (9 * 32 + 12 * 8 * 8)


def batchnorm_state(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k}


def outcome(method, loss):
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    return loss, grads, batchnorm_state(method)


def rank_results(rank, world_size, inputs):
    results = {}
    for name in NAMES:
        state, views = inputs[name]
        method, _ = float64_method(name, batchnorm=True)
        method.load_state_dict(state)
        method = convert_sync_batchnorm(method, torch.device("cpu"))
        results[name] = outcome(method, ddp_step(method, views, rank, world_size))
    results["deepspeed"] = deepspeed_running_means(rank, world_size)
    return results


def deepspeed_running_means(rank, world_size):
    """One DeepSpeed step with engine.sync_bn on this rank's own images: the BatchNorm running
    means every rank ends with (equal only if the statistics were global)."""
    from trainer.engine import build_engine, make_plan

    method, views = tiny_method("simclr", image_size=8, width=4, head_dim=16)
    cfg = Config(optim=OptimConfig(name="sgd", base_lr=0.1),
                 engine=EngineConfig(name="deepspeed", sync_bn=True),
                 train=TrainConfig(global_batch_size=PER_RANK * world_size))
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, world_size, torch.device("cpu"),
                     num_samples=10 * PER_RANK * world_size)
    engine = build_engine(cfg.engine, cfg.optim, plan, method, DistContext(rank, rank, world_size, world_size),
                          nonfinite=cfg.train.nonfinite)
    assert not [m for m in engine.module.modules() if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d)]
    engine.step([random_batch(views, PER_RANK, seed=100 + rank)], lr=plan.lr, step=0)
    flat = torch.cat([m.running_mean for m in engine.module.modules() if isinstance(m, GlobalBatchNorm)])
    parts = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(parts, flat)
    return torch.stack(parts)


def test_conversion_keeps_state_dtype_and_mode_and_is_plain_batchnorm_in_one_process():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 5),
                        nn.BatchNorm1d(5, affine=False)).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2.0)
        net[1].running_var.fill_(3.0)
    net[1].bias.requires_grad_(False)  # as in a frozen EMA target
    net[4].eval()
    want_state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(7, 3, 6, 6, dtype=torch.float64)
    want = net(x)
    plain_after = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(want_state)
    synced = convert_sync_batchnorm(net, torch.device("cpu"))
    assert [type(m) for m in synced.modules()].count(GlobalBatchNorm) == 2
    assert all(torch.equal(v, want_state[k]) and v.dtype == want_state[k].dtype
               for k, v in synced.state_dict().items())
    assert synced[1].training and not synced[4].training
    assert synced[1].weight.requires_grad and not synced[1].bias.requires_grad
    assert torch.equal(synced(x), want)  # no process group: F.batch_norm itself
    assert all(torch.equal(v, plain_after[k]) for k, v in synced.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_sync_bn_equals_one_process_on_the_whole_batch(world_size, tmp_path):
    inputs, want = whole_batch_runs(NAMES, world_size * PER_RANK, outcome, batchnorm=True)
    got = on_gloo_ranks(world_size, tmp_path, rank_results, inputs)
    for name in NAMES:
        (loss, grads, stats), (ref_loss, ref_grads, ref_stats) = got[name], want[name]
        assert ref_stats and stats.keys() == ref_stats.keys() and grads.keys() == ref_grads.keys()
        # gradients against the largest of the method's (a bias before a BatchNorm has an exact 0 of
        # cancelling terms); statistics and the loss against their own size
        grad_scale = max(g.abs().max().item() for g in ref_grads.values())
        pairs = [("loss", loss, ref_loss, ref_loss.abs().item())]
        pairs += [(k, grads[k], ref_grads[k], grad_scale) for k in ref_grads]
        pairs += [(k, stats[k], ref_stats[k], ref_stats[k].abs().max().item()) for k in ref_stats]
        for key, value, ref, scale in pairs:
            torch.testing.assert_close(value, ref, rtol=0, atol=rounding_bound(torch.float64, scale, CHAIN),
                                       msg=lambda m, k=f"{name} {key}": f"{k}: {m}")
    # per-rank BatchNorm would leave each rank its own running means (its images differ)
    means = got["deepspeed"]
    assert means[0].abs().max() > 0 and all(torch.equal(m, means[0]) for m in means)


def batchnorm(dims: int, channels: int, affine: bool) -> nn.Module:
    return (nn.BatchNorm2d if dims == 4 else nn.BatchNorm1d)(channels, affine=affine).double()


def layer_rank_results(rank, world_size, cases):
    results = []
    for affine, state, x, dy in cases:
        layer = convert_sync_batchnorm(batchnorm(x.dim(), x.shape[1], affine), torch.device("cpu"))
        layer.load_state_dict(state)
        n = x.shape[0] // world_size
        part = x[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        if x.dim() == 4:
            part = part.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        y = layer(part)
        y.backward(dy[rank * n:(rank + 1) * n])
        grads = [p.grad.clone() for p in layer.parameters()]
        for g in grads:
            dist.all_reduce(g)  # each rank holds its images' share of the parameter gradient
        ys, dxs = [torch.empty_like(y) for _ in range(world_size)], [torch.empty_like(part) for _ in range(world_size)]
        dist.all_gather(ys, y.detach().contiguous())
        dist.all_gather(dxs, part.grad.contiguous())
        results.append((torch.cat(ys), torch.cat(dxs), grads, batchnorm_state(layer), part.grad.is_contiguous(
            memory_format=torch.channels_last) if x.dim() == 4 else True))
    return results


@pytest.mark.slow
def test_global_batchnorm_layer_on_channels_last_and_without_affine_equals_batchnorm(tmp_path):
    """The layer alone at W = 2: output, input gradient (channels_last in, channels_last out), the
    summed parameter gradients and the running statistics equal one BatchNorm on the whole batch."""
    world_size, gen = 2, torch.Generator().manual_seed(0)
    cases = []
    bns = []
    for affine, shape in ((True, (6, 5, 4, 3)), (False, (10, 7))):
        bn = batchnorm(len(shape), shape[1], affine)
        if affine:
            with torch.no_grad():
                bn.weight.uniform_(0.5, 2.0, generator=gen)
                bn.bias.uniform_(-1.0, 1.0, generator=gen)
        x = 3.0 + 2.0 * torch.randn(shape, dtype=torch.float64, generator=gen)  # an offset mean, as after a ReLU
        bns.append(bn)
        cases.append((affine, bn.state_dict(), x, torch.randn(shape, dtype=torch.float64, generator=gen)))
    got = on_gloo_ranks(world_size, tmp_path, layer_rank_results, cases)
    for bn, (_, _, x, dy), (y, dx, grads, stats, channels_last) in zip(bns, cases, got):
        x = x.clone().requires_grad_(True)
        want = bn(x)
        want.backward(dy)
        assert channels_last
        # each result is a few chained ops over per-channel sums of at most `per_channel` products of
        # |x|, |dy| (and the weight, <= 2): a sum of magnitudes <= per_channel * 2 * max|x| * max|dy|
        per_channel = x.numel() // x.shape[1]
        bound = rounding_bound(torch.float64, per_channel * 2.0 * x.abs().max().item() * dy.abs().max().item(), 8)
        torch.testing.assert_close(y, want.detach(), rtol=0, atol=bound)
        torch.testing.assert_close(dx, x.grad, rtol=0, atol=bound)
        assert len(grads) == len(list(bn.parameters()))
        for g, p in zip(grads, bn.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=0, atol=bound)
        for k, v in batchnorm_state(bn).items():
            torch.testing.assert_close(stats[k], v, rtol=0, atol=bound)
