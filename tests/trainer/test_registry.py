"""trainer/config.py imports nothing of the trainer; the registries it checks against are handed in."""

import subprocess
import sys

import pytest

from trainer.config import ConfigError
from trainer.registry import load_config


def test_config_module_imports_nothing_of_the_trainer():
    code = ("import sys, trainer.config; "
            "print(sorted(m for m in sys.modules if m.startswith('trainer') and m not in ('trainer', 'trainer.config')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("backbone", ["vit", "timm:no_such_net", "resnet19"])
def test_unknown_backbone_is_a_config_error_naming_the_key(backbone):
    with pytest.raises(ConfigError, match=r"'model\.backbone' = .*timm:vit_tiny_patch16_224"):
        load_config(overrides=[f"model.backbone={backbone}"])


def test_timm_backbone_by_name_loads():
    cfg = load_config(overrides=["model.backbone=timm:vit_tiny_patch16_224", "model.patch_size=4"])
    assert (cfg.model.backbone, cfg.model.patch_size) == ("timm:vit_tiny_patch16_224", 4)
