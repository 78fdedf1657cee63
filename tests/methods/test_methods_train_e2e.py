"""The newer methods through `python -m trainer train` on the embedded digits shards (ResNet-18 at width 8,
16 px, batch 8): one process with a bit-identical resume, two gloo ranks under torchrun, and DeepSpeed
(ZeRO 0 with a torch optimizer, so nothing is JIT-compiled) running or refusing with a clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
NEW_METHODS = ("barlow_twins", "simsiam", "mocov3", "dino")
TINY = {"barlow_twins": "{proj_hidden_dim: 16, proj_output_dim: 16}",
        "simsiam": "{proj_hidden_dim: 16, proj_output_dim: 16, pred_hidden_dim: 8}",
        "mocov3": "{proj_hidden_dim: 16, proj_output_dim: 8, pred_hidden_dim: 16}",
        "dino": "{hidden_dim: 16, bottleneck_dim: 8, out_dim: 32, freeze_last_layer: 0.25}"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods_e2e")
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(root)], env=ENV, check=True,
                   capture_output=True, timeout=120)
    return root


def config(root: Path, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(f"""
_base_: [{REPO}/configs/datasets/digits.yaml, {REPO}/configs/methods/{name}.yaml]
data: {{shards: {root}/digits, image_size: 16, workers: 0}}
aug: {{local_crops: 1, local_size: 8}}
model: {{width: 8}}
method: {TINY[name]}
optim: {{warmup_epochs: 0.01}}
train: {{run_root: {root}/runs, global_batch_size: 8, max_steps: 4, log_every: 1, ckpt_every: 2, progress: false}}
""")
    return path


def train(cfg: Path, *overrides: str, launcher: tuple[str, ...] = ()):
    cmd = [sys.executable, *(launcher or ("-m",)), "trainer", "train", "--config", str(cfg), *overrides]
    return subprocess.run(cmd, check=False, env=ENV, capture_output=True, text=True, timeout=600)


def metrics(run: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_METHODS)
def test_trains_and_resumes_bit_identically(shards, name):
    cfg = config(shards, name)
    proc = train(cfg, f"train.name={name}_full")
    assert proc.returncode == 0, proc.stderr[-4000:]
    full_run, run = shards / "runs" / f"{name}_full", shards / "runs" / f"{name}_resumed"
    shutil.copytree(full_run, run)
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 2]
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    proc = train(cfg, f"train.name={name}_resumed")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed at step 2" in proc.stdout
    full, resumed = metrics(full_run), metrics(run)
    assert all(full[s]["loss"] == full[s]["loss"] for s in full)  # finite, not NaN
    for step in (3, 4):
        assert {k: v for k, v in resumed[step].items() if not k.startswith("time/") and k != "images_per_s"} == {
            k: v for k, v in full[step].items() if not k.startswith("time/") and k != "images_per_s"}, step
    a = torch.load(full_run / "checkpoints" / "step_00000004" / "state.pt", weights_only=True)["model"]
    b = torch.load(run / "checkpoints" / "step_00000004" / "state.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_METHODS)
def test_two_gloo_ranks_and_deepspeed(shards, name):
    cfg = config(shards, name)
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m")
    proc = train(cfg, f"train.name={name}_ddp2", "train.max_steps=2", launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 processes on cpu" in proc.stdout
    assert sorted(metrics(shards / "runs" / f"{name}_ddp2")) == [1, 2]
    proc = train(cfg, f"train.name={name}_ds", "train.max_steps=2", "engine.name=deepspeed", "optim.name=sgd")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(metrics(shards / "runs" / f"{name}_ds")) == [1, 2]


@pytest.mark.slow
def test_the_loop_warns_once_when_dino_collapses(shards):
    """Teacher temperatures of 1000 flatten the targets to uniform over the 32 prototypes (the cosines
    the head emits are within +-2 of the center) from the first step: the loop says so once, naming
    the step and the metric, and logs collapse = 1 in every window."""
    proc = train(config(shards, "dino"), "train.name=dino_collapsed", "method.teacher_temp=1000",
                 "method.warmup_teacher_temp=1000")
    assert proc.returncode == 0, proc.stderr[-4000:]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: step 1: teacher_entropy"), warnings
    assert [row["collapse"] for row in metrics(shards / "runs" / "dino_collapsed").values()] == [1.0] * 4


@pytest.mark.slow
def test_dino_vit_under_fsdp2_trains_what_ddp_trains(shards):
    """DINO on a ViT, two gloo ranks: FSDP2 (its blocks and both heads units of their own, the EMA teacher's
    gathered in a no-grad forward, the last-layer freeze dropping a sharded gradient) against DDP. SGD, as in
    tests/trainer/test_fsdp2.py, whose bound this shares: the engines differ only in the order the ranks'
    gradients are summed, a relative W x eps32 per element, which 4 steps amplify to well under 1e-5."""
    cfg = shards / "dino_vit.yaml"
    cfg.write_text(f"""
_base_: [{REPO}/configs/datasets/digits.yaml, {REPO}/configs/methods/dino.yaml]
data: {{shards: {shards}/digits, image_size: 16, workers: 0}}
aug: {{local_crops: 1, local_size: 8}}
model: {{backbone: "timm:vit_tiny_patch16_224", patch_size: 4, small_stem: false}}
method: {TINY["dino"]}
optim: {{name: sgd, base_lr: 1.6, warmup_epochs: 0.01}}
train: {{run_root: {shards}/runs, global_batch_size: 8, max_steps: 4, log_every: 1, ckpt_every: 4, progress: false}}
""")
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m")
    for engine in ("ddp", "fsdp2"):
        proc = train(cfg, f"train.name=dino_vit_{engine}", f"engine.name={engine}", launcher=launcher)
        assert proc.returncode == 0, proc.stderr[-4000:]
    ddp, fsdp2 = (metrics(shards / "runs" / f"dino_vit_{e}") for e in ("ddp", "fsdp2"))
    assert sorted(fsdp2) == [1, 2, 3, 4] and ddp[1]["loss"] != pytest.approx(ddp[4]["loss"], rel=1e-3)
    for step in ddp:
        assert fsdp2[step]["loss"] == pytest.approx(ddp[step]["loss"], rel=1e-5), step
    a, b = (torch.load(shards / "runs" / f"dino_vit_{e}" / "checkpoints" / "step_00000004" / "state.pt",
                       weights_only=True)["model"] for e in ("ddp", "fsdp2"))
    assert a.keys() == b.keys() and any(k.startswith("teacher_head.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
