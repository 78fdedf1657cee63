"""Damaged shards: a flipped byte inside an image, a truncated shard, a missing shard, a corrupt JPEG;
shards from another preparation, a corrupt index line, labels outside the manifest's classes.

The torch backend skips an undecodable sample and counts it (data.on_corrupt=skip) or stops naming the
shard and key (fail); a shard that is missing, cut short or not the one the manifest lists is refused
when the loader is built, by either backend; the DALI backend, which cannot skip, reads only verified
data and writes nothing into the shards folder; and `python -m data_prep verify` names the shard and
the key of each problem.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fault_harness import REPO, clean_env, metric_lines, tiny_args

from data_prep.shard_format import sha256_file, shard_stamp
from data_prep.verify import verify_dataset
from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.data.samples import SampleIndex
from trainer.data.sampling import Plan
from trainer.dist import DistContext
from trainer.types import ViewSpec

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


def damage(src: Path, dst: Path, fault: str, sample: int | None = None,
           unseen: bool = False) -> tuple[Path, str, str | None]:
    """Copy the dataset `src` to `dst` and damage it; returns (dataset, split, key or None of the bad sample).

    flipped_byte: one bit pattern inverted inside a PNG's IHDR chunk, whose CRC PIL checks (a flip in
    the compressed pixels can decode silently: only the shard's sha256 catches every flip); corrupt_jpeg: a JPEG whose headers are zeroed, as if the source file were damaged, so
    data_prep hashed it as it is; truncated: a shard cut to half its size; missing: a shard deleted.
    `unseen`: the flipped byte's shard gets the start-up stamp of its new bytes, as a flip in the middle
    of a shard larger than the 2 x 64 KiB the loader's start-up check reads would leave it (these are smaller).
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
    if fault == "corrupt_jpeg" or unseen:
        restamp(dst, split, shard_id, sha256=fault == "corrupt_jpeg")
    return dst, split, index.keys[i]


def restamp(root: Path, split: str, shard_id: int, sha256: bool) -> None:
    """Record a changed shard's start-up stamp (and `sha256`) in the manifest, as data_prep would have."""
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["splits"][split]["shards"][shard_id]
    entry.update(shard_stamp(root / entry["file"], root / entry["index"]))
    if sha256:
        entry["sha256"] = sha256_file(root / entry["file"])
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def source(fault: str, digits_shards: Path, jpeg_shards: Path) -> Path:
    return jpeg_shards if fault == "corrupt_jpeg" else digits_shards


def loader(root: Path, split: str, backend: str = "torch", on_corrupt: str = "skip"):
    data = DataConfig(shards=str(root), split=split, backend=backend, workers=0, on_corrupt=on_corrupt)
    return build_loader(data, [RESIZE], DistContext(), batch_size=64, seed=0, train=False)


@pytest.mark.parametrize("fault", SAMPLE_FAULTS)
def test_torch_backend_skips_and_counts_a_bad_sample(fault, digits_shards, jpeg_shards, tmp_path):
    root, split, _ = damage(source(fault, digits_shards, jpeg_shards), tmp_path / "d", fault, unseen=True)
    batches = loader(root, split)
    seen = sum(len(b.labels) for b in batches.epoch(0))
    assert seen == batches.num_samples  # the bad sample's place is taken by the next good one
    assert batches.stats["corrupt_skipped"] == 1


@pytest.mark.parametrize("fault", SAMPLE_FAULTS)
def test_torch_backend_fails_fast_naming_shard_and_key(fault, digits_shards, jpeg_shards, tmp_path):
    root, split, key = damage(source(fault, digits_shards, jpeg_shards), tmp_path / "d", fault, unseen=True)
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
def test_dali_refuses_damaged_or_unverified_shards(fault, digits_shards, jpeg_shards, tmp_path):
    """A damaged shard is refused naming it by the start-up check; the corrupt JPEG, which data_prep
    hashed as it was, passes that check and is refused because verify has not passed the data."""
    pytest.importorskip("nvidia.dali")
    root, split, _ = damage(source(fault, digits_shards, jpeg_shards), tmp_path / "d", fault)
    with pytest.raises(ValueError) as refused:
        loader(root, split, backend="dali")
    if fault == "corrupt_jpeg":
        assert "shards not verified" in str(refused.value) and "python -m data_prep verify" in str(refused.value)
    else:
        shard = {"flipped_byte": "train-000001", "truncated": "train-000002", "missing": "train-000003"}[fault]
        assert f"{shard}.tar" in str(refused.value)


