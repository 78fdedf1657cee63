"""A process holding a live torch-backend iterator exits promptly.

Its DataLoader workers ignore SIGTERM (so Slurm's signal to the process group reaches only the
trainer), which makes multiprocessing's exit hook, SIGTERM-then-join, wait on them forever unless
the backend shuts them down first. This hung `pytest` after its last test.
"""

import subprocess
import sys
import textwrap

from shardkit import coded_dataset

SCRIPT = textwrap.dedent("""
    import sys
    from trainer.config import DataConfig
    from trainer.data import build_loader
    from trainer.data.views import ViewSpec
    from trainer.dist import DistContext

    data = DataConfig(shards=sys.argv[1], backend="torch", workers=2)
    batches = build_loader(data, [ViewSpec(size=8)], DistContext(), 4, seed=0).epoch(0)
    next(batches)
    print("exiting with live workers", flush=True)
""")


def test_process_with_live_workers_exits(tmp_path):
    root = coded_dataset(tmp_path, 64)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(root)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exiting with live workers" in proc.stdout
