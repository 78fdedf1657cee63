"""EMA targets stay float32 under every engine: the update arithmetic from half-precision sources
against a float64 reference over many steps, what DeepSpeed does to the module dtypes, and the
re-cast after DeepSpeed's fp16 cast of the whole module.

DeepSpeed's fp16 refuses the CPU ("Type fp16 is not supported on your device"), so its cast is
reproduced here with `module.half()`, which is what its engine applies to the wrapped module.
"""

from __future__ import annotations

import pytest
import torch
from method_helpers import VIT_ONLY, random_batch, tiny_method
from tolerance import rounding_bound
from torch import nn

from trainer.config import Config, EngineConfig, OptimConfig, TrainConfig
from trainer.dist import DistContext
from trainer.engine import build_engine, make_plan
from trainer.engine.amp import keep_ema_float32
from trainer.methods import METHODS
from trainer.models.ema import EMA

STEPS, MOMENTUM = 1000, 0.996


def drifting_source(dtype):
    """A half-precision source as DeepSpeed's fp16 keeps it: the rounding of float32 master weights
    that drift by ~1e-4 per step (an online network late in training)."""
    torch.manual_seed(0)
    source = nn.Linear(16, 16).to(dtype)
    master = source.weight.detach().float().clone()
    generator = torch.Generator().manual_seed(1)
    direction = torch.randn(16, 16, generator=generator)

    def move():
        master.add_(1e-4 * direction + 1e-5 * torch.randn(16, 16, generator=generator))
        with torch.no_grad():
            source.weight.copy_(master)
    return source, move


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ema_of_a_half_precision_source_tracks_a_float64_reference(dtype):
    source, move = drifting_source(dtype)
    ema = EMA(source)
    naive = nn.Linear(16, 16).to(dtype)  # what a target cast along with the source would do
    naive.load_state_dict(source.state_dict())
    ref = source.weight.detach().double().clone()
    for _ in range(STEPS):
        move()
        ema.update(source, MOMENTUM)
        with torch.no_grad():
            naive.weight.lerp_(source.weight, 1 - MOMENTUM)
        ref = MOMENTUM * ref + (1 - MOMENTUM) * source.weight.detach().double()
    got = ema.module.weight.detach()
    assert got.dtype == torch.float32
    # each step rounds a lerp (3 float32 operations at the weights' scale); errors add up at most linearly
    bound = rounding_bound(torch.float32, ref.abs().max().item(), 3 * STEPS)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=bound)
    # a target kept in the source's dtype rounds increments away (measured: it lags the reference by
    # 6% of the target's own motion in fp16, 60% in bf16; 175x and 1090x the bound): the test can fail
    assert (naive.weight.double() - ref).abs().max() > 10 * bound


def tiny(name):
    return tiny_method(name, image_size=8, width=4, head_dim=16, local_crops=0)


def ema_dtypes(module):
    return {t.dtype for m in module.modules() if isinstance(m, EMA) for t in (*m.parameters(), *m.buffers())
            if t.is_floating_point()}


EMA_METHODS = [name for name in METHODS if name not in VIT_ONLY  # MAE: a ViT, and no EMA
               and any(isinstance(m, EMA) for m in tiny(name)[0].modules())]


@pytest.mark.parametrize("name", EMA_METHODS)
def test_a_half_cast_module_gets_its_ema_back_in_float32(name):
    method = tiny(name)[0].half()  # DeepSpeed's fp16 engine does this to the module it wraps
    assert ema_dtypes(method) == {torch.float16}
    keep_ema_float32(method)
    assert ema_dtypes(method) == {torch.float32}
    assert {p.dtype for p in method.backbone.parameters()} == {torch.float16}


@pytest.mark.slow
def test_deepspeed_leaves_the_ema_in_float32():
    """bf16 under DeepSpeed keeps float32 weights and our autocast (plan.py): the target stays float32
    through initialize and a step."""
    name = EMA_METHODS[0]
    cfg = Config(optim=OptimConfig(name="sgd", base_lr=0.1), engine=EngineConfig(name="deepspeed", precision="bf16"),
                 train=TrainConfig(global_batch_size=4))
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, 1, torch.device("cpu"), num_samples=40)
    method, views = tiny(name)
    engine = build_engine(cfg.engine, cfg.optim, plan, method, DistContext(), nonfinite=cfg.train.nonfinite)
    engine.step([random_batch(views, 4)], lr=plan.lr, step=0)
    engine.module.after_step(1, plan.total_steps)
    assert ema_dtypes(engine.module) == {torch.float32}
