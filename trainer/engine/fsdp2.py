"""FSDP2 engine: parameters, gradients and optimizer state sharded across ranks, for ViTs that outgrow DDP.

`fully_shard` (torch.distributed.fsdp) wraps each of the method's `shard_units` (every transformer block,
the children of a `blocks` container as timm's ViTs name them, and heads a method names, the EMA
teacher's included) and then the method as the root. A unit's parameters are all-gathered just before its
forward and backward and freed after, so a rank holds 1/W of the persistent state plus one unit unsharded. Under bf16: bf16 parameters and compute, fp32 gradient
reduce-scatter (MixedPrecisionPolicy); fp32 otherwise (the CPU's default). The EMA teacher is sharded like
the student, so its update (a lerp of local shards) moves no bytes.

Checkpoints: the method's weights and the optimizer go through torch.distributed.checkpoint
(`save_shards`), which reshards on load, so a run resumes at another world size with the same global
batch; rank 0 also writes the full weights into state.pt for eval and export (`model_state_dict`).

Refused: BatchNorm (FSDP2 does not broadcast buffers as DDP does, so each rank's running statistics
would drift apart and the saved model would be rank 0's alone), LARS (its trust ratio needs each whole
layer's norm; ViT recipes use AdamW), fp16 (use bf16) and the `skip` non-finite policy.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from trainer.config import EngineConfig, OptimConfig
from trainer.dist import DistContext, ensure_process_group
from trainer.engine.grad_cache import MethodEntry, gradient_cache_step
from trainer.engine.plan import Plan
from trainer.optim import build_optimizer, set_hyperparameters
from trainer.types import Batch, MethodOutput

DCP_DIR = "fsdp2"


def refuse_unsupported(engine: EngineConfig, optim: OptimConfig, nonfinite: str, plan: Plan, method: nn.Module) -> None:
    """ValueError naming the first setting or layer FSDP2 cannot serve."""
    norms = [f"{name} ({type(m).__name__})" for name, m in method.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise ValueError(f"engine.name = fsdp2 cannot train {norms[0]} ({len(norms)} BatchNorm layers): FSDP2 does "
                         "not broadcast BatchNorm statistics between ranks; use a ViT (timm:...) or engine.name = ddp")
    if optim.name == "lars":
        raise ValueError("optim.name = lars with engine.name = fsdp2: LARS needs each layer's whole norm, FSDP2 "
                         "shards layers across ranks; use optim.name = adamw (the ViT recipes' optimizer)")
    if plan.precision == "fp16":
        raise ValueError("engine.precision = fp16 with engine.name = fsdp2: use bf16 (fp32's exponent range, "
                         "no loss scaling) or fp32")
    if nonfinite == "skip":
        raise ValueError("train.nonfinite = skip with engine.name = fsdp2 is not supported: use stop, or engine.name = ddp")
    if engine.compile:
        raise ValueError("engine.compile = true with engine.name = fsdp2 is not supported yet: use ddp to compile")


def shard(entry: MethodEntry, mesh, policy: MixedPrecisionPolicy) -> None:
    """fully_shard each of the method's `shard_units` (its blocks and large heads, student and teacher),
    then the root: the method's entry, so that `embed` (the gradient cache's passes) runs through the
    root's forward too. What no unit holds is gathered with the root for the whole step."""
    for unit in entry.method.shard_units():
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(entry, mesh=mesh, mp_policy=policy)


class FSDP2Engine:
    def __init__(self, engine: EngineConfig, optim: OptimConfig, plan: Plan, method: nn.Module, ctx: DistContext, *,
                 nonfinite: str):
        refuse_unsupported(engine, optim, nonfinite, plan, method)
        ensure_process_group(ctx)
        self.ctx, self.grad_clip, self.total_steps = ctx, optim.grad_clip, plan.total_steps
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if plan.precision == "bf16" else MixedPrecisionPolicy())
        self.module = method.to(ctx.device)
        self.root = MethodEntry(self.module)
        shard(self.root, mesh, policy)
        # built after sharding: the optimizer holds the DTensor shards, so its state is sharded too
        self.optimizer = build_optimizer(optim, method.parameter_groups(), plan.lr)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    @contextlib.contextmanager
    def _sync_if_last(self, i: int, n: int):
        """Gradients reduce-scattered only in the last micro-batch's backward."""
        self.root.set_requires_gradient_sync(i == n - 1)
        yield

    def forward_backward(self, batches: list[Batch]) -> list[MethodOutput]:
        """As the DDP engine's: the gradient cache for a loss that couples samples over several
        micro-batches (exact), loss / len(batches) per micro-batch otherwise."""
        if self.module.couples_samples and len(batches) > 1:
            return gradient_cache_step(
                self.module, batches, embed=lambda batch: self.root(batch, embed_only=True),
                backward=lambda i, surrogate: surrogate.backward(),
                no_sync=lambda i: self._sync_if_last(i, len(batches)),
                autocast=contextlib.nullcontext, device=self.ctx.device)  # precision: the policy's
        outputs = []
        for i, batch in enumerate(batches):
            with self._sync_if_last(i, len(batches)):
                out = self.root(batch)
                (out.loss / len(batches)).backward()
            outputs.append(out)
        return outputs

    def step(self, batches: list[Batch], lr: float, step: int) -> list[MethodOutput]:
        """Optimizer step `step` at lr `lr` (x each group's lr_scale): `forward_backward`, the method's
        before_optimizer_step, then one optimizer step on the local shards. With clipping, the global
        grad norm (over every rank's shards) is the last output's `grad_norm`."""
        set_hyperparameters(self.optimizer, lr, step, self.total_steps)
        outputs = self.forward_backward(batches)
        self.module.before_optimizer_step(step)
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            outputs[-1].metrics["grad_norm"] = (norm.full_tensor() if isinstance(norm, DTensor) else norm).detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return outputs

    @torch.no_grad()
    def images(self, batch: Batch) -> dict[str, list[torch.Tensor]]:
        """Collective: the method's pictures of `batch`. The hook is no forward, so the root's parameters
        are gathered by hand (each block gathers its own in its forward)."""
        self.root.unshard()
        try:
            return self.module.images(batch)
        finally:
            self.root.reshard()

    def model_state_dict(self) -> dict:
        """Collective: the full (unsharded) weights on rank 0, in CPU memory; {} on the other ranks."""
        state = get_model_state_dict(self.root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k.removeprefix("method."): v for k, v in state.items()}  # the method's keys, as DDP saves them

    def load_model_state_dict(self, state: dict) -> None:
        """Nothing: the sharded weights come back through load_shards, resharded to this world size."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing: the optimizer comes back through load_shards."""

    def _sharded_state(self) -> dict:
        return {"model": get_model_state_dict(self.root),
                "optimizer": get_optimizer_state_dict(self.root, self.optimizer)}

    def save_shards(self, directory: Path) -> None:
        """Collective: every rank writes its shards of weights and optimizer state (torch.distributed.checkpoint)."""
        dcp.save(self._sharded_state(), checkpoint_id=str(Path(directory) / DCP_DIR))

    def load_shards(self, directory: Path) -> None:
        """Collective: reads the shards this rank owns now, whatever world size wrote them."""
        path = Path(directory) / DCP_DIR
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no FSDP2 checkpoint there (was this run trained with engine.name = fsdp2?)")
        state = self._sharded_state()
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(self.root, state["model"])
        set_optimizer_state_dict(self.root, self.optimizer, state["optimizer"])
