"""Damaged shards: a flipped byte inside an image, a truncated shard, a missing shard, a corrupt JPEG.

The torch backend skips an undecodable sample and counts it (data.on_corrupt=skip) or stops naming the
shard and key (fail); a shard that is missing or cut short is refused when the loader is built, under
either policy; the DALI backend, which cannot skip, refuses any shard it cannot vouch for; and
`python -m data_prep verify` names the shard and the key of each problem.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fault_harness import REPO, clean_env, metric_lines, tiny_args

from data_prep.verify import verify_dataset
from data_prep.writer import sha256_file
from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.data.samples import SampleIndex
from trainer.data.sampling import Plan
from trainer.data.views import ViewSpec
from trainer.dist import DistContext

RESIZE = ViewSpec(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, gray_prob=0.0)
SAMPLE_FAULTS = ("flipped_byte", "corrupt_jpeg")
SHARD_FAULTS = ("truncated", "missing")


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fault_jpeg")
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(out), "--splits", "test",
                    "--format", "jpg", "--max-samples", "200", "--workers", "1"],
                   check=True, cwd=REPO, capture_output=True, timeout=300)
    return out / "digits"


def damage(src: Path, dst: Path, fault: str, sample: int | None = None) -> tuple[Path, str, str | None]:
    """Copy the dataset `src` to `dst` and damage it; returns (dataset, split, key or None of the bad sample).

    flipped_byte: one bit pattern inverted inside a PNG's IHDR chunk, whose CRC PIL checks (a flip in
    the compressed pixels can decode silently: only the shard's sha256 catches every flip); corrupt_jpeg: a JPEG whose headers are zeroed, as if the source file were damaged, so
    data_prep hashed it as it is; truncated: a shard cut to half its size; missing: a shard deleted.
    """
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    split = next(iter(manifest["splits"]))
    index = SampleIndex(dst, split)
    shard_id = {"flipped_byte": 1, "corrupt_jpeg": 0, "truncated": 2, "missing": 3}[fault]
    if sample is not None:
        shard_id = int(index.shard_ids[sample])
    shard = index.shards[shard_id]
    if fault in SHARD_FAULTS:
        if fault == "missing":
            shard.unlink()
        else:
            shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        return dst, split, None
    i = int((index.shard_ids == shard_id).nonzero()[0][5]) if sample is None else sample
    offset, size = int(index.offsets[i]), int(index.sizes[i])
    data = bytearray(shard.read_bytes())
    if fault == "flipped_byte":
        data[offset + 20] ^= 0xFF  # 8-byte signature, IHDR length and type, then its width field
    else:
        data[offset + 2 : offset + size // 2] = bytes(size // 2 - 2)
    shard.write_bytes(bytes(data))
    if fault == "corrupt_jpeg":
        manifest["splits"][split]["shards"][shard_id]["sha256"] = sha256_file(shard)
        (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst, split, index.keys[i]


def source(fault: str, digits_shards: Path, jpeg_shards: Path) -> Path:
    return jpeg_shards if fault == "corrupt_jpeg" else digits_shards


def loader(root: Path, split: str, backend: str = "torch", on_corrupt: str = "skip"):
    data = DataConfig(shards=str(root), split=split, backend=backend, workers=0, on_corrupt=on_corrupt)
    return build_loader(data, [RESIZE], DistContext(), batch_size=64, seed=0, train=False)


@pytest.mark.parametrize("fault", SAMPLE_FAULTS)
def test_torch_backend_skips_and_counts_a_bad_sample(fault, digits_shards, jpeg_shards, tmp_path):
    root, split, _ = damage(source(fault, digits_shards, jpeg_shards), tmp_path / "d", fault)
    batches = loader(root, split)
    seen = sum(len(b.labels) for b in batches.epoch(0))
    assert seen == batches.num_samples  # the bad sample's place is taken by the next good one
    assert batches.stats["corrupt_skipped"] == 1


@pytest.mark.parametrize("fault", SAMPLE_FAULTS)
def test_torch_backend_fails_fast_naming_shard_and_key(fault, digits_shards, jpeg_shards, tmp_path):
    root, split, key = damage(source(fault, digits_shards, jpeg_shards), tmp_path / "d", fault)
    with pytest.raises(ValueError) as failed:
        for _ in loader(root, split, on_corrupt="fail").epoch(0):
            pass
    shard = "train-000001.tar" if fault == "flipped_byte" else "test-000000.tar"
    assert shard in str(failed.value) and key in str(failed.value)


@pytest.mark.parametrize("on_corrupt", ["skip", "fail"])
@pytest.mark.parametrize("fault", SHARD_FAULTS)
def test_missing_or_truncated_shard_is_refused_when_the_loader_is_built(fault, on_corrupt, digits_shards, tmp_path):
    """Skipping would replace a whole shard by its neighbours' samples, each counted once per sample
    tried (a 100-sample hole counts thousands), so the loader refuses the dataset up front."""
    root, split, _ = damage(digits_shards, tmp_path / "d", fault)
    shard = "train-000002.tar" if fault == "truncated" else "train-000003.tar"
    with pytest.raises((ValueError, FileNotFoundError)) as refused:
        loader(root, split, on_corrupt=on_corrupt)
    assert shard in str(refused.value)


@pytest.mark.parametrize("fault", [*SAMPLE_FAULTS, *SHARD_FAULTS])
def test_dali_refuses_unverified_damaged_shards(fault, digits_shards, jpeg_shards, tmp_path):
    pytest.importorskip("nvidia.dali")
    root, split, key = damage(source(fault, digits_shards, jpeg_shards), tmp_path / "d", fault)
    with pytest.raises((ValueError, OSError)) as refused:
        loader(root, split, backend="dali")
    shard = {"flipped_byte": "train-000001", "corrupt_jpeg": "test-000000", "truncated": "train-000002",
             "missing": "train-000003"}[fault]
    assert f"{shard}.tar" in str(refused.value)
    if fault == "corrupt_jpeg":
        assert key in str(refused.value)


def test_dali_refuses_a_shard_changed_after_verify(digits_shards, tmp_path):
    """`verified: true` in the manifest describes the shards as verify saw them, not as they are now."""
    pytest.importorskip("nvidia.dali")
    clean = tmp_path / "clean"
    shutil.copytree(digits_shards, clean)
    assert verify_dataset(clean, workers=1).ok
    root, split, _ = damage(clean, tmp_path / "d", "flipped_byte")
    assert json.loads((root / "manifest.json").read_text())["verified"] is True
    with pytest.raises(ValueError, match="train-000001.tar"):
        loader(root, split, backend="dali")


def test_data_prep_verify_names_shard_and_key(digits_shards, jpeg_shards, tmp_path):
    png, _, flipped_key = damage(digits_shards, tmp_path / "png", "flipped_byte")
    (png / "train-000003.tar").unlink()
    truncated = png / "train-000002.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    jpg, _, jpeg_key = damage(jpeg_shards, tmp_path / "jpg", "corrupt_jpeg")
    for root, expected in [(png, [("train-000001.tar", flipped_key), ("train-000002.tar", None),
                                  ("train-000003.tar", "missing file")]),
                           (jpg, [("test-000000.tar", jpeg_key)])]:
        out = subprocess.run([sys.executable, "-m", "data_prep", "verify", "--out", str(root), "--workers", "1"],
                             check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode != 0
        for shard, detail in expected:
            lines = [ln for ln in out.stderr.splitlines() if shard in ln]
            assert lines, f"no problem reported for {shard}:\n{out.stderr}"
            if detail:
                assert any(detail in ln for ln in lines), lines
        assert json.loads((root / "manifest.json").read_text()).get("verified") is not True


@pytest.mark.slow
def test_training_logs_how_many_samples_it_skipped(digits_shards, tmp_path):
    """The first sample rank 0 reads in epoch 0 is damaged; the run's metrics say one was skipped."""
    first = int(Plan(len(SampleIndex(digits_shards, "train")), 8, 0, 1, seed=0, train=True).batches(0)[0][0])
    root, _, _ = damage(digits_shards, tmp_path / "d", "flipped_byte", sample=first)
    args = tiny_args(root, tmp_path / "runs", "skipped", steps=2)
    out = subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=clean_env(), capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    logged = metric_lines(tmp_path / "runs" / "skipped")
    assert logged[-1].get("data/corrupt_skipped") == 1, (
        f"metrics.jsonl must carry the skipped-sample count (data/corrupt_skipped): {sorted(logged[-1])}")
