"""Training-step throughput (images/s) and peak memory: our trainer's step, lightly's, and the ceiling.

For each backbone@size, precision and method, on one device with a per-device batch of B images:
  ours       trainer.methods.METHODS[name] in our engine (trainer.engine.build_engine: autocast, LARS,
             channels_last, compile) -> engine.step -> after_step, on synthetic views shaped by the
             method's own ViewSpecs (already on the device)
  ours+data  the same step fed by trainer.data.build_loader from --shards (DALI or torch backend):
             the full step, loader included; also reports the fraction of time spent waiting for data
  lightly    the same backbone with lightly's heads, loss and LARS, written as lightly's examples do
             (one backbone call per view); SimCLR, BYOL, VICReg on torchvision backbones (the newer
             methods and timm backbones are not wired up here)
  ceiling    the bare backbone forward + backward on the same images (all views), no heads, no
             loss, no optimizer: the most any step on this backbone can reach
images/s counts source images (B per step), whatever the number of views.

    python -m benchmarks.step --methods simclr --precision fp32,bf16 --compile off,on
    python -m benchmarks.step --models resnet18@32 --batch-size 8 --steps 2 --warmup 1 --out-dir /tmp/bench
    python -m benchmarks.step --models timm:vit_tiny_patch16_224@32 --methods dino,mocov3   # patch 4 px
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import (
    PeakMemory,
    add_common_args,
    print_table,
    setup,
    summary,
    sync,
    time_ms,
    write_results,
)
from trainer.dist import DistContext
from trainer.engine import build_engine, make_plan
from trainer.methods import METHODS
from trainer.models.backbones import build_backbone
from trainer.registry import load_config
from trainer.types import Batch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
PATCH_SIZE = 4


def autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def prepare(module: nn.Module, device: torch.device, run: dict) -> nn.Module:
    """On the device, channels_last on CUDA when asked (as our engine does)."""
    module = module.to(device)
    if run["channels_last"] and device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return module


def synthetic_views(view_sizes: list[int], batch: int, device: torch.device, channels_last: bool) -> list:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator(device=device).manual_seed(0)
    return [
        torch.randn(batch, 3, s, s, device=device, generator=gen).contiguous(memory_format=fmt)
        for s in view_sizes
    ]


def model_overrides(backbone: str, size: int) -> list[str]:
    """The backbone at `size` px; a timm model gets PATCH_SIZE px patches (ViT-Tiny at 32 px: 8 x 8)."""
    patch = [f"model.patch_size={PATCH_SIZE}"] if backbone.startswith("timm:") else []
    return [f"model.backbone={backbone}", f"data.image_size={size}", *patch]


def our_setup(name: str, backbone: str, size: int, batch: int, run: dict, device: torch.device):
    """Our method inside our engine (DDP engine, one process: AMP, the method's optimizer, compile,
    channels_last as configured): (step(batch), view sizes, config)."""
    cfg = load_config(
        None,
        [
            f"method.name={name}",
            *model_overrides(backbone, size),
            f"train.global_batch_size={batch}",
            f"engine.precision={run['precision']}",
            f"engine.channels_last={run['channels_last']}",
            f"engine.compile={run['compile']}",
        ],
    )
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, 1, device, num_samples=10**6 * batch)
    engine = build_engine(cfg.engine, cfg.optim, plan, METHODS[name](cfg.method, cfg.model, cfg.data.image_size),
                          DistContext(device=device), nonfinite=cfg.train.nonfinite)
    specs = type(engine.module).views(cfg.method, cfg.data, cfg.aug)
    counter = {"step": 0}

    def step(batch: Batch) -> None:
        engine.module.before_step(counter["step"], plan.total_steps)
        engine.step([batch], plan.lr, counter["step"])
        counter["step"] += 1
        engine.module.after_step(counter["step"], plan.total_steps)

    return step, [s.size for s in specs], cfg


def lightly_setup(name: str, backbone: str, size: int, batch: int, run: dict, device: torch.device):
    """lightly's model + loss for `name` on our backbone, or a reason string when unavailable."""
    try:
        from lightly import loss as L
        from lightly.models.modules import heads as H
        from lightly.models.utils import deactivate_requires_grad, update_momentum
        from lightly.utils.lars import LARS
    except ImportError:
        return "not installed"
    if backbone.startswith("timm:"):
        return "not compared on timm backbones"
    cfg = load_config(None, model_overrides(backbone, size))
    net, dim = build_backbone(cfg.model, cfg.data.image_size)
    if name == "simclr":
        model = nn.ModuleDict({"backbone": net, "head": H.SimCLRProjectionHead(dim, dim, 128)})
        criterion = L.NTXentLoss(temperature=0.1)

        def loss_fn(x0, x1):
            return criterion(model.head(model.backbone(x0)), model.head(model.backbone(x1)))
    elif name == "vicreg":
        model = nn.ModuleDict(
            {"backbone": net, "head": H.VICRegProjectionHead(dim, 8192, 8192, num_layers=3)}
        )
        criterion = L.VICRegLoss()

        def loss_fn(x0, x1):
            return criterion(model.head(model.backbone(x0)), model.head(model.backbone(x1)))
    elif name == "byol":
        model = nn.ModuleDict(
            {
                "backbone": net,
                "head": H.BYOLProjectionHead(dim, 4096, 256),
                "pred": H.BYOLPredictionHead(256, 4096, 256),
            }
        )
        target = copy.deepcopy(nn.ModuleDict({"backbone": model.backbone, "head": model.head}))
        deactivate_requires_grad(target)
        criterion = L.NegativeCosineSimilarity()

        def loss_fn(x0, x1):
            update_momentum(model.backbone, target.backbone, 0.99)
            update_momentum(model.head, target.head, 0.99)
            p0, p1 = (model.pred(model.head(model.backbone(x))) for x in (x0, x1))
            with torch.no_grad():
                t0, t1 = (target.head(target.backbone(x)) for x in (x0, x1))
            return 0.5 * (criterion(p0, t1.detach()) + criterion(p1, t0.detach()))

        target = prepare(target, device, run)
    else:
        return "no lightly equivalent"
    model = prepare(model, device, run)
    opt = LARS(model.parameters(), lr=0.3 * batch / 256, momentum=0.9, weight_decay=1e-6)
    compute = torch.compile(loss_fn) if run["compile"] else loss_fn

    def step(batch: Batch) -> None:
        with autocast(device, run["precision"]):
            loss = compute(batch.views[0], batch.views[1])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ceiling_setup(backbone: str, size: int, run: dict, device: torch.device):
    cfg = load_config(None, model_overrides(backbone, size))
    net = prepare(build_backbone(cfg.model, cfg.data.image_size)[0], device, run)
    forward = torch.compile(net) if run["compile"] else net

    def step(batch: Batch) -> None:
        for x in batch.views:  # views may differ in size (multi-crop), so one call per view
            with autocast(device, run["precision"]):
                feats = forward(x)
            feats.float().sum().backward()
        net.zero_grad(set_to_none=True)

    return step


