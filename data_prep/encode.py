"""Turn a source image into the bytes stored in a shard.

Arrays are encoded with PIL using fixed settings, so the same pixels always give the same bytes
(for a given Pillow build). Encoded files that are already JPEG or PNG are stored untouched (no
generation loss); any other format PIL can read is re-encoded like an array. Every file is fully
decoded once here, so a truncated or non-image file is caught before it reaches a shard.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.source import SourceImage

KEEP_AS_IS = {"JPEG": "jpg", "PNG": "png"}


@dataclass(frozen=True)
class Encoded:
    ext: str  # "jpg" or "png": the sample's field name in the shard
    data: bytes
    size: tuple[int, int]  # (height, width)


class BadImage(Exception):
    """A source file PIL cannot read; carries the path and PIL's reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(path, reason)  # both in args, so it pickles back from a worker process
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: not a readable image ({self.reason})"


def encode_array(pixels: np.ndarray, image_format: str, quality: int) -> Encoded:
    """pixels: uint8[H, W, 3] RGB or uint8[H, W] grayscale (kept one channel: both loaders decode
    to RGB). image_format "png" (lossless, PIL default level) or "jpg"."""
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB" if pixels.ndim == 3 else "L")
    return _encode_pil(image, image_format, quality)


def encode_file(path: Path, image_format: str, quality: int) -> Encoded:
    """Keep JPEG/PNG bytes as they are; re-encode anything else PIL reads. Raises BadImage."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = (image.height, image.width)
            if image.format in KEEP_AS_IS:
                return Encoded(KEEP_AS_IS[image.format], data, size)
            return _encode_pil(image.convert("RGB"), image_format, quality)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(path, str(err) or type(err).__name__) from err


def encode_image(image: SourceImage, image_format: str, quality: int) -> Encoded:
    if isinstance(image, Path):
        return encode_file(image, image_format, quality)
    return encode_array(image, image_format, quality)


def _encode_pil(image: Image.Image, image_format: str, quality: int) -> Encoded:
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return Encoded(image_format, buffer.getvalue(), (image.height, image.width))
