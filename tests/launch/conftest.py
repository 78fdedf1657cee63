"""Fixtures of the launch tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from launch_helpers import REPO


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """data_prep's digits dataset, several shards per split so that two ranks each get some."""
    out = tmp_path_factory.mktemp("launch_shards")
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(out), "--max-samples", "200"],
                   check=True, cwd=REPO, capture_output=True, timeout=300)
    return out / "digits"
