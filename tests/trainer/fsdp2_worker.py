"""Run under `torchrun --nproc-per-node W`: the same ViT method trained by the DDP and the FSDP2 engine.

argv: out_dir, `train` or `load`, then checkpoint dirs written by other world sizes to load.
train: for a method without a teacher (`plain`) and one with an EMA teacher (`ema`), each engine runs
STEPS optimizer steps of 2 micro-batches (accumulation through the gradient cache: the loss couples the
samples; clipping on) on the same global batches split
over the ranks; rank 0 writes the all-reduced loss per step, the full final weights (teacher included),
the full optimizer state, the number of parameter elements rank 0 holds and the names of the FSDP2 units
to out_dir/<variant>_<engine>.pt;
the FSDP2 engine's checkpoint shards go to out_dir/<variant>_ckpt.
Then, for each SAVED dir: a fresh FSDP2 engine at this world size loads SAVED/<variant>_ckpt and rank 0
writes the full weights and optimizer state it sees to out_dir/<variant>_from_<SAVED name>.pt.
Last, every rank ends as the trainer does (trainer.dist.shutdown) and writes the names of the threads it
still runs to out_dir/threads_rank<R>.json: the process group's gloo threads must be gone by then.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule

from trainer.config import Config, EngineConfig, OptimConfig, TrainConfig
from trainer.dist import all_gather_with_grad, init_distributed, shutdown
from trainer.engine import build_engine, make_plan
from trainer.loop import seed_everything
from trainer.methods.base import Method
from trainer.types import Batch, MethodOutput

STEPS = 3
MOMENTUM = 0.9  # EMA teacher


class TinyViTMethod(Method):
    """A ViT (timm, 32 px, patch 4, 2 blocks) + BN-free head; loss couples the gathered batch (as a
    contrastive loss does): mean squared distance of each embedding to the global batch mean of the
    other view's (teacher's, with `ema`) embeddings."""

    couples_samples = True

    def __init__(self, ema: bool):
        super().__init__()
        self.backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                                          patch_size=4, depth=2)
        self.feature_dim = self.backbone.num_features
        self.head = nn.Sequential(nn.Linear(self.feature_dim, 32), nn.GELU(), nn.Linear(32, 16))
        self.teacher = None
        if ema:
            self.teacher = copy.deepcopy(nn.ModuleDict({"backbone": self.backbone, "head": self.head}))
            self.teacher.requires_grad_(False)

    def shard_units(self) -> list[nn.Module]:
        """The head as a unit of its own, as DINO's: entered once per forward here, twice without a teacher."""
        return [*super().shard_units(), self.head, *([self.teacher["head"]] if self.teacher is not None else [])]

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        features = self.backbone(batch.views[0])
        if self.teacher is None:
            target = self.head(self.backbone(batch.views[1]))
        else:
            with torch.no_grad():
                target = self.teacher["head"](self.teacher["backbone"](batch.views[1]))
        return [features, self.head(features), target]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features, z, target = embeddings
        loss = (all_gather_with_grad(z) - all_gather_with_grad(target).mean(0)).pow(2).sum(1).mean()
        return MethodOutput(loss, {}, features.detach())

    def parameter_groups(self) -> list[dict]:
        return [{"name": "all", "params": [(n, p) for n, p in self.named_parameters() if not n.startswith("teacher.")]}]

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        if self.teacher is not None:
            online = [p for n, p in self.named_parameters() if not n.startswith("teacher.")]
            for t, s in zip(self.teacher.parameters(), online):
                t.lerp_(s, 1 - MOMENTUM)
        return {}


def batches(rank: int, world: int, step: int) -> list[Batch]:
    """This rank's slice of the global batch: the same images whatever the world size."""
    out = []
    for micro in range(2):
        g = torch.Generator().manual_seed(100 * step + micro)
        views = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
        per_rank = 8 // world
        out.append(Batch([v[rank * per_rank:(rank + 1) * per_rank] for v in views], None))
    return out


def config(engine: str, world: int) -> Config:
    return Config(optim=OptimConfig(name="sgd", base_lr=0.05 * 256 / 16, momentum=0.9, weight_decay=1e-4,
                                    grad_clip=1.0, warmup_epochs=0.0),
                  engine=EngineConfig(name=engine),
                  train=TrainConfig(global_batch_size=16, per_device_batch_size=8 // world))


def build(variant: str, engine_name: str, ctx):
    cfg = config(engine_name, ctx.world_size)
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, ctx.world_size, ctx.device, num_samples=2 * STEPS * 8)
    seed_everything(0)
    engine = build_engine(cfg.engine, cfg.optim, plan, TinyViTMethod(ema=variant == "ema"), ctx,
                          nonfinite=cfg.train.nonfinite)
    return engine, plan


def full_state(engine) -> tuple[dict, dict]:
    """(full weights, full optimizer state keyed by parameter name) on rank 0."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return engine.model_state_dict(), get_optimizer_state_dict(engine.root, engine.optimizer, options=options)


def local_numel(module: nn.Module) -> int:
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in module.parameters())


def train(out: Path, ctx) -> None:
    for variant in ("plain", "ema"):
        for engine_name in ("ddp", "fsdp2"):
            engine, plan = build(variant, engine_name, ctx)
            losses = []
            for step in range(STEPS):
                outputs = engine.step(batches(ctx.global_rank, ctx.world_size, step), lr=plan.lr, step=step)
                engine.module.after_step(step + 1, plan.total_steps)
                loss = torch.stack([o.loss.detach() for o in outputs]).mean()
                dist.all_reduce(loss)
                losses.append(loss.item() / ctx.world_size)
            weights, optim = full_state(engine) if engine_name == "fsdp2" else (engine.model_state_dict(), {})
            if engine_name == "fsdp2":
                engine.save_shards(out / f"{variant}_ckpt")
            if ctx.is_main:
                torch.save({"loss": losses, "weights": weights, "optimizer": optim.get("state"),
                            "local_numel": local_numel(engine.module),
                            "units": sorted(n for n, m in engine.module.named_modules() if isinstance(m, FSDPModule))},
                           out / f"{variant}_{engine_name}.pt")
            dist.barrier()


def load(out: Path, saved: Path, ctx) -> None:
    for variant in ("plain", "ema"):
        engine, _ = build(variant, "fsdp2", ctx)
        engine.load_shards(saved / f"{variant}_ckpt")
        weights, optim = full_state(engine)
        if ctx.is_main:
            torch.save({"weights": weights, "optimizer": optim["state"]}, out / f"{variant}_from_{saved.name}.pt")
        dist.barrier()


if __name__ == "__main__":
    torch.set_num_threads(1)
    context = init_distributed()
    if not dist.is_initialized():  # torchrun with one process: the engines need a group to compare
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    target = Path(sys.argv[1])
    if sys.argv[2] == "train":
        train(target, context)
    for saved_dir in sys.argv[3:]:
        load(target, Path(saved_dir), context)
    shutdown()
    threads = sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
    (target / f"threads_rank{context.global_rank}.json").write_text(json.dumps(threads))
