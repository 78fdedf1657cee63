"""Two runs with the same train.name at once: the second is refused naming the first's host and pid, and
the first goes on unharmed; once the first is killed (-9), a relaunch gets the lock back and resumes."""

from __future__ import annotations

import socket

import pytest
from fault_harness import checkpoint_steps, metric_lines, resumed_step, spawn_ranks, tiny_args, wait_for_step

pytestmark = pytest.mark.slow


def test_second_run_is_refused_and_a_relaunch_after_kill_9_gets_the_lock(reference, tmp_path):
    args = tiny_args(reference.shards, tmp_path / "runs", "shared", steps=10_000)
    run_dir = tmp_path / "runs" / "shared"
    first = spawn_ranks(args, tmp_path / "logs", "first")
    try:
        wait_for_step(run_dir, 2, first)
        second = spawn_ranks(args, tmp_path / "logs", "second")
        try:
            codes = second.wait(120)
        finally:
            second.kill()
        assert codes == [2, 2], second.err(0)[-2000:] + second.err(1)[-2000:]
        holder = f"pid {first.procs[0].pid} on host {socket.gethostname()}"
        for rank in (0, 1):  # every rank of the refused job says why, none waits for a peer
            assert holder in second.err(rank) and "train.name" in second.err(rank), second.err(rank)[-2000:]
        refused_at = metric_lines(run_dir)[-1]["step"]
        wait_for_step(run_dir, refused_at + 2, first)  # the first run trains on
        steps = [m["step"] for m in metric_lines(run_dir)]
        assert steps == list(range(1, len(steps) + 1))  # no step written twice
    finally:
        first.kill()  # SIGKILL: the lock is released by the kernel, nothing else

    kept = checkpoint_steps(run_dir)[-1]
    again = spawn_ranks(tiny_args(reference.shards, tmp_path / "runs", "shared", steps=kept + 1),
                        tmp_path / "logs", "relaunch")
    try:
        assert again.wait(180) == [0, 0], again.err(0)[-3000:]
    finally:
        again.kill()
    assert resumed_step(again.out(0)) == kept
