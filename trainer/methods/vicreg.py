"""VICReg: an expander and variance-invariance-covariance regularization, statistics over the gathered batch.

Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", ICLR 2022; the authors' facebookresearch/vicreg main_vicreg.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.losses import vicreg_loss
from trainer.methods.base import Method, collapse_metrics, view_pairs
from trainer.methods.recipes import asymmetric_views, local_views
from trainer.models import build_backbone, mlp
from trainer.types import Batch, MethodOutput, ViewSpec


@dataclass
class VICRegConfig:
    name: str = "vicreg"
    proj_hidden_dim: int = 8192  # expander D-8192-8192-8192 (paper)
    proj_output_dim: int = 8192
    sim_coeff: float = 25.0  # lambda, invariance
    std_coeff: float = 25.0  # mu, variance
    cov_coeff: float = 1.0  # nu, covariance


class VICReg(Method):
    """Backbone -> expander [D, h, h, out] (last Linear without bias, as the authors');
    loss = vicreg_loss, averaged over `view_pairs` under multi-crop (each pair brings its own
    variance and covariance terms). Embeddings: [features of view 0, z of each view]."""

    Config = VICRegConfig
    couples_samples = True  # variance and covariance are statistics of the global batch

    @classmethod
    def views(cls, cfg: VICRegConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return asymmetric_views(data, aug) + local_views(data, aug)

    def __init__(self, cfg: VICRegConfig, model: ModelConfig, image_size: int):
        super().__init__()
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model, image_size)
        hidden = cfg.proj_hidden_dim
        self.expander = mlp([self.feature_dim, hidden, hidden, cfg.proj_output_dim], last_bias=False)

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        features = [self.backbone(v) for v in batch.views]
        return [features[0], *(self.expander(f) for f in features)]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features, *z = embeddings
        c = self.cfg
        terms = [
            vicreg_loss(z[i], z[j], c.sim_coeff, c.std_coeff, c.cov_coeff) for i, j in view_pairs(len(z))
        ]
        loss, invariance, variance, covariance = (torch.stack(t).mean() for t in zip(*terms))
        metrics = {
            "vicreg": loss.detach(),
            "invariance": invariance.detach(),
            "variance": variance.detach(),
            "covariance": covariance.detach(),
            **collapse_metrics(z[0]),
        }
        return MethodOutput(loss, metrics, features.detach())
