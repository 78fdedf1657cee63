import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
from prep_helpers import load_json, run_cli

from data_prep.digits import read_digits
from data_prep.manifest import ManifestError, load_manifest
from data_prep.shard_format import STAMP_KEYS, sha256_file, write_index
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


def bomb_png(side: int = 50_000) -> bytes:
    """A few hundred bytes declaring a side x side 8-bit grayscale image (2.5e9 pixels, PIL's bomb limit
    is 2 x 89.5e6): a valid signature, IHDR and an IDAT of a few zero rows, each chunk with its CRC."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4 * (side + 1)), 9))


def replace_first_png(shards: Path, shard_name: str, data: bytes) -> str:
    """Rewrite one shard with its first image replaced, re-index it and re-hash it into the manifest as
    data_prep would have; returns the sample's key."""
    shard = shards / shard_name
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isreg()]
    target = next(m.name for m, _ in members if m.name.endswith(".png"))
    with tarfile.open(shard, "w") as tar:
        for member, payload in members:
            payload = data if member.name == target else payload
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    write_index(shard)
    manifest = load_json(shards / "manifest.json")
    entry = next(e for e in manifest["splits"]["test"]["shards"] if e["file"] == shard_name)
    entry["sha256"] = sha256_file(shard)
    for key in STAMP_KEYS:
        entry.pop(key)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return target.split(".")[0]


def test_a_decompression_bomb_is_one_bad_sample_and_the_rest_is_checked(shards: Path, capsys):
    bomb = bomb_png()
    key = replace_first_png(shards, "test-000001.tar", bomb)
    later = replace_first_png(shards, "test-000003.tar", b"not a png")
    assert run_cli("verify", "--out", shards, "--workers", 2) == 1
    err = capsys.readouterr().err
    assert f"test-000001.tar [{key}]: png does not decode" in err and "decompression bomb" in err
    assert f"test-000003.tar [{later}]: png does not decode" in err  # checking went on past the bomb
    assert len(bomb) < 1000


def test_verify_adds_the_start_up_stamp_to_an_older_manifest(shards: Path):
    """A manifest written before size/fingerprint/index_sha256 existed: the trainer refuses it, naming the
    fix; verify adds them (after every sha256 matched) and the trainer then reads it."""
    from trainer.data.samples import SampleIndex

    manifest = load_json(shards / "manifest.json")
    for entry in manifest["splits"]["test"]["shards"]:
        stamp = {key: entry.pop(key) for key in STAMP_KEYS}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"test-000000.tar has no size/fingerprint/index_sha256 .*data_prep verify"):
        SampleIndex(shards, "test")
    assert verify_dataset(shards, workers=1).ok
    assert {key: load_json(shards / "manifest.json")["splits"]["test"]["shards"][-1][key] for key in STAMP_KEYS} == stamp
    assert len(SampleIndex(shards, "test")) == 360


def test_a_manifest_that_cannot_be_written_is_a_problem_not_a_traceback(shards: Path, capsys):
    """A directory where the manifest's temporary file goes makes the write fail even as root (the
    tests' user, for whom modes do not stop writes); once recorded, re-verifying writes nothing."""
    (shards / "manifest.json.partial").mkdir()
    assert run_cli("verify", "--out", shards, "--workers", 1) == 1
    assert "manifest.json: the result could not be recorded" in capsys.readouterr().err
    assert "verified" not in load_json(shards / "manifest.json")
    (shards / "manifest.json.partial").rmdir()
    assert verify_dataset(shards, workers=1).ok
    (shards / "manifest.json.partial").mkdir()
    assert verify_dataset(shards, workers=1).ok  # nothing to record: the folder may be read-only
