"""BYOL: an online network (backbone, projector, predictor) regresses a target network that is an
exponential moving average of the online one.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.data.views import Batch, ViewSpec
from trainer.losses import byol_loss
from trainer.methods.base import MethodOutput, collapse_metrics, trainable_groups
from trainer.methods.recipes import asymmetric_views, local_views
from trainer.models import build_backbone, mlp


@dataclass
class BYOLConfig:
    name: str = "byol"
    proj_hidden_dim: int = 4096  # projector D-4096-256 and predictor 256-4096-256 (paper)
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    tau_base: float = 0.996  # EMA decay, raised to 1 on a cosine over training


class BYOL(nn.Module):
    """Online: backbone -> projector -> predictor; target: EMA copies of backbone and projector.

    Targets come from the two global views only. Loss: for each global view g, the mean over every
    other view a of byol_loss(prediction of a, target of g), summed over the two g; with two views
    that is the paper's symmetric L + L~, and local views add one prediction term per global view.
    """

    Config = BYOLConfig

    @classmethod
    def views(cls, cfg: BYOLConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return asymmetric_views(data, aug) + local_views(data, aug)

    def __init__(self, cfg: BYOLConfig, model: ModelConfig):
        super().__init__()
        if not 0 <= cfg.tau_base <= 1:
            raise ValueError(f"method.tau_base must be in [0, 1], got {cfg.tau_base}")
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model)
        self.projector = mlp([self.feature_dim, cfg.proj_hidden_dim, cfg.proj_output_dim])
        self.predictor = mlp([cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim])
        # the target is trained by after_step only: no gradient, left out of parameter_groups
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def forward(self, batch: Batch) -> MethodOutput:
        features = [self.backbone(v) for v in batch.views]
        z = [self.projector(f) for f in features]
        p = [self.predictor(x) for x in z]
        with torch.no_grad():
            targets = [self.target_projector(self.target_backbone(v)) for v in batch.views[:2]]
        others = range(len(p))
        loss = sum(
            torch.stack([byol_loss(p[a], t) for a in others if a != g]).mean() for g, t in enumerate(targets)
        )
        metrics = {"byol": loss.detach(), **collapse_metrics(z[0])}
        return MethodOutput(loss, metrics, features[0].detach())

    def parameter_groups(self) -> list[dict]:
        return trainable_groups(backbone=self.backbone, projector=self.projector, predictor=self.predictor)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        """EMA update after optimizer step `step` of `total_steps`:
        target <- tau target + (1 - tau) online, tau = 1 - (1 - tau_base)(cos(pi step / total) + 1) / 2.
        Buffers (BatchNorm statistics) are copied."""
        tau = 1 - (1 - self.cfg.tau_base) * (math.cos(math.pi * min(step, total_steps) / total_steps) + 1) / 2
        online, target = (self.backbone, self.projector), (self.target_backbone, self.target_projector)
        torch._foreach_lerp_(
            [t for m in target for t in m.parameters()], [o for m in online for o in m.parameters()], 1 - tau
        )
        torch._foreach_copy_(
            [t for m in target for t in m.buffers()], [o for m in online for o in m.buffers()]
        )
        return {"tau": tau}
