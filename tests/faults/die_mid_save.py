"""`python die_mid_save.py K -m trainer train ...`: the trainer, SIGKILLed halfway through writing its K-th
checkpoint file.

The crash is real (SIGKILL, a half-written file left on disk); only its moment is made exact: the K-th
`torch.save` into a `checkpoints/` folder (a path or an open file) writes the first half of its bytes, fsyncs them, and kills
the process, instead of the test racing a kill against a write that takes milliseconds.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import signal
import sys
from pathlib import Path

import torch

target = int(sys.argv.pop(1))
assert sys.argv[1:3] == ["-m", "trainer"], sys.argv
sys.argv = [sys.argv[0], *sys.argv[3:]]
real_save = torch.save
saves = 0


def save(obj, f, *args, **kwargs):
    """torch.save, to a path or to an open file (trainer/checkpoint.py passes a file, for its errno)."""
    global saves
    name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "")
    if "checkpoints" in Path(name).parts:
        saves += 1
        if saves == target:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(name, "wb") if f is name else contextlib.nullcontext(f) as out:
                out.write(data[: len(data) // 2])
                out.flush()
                os.fsync(out.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.save = save
# `python -m trainer` imports the checkout it runs in (the cwd); a script's sys.path starts at its own folder
# instead, which would import whichever trainer is installed (in a worktree: another checkout's)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
runpy.run_module("trainer", run_name="__main__", alter_sys=True)
