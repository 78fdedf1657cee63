"""Tiny methods for tests: ResNet-18 at width 8 with the small stem (or timm's ViT-Tiny, patch 4), 32-wide heads."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.methods import METHODS
from trainer.registry import load_config
from trainer.types import Batch, ViewSpec

VIT = "timm:vit_tiny_patch16_224"
BACKBONES = ("resnet18", VIT)  # what the contract tests loop over
VIT_ONLY = {"mae"}  # methods built on patches: they refuse a ResNet (tested in their own file)


def tiny_method(name: str, *, image_size: int = 16, local_crops: int = 1, width: int = 8, head_dim: int = 32,
                backbone: str = "resnet18", overrides: tuple[str, ...] = ()):
    """(method, its views) built from the typed config with every `*_dim` head size set to head_dim;
    `backbone=VIT` is ViT-Tiny with 4 px patches (width and stem apply to the ResNet only)."""
    model = ([f"model.backbone={backbone}", "model.patch_size=4"] if backbone.startswith("timm:")
             else [f"model.width={width}", "model.small_stem=true"])
    cfg = load_config(
        overrides=[
            f"method.name={name}",
            *model,
            f"data.image_size={image_size}",
            f"aug.local_crops={local_crops}",
            *overrides,
        ]
    )
    dims = {f.name: head_dim for f in dataclasses.fields(cfg.method) if f.name.endswith("_dim")}
    method_cfg = dataclasses.replace(cfg.method, **dims)
    cls = METHODS[name]
    return cls(method_cfg, cfg.model, cfg.data.image_size), cls.views(method_cfg, cfg.data, cfg.aug)


# The longest accumulation chain of a float64 gradient of a BN-free tiny_method(image_size=8, width=4,
# head_dim=16) over a batch of at most 8: ~20 layers forward and backward, each a fan-in of at most
# 9 x 32 and a batch reduction of at most 8 rows x 8 x 8 positions (tolerance.rounding_bound's length).
TINY_CHAIN = 2 * 20 * (9 * 32 + 8 * 8 * 8)


def random_batch(views: list[ViewSpec], n: int, seed: int = 0, dtype=torch.float32) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch([torch.randn(n, 3, v.size, v.size, generator=gen, dtype=dtype) for v in views])


def float64_method(name: str, batchnorm: bool = False):
    """(method, views): the tiny_method of the multi-rank tests (8 px, width 4, heads of 16, seed 0) in float64,
    per-sample (BatchNorm removed) unless `batchnorm`; TINY_CHAIN bounds its BN-free gradients."""
    torch.manual_seed(0)
    method, views = tiny_method(name, image_size=8, width=4, head_dim=16)
    return (method if batchnorm else without_batchnorm(method)).double(), views


def whole_batch_runs(names, batch_size: int, outcome: Callable, batchnorm: bool = False):
    """Each method's one-process float64 step on a random batch of `batch_size`: (inputs, want), where inputs[name]
    is what every rank starts from (the state before the step, the whole batch's views) and want[name] is
    `outcome(method, loss)` after the backward."""
    inputs, want = {}, {}
    for seed, name in enumerate(names):
        method, views = float64_method(name, batchnorm)
        batch = random_batch(views, batch_size, seed=seed, dtype=torch.float64)
        # copies: the forward moves buffers in place (DINO's center); the ranks start from before it
        inputs[name] = ({k: v.clone() for k, v in method.state_dict().items()}, batch.views)
        out = method(batch)
        out.loss.backward()
        want[name] = outcome(method, out.loss.detach())
    return inputs, want


def without_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm replaced by Identity, in place: per-sample networks, so a batch split over
    ranks computes exactly what the whole batch does in one process."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now, for a gloo rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_gloo_ranks(world_size: int, folder: Path, rank_fn: Callable, inputs):
    """`rank_fn(rank, world_size, inputs)` in `world_size` spawned processes joined in a gloo group on
    127.0.0.1, one thread each (they share the cores); returns what rank 0 returned. `inputs` and the result
    travel through files in `folder`, as a launcher's ranks would read theirs."""
    torch.save(inputs, Path(folder) / "inputs.pt")
    mp.spawn(_gloo_rank, args=(world_size, free_port(), str(folder), rank_fn), nprocs=world_size, join=True)
    return torch.load(Path(folder) / "results.pt")


def _gloo_rank(rank: int, world_size: int, port: int, folder: str, rank_fn: Callable) -> None:
    torch.set_num_threads(1)
    os.environ.update(GLOO_SOCKET_IFNAME="lo", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = rank_fn(rank, world_size, torch.load(Path(folder) / "inputs.pt"))
        if rank == 0:
            torch.save(result, Path(folder) / "results.pt")
    finally:
        dist.destroy_process_group()


def ddp_step(method: nn.Module, views: list[torch.Tensor], rank: int, world_size: int) -> torch.Tensor:
    """Forward and backward of this rank's equal slice of the global `views` under DDP (which averages the
    gradients over ranks); returns the loss averaged over ranks, what one process computes on all of it."""
    per_rank = views[0].shape[0] // world_size
    ddp = DistributedDataParallel(method)  # held: its reducer must outlive the backward
    out = ddp(Batch([v[rank * per_rank:(rank + 1) * per_rank] for v in views]))
    out.loss.backward()
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    return loss / world_size
