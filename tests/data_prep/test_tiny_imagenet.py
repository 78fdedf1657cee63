from pathlib import Path

from PIL import Image
from prep_helpers import load_json, read_shards, run_cli


def test_jpeg_bytes_kept_labels_by_sorted_wnid(tiny_src, tmp_path: Path):
    assert run_cli("tiny-imagenet", "--src", tiny_src["root"].parent, "--out", tmp_path, "--workers", 2) == 0
    folder = tmp_path / "tiny-imagenet"
    by_bytes = {path.read_bytes(): wnid for path, wnid in tiny_src["files"].items()}
    seen = 0
    for split, labeled in [("train", True), ("val", True), ("test", False)]:
        for sample in read_shards(folder, split).values():
            assert sample["ext"] == "jpg"
            wnid = by_bytes[sample["bytes"]]  # KeyError if a byte changed
            assert sample["cls"] == (tiny_src["sorted_wnids"].index(wnid) if labeled else None)
            seen += 1
    assert seen == len(tiny_src["files"])
    grey = tiny_src["root"] / "train" / "n02" / "images" / "n02_1.JPEG"
    assert Image.open(grey).mode == "L"  # the greyscale source made it through untouched
    manifest = load_json(folder / "manifest.json")
    assert manifest["classes"] == ["n01", "n02", "n03"]
    assert manifest["class_names"] == {"n01": "goldfish, Carassius auratus", "n02": "cat", "n03": "dog"}
    assert manifest["format"] == "jpg" and manifest["image_size"] == [64, 64]
    assert manifest["splits"]["test"]["labeled"] is False


def test_bad_image_fails_by_path_or_is_skipped(tiny_src, tmp_path: Path, capsys):
    bad = tiny_src["root"] / "train" / "n03" / "images" / "n03_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    assert run_cli("tiny-imagenet", "--src", tiny_src["root"], "--out", tmp_path, "--workers", 1) == 1
    assert f"{bad}: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "tiny-imagenet" / "manifest.json").exists()
    assert not list((tmp_path / "tiny-imagenet").glob("*.partial"))

    assert run_cli("tiny-imagenet", "--src", tiny_src["root"], "--out", tmp_path, "--workers", 1, "--skip-bad") == 0
    train = load_json(tmp_path / "tiny-imagenet" / "manifest.json")["splits"]["train"]
    assert train["skipped"] == [str(bad)] and train["num_samples"] == 5
    assert len(read_shards(tmp_path / "tiny-imagenet", "train")) == 5


def test_val_annotations_errors(tiny_src, tmp_path: Path, capsys):
    annotations = tiny_src["root"] / "val" / "val_annotations.txt"
    original = annotations.read_text()
    annotations.write_text(original + "val_9.JPEG\tn01\t0\t0\t1\t1\n")
    assert run_cli("tiny-imagenet", "--src", tiny_src["root"], "--out", tmp_path) == 1
    assert "val_annotations.txt:4: names" in capsys.readouterr().err
    annotations.write_text(original.replace("\tn03\t", "\tn99\t"))
    assert run_cli("tiny-imagenet", "--src", tiny_src["root"], "--out", tmp_path) == 1
    assert "val_annotations.txt:2: unknown wnid 'n99'" in capsys.readouterr().err
    assert not (tmp_path / "tiny-imagenet" / "manifest.json").exists()
