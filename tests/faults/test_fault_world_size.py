"""A job requeued on another number of processes: FSDP2 (MAE, a ViT) and DDP (SimCLR) checkpoints written
by 2 ranks resume on 1 and go on to the end; on the same world size the FSDP2 resume is exact."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from fault_harness import REPO, losses, metric_lines, resumed_step, spawn_ranks, tiny_args

MAE_CONFIG = REPO / "configs" / "demo_digits_mae.yaml"
STEPS = 6


def mae_args(shards: Path, run_root: Path, name: str, engine: str = "fsdp2") -> list[str]:
    """The tiny run's settings on the MAE demo layer (a ViT-Tiny, 4 px patches of 16 px images)."""
    args = tiny_args(shards, run_root, name, f"engine.name={engine}", "method.decoder_dim=32", "method.decoder_depth=1",
                     "method.decoder_heads=2", steps=STEPS)
    at = args.index("--config") + 1
    args[at] = str(MAE_CONFIG)
    return [a for a in args if a != "model.width=8"]  # a ViT has no ResNet width


def run(args: list[str], logs: Path, tag: str, world: int, timeout: float = 300):
    job = spawn_ranks(args, logs, tag, world_size=world)
    try:
        codes = job.wait(timeout)
    finally:
        job.kill()
    assert codes == [0] * world, job.err(0)[-4000:]
    return job


def keep_only(run_dir: Path, step: int) -> None:
    """The run folder as a preempted job leaves it at `step`: its checkpoint, and the metrics up to it."""
    for ckpt in (run_dir / "checkpoints").glob("step_*"):
        if int(ckpt.name[5:]) != step:
            shutil.rmtree(ckpt)


@pytest.fixture(scope="module")
def references(digits_shards, tmp_path_factory):
    """Uninterrupted 2-rank MAE runs, by engine (the DDP one only when asked for)."""
    root, done = tmp_path_factory.mktemp("mae_reference"), {}

    def get(engine: str) -> Path:
        if engine not in done:
            run(mae_args(digits_shards, root / "runs", engine, engine), root / "logs", engine, world=2)
            done[engine] = root / "runs" / engine
        return done[engine]
    return get


@pytest.fixture
def fsdp2_reference(references):
    return references("fsdp2")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "ddp"])
def test_resume_on_the_same_world_size_is_exact(engine, references, digits_shards, tmp_path):
    run_dir = tmp_path / "runs" / "again"
    shutil.copytree(references(engine), run_dir, ignore=shutil.ignore_patterns("tb", "metrics.jsonl", ".lock"))
    keep_only(run_dir, 2)
    job = run(mae_args(digits_shards, tmp_path / "runs", "again", engine), tmp_path / "logs", "again", world=2)
    assert resumed_step(job.out(0)) == 2
    reference = losses(references(engine))
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert losses(run_dir) == {s: reference[s] for s in range(3, STEPS + 1)}  # bit-identical


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "ddp"])
def test_checkpoint_of_two_ranks_resumes_on_one(engine, fsdp2_reference, digits_shards, tmp_path):
    if engine == "fsdp2":
        saved, args_of = fsdp2_reference, mae_args
    else:
        run(tiny_args(digits_shards, tmp_path / "runs", "ddp2", steps=STEPS), tmp_path / "logs", "ddp2", world=2)
        saved, args_of = tmp_path / "runs" / "ddp2", lambda s, r, n: tiny_args(s, r, n, steps=STEPS)
    run_dir = tmp_path / "runs" / "one"
    shutil.copytree(saved, run_dir, ignore=shutil.ignore_patterns("tb", "metrics.jsonl", ".lock"))
    keep_only(run_dir, 4)
    job = run(args_of(digits_shards, tmp_path / "runs", "one"), tmp_path / "logs", "one", world=1)
    assert resumed_step(job.out(0)) == 4
    assert "saved by 2 ranks, resumed on 1, global batch 8" in job.err(0)
    steps = [m["step"] for m in metric_lines(run_dir)]
    assert steps == [5, 6]  # the run went on from its checkpoint to the end, on one process
    assert all(math.isfinite(v) for v in losses(run_dir).values())
