import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from prep_helpers import load_json, read_shards, run_cli

from data_prep.download import ARCHIVES


def source_index(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


def test_pixels_orientation_labels_and_folds(stl10_src, tmp_path: Path):
    out = tmp_path / "shards"
    assert run_cli("stl10", "--src", stl10_src["root"].parent, "--out", out, "--max-samples", 4,
                   "--workers", 1) == 0
    folder = out / "stl10"
    for split, images in stl10_src["images"].items():
        samples = read_shards(folder, split)
        assert len(samples) == len(images)
        for key, sample in samples.items():
            np.testing.assert_array_equal(sample["pixels"], images[source_index(key)])
            assert sample["ext"] == "png"
            if split == "unlabeled":
                assert sample["cls"] is None
            else:
                assert sample["cls"] == stl10_src["labels"][split][source_index(key)] - 1
    bar = read_shards(folder, "train")["train_000000"]["pixels"]
    assert tuple(bar[5, 30]) == (255, 0, 0) and tuple(bar[30, 5]) == (0, 0, 0)  # wide, not tall
    manifest = load_json(folder / "manifest.json")
    assert manifest["folds"] == stl10_src["folds"]
    assert manifest["classes"] == stl10_src["names"]
    assert manifest["image_size"] == [96, 96]
    assert {s: e["num_samples"] for s, e in manifest["splits"].items()} == {"train": 6, "test": 4, "unlabeled": 5}
    assert [s["num_samples"] for s in manifest["splits"]["train"]["shards"]] == [4, 2]
    assert manifest["splits"]["unlabeled"]["labeled"] is False


def test_extracted_folder_and_split_subset(stl10_src, tmp_path: Path):
    (stl10_src["root"] / "unlabeled_X.bin").unlink()
    assert run_cli("stl10", "--src", stl10_src["root"], "--out", tmp_path / "o", "--splits", "train,test",
                   "--workers", 1) == 0
    assert set(load_json(tmp_path / "o" / "stl10" / "manifest.json")["splits"]) == {"train", "test"}


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "test_X.bin").write_bytes((r / "test_X.bin").read_bytes()[:-100]), "test_X.bin: 110492 bytes"),
    (lambda r: (r / "train_y.bin").write_bytes(bytes([1, 2, 3])), "train_y.bin: 3 labels for 6 images"),
    (lambda r: (r / "test_y.bin").write_bytes(bytes([1, 2, 11, 1])), "test_y.bin: label 11 at index 2"),
    (lambda r: (r / "unlabeled_X.bin").unlink(), "unlabeled_X.bin: missing file"),
    (lambda r: (r / "fold_indices.txt").write_text("0 1\n"), "fold_indices.txt: 1 folds"),
])
def test_bad_input_names_the_file_and_leaves_no_manifest(stl10_src, tmp_path: Path, capsys, damage, message):
    damage(stl10_src["root"])
    assert run_cli("stl10", "--src", stl10_src["root"], "--out", tmp_path / "o", "--workers", 1) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "stl10" / "manifest.json").exists()


def test_download_checks_md5_before_extracting(stl10_src, tmp_path: Path, monkeypatch, capsys):
    archive = tmp_path / "stl10_binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(stl10_src["root"], arcname="stl10_binary")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "downloads"
    monkeypatch.setitem(ARCHIVES, "stl10", (archive.as_uri(), "0" * 32, "stl10_binary"))
    assert run_cli("stl10", "--src", dest, "--out", tmp_path / "o", "--download") == 1
    assert f"{dest / archive.name}: md5 {md5} != published" in capsys.readouterr().err
    assert not (dest / "stl10_binary").exists()
    monkeypatch.setitem(ARCHIVES, "stl10", (archive.as_uri(), md5, "stl10_binary"))
    assert run_cli("stl10", "--src", dest, "--out", tmp_path / "o", "--download", "--workers", 1) == 0
    assert load_json(tmp_path / "o" / "stl10" / "manifest.json")["splits"]["unlabeled"]["num_samples"] == 5
