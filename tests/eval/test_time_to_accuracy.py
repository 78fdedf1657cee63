"""The time-to-accuracy benchmark's parts: the ratio, the ImageFolder export the peer reads, the peer's
backbone against ours, taking turns (a frozen process makes no progress), and, where the peer
environment exists (`make bench-env`), a tiny end-to-end run on digits."""

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import webdataset as wds
from PIL import Image

from benchmarks.peer_lightly import resnet18
from benchmarks.time_to_accuracy import Turns, export_imagefolder, time_to_accuracy_ratio
from trainer.config import ModelConfig
from trainer.models import build_backbone

REPO = Path(__file__).resolve().parents[2]
PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"


def curve(points):
    return [{"cum_wall_s": t, "knn_top1": a} for t, a in points]


def test_ratio_is_our_first_time_at_the_peers_final_accuracy_over_its_total():
    peer = curve([(100.0, 0.70), (200.0, 0.80)])
    ours = curve([(40.0, 0.75), (80.0, 0.80), (120.0, 0.85)])  # reaches 0.80 exactly at 80 s
    got = time_to_accuracy_ratio(ours, peer)
    assert got == {"target_knn_top1": 0.80, "ours_time_to_target_s": 80.0, "lightly_wall_s": 200.0,
                   "time_to_accuracy_ratio": 0.4}
    never = time_to_accuracy_ratio(curve([(40.0, 0.6), (80.0, 0.79)]), peer)
    assert never["ours_time_to_target_s"] is None and never["time_to_accuracy_ratio"] is None


def test_export_writes_the_shards_bytes_as_an_imagefolder_tree(tmp_path):
    rng = np.random.default_rng(0)
    shards = tmp_path / "shards"
    shards.mkdir()
    pixels, entries = {}, []
    for k in range(2):
        tar = shards / f"train-{k:06d}.tar"
        with wds.TarWriter(str(tar)) as writer:  # another library writes the tars export reads with tarfile
            for i in range(5 * k, 5 * k + 5):
                image = rng.integers(0, 256, (6, 6), dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(image, "L").save(buffer, format="PNG")
                writer.write({"__key__": f"s{i:03d}", "png": buffer.getvalue(), "cls": str(i % 3)})
                pixels[f"s{i:03d}"] = (image, i % 3)
        entries.append({"file": tar.name, "index": tar.stem + ".idx", "num_samples": 5, "sha256": "unused"})
    (shards / "manifest.json").write_text(json.dumps({
        "dataset": "fixture", "classes": ["0", "1", "2"], "class_names": {"0": "a", "1": "b", "2": "c"},
        "splits": {"train": {"num_samples": 10, "labeled": True, "shards": entries}}, "image_size": 6,
        "format": "png", "source": {}}))
    root = export_imagefolder(shards, "train", tmp_path / "tree")
    folder = torchvision.datasets.ImageFolder(str(root), loader=Image.open)
    assert len(folder) == 10 and folder.classes == ["0", "1", "2"]
    for (path, label), (image, _) in zip(folder.samples, folder):
        want, want_label = pixels[Path(path).stem]
        assert label == want_label
        np.testing.assert_array_equal(np.asarray(image), want)  # lossless: the same pixels, not re-encoded
    assert export_imagefolder(shards, "train", tmp_path / "tree") == root  # a rerun reuses the tree


@pytest.mark.parametrize("width, small_stem", [(8, True), (64, False)])
def test_peer_backbone_is_ours_parameter_for_parameter(width, small_stem):
    peer = resnet18(width, small_stem)
    ours, dim = build_backbone(ModelConfig(width=width, small_stem=small_stem), 16)
    ours.load_state_dict(peer.state_dict(), strict=True)  # same names and shapes, nothing missing or extra
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        peer.eval(), ours.eval()
        # identical weights and modules: identical arithmetic, so equal to the last bit
        assert torch.equal(peer(x), ours(x)) and peer(x).shape == (2, dim)


def test_a_turn_runs_until_its_artifact_then_freezes_the_process(tmp_path):
    ticks, artifact = tmp_path / "ticks", tmp_path / "done"
    child = ("import time, pathlib\n"
             f"t, a = pathlib.Path({str(ticks)!r}), pathlib.Path({str(artifact)!r})\n"
             "for i in range(10**6):\n"
             "    t.write_text(str(i))\n"
             "    if i == 20: a.touch()\n"
             "    time.sleep(0.01)\n")
    turns = Turns("child", [sys.executable, "-c", child], tmp_path / "child.log", env={})
    try:
        time.sleep(0.3)
        assert not ticks.exists()  # started frozen: nothing runs before its first turn
        wall = turns.turn(artifact)
        assert wall >= 0.2  # 20 ticks of 10 ms at least
        time.sleep(0.1)  # a tick in flight when SIGSTOP arrived lands within this
        frozen_at = ticks.read_text()
        time.sleep(0.3)  # 30 ticks' time
        assert ticks.read_text() == frozen_at
    finally:
        turns.finish(completed=False)  # an interrupted job is killed, group and all, not resumed
    assert turns.proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="no peer environment: make bench-env")
def test_end_to_end_on_tiny_digits(tmp_path):
    def run(*argv):
        subprocess.run([sys.executable, *argv], check=True, cwd=REPO, capture_output=True, text=True, timeout=280)

    run("-m", "data_prep", "digits", "--out", str(tmp_path / "shards"), "--size", "16", "--max-samples", "200")
    run("-m", "benchmarks.time_to_accuracy", "--config", "configs/demo_digits_simclr.yaml", "--epochs", "2",
        "--threads", "1", "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out"),
        f"data.shards={tmp_path / 'shards' / 'digits'}", "data.image_size=16", "model.width=8",
        "train.global_batch_size=64", "data.workers=0")
    doc = json.loads(next((tmp_path / "out").glob("time_to_accuracy_*.json")).read_text())
    assert [(r["impl"], r["epoch"]) for r in doc["rows"]] == [("ours", 1), ("lightly", 1), ("ours", 2), ("lightly", 2)]
    assert all(0.0 <= r["knn_top1"] <= 1.0 and r["wall_s"] > 0 for r in doc["rows"])
    ours = [r for r in doc["rows"] if r["impl"] == "ours"]
    peer = [r for r in doc["rows"] if r["impl"] == "lightly"]
    assert doc["time_to_accuracy_ratio"] == time_to_accuracy_ratio(ours, peer)["time_to_accuracy_ratio"]
    assert doc["meta"]["params"]["batch_size"] == 64 and doc["meta"]["machine"]["cores"] >= 1
