"""A rank killed (-9) or frozen (SIGSTOP) mid-epoch: the job stops instead of hanging, and the same command
relaunched -- or torchrun's own restart -- resumes from the latest checkpoint with the losses of a run
that was never interrupted."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from fault_harness import (
    CKPT_EVERY,
    STEPS,
    checkpoint_steps,
    losses,
    metric_lines,
    process_env,
    resumed_step,
    spawn_ranks,
    tiny_args,
    torchrun,
    wait_for_step,
    worker_pids,
)

pytestmark = pytest.mark.slow


def test_killed_rank_stops_the_survivor_and_relaunch_resumes_exactly(reference, tmp_path):
    timeout_s = 20
    args = tiny_args(reference.shards, tmp_path / "runs", "killed", f"engine.dist_timeout_s={timeout_s}")
    run_dir = tmp_path / "runs" / "killed"
    job = spawn_ranks(args, tmp_path / "logs", "first")
    try:
        wait_for_step(run_dir, 3, job)
        job.procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        survivor = job.procs[0].wait(timeout_s + 30)
        noticed_s = time.monotonic() - killed_at
    finally:
        job.kill()
    assert survivor != 0
    assert noticed_s < timeout_s, f"rank 0 took {noticed_s:.1f} s to notice its peer died"
    err = job.err(0)
    assert "rank0" in err.replace(" ", "") and re.search(r"[Cc]onnection (reset|closed) by peer", err), err[-2000:]

    logged = metric_lines(run_dir)[-1]["step"]
    kept = checkpoint_steps(run_dir)[-1]
    assert 0 <= logged - kept <= CKPT_EVERY, (logged, kept)

    again = spawn_ranks(args, tmp_path / "logs", "relaunch")
    try:
        assert again.wait(180) == [0, 0], again.err(0)[-3000:]
    finally:
        again.kill()
    assert resumed_step(again.out(0)) == kept
    # the steps after the checkpoint were logged by the dead run and again by the relaunch: once in the file
    assert [m["step"] for m in metric_lines(run_dir)] == list(range(1, STEPS + 1))
    assert losses(run_dir) == reference.losses


def test_torchrun_max_restarts_resumes_exactly(reference, tmp_path):
    """launch/torchrun.sh with MAX_RESTARTS=1: torchrun restarts the group after a rank is killed.

    torch >= 2.5 shares the agent's TCPStore with the workers (TORCHELASTIC_USE_AGENT_STORE) and, in
    2.14, keeps that one store across restarts without a per-attempt key prefix: the restarted gloo
    group can read the dead attempt's peer addresses ("Connection refused", about every other restart
    here; pytorch/pytorch#135712). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives each attempt a fresh store.
    """
    args = tiny_args(reference.shards, tmp_path / "runs", "restarted")
    run_dir = tmp_path / "runs" / "restarted"
    job = torchrun(args, tmp_path / "logs", "torchrun", max_restarts=1)
    try:
        wait_for_step(run_dir, 3, job)
        workers = worker_pids(job.procs[0].pid)
        assert sorted(workers) == [0, 1]
        worker_env = process_env(workers[1])
        os.kill(workers[1], signal.SIGKILL)
        logged = metric_lines(run_dir)[-1]["step"]  # rank 0 cannot pass its next collective
        code = job.procs[0].wait(180)
    finally:
        job.kill()
    assert worker_env.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == "1", (
        "launch/torchrun.sh must export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: with the shared agent store a "
        "restarted gloo group reads the previous attempt's addresses (pytorch/pytorch#135712)")
    assert code == 0, job.err("tr")[-4000:]
    assert "exitcode: -9" in job.err("tr")
    resumed = resumed_step(job.out("tr"))
    assert resumed is not None and resumed % CKPT_EVERY == 0 and 0 <= logged - resumed <= CKPT_EVERY
    assert losses(run_dir) == reference.losses


def test_frozen_rank_fails_the_job_within_dist_timeout(reference, tmp_path):
    timeout_s = 5
    args = tiny_args(reference.shards, tmp_path / "runs", "frozen", f"engine.dist_timeout_s={timeout_s}", steps=500)
    job = spawn_ranks(args, tmp_path / "logs", "frozen")
    try:
        wait_for_step(tmp_path / "runs" / "frozen", 2, job)
        job.procs[1].send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        code = job.procs[0].wait(4 * timeout_s + 30)
        failed_after_s = time.monotonic() - stopped_at
    finally:
        job.kill()
    assert code != 0
    # gloo gives up after the timeout on the collective in flight, and at most once more on the next one
    assert failed_after_s < 3 * timeout_s, f"rank 0 failed {failed_after_s:.1f} s after its peer froze"
    err = job.err(0)
    assert "rank 0" in err and "engine.dist_timeout_s" in err, (
        "the failure must say which rank gave up and which setting bounds the wait:\n" + err[-1500:])
