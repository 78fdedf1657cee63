"""The engines that turn batches into optimizer steps: DDP, DeepSpeed or FSDP2 behind one small interface.

    engine = build_engine(cfg.engine, cfg.optim, plan, method, ctx, nonfinite=cfg.train.nonfinite)
    outputs = engine.step(micro_batches, lr, step)  # forward/backward per micro-batch, the method's
                                                    # before_optimizer_step, one optimizer step
    engine.module                                   # the unwrapped method (hooks, eval, checkpoints)
    outputs, hooks = train_step(engine, micro_batches, lr, step, total_steps)  # with the method's hooks

An engine owns AMP, gradient accumulation (no gradient all-reduce on non-final micro-batches; exact
for losses that couple samples under DDP and DeepSpeed, by the gradient cache of grad_cache.py),
SyncBN (sync_bn.py), float32 EMA copies, clipping, the optimizer and the non-finite `skip` policy.
It never knows which method it trains, only whether its loss `couples_samples`.
Checkpoint hooks: `state_dict()` / `load_state_dict()` for what rank 0 writes into the checkpoint,
`save_shards(dir)` / `load_shards(dir)` for what every rank writes together (DeepSpeed's ZeRO partitions,
FSDP2's torch.distributed.checkpoint), `model_state_dict()` (collective: the full weights on rank 0, for
state.pt, eval and export) / `load_model_state_dict(state)`.
"""

from __future__ import annotations

from torch import nn

from trainer.config import EngineConfig, OptimConfig
from trainer.dist import DistContext
from trainer.engine.plan import Plan, make_plan
from trainer.types import Batch, MethodOutput

__all__ = ["Plan", "build_engine", "make_plan", "train_step"]


def build_engine(engine: EngineConfig, optim: OptimConfig, plan: Plan, method: nn.Module, ctx: DistContext, *,
                 nonfinite: str):
    """A `DDPEngine`, `DeepSpeedEngine` or `FSDP2Engine` (engine.name) owning `method` and its optimizer;
    `nonfinite` is train.nonfinite (stop | skip), the one setting of another section an engine obeys."""
    if engine.name == "fsdp2":
        from trainer.engine.fsdp2 import FSDP2Engine

        return FSDP2Engine(engine, optim, plan, method, ctx, nonfinite=nonfinite)
    if engine.name == "deepspeed":
        from trainer.engine.deepspeed_engine import DeepSpeedEngine  # imports deepspeed only when asked

        return DeepSpeedEngine(engine, optim, plan, method, ctx, nonfinite=nonfinite)
    from trainer.engine.ddp import DDPEngine

    return DDPEngine(engine, optim, plan, method, ctx, nonfinite=nonfinite)


def train_step(engine, batches: list[Batch], lr: float, step: int, total_steps: int) -> tuple[list[MethodOutput], dict]:
    """Optimizer step `step` (0-based) in the contract's order: the method's before_step (schedules), the
    engine's step, the method's after_step (EMA) told the 1-based count of steps done. Returns the
    engine's outputs and the scalars both hooks logged. The loop and the step benchmarks share it."""
    hooks = dict(engine.module.before_step(step, total_steps))
    outputs = engine.step(batches, lr, step)
    hooks.update(engine.module.after_step(step + 1, total_steps))
    return outputs, hooks
