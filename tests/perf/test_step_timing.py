"""benchmarks.step times its steps outside PeakMemory and the FLOP counter: each is a dispatch mode that sees
every op, which would slow the step it times; so the peak and the FLOPs come from more steps after them."""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from benchmarks.step import add_flop_rates, main, measure_synthetic
from trainer.config import ModelConfig
from trainer.models.backbones import build_backbone

MIB = 2**20


def test_timed_steps_run_unobserved_and_the_peak_step_comes_after_them():
    observed = []

    def step(batch) -> None:
        observed.append(torch._C._len_torch_dispatch_stack() > 0)  # inside LiveTensors' dispatch mode
        a = torch.ones(MIB // 4)
        b = torch.ones(MIB // 4)  # two 1 MiB tensors alive at once
        del a, b

    args = argparse.Namespace(warmup=1, steps=3)
    row = measure_synthetic(step, [], batch=1, args=args, device=torch.device("cpu"))
    assert observed == [False] * (args.warmup + args.steps) + [True, True]
    assert row["repeats"] == args.steps and row["peak_mb"] == 2.0 and row["gflop_per_step"] == 0


def test_flops_of_a_step_are_the_multiply_adds_it_runs_forward_and_backward():
    n, c, h, k, out = 64, 3, 16, 3, 5
    weight = torch.randn(4, c, k, k, requires_grad=True)
    linear = torch.randn(out, 4 * h * h, requires_grad=True)
    x = torch.randn(n, c, h, h)  # no gradient: the convolution's backward computes its weight's alone

    def step(batch) -> None:
        y = F.linear(F.conv2d(x, weight, padding=1).flatten(1), linear)
        y.sum().backward()

    row = measure_synthetic(step, [], batch=n, args=argparse.Namespace(warmup=1, steps=2), device=torch.device("cpu"))
    conv = 2 * n * 4 * h * h * c * k * k  # 2 FLOPs per multiply-add, one per output element and kernel tap
    fc = 2 * n * out * 4 * h * h
    assert row["gflop_per_step"] == round((2 * conv + 3 * fc) / 1e9, 6)  # conv: forward, grad weight; fc: + grad input

    rows = [{"impl": impl, "method": "m", "model": "net@16", "engine": "ddp", "world_size": 1, "precision": "fp32",
             "channels_last": True, "compile": compiled, "status": "ok", "ms_median": ms, **extra}
            for impl, compiled, ms, extra in (("ours", False, 500.0, {"gflop_per_step": 4.0}),
                                              ("ours", True, 250.0, {}))]
    add_flop_rates(rows, {"fp32": 32.0})
    assert [(r["gflop_per_step"], r["gflop_per_s"], r["vs_matmul"]) for r in rows] == [(4.0, 8.0, 0.25),
                                                                                      (4.0, 16.0, 0.5)]


def test_step_benchmark_writes_flop_rates_for_ours_and_the_ceiling(tmp_path):
    main(["--models", "resnet18@16", "--methods", "simclr", "--precision", "fp32", "--batch-size", "4", "--steps", "1",
          "--warmup", "1", "--threads", "1", "--out-dir", str(tmp_path)])
    result = json.loads(next(tmp_path.glob("step_*.json")).read_text())
    rows = {r["impl"]: r for r in result["rows"]}
    ours, ceiling = rows["ours"], rows["ceiling"]
    # the ceiling, the bare backbone forward and backward on each view, against the convolutions' multiply-adds
    # read off the layers by hooks: forward, grad weight, and grad input for all but the stem (its input needs none)
    net = build_backbone(ModelConfig(), 16)[0]
    per_conv = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda m, inp, y: per_conv.append(
                2 * y.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]))
    with torch.no_grad():
        net(torch.zeros(4, 3, 16, 16))
    views = len(ours["views"].split(","))
    assert ceiling["gflop_per_step"] == round(views * (3 * sum(per_conv) - per_conv[0]) / 1e9, 6)
    # ours runs that backbone plus heads, loss and optimizer: strictly more
    assert ours["gflop_per_step"] > ceiling["gflop_per_step"]
    assert all(r["gflop_per_s"] > 0 and r["vs_matmul"] > 0 for r in (ours, ceiling))
