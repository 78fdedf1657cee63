"""Barlow Twins: a wide projector whose cross-correlation between two views is driven to the identity.

Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
ICML 2021; the authors' facebookresearch/barlowtwins main.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.losses import barlow_twins_loss
from trainer.methods.base import Method, collapse_metrics, trainable_groups, view_pairs
from trainer.methods.recipes import asymmetric_views, local_views
from trainer.models import build_backbone, mlp
from trainer.types import Batch, MethodOutput, ViewSpec


@dataclass
class BarlowTwinsConfig:
    name: str = "barlow_twins"
    proj_hidden_dim: int = 8192  # projector D-8192-8192-8192 (paper)
    proj_output_dim: int = 8192
    lambd: float = 5e-3  # weight of the off-diagonal (redundancy) term
    bias_lr_scale: float = 0.024  # biases and norm weights train at 0.0048 / 0.2 of the weights' lr (paper)


class BarlowTwins(Method):
    """Backbone -> projector [D, h, h, out] (last Linear without bias, as the authors'); loss =
    barlow_twins_loss, averaged over `view_pairs` under multi-crop. Embeddings: [features of view 0,
    z of each view]."""

    Config = BarlowTwinsConfig
    couples_samples = True  # the cross-correlation is a statistic of the global batch

    @classmethod
    def views(cls, cfg: BarlowTwinsConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return asymmetric_views(data, aug) + local_views(data, aug)  # the paper's are BYOL's

    def __init__(self, cfg: BarlowTwinsConfig, model: ModelConfig, image_size: int):
        super().__init__()
        if cfg.lambd < 0:
            raise ValueError(f"method.lambd must be >= 0, got {cfg.lambd}")
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model, image_size)
        hidden = cfg.proj_hidden_dim
        self.projector = mlp([self.feature_dim, hidden, hidden, cfg.proj_output_dim], last_bias=False)

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        features = [self.backbone(v) for v in batch.views]
        return [features[0], *(self.projector(f) for f in features)]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features, *z = embeddings
        terms = [barlow_twins_loss(z[i], z[j], self.cfg.lambd) for i, j in view_pairs(len(z))]
        loss, on_diagonal, off_diagonal = (torch.stack(t).mean() for t in zip(*terms))
        metrics = {"barlow_twins": loss.detach(), "on_diagonal": on_diagonal.detach(),
                   "off_diagonal": off_diagonal.detach(), **collapse_metrics(z[0])}
        return MethodOutput(loss, metrics, features.detach())

    def parameter_groups(self) -> list[dict]:
        groups = trainable_groups(backbone=self.backbone, projector=self.projector)
        return [{**g, "no_decay_lr_scale": self.cfg.bias_lr_scale} for g in groups]
