"""FSDP2 against DDP on real gloo ranks (ViT, 32 px), and its checkpoints resharded across world sizes.

Runs (torchrun, in this order): W=2 trains; W=4 trains and loads W=2's checkpoint (2 -> 4); W=2 loads
W=4's (4 -> 2); W=1 loads W=4's (4 -> 1). tests/trainer/fsdp2_worker.py says what each writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
EPS32 = torch.finfo(torch.float32).eps
# FSDP2 and DDP run the same forward on the same weights; they differ in the order in which the W ranks'
# gradients are summed (reduce-scatter vs all-reduce) and in how the clipping norm is summed: a relative
# W x eps32 per gradient element. Over 3 SGD steps (lr 0.05, momentum 0.9, gradient norm clipped to 1)
# that moves weights of size <= ~1 by <= 3 steps x 10 (momentum) x 0.05 x 4 x eps32 ~ 1e-7 plus the
# rounding of the weights themselves (3 x eps32 ~ 4e-7); 1e-5 leaves 20x for the steps' amplification.
ATOL = 1e-5


def torchrun(world: int, out: Path, *args: str) -> None:
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
           str(HERE / "fsdp2_worker.py"), str(out), *args]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp2")
    w2, w4, w2_load, w1_load = (root / n for n in ("w2", "w4", "w2_load", "w1_load"))
    torchrun(2, w2, "train")
    torchrun(4, w4, "train", str(w2))
    torchrun(2, w2_load, "load", str(w4))
    torchrun(1, w1_load, "load", str(w4))
    return {"w2": w2, "w4": w4, "w2_load": w2_load, "w1_load": w1_load}


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("world", ["w2", "w4"])
@pytest.mark.parametrize("variant", ["plain", "ema"])
def test_fsdp2_trains_what_ddp_trains(runs, world, variant):
    ddp, fsdp = load(runs[world] / f"{variant}_ddp.pt"), load(runs[world] / f"{variant}_fsdp2.pt")
    assert fsdp["loss"] == pytest.approx(ddp["loss"], rel=ATOL, abs=ATOL)
    assert fsdp["loss"][0] != pytest.approx(fsdp["loss"][-1], rel=1e-3)  # the steps changed the weights
    assert set(fsdp["weights"]) == set(ddp["weights"])
    assert any(k.startswith("teacher.") for k in fsdp["weights"]) == (variant == "ema")
    for name, weight in ddp["weights"].items():
        torch.testing.assert_close(fsdp["weights"][name], weight, rtol=0, atol=ATOL, msg=name)
    # every block and the head its own unit (the method's shard_units), the teacher's as the student's
    units = ["backbone.blocks.0", "backbone.blocks.1", "head"]
    assert fsdp["units"] == sorted(units + [f"teacher.{u}" for u in units] * (variant == "ema")) and ddp["units"] == []
    # rank 0 holds about 1/W of the parameters (dim 0 split into W shards, padded), DDP all of them
    world_size = int(world[1:])
    assert fsdp["local_numel"] <= ddp["local_numel"] / world_size * 1.1


@pytest.mark.slow
@pytest.mark.parametrize(("loaded", "saved"), [("w4", "w2"), ("w2_load", "w4"), ("w1_load", "w4")])
@pytest.mark.parametrize("variant", ["plain", "ema"])
def test_checkpoint_resumes_on_another_world_size(runs, loaded, saved, variant):
    """Weights (EMA teacher included) and optimizer state (momentum) come back exactly, resharded."""
    original = load(runs[saved] / f"{variant}_fsdp2.pt")
    got = load(runs[loaded] / f"{variant}_from_{saved}.pt")
    assert set(got["weights"]) == set(original["weights"])
    for name, weight in original["weights"].items():
        assert torch.equal(got["weights"][name], weight), name
    assert set(got["optimizer"]) == set(original["optimizer"]) and original["optimizer"]
    for name, state in original["optimizer"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(got["optimizer"][name][key]), torch.as_tensor(value)), (name, key)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["w2", "w4", "w2_load", "w1_load"])
def test_shutdown_frees_the_process_group(runs, run):
    """trainer.dist.shutdown joins gloo's threads: DTensor's caches held the group (through the mesh) past
    destroy_process_group, and its worker thread, still releasing the last barrier's tensors when Python
    finalized, was killed taking the GIL: SIGABRT, "terminate called without an active exception"."""
    files = sorted(runs[run].glob("threads_rank*.json"))
    assert len(files) == int(run[1])
    for path in files:
        threads = json.loads(path.read_text())
        assert threads and not [t for t in threads if "gloo" in t], (path.name, threads)


def test_batchnorm_and_lars_are_refused_naming_the_layer_and_key():
    from trainer.config import Config, EngineConfig, ModelConfig, OptimConfig, TrainConfig
    from trainer.dist import DistContext
    from trainer.engine import build_engine, make_plan
    from trainer.methods import METHODS

    ctx = DistContext()
    for optim, match in (("adamw", r"backbone\.bn1 \(BatchNorm2d\)"), ("lars", "optim.name = lars")):
        cfg = Config(method=METHODS["rotnet"].Config(), model=ModelConfig(width=8, small_stem=True),
                     optim=OptimConfig(name=optim), engine=EngineConfig(name="fsdp2"),
                     train=TrainConfig(global_batch_size=8))
        method = METHODS["rotnet"](cfg.method, cfg.model, cfg.data.image_size)
        if optim == "lars":  # a model FSDP2 can shard, so the optimizer is what is refused
            method = torch.nn.Sequential(torch.nn.Linear(4, 4))
        plan = make_plan(cfg.train, cfg.optim, cfg.engine, 1, ctx.device, num_samples=32)
        with pytest.raises(ValueError, match=match):
            build_engine(cfg.engine, cfg.optim, plan, method, ctx, nonfinite=cfg.train.nonfinite)
