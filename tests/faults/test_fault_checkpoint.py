"""Checkpoints under faults: a crash mid-write, a damaged newest checkpoint, one from another config, a full
disk. The last good checkpoint always survives and auto-resume never picks up a partial one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
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
    copy_run,
    losses,
    metric_lines,
    resumed_step,
    spawn_ranks,
    tiny_args,
)

from trainer.checkpoint import ResumeError, read_latest
from trainer.config import to_dict
from trainer.registry import load_config

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


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


def test_unreadable_newest_checkpoints_fall_back_rotation_keeps_the_readable_and_steps_are_logged_once(
        reference, tmp_path):
    """step 8's file truncated, step 6's directory without its file, metrics.jsonl as a crash leaves it (steps 1-8
    logged, then half a line): resume at step 4, warn naming both; with keep_last=1 rotation deletes step 4 once
    step 6 is saved, never the readable checkpoints in favour of the broken step 8 (which is moved aside, kept);
    every step is logged once."""
    run_dir = copy_run(reference, tmp_path / "runs", "fallback", keep=[4, 6, 8], metrics=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "epoch": 0, "lo')
    truncated = run_dir / "checkpoints" / "step_00000008" / "state.pt"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    broken = truncated.read_bytes()
    missing = run_dir / "checkpoints" / "step_00000006" / "state.pt"
    missing.unlink()
    earlier = run_dir / "checkpoints" / "unreadable-step_00000008"  # set aside by an earlier relaunch
    earlier.mkdir()
    args = tiny_args(reference.shards, tmp_path / "runs", "fallback", "train.keep_last=1")
    job = spawn_ranks(args, tmp_path / "logs", "fallback")
    try:
        assert job.wait(180) == [0, 0], job.err(0)[-3000:]
    finally:
        job.kill()
    assert resumed_step(job.out(0)) == 4
    assert str(truncated) in job.err(0) and str(missing) in job.err(0)
    assert checkpoint_steps(run_dir) == [8]
    assert torch.load(run_dir / "checkpoints" / "step_00000008" / "state.pt", weights_only=True)["step"] == 8
    aside = run_dir / "checkpoints"
    assert (aside / "unreadable-step_00000008.1" / "state.pt").read_bytes() == broken and earlier.is_dir()
    assert (aside / "unreadable-step_00000006").is_dir()
    assert [m["step"] for m in metric_lines(run_dir)] == list(range(1, 9))
    assert losses(run_dir) == reference.losses


def test_checkpoints_none_of_which_loads_stop_the_run_naming_each(reference, tmp_path):
    """It used to start from step 0, and keep_last rotation then deleted every new checkpoint (the broken one
    sorted newest)."""
    run_dir = copy_run(reference, tmp_path / "runs", "broken", keep=[6, 8])
    truncated = run_dir / "checkpoints" / "step_00000008" / "state.pt"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    (run_dir / "checkpoints" / "step_00000006" / "state.pt").write_bytes(b"not a checkpoint")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    args = tiny_args(reference.shards, tmp_path / "runs", "broken", "train.keep_last=1")
    out = subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=clean_env(), capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 2, out.stderr[-3000:]
    error = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "no checkpoint is readable" in error[0], out.stderr[-3000:]
    for step in (6, 8):
        assert f"step_0000000{step}/state.pt (" in error[0]  # each file, and why in the brackets
    assert "train.name" in error[0]
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert "step 2: saved" not in out.stdout


@pytest.mark.parametrize(("path", "override", "named"), [
    ("run", "model.width=16", "model.width: 8 -> 16"),  # other parameter shapes
    (None, "method.name=byol", "method.name: 'simclr' -> 'byol'"),  # another method altogether
    ("run", "train.global_batch_size=16", "train.global_batch_size: 8 -> 16"),
    ("run", "optim.name=adamw", "optim.name: 'lars' -> 'adamw'"),  # it died on a bare KeyError: 'step'
    ("run", "data.image_size=24", "data.image_size: 16 -> 24"),
    ("run", "data.split=test", "data.split: 'train' -> 'test'"),
])
def test_checkpoint_of_another_config_is_refused_naming_file_key_and_values(reference, path, override, named):
    cfg = load_config(reference.run_dir / "config.yaml" if path else None, [override])
    newest = reference.run_dir / "checkpoints" / f"step_{max(reference.losses):08d}" / "state.pt"
    with pytest.raises(ResumeError) as refused:
        read_latest(reference.run_dir, to_dict(cfg))
    assert str(newest) in str(refused.value) and named in str(refused.value)


@pytest.mark.parametrize(("change", "named"), [
    ({"dataset": "cifar10"}, "data (dataset): 'digits' -> 'cifar10'"),
    ({"num_samples": 1000}, "data (num_samples): 1437 -> 1000"),  # another split or preparation of it
    ({"view_sizes": [16, 16, 8]}, "data (view_sizes): [16, 16] -> [16, 16, 8]"),
])
def test_checkpoint_of_other_data_is_refused(reference, change, named):
    """The dataset's identity (name and sample count from the manifest, the view sizes) is saved with the
    checkpoint and compared; the data's path is not (a dataset may move)."""
    cfg = load_config(reference.run_dir / "config.yaml")
    newest = reference.run_dir / "checkpoints" / f"step_{max(reference.losses):08d}"
    saved = torch.load(newest / "state.pt", weights_only=True)["data"]
    assert read_latest(reference.run_dir, to_dict(cfg), saved)[0] == newest  # the control: the same data resumes
    with pytest.raises(ResumeError, match=re.escape(named)):
        read_latest(reference.run_dir, to_dict(cfg), {**saved, **change})


def test_train_command_refuses_to_resume_another_setup(reference, tmp_path):
    """Another global batch (the data position and the lr would mean other things): the command's own exit; the
    other MEANING settings are refused by the same read_latest, tested above in this process."""
    named = "train.global_batch_size: 8 -> 16"
    copy_run(reference, tmp_path / "runs", "other", keep=[8])
    args = tiny_args(reference.shards, tmp_path / "runs", "other", "train.global_batch_size=16")
    out = subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=clean_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    error = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "step_00000008" in error[0] and named in error[0], out.stderr[-2000:]
    assert "train.name" in error[0]  # how to start fresh
    assert checkpoint_steps(tmp_path / "runs" / "other") == [8]


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


def test_rotation_never_keeps_a_damaged_checkpoint_in_place_of_a_readable_one(tmp_path):
    """keep_last=2 over step 30 (intact), step 20 (truncated: a disk that filled up, a copy cut short) and
    step 10 (intact): the two readable ones stay, the damaged one is set aside, nothing readable is lost."""
    import torch

    from trainer.checkpoint import rotate

    checkpoints = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        (checkpoints / f"step_{step:08d}").mkdir(parents=True)
        torch.save({"step": step}, checkpoints / f"step_{step:08d}" / "state.pt")
    damaged = checkpoints / "step_00000020" / "state.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.warns(UserWarning, match="step_00000020/state.pt is damaged: moved to"):
        rotate(tmp_path, keep_last=2)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000010", "step_00000030",
                                                             "unreadable-step_00000020"]
    rotate(tmp_path, keep_last=1)  # a later save: the oldest readable one goes, the damaged one stays aside
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000030", "unreadable-step_00000020"]
    assert torch.load(checkpoints / "step_00000030" / "state.pt", weights_only=True) == {"step": 30}
