"""benchmarks.common.LiveTensors, the memory count of benchmarks/engines.py's DDP and FSDP2 rows, against
byte counts the tests work out from the parameters themselves."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from benchmarks.common import LiveTensors

FP32 = 4


def test_state_is_parameters_gradients_and_two_adam_moments_and_peak_holds_a_temporary():
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 128)
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    x = torch.randn(32, 256)

    def step(extra_bytes: int = 0) -> None:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        if extra_bytes:
            torch.ones(extra_bytes // FP32).sum()  # a temporary: alive for one op, freed before the exit
        opt.step()

    step()  # AdamW's moments exist from here on
    temporary = 16 * 2**20
    with LiveTensors(torch.device("cpu"), model, opt) as live:
        step(temporary)
    numel = sum(p.numel() for p in model.parameters())
    # parameters + gradients + exp_avg + exp_avg_sq, and each parameter's float32 `step` counter
    assert live.state_bytes == 4 * numel * FP32 + 2 * FP32
    # the temporary lives after backward: parameters, gradients and both moments were alive with it
    assert live.peak_bytes >= live.state_bytes + temporary


MAE_SMALL = ["method.name=mae", "model.backbone=timm:vit_tiny_patch16_224", "data.image_size=32",
             "model.patch_size=8", "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2"]


@pytest.mark.slow
def test_fsdp2_keeps_its_shard_of_the_state_and_ddp_all_of_it():
    """W = 2 gloo ranks, MAE on ViT-Tiny with AdamW. Between steps DDP keeps the parameters, both moments
    and its gradient buckets, which hold every gradient once: 4 P bytes (P the float32 parameter bytes).
    FSDP2 keeps its rank's dim-0 shard of the parameters and both moments: 3 x sum over parameters of
    ceil(rows / W) x (bytes per row), rank 0 holding the larger share, give or take a padding row. Both also keep the buffers whole and
    one float32 `step` counter per parameter (AdamW)."""
    from benchmarks import engines
    from trainer.methods import METHODS
    from trainer.registry import load_config

    world = 2
    cfg = load_config(engines.ROOT / "configs" / "methods" / "mae.yaml", MAE_SMALL)
    method = METHODS["mae"](cfg.method, cfg.model, cfg.data.image_size)
    params = list(method.parameters())
    full = sum(p.numel() for p in params) * FP32
    shard = sum(math.ceil(p.shape[0] / world) * (p.numel() // p.shape[0]) for p in params) * FP32
    extra = sum(b.numel() * b.element_size() for b in method.buffers()) + len(params) * FP32
    args = argparse.Namespace(ranks=world, batch_size=2, threads=1, steps=1, warmup=0)
    rows = {r["engine"]: r for r in engines.measure(args, "fp32", [MAE_SMALL])}
    ddp, fsdp2 = rows["ddp"], rows["fsdp2"]
    assert ddp["status"] == fsdp2["status"] == "ok"
    mib = 2**20
    rounding = 0.05 + 1e-9  # the rows' MiB are rounded to 0.1
    assert abs(ddp["state_mb"] - (4 * full + extra) / mib) <= rounding
    # FSDP2 may pad a shard by up to one row (in the parameter and in both moments)
    pad = 3 * sum(p.numel() // p.shape[0] for p in params) * FP32
    assert -rounding <= fsdp2["state_mb"] - (3 * shard + extra) / mib <= rounding + pad / mib
    # during DDP's optimizer step the parameters, gradients and both moments are all alive
    assert ddp["peak_mb"] >= (4 * full + extra) / mib - rounding
    assert fsdp2["peak_mb"] < ddp["peak_mb"]
