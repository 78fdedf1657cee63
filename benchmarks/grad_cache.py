"""Peak memory and step time of SimCLR at a large global batch on one process: the plain step (the
whole batch in one forward), plain accumulation (A micro-batches, each its own NT-Xent: inexact),
and the gradient cache (A micro-batches, one NT-Xent over the whole batch: exact; trainer/engine/
grad_cache.py).

The plain step is run only where it fits: its peak is first measured at the micro-batch size and
scaled by A (activations grow linearly with the batch); when that exceeds the memory available,
its row records "does not fit" with the estimate. Views are synthetic, fp32, on the device.

    python -m benchmarks.grad_cache --batch-size 4096 --accumulation 16 --image-size 32 --width 16
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import (
    PeakMemory,
    add_common_args,
    free_memory_mb,
    machine,
    print_table,
    setup,
    summary,
    time_ms,
    write_results,
)
from trainer.dist import DistContext
from trainer.engine import build_engine, make_plan
from trainer.methods import METHODS
from trainer.registry import load_config
from trainer.types import Batch


def engine_step(args, device: torch.device, per_device: int, exact: bool):
    """step() running one optimizer step of the global batch in micro-batches of `per_device`."""
    cfg = load_config(None, [
        "method.name=simclr", f"model.width={args.width}", "model.small_stem=true",
        f"data.image_size={args.image_size}", f"train.global_batch_size={args.batch_size}",
        f"train.per_device_batch_size={per_device}", "engine.precision=fp32", "aug.local_crops=0"])
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, 1, device, num_samples=1000 * args.batch_size)
    method = METHODS["simclr"](cfg.method, cfg.model, cfg.data.image_size)
    if not exact:  # plain accumulation: each micro-batch its own loss, whatever the method couples
        method.couples_samples = False
    engine = build_engine(cfg.engine, cfg.optim, plan, method, DistContext(device=device),
                          nonfinite=cfg.train.nonfinite)
    gen = torch.Generator(device=device).manual_seed(0)
    views = [torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device, generator=gen)
             for _ in range(2)]
    micro = [Batch([v[i:i + per_device] for v in views]) for i in range(0, args.batch_size, per_device)]
    counter = {"step": 0}

    def step() -> None:
        engine.step(micro, plan.lr, counter["step"])
        counter["step"] += 1

    return step


def measure(step, args, device: torch.device) -> dict:
    """Peak memory of the first step (it also allocates the optimizer state), then wall time of
    `args.steps` more; on the CPU also this process's CPU time per step, which other processes on a
    shared core do not inflate as they do the wall time."""
    with PeakMemory(device) as peak:
        step()
    cpu = time.process_time()
    times = time_ms(step, device, repeats=args.steps, warmup=0)
    cpu_ms = {"cpu_ms_per_step": round((time.process_time() - cpu) * 1e3 / args.steps, 1)} if device.type == "cpu" else {}
    return {"status": "ok", "peak_mb": peak.peak_mb, **summary(times), **cpu_ms}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=4096, help="global batch (images)")
    p.add_argument("--accumulation", type=int, default=16, help="micro-batches per step (A)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--width", type=int, default=16, help="ResNet-18 width (64 is torchvision's)")
    p.add_argument("--steps", type=int, default=1, help="timed steps after the measured first one")
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    micro = args.batch_size // args.accumulation
    base = {"method": "simclr", "batch": args.batch_size, "image_size": args.image_size, "width": args.width}
    rows = [{"impl": f"gradient cache A={args.accumulation}", "micro_batch": micro, **base,
             **measure(engine_step(args, device, micro, exact=True), args, device)},
            {"impl": f"plain accumulation A={args.accumulation} (inexact)", "micro_batch": micro, **base,
             **measure(engine_step(args, device, micro, exact=False), args, device)}]
    # the plain step's peak, estimated from one micro-batch's: activations scale with the batch
    one = measure(engine_step(argparse.Namespace(**{**vars(args), "batch_size": micro}), device, micro, True),
                  args, device)
    estimate, available = round(one["peak_mb"] * args.accumulation, 1), round(free_memory_mb(device), 1)
    plain = {"impl": "plain step A=1", "micro_batch": args.batch_size, **base, "estimated_peak_mb": estimate,
             "available_mb": available}
    if estimate > 0.8 * available:
        rows.append({**plain, "status": f"does not fit: ~{estimate:.0f} MiB needed, {available:.0f} MiB available"})
    else:
        rows.append({**plain, **measure(engine_step(args, device, args.batch_size, True), args, device)})
    meta = {"what": "one SimCLR optimizer step (forward, backward, LARS) of the global batch on one process",
            "machine": machine(),
            "threads": torch.get_num_threads(), "peak_memory": PeakMemory.METHOD[device.type],
            "plain_estimate": f"peak of one {micro}-image step x {args.accumulation}"}
    print_table(rows, ["impl", "micro_batch", "status", "peak_mb", "estimated_peak_mb", "ms_median", "cpu_ms_per_step"])
    write_results("grad_cache", device, meta, rows, args.out_dir)


if __name__ == "__main__":
    main()
