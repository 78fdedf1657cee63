"""Training-step throughput (images/s) and peak memory: our trainer's step, lightly's, and the ceiling.

For each backbone@size, precision and method, on one device with a per-device batch of B images:
  ours       trainer.methods.METHODS[name] in our engine (trainer.engine.build_engine: autocast, LARS,
             channels_last, compile) -> engine.step -> after_step, on synthetic views shaped by the
             method's own ViewSpecs (already on the device)
  ours+data  the same step fed by trainer.data.build_loader from --shards (DALI or torch backend):
             the full step, loader included; also reports the fraction of time spent waiting for data
  lightly    the same backbone (built by our registry, ResNet or timm) with lightly's heads, loss and LARS
             at our head sizes, written as lightly's examples do (benchmarks/lightly_methods.py; lightly
             is read from the peer environment, --peer)
  ceiling    the bare backbone forward + backward on the same images (all views), no heads, no
             loss, no optimizer: the most any step on this backbone can reach
Each world-size-1 row also counts the FLOPs of one step (torch.utils.flop_counter: matmuls, convolutions and
attention, forward and backward as run) and reads its rate against a square matmul on the same device and
threads (`vs_matmul`: how much of the device's best kernel the step gets; a compiled row takes its eager twin's count).
With --ranks W, also ours under DDP and FSDP2 on W ranks (torchrun, benchmarks/engines.py) for
--rank-models x --rank-methods, B images per rank: step time and peak memory per rank, in the same JSON.
images/s counts source images (B per device per step, all devices), whatever the number of views.

    python -m benchmarks.step --methods simclr --precision fp32,bf16 --compile off,on
    python -m benchmarks.step --models resnet18@32 --batch-size 8 --steps 2 --warmup 1 --out-dir /tmp/bench
    python -m benchmarks.step --models timm:vit_tiny_patch16_224@32 --methods dino,mocov3   # patch 4 px
    python -m benchmarks.step --models resnet18@32 --methods simclr --ranks 2 --threads 1   # + DDP/FSDP2 rows
    python -m benchmarks.step --config configs/fashion_mnist_simclr.yaml --models resnet18@28 --methods simclr \
        --precision fp32 --channels-last off --compile off,on --threads 1                  # width 16, small stem
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import engines, lightly_methods
from benchmarks.common import (
    PeakMemory,
    add_common_args,
    loadavg,
    machine,
    matmul_gflop_per_s,
    print_table,
    setup,
    summary,
    sync,
    time_ms,
    write_results,
)
from trainer.dist import DistContext
from trainer.engine import build_engine, make_plan, train_step
from trainer.methods import METHODS
from trainer.models.backbones import build_backbone
from trainer.registry import load_config
from trainer.types import Batch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


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


def overrides(method: str, backbone: str, size: int, patch: int, local_crops: int) -> list[str]:
    """The config of one row: the backbone at `size` px (a timm model with `patch` px patches: ViT-Tiny at
    32 px and patch 4 sees 8 x 8 tokens); DINO, the multi-crop method, with `local_crops` local views."""
    model = [f"model.backbone={backbone}", f"data.image_size={size}"]
    if backbone.startswith("timm:"):
        model.append(f"model.patch_size={patch}")
    crops = [f"aug.local_crops={local_crops}"] if method == "dino" else []
    return [f"method.name={method}", *model, *crops]


def our_setup(name: str, backbone: str, size: int, run: dict, args, device: torch.device):
    """Our method inside our engine (DDP engine, one process: AMP, the method's optimizer, compile,
    channels_last as configured): (step(batch), view sizes, config, the method module)."""
    cfg = load_config(
        args.config,
        [
            *overrides(name, backbone, size, args.patch_size, args.local_crops),
            f"train.global_batch_size={args.batch_size}",
            f"engine.precision={run['precision']}",
            f"engine.channels_last={run['channels_last']}",
            f"engine.compile={run['compile']}",
        ],
    )
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, 1, device, num_samples=10**6 * args.batch_size)
    method = METHODS[name](cfg.method, cfg.model, cfg.data.image_size)
    engine = build_engine(cfg.engine, cfg.optim, plan, method, DistContext(device=device),
                          nonfinite=cfg.train.nonfinite)
    specs = type(engine.module).views(cfg.method, cfg.data, cfg.aug)
    counter = {"step": 0}

    def step(batch: Batch) -> None:
        train_step(engine, [batch], plan.lr, counter["step"], plan.total_steps)
        counter["step"] += 1

    return step, [s.size for s in specs], cfg, engine.module


def lightly_setup(name: str, cfg, ours: nn.Module, run: dict, args, device: torch.device):
    """lightly's model + loss for `name` on a fresh backbone of `cfg`'s, or a reason string."""
    reason = lightly_methods.import_lightly(args.peer)
    if reason:
        return reason
    from lightly.utils.lars import LARS

    net, dim = build_backbone(cfg.model, cfg.data.image_size)
    peer = lightly_methods.build(name, ours, net, dim)
    if isinstance(peer, str):
        return peer
    model = prepare(peer.model, device, run)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = LARS(params, lr=0.3 * args.batch_size / 256, momentum=0.9, weight_decay=1e-6)
    compute = torch.compile(peer.loss) if run["compile"] else peer.loss

    def step(batch: Batch) -> None:
        with autocast(device, run["precision"]):
            loss = compute(batch.views)
        loss.backward()
        peer.before_optimizer_step()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ceiling_setup(cfg, run: dict, device: torch.device):
    net = prepare(build_backbone(cfg.model, cfg.data.image_size)[0], device, run)
    forward = torch.compile(net) if run["compile"] else net

    def step(batch: Batch) -> None:
        for x in batch.views:  # views may differ in size (multi-crop), so one call per view
            with autocast(device, run["precision"]):
                feats = forward(x)
            feats.float().sum().backward()
        net.zero_grad(set_to_none=True)

    return step


def measure_synthetic(step, views: list, batch: int, args, device: torch.device, count_flops: bool = True) -> dict:
    """Median step time over args.steps steps after args.warmup, then the peak memory of one more step
    above what the warm step holds (parameters, optimizer state: allocated in the warmup), then, with
    `count_flops`, the FLOPs of one more. Both are taken apart from the timed steps: each counts through a
    dispatch mode that sees every op, which would slow the step it times. On the CPU also this process's CPU
    time per timed step, which other processes on a shared core do not inflate as they do the wall time."""
    data = Batch(views=views)
    for _ in range(args.warmup):
        step(data)
    cpu = time.process_time()
    times = time_ms(lambda: step(data), device, args.steps, warmup=0)
    cpu_ms = {"cpu_ms_per_step": round((time.process_time() - cpu) * 1e3 / args.steps, 1)} if device.type == "cpu" else {}
    with PeakMemory(device) as mem:
        step(data)
    flops = {}
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            step(data)
        flops = {"gflop_per_step": round(counter.get_total_flops() / 1e9, 6)}
    s = summary(times)
    return {
        "status": "ok",
        **s,
        **cpu_ms,
        "img_per_s": round(batch / (s["ms_median"] / 1e3), 1),
        "peak_mb": mem.peak_mb,
        **flops,
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
    base = {"method": method, "model": f"{backbone}@{size}", "engine": "ddp", "world_size": 1,
            "batch": args.batch_size, **run}
    try:
        our_step, sizes, cfg, ours = our_setup(method, backbone, size, run, args, device)
    except ValueError as err:  # a combination the trainer refuses (MAE on a ResNet): its one-line reason
        print(f"  {method} on {backbone}: refused: {err}", flush=True)
        return [{"impl": "ours", **base, "status": f"refused: {err}"}]
    base.update(optim=cfg.optim.name, views=",".join(map(str, sizes)))
    views = synthetic_views(sizes, args.batch_size, device, run["channels_last"] and device.type == "cuda")
    plans = [
        ("ours", our_step),
        ("lightly", lambda: lightly_setup(method, cfg, ours, run, args, device)),
        ("ceiling", lambda: ceiling_setup(cfg, run, device)),
    ]
    rows = []
    for impl, step in plans:
        row = {"impl": impl, **base}
        try:
            step = step if impl == "ours" else step()  # built in turn: one model in memory at a time
            row.update(
                {"status": step}
                if isinstance(step, str)
                else measure_synthetic(step, views, args.batch_size, args, device, count_flops=not run["compile"])
            )
        except torch.OutOfMemoryError:
            row["status"] = "out of memory"
        rows.append(row)
        print(f"  {impl:9s} {base}: {row['status']} {row.get('ms_median', '')} ms", flush=True)
        if impl == "ours" and args.shards:
            rows.append({**row, "impl": f"ours+{args.backend}", **measure_with_loader(our_step, cfg, args, device)})
        step = None
    del views
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


SETTING = ("method", "model", "engine", "world_size", "precision", "channels_last", "compile")


def setting(r: dict, *leave_out: str) -> tuple:
    """The row's run setting, what rows compared with one another share (less `leave_out`)."""
    return tuple(r[k] for k in SETTING if k not in leave_out)


