"""Checkpoints under faults: a crash mid-write, a damaged newest checkpoint, one from another config, a full
disk. The last good checkpoint always survives and auto-resume never picks up a partial one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fault_harness import (
    CKPT_EVERY,
    REPO,
    checkpoint_steps,
    clean_env,
    losses,
    resumed_step,
    spawn_ranks,
    tiny_args,
)

from trainer.checkpoint import read_latest
from trainer.config import load_config

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def copy_run(reference, run_root: Path, name: str, keep: list[int]) -> Path:
    """The reference run's config and its checkpoints of steps `keep`, under run_root/name."""
    def skipped(_, names: list[str]) -> list[str]:
        return [n for n in names if n in ("tb", "metrics.jsonl") or n.startswith("step_") and int(n[5:]) not in keep]

    run_dir = run_root / name
    shutil.copytree(reference.run_dir, run_dir, ignore=skipped)
    return run_dir


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_crash_while_writing_keeps_previous_and_skips_partial(reference, tmp_path):
    args = tiny_args(reference.shards, tmp_path / "runs", "crash")
    run_dir = tmp_path / "runs" / "crash"
    # rank 0 writes the checkpoint file; it dies halfway through its 2nd one (step 2 * CKPT_EVERY)
    job = spawn_ranks(args, tmp_path / "logs", "crash", wrap={0: [str(HERE / "die_mid_save.py"), "2"]})
    try:
        codes = job.wait(120)
    finally:
        job.kill()
    assert codes[0] == -9 and codes[1] != 0, (codes, job.err(0)[-2000:])
    assert checkpoint_steps(run_dir) == [CKPT_EVERY]
    partial = [p for p in (run_dir / "checkpoints").rglob("*") if p.is_file() and not p.parent.name.startswith("step_")]
    assert partial, "the killed save left no partial file: the crash did not happen mid-write"
    with pytest.raises(RuntimeError, match="zip"):
        torch.load(partial[0], weights_only=True)
    found = read_latest(run_dir)
    assert found is not None and found[0].name == f"step_{CKPT_EVERY:08d}"

    again = spawn_ranks(args, tmp_path / "logs", "relaunch")
    try:
        assert again.wait(180) == [0, 0], again.err(0)[-3000:]
    finally:
        again.kill()
    assert resumed_step(again.out(0)) == CKPT_EVERY
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("step_")]
    assert leftovers == []
    assert losses(run_dir) == reference.losses


def test_unreadable_newest_checkpoints_fall_back_to_the_last_good_one(reference, tmp_path):
    """step 8's file truncated, step 6's directory without its file: resume at step 4, warn naming both."""
    run_dir = copy_run(reference, tmp_path / "runs", "fallback", keep=[4, 6, 8])
    truncated = run_dir / "checkpoints" / "step_00000008" / "state.pt"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    missing = run_dir / "checkpoints" / "step_00000006" / "state.pt"
    missing.unlink()
    job = spawn_ranks(tiny_args(reference.shards, tmp_path / "runs", "fallback"), tmp_path / "logs", "fallback")
    try:
        assert job.wait(180) == [0, 0], job.err(0)[-3000:]
    finally:
        job.kill()
    assert resumed_step(job.out(0)) == 4
    assert str(truncated) in job.err(0) and str(missing) in job.err(0)
    assert losses(run_dir) == {s: v for s, v in reference.losses.items() if s > 4}


@pytest.mark.parametrize(("path", "override", "named"), [
    ("run", "model.width=16", "width"),  # other parameter shapes
    (None, "method.name=byol", "method"),  # another method altogether
])
def test_checkpoint_of_another_config_is_refused_naming_file_and_key(reference, path, override, named):
    cfg = load_config(reference.run_dir / "config.yaml" if path else None, [override])
    newest = reference.run_dir / "checkpoints" / f"step_{max(reference.losses):08d}" / "state.pt"
    with pytest.raises(ValueError) as refused:
        read_latest(reference.run_dir, cfg)
    assert str(newest) in str(refused.value) and named in str(refused.value)


def test_train_command_refuses_to_resume_another_shape(reference, tmp_path):
    copy_run(reference, tmp_path / "runs", "shapes", keep=[8])
    args = tiny_args(reference.shards, tmp_path / "runs", "shapes", "model.width=16")
    out = subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=clean_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "step_00000008" in out.stderr and "width" in out.stderr, out.stderr[-2000:]
    assert checkpoint_steps(tmp_path / "runs" / "shapes") == [8]


def mount_tmpfs(path: Path, size_bytes: int) -> bool:
    """A tmpfs of `size_bytes` at path (root only); False where mounting is not allowed."""
    path.mkdir(parents=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          check=False, capture_output=True).returncode == 0


def test_disk_full_while_checkpointing_reports_and_keeps_previous(reference, tmp_path):
    """A tmpfs with room for one checkpoint and a half (ENOSPC); without mount rights, RLIMIT_FSIZE on
    rank 0 below one checkpoint (EFBIG)."""
    newest = reference.run_dir / "checkpoints" / "step_00000008" / "state.pt"
    size = newest.stat().st_size
    disk = tmp_path / "disk"
    mounted = mount_tmpfs(disk, size + size // 2 + 2**18)
    try:
        run_dir = copy_run(reference, disk / "runs", "full", keep=[8])
        job = spawn_ranks(tiny_args(reference.shards, disk / "runs", "full", steps=12), tmp_path / "logs", "full")
        try:
            if not mounted:  # set while rank 0 is still importing: its first write comes seconds later
                resource.prlimit(job.procs[0].pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))
            codes = job.wait(120)
        finally:
            job.kill()
        assert codes[0] != 0 and codes[1] != 0
        assert resumed_step(job.out(0)) == 8
        assert checkpoint_steps(run_dir) == [8]
        kept = run_dir / "checkpoints" / "step_00000008" / "state.pt"
        assert sha256(kept) == sha256(newest)
        torch.load(kept, weights_only=True)
        reason = os.strerror(errno.ENOSPC if mounted else errno.EFBIG)
        err = job.err(0)
        assert reason in err and "step_00000010" in err, (
            f"rank 0 must say the save of step 10 failed and why ({reason!r}):\n{err[-2000:]}")
    finally:
        if mounted:
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(["umount", str(disk)], check=True, capture_output=True)
