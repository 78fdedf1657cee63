"""Export round trip: the safetensors file loads into plain torchvision via the printed snippet and
gives the same outputs as the trained backbone; the header carries the metadata."""

import json

import pytest
import torch
from safetensors import safe_open

from trainer.config import Config, ModelConfig
from trainer.eval.encoder import Encoder, fresh_backbone
from trainer.eval.export import save_encoder
from trainer.methods import METHODS


@pytest.mark.parametrize("model", [ModelConfig("resnet18", small_stem=True), ModelConfig("resnet18"),
                                   ModelConfig("mobilenet_v2", small_stem=True)], ids=["r18-small", "r18", "mnv2-small"])
def test_export_loads_into_torchvision_with_identical_outputs(tmp_path, model):
    backbone, dim = fresh_backbone(model, 32, seed=0)
    with torch.no_grad():  # move BatchNorm statistics away from their init, so buffers must travel too
        backbone.train()(torch.randn(8, 3, 32, 32))
    backbone.eval()
    cfg = Config(model=model, method=METHODS["simclr"].Config())
    out = str(tmp_path / "encoder.safetensors")
    snippet = save_encoder(Encoder(cfg, backbone, dim), out, "runs/x")
    namespace = {}
    exec(snippet, namespace)  # noqa: S102  (the printed snippet itself, as a user would paste it)
    plain = namespace["model"].eval()
    assert type(plain).__module__.startswith("torchvision.models")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), backbone(x), rtol=0, atol=0)
    with safe_open(out, "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    assert meta == {"backbone": model.backbone, "small_stem": model.small_stem, "width": 64, "feature_dim": dim,
                    "image_size": 32, "mean": cfg.data.mean, "std": cfg.data.std, "method": "simclr",
                    "run": "runs/x"}


def test_narrow_resnet_exports_without_a_torchvision_snippet(tmp_path):
    model = ModelConfig("resnet18", small_stem=True, width=16)
    backbone, dim = fresh_backbone(model, 32, seed=0)
    cfg = Config(model=model, method=METHODS["simclr"].Config())
    assert save_encoder(Encoder(cfg, backbone, dim), str(tmp_path / "e.safetensors"), "r") is None
    with safe_open(str(tmp_path / "e.safetensors"), "pt") as f:
        assert set(f.keys()) == set(backbone.state_dict())
