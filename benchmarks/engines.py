"""DDP against FSDP2 on W ranks: the rows `benchmarks/step.py --ranks W` adds (step time and peak memory per
rank; by default ViT-Tiny/Small with MAE, and DINO with its EMA teacher).

`measure` starts `torchrun --nproc-per-node W` on this file's worker with a job file (each row's config
overrides, the batch, the timing); each (config, engine) is built, warmed up and timed in turn in the same
processes. A config is the method's `configs/methods` layer with AdamW (FSDP2 refuses LARS) and B images
per rank. Memory per rank is counted in live tensor bytes over one more step after the timed ones
(common.LiveTensors, on every device): `peak_mb` is what a step needs (parameters, gradients, optimizer
state, activations, the engines' gather buffers), `state_mb` what stays between steps, which is what
sharding divides. The resident set is not used: it depends on what the allocator kept from the engine
measured before (FSDP2's RSS growth read above DDP's or below it depending on which ran first).

    python -m benchmarks.step --models resnet18@32 --methods simclr --ranks 2 --batch-size 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import LiveTensors, summary, sync

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("ddp", "fsdp2")


def worker(job: dict) -> list[dict]:
    """Every rank times every (config, engine) of `job`; rank 0 gets the rows."""
    import torch
    import torch.distributed as dist

    from trainer.dist import init_distributed, shutdown
    from trainer.engine import build_engine, make_plan, train_step
    from trainer.methods import METHODS
    from trainer.registry import load_config
    from trainer.types import Batch

    torch.set_num_threads(job["threads"])
    ctx = init_distributed()
    rows = []
    for row_overrides in job["configs"]:
        values = dict(o.split("=", 1) for o in row_overrides)
        method = values["method.name"]
        for engine_name in ENGINES:
            row = {"impl": "ours", "method": method, "model": f"{values['model.backbone']}@{values['data.image_size']}",
                   "engine": engine_name, "world_size": ctx.world_size, "batch": job["batch_size"],
                   "precision": job["precision"], "compile": False}
            cfg = load_config(ROOT / "configs" / "methods" / f"{method}.yaml",
                              [*row_overrides, f"engine.name={engine_name}", "optim.name=adamw",
                               f"engine.precision={job['precision']}",
                               f"train.global_batch_size={job['batch_size'] * ctx.world_size}"])
            plan = make_plan(cfg.train, cfg.optim, cfg.engine, ctx.world_size, ctx.device,
                             10**6 * cfg.train.global_batch_size)
            views = METHODS[method].views(cfg.method, cfg.data, cfg.aug)
            row.update(channels_last=cfg.engine.channels_last, optim=cfg.optim.name,
                       views=",".join(str(v.size) for v in views))
            g = torch.Generator().manual_seed(ctx.global_rank)
            batch = Batch([torch.randn(plan.per_device_batch_size, 3, v.size, v.size, generator=g).to(ctx.device)
                           for v in views])
            torch.manual_seed(0)
            try:
                engine = build_engine(cfg.engine, cfg.optim, plan,
                                      METHODS[method](cfg.method, cfg.model, cfg.data.image_size), ctx,
                                      nonfinite=cfg.train.nonfinite)
            except ValueError as err:  # refused on every rank alike (FSDP2 and BatchNorm): its one-line reason
                rows.append({**row, "status": f"refused: {err}"})
                continue
            times = []
            for step in range(job["warmup"] + job["steps"]):
                sync(ctx.device)
                start = time.perf_counter()
                train_step(engine, [batch], plan.lr, step, plan.total_steps)
                sync(ctx.device)
                times.append((time.perf_counter() - start) * 1e3)
            with LiveTensors(ctx.device, engine.module, engine.optimizer) as live:
                train_step(engine, [batch], plan.lr, len(times), plan.total_steps)
            memory = [None] * ctx.world_size
            dist.all_gather_object(memory, (live.peak_mb, live.state_mb))
            s = summary(times[job["warmup"]:])
            rows.append({**row, "status": "ok", **s,
                         "img_per_s": round(cfg.train.global_batch_size / (s["ms_median"] / 1e3), 1),
                         "peak_mb": max(m[0] for m in memory), "state_mb": max(m[1] for m in memory),
                         "params_m": round(sum(p.numel() for p in engine.module.parameters()) / 1e6, 2)})
            if ctx.is_main:
                print(f"  ours      {row}: ok {s['ms_median']} ms", flush=True)
            del engine
    shutdown()
    return rows


def measure(args: argparse.Namespace, precision: str, configs: list[list[str]]) -> list[dict]:
    """The rows of each config (a list of overrides) under DDP and FSDP2 on args.ranks ranks, args.batch_size
    images per rank, args.threads torch threads per rank (OMP_NUM_THREADS too)."""
    threads = args.threads or 1
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"configs": configs, "batch_size": args.batch_size, "precision": precision,
                                   "steps": args.steps, "warmup": args.warmup, "threads": threads,
                                   "rows_out": str(Path(tmp) / "rows.json")}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks),
               "-m", "benchmarks.engines", str(job)]
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return json.loads((Path(tmp) / "rows.json").read_text())


if __name__ == "__main__":  # one rank of `measure`'s torchrun
    job = json.loads(Path(sys.argv[1]).read_text())
    rows = worker(job)
    if int(os.environ["RANK"]) == 0:
        Path(job["rows_out"]).write_text(json.dumps(rows))
