"""Process-group setup from whichever launcher started us, and a gather that carries gradients.

Reads, in order: torchrun / the deepspeed launcher (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT),
then Slurm's srun (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, head node from SLURM_JOB_NODELIST).
With none of them set this is one process: no process group, and every collective is the identity.
Shard and seed by `global_rank`; pick the device by `local_rank` (STYLE.md, principle 10).
"""

from __future__ import annotations

import functools
import gc
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    global_rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_slurm_host(nodelist: str) -> str:
    """Head node of a Slurm node list: `scontrol show hostnames`, or a parse of `a[01-04],b` forms."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], check=False, capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    m = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
    return m.group(1) + (m.group(2) or "") if m else "127.0.0.1"


def _env_from_slurm() -> None:
    """Translate srun's variables into the torchrun ones (only where torchrun's are absent)."""
    env = os.environ
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    tasks_per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    if tasks_per_node.isdigit():
        env["LOCAL_WORLD_SIZE"] = tasks_per_node
    env.setdefault("MASTER_ADDR", _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    # a port derived from the job id, so two jobs sharing a node do not collide
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))


def init_distributed(timeout_s: int = 600) -> DistContext:
    """Join the process group the launcher describes (gloo on CPU, NCCL on GPU) and pick the device."""
    _env_from_slurm()
    env = os.environ
    world_size = int(env.get("WORLD_SIZE", "1"))
    global_rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", str(min(world_size, max(torch.cuda.device_count(), 1)))))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            init_method="env://",
            rank=global_rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return DistContext(global_rank, local_rank, world_size, local_world_size, device)


def ensure_process_group(ctx: DistContext) -> None:
    """A one-rank process group on an in-memory store when none was started (one process): DeepSpeed
    and FSDP2 need a group even then (DeepSpeed also LOCAL_RANK; without them it tries MPI, then asserts)."""
    if not dist.is_initialized():
        for key in ("RANK", "LOCAL_RANK"):
            os.environ.setdefault(key, "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        backend = "nccl" if ctx.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def shutdown() -> None:
    """Destroy the process group so that it is freed now, while Python is alive (see _drop_dtensor_caches)."""
    if not dist.is_initialized():
        return
    if "torch.distributed.tensor" in sys.modules:
        _drop_dtensor_caches()
    dist.destroy_process_group()


def _drop_dtensor_caches() -> None:
    """Empty the caches in which DTensor (FSDP2) keeps every DeviceMesh it planned for.

    Its sharding and redistribution plans are cached (`functools` caches, the planner cache, a C++
    dispatch cache) under specs that hold the mesh, and the mesh holds the process group: after
    `destroy_process_group` the group and its gloo worker threads lived on into interpreter finalization,
    where a worker thread still releasing the last barrier's tensors was killed taking the GIL, through
    a destructor that may not unwind: SIGABRT, "terminate called without an active exception", about one
    FSDP2 run in 40 on a loaded 2-core machine. Freed before that, the group joins its threads.
    """
    from torch.distributed.tensor import _redistribute

    gc.collect()  # the engine's modules sit in reference cycles (their hooks) that hold their meshes
    for obj in gc.get_objects():
        if isinstance(obj, functools._lru_cache_wrapper) and (obj.__module__ or "").startswith("torch.distributed"):
            obj.cache_clear()
    for clear in (getattr(_redistribute, "clear_redistribute_planner_cache", None),
                  getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None)):
        if clear is not None:  # not in every torch release
            clear()
    gc.collect()  # a cached redistribution planner is a reference cycle (its callbacks close over it)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the summed gradient of its own slice.

    Rank q's loss depends on every rank's rows; the gradient of the sum of all ranks' losses with
    respect to rank r's rows is the sum over q of slice r of q's gradient: all_reduce, then slice.
    DDP then averages parameter gradients, which matches one process on the concatenated batch
    whose loss is the mean over all rows.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.n = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":  # reduce-scatter moves half the bytes of all-reduce + slice
            out = grad.new_empty((ctx.n, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # gloo has no reduce-scatter
        start = dist.get_rank() * ctx.n
        return grad[start : start + ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[n, ...] on each of W ranks -> [W*n, ...] in rank order, differentiable; identity in one process."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)

