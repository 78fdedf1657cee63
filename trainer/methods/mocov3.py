"""MoCo v3: online queries (backbone, projector, predictor) against the keys of a momentum encoder (an
EMA of backbone and projector), InfoNCE over the keys of the global batch; no queue.

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021; the
authors' facebookresearch/moco-v3 moco/builder.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.losses import moco_v3_loss
from trainer.methods.base import Method, against_targets, collapse_metrics, momentum_update
from trainer.methods.recipes import asymmetric_views, local_views
from trainer.models import EMA, build_backbone, mlp
from trainer.types import Batch, MethodOutput, ViewSpec


@dataclass
class MoCoV3Config:
    name: str = "mocov3"
    proj_hidden_dim: int = 4096  # projector D-4096-256 and predictor 256-4096-256 (paper)
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    temperature: float = 0.0  # 0: the official defaults, 1.0 for ResNets, 0.2 for patch models (ViT)
    tau_base: float = 0.99  # momentum-encoder EMA decay, raised to 1 on a cosine over training


class MoCoV3(Method):
    """Keys come from the momentum encoder on the two global views. Loss: for each global view g, the mean
    over every other view a of moco_v3_loss(query of a, key of g), summed over the two g; with two views
    that is the paper's ctr(q1, k2) + ctr(q2, k1). The projector and predictor end in BatchNorm without
    affine and a plain Linear, as the authors' (`_build_mlp`, last_bn); the projector has 2 layers for
    every backbone (the authors use 3 for ViTs) and the ViT recipe's frozen random patch projection is
    not applied. Embeddings: [features of view 0, q of each view, k of each global view]."""

    Config = MoCoV3Config
    couples_samples = True  # each query's softmax runs over the keys of the global batch

    @classmethod
    def views(cls, cfg: MoCoV3Config, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return asymmetric_views(data, aug) + local_views(data, aug)  # BYOL's recipe, as the paper

    def __init__(self, cfg: MoCoV3Config, model: ModelConfig, image_size: int):
        super().__init__()
        if cfg.temperature < 0 or not 0 <= cfg.tau_base <= 1:
            raise ValueError(f"method.temperature must be >= 0 (0: the default for the backbone) and "
                             f"method.tau_base in [0, 1], got {cfg.temperature}, {cfg.tau_base}")
        self.cfg = cfg
        self.temperature = cfg.temperature or (0.2 if model.patch_size else 1.0)
        self.backbone, self.feature_dim = build_backbone(model, image_size)
        out = cfg.proj_output_dim
        self.projector = nn.Sequential(*mlp([self.feature_dim, cfg.proj_hidden_dim, out], last_bias=False),
                                       nn.BatchNorm1d(out, affine=False))
        self.predictor = mlp([out, cfg.pred_hidden_dim, out], last_bias=False)
        # trained by after_step only: no gradient, so parameter_groups leaves them out
        self.momentum_backbone = EMA(self.backbone)
        self.momentum_projector = EMA(self.projector)

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        features = [self.backbone(v) for v in batch.views]
        q = [self.predictor(self.projector(f)) for f in features]
        with torch.no_grad():
            k = [self.momentum_projector(self.momentum_backbone(v)) for v in batch.views[:2]]
        return [features[0], *q, *k]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features, *rest = embeddings
        q, k = rest[:-2], rest[-2:]
        loss = against_targets(lambda a, b: moco_v3_loss(a, b, self.temperature), q, k)
        metrics = {"moco_v3": loss.detach(), **collapse_metrics(q[0])}
        return MethodOutput(loss, metrics, features.detach())

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        return momentum_update(step, total_steps, self.cfg.tau_base, (self.momentum_backbone, self.backbone),
                               (self.momentum_projector, self.projector))
