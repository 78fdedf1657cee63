"""DistributedDataParallel engine (one process is the same code without the wrapper)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.config import EngineConfig, OptimConfig
from trainer.dist import DistContext
from trainer.engine.amp import autocast, restore_unless, step_if
from trainer.engine.grad_cache import MethodEntry, gradient_cache_step
from trainer.engine.plan import Plan
from trainer.engine.sync_bn import convert_sync_batchnorm
from trainer.optim import build_optimizer, set_hyperparameters
from trainer.types import Batch, MethodOutput


class DDPEngine:
    def __init__(self, engine: EngineConfig, optim: OptimConfig, plan: Plan, method: nn.Module, ctx: DistContext, *,
                 nonfinite: str):
        self.ctx, self.precision, self.total_steps = ctx, plan.precision, plan.total_steps
        self.grad_clip, self.skip_nonfinite = optim.grad_clip, nonfinite == "skip"
        if engine.sync_bn and ctx.distributed:
            method = convert_sync_batchnorm(method, ctx.device)
        method = method.to(ctx.device)
        if engine.channels_last and ctx.device.type == "cuda":
            method = method.to(memory_format=torch.channels_last)
        self.module = method
        self.optimizer = build_optimizer(optim, method.parameter_groups(), plan.lr)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        model = MethodEntry(method)
        if ctx.distributed:
            model = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
        self.model = torch.compile(model) if engine.compile else model
        self.ddp = model if ctx.distributed else None
        # fp16 needs loss scaling; bf16 has fp32's exponent range and does not
        self.scaler = torch.amp.GradScaler(ctx.device.type) if plan.precision == "fp16" else None

    def no_sync(self, i: int, count: int):
        """Hold DDP's gradient all-reduce back for every micro-batch but the last of `count`."""
        return self.ddp.no_sync() if self.ddp is not None and i < count - 1 else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def forward_backward(self, batches: list[Batch]) -> list[MethodOutput]:
        """Gradients of the step's global batch, one output per micro-batch. With several
        micro-batches, a loss that couples samples goes through the gradient cache (grad_cache.py:
        exact, every negative and every row of the global batch); per-sample losses accumulate
        loss / len(batches) per micro-batch. Either way the all-reduce runs in the last backward only."""
        if self.module.couples_samples and len(batches) > 1:
            def embed(batch):
                with autocast(self.precision, self.ctx.device):
                    return self.model(batch, embed_only=True)

            return gradient_cache_step(
                self.module, batches, embed=embed, backward=lambda i, surrogate: self.backward(surrogate),
                no_sync=lambda i: self.no_sync(i, len(batches)),
                autocast=lambda: autocast(self.precision, self.ctx.device), device=self.ctx.device)
        outputs = []
        for i, batch in enumerate(batches):
            with self.no_sync(i, len(batches)):
                with autocast(self.precision, self.ctx.device):
                    out = self.model(batch)
                self.backward(out.loss / len(batches))
            outputs.append(out)
        return outputs

    def step(self, batches: list[Batch], lr: float, step: int) -> list[MethodOutput]:
        """Optimizer step `step` (0-based) at lr `lr` (x each group's lr_scale): `forward_backward`,
        the method's before_optimizer_step, one optimizer step.

        With grad clipping or the `skip` policy, the global grad norm is appended to the last
        output's metrics as `grad_norm`. A step the `skip` policy skips changes nothing: the module's
        buffers (BatchNorm running stats, which a non-finite forward poisons) are restored too.
        """
        set_hyperparameters(self.optimizer, lr, step, self.total_steps)
        buffers = list(self.module.buffers()) if self.skip_nonfinite else []
        before = [b.clone() for b in buffers]
        outputs = self.forward_backward(batches)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        self.module.before_optimizer_step(step)
        if self.grad_clip > 0 or self.skip_nonfinite:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
            if self.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, norm)
            outputs[-1].metrics["grad_norm"] = norm.detach()
        if self.scaler is not None:  # skips the step itself when a gradient is not finite
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.skip_nonfinite:
            step_if(self.optimizer, torch.isfinite(norm))
        else:
            self.optimizer.step()
        if self.skip_nonfinite:
            restore_unless(torch.isfinite(norm), buffers, before)
        self.optimizer.zero_grad(set_to_none=True)
        return outputs

    @torch.no_grad()
    def images(self, batch: Batch) -> dict[str, list[torch.Tensor]]:
        """The method's pictures of `batch` (no graph, under the step's precision)."""
        with autocast(self.precision, self.ctx.device):
            return self.module.images(batch)

    def model_state_dict(self) -> dict:
        return self.module.state_dict()

    def load_model_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    def save_shards(self, directory) -> None:
        """Nothing: rank 0's state_dict holds the whole optimizer under DDP."""

    def load_shards(self, directory) -> None:
        """Nothing: see save_shards."""