def measure_synthetic(step, views: list, batch: int, args, device: torch.device) -> dict:
    data = Batch(views=views)
    times = time_ms(lambda: step(data), device, args.steps, warmup=args.warmup)
    with PeakMemory(device) as mem:
        step(data)
    s = summary(times)
    return {
        "status": "ok",
        **s,
        "img_per_s": round(batch / (s["ms_median"] / 1e3), 1),
        "peak_mb": mem.peak_mb,
    }


def measure_with_loader(step, cfg, args, device: torch.device) -> dict:
    """Full step fed by the real loader: images/s over args.steps steps, and the data-wait fraction."""
    from trainer.data import build_loader

    cfg.data.shards, cfg.data.backend, cfg.data.workers = str(args.shards), args.backend, args.workers
    specs = METHODS[cfg.method.name].views(cfg.method, cfg.data, cfg.aug)
    loader = build_loader(cfg.data, specs, DistContext(device=device), args.batch_size, seed=0)
    needed = args.warmup + args.steps
    if loader.steps_per_epoch < needed:
        return {"status": f"skipped: {loader.steps_per_epoch} steps per epoch < {needed}"}
    batches = loader.epoch(0)
    for _ in range(args.warmup):
        step(next(batches))
    wait = 0.0
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        step(batch)
    sync(device)
    total = time.perf_counter() - start
    return {
        "status": "ok",
        "ms_median": round(total / args.steps * 1e3, 3),
        "repeats": args.steps,
        "img_per_s": round(args.batch_size * args.steps / total, 1),
        "data_wait_frac": round(wait / total, 3),
    }


