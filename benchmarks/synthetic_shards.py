"""Synthetic STL-10-like JPEG datasets for the benchmarks: shards with manifest, and the same bytes as
an ImageFolder tree, made here with no download (a GPU box often has no network).

    python -m benchmarks.synthetic_shards --out /tmp/bench_data [--images 20000]
    # -> /tmp/bench_data/shards (data.shards for trainer and benchmarks.step --shards), /tmp/bench_data/folder
"""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from data_prep.manifest import write_manifest
from data_prep.shard_format import shard_stamp, write_index

SOURCE_PX = 96
CLASSES = 10


def synthetic_images(n: int, seed: int = 0):
    """Smooth random colour fields with noise: JPEG sizes close to natural 96 px photos."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((SOURCE_PX, SOURCE_PX), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, (SOURCE_PX, SOURCE_PX, 3))
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        yield buffer.getvalue(), i % CLASSES


def make_dataset(root: Path, n: int, per_shard: int = 1000) -> tuple[Path, Path]:
    """-> (shard folder with manifest, ImageFolder root) holding the same JPEG bytes."""
    shards_dir, folder = root / "shards", root / "folder"
    shards_dir.mkdir(parents=True)
    for c in range(CLASSES):
        (folder / str(c)).mkdir(parents=True)
    entries, writer, count = [], None, 0
    for i, (data, label) in enumerate(synthetic_images(n)):
        if i % per_shard == 0:
            if writer:
                writer.close()
            tar = shards_dir / f"train-{len(entries):06d}.tar"
            writer, count = wds.TarWriter(str(tar)), 0
            entries.append({"file": tar.name, "index": tar.stem + ".idx", "num_samples": 0})
        writer.write({"__key__": f"s{i:06d}", "jpg": data, "cls": str(label)})
        entries[-1]["num_samples"] = count = count + 1
        (folder / str(label) / f"s{i:06d}.jpg").write_bytes(data)
    writer.close()
    for entry in entries:
        tar = shards_dir / entry["file"]
        entry["sha256"] = hashlib.sha256(tar.read_bytes()).hexdigest()
        entry.update(shard_stamp(tar, write_index(tar)))
    write_manifest(shards_dir, {
        "dataset": "synthetic", "classes": [str(c) for c in range(CLASSES)],
        "class_names": {str(c): str(c) for c in range(CLASSES)},
        "splits": {"train": {"num_samples": n, "labeled": True, "shards": entries}},
        "image_size": [SOURCE_PX, SOURCE_PX], "format": "jpg", "source": {"format": "synthetic"},
        "verified": True})  # generated here from PIL-encoded bytes
    return shards_dir, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    parser.add_argument("--images", type=int, default=20000)
    args = parser.parse_args()
    shards, folder = make_dataset(args.out, args.images)
    print(f"wrote {args.images} images: shards in {shards}, ImageFolder tree in {folder}")


if __name__ == "__main__":
    main()
