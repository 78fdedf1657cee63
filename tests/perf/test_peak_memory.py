"""benchmarks.common.PeakMemory on the CPU: the most tensor bytes alive at once inside the block, above
what was alive on entry, counted exactly (a storage's bytes, not pages of the resident set)."""

from __future__ import annotations

import torch

from benchmarks.common import PeakMemory

MIB = 2**20


def test_peak_memory_counts_the_most_bytes_alive_at_once_and_not_what_came_before():
    cpu = torch.device("cpu")
    before = torch.ones(8 * MIB // 4)  # alive on entry: not counted
    with PeakMemory(cpu) as peak:
        a = torch.ones(MIB // 4)
        b = torch.ones(2 * MIB // 4)  # with a: 3 MiB alive
        del a, b
        torch.ones(2 * MIB // 4)  # 2 MiB alone, then freed
        before.add_(1)  # in place: no new storage
    assert peak.peak_mb == 3.0
