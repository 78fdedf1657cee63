"""Helpers for the data_prep tests: a shard reader that shares no code with the writer (plain
tarfile + PIL), the CLI entry, and writers of the raw formats' bytes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.__main__ import main


def read_shards(folder: Path, split: str) -> dict[str, dict]:
    """{key: {"pixels": uint8[H, W, 3], "ext", "bytes", "cls" (int or None), "shard"}} over all
    `<split>-*.tar` files in `folder`, in file order."""
    samples: dict[str, dict] = {}
    for shard in sorted(folder.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                sample = samples.setdefault(key, {"cls": None, "shard": shard.name})
                data = tar.extractfile(member).read()
                if ext == "cls":
                    sample["cls"] = int(data)
                else:
                    sample["ext"], sample["bytes"] = ext, data
                    sample["pixels"] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return samples


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def stl10_bytes(images_hwc: np.ndarray) -> bytes:
    """The official layout: per image, channel-major, each 96x96 channel column-major (Matlab)."""
    return np.ascontiguousarray(images_hwc.transpose(0, 3, 2, 1)).tobytes()


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file written from the format's description (big-endian uint32 magic 0x000008DD, then
    one uint32 per dimension, then the bytes), independently of data_prep/idx.py."""
    magic = 0x0800 + array.ndim if magic is None else magic
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def jpeg_bytes(rng: np.random.Generator, mode: str = "RGB", size: int = 64) -> bytes:
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
