"""Tiny WebDataset shards for the loader tests, in data_prep's layout (tars, wds2idx indexes, manifest).

Written with webdataset's TarWriter and indexed with DALI's own `wds2idx`, so the loader is tested
against files made by other tools. `coded_png(i)` is a flat image whose colour encodes the sample id,
so which samples a batch holds can be read back from its pixels through the production path.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from data_prep.shard_format import shard_stamp

WDS2IDX = Path(sys.executable).with_name("wds2idx")
MEAN, STD = [0.5, 0.25, 0.75], [0.2, 0.3, 0.4]


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def coded_png(i: int, size: int = 8) -> bytes:
    """Flat colour (i % 256, i // 256, 200): survives any crop, resize and flip exactly."""
    return encode(Image.new("RGB", (size, size), (i % 256, i // 256, 200)))


def decode_ids(view: torch.Tensor) -> list[int]:
    """Sample ids from a normalized batch of coded_png views [B, 3, H, W]."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    rgb = (view.float().cpu() * std + mean) * 255
    channel = rgb.mean(dim=(2, 3)).round().long()
    return (channel[:, 0] + 256 * channel[:, 1]).tolist()


def write_dataset(root: Path, samples: list[tuple[bytes, str, int | None]], split: str = "train",
                  per_shard: int = 16, verified: bool = False, num_classes: int = 10) -> Path:
    """samples: (encoded bytes, "png" | "jpg", label or None). Keys are s000000, s000001, ..."""
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, len(samples), per_shard)):
        tar = root / f"{split}-{k:06d}.tar"
        with wds.TarWriter(str(tar)) as writer:
            for i, (data, ext, label) in enumerate(samples[start : start + per_shard], start=start):
                record = {"__key__": f"s{i:06d}", ext: data}
                if label is not None:
                    record["cls"] = str(label)
                writer.write(record)
        subprocess.run([str(WDS2IDX), tar.name], cwd=root, check=True, capture_output=True)
        shards.append({"file": tar.name, "index": tar.stem + ".idx",
                       "num_samples": len(samples[start : start + per_shard]),
                       "sha256": hashlib.sha256(tar.read_bytes()).hexdigest(),
                       **shard_stamp(tar, root / f"{tar.stem}.idx")})
    manifest_file = root / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {
        "dataset": "fixture", "classes": [str(c) for c in range(num_classes)],
        "class_names": {str(c): f"class{c}" for c in range(num_classes)}, "splits": {},
        "image_size": None, "format": "jpg;png", "source": {"kind": "test fixture"}}
    manifest["splits"][split] = {"num_samples": len(samples), "labeled": samples[0][2] is not None, "shards": shards}
    if verified:
        manifest["verified"] = True
    manifest_file.write_text(json.dumps(manifest))
    return root


def coded_dataset(root: Path, n: int, **kw) -> Path:
    return write_dataset(root, [(coded_png(i), "png", i % 10) for i in range(n)], **kw)
