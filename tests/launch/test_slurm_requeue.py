"""launch/slurm/train.sbatch on a real Slurm controller and node daemon on localhost (tests/launch/local_slurm.py).

1. A 2-task digits run on the CPU (gloo), one srun task per process (LAUNCH_MODE=srun): the job
   completes and leaves checkpoints, TensorBoard events and one metrics line per step.
2. For each mode (srun; torchrun = one srun task running torchrun with 2 processes): once a
   checkpoint exists, `scancel --batch --signal=USR1` fires the pre-timeout signal on demand. The
   trainer must save and exit, the script requeue the job, and the second attempt resume at the
   step the first one stopped at, not at step 0. The run is long, so the signal always lands
   mid-run whatever the machine's speed; once the second attempt has trained past that step the
   test cancels the job.
Install the daemons with tests/install_system_deps.sh (make test does).
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import pytest
from launch_helpers import LAUNCH, REPO, metric_steps, tensorboard_steps, tiny_run
from local_slurm import LocalSlurm, SlurmStartError, missing_binaries

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
SBATCH = str(LAUNCH / "slurm" / "train.sbatch")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


@pytest.fixture(scope="module")
def slurm():
    missing = missing_binaries()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run tests/install_system_deps.sh")
    # a short path: munge's unix socket lives here and socket paths are limited to 108 bytes
    cluster = LocalSlurm(Path(tempfile.mkdtemp(prefix="sslscale-slurm-", dir="/tmp")))
    try:
        try:
            cluster.start()
        except SlurmStartError as e:  # a sandbox that forbids the daemons: say where, do not fail
            pytest.skip(f"the Slurm daemons cannot run here: {e}")
        yield cluster
    finally:
        cluster.stop()


def submit(slurm: LocalSlurm, workdir: Path, name: str, mode: str, args: list[str]) -> int:
    """train.sbatch as a user would submit it from the repository root; the log lands in workdir."""
    tasks = ["--ntasks-per-node=2"] if mode == "srun" else []
    env = {"LAUNCH_MODE": mode, "PYTHON": sys.executable, "CPU_PROCS": "2", "OMP_NUM_THREADS": "1"}
    return slurm.sbatch("-J", name, *tasks, f"--chdir={workdir}", SBATCH, *args, cwd=REPO, env=env)


def wait_for(condition, timeout_s: float, what: str, slurm: LocalSlurm, job: int, log: Path) -> None:
    """Poll `condition` while the job is pending or running; fail with the job log otherwise."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        state = slurm.job(job)["JobState"]
        if time.monotonic() > deadline or state in ENDED:
            raise TimeoutError(f"{what} not reached ({state} after {timeout_s:.0f} s); job log:\n"
                               + (log.read_text()[-4000:] if log.exists() else "(none)"))
        time.sleep(0.2)


def test_two_task_run_completes(slurm, digits_shards, tmp_path):
    job = submit(slurm, tmp_path, "digits2", "srun", tiny_run(digits_shards, tmp_path / "runs", max_steps=6))
    info = slurm.wait_job(job, lambda i: i["JobState"] in ENDED, 240, "the end")
    log = (tmp_path / f"digits2-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert "2 processes on cpu" in log
    run = tmp_path / "runs" / "digits2"  # named after the job, not the job id
    assert metric_steps(run) == [1, 2, 3, 4, 5, 6]
    assert tensorboard_steps(run) == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000004", "step_00000006"]


@pytest.mark.parametrize("mode", ["srun", "torchrun"])
def test_pre_timeout_signal_requeues_and_resumes(slurm, digits_shards, tmp_path, mode):
    name = f"preempt_{mode}"
    args = tiny_run(digits_shards, tmp_path / "runs", max_steps=100_000, ckpt_every=2)
    job = submit(slurm, tmp_path, name, mode, args)
    run, log = tmp_path / "runs" / name, tmp_path / f"{name}-{job}.out"

    wait_for(lambda: list(run.glob("checkpoints/step_*")), 180, "a first checkpoint", slurm, job, log)
    slurm.run("scancel", "--batch", "--signal=USR1", str(job))
    slurm.wait_job(job, lambda i: i["Restarts"] == "1" and i["JobState"] == "PENDING", 120, "requeued")
    # A requeued job is eligible again only after ~2 minutes; a user would just wait. slurmd compares
    # credential times in whole seconds, so an attempt started within a second of the requeue is
    # refused ("Job credential revoked"): let a little time pass first.
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")

    def text() -> str:  # both attempts append to the log (--open-mode=append)
        return log.read_text()

    wait_for(lambda: "resumed at step" in text(), 180, "the requeued attempt resuming", slurm, job, log)
    stopped = int(re.search(r"preempted at step (\d+): exiting 75", text()).group(1))
    resumed = int(re.search(r"resumed at step (\d+)", text()).group(1))
    assert resumed == stopped > 0
    assert f"step {stopped}: saved" in text()
    assert "requeueing job" in text() and f"job {job} (restart 1)" in text()
    if mode == "srun":  # every rank's own status reaches the script (torchrun reports its own instead)
        assert "training step exited 75 after SIGUSR1" in text()
    wait_for(lambda: metric_steps(run)[-1] > stopped, 120, "training past the resume point", slurm, job, log)
    slurm.run("scancel", str(job))
    slurm.wait_job(job, lambda i: i["JobState"] in ENDED, 60, "cancelled")

    # one metrics line per step across both attempts: nothing retrained from step 0, nothing skipped
    steps = metric_steps(run)
    assert steps == list(range(1, len(steps) + 1)), steps
    assert tensorboard_steps(run)[: stopped + 1] == list(range(1, stopped + 2))
