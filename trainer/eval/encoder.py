"""The pretrained backbone of a run, and the same architecture freshly initialized for baselines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer.checkpoint import load_model_weights
from trainer.config import Config, ModelConfig
from trainer.models import build_backbone


@dataclass
class Encoder:
    cfg: Config  # the run's resolved config
    backbone: nn.Module  # [B, 3, H, W] -> [B, feature_dim]
    feature_dim: int


def backbone_state(method_state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The `backbone.*` entries of a method's state_dict, prefix removed (the online network's, for
    methods with an EMA target: theirs live under another attribute name)."""
    state = {k[len("backbone."):]: v for k, v in method_state.items() if k.startswith("backbone.")}
    if not state:
        raise ValueError(f"{source}: no 'backbone.*' weights in the checkpoint "
                         f"(keys start with {sorted({k.split('.')[0] for k in method_state})})")
    return state


def fresh_backbone(model: ModelConfig, image_size: int, seed: int) -> tuple[nn.Module, int]:
    """The run's architecture (for `image_size` px views) with random weights (the from-scratch baseline), seeded."""
    torch.manual_seed(seed)
    return build_backbone(model, image_size)


def load_encoder(run_dir: str | Path, device: torch.device) -> Encoder:
    """The backbone of the latest valid checkpoint in `run_dir`, loaded strictly, in eval mode."""
    cfg, method_state = load_model_weights(Path(run_dir))
    backbone, feature_dim = build_backbone(cfg.model, cfg.data.image_size)
    backbone.load_state_dict(backbone_state(method_state, str(run_dir)), strict=True)
    return Encoder(cfg, backbone.to(device).eval(), feature_dim)
