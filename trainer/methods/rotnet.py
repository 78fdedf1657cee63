"""RotNet: predict which of four rotations (0, 90, 180, 270 degrees) an image went through.

Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations", ICLR 2018.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.losses import rotation_loss
from trainer.methods.base import Method, collapse_metrics
from trainer.methods.recipes import rotation_views
from trainer.models import build_backbone
from trainer.types import Batch, MethodOutput, ViewSpec


@dataclass
class RotNetConfig:
    name: str = "rotnet"


class RotNet(Method):
    """Backbone -> linear 4-way classifier over the four rotated copies of each image.
    Embeddings: [features of view 0, logits of view r for r = 0..3], each [n, ...]."""

    Config = RotNetConfig
    couples_samples = False  # a classification per image

    @classmethod
    def views(cls, cfg: RotNetConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return rotation_views(data)

    def __init__(self, cfg: RotNetConfig, model: ModelConfig, image_size: int):
        super().__init__()
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model, image_size)
        self.head = nn.Linear(self.feature_dim, 4)

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        assert len(batch.views) == 4, "RotNet expects its four rotation views"
        features = self.backbone(torch.cat(batch.views))  # one pass over the four views
        n = batch.views[0].shape[0]
        return [features[:n], *self.head(features).split(n)]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features, *logits = embeddings
        n = features.shape[0]
        # view r is rotated by 90 r degrees (rotation_views), so its label is r
        labels = torch.arange(4, device=features.device).repeat_interleave(n)
        logits = torch.cat(logits)
        loss = rotation_loss(logits, labels)
        metrics = {
            "rotation_ce": loss.detach(),
            "rotation_acc": (logits.detach().argmax(1) == labels).float().mean(),
            **collapse_metrics(features),
        }
        return MethodOutput(loss, metrics, features.detach())
