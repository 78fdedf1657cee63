"""DeepSpeed engine: ZeRO stages 0-2 around our own torch optimizer (LARS, SGD or AdamW).

The DeepSpeed config dict comes from `Plan.deepspeed` (batch sizes derived, never typed twice).
Checkpoints use DeepSpeed's collective save/load (each rank writes its optimizer partition).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from trainer.config import EngineConfig, OptimConfig
from trainer.dist import DistContext, ensure_process_group
from trainer.engine.amp import autocast, keep_ema_float32, restore_unless
from trainer.engine.grad_cache import MethodEntry, gradient_cache_step
from trainer.engine.plan import Plan
from trainer.engine.sync_bn import convert_sync_batchnorm
from trainer.optim import build_optimizer, set_hyperparameters
from trainer.types import Batch, MethodOutput

TAG = "deepspeed"


class DeepSpeedEngine:
    def __init__(self, engine: EngineConfig, optim: OptimConfig, plan: Plan, method: nn.Module, ctx: DistContext, *,
                 nonfinite: str):
        if method.edits_gradients and engine.zero_stage > 0:
            raise ValueError(f"engine.zero_stage = {engine.zero_stage} cannot train {type(method).__name__}: it "
                             "edits gradients before the optimizer step (before_optimizer_step), which ZeRO 1-2 "
                             "keep partitioned outside .grad; use engine.zero_stage = 0 or engine.name = ddp")
        import deepspeed

        if ctx.device.type == "cpu":
            # DeepSpeed's CPU all-reduce would JIT-compile a shared-memory op on first use (45-140 s
            # here); marking it unavailable sends its collectives through torch.distributed's gloo.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        ensure_process_group(ctx)
        self.ctx, self.precision, self.total_steps = ctx, plan.precision, plan.total_steps
        self.skip_nonfinite = nonfinite == "skip"
        if engine.sync_bn and ctx.distributed:
            method = convert_sync_batchnorm(method, ctx.device)
        # the weights keep their memory format whatever engine.channels_last says: initialize broadcasts
        # every parameter viewed as bytes, which a channels_last weight refuses (deepspeed 0.19;
        # tests/methods/test_deepspeed_layout.py); the loaders hand over channels_last inputs, which the
        # convolutions follow
        self.module = method.to(ctx.device)
        self.optimizer = build_optimizer(optim, method.parameter_groups(), plan.lr)
        self.ds, _, _, _ = deepspeed.initialize(model=MethodEntry(self.module), optimizer=self.optimizer,
                                                config=plan.deepspeed, dist_init_required=False)
        keep_ema_float32(self.module)  # fp16 casts the whole module to half, EMA copies included
        if engine.compile:
            self.ds.compile()

    def step(self, batches: list[Batch], lr: float, step: int) -> list[MethodOutput]:
        """Optimizer step `step` (0-based) at lr `lr` (x each group's lr_scale): DeepSpeed's
        forward/backward/step per micro-batch; it reduces gradients and steps the optimizer (with
        clipping) on the last micro-batch of `gradient_accumulation_steps`, after the method's
        before_optimizer_step. A loss that couples samples goes through the gradient cache
        (grad_cache.py) when there are several micro-batches, as under DDP.

        Under the `skip` policy (fp16, see plan.py) DeepSpeed skips a step whose gradients overflow;
        the module's buffers (BatchNorm running stats) are restored where a loss was not finite."""
        # ZeRO wraps our optimizer but keeps its param_group dicts: setting lr here is what it uses
        set_hyperparameters(self.optimizer, lr, step, self.total_steps)
        buffers = list(self.module.buffers()) if self.skip_nonfinite else []
        before = [b.clone() for b in buffers]
        if self.precision == "fp16":  # DeepSpeed's fp16 keeps the module (not the EMA) in half precision
            batches = [Batch([v.half() for v in b.views], b.labels) for b in batches]

        def backward(i: int, loss: torch.Tensor, scale_wrt_gas: bool = True) -> None:
            self.ds.backward(loss, scale_wrt_gas=scale_wrt_gas)
            if i == len(batches) - 1:
                self.module.before_optimizer_step(step)
            self.ds.step()

        # autocast under fp16 too: it runs the float32 EMA on half inputs
        if self.module.couples_samples and len(batches) > 1:
            def embed(batch):
                with autocast(self.precision, self.ctx.device):
                    return self.ds(batch, embed_only=True)

            # the cached gradients are already those of the whole batch: no 1 / accumulation
            outputs = gradient_cache_step(
                self.module, batches, embed=embed,
                backward=lambda i, surrogate: backward(i, surrogate, scale_wrt_gas=False),
                no_sync=lambda i: contextlib.nullcontext(), autocast=lambda: autocast(self.precision, self.ctx.device),
                device=self.ctx.device)
        else:
            outputs = []
            for i, batch in enumerate(batches):
                with autocast(self.precision, self.ctx.device):
                    out = self.ds(batch)
                backward(i, out.loss)
                outputs.append(out)
        if self.skip_nonfinite:
            restore_unless(torch.isfinite(torch.stack([o.loss.detach().float() for o in outputs])).all(),
                           buffers, before)
        return outputs

    @torch.no_grad()
    def images(self, batch: Batch) -> dict[str, list[torch.Tensor]]:
        """The method's pictures of `batch` (no graph; half-precision views where the module is)."""
        if self.precision == "fp16":
            batch = Batch([v.half() for v in batch.views], batch.labels)
        with autocast(self.precision, self.ctx.device):  # as in step: the float32 EMA on half inputs
            return self.module.images(batch)

    def model_state_dict(self) -> dict:
        return self.module.state_dict()

    def load_model_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing: the optimizer comes back through load_shards."""

    def save_shards(self, directory: Path) -> None:
        self.ds.save_checkpoint(str(directory), tag=TAG)

    def load_shards(self, directory: Path) -> None:
        path, _ = self.ds.load_checkpoint(str(directory), tag=TAG, load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"{directory / TAG}: no DeepSpeed checkpoint there")
