"""benchmarks.step times its steps outside PeakMemory: on the CPU PeakMemory pins glibc's mmap threshold at
128 KiB, which makes every larger tensor a fresh mapping that page-faults in on each use (2.5x slower steps)."""

from __future__ import annotations

import argparse
import resource

import torch

from benchmarks.step import measure_synthetic

MIB = 2**20
TENSORS_PER_STEP = 8


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_timed_steps_reuse_heap_memory_and_the_peak_step_comes_after_them():
    faults = []

    def step(batch) -> None:  # 4 MiB tensors one after another, as a step's activations come and go
        before = minor_faults()
        for _ in range(TENSORS_PER_STEP):
            torch.ones(MIB)
        faults.append(minor_faults() - before)

    args = argparse.Namespace(warmup=1, steps=3)
    row = measure_synthetic(step, [], batch=1, args=args, device=torch.device("cpu"))
    assert len(faults) == args.warmup + args.steps + 1  # warmup, the timed steps, then the peak step
    assert row["repeats"] == args.steps
    timed = faults[args.warmup:args.warmup + args.steps]
    # Heap memory grown in the warmup is reused and faults nothing; under the pinned threshold each tensor
    # would be a fresh mapping faulting in 4 MiB / 4 KiB = 1024 pages (8192 a step; huge pages would hide it).
    assert max(timed) < 1024, faults
