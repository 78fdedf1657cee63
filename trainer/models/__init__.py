"""Backbones and MLP heads."""

from trainer.models.backbones import build_backbone
from trainer.models.heads import mlp

__all__ = ["build_backbone", "mlp"]