def test_dali_refuses_a_shard_changed_after_verify(digits_shards, tmp_path):
    """`verified: true` in the manifest describes the shards as verify saw them, not as they are now."""
    pytest.importorskip("nvidia.dali")
    clean = tmp_path / "clean"
    shutil.copytree(digits_shards, clean)
    assert verify_dataset(clean, workers=1).ok
    root, split, _ = damage(clean, tmp_path / "d", "flipped_byte")
    assert json.loads((root / "manifest.json").read_text())["verified"] is True
    with pytest.raises(ValueError, match="train-000001.tar: not the shard"):
        loader(root, split, backend="dali")


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under root: (mode, mtime_ns, sha256 or '' for a folder)."""
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime_ns, sha256_file(p) if p.is_file() else "")
            for p in sorted([root, *root.rglob("*")])}


def test_dali_reads_a_read_only_shards_folder_and_writes_nothing(digits_shards, tmp_path):
    """launch/docker_run.sh mounts the shards read-only. Tests run as root, which writes through a-w
    modes, so "writes nothing" is checked as: nothing under the folder changed."""
    pytest.importorskip("nvidia.dali")
    root = tmp_path / "ro"
    shutil.copytree(digits_shards, root)
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    before = snapshot(root)
    with pytest.raises(ValueError, match="shards not verified.*python -m data_prep verify"):
        loader(root, "train", backend="dali")
    assert snapshot(root) == before
    subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
    assert verify_dataset(root, workers=1).ok
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    before = snapshot(root)
    batch = next(loader(root, "train", backend="dali").epoch(0))
    assert batch.views[0].shape == (64, 3, 16, 16)
    assert snapshot(root) == before


@pytest.fixture(scope="module")
def other_preparation(tmp_path_factory) -> Path:
    """The same digits split by another seed: other images in train, same shard names and counts."""
    out = tmp_path_factory.mktemp("fault_seed1")
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(out), "--splits", "train",
                    "--max-samples", "200", "--workers", "1", "--seed", "1"],
                   check=True, cwd=REPO, capture_output=True, timeout=300)
    return out / "digits"


@pytest.mark.parametrize("swapped", [("train-000000.tar", "train-000000.idx"), ("train-000004.idx",)])
def test_shards_of_another_preparation_are_refused(swapped, digits_shards, other_preparation, tmp_path):
    """A tar and index copied from another preparation (here another seed's train/test split, which
    would mix test images into training) or an index alone: refused at start, naming the file."""
    root = tmp_path / "mixed"
    shutil.copytree(digits_shards, root)
    for name in swapped:
        shutil.copy(other_preparation / name, root / name)
    with pytest.raises(ValueError, match=f"{swapped[0]}: not the (shard|index)"):
        loader(root, "train")


def edit_index_line(root: Path, index: str, line_no: int, edit) -> None:
    lines = (root / index).read_text().splitlines(keepends=True)
    lines[line_no - 1] = edit(lines[line_no - 1])
    (root / index).write_text("".join(lines))
    manifest = json.loads((root / "manifest.json").read_text())
    entry = next(e for e in manifest["splits"]["train"]["shards"] if e["index"] == index)
    entry["index_sha256"] = sha256_file(root / index)  # as if data_prep had written it so
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize("edit, named", [(lambda line: "abc\n", "'abc'"),
                                         (lambda line: line.rstrip("\n") + " stray\n", "stray"),
                                         (lambda line: line.replace(" ", " x", 1), "'x")])
def test_a_corrupt_index_line_is_one_error_naming_file_line_and_token(edit, named, digits_shards, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(digits_shards, root)
    edit_index_line(root, "train-000001.idx", 3, edit)
    with pytest.raises(ValueError) as refused:
        loader(root, "train")
    message = str(refused.value)
    assert "train-000001.idx:3:" in message and named in message and "\n" not in message


def test_labels_outside_the_manifests_classes_are_refused_naming_shard_key_and_value(digits_shards, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(digits_shards, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][:5]  # labels 5..9 now lie outside it
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(ValueError, match=r"train-00000\d\.tar: sample 'train_\d+' has label '[5-9]', not a class "
                                         r"of .*manifest.json \(0..4\)"):
        loader(root, "train")


@pytest.mark.slow
def test_a_data_error_is_one_line_exit_2_and_writes_no_run(digits_shards, tmp_path):
    """`SampleIndex.__del__` used to add `Exception ignored ... '_fds'` after every data error, itself
    the last line of a traceback."""
    root = tmp_path / "d"
    shutil.copytree(digits_shards, root)
    edit_index_line(root, "train-000001.idx", 3, lambda line: "abc\n")
    out = subprocess.run([sys.executable, *tiny_args(root, tmp_path / "runs", "bad_index", steps=1)], check=False,
                         cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=180)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("data error: ") and "train-000001.idx:3:" in lines[0] and "'abc'" in lines[0]
    run = tmp_path / "runs" / "bad_index"  # the run lock (trainer/run_lock.py) is taken after the loader is built
    assert not run.exists()  # no run folder: no config.yaml, checkpoint, log or lock file


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
    root, _, _ = damage(digits_shards, tmp_path / "d", "flipped_byte", sample=first, unseen=True)
    args = tiny_args(root, tmp_path / "runs", "skipped", steps=2)
    out = subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=clean_env(), capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    logged = metric_lines(tmp_path / "runs" / "skipped")
    assert logged[-1].get("data/corrupt_skipped") == 1, (
        f"metrics.jsonl must carry the skipped-sample count (data/corrupt_skipped): {sorted(logged[-1])}")
