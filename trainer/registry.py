"""What a config can name: the method registry and the backbone registry, handed to the config loader.

trainer/config.py imports nothing of the trainer (its dataclasses are imported by methods and models);
this module is where the registries meet it, so every caller loads configs through here.
"""

from __future__ import annotations

from pathlib import Path

from trainer import config
from trainer.methods import METHODS
from trainer.models.backbones import check_backbone


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> config.Config:
    """trainer.config.load_config with the trainer's registries (METHODS, the backbone check)."""
    return config.load_config(path, overrides, methods={name: cls.Config for name, cls in METHODS.items()},
                              check_backbone=check_backbone)
