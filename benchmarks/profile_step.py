"""torch.profiler over a few SimCLR training steps: where the time goes, and how long we wait for data.

Each step is labelled data / forward / backward / optimizer / sync (record_function), so the report gives
the phase shares directly, then the top operators by self time. With --shards the batches come from
trainer.data.build_loader (the data phase is the time blocked on the next batch); without, from
synthetic views already on the device (data = 0). Writes a Chrome trace and
`benchmarks/results/profile_<device>_<date>.md` (tables; add the written reading below them).

    python -m data_prep digits --out /tmp/shards
    python -m benchmarks.profile_step --shards /tmp/shards/digits --model resnet18@96 --batch-size 64
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.common import add_common_args, device_label, setup, sync
from benchmarks.step import autocast, synthetic_views
from trainer.dist import DistContext
from trainer.methods import METHODS
from trainer.registry import load_config
from trainer.types import Batch

PHASES = ("data", "forward", "backward", "optimizer", "sync")


def batches(cfg, args, device: torch.device):
    """Endless batches: the real loader over --shards (epoch after epoch), or one synthetic batch."""
    specs = METHODS[cfg.method.name].views(cfg.method, cfg.data, cfg.aug)
    if args.shards is None:
        views = synthetic_views(
            [s.size for s in specs], args.batch_size, device, channels_last=device.type == "cuda"
        )
        while True:
            yield Batch(views=views)
    from trainer.data import build_loader

    loader = build_loader(cfg.data, specs, DistContext(device=device), args.batch_size, seed=0)
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def profile_steps(args, device: torch.device):
    backbone, size = args.model.split("@")
    overrides = [
        f"method.name={args.method}",
        f"model.backbone={backbone}",
        f"data.image_size={size}",
        f"data.backend={args.backend}",
        f"data.workers={args.workers}",
    ]
    if args.shards is not None:
        overrides.append(f"data.shards={args.shards}")
    cfg = load_config(None, overrides)
    method = METHODS[args.method](cfg.method, cfg.model, cfg.data.image_size).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(method.parameter_groups(), lr=1e-3, momentum=0.9)
    data = batches(cfg, args, device)

    def step():
        with record_function("data"):
            batch = next(data)
        with record_function("forward"), autocast(device, args.precision):
            loss = method(batch).loss
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        with record_function("sync"):  # waiting for the GPU to finish the step's queued kernels
            sync(device)

    for _ in range(args.warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(args.steps):
            step()
    return prof, cfg


def report(prof, args, device: torch.device) -> str:
    """Markdown: phase shares and the top operators by self time (CPU, and CUDA on a GPU)."""
    avgs = prof.key_averages()
    by_name = {e.key: e for e in avgs}
    setup = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    source = f"loader {args.backend} over {args.shards}" if args.shards else "synthetic views"
    total_us = sum(by_name[p].cpu_time_total for p in PHASES if p in by_name)
    lines = [
        f"# Profile of {args.steps} {args.method} steps on {device_label(device)}",
        "",
        f"{args.model}, batch {args.batch_size}, {args.precision}, data: {source}, {setup}.",
        "",
        f"Step time {total_us / args.steps / 1e3:.1f} ms (wall, mean over the profiled steps).",
        "",
        "| phase | ms / step | share |",
        "|---|---|---|",
    ]
    for p in PHASES:
        us = by_name[p].cpu_time_total if p in by_name else 0.0
        lines.append(f"| {p} | {us / args.steps / 1e3:.1f} | {us / max(total_us, 1):.1%} |")
    sort_keys = ["self_cpu_time_total"] + (["self_device_time_total"] if device.type == "cuda" else [])
    for key in sort_keys:
        ops = sorted((e for e in avgs if e.key not in PHASES), key=lambda e: getattr(e, key), reverse=True)
        total = sum(getattr(e, key) for e in avgs if e.key not in PHASES)
        lines += [
            "",
            f"Top operators by {key.replace('_', ' ')}:",
            "",
            "| operator | calls | ms / step | share |",
            "|---|---|---|---|",
        ]
        for e in ops[: args.top]:
            us = getattr(e, key)
            lines.append(
                f"| `{e.key}` | {e.count // args.steps} | {us / args.steps / 1e3:.2f} | {us / max(total, 1):.1%} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr")
    p.add_argument("--model", default="resnet18@96", help="backbone@pixels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument(
        "--shards", type=Path, default=None, help="dataset folder (manifest.json); default synthetic"
    )
    p.add_argument("--backend", default="torch", help="loader backend: torch | dali")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--top", type=int, default=15)
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    prof, _ = profile_steps(args, device)
    stem = f"profile_{device_label(device)}_{datetime.date.today().isoformat()}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(args.out_dir / f"{stem}.trace.json.gz"))
    text = report(prof, args, device)
    (args.out_dir / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {args.out_dir / stem}.md and .trace.json.gz (open in https://ui.perfetto.dev)")


if __name__ == "__main__":
    main()
