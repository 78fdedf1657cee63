"""Fine-tuning: the whole backbone plus a linear head, trained with labels on in-memory images.

The pretrained backbone gets `backbone_lr_scale` x the head's lr (small steps keep what pretraining
learned); the from-scratch baseline is the same call on a freshly initialized backbone with scale 1.
Inputs are the eval view's images with a random translation of `FitConfig.shift` px as the only
augmentation (no flips: they change the class of digits and text).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.eval.fit import FitConfig, accuracy, fit_classifier, predict


def finetune(backbone: nn.Module, feature_dim: int, train: tuple[torch.Tensor, torch.Tensor],
             test: tuple[torch.Tensor, torch.Tensor], num_classes: int, cfg: FitConfig, device: torch.device,
             seed: int, val: tuple[torch.Tensor, torch.Tensor] | None = None,
             backbone_lr_scale: float = 0.1) -> tuple[dict, torch.Tensor]:
    """Train backbone + head on train = (images [N, 3, H, W], labels [N]), in place; returns
    ({"top1", "top5", "steps", ...}, test logits [M, C])."""
    torch.manual_seed(seed)
    head = nn.Linear(feature_dim, num_classes)
    model = nn.Sequential(backbone, head).to(device)
    groups = [{"params": backbone.parameters(), "lr_scale": backbone_lr_scale}, {"params": head.parameters()}]
    result = fit_classifier(model, groups, train, val, cfg, device, seed)
    logits = predict(model, test[0], device)
    return {"top1": accuracy(logits, test[1]), "top5": accuracy(logits, test[1], 5), "steps": result.steps,
            "stopped_early": result.stopped_early, "best_val_accuracy": result.best_val_accuracy}, logits
