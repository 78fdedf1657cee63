"""End to end on a real tiny run: data_prep digits -> trainer train -> every eval command -> export.

Checks what a user reads: JSON with accuracies in [0, 1] and the documented keys, PNGs that PIL
opens, the report, the safetensors header; and that 2 ranks (torchrun, gloo) extract the same
features as 1 and score the same kNN accuracy.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from tolerance import rounding_bound

from trainer.eval.cli import main as eval_main
from trainer.eval.export import main as export_main
from trainer.eval.features import feature_cache_path

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(*args, env=None):
    out = subprocess.run([*args], check=False, cwd=REPO, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_e2e")
    run(sys.executable, "-m", "data_prep", "digits", "--out", str(root / "shards"), "--size", "16",
        "--max-samples", "400")
    run(sys.executable, "-m", "trainer", "train", "--config", "configs/demo_digits_simclr.yaml",
        f"data.shards={root / 'shards' / 'digits'}", "data.image_size=16", "data.workers=0", "model.width=8",
        "train.max_steps=3", "train.global_batch_size=32", "train.ckpt_every=3", "train.knn_every=0",
        "train.progress=false", f"train.run_root={root / 'runs'}", "train.name=tiny")
    return root / "runs" / "tiny"


def valid_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 50


def test_knn_one_rank_equals_two_ranks(run_dir):
    assert eval_main(["knn", "--run", str(run_dir)]) == 0
    one = json.loads((run_dir / "eval" / "knn.json").read_text())
    cached = torch.load(feature_cache_path(run_dir, "train"))
    feature_cache_path(run_dir, "train").unlink()
    feature_cache_path(run_dir, "test").unlink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run(str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2", "--master-port", str(port),
        "-m", "trainer", "eval", "knn", "--run-dir", str(run_dir), "--batch-size", "64")
    two = json.loads((run_dir / "eval" / "knn.json").read_text())
    gathered = torch.load(feature_cache_path(run_dir, "train"))
    assert torch.equal(gathered["labels"], cached["labels"]) and gathered["key"] == cached["key"]
    # per-sample features (eval-mode BatchNorm) in float32 from batches of another size, which BLAS may sum
    # in another order: the backbone's chain, ~20 layers of a width-8 ResNet-18 each a fan-in of <= 9 x 64
    bound = rounding_bound(torch.float32, cached["features"].abs().max().item(), 20 * 9 * 64)
    torch.testing.assert_close(gathered["features"], cached["features"], rtol=0, atol=bound)
    assert one["top1"] == two["top1"] and 0.0 <= one["top1"] <= 1.0
    assert one["train_samples"] == len(cached["labels"]) and one["k"] == 20  # the demo config's eval.knn_k


def test_label_efficiency_report_and_export(run_dir, tmp_path, capsys):
    assert eval_main(["label-efficiency", "--run", str(run_dir), "--fractions", "0.1,1",
                      "--finetune-epochs", "1", "--probe-steps", "20", "--epochs", "2"]) == 0
    study = json.loads((run_dir / "eval" / "label_efficiency.json").read_text())
    assert [r["fraction"] for r in study["rows"]] == [0.1, 1.0]
    for row in study["rows"]:
        assert all(0.0 <= row[k] <= 1.0 for k in ("ssl_linear", "ssl_finetune", "scratch"))
    counts = [r["labeled_samples"] for r in study["rows"]]
    train_size = len(torch.load(feature_cache_path(run_dir, "train"))["labels"])
    assert counts[0] < counts[1] == train_size - study["validation_samples"]
    assert set(study["all_labels"]) == {"knn", "linear", "pixel_logreg"}
    valid_png(run_dir / "eval" / "label_efficiency.png")

    assert eval_main(["report", "--run", str(run_dir)]) == 0
    report = (run_dir / "eval" / "report.md").read_text()
    for name in ("samples", "training_curves", "tsne", "label_efficiency"):
        valid_png(run_dir / "eval" / f"{name}.png")
        assert f"({name}.png)" in report
    assert f"{100 * study['rows'][0]['scratch']:.1f}%" in report

    out = tmp_path / "encoder.safetensors"
    assert export_main(["--run", str(run_dir), "--out", str(out)]) == 0
    assert "no plain torchvision equivalent" in capsys.readouterr().out  # width 8 is not torchvision's
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["width"]) == 8 and json.loads(f.metadata()["image_size"]) == 16


def test_class_subset_confusion_and_bad_class(run_dir, capsys):
    assert eval_main(["linear", "--run", str(run_dir), "--classes", "0,1,7", "--epochs", "3"]) == 0
    result = json.loads((run_dir / "eval" / "linear_0-1-7.json").read_text())
    test_labels = torch.load(feature_cache_path(run_dir, "test"))["labels"]
    assert result["classes"] == ["0", "1", "7"]
    matrix = torch.tensor(result["confusion"])
    assert matrix.shape == (3, 3)
    assert matrix.sum(1).tolist() == [int((test_labels == c).sum()) for c in (0, 1, 7)]
    assert result["top1"] == pytest.approx(matrix.diag().sum().item() / matrix.sum().item())
    valid_png(run_dir / "eval" / "linear_0-1-7_confusion.png")
    assert eval_main(["knn", "--run", str(run_dir), "--classes", "0,eleven"]) == 2
    assert "'eleven'" in capsys.readouterr().err


def test_a_read_only_run_folder_is_evaluated_into_out(run_dir, tmp_path):
    """Tests run as root, which writes through a-w modes, so read-only is checked as: nothing in the run
    folder changed (the feature cache lives outside it, the results go to --out)."""
    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in [run_dir, *run_dir.rglob("*")]}

    subprocess.run(["chmod", "-R", "a-w", str(run_dir)], check=True)
    try:
        before = snapshot()
        assert eval_main(["knn", "--run", str(run_dir), "--out", str(tmp_path / "results")]) == 0
        assert snapshot() == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(run_dir)], check=True)
    assert 0.0 <= json.loads((tmp_path / "results" / "knn.json").read_text())["top1"] <= 1.0
