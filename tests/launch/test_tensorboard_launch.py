"""launch/tensorboard.sh serves what torch's SummaryWriter wrote under runs/<name>/tb, over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

from launch_helpers import LAUNCH, free_port
from torch.utils.tensorboard import SummaryWriter


def poll_json(url: str, ready, timeout_s: float = 60.0):
    """GET url until the server answers and `ready(answer)` (TensorBoard loads event files after it starts)."""
    deadline = time.monotonic() + timeout_s
    answer = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                answer = json.load(r)
            if ready(answer):
                return answer
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}: last answer {answer!r}")


def test_tensorboard_serves_the_runs_scalars(tmp_path):
    losses = [4.0, 3.5, 3.25]
    with SummaryWriter(tmp_path / "runs" / "demo" / "tb") as w:
        for step, loss in enumerate(losses, start=1):
            w.add_scalar("train/loss", loss, step)
    port = free_port()
    proc = subprocess.Popen(
        [str(LAUNCH / "tensorboard.sh"), str(tmp_path / "runs")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "PORT": str(port)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/data"
        assert "demo/tb" in poll_json(f"{base}/runs", lambda runs: runs)
        points = poll_json(f"{base}/plugin/scalars/scalars?run=demo/tb&tag=train/loss", lambda p: len(p) == 3)
        assert [(step, value) for _, step, value in points] == list(enumerate(losses, start=1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
