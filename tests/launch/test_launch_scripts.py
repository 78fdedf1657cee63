"""The launch scripts' command lines: process counts detected, flags for one node and many, arguments passed on.

`PYTHON=echo` makes a script print the command it would exec; a fake `nvidia-smi` (or `docker`) on
PATH stands in for the real tool, so these run on any machine in well under a second each.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from launch_helpers import LAUNCH

SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("slurm/*.sh"), LAUNCH / "slurm" / "train.sbatch"])
ENTRY_POINTS = [s for s in SCRIPTS if s.name != "common.sh"]  # common.sh is sourced by them


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!/usr/bin/env bash\n{body}\n")
    tool.chmod(0o755)


def launch(script: str, *args: str, env: dict[str, str], bin_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Run launch/<script> with PYTHON=echo and a PATH without nvidia-smi unless bin_dir provides one."""
    path = f"{bin_dir}:/usr/bin:/bin" if bin_dir else "/usr/bin:/bin"
    full_env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "PYTHON": "echo", **env}
    return subprocess.run([str(LAUNCH / script), *args], check=False, capture_output=True, text=True, env=full_env, timeout=30)


def argv(out: subprocess.CompletedProcess) -> list[str]:
    assert out.returncode == 0, out.stderr
    return shlex.split(out.stdout)


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_torchrun_one_node_counts_gpus_from_nvidia_smi(tmp_path):
    gpus = "\n".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})'" for i in range(4))
    fake_tool(tmp_path / "bin", "nvidia-smi", gpus)
    cmd = argv(launch("torchrun.sh", "--config", "c.yaml", "train.max_steps=5", env={}, bin_dir=tmp_path / "bin"))
    assert cmd[:3] == ["-m", "torch.distributed.run", "--nproc-per-node"]
    assert flag(cmd, "--nproc-per-node") == "4"
    assert "--standalone" in cmd and "--nnodes" not in cmd
    assert flag(cmd, "--max-restarts") == "0"
    assert "SIGUSR1" in flag(cmd, "--signals-to-handle").split(",")  # Slurm's pre-timeout warning reaches the workers
    assert cmd[-6:] == ["-m", "trainer", "train", "--config", "c.yaml", "train.max_steps=5"]


def test_torchrun_without_gpu_uses_cpu_procs_and_override_wins(tmp_path):
    assert flag(argv(launch("torchrun.sh", env={})), "--nproc-per-node") == "1"
    assert flag(argv(launch("torchrun.sh", env={"CPU_PROCS": "3"})), "--nproc-per-node") == "3"
    fake_tool(tmp_path / "bin", "nvidia-smi", "echo 'GPU 0: A100'")
    out = launch("torchrun.sh", env={"NPROC_PER_NODE": "2"}, bin_dir=tmp_path / "bin")
    assert flag(argv(out), "--nproc-per-node") == "2"


def test_torchrun_multi_node_flags():
    env = {"NNODES": "2", "NODE_RANK": "1", "RDZV_ENDPOINT": "node0:29400", "RDZV_ID": "job7", "MAX_RESTARTS": "3"}
    cmd = argv(launch("torchrun.sh", "--config", "c.yaml", env=env))
    assert "--standalone" not in cmd
    assert [flag(cmd, f) for f in ("--nnodes", "--node-rank", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id")] == [
        "2", "1", "c10d", "node0:29400", "job7"]
    assert flag(cmd, "--max-restarts") == "3"


def test_torchrun_multi_node_without_endpoint_is_a_clear_error():
    out = launch("torchrun.sh", env={"NNODES": "2"})
    assert out.returncode == 2
    assert "RDZV_ENDPOINT" in out.stderr


def test_deepspeed_flags_hostfile_and_engine(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", "echo 'GPU 0: A'; echo 'GPU 1: A'")
    env = {"HOSTFILE": str(LAUNCH / "hostfile.example"), "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29611"}
    cmd = argv(launch("deepspeed.sh", "--config", "c.yaml", "engine.zero_stage=1", env=env, bin_dir=tmp_path / "bin"))
    assert cmd[:2] == ["-m", "deepspeed.launcher.runner"]
    assert [flag(cmd, f) for f in ("--num_gpus", "--hostfile", "--master_addr", "--master_port")] == [
        "2", str(LAUNCH / "hostfile.example"), "10.0.0.1", "29611"]
    # the trainer builds the DeepSpeed config from ours; the engine override comes last so it wins
    assert cmd[cmd.index("--module"):] == [
        "--module", "--no_local_rank", "trainer", "train", "--config", "c.yaml", "engine.zero_stage=1",
        "engine.name=deepspeed"]
    assert not list(LAUNCH.rglob("*.json")), "the DeepSpeed JSON comes from our config, not from launch/"


def test_sbatch_rejects_an_unknown_mode():
    env = {"SLURM_SUBMIT_DIR": str(LAUNCH.parent), "SLURM_JOB_NAME": "x", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "localhost", "LAUNCH_MODE": "mpi"}
    out = launch("slurm/train.sbatch", env=env)
    assert out.returncode == 2
    assert "LAUNCH_MODE=mpi: choose torchrun or srun" in out.stderr


def test_hostfile_example_is_deepspeed_syntax():
    from deepspeed.launcher.runner import fetch_hostfile

    assert fetch_hostfile(str(LAUNCH / "hostfile.example")) == {"node001": 8, "node002": 8}


def test_docker_run_gpus_ipc_and_mounts(tmp_path):
    fake_tool(tmp_path / "bin", "docker", 'printf "%s\\n" "$@"')
    (tmp_path / "shards").mkdir()
    out = subprocess.run(
        [str(LAUNCH / "docker_run.sh"), "python", "-m", "trainer", "--help"], check=False, capture_output=True, text=True,
        cwd=tmp_path, env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "IMAGE": "sslscale:test"}, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    cmd = out.stdout.splitlines()
    assert cmd[:2] == ["run", "--rm"]
    assert {"--gpus", "all", "--ipc=host"} <= set(cmd)
    mounts = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-v"]
    assert mounts == [f"{tmp_path}/shards:/workspace/sslscale/shards:ro", f"{tmp_path}/runs:/workspace/sslscale/runs"]
    assert (tmp_path / "runs").is_dir()
    assert cmd[-5:] == ["sslscale:test", "python", "-m", "trainer", "--help"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_shellcheck_clean(script):
    out = subprocess.run(["shellcheck", "-x", "--shell=bash", str(script)], check=False, capture_output=True,
                         text=True, cwd=script.parent)
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("script", ENTRY_POINTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_strict_mode_and_executable(script):
    assert "set -euo pipefail" in script.read_text()
    assert os.access(script, os.X_OK)
