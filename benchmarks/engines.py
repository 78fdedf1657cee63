"""DDP against FSDP2 on W ranks: step time and peak memory per rank for ViTs (MAE, and DINO's EMA teacher).

    python -m benchmarks.engines                     # W = 2 on the CPU (gloo), ViT-Tiny and ViT-Small at 32 px
    python -m benchmarks.engines --nproc 8 --size 224 --patch 16 --batch-size 64    # one GPU node

The driver starts `torchrun --nproc-per-node W` on this file's worker; each (model, method, engine) is
built, warmed up and timed in turn in the same processes. Peak memory per rank is measured around the
build and the steps (CUDA: max_memory_allocated; CPU: growth of peak RSS, see common.PeakMemory), so
it holds parameters, gradients, optimizer state and activations: what sharding divides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, PeakMemory, print_table, sync, write_results

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224")
METHODS = ("mae", "dino")


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from trainer.dist import init_distributed
    from trainer.engine import build_engine, make_plan
    from trainer.methods import METHODS as REGISTRY
    from trainer.registry import load_config
    from trainer.types import Batch

    torch.set_num_threads(args.threads)
    ctx = init_distributed()
    per_rank = args.batch_size // ctx.world_size
    rows = []
    for model in args.models:
        for method in args.methods:
            if method not in REGISTRY:
                continue
            for engine_name in ("ddp", "fsdp2"):
                overrides = [f"method.name={method}", f"model.backbone=timm:{model}", f"model.patch_size={args.patch}",
                             f"data.image_size={args.size}", f"engine.name={engine_name}", "optim.name=adamw",
                             f"train.global_batch_size={args.batch_size}",
                             f"aug.local_crops={args.local_crops}", "model.small_stem=false"]
                cfg = load_config(Path("configs/methods") / f"{method}.yaml", overrides)
                plan = make_plan(cfg.train, cfg.optim, cfg.engine, ctx.world_size, ctx.device, 10**6)
                views = REGISTRY[method].views(cfg.method, cfg.data, cfg.aug)
                g = torch.Generator().manual_seed(ctx.global_rank)
                batch = Batch([torch.randn(per_rank, 3, v.size, v.size, generator=g).to(ctx.device) for v in views])
                torch.manual_seed(0)
                with PeakMemory(ctx.device) as peak:
                    method_module = REGISTRY[method](cfg.method, cfg.model, cfg.data.image_size)
                    engine = build_engine(cfg.engine, cfg.optim, plan, method_module, ctx,
                                          nonfinite=cfg.train.nonfinite)
                    times = []
                    for step in range(args.warmup + args.steps):
                        sync(ctx.device)
                        start = time.perf_counter()
                        engine.module.before_step(step, plan.total_steps)
                        engine.step([batch], plan.lr, step)
                        engine.module.after_step(step + 1, plan.total_steps)
                        sync(ctx.device)
                        times.append(time.perf_counter() - start)
                peaks = [None] * ctx.world_size
                dist.all_gather_object(peaks, peak.peak_mb)
                rows.append({"model": model, "method": method, "engine": engine_name, "world_size": ctx.world_size,
                             "batch": args.batch_size, "size": args.size,
                             "step_s_median": round(statistics.median(times[args.warmup:]), 3),
                             "images_per_s": round(args.batch_size / statistics.median(times[args.warmup:]), 1),
                             "peak_mb_per_rank_max": max(peaks),
                             "params_m": round(sum(p.numel() for p in engine.module.parameters()) / 1e6, 2)})
                del engine
    if ctx.is_main:
        Path(args.rows_out).write_text(json.dumps(rows))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--local-crops", type=int, default=2, help="multi-crop local views (DINO)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    rows_out = args.out_dir / ".engines_rows.json"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
           "-m", "benchmarks.engines", "--worker", "--rows-out", str(rows_out), *sys.argv[1:]]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    rows = json.loads(rows_out.read_text())
    rows_out.unlink()
    print_table(rows, list(rows[0]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    write_results("engines", device, {"nproc": args.nproc, "threads_per_rank": args.threads, "steps": args.steps,
                                      "peak_memory": PeakMemory.METHOD[device.type]}, rows, args.out_dir)


if __name__ == "__main__":
    main()
