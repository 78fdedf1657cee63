"""What a run prints while it trains: off a terminal (a Slurm log, nohup, CI) one plain line per log window,
on a terminal the tqdm bar. Both read from a real `python -m trainer train` process: its output goes to a
file in one case and to a pseudo-terminal in the other."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from trainer.logger import progress_line

REPO = Path(__file__).resolve().parents[2]
STEPS, LOG_EVERY = 4, 2
LINE = re.compile(r"^step (\d+)/4 \((\d+)%\) \| epoch 1 \| loss \d+\.\d{4} \| \d+ img/s \| data wait \d+% \| "
                  r"ETA \d+:\d\d:\d\d$")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("progress_shards")
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(out), "--splits", "train",
                    "--max-samples", "200", "--workers", "1"], check=True, cwd=REPO, capture_output=True, timeout=300)
    return out / "digits"


def command(shards: Path, run_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", "--config", str(REPO / "configs" / "demo_digits_simclr.yaml"),
            f"data.shards={shards}", "data.image_size=16", "data.workers=0", "model.width=8",
            f"train.max_steps={STEPS}", "train.global_batch_size=8", "train.ckpt_every=100",
            f"train.log_every={LOG_EVERY}", "train.knn_every=0", f"train.run_root={run_root}", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_off_a_terminal_one_plain_line_per_log_window(shards, tmp_path):
    """train.progress=true (the default) but stdout and stderr are files: lines, no bar."""
    out = subprocess.run(command(shards, tmp_path / "runs"), cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [m for m in map(LINE.match, out.stdout.splitlines()) if m]
    assert [(int(m[1]), int(m[2])) for m in lines] == [(2, 50), (4, 100)], out.stdout
    assert "\r" not in out.stdout + out.stderr and "step/s" not in out.stderr  # no bar redrawn into a log file


@pytest.mark.slow
def test_on_a_terminal_the_bar_and_no_lines(shards, tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(command(shards, tmp_path / "runs"), cwd=REPO, env=ENV, stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(300) == 0, seen[-3000:]
    text = seen.decode(errors="replace")
    assert re.search(r"\b4/4 \[", text) and "step/s" in text and "\r" in text, text[-2000:]  # tqdm, redrawn
    assert not any(LINE.match(line.strip("\r")) for line in text.splitlines()), text[-2000:]


def test_progress_line_eta_is_the_window_pace_times_the_steps_left():
    values = {"loss": 4.12341, "images_per_s": 811.6, "time/data_wait_fraction": 0.034, "time/step": 0.5}
    assert progress_line(40, 300, 1, values) == (
        "step 40/300 (13%) | epoch 2 | loss 4.1234 | 812 img/s | data wait 3% | ETA 0:02:10")
