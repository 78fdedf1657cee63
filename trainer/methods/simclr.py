"""SimCLR: two symmetric views, an MLP projector, NT-Xent over the all-gathered batch.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.losses import nt_xent_loss
from trainer.methods.base import Method, collapse_metrics, view_pairs
from trainer.methods.recipes import local_views, symmetric_views
from trainer.models import build_backbone, mlp
from trainer.types import Batch, MethodOutput, ViewSpec


@dataclass
class SimCLRConfig:
    name: str = "simclr"
    temperature: float = 0.1  # the paper's best at batch 4096; 0.2-0.5 suit small batches
    proj_hidden_dim: int = 0  # 0 = backbone dim: 2048-2048-128 on ResNet-50, 512-512-128 on ResNet-18
    proj_output_dim: int = 128


class SimCLR(Method):
    """Backbone -> projector [D, hidden, 128]; loss = NT-Xent, averaged over `view_pairs` under multi-crop.
    Embeddings: [features of view 0, z of each view]."""

    Config = SimCLRConfig
    couples_samples = True  # the softmax runs over every image of the global batch

    @classmethod
    def views(cls, cfg: SimCLRConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return symmetric_views(data, aug) + local_views(data, aug)

    def __init__(self, cfg: SimCLRConfig, model: ModelConfig, image_size: int):
        super().__init__()
        if cfg.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {cfg.temperature}")
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model, image_size)
        self.projector = mlp([self.feature_dim, cfg.proj_hidden_dim or self.feature_dim, cfg.proj_output_dim])

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        features = [self.backbone(v) for v in batch.views]
        return [features[0], *(self.projector(f) for f in features)]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features, *z = embeddings
        loss = torch.stack(
            [nt_xent_loss(z[i], z[j], self.cfg.temperature) for i, j in view_pairs(len(z))]
        ).mean()
        metrics = {"nt_xent": loss.detach(), **collapse_metrics(z[0])}
        return MethodOutput(loss, metrics, features.detach())
