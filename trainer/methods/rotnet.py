"""RotNet: predict which of four rotations (0, 90, 180, 270 degrees) an image went through.

Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations", ICLR 2018.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.data.views import Batch, ViewSpec
from trainer.losses import rotation_loss
from trainer.methods.base import MethodOutput, collapse_metrics, trainable_groups
from trainer.methods.recipes import rotation_views
from trainer.models import build_backbone


@dataclass
class RotNetConfig:
    name: str = "rotnet"


class RotNet(nn.Module):
    """Backbone -> linear 4-way classifier over the four rotated copies of each image."""

    Config = RotNetConfig

    @classmethod
    def views(cls, cfg: RotNetConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return rotation_views(data)

    def __init__(self, cfg: RotNetConfig, model: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model)
        self.head = nn.Linear(self.feature_dim, 4)

    def forward(self, batch: Batch) -> MethodOutput:
        assert len(batch.views) == 4, "RotNet expects its four rotation views"
        n = batch.views[0].shape[0]
        # view r is rotated by 90 r degrees (rotation_views), so its label is r
        labels = torch.arange(4, device=batch.views[0].device).repeat_interleave(n)
        features = self.backbone(torch.cat(batch.views))
        logits = self.head(features)
        loss = rotation_loss(logits, labels)
        metrics = {
            "rotation_ce": loss.detach(),
            "rotation_acc": (logits.detach().argmax(1) == labels).float().mean(),
            **collapse_metrics(features[:n]),
        }
        return MethodOutput(loss, metrics, features[:n].detach())

    def parameter_groups(self) -> list[dict]:
        return trainable_groups(backbone=self.backbone, head=self.head)

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}
