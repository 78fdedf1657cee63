"""One process: gradient accumulation equals the large batch; the `skip` policy drops a NaN step
(weights, momentum, BatchNorm stats, online probe); the meter reads NaN where nothing was finite."""

from __future__ import annotations

import torch
from tolerance import rounding_bound
from torch import nn

from trainer.config import EngineConfig, OptimConfig, TrainConfig
from trainer.dist import DistContext
from trainer.engine import build_engine, make_plan
from trainer.methods.base import Method
from trainer.types import Batch, MethodOutput


class PerSampleMethod(Method):
    """BN-free toy method whose loss is a mean over samples: [B,3,4,4] -> linear -> squared view gap."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.ReLU(), nn.Linear(6, 4))
        self.feature_dim = 4

    couples_samples = False

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        return [self.backbone(v) for v in batch.views]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        a, b = embeddings
        loss = ((a - b + 1) ** 2).sum(1).mean()
        return MethodOutput(loss, {}, a.detach())


def engine_for(global_batch: int, per_device: int, nonfinite: str = "stop", dtype=torch.float32):
    """Built from the sections alone, with no whole Config anywhere (STYLE.md principle 8)."""
    optim, engine = OptimConfig(name="sgd", base_lr=25.6, weight_decay=0.01, grad_clip=0.5), EngineConfig(name="ddp")
    train = TrainConfig(global_batch_size=global_batch, per_device_batch_size=per_device, nonfinite=nonfinite)
    plan = make_plan(train, optim, engine, 1, torch.device("cpu"), num_samples=1600)
    return build_engine(engine, optim, plan, PerSampleMethod().to(dtype), DistContext(), nonfinite=nonfinite), plan


def data(step: int, dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return [torch.randn(16, 3, 4, 4, generator=g, dtype=dtype) for _ in range(2)]


def test_accumulation_2x8_equals_batch_16():
    """In float64, so that only a wrong accumulation (a gradient off by a factor, a lost
    micro-batch) can move the weights by more than the rounding of the reordered sums."""
    big, plan_big = engine_for(16, 16, dtype=torch.float64)
    acc, plan_acc = engine_for(16, 8, dtype=torch.float64)
    assert (plan_big.accumulation_steps, plan_acc.accumulation_steps) == (1, 2)
    for step in range(3):
        views = data(step, torch.float64)
        out_big = big.step([Batch(views)], lr=plan_big.lr, step=step)
        out_acc = acc.step([Batch([v[:8] for v in views]), Batch([v[8:] for v in views])], lr=plan_acc.lr, step=step)
        torch.testing.assert_close(out_big[0].metrics["grad_norm"], out_acc[-1].metrics["grad_norm"])
    assert out_big[0].metrics["grad_norm"] > 0.5  # clipping was active
    # each step moves a weight by at most lr x the clipped norm; the two runs sum the same 16 samples'
    # gradients (through the 48-wide input layer) in another order, over 3 steps
    bound = rounding_bound(torch.float64, 1 + plan_big.lr * 0.5, 3 * (16 + 48 + 8))
    for p, q in zip(big.module.parameters(), acc.module.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=bound)


def test_skip_policy_leaves_weights_and_momentum_untouched():
    engine, plan = engine_for(16, 16, nonfinite="skip")
    engine.step([Batch(data(0))], lr=plan.lr, step=0)
    before = [p.detach().clone() for p in engine.module.parameters()]
    momentum = [engine.optimizer.state[p]["momentum_buffer"].clone() for p in engine.module.parameters()]
    bad = data(1)
    bad[0][3, 0, 0, 0] = float("nan")
    out = engine.step([Batch(bad)], lr=plan.lr, step=1)
    assert not torch.isfinite(out[0].loss)
    for p, b, m in zip(engine.module.parameters(), before, momentum):
        assert torch.equal(p, b) and torch.equal(engine.optimizer.state[p]["momentum_buffer"], m)
    engine.step([Batch(data(2))], lr=plan.lr, step=2)  # and training goes on from there
    assert all(torch.isfinite(p).all() for p in engine.module.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(engine.module.parameters(), before))


class BatchNormMethod(PerSampleMethod):
    """The toy method with a BatchNorm1d: a NaN forward poisons its running stats unless restored."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.BatchNorm1d(6), nn.Linear(6, 4))


def test_skip_policy_restores_batchnorm_running_stats():
    optim, ddp = OptimConfig(name="sgd", base_lr=0.1), EngineConfig(name="ddp")
    plan = make_plan(TrainConfig(global_batch_size=16, nonfinite="skip"), optim, ddp, 1, torch.device("cpu"),
                     num_samples=1600)
    engine = build_engine(ddp, optim, plan, BatchNormMethod(), DistContext(), nonfinite="skip")
    engine.step([Batch(data(0))], lr=plan.lr, step=0)
    before = {k: v.clone() for k, v in engine.module.state_dict().items()}
    bad = data(1)
    bad[0][3, 0, 0, 0] = float("nan")
    engine.step([Batch(bad)], lr=plan.lr, step=1)
    for key, value in engine.module.state_dict().items():
        assert torch.equal(value, before[key]), key
    engine.step([Batch(data(2))], lr=plan.lr, step=2)
    assert not torch.equal(engine.module.backbone[2].running_mean, before["backbone.2.running_mean"])


def test_online_probe_skips_nonfinite_features():
    from trainer.probe import OnlineProbe

    probe = OnlineProbe(4, 3, DistContext())
    labels = torch.tensor([0, 1, 2, 1])
    probe.step(torch.randn(4, 4), labels)
    before = {k: v.clone() for k, v in probe.head.state_dict().items()}
    state = {k: v.clone() for k, v in probe.optimizer.state[probe.head.weight].items()}
    out = probe.step(torch.full((4, 4), float("nan")), labels)
    assert not torch.isfinite(out["probe/loss"])
    assert all(torch.equal(v, before[k]) for k, v in probe.head.state_dict().items())
    assert all(torch.equal(v, state[k]) for k, v in probe.optimizer.state[probe.head.weight].items())


def test_meter_reads_nan_for_no_finite_value_and_sums_totals():
    from trainer.logger import Meter

    meter = Meter(torch.device("cpu"))
    meter.add({"loss": torch.tensor(float("nan")), "acc": torch.tensor(0.5)})
    meter.add({"loss": torch.tensor(float("inf")), "acc": torch.tensor(1.0)})
    meter.total("data/corrupt_skipped", 3)
    values, _, _ = meter.read()
    assert torch.isnan(torch.tensor(values["loss"])) and values["acc"] == 0.75
    assert values["data/corrupt_skipped"] == 3
