"""A non-finite loss produced through the product itself: AdamW at lr 1e39.

AdamW's first update moves every weight by about lr (its step is lr * m / sqrt(v), m / sqrt(v) = +-1),
so with the effective lr 1e39 x 8 / 256 ~ 3e37 the weights stay finite after step 1 but step 2's
forward pass overflows: step 1's loss is finite, every later one is NaN. train.nonfinite=stop must stop
naming step 2; skip must skip each bad step. Either way no NaN or inf may reach a checkpoint.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from fault_harness import REPO, checkpoint_steps, clean_env, metric_lines, nonfinite_tensors, tiny_args

pytestmark = pytest.mark.slow
OVERFLOW = ("optim.name=adamw", "optim.base_lr=1e39", "optim.warmup_epochs=0", "train.ckpt_every=1")


def train(reference, tmp_path, policy: str) -> tuple[subprocess.CompletedProcess, object]:
    args = tiny_args(reference.shards, tmp_path / "runs", policy, *OVERFLOW, f"train.nonfinite={policy}", steps=4)
    out = subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=clean_env(), capture_output=True,
                         text=True, timeout=180)
    return out, tmp_path / "runs" / policy


def assert_checkpoints_finite(run_dir) -> None:
    for step in checkpoint_steps(run_dir):
        state = torch.load(run_dir / "checkpoints" / f"step_{step:08d}" / "state.pt", weights_only=True)
        state.pop("rng")  # RNG states, not numbers a model computed (Python's encodes "no gauss" as NaN)
        assert nonfinite_tensors(state) == [], f"step {step}: non-finite tensors {nonfinite_tensors(state)[:5]}"


def test_stop_policy_names_the_step_and_saves_nothing_after_it(reference, tmp_path):
    out, run_dir = train(reference, tmp_path, "stop")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "non-finite loss at step 2" in out.stderr, out.stderr[-2000:]
    assert checkpoint_steps(run_dir) == [1]
    assert_checkpoints_finite(run_dir)


def test_skip_policy_skips_bad_steps_and_keeps_checkpoints_finite(reference, tmp_path):
    out, run_dir = train(reference, tmp_path, "skip")
    assert out.returncode == 0, out.stderr[-2000:]
    logged = {m["step"]: m for m in metric_lines(run_dir)}
    assert [logged[s]["nonfinite_skipped"] for s in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert checkpoint_steps(run_dir) == [2, 3, 4]  # keep_last = 3
    assert_checkpoints_finite(run_dir)
    assert math.isfinite(logged[1]["loss"])
    # a window whose every loss was non-finite has no mean: 0.0 would read as a perfect loss
    assert all(math.isnan(logged[s].get("loss", math.nan)) for s in (2, 3, 4)), [logged[s].get("loss") for s in (2, 3, 4)]
