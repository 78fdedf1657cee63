"""Every value derived from the config and the world, computed once, named and logged at start.

The user's config is never rewritten (STYLE.md, principle 9): the loop, the engines and the logger
read these fields instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from trainer.config import EngineConfig, OptimConfig, TrainConfig


def micro_batching(train: TrainConfig, world_size: int) -> tuple[int, int]:
    """(per-device batch, gradient-accumulation steps) with global = per_device x world x accumulation."""
    per_device = train.per_device_batch_size or train.global_batch_size // world_size
    if per_device < 1 or train.global_batch_size % (per_device * world_size):
        raise ValueError(
            f"train.global_batch_size = {train.global_batch_size} is not a whole multiple of "
            f"per-device batch {per_device} x world size {world_size}; set train.per_device_batch_size "
            f"(or the number of processes) so that it is"
        )
    return per_device, train.global_batch_size // (per_device * world_size)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 autocast on CUDA and fp32 on the CPU."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


@dataclass(frozen=True)
class Plan:
    world_size: int
    global_batch_size: int
    per_device_batch_size: int
    accumulation_steps: int  # global / (per_device x world)
    lr: float  # peak lr = base_lr x global_batch / 256
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    warmup_steps: int
    epochs: int  # epochs the loop runs (ceil of total_steps / steps_per_epoch)
    precision: str  # fp32 | bf16 | fp16, `auto` resolved
    deepspeed: dict | None  # the DeepSpeed config dict (engine.name == deepspeed)

    def summary(self) -> dict:
        return asdict(self)


def deepspeed_config(engine: EngineConfig, grad_clip: float, plan_batch: tuple[int, int, int], precision: str) -> dict:
    """DeepSpeed's JSON, derived from our config: batch sizes are never typed twice.

    bf16 runs under our own autocast with fp32 weights (as DDP does); fp16 uses DeepSpeed's dynamic
    loss scaler, which also skips overflowing steps.
    """
    global_batch, per_device, accumulation = plan_batch
    ds = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": per_device,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": engine.zero_stage},
        "zero_allow_untested_optimizer": True,  # our torch LARS/SGD/AdamW, not DeepSpeed's fused ones
        "steps_per_print": 2**31 - 1,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if precision == "fp16":
        ds["fp16"] = {"enabled": True}
    return ds


def make_plan(train: TrainConfig, optim: OptimConfig, engine: EngineConfig, world_size: int, device: torch.device,
              num_samples: int) -> Plan:
    """The plan for training on `num_samples` images (the split's size in its manifest), computed before
    the loader is built (the loader takes its per-device batch from here)."""
    per_device, accumulation = micro_batching(train, world_size)
    # the loader drops the samples past the last full global batch each epoch (trainer/data/sampling.py)
    steps_per_epoch = num_samples // train.global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"{num_samples} images make no optimizer step of {train.global_batch_size}: the dataset is "
            f"smaller than train.global_batch_size"
        )
    total = train.max_steps or train.epochs * steps_per_epoch
    precision = resolve_precision(engine.precision, device)
    if engine.name == "deepspeed":
        if engine.zero_stage not in (0, 1, 2):
            raise ValueError(f"engine.zero_stage = {engine.zero_stage}: choose 0, 1 or 2")
        if optim.name == "lars" and engine.zero_stage > 0:
            raise ValueError("optim.name = lars needs engine.zero_stage = 0: ZeRO 1-2 flatten and partition "
                             "parameters, so LARS could not see each layer's norm")
        if train.nonfinite == "skip" and precision != "fp16":
            raise ValueError("train.nonfinite = skip with engine.name = deepspeed needs engine.precision = fp16 "
                             "(DeepSpeed's loss scaler is what skips a step); use the ddp engine otherwise")
    return Plan(
        world_size=world_size,
        global_batch_size=train.global_batch_size,
        per_device_batch_size=per_device,
        accumulation_steps=accumulation,
        lr=optim.base_lr * train.global_batch_size / 256,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=min(total, round(optim.warmup_epochs * steps_per_epoch)),
        epochs=-(-total // steps_per_epoch),
        precision=precision,
        deepspeed=(deepspeed_config(engine, optim.grad_clip, (train.global_batch_size, per_device, accumulation),
                                    precision)
                   if engine.name == "deepspeed" else None),
    )