def add_ratios(rows: list[dict]) -> None:
    """ours / ceiling and ours / lightly for each (method, model, engine, W, precision, layout, compile)."""
    ok = {(setting(r), r["impl"]): r["img_per_s"] for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["impl"].startswith("ours") and r["status"] == "ok":
            for other in ("ceiling", "lightly"):
                if (setting(r), other) in ok:
                    r[f"vs_{other}"] = round(r["img_per_s"] / ok[(setting(r), other)], 3)


def add_flop_rates(rows: list[dict], matmul: dict[str, float]) -> None:
    """GFLOP/s of each world-size-1 row and its fraction of the square matmul's rate at its precision; a
    compiled row (whose inductor kernels the counter cannot see) takes the FLOPs of its eager twin."""

    counted = {(r["impl"], setting(r, "compile")): r["gflop_per_step"] for r in rows if "gflop_per_step" in r}
    for r in rows:
        key = (r["impl"], setting(r, "compile"))
        if r["status"] == "ok" and key in counted:
            r["gflop_per_step"] = counted[key]
            r["gflop_per_s"] = round(r["gflop_per_step"] / (r["ms_median"] / 1e3), 1)
            r["vs_matmul"] = round(r["gflop_per_s"] / matmul[r["precision"]], 3)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18@96,resnet50@224", help="backbone@pixels, comma-separated")
    p.add_argument("--methods", default=",".join(METHODS), help="registered method names, comma-separated")
    p.add_argument("--config", type=Path, default=None,
                   help="experiment config the world-size-1 rows start from (its model.width, small_stem, aug ...); "
                        "--models, --methods, --batch-size and the run options still override it")
    p.add_argument("--batch-size", type=int, default=256, help="images per device per step")
    p.add_argument("--precision", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    p.add_argument("--channels-last", default="on", help="on, off or on,off")
    p.add_argument("--compile", default="off", help="torch.compile: on, off or off,on")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--patch-size", type=int, default=4, help="px per patch of timm patch models (ViT)")
    p.add_argument("--local-crops", type=int, default=2, help="DINO's multi-crop local views")
    p.add_argument("--peer", type=Path, default=lightly_methods.PEER,
                   help="the environment lightly is read from when this one lacks it (make bench-env)")
    p.add_argument(
        "--shards", type=Path, default=None, help="dataset folder: also time the step fed by the loader"
    )
    p.add_argument("--backend", default="dali", help="loader backend with --shards: dali | torch")
    p.add_argument("--workers", type=int, default=8, help="loader workers / DALI threads with --shards")
    p.add_argument("--ranks", type=int, default=0, help="W > 1: also DDP and FSDP2 on W ranks (torchrun)")
    p.add_argument("--rank-models", default="timm:vit_tiny_patch16_224@32,timm:vit_small_patch16_224@32",
                   help="backbone@pixels for the --ranks rows")
    p.add_argument("--rank-methods", default="mae,dino", help="methods for the --ranks rows")
    p.add_argument("--note", default="", help="free text stored in the JSON's meta (the machine's state)")
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    unknown = set(args.methods.split(",") + args.rank_methods.split(",")) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods / --rank-methods: unknown {sorted(unknown)}; registered: {sorted(METHODS)}")
    onoff = {"on": True, "off": False}
    at_start = machine()
    rows = []
    for precision in args.precision.split(","):
        for model in args.models.split(","):
            backbone, size = model.split("@")
            for cl in args.channels_last.split(","):
                for comp in args.compile.split(","):
                    run = {"precision": precision, "channels_last": onoff[cl], "compile": onoff[comp]}
                    for method in args.methods.split(","):
                        rows += bench_one(method, backbone, int(size), run, args, device)
        if args.ranks > 1:
            rows += engines.measure(args, precision, [
                overrides(method, backbone, int(size), args.patch_size, args.local_crops)
                for backbone, size in (m.split("@") for m in args.rank_models.split(","))
                for method in args.rank_methods.split(",")
            ])
    add_ratios(rows)
    matmul = {precision: matmul_gflop_per_s(device, PRECISIONS[precision] or torch.float32)
              for precision in args.precision.split(",")}
    add_flop_rates(rows, matmul)
    meta = {
        "what": "one training step; img_per_s counts source images (B per device per step, all devices)",
        "views": "synthetic, already on the device, shaped by each method's ViewSpecs (ours+<backend>: real loader)",
        "optimizer": "world_size 1: LARS (ours: trainer.optim; lightly: lightly.utils.lars), lr 0.3 x B/256; "
                     "world_size W: the method's configs/methods layer with AdamW (FSDP2 refuses LARS)",
        "threads": torch.get_num_threads(),
        "peak_memory": f"{PeakMemory.METHOD[device.type]}; world_size 1: one step after the timed ones, above "
                       "the warm step's; world_size W: live tensor bytes (common.LiveTensors) of one step after the "
                       "timed ones, peak_mb during it and state_mb kept after it, the largest rank's",
        "flops": "torch.utils.flop_counter.FlopCounterMode over one step after the timed ones (matmuls, "
                 "convolutions, attention; a Triton kernel's FLOPs, the NT-Xent loss's, are not counted, <1% of a "
                 "ResNet step); vs_matmul = gflop_per_s / matmul_gflop_per_s at the row's precision",
        "matmul_gflop_per_s": matmul,
        "note": args.note,
        "machine": at_start,
        "loadavg_1m_at_end": loadavg(),
    }
    columns = [
        "impl",
        "method",
        "model",
        "engine",
        "world_size",
        "batch",
        "precision",
        "compile",
        "optim",
        "views",
        "status",
        "ms_median",
        "cpu_ms_per_step",
        "img_per_s",
        "peak_mb",
        "state_mb",
        "gflop_per_step",
        "gflop_per_s",
        "vs_matmul",
        "vs_ceiling",
        "vs_lightly",
        "data_wait_frac",
    ]
    print_table(rows, columns)
    write_results("step", device, meta, rows, args.out_dir)


if __name__ == "__main__":
    main()
