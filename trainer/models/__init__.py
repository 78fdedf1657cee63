"""Backbones, MLP heads and the EMA copy."""

from trainer.models.backbones import build_backbone
from trainer.models.ema import EMA
from trainer.models.heads import mlp

__all__ = ["EMA", "build_backbone", "mlp"]
