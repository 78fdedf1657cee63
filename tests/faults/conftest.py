"""Session fixtures of the fault tests: one digits dataset and one uninterrupted 2-rank reference run."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_harness import FAKE_SECRETS, REPO, STEPS, Job, losses, spawn_ranks, tiny_args


@dataclass(frozen=True)
class Reference:
    shards: Path
    run_dir: Path
    job: Job
    losses: dict[int, float]


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """data_prep's digits train split in 8 shards of at most 200 samples (tests copy it before damaging it)."""
    out = tmp_path_factory.mktemp("fault_shards")
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(out), "--splits", "train",
                    "--max-samples", "200", "--workers", "1"], check=True, cwd=REPO, capture_output=True, timeout=300)
    return out / "digits"


@pytest.fixture(scope="session")
def reference(digits_shards, tmp_path_factory) -> Reference:
    """The uninterrupted 2-rank run every resumed run is compared with (STEPS steps, a loss per step)."""
    root = tmp_path_factory.mktemp("fault_reference")
    job = spawn_ranks(tiny_args(digits_shards, root / "runs", "reference"), root / "logs", "reference",
                      env=FAKE_SECRETS)
    try:
        assert job.wait(180) == [0, 0], job.err(0)[-3000:] + job.err(1)[-3000:]
    finally:
        job.kill()
    run_dir = root / "runs" / "reference"
    found = losses(run_dir)
    assert sorted(found) == list(range(1, STEPS + 1))
    return Reference(digits_shards, run_dir, job, found)
