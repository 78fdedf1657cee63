"""DeepSpeed keeps the weights' memory format: `deepspeed.initialize` broadcasts every parameter viewed
as bytes (`p.data.view(torch.uint8)`, deepspeed 0.19), which a channels_last weight refuses, so the
engine lays out only the inputs channels_last (the loaders do) and must never convert the module, on
the CPU or on CUDA, where `engine.channels_last` is on by default."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from method_helpers import random_batch, tiny_method

from trainer.config import EngineConfig, OptimConfig, TrainConfig
from trainer.dist import DistContext
from trainer.engine import build_engine, make_plan

pytestmark = pytest.mark.slow


REFUSAL = """
import deepspeed, torch
from torch import nn
from trainer.dist import DistContext, ensure_process_group
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # as the engine does on the CPU
ensure_process_group(DistContext())
model = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     config={"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2}, dist_init_required=False)
"""


def test_deepspeed_initialize_refuses_channels_last_weights():
    """In its own process: the failed initialize leaves DeepSpeed in a state that aborts the next one."""
    done = subprocess.run([sys.executable, "-c", REFUSAL], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and "must be 1 to view Float as Byte" in done.stderr, done.stderr[-2000:]


def test_deepspeed_engine_with_channels_last_on_keeps_its_weights_and_trains():
    optim, engine_cfg = OptimConfig(name="sgd", base_lr=0.1), EngineConfig(name="deepspeed", channels_last=True)
    plan = make_plan(TrainConfig(global_batch_size=4), optim, engine_cfg, 1, torch.device("cpu"), num_samples=40)
    method, views = tiny_method("simclr", image_size=8, width=4, head_dim=16, local_crops=0)
    before = [p.detach().clone() for p in method.parameters()]
    engine = build_engine(engine_cfg, optim, plan, method, DistContext(), nonfinite="stop")
    engine.step([random_batch(views, 4)], lr=plan.lr, step=0)
    convs = [p for p in engine.module.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous() for p in convs)
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, engine.module.parameters(), strict=True))
