"""step.py's lightly rows build and train: for each method lightly has, its heads get our config's sizes, one
step gives every trainable parameter a gradient (DINO's frozen last layer none) and moves none of the
momentum targets' gradients. Skipped where the peer environment (`make bench-env`) is absent."""

import sys

import pytest
import torch

from benchmarks import lightly_methods
from trainer.methods import METHODS
from trainer.models import build_backbone
from trainer.registry import load_config

SMALL_HEADS = {  # our heads, shrunk so each builds in milliseconds
    "simclr": ["method.proj_output_dim=16"],
    "byol": ["method.proj_hidden_dim=32", "method.proj_output_dim=16", "method.pred_hidden_dim=32"],
    "vicreg": ["method.proj_hidden_dim=32", "method.proj_output_dim=32"],
    "barlow_twins": ["method.proj_hidden_dim=32", "method.proj_output_dim=32"],
    "simsiam": ["method.proj_hidden_dim=32", "method.proj_output_dim=32", "method.pred_hidden_dim=8"],
    "mocov3": ["method.proj_hidden_dim=32", "method.proj_output_dim=16", "method.pred_hidden_dim=32"],
    "dino": ["method.hidden_dim=32", "method.bottleneck_dim=8", "method.out_dim=64", "aug.local_crops=2"],
}


@pytest.fixture
def lightly(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the peer's site-packages leave with the test
    reason = lightly_methods.import_lightly()
    if reason:
        pytest.skip(f"lightly {reason}")


@pytest.mark.parametrize("name", sorted(SMALL_HEADS))
def test_lightly_equivalent_has_our_head_sizes_and_trains(lightly, name):
    cfg = load_config(None, [f"method.name={name}", "model.width=8", "data.image_size=16", *SMALL_HEADS[name]])
    ours = METHODS[name](cfg.method, cfg.model, cfg.data.image_size)
    net, dim = build_backbone(cfg.model, cfg.data.image_size)
    peer = lightly_methods.build(name, ours, net, dim)
    assert peer.model["backbone"] is net
    out_dim = cfg.method.out_dim if name == "dino" else cfg.method.proj_output_dim
    torch.manual_seed(0)
    views = [torch.randn(4, 3, s.size, s.size) for s in METHODS[name].views(cfg.method, cfg.data, cfg.aug)]
    assert peer.model["head"](net(views[0])).shape == (4, out_dim)

    loss = peer.loss(views)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    peer.before_optimizer_step()
    for n, p in peer.model.named_parameters():
        if n.split(".")[0] in ("target", "teacher"):  # momentum targets: trained by update_momentum only
            assert not p.requires_grad and p.grad is None, n
        elif n.startswith("head.last_layer."):  # DINO's last layer: frozen for the step, its norm fixed at 1
            assert p.grad is None, n
        else:
            assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), n
