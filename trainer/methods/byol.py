"""BYOL: an online network (backbone, projector, predictor) regresses a target network that is an
exponential moving average of the online one.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.losses import byol_loss
from trainer.methods.base import Method, against_targets, collapse_metrics, momentum_update
from trainer.methods.recipes import asymmetric_views, local_views
from trainer.models import EMA, build_backbone, mlp
from trainer.types import Batch, MethodOutput, ViewSpec


@dataclass
class BYOLConfig:
    name: str = "byol"
    proj_hidden_dim: int = 4096  # projector D-4096-256 and predictor 256-4096-256 (paper)
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    tau_base: float = 0.996  # EMA decay, raised to 1 on a cosine over training


class BYOL(Method):
    """Online: backbone -> projector -> predictor; target: EMA copies of backbone and projector.

    Targets come from the two global views only. Loss: for each global view g, the mean over every
    other view a of byol_loss(prediction of a, target of g), summed over the two g; with two views
    that is the paper's symmetric L + L~, and local views add one prediction term per global view.
    Embeddings: [features of view 0, z of view 0, p of each view, target of each global view].
    """

    Config = BYOLConfig
    couples_samples = False  # a regression per image

    @classmethod
    def views(cls, cfg: BYOLConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return asymmetric_views(data, aug) + local_views(data, aug)

    def __init__(self, cfg: BYOLConfig, model: ModelConfig, image_size: int):
        super().__init__()
        if not 0 <= cfg.tau_base <= 1:
            raise ValueError(f"method.tau_base must be in [0, 1], got {cfg.tau_base}")
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model, image_size)
        self.projector = mlp([self.feature_dim, cfg.proj_hidden_dim, cfg.proj_output_dim])
        self.predictor = mlp([cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim])
        # trained by after_step only: no gradient, so parameter_groups leaves them out
        self.target_backbone = EMA(self.backbone)
        self.target_projector = EMA(self.projector)

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        features = [self.backbone(v) for v in batch.views]
        z = [self.projector(f) for f in features]
        p = [self.predictor(x) for x in z]
        with torch.no_grad():
            targets = [self.target_projector(self.target_backbone(v)) for v in batch.views[:2]]
        return [features[0], z[0], *p, *targets]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features, z0, *rest = embeddings
        p, targets = rest[:-2], rest[-2:]
        loss = against_targets(byol_loss, p, targets)
        metrics = {"byol": loss.detach(), **collapse_metrics(z0)}
        return MethodOutput(loss, metrics, features.detach())

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        return momentum_update(step, total_steps, self.cfg.tau_base, (self.target_backbone, self.backbone),
                               (self.target_projector, self.projector))
