"""A process whose torch-backend workers are still alive exits promptly.

The workers ignore SIGTERM (so Slurm's signal to the process group reaches only the trainer),
which makes multiprocessing's exit hook, SIGTERM-then-join, wait on them forever unless the backend
stops them first. This hung `pytest` after its last test: an iterator outlived its loader.
"""

import subprocess
import sys
import textwrap

import pytest
from shardkit import coded_dataset

LIVE_BACKEND = textwrap.dedent("""
    import sys
    from trainer.config import DataConfig
    from trainer.data import build_loader
    from trainer.types import ViewSpec
    from trainer.dist import DistContext

    data = DataConfig(shards=sys.argv[1], backend="torch", workers=2)
    batches = build_loader(data, [ViewSpec(size=8)], DistContext(), 4, seed=0).epoch(0)
    next(batches)
    print("exiting with live workers", flush=True)
""")

ORPHAN_ITERATOR = textwrap.dedent("""
    from torch.utils.data import DataLoader
    from trainer.data.torch_backend import ignore_preemption_signals

    batches = iter(DataLoader(range(64), num_workers=2, worker_init_fn=ignore_preemption_signals))
    next(batches)  # the DataLoader object is gone; its iterator and workers are not
    print("exiting with live workers", flush=True)
""")


@pytest.mark.parametrize("script", [LIVE_BACKEND, ORPHAN_ITERATOR], ids=["live-backend", "orphan-iterator"])
def test_process_with_live_workers_exits(tmp_path, script):
    root = coded_dataset(tmp_path, 64)
    proc = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exiting with live workers" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
