import io
from pathlib import Path

import numpy as np
from PIL import Image
from prep_helpers import jpeg_bytes, load_json, read_shards, run_cli


def test_jpeg_and_png_kept_classes_sorted_per_split(tmp_path: Path, capsys):
    rng = np.random.default_rng(4)
    root = tmp_path / "flowers"
    sources = {}
    for split, cls, name in [("train", "tulip", "a.jpg"), ("train", "rose", "b.png"), ("train", "rose", "c.jpeg"),
                             ("val", "tulip", "d.jpg"), ("val", "daisy", "sub/e.bmp")]:
        path = root / split / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        if name.endswith(("jpg", "jpeg")):
            path.write_bytes(jpeg_bytes(rng, size=24))
        else:
            Image.fromarray(pixels).save(path)
        sources[path.read_bytes()] = (split, cls, np.asarray(Image.open(path).convert("RGB")))
    assert run_cli("imagefolder", "--src", root, "--out", tmp_path / "o", "--workers", 1) == 0
    manifest = load_json(tmp_path / "o" / "flowers" / "manifest.json")
    assert manifest["classes"] == ["daisy", "rose", "tulip"]  # union over splits, sorted
    assert manifest["format"] == "jpg;png" and manifest["image_size"] is None
    for split in ("train", "val"):
        for sample in read_shards(tmp_path / "o" / "flowers", split).values():
            if sample["bytes"] in sources:  # JPEG and PNG: stored untouched
                src_split, cls, _ = sources.pop(sample["bytes"])
            else:  # the BMP was re-encoded losslessly as PNG
                assert sample["ext"] == "png"
                (src_split, cls, pixels), = [v for v in sources.values() if v[1] == "daisy"]
                np.testing.assert_array_equal(sample["pixels"], pixels)
                sources = {k: v for k, v in sources.items() if v[1] != "daisy"}
            assert (src_split, manifest["classes"][sample["cls"]]) == (split, cls)
    assert not sources

    before = {p.name: p.read_bytes() for p in (tmp_path / "o" / "flowers").iterdir()}
    (root / "val" / "tulip" / "notes.txt").write_text("not an image")
    assert run_cli("imagefolder", "--src", root, "--out", tmp_path / "o", "--workers", 1) == 1
    assert f"{root / 'val' / 'tulip' / 'notes.txt'}: not a readable image" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "o" / "flowers").iterdir()} == before  # previous run kept


def test_png_roundtrip_pixels_exact(tmp_path: Path):
    path = tmp_path / "tree" / "train" / "x" / "img.png"
    path.parent.mkdir(parents=True)
    pixels = np.arange(12 * 7 * 3, dtype=np.uint8).reshape(12, 7, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    assert run_cli("imagefolder", "--src", tmp_path / "tree", "--out", tmp_path / "o", "--name", "t") == 0
    (sample,) = read_shards(tmp_path / "o" / "t", "train").values()
    np.testing.assert_array_equal(sample["pixels"], pixels)
    assert sample["cls"] == 0 and sample["bytes"] == buffer.getvalue()
