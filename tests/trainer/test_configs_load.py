"""Every YAML in configs/ loads, and the composed layers give the documented recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.registry import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(CONFIGS.rglob("*.yaml"))


def test_there_are_configs():
    assert len(FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads(path):
    load_config(path)


def test_paper_recipe_composition():
    cfg = load_config(CONFIGS / "simclr_imagenet_r50.yaml")
    assert (cfg.model.backbone, cfg.train.global_batch_size, cfg.optim.name) == ("resnet50", 4096, "lars")
    assert cfg.optim.base_lr == 0.3 and cfg.train.name == "simclr_imagenet_r50"
    cfg = load_config(CONFIGS / "byol_stl10_r18.yaml")
    assert (cfg.method.name, cfg.model.backbone, cfg.model.small_stem, cfg.data.image_size) == ("byol", "resnet18", True, 96)
    cfg = load_config(CONFIGS / "demo_digits_simclr.yaml")
    assert (cfg.data.shards, cfg.method.name, cfg.model.small_stem) == ("shards/digits", "simclr", True)