def bench_one(method: str, backbone: str, size: int, run: dict, args, device: torch.device) -> list[dict]:
    base = {"method": method, "model": f"{backbone}@{size}", "batch": args.batch_size, **run}
    rows = []
    our_step, sizes, cfg = our_setup(method, backbone, size, args.batch_size, run, device)
    views = synthetic_views(sizes, args.batch_size, device, run["channels_last"] and device.type == "cuda")
    plans = [
        ("ours", our_step),
        ("lightly", lightly_setup(method, backbone, size, args.batch_size, run, device)),
        ("ceiling", ceiling_setup(backbone, size, run, device)),
    ]
    for impl, step in plans:
        row = {"impl": impl, **base}
        try:
            row.update(
                {"status": step}
                if isinstance(step, str)
                else measure_synthetic(step, views, args.batch_size, args, device)
            )
        except torch.OutOfMemoryError:
            row["status"] = "out of memory"
        rows.append(row)
        print(f"  {impl:9s} {base}: {row['status']} {row.get('img_per_s', '')}", flush=True)
    if args.shards:
        row = {"impl": f"ours+{args.backend}", **base, **measure_with_loader(our_step, cfg, args, device)}
        rows.append(row)
    del views
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def add_ratios(rows: list[dict]) -> None:
    """ours / ceiling and ours / lightly for each (method, model, precision, layout, compile)."""

    def key(r):
        return (r["method"], r["model"], r["precision"], r["channels_last"], r["compile"])

    ok = {(key(r), r["impl"]): r["img_per_s"] for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["impl"].startswith("ours") and r["status"] == "ok":
            for other in ("ceiling", "lightly"):
                if (key(r), other) in ok:
                    r[f"vs_{other}"] = round(r["img_per_s"] / ok[(key(r), other)], 3)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18@96,resnet50@224", help="backbone@pixels, comma-separated")
    p.add_argument("--methods", default=",".join(METHODS), help="registered method names, comma-separated")
    p.add_argument("--batch-size", type=int, default=256, help="images per device per step")
    p.add_argument("--precision", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    p.add_argument("--channels-last", default="on", help="on, off or on,off")
    p.add_argument("--compile", default="off", help="torch.compile: on, off or off,on")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--shards", type=Path, default=None, help="dataset folder: also time the step fed by the loader"
    )
    p.add_argument("--backend", default="dali", help="loader backend with --shards: dali | torch")
    p.add_argument("--workers", type=int, default=8, help="loader workers / DALI threads with --shards")
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; registered: {sorted(METHODS)}")
    onoff = {"on": True, "off": False}
    rows = []
    for model in args.models.split(","):
        backbone, size = model.split("@")
        for precision in args.precision.split(","):
            for cl in args.channels_last.split(","):
                for comp in args.compile.split(","):
                    run = {"precision": precision, "channels_last": onoff[cl], "compile": onoff[comp]}
                    for method in args.methods.split(","):
                        rows += bench_one(method, backbone, int(size), run, args, device)
    add_ratios(rows)
    meta = {
        "what": "one training step on one device; img_per_s counts source images (B per step)",
        "views": "synthetic, already on the device, shaped by each method's ViewSpecs (ours+<backend>: real loader)",
        "optimizer": "LARS (ours: trainer.optim; lightly: lightly.utils.lars), lr 0.3 x B/256",
        "threads": torch.get_num_threads(),
        "peak_memory": PeakMemory.METHOD[device.type],
    }
    columns = [
        "impl",
        "method",
        "model",
        "batch",
        "precision",
        "channels_last",
        "compile",
        "status",
        "ms_median",
        "img_per_s",
        "peak_mb",
        "vs_ceiling",
        "vs_lightly",
        "data_wait_frac",
    ]
    print_table(rows, columns)
    write_results("step", device, meta, rows, args.out_dir)


if __name__ == "__main__":
    main()
