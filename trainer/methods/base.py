"""The contract every method in `METHODS` meets, and metrics they share.

A method is an `nn.Module` with:
  Config            its config dataclass (a `name: str` field first, then its own knobs)
  views(cfg, data, aug) -> list[ViewSpec]      classmethod: what the input pipeline must produce
  __init__(cfg, model: ModelConfig)            builds backbone + heads
  backbone          nn.Module, [B, 3, H, W] -> [B, feature_dim]; what eval and export use
  feature_dim       int
  forward(batch) -> MethodOutput
  parameter_groups() -> list[dict]            optimizer groups ({"params": [...], "name": str});
                                              frozen parts (an EMA target) are left out
  after_step(step, total_steps) -> dict[str, float]   e.g. the EMA update; returns logged scalars
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class MethodOutput:
    """`loss`: scalar with graph; `metrics`: detached scalars (loss terms, collapse metrics);
    `features`: detached backbone features of view 0, [B, feature_dim], for the online probe."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None


@torch.no_grad()
def collapse_metrics(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Signs of representation collapse for embeddings z [B, d].

    `z_std`: mean per-dimension std of the L2-normalized embedding (1/sqrt(d) when spread out,
    0 when collapsed; BYOL paper appendix). `z_rank`: effective rank exp(H(singular values / sum))
    (Roy & Vetterli 2007), between 1 and min(B, d).
    """
    zn = F.normalize(z.detach().float(), dim=1)
    zn = torch.where(
        torch.isfinite(zn), zn, 0.0
    )  # a NaN step must reach the loop's policy, not crash the SVD
    s = torch.linalg.svdvals(zn - zn.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"z_std": zn.std(0).mean(), "z_rank": entropy.exp()}


def view_pairs(num_views: int) -> list[tuple[int, int]]:
    """The view pairs a two-view loss compares: the two global views (0, 1), then, under multi-crop,
    each local view (2, 3, ...) with each global view. Methods average their loss over these pairs."""
    return [(0, 1)] + [(v, g) for v in range(2, num_views) for g in (0, 1)]


def trainable_groups(**modules: torch.nn.Module) -> list[dict]:
    """One optimizer group per named module, holding its trainable parameters (for `parameter_groups`)."""
    return [
        {"name": name, "params": [p for p in m.parameters() if p.requires_grad]}
        for name, m in modules.items()
    ]
