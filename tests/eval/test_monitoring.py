"""Monitoring says the truth: the kNN logged during pretraining equals the offline `eval knn` of the final
checkpoint, the run's report puts the raw-pixel baseline (checked against a float64 kNN written out
here) beside the encoder's scores, and it scores the online probe's final head on the test split
(checked against the head applied in float64 here) beside the offline linear probe."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import read_latest
from trainer.dist import DistContext
from trainer.eval.cli import main as eval_main
from trainer.eval.encoder import load_encoder
from trainer.eval.features import split_images
from trainer.eval.plots import read_metrics
from trainer.registry import load_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in (["-m", "data_prep", "digits", "--out", str(root / "shards"), "--size", "16", "--max-samples", "300"],
                 ["-m", "trainer", "train", "--config", "configs/demo_digits_simclr.yaml",
                  f"data.shards={root / 'shards' / 'digits'}", "data.image_size=16", "data.workers=0", "model.width=8",
                  "train.epochs=2", "train.global_batch_size=32", "train.knn_every=1", "train.ckpt_every=1000",
                  "train.progress=false", f"train.run_root={root / 'runs'}", "train.name=tiny"]):
        out = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=240, env=env,
                             check=False)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return root / "runs" / "tiny"


def float64_knn_accuracy(train_x, train_y, test_x, test_y, k, temperature):
    """Weighted kNN (InstDisc vote) on flattened inputs, in float64 numpy."""
    a = train_x.reshape(len(train_x), -1).double().numpy()
    b = test_x.reshape(len(test_x), -1).double().numpy()
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    sims = b @ a.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(b), int(train_y.max()) + 1))
    for i, row in enumerate(top):
        np.add.at(scores[i], train_y.numpy()[row], np.exp(sims[i, row] / temperature))
    return float((scores.argmax(1) == test_y.numpy()).mean())


def test_logged_knn_equals_offline_knn_of_the_final_checkpoint(run_dir):
    records = read_metrics(run_dir / "metrics.jsonl")
    logged = [r for r in records if "knn/acc" in r]
    assert len(logged) == 2  # knn_every=1 over 2 epochs
    assert eval_main(["knn", "--run", str(run_dir)]) == 0
    offline = json.loads((run_dir / "eval" / "knn.json").read_text())
    # same weights, same eval view, same evaluator: identical features in fp32 on the same machine and
    # thread count, so identical votes; one test image of slack for a float-order near-tie
    assert abs(logged[-1]["knn/acc"] - offline["top1"]) <= 1 / offline["test_samples"] + 1e-9
    assert logged[-1]["step"] == max(r["step"] for r in records)


def test_report_shows_pixels_beside_the_encoder_and_the_monitoring_check(run_dir):
    assert eval_main(["report", "--run", str(run_dir)]) == 0
    report = (run_dir / "eval" / "report.md").read_text()
    cfg = load_config(run_dir / "config.yaml")
    ctx = DistContext()
    (x, y), (xt, yt) = (split_images(cfg.data, s, ctx, 64) for s in ("train", "test"))
    want = float64_knn_accuracy(x, y, xt, yt, cfg.eval.knn_k, cfg.eval.knn_temperature)
    shown = re.search(r"\| raw pixels: the same weighted kNN \| ([\d.]+)% \|", report)
    assert shown and float(shown.group(1)) == pytest.approx(100 * want, abs=0.05 + 100 / len(yt))
    assert re.search(r"\| raw pixels: logistic regression \(scikit-learn\) \| [\d.]+% \|", report)
    assert "| kNN logged during pretraining (step" in report and "online linear probe" in report
    assert "Monitoring check: the kNN logged at the last step agrees with the offline kNN" in report


def test_report_scores_the_online_probe_head_on_the_test_split(run_dir):
    assert eval_main(["linear", "--run", str(run_dir), "--epochs", "5"]) == 0
    assert eval_main(["report", "--run", str(run_dir)]) == 0
    report = (run_dir / "eval" / "report.md").read_text()
    head = read_latest(run_dir)[1]["probe"]["head"]
    encoder = load_encoder(run_dir, torch.device("cpu"))
    xt, yt = split_images(encoder.cfg.data, "test", DistContext(), 64)
    with torch.no_grad():
        features = encoder.backbone(xt).double().numpy()
    logits = features @ head["weight"].double().numpy().T + head["bias"].double().numpy()
    want = float((logits.argmax(1) == yt.numpy()).mean())
    shown = re.search(r"\| online linear probe's final head on the test split \| ([\d.]+)% \|", report)
    # fp32 features and logits against float64: a near-tie may flip, one test image each way, plus the
    # report's rounding to 0.1 point
    assert shown and float(shown.group(1)) == pytest.approx(100 * want, abs=0.05 + 100 / len(yt))
    linear = json.loads((run_dir / "eval" / "linear.json").read_text())["top1"]
    assert f"the offline linear probe on the final features {100 * linear:.1f}%" in report
