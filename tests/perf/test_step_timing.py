"""benchmarks.step times its steps outside PeakMemory: on the CPU the measurement is a dispatch mode that
sees every op, which would slow the step it times; so the peak comes from one more step after them."""

from __future__ import annotations

import argparse

import torch

from benchmarks.step import measure_synthetic

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
    assert observed == [False] * (args.warmup + args.steps) + [True]
    assert row["repeats"] == args.steps and row["peak_mb"] == 2.0
