"""Two real ranks (torchrun, gloo): every method with DDP, and DeepSpeed ZeRO 0/1/2 against DDP."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tolerance import rounding_bound

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "results.json"
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           str(HERE / "engine_worker.py"), str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_ranks_hold_identical_parameters_after_every_step(results):
    from engine_worker import SMALL

    assert {key.split("/")[0] for key in results} == set(SMALL)
    for key, record in results.items():
        assert len(record["loss"]) == 3
        assert max(record["rank_diff"]) == 0.0, key  # DDP/ZeRO broadcast the same update to every rank


# The float32 rounding of one step's update relative to its size: the gradient's chain (~20 layers of a
# width-8 ResNet-18 at 16 px, forward and backward, each a fan-in of at most 9 x 64 and a batch reduction
# of at most 4 rows x 16 x 16), 2 micro-batches x 2 ranks summed, and the clipping norm over every parameter.
UPDATE_CHAIN = 2 * 20 * (9 * 64 + 4 * 16 * 16) + 4


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_deepspeed_matches_ddp(results, method, stage):
    ds, ddp = results[f"{method}/deepspeed{stage}/deepspeed"], results[f"{method}/deepspeed{stage}/ddp"]
    assert ds["loss"][0] == ddp["loss"][0]  # the same weights and batches through the same float32 forward
    # Each engine rounds each update within delta of its size (SGD's momentum and AdamW's moments carry
    # relative errors over, they do not grow them), so after step k the parameters are within delta x the
    # distance travelled so far (first order: a few steps of norm lr x clip barely bend the gradient).
    delta = rounding_bound(torch.float32, 1.0, UPDATE_CHAIN + ddp["parameters"])
    travelled = list(itertools.accumulate(ddp["motion"]))
    assert len(ddp["weight_diff"]) == len(travelled) == 3 and min(ddp["motion"]) > 0  # the steps moved it
    for step, (diff, far) in enumerate(zip(ddp["weight_diff"], travelled)):
        assert diff <= delta * far, f"step {step}: parameters {diff:.3g} apart, bound {delta * far:.3g}"
