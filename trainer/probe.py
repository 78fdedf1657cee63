"""Evaluations that run during pretraining: an online linear probe and a periodic kNN accuracy.

The probe is a linear classifier trained on detached backbone features of view 0 with its own
optimizer (its lr is independent of the method's), as in solo-learn and SimCLR's appendix: a cheap,
running estimate of representation quality that never sends a gradient into the backbone.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import get_total_norm

from trainer.config import DataConfig, EvalConfig
from trainer.dist import DistContext
from trainer.engine.amp import step_if

PROBE_LR = 1e-3


class OnlineProbe:
    def __init__(self, feature_dim: int, num_classes: int, ctx: DistContext):
        self.ctx = ctx
        self.head = nn.Linear(feature_dim, num_classes).to(ctx.device)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=PROBE_LR, weight_decay=0.0)

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step on features [B, D] and labels [B]; returns device scalars (no host sync).

        Non-finite features (a step train.nonfinite = skip skips) leave the head and AdamW state as
        they were, decided on the device."""
        logits = self.head(features.detach().float())
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.ctx.distributed:  # average over ranks, as DDP would, so every rank's head stays identical
            for p in self.head.parameters():
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.ctx.world_size)
        # the gradients are the same on every rank after the all-reduce: a peer's non-finite
        # features make every rank skip, so the heads stay identical
        grads = [p.grad for p in self.head.parameters()]
        ok = torch.isfinite(features).all() & torch.isfinite(loss) & torch.isfinite(get_total_norm(grads))
        step_if(self.optimizer, ok)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"probe/loss": loss.detach(), "probe/acc": acc}

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])


def knn_accuracy(backbone: nn.Module, num_classes: int, data: DataConfig, evaluation: EvalConfig,
                 ctx: DistContext) -> float:
    """Weighted kNN top-1 (trainer.eval.knn) of `backbone` features, eval.train_split -> eval.test_split.

    Collective: every rank extracts its part; the gathered features are classified on every rank.
    """
    from trainer.eval.features import extract, split_batches
    from trainer.eval.knn import knn_predict

    comm = ctx.device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")
    was_training = backbone.training
    bank_x, bank_y = extract(split_batches(data, evaluation.train_split, ctx, evaluation.batch_size),
                             backbone, ctx.device, comm)
    test_x, test_y = extract(split_batches(data, evaluation.test_split, ctx, evaluation.batch_size),
                             backbone, ctx.device, comm)
    backbone.train(was_training)
    predicted = knn_predict(bank_x, bank_y, test_x, num_classes, evaluation.knn_k, evaluation.knn_temperature)
    return (predicted == test_y).float().mean().item()
