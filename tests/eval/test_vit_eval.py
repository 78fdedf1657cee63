"""A ViT encoder (MAE on digits) through the same eval commands as a ResNet: linear probe, fine-tuning,
the report with MAE's reconstructions logged in pretraining."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from trainer.eval.cli import main as eval_main

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(*args):
    out = subprocess.run([sys.executable, *args], check=False, cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit_eval")
    run("-m", "data_prep", "digits", "--out", str(root / "shards"), "--size", "16", "--max-samples", "300")
    run("-m", "trainer", "train", "--config", "configs/demo_digits_mae.yaml", f"data.shards={root / 'shards' / 'digits'}",
        "data.image_size=16", "data.workers=0", "method.decoder_dim=32", "method.decoder_depth=1",
        "method.decoder_heads=2", "train.max_steps=2", "train.global_batch_size=32", "train.ckpt_every=2",
        "train.knn_every=0", "train.progress=false", f"train.run_root={root / 'runs'}", "train.name=mae")
    return root / "runs" / "mae"


def test_pretraining_wrote_the_reconstructions(run_dir):
    with Image.open(run_dir / "images" / "reconstructions.png") as image:
        # rows: original, masked, reconstructed, 8 images of 16 px each (torchvision's 2 px padding)
        assert image.size == (8 * 18 + 2, 3 * 20)  # one grid per row, each padded by 2 px all round


def test_linear_probe_and_finetune_of_a_vit(run_dir):
    assert eval_main(["linear", "--run", str(run_dir), "--epochs", "2"]) == 0
    linear = json.loads((run_dir / "eval" / "linear.json").read_text())
    assert 0.0 <= linear["top1"] <= 1.0
    assert eval_main(["finetune", "--run", str(run_dir), "--epochs", "1", "--fraction", "0.5"]) == 0
    finetune = json.loads(next((run_dir / "eval").glob("finetune*.json")).read_text())
    assert 0.0 <= finetune["top1"] <= 1.0
    assert eval_main(["report", "--run", str(run_dir)]) == 0
    report = (run_dir / "eval" / "report.md").read_text()
    assert "(pretraining_reconstructions.png)" in report
    assert (run_dir / "eval" / "pretraining_reconstructions.png").is_file()
