"""Shared by the launch tests: the tiny digits run's overrides and readers of a run directory."""

from __future__ import annotations

import json
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
CONFIG = REPO / "configs" / "demo_digits_simclr.yaml"


def tiny_run(shards: Path, run_root: Path, max_steps: int = 6, ckpt_every: int = 2) -> list[str]:
    """Overrides that make the digits demo a run of seconds on the CPU (global batch 16, 16 px, width 8)."""
    return [
        "--config", str(CONFIG),
        f"data.shards={shards}", "data.image_size=16", "data.workers=0",
        "model.width=8", f"train.max_steps={max_steps}", "train.global_batch_size=16",
        f"train.ckpt_every={ckpt_every}", "train.log_every=1", "train.progress=false", "train.knn_every=0",
        f"train.run_root={run_root}",
    ]


def plan_of(log: str) -> dict:
    """The derived sizes the trainer logs once at start (`plan: {...}`, world_size, the DeepSpeed dict...)."""
    line = next(ln for ln in log.splitlines() if ln.startswith("plan: "))
    return json.loads(line.removeprefix("plan: "))


def metric_steps(run_dir: Path) -> list[int]:
    """The `step` of every line of runs/<name>/metrics.jsonl, in file order (appended across restarts)."""
    return [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def tensorboard_steps(run_dir: Path, tag: str = "loss") -> list[int]:
    """Steps of one scalar as TensorBoard's own reader sees them in runs/<name>/tb."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
