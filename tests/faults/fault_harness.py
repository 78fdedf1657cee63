"""Start real trainer processes (ranks started the way srun starts them, or torchrun), inject faults, read
back what they left. Shared by the fault tests; see README.md for the tally of what each fault does.

A "tiny run" is the digits demo at 16 px, width 8, global batch 8, log_every=1: seconds per launch on
2 CPU cores, and its per-step losses (metrics.jsonl) are what two runs are compared by.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo_digits_simclr.yaml"
STEPS = 8  # optimizer steps of the reference run
CKPT_EVERY = 2
# planted in the reference run's environment; the credentials test checks none of them reaches a log
FAKE_SECRETS = {
    "HF_TOKEN": "hf_FAKEfaultsuiteTOKEN0123456789abcdef",
    "WANDB_API_KEY": "fakefaultsuite0123456789abcdef0123456789",
    "AWS_SECRET_ACCESS_KEY": "FAKEfaultsuiteSECRET/0123456789abcdefABCD",
}
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID", "SLURM_NTASKS")


def tiny_args(shards: Path, run_root: Path, name: str, *extra: str, steps: int = STEPS) -> list[str]:
    """`python -m trainer train` arguments of the tiny run; `extra` overrides come last and win."""
    return [
        "-m", "trainer", "train", "--config", str(CONFIG),
        f"data.shards={shards}", "data.image_size=16", "data.workers=0", "model.width=8",
        f"train.max_steps={steps}", "train.global_batch_size=8", f"train.ckpt_every={CKPT_EVERY}",
        "train.log_every=1", "train.progress=false", "train.knn_every=0",
        f"train.run_root={run_root}", f"train.name={name}", "engine.dist_timeout_s=30", *extra,
    ]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Job:
    """Processes of one launch; logs in `logs/<tag>.<rank>.{out,err}` (rank "tr" for torchrun)."""

    procs: list[subprocess.Popen]
    logs: Path
    tag: str
    started: float = field(default_factory=time.monotonic)

    def out(self, rank: int | str = 0) -> str:
        return (self.logs / f"{self.tag}.{rank}.out").read_text()

    def err(self, rank: int | str = 0) -> str:
        return (self.logs / f"{self.tag}.{rank}.err").read_text()

    def wait(self, timeout: float = 120) -> list[int]:
        deadline = time.monotonic() + timeout
        return [p.wait(max(deadline - time.monotonic(), 0.1)) for p in self.procs]

    def kill(self) -> None:
        """SIGKILL every process group this job started (workers of torchrun and DataLoaders included)."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def _popen(argv: list[str], env: dict[str, str], logs: Path, tag: str, rank: int | str) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{tag}.{rank}.out", "a") as out, open(logs / f"{tag}.{rank}.err", "a") as err:
        # a session of its own: signals can go to a rank's whole process group, as Slurm sends them
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)


def spawn_ranks(args: list[str], logs: Path, tag: str, world_size: int = 2,
                wrap: dict[int, list[str]] | None = None, env: dict[str, str] | None = None) -> Job:
    """One process per rank with the torchrun variables set by hand (what srun + trainer/dist.py give):
    no agent watches them, so what a rank does when a peer fails is the trainer's own behaviour.
    `wrap[rank]` replaces `python` by `python <wrapper script>` for that rank."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        rank_env = clean_env(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                             LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                             **(env or {}))
        argv = [sys.executable, *(wrap or {}).get(rank, []), *args]
        procs.append(_popen(argv, rank_env, logs, tag, rank))
    return Job(procs, logs, tag)


def torchrun(args: list[str], logs: Path, tag: str, nproc: int = 2, max_restarts: int = 0) -> Job:
    """launch/torchrun.sh as a user runs it (args without the leading `-m trainer train`)."""
    assert args[:3] == ["-m", "trainer", "train"]
    env = clean_env(CPU_PROCS=str(nproc), MAX_RESTARTS=str(max_restarts), PYTHON=sys.executable)
    return Job([_popen([str(REPO / "launch" / "torchrun.sh"), *args[3:]], env, logs, tag, "tr")], logs, tag)


def worker_pids(agent_pid: int) -> dict[int, int]:
    """{RANK: pid} of the trainer processes torchrun (pid `agent_pid`) runs now."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(kv.decode(errors="replace").split("=", 1) for kv in environ if b"=" in kv)
        if ppid == agent_pid and "RANK" in env:
            ranks[int(env["RANK"])] = int(entry.name)
    return ranks


def process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)


def metric_lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> logged loss; a step logged again after a resume keeps its last value."""
    return {m["step"]: m["loss"] for m in metric_lines(run_dir)}


def wait_for_step(run_dir: Path, step: int, job: Job, timeout: float = 120) -> int:
    """Block until rank 0 has logged `step` (returns the last step logged); fails if the job ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = metric_lines(run_dir)
        if lines and lines[-1]["step"] >= step:
            return lines[-1]["step"]
        ended = [p.returncode for p in job.procs if p.poll() is not None]
        if ended:
            raise AssertionError(f"{job.tag}: ended ({ended}) before step {step}:\n{job.err()[-3000:]}")
        time.sleep(0.01)
    raise AssertionError(f"{job.tag}: step {step} not logged within {timeout} s")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def resumed_step(stdout: str) -> int | None:
    """The step the trainer said it resumed at (None: it started fresh)."""
    found = re.findall(r"resumed at step (\d+)", stdout)
    return int(found[-1]) if found else None


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (`step_*` directories), ascending."""
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))


def nonfinite_tensors(obj, where: str = "") -> list[str]:
    """Paths of floating-point tensors holding a NaN or an infinity anywhere inside `obj`."""
    if torch.is_tensor(obj):
        return [where] if obj.is_floating_point() and not torch.isfinite(obj).all() else []
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in nonfinite_tensors(v, f"{where}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in nonfinite_tensors(v, f"{where}/{i}")]
    return []


def copy_run(reference, run_root: Path, name: str, keep: list[int], metrics: bool = False) -> Path:
    """The reference run's config and its checkpoints of steps `keep` (and, with `metrics`, its
    metrics.jsonl), under run_root/name."""
    def skipped(_, names: list[str]) -> list[str]:
        return [n for n in names if n == "tb" or n == "metrics.jsonl" and not metrics
                or n.startswith("step_") and int(n[5:]) not in keep]

    run_dir = run_root / name
    shutil.copytree(reference.run_dir, run_dir, ignore=skipped)
    return run_dir
