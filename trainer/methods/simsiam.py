"""SimSiam: a predictor on one branch, a stop-gradient on the other, negative cosine; no negatives, no EMA.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021; the authors'
facebookresearch/simsiam builder.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.losses import negative_cosine
from trainer.methods.base import Method, collapse_metrics, view_pairs
from trainer.methods.recipes import local_views, symmetric_views
from trainer.models import build_backbone, mlp
from trainer.types import Batch, MethodOutput, ViewSpec


@dataclass
class SimSiamConfig:
    name: str = "simsiam"
    proj_hidden_dim: int = 2048  # projector D-2048-2048-2048, BatchNorm after every layer (paper)
    proj_output_dim: int = 2048
    pred_hidden_dim: int = 512  # predictor 2048-512-2048: the bottleneck the paper finds necessary


class SimSiam(Method):
    """Backbone -> projector [D, h, h, out] + BatchNorm (no affine: the authors' `fc[6].bias` hack) ->
    predictor [out, pred_hidden, out]. Loss: for each view pair (a, b) of `view_pairs`,
    (D(p_a, z_b) + D(p_b, z_a)) / 2, averaged over the pairs; D = negative_cosine (stop-gradient on z).
    The predictor follows the lr schedule like the rest (the authors' --fix-pred-lr is not offered).
    Embeddings: [features of view 0, z of each view, p of each view]."""

    Config = SimSiamConfig
    couples_samples = False  # a cosine per image

    @classmethod
    def views(cls, cfg: SimSiamConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return symmetric_views(data, aug) + local_views(data, aug)  # SimSiam uses MoCo v2's (SimCLR's) recipe

    def __init__(self, cfg: SimSiamConfig, model: ModelConfig, image_size: int):
        super().__init__()
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model, image_size)
        hidden, out = cfg.proj_hidden_dim, cfg.proj_output_dim
        self.projector = nn.Sequential(*mlp([self.feature_dim, hidden, hidden, out], last_bias=False),
                                       nn.BatchNorm1d(out, affine=False))
        self.predictor = mlp([out, cfg.pred_hidden_dim, out])

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        features = [self.backbone(v) for v in batch.views]
        z = [self.projector(f) for f in features]
        return [features[0], *z, *(self.predictor(x) for x in z)]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features, *rest = embeddings
        z, p = rest[: len(rest) // 2], rest[len(rest) // 2 :]
        loss = torch.stack([(negative_cosine(p[a], z[b]) + negative_cosine(p[b], z[a])) / 2
                            for a, b in view_pairs(len(z))]).mean()
        metrics = {"simsiam": loss.detach(), **collapse_metrics(z[0])}
        return MethodOutput(loss, metrics, features.detach())
