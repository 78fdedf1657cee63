"""An exclusive lock on a run folder: two jobs with the same train.name would resume from the same
checkpoint, write the same steps over each other and rotate each other's checkpoints away.

A POSIX record lock (`fcntl.lockf`) on `<run folder>/.lock`, taken by global rank 0 for the job's life:
- the kernel drops it when the process ends, however it ends (kill -9, the OOM killer), so a relaunch
  or a requeued Slurm job gets it back: there is never a stale lock to delete by hand;
- unlike `flock`, it is not inherited across fork(), so a DataLoader worker that outlives a killed
  rank 0 for a moment does not keep the run locked;
- it is honoured over NFS (lockd), where `flock` may lock only the local client.
The file holds the holder's host and pid, which the refused job prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

from trainer.dist import DistContext

LOCK = ".lock"


class RunInUse(ValueError):
    """Another live job holds the run folder's lock; the message names its host and pid."""


def _acquire(run_dir: Path) -> tuple[int | None, str | None]:
    """(fd holding the lock, None), or (None, why not)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"pid {holder[1]} on host {holder[0]}" if len(holder) == 2 else "a process that is still starting"
        return None, (f"{run_dir} is in use by another run ({who}, lock file {run_dir / LOCK}); wait for it to "
                      "end, stop it, or choose another train.name")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
    return fd, None


@contextlib.contextmanager
def run_lock(run_dir: Path, ctx: DistContext) -> Iterator[None]:
    """Collective: rank 0 takes the lock and every rank raises RunInUse if it could not."""
    fd, refusal = _acquire(run_dir) if ctx.is_main else (None, None)
    answer = [refusal]
    if dist.is_initialized():
        dist.broadcast_object_list(answer, src=0)
    if answer[0] is not None:
        raise RunInUse(answer[0])
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays (deleting it would race with a waiting job)
