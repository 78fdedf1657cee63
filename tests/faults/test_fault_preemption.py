"""SIGUSR1 / SIGTERM to every rank (Slurm's pre-timeout warning, a preemption): each rank saves one final
checkpoint at the same step and exits 75 (EXIT_PREEMPTED); the relaunch continues without losing a step."""

from __future__ import annotations

import os
import signal

import pytest
from fault_harness import (
    checkpoint_steps,
    losses,
    metric_lines,
    resumed_step,
    spawn_ranks,
    tiny_args,
    wait_for_step,
)

from trainer.checkpoint import EXIT_PREEMPTED

pytestmark = pytest.mark.slow
NO_PERIODIC = "train.ckpt_every=1000"  # the only checkpoint is the one the signal asks for


def test_sigusr1_saves_exits_75_and_continues_exactly(reference, tmp_path):
    args = tiny_args(reference.shards, tmp_path / "runs", "usr1", NO_PERIODIC)
    run_dir = tmp_path / "runs" / "usr1"
    job = spawn_ranks(args, tmp_path / "logs", "first")
    try:
        wait_for_step(run_dir, 3, job)
        for proc in job.procs:
            proc.send_signal(signal.SIGUSR1)
        codes = job.wait(60)
    finally:
        job.kill()
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], job.err(0)[-2000:]
    last_logged = metric_lines(run_dir)[-1]["step"]
    assert checkpoint_steps(run_dir) == [last_logged]  # nothing trained after the final checkpoint is lost

    again = spawn_ranks(args, tmp_path / "logs", "relaunch")
    try:
        assert again.wait(180) == [0, 0], again.err(0)[-3000:]
    finally:
        again.kill()
    assert resumed_step(again.out(0)) == last_logged
    assert losses(run_dir) == reference.losses


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_whole_process_groups_with_dataloader_workers(reference, tmp_path, sig):
    """Slurm (scancel, preemption) signals every process of a step, DataLoader workers included, and so does
    Ctrl-C (SIGINT) in a terminal. torch's workers die of SIGTERM and stop on SIGINT, and the main process then
    fails on the lost worker instead of saving; SIGINT used to be a KeyboardInterrupt that saved nothing."""
    args = tiny_args(reference.shards, tmp_path / "runs", "term", NO_PERIODIC, "data.workers=1", steps=200)
    run_dir = tmp_path / "runs" / "term"
    job = spawn_ranks(args, tmp_path / "logs", "term")
    try:
        wait_for_step(run_dir, 3, job)
        for proc in job.procs:
            os.killpg(proc.pid, sig)
        codes = job.wait(60)
    finally:
        job.kill()
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], job.err(0)[-2000:]
    assert checkpoint_steps(run_dir) == [metric_lines(run_dir)[-1]["step"]]
