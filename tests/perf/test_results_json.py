"""benchmarks.common: a results JSON (trainer.atomic_json) is whole or not there (a write that fails midway keeps the table it was
replacing), and the machine block names what tells two machines' timings apart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks import common


def test_a_write_that_fails_midway_keeps_the_previous_table(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    path = common.write_results("bench", cpu, {"what": "first"}, [{"cell": "a"}], tmp_path)
    before = path.read_bytes()
    write_text = Path.write_text

    def half_then_disk_full(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_disk_full)
    with pytest.raises(OSError, match="No space"):
        common.write_results("bench", cpu, {"what": "second"}, [{"cell": "b"}] * 100, tmp_path)
    monkeypatch.undo()
    assert path.read_bytes() == before and json.loads(before)["rows"] == [{"cell": "a"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no half-written file left beside it


def test_machine_names_the_vector_unit_the_cpu_has_and_the_cores_this_process_may_use():
    machine = common.machine()
    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split())
    needs = {"AVX512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"}, "AVX2": {"avx2", "fma"}, "DEFAULT": set()}
    assert needs[machine["cpu_capability"]] <= flags, machine  # torch dispatches only to what the CPU reports
    assert machine["cores"] == len(os.sched_getaffinity(0)) and machine["cpu_model"] != "unknown"
