"""The engine and the loop call the method's hooks where the contract says: before_optimizer_step
after backward (gradients there) and before the optimizer step (weights not yet moved)."""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import Config, EngineConfig, OptimConfig, TrainConfig
from trainer.dist import DistContext
from trainer.engine import build_engine, make_plan
from trainer.methods.base import Method
from trainer.types import Batch, MethodOutput


class FreezingMethod(Method):
    """Drops the head's gradient in before_optimizer_step while step < 2 (DINO's last-layer freeze)."""

    couples_samples = False
    edits_gradients = True

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)
        self.seen = []

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        return [self.head(self.backbone(batch.views[0]))]

    def loss(self, embeddings, batch) -> MethodOutput:
        return MethodOutput(embeddings[0].pow(2).sum(1).mean())

    def before_optimizer_step(self, step: int) -> None:
        self.seen.append((step, self.head.weight.grad is not None, self.head.weight.detach().clone()))
        if step < 2:
            for p in self.head.parameters():
                p.grad = None


def test_before_optimizer_step_sees_gradients_and_can_freeze_a_layer():
    cfg = Config(optim=OptimConfig(name="sgd", base_lr=0.1, weight_decay=0.1), engine=EngineConfig(name="ddp"),
                 train=TrainConfig(global_batch_size=8))
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, 1, torch.device("cpu"), num_samples=80)
    method = FreezingMethod()
    engine = build_engine(cfg.engine, cfg.optim, plan, method, DistContext(), nonfinite=cfg.train.nonfinite)
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        head = method.head.weight.detach().clone()
        backbone = method.backbone.weight.detach().clone()
        engine.step([Batch([torch.randn(8, 4, generator=gen)])], plan.lr, step)
        seen_step, had_grad, weight_then = method.seen[-1]
        assert (seen_step, had_grad) == (step, True) and torch.equal(weight_then, head)
        assert torch.equal(method.head.weight, head) == (step < 2)  # frozen: not even weight decay
        assert not torch.equal(method.backbone.weight, backbone)
