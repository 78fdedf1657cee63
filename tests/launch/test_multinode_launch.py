"""launch/torchrun.sh as two "nodes" on one machine, and launch/deepspeed.sh with two processes, on the CPU.

Each starts the real trainer on the tiny digits run (gloo over 127.0.0.1) and must leave the same
run directory a single process would: checkpoints, TensorBoard events and one metrics line per step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from launch_helpers import LAUNCH, free_port, metric_steps, plan_of, tensorboard_steps, tiny_run

STEPS = 6

pytestmark = pytest.mark.slow


def launcher_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **extra}


def assert_complete_run(run_dir: Path, log: str) -> dict:
    """Checks the run directory and returns the trainer's logged plan."""
    assert metric_steps(run_dir) == list(range(1, STEPS + 1))
    assert tensorboard_steps(run_dir) == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002", "step_00000004",
                                                                          "step_00000006"]
    plan = plan_of(log)
    assert (plan["world_size"], plan["per_device_batch_size"]) == (2, 8), plan
    return plan


def test_torchrun_two_nodes_on_localhost(digits_shards, tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    args = [*tiny_run(digits_shards, tmp_path / "runs", max_steps=STEPS), "train.name=two_nodes"]
    nodes = [
        subprocess.Popen(
            [str(LAUNCH / "torchrun.sh"), *args],
            env=launcher_env(NNODES="2", NODE_RANK=str(rank), RDZV_ENDPOINT=endpoint, RDZV_ID="launch-test",
                             NPROC_PER_NODE="1"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-4000:]
    assert_complete_run(tmp_path / "runs" / "two_nodes", "".join(logs))


def test_deepspeed_launcher_two_processes_on_cpu(digits_shards, tmp_path):
    args = [*tiny_run(digits_shards, tmp_path / "runs", max_steps=STEPS), "train.name=deepspeed"]
    # CPU_PROCS -> `--num_gpus 2`: with no GPU deepspeed's launcher picks its CPU accelerator and
    # starts that many processes; the trainer then runs the DeepSpeed engine over gloo.
    out = subprocess.run(
        [str(LAUNCH / "deepspeed.sh"), *args], env=launcher_env(CPU_PROCS="2", MASTER_PORT=str(free_port())),
        check=False, capture_output=True, text=True, timeout=300,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "dist_world_size=2" in log
    plan = assert_complete_run(tmp_path / "runs" / "deepspeed", log)
    # the DeepSpeed config the trainer derived from ours, with the global batch split over 2 ranks
    assert plan["deepspeed"]["train_batch_size"] == 16, plan["deepspeed"]
