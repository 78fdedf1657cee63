import json
import tarfile
from pathlib import Path

import pytest
from prep_helpers import load_json, run_cli

from data_prep.digits import read_digits
from data_prep.manifest import ManifestError, load_manifest
from data_prep.verify import verify_dataset
from data_prep.writer import WriteOptions, write_dataset


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    write_dataset(read_digits(size=8, splits=["test"]), tmp_path, WriteOptions(max_samples=100, workers=1))
    return tmp_path


def test_clean_shards_pass_and_get_marked(shards: Path):
    with pytest.raises(ManifestError, match="manifest.json: shards not verified"):
        load_manifest(shards, require_verified=True)
    report = verify_dataset(shards, workers=2)
    assert report.ok and report.num_samples == 360 and report.num_shards == 4
    assert load_manifest(shards, require_verified=True)["verified"] is True


def test_flipped_byte_is_caught_and_named(shards: Path, capsys):
    assert verify_dataset(shards, workers=1).ok
    shard = shards / "test-000002.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith(".png"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF  # inside the compressed pixels of the first image
    shard.write_bytes(bytes(data))
    assert run_cli("verify", "--out", shards, "--workers", 1) == 1
    err = capsys.readouterr().err
    assert "test-000002.tar: sha256 differs" in err
    assert f"test-000002.tar [{member.name.split('.')[0]}]: png does not decode" in err
    assert "test-000000.tar" not in err and "test-000001.tar" not in err
    assert "verified" not in load_json(shards / "manifest.json")  # the earlier pass is withdrawn


def test_missing_shard_stale_index_and_wrong_count(shards: Path):
    (shards / "test-000001.tar").unlink()
    (shards / "test-000002.idx").write_text("v1.2 0\n")
    manifest = load_json(shards / "manifest.json")
    manifest["splits"]["test"]["shards"][3]["num_samples"] = 61
    (shards / "manifest.json").write_text(json.dumps(manifest))
    problems = [str(p) for p in verify_dataset(shards, workers=1).problems]
    assert "test-000001.tar: missing file" in problems
    assert "test-000002.tar: DALI index test-000002.idx missing or out of date" in problems
    assert "test-000003.tar: 60 samples, manifest says 61" in problems


def test_load_manifest_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ManifestError, match=f"{tmp_path / 'manifest.json'}: missing"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="manifest.json: not readable JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"dataset": "x"}')
    with pytest.raises(ManifestError, match=r"manifest.json: missing key\(s\) \['classes'"):
        load_manifest(tmp_path)
