"""DINO: self-distillation with no labels. A student (backbone + head) matches, on every crop, the
centered and sharpened output of a teacher (an EMA of the student) on the two global crops.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021; the authors'
facebookresearch/dino main_dino.py and vision_transformer.py (`DINOHead`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.losses import dino_loss
from trainer.methods.base import Method, collapse_metrics, momentum_update, trainable_groups
from trainer.methods.recipes import asymmetric_views, local_views
from trainer.models import EMA, build_backbone, mlp
from trainer.optim import cosine
from trainer.types import Batch, MethodOutput, ViewSpec


@dataclass
class DINOConfig:
    name: str = "dino"
    hidden_dim: int = 2048  # head D-2048-2048-256, then L2-normalized, then a weight-normalized layer
    bottleneck_dim: int = 256
    out_dim: int = 65536  # prototypes; the paper's, far fewer suit small data
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # reached after the warmup, then constant
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup: float = 0.1  # fraction of training (the paper: 30 of 300 epochs)
    center_momentum: float = 0.9
    tau_base: float = 0.996  # teacher EMA decay, raised to 1 on a cosine over training
    freeze_last_layer: float = 0.01  # fraction of training with the last layer frozen (1 of 100 epochs)
    weight_decay_end: float = 0.4  # weight decay follows a cosine from optim.weight_decay (0.04) to this
    use_bn: bool = False  # BatchNorm in the head's hidden layers (the authors' use_bn_in_head; for ResNets)


class NormalizedLinear(nn.Module):
    """Linear without bias whose weight rows have unit norm: DINO's weight-normalized last layer with its
    norm fixed to 1 (`weight_g` = 1, not trained), [n, d] -> [n, out]. The rows are normalized by
    torch's fused weight-norm kernel, which F.normalize's three ops trailed on the CPU (benchmarks/README.md)."""

    def __init__(self, d: int, out: int):
        super().__init__()
        self.weight = nn.Linear(d, out, bias=False).weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = self.weight.new_ones(self.weight.shape[0], 1)
        return F.linear(x, torch._weight_norm(self.weight, unit, 0))


class DINOHead(nn.Module):
    """MLP [D, hidden, hidden, bottleneck] with GELU (BatchNorm after each hidden Linear if `bn`),
    L2-normalize, NormalizedLinear."""

    def __init__(self, d: int, hidden: int, bottleneck: int, out: int, bn: bool = False):
        super().__init__()
        self.mlp = mlp([d, hidden, hidden, bottleneck], bn=bn, activation=nn.GELU)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # the authors' init
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=1))


class DINO(Method):
    """Student: backbone on every crop, then one DINOHead call on all crops' features concatenated (the
    authors' MultiCropWrapper: a BatchNorm in the head normalizes over every crop, and the last layer's
    weight is normalized once for all crops); teacher: EMA copies of both, on the 2 global crops, the same way.
    Loss: dino_loss; the center is updated from the gathered teacher outputs after each loss, as the
    authors do (once per step over the global batch under the gradient cache; without it, once per
    micro-batch; a step the `skip` policy drops restores it with the other buffers). Schedules
    (one helper, by step): teacher temperature warmup, teacher momentum, weight decay (a parameter-group
    schedule), the last layer frozen (its gradient dropped before the optimizer step) early in training.
    Embeddings: [features of view 0, student output of each crop, teacher output of each global crop]."""

    Config = DINOConfig
    couples_samples = True  # the center is a statistic of the global batch
    edits_gradients = True  # the last-layer freeze drops its .grad

    @classmethod
    def views(cls, cfg: DINOConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return asymmetric_views(data, aug) + local_views(data, aug)  # blur 1.0 / 0.1 + solarize, as the paper

    def __init__(self, cfg: DINOConfig, model: ModelConfig, image_size: int):
        super().__init__()
        if min(cfg.student_temp, cfg.teacher_temp, cfg.warmup_teacher_temp) <= 0:
            raise ValueError("method.student_temp, method.teacher_temp and method.warmup_teacher_temp must be > 0")
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model, image_size)
        self.head = DINOHead(self.feature_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim, cfg.use_bn)
        # trained by after_step only: no gradient, so parameter_groups leaves them out
        self.teacher_backbone = EMA(self.backbone)
        self.teacher_head = EMA(self.head)
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self.teacher_temp, self.last_layer_frozen = cfg.warmup_teacher_temp, cfg.freeze_last_layer > 0

    def before_step(self, step: int, total_steps: int) -> dict[str, float]:
        warmup = round(self.cfg.teacher_temp_warmup * total_steps)
        self.teacher_temp = cosine(step, start=self.cfg.teacher_temp, end=self.cfg.teacher_temp,
                                   total_steps=total_steps, warmup_steps=warmup,
                                   warmup_from=self.cfg.warmup_teacher_temp)
        self.last_layer_frozen = step < round(self.cfg.freeze_last_layer * total_steps)
        return {"teacher_temp": self.teacher_temp}

    def shard_units(self) -> list[nn.Module]:
        """The heads too: their last layer (bottleneck x out_dim: 16.8M weights at the paper's 65,536) would
        otherwise stay gathered with the root through the whole step."""
        return [*super().shard_units(), self.head, self.teacher_head]

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        features = [self.backbone(v) for v in batch.views]
        student = self.head(torch.cat(features)).split([len(f) for f in features])
        with torch.no_grad():
            global_features = [self.teacher_backbone(v) for v in batch.views[:2]]
            teacher = self.teacher_head(torch.cat(global_features)).split([len(f) for f in global_features])
        return [features[0], *student, *teacher]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features, *rest = embeddings
        student, teacher = rest[:-2], rest[-2:]
        terms = dino_loss(student, teacher, self.center, self.cfg.student_temp, self.teacher_temp)
        with torch.no_grad():
            self.center.lerp_(terms.teacher_mean.to(self.center.dtype), 1 - self.cfg.center_momentum)
        metrics = {"dino": terms.loss.detach(), "teacher_entropy": terms.teacher_entropy.detach(),
                   **collapse_metrics(features)}
        return MethodOutput(terms.loss, metrics, features.detach())

    def collapse_sign(self, metrics: dict[str, float]) -> str | None:
        """DINO's own collapse (the paper, section 5.3): the centering wins over the sharpening and the
        teacher's targets turn uniform, perplexity exp(teacher_entropy) >= 90% of the out_dim prototypes."""
        entropy, uniform = metrics.get("teacher_entropy"), math.log(self.cfg.out_dim)
        if entropy is not None and entropy >= uniform + math.log(0.9):
            return (f"teacher_entropy {entropy:.3f} of log(out_dim) = {uniform:.3f}: the teacher's targets are "
                    "uniform (DINO collapse; on a ResNet try method.use_bn=true, or a lower method.teacher_temp)")
        return super().collapse_sign(metrics)

    def parameter_groups(self) -> list[dict]:
        groups = trainable_groups(backbone=self.backbone, head=self.head)
        return [{**g, "weight_decay_end": self.cfg.weight_decay_end} for g in groups]

    def before_optimizer_step(self, step: int) -> None:
        """While frozen, the last layer's gradient is dropped: the optimizer skips it (no weight decay either)."""
        if self.last_layer_frozen:
            self.head.last_layer.weight.grad = None

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        return momentum_update(step, total_steps, self.cfg.tau_base, (self.teacher_backbone, self.backbone),
                               (self.teacher_head, self.head))
