"""benchmarks.common.PeakMemory on the CPU: it measures a tensor's bytes, and leaves malloc as it found
it, so that what is timed after a measurement is not slowed by its allocator settings."""

from __future__ import annotations

import resource

import torch

from benchmarks.common import PeakMemory

MIB = 2**20


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_peak_memory_counts_a_tensor_and_leaves_freed_memory_reusable():
    cpu = torch.device("cpu")
    with PeakMemory(cpu) as peak:
        torch.ones(64 * MIB // 4)  # 64 MiB written, then freed
    # the tensor's pages, give or take what the rest of the process (earlier tests' garbage, allocator
    # slack) frees or touches meanwhile, well under a tenth of it
    assert 0.9 * 64 <= peak.peak_mb < 1.1 * 64
    for _ in range(50):  # 4 MiB tensors: the heap grows to hold them once, faulting its new pages in
        torch.ones(MIB)
    before = minor_faults()
    for _ in range(50):
        torch.ones(MIB)
    # Reused heap memory faults nothing; were 4 MiB still above the mmap threshold, each tensor would be
    # a fresh mapping faulting in 4 MiB / 4 KiB = 1024 pages (51,200 in all; huge pages would hide it).
    assert minor_faults() - before < 1024
