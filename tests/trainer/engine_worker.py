"""Run under `torchrun --nproc-per-node 2`: a few optimizer steps of every method with each engine.

For each (method, engine) it records, per step, the loss averaged over ranks, the largest difference
of any parameter between the ranks (the BYOL target included) and how far the step moved the
parameters (L2 norm of the change); for the DDP twin of a DeepSpeed run also how far apart their
parameters are after each step (`weight_diff`). It writes them as JSON to argv[1] (rank 0). Every
rank feeds its own deterministic batches (per rank, step, micro-batch), two micro-batches per step
(gradient accumulation) and clipping is active.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from trainer.config import Config, DataConfig, EngineConfig, ModelConfig, OptimConfig, TrainConfig
from trainer.dist import init_distributed
from trainer.engine import build_engine, make_plan
from trainer.loop import seed_everything
from trainer.methods import METHODS
from trainer.types import Batch

SMALL = {"simclr": {"proj_hidden_dim": 16, "proj_output_dim": 8},
         "byol": {"proj_hidden_dim": 16, "proj_output_dim": 8, "pred_hidden_dim": 16},
         "vicreg": {"proj_hidden_dim": 16, "proj_output_dim": 16}, "rotnet": {},
         "barlow_twins": {"proj_hidden_dim": 16, "proj_output_dim": 16},
         "simsiam": {"proj_hidden_dim": 16, "proj_output_dim": 16, "pred_hidden_dim": 8},
         "mocov3": {"proj_hidden_dim": 16, "proj_output_dim": 8, "pred_hidden_dim": 16},
         "dino": {"hidden_dim": 16, "bottleneck_dim": 8, "out_dim": 16}}
ENGINES = [("ddp", 0), ("deepspeed", 0), ("deepspeed", 1), ("deepspeed", 2)]
DEEPSPEED_METHODS = ("simclr", "byol")  # the DeepSpeed runs cost ~3 s each on 2 cores
STEPS = 3


def batches(n_views: int, size: int, rank: int, step: int, labels: bool) -> list[Batch]:
    out = []
    for micro in range(2):
        g = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
        views = [torch.randn(4, 3, size, size, generator=g) for _ in range(n_views)]
        out.append(Batch(views, torch.randint(0, 10, (4,), generator=g) if labels else None))
    return out


def flat_parameters(module: torch.nn.Module) -> torch.Tensor:
    """Every parameter (the BYOL target's too) in one float64 vector."""
    return torch.cat([t.detach().double().flatten() for t in module.parameters()])


def max_rank_difference(module: torch.nn.Module) -> float:
    """Over parameters (the BYOL target's too); BatchNorm running statistics are per rank by design."""
    flat = flat_parameters(module).float()
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat)
    return max((p - parts[0]).abs().max().item() for p in parts)


def main(out_path: str) -> None:
    ctx = init_distributed()
    results = {}
    for name, heads in SMALL.items():  # every method built on a ResNet (MAE needs a ViT: test_fault_world_size.py)
        cls = METHODS[name]
        for engine_name, stage in ENGINES:
            if engine_name == "deepspeed" and name not in DEEPSPEED_METHODS:
                continue
            cfg = Config(
                method=cls.Config(**heads),
                model=ModelConfig(width=8, small_stem=True),
                data=DataConfig(image_size=16),
                # LARS for DDP; SGD/AdamW for ZeRO, which partitions the tensors LARS needs whole
                optim=OptimConfig(name="lars" if engine_name == "ddp" else ("adamw" if stage == 2 else "sgd"),
                                  base_lr=0.5, grad_clip=0.05, warmup_epochs=0.0),
                engine=EngineConfig(name=engine_name, zero_stage=stage),
                train=TrainConfig(global_batch_size=16, per_device_batch_size=4),
            )
            if engine_name == "deepspeed":  # the DDP twin of this run, for the loss comparison
                cfg_ddp = Config(**{**cfg.__dict__, "engine": EngineConfig(name="ddp")})
            plan = make_plan(cfg.train, cfg.optim, cfg.engine, ctx.world_size, ctx.device, num_samples=2 * STEPS * 16)
            views = cls.views(cfg.method, cfg.data, cfg.aug)
            runs = [(engine_name, cfg, plan)]
            if engine_name == "deepspeed":
                runs.append(("ddp", cfg_ddp, make_plan(cfg_ddp.train, cfg_ddp.optim, cfg_ddp.engine, ctx.world_size,
                                                       ctx.device, num_samples=2 * STEPS * 16)))
            weights = []  # the DeepSpeed run's parameters after each step, for its DDP twin's weight_diff
            for label, run_cfg, run_plan in runs:
                seed_everything(0)
                method = cls(run_cfg.method, run_cfg.model, run_cfg.data.image_size)
                engine = build_engine(run_cfg.engine, run_cfg.optim, run_plan, method, ctx,
                                      nonfinite=run_cfg.train.nonfinite)
                record = {"loss": [], "rank_diff": [], "motion": [],
                          "parameters": sum(p.numel() for p in engine.module.parameters())}
                for step in range(STEPS):
                    micro = batches(len(views), views[0].size, ctx.global_rank, step, labels=False)
                    before = flat_parameters(engine.module)
                    outputs = engine.step(micro, lr=run_plan.lr * (step + 1) / STEPS, step=step)
                    engine.module.after_step(step + 1, run_plan.total_steps)
                    after = flat_parameters(engine.module)
                    record["motion"].append((after - before).norm().item())
                    if label == "deepspeed":
                        weights.append(after)
                    elif weights:
                        record.setdefault("weight_diff", []).append((after - weights[step]).norm().item())
                    loss = torch.stack([o.loss.detach() for o in outputs]).mean()
                    dist.all_reduce(loss)
                    record["loss"].append(loss.item() / ctx.world_size)
                    record["rank_diff"].append(max_rank_difference(engine.module))
                results[f"{name}/{engine_name}{stage}/{label}"] = record
    if ctx.is_main:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
