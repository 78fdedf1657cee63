"""`python -m trainer train` end to end on the embedded digits shards (tiny BYOL, 16 px, batch 8):
bit-identical resume (data position and EMA target included) with a truncated checkpoint skipped,
SIGTERM -> checkpoint + exit 75 -> restart, TensorBoard events, and config errors before any
process group starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(root)], env=ENV, check=True,
                   capture_output=True, timeout=120)
    (root / "byol.yaml").write_text(f"""
_base_: [{REPO}/configs/datasets/digits.yaml, {REPO}/configs/methods/byol.yaml]
data: {{shards: {root}/digits, image_size: 16, workers: 0}}
model: {{width: 8}}
method: {{proj_hidden_dim: 16, proj_output_dim: 8, pred_hidden_dim: 16}}
optim: {{warmup_epochs: 0.01}}
train: {{run_root: {root}/runs, global_batch_size: 8, max_steps: 6, log_every: 1, ckpt_every: 3,
         keep_last: 5, progress: false}}
""")
    return root


def train(workdir: Path, *overrides: str, env: dict | None = None, timeout: int = 300):
    cmd = [sys.executable, "-m", "trainer", "train", "--config", str(workdir / "byol.yaml"), *overrides]
    return subprocess.run(cmd, check=False, env=env or ENV, capture_output=True, text=True, timeout=timeout)


def metrics(run: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def full_run(workdir):
    proc = train(workdir, "train.name=full")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir / "runs" / "full"


@pytest.mark.slow
def test_resume_is_bit_identical_and_skips_a_truncated_checkpoint(workdir, full_run):
    ckpts = full_run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000003", "step_00000006"]
    run = workdir / "runs" / "resumed"
    shutil.copytree(full_run, run)
    shutil.rmtree(run / "checkpoints" / "step_00000006")
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 3]
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    broken = run / "checkpoints" / "step_00000005"  # newer than step 3, but truncated mid-file
    broken.mkdir()
    data = (ckpts / "step_00000006" / "state.pt").read_bytes()
    (broken / "state.pt").write_bytes(data[: len(data) // 2])

    proc = train(workdir, "train.name=resumed")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"skipping unreadable checkpoint {broken / 'state.pt'}" in proc.stderr
    assert "resumed at step 3 (epoch 0, step 3 in it)" in proc.stdout

    full, resumed = metrics(full_run), metrics(run)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        for key in ("loss", "byol", "probe/loss", "z_std", "tau", "lr"):
            assert resumed[step][key] == full[step][key], (step, key)  # exact float equality
    assert full[4]["loss"] != full[5]["loss"]
    a = torch.load(ckpts / "step_00000006" / "state.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "step_00000006" / "state.pt", weights_only=True)
    assert any(k.startswith("target_backbone.") for k in a["model"])
    for section in ("model", "probe"):
        flat_a, flat_b = torch.utils._pytree.tree_flatten(a[section])[0], torch.utils._pytree.tree_flatten(b[section])[0]
        assert len(flat_a) == len(flat_b)
        for x, y in zip(flat_a, flat_b):
            assert torch.equal(x, y) if torch.is_tensor(x) else x == y
    assert a["samples_in_epoch"] == 6 * 8 and a["epoch"] == 0  # 6 steps of the global batch 8


@pytest.mark.slow
def test_tensorboard_reader_finds_the_scalars(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(full_run / "tb"))
    events.Reload()
    tags = events.Tags()
    for tag in ("loss", "byol", "lr", "tau", "probe/acc", "probe/loss", "z_std", "z_rank", "images_per_s",
                "time/data_wait_fraction", "time/step", "nonfinite_skipped"):
        assert tag in tags["scalars"], tag
    assert "views/view0" in tags["images"] and "views/view1" in tags["images"]
    logged = metrics(full_run)
    # TensorBoard stores float32: the logged value rounded once, within a unit roundoff (eps32 / 2) of itself
    assert [(e.step, pytest.approx(e.value, rel=EPS32 / 2, abs=0)) for e in events.Scalars("loss")] == [
        (s, logged[s]["loss"]) for s in sorted(logged)]


@pytest.mark.slow
def test_sigterm_saves_exits_75_and_restart_continues(workdir):
    cmd = [sys.executable, "-m", "trainer", "train", "--config", str(workdir / "byol.yaml"), "train.name=preempt",
           "train.max_steps=500", "train.ckpt_every=1000"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = workdir / "runs" / "preempt"
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").is_file():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    saved = sorted((run / "checkpoints").glob("step_*"))
    assert len(saved) == 1
    step = int(saved[0].name.split("_")[1])
    assert f"preempted at step {step}" in out and step < 500

    again = train(workdir, "train.name=preempt", f"train.max_steps={step + 2}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed at step {step}" in again.stdout
    assert max(metrics(run)) == step + 2


@pytest.mark.slow
@pytest.mark.parametrize("override,key", [("train.epochz=3", "train.epochz"), ("train.epochs=many", "train.epochs")])
def test_config_error_exits_2_before_any_process_group(workdir, override, key):
    # as rank 0 of 2: had a process group started, this would wait for a rank 1 that never comes
    env = {**ENV, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29533"}
    proc = train(workdir, override, env=env, timeout=60)
    assert proc.returncode == 2
    assert key in proc.stderr and "config error" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_saves_nothing(workdir):
    proc = train(workdir, "train.name=nan", "optim.base_lr=1e38", "optim.warmup_epochs=0")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: non-finite loss at step" in proc.stderr and "Traceback" not in proc.stderr
    first_bad = int(proc.stderr.split("non-finite loss at step ")[1].split()[0])
    run = workdir / "runs" / "nan"
    assert all(int(p.name.split("_")[1]) < first_bad for p in (run / "checkpoints").glob("step_*"))
    logged = metrics(run)
    assert all(row["loss"] == row["loss"] for row in logged.values()) and max(logged, default=0) < first_bad


@pytest.mark.slow
def test_deepspeed_zero1_checkpoint_resumes_exactly(workdir):
    from trainer.checkpoint import load_model_weights

    ds = ("engine.name=deepspeed", "engine.zero_stage=1", "optim.name=sgd", "train.max_steps=4", "train.ckpt_every=2")
    proc = train(workdir, "train.name=ds_full", *ds)
    assert proc.returncode == 0, proc.stderr[-4000:]
    full_run, run = workdir / "runs" / "ds_full", workdir / "runs" / "ds_resumed"
    assert (full_run / "checkpoints" / "step_00000004" / "deepspeed").is_dir()
    shutil.copytree(full_run, run)
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    proc = train(workdir, "train.name=ds_resumed", *ds)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed at step 2" in proc.stdout
    full, resumed = metrics(full_run), metrics(run)
    assert [full[s]["loss"] for s in (3, 4)] == [resumed[s]["loss"] for s in (3, 4)]
    cfg, weights = load_model_weights(full_run)
    assert cfg.engine.name == "deepspeed" and "target_projector.module.0.weight" in weights
