"""IDX files, the MNIST family's format (LeCun et al., http://yann.lecun.com/exdb/mnist/).

A big-endian header, then the data: a uint32 magic number `0x0000TTDD` (TT the element type,
0x08 = unsigned byte; DD the number of dimensions), one uint32 per dimension, then the elements
in row-major order. Images are magic 2051 (0x00000803: count, rows, cols), labels 2049
(0x00000801: count). Files are read gzipped (as published) or raw, told apart by their content.
Every header field is checked; each failure is a `PrepError` naming the file and the field.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from data_prep.source import PrepError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
GZIP_MAGIC = b"\x1f\x8b"


def find_idx(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/name.gz` when only that exists."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    raise PrepError(f"{folder / name}[.gz]: missing file")


def read_images(path: Path, rows: int, cols: int) -> np.ndarray:
    """uint8[N, rows, cols] as stored (row-major, row 0 at the top); the header must declare rows x cols."""
    data = _read_bytes(path)
    count, header_rows, header_cols = _header(path, data, IMAGES_MAGIC, 3)
    if (header_rows, header_cols) != (rows, cols):
        raise PrepError(f"{path}: header dims {header_rows}x{header_cols}, expected {rows}x{cols}")
    return _elements(path, data, 3, count * rows * cols).reshape(count, rows, cols)


def read_labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    """uint8[count] in 0..num_classes-1; `count` is the number of images they label."""
    data = _read_bytes(path)
    (header_count,) = _header(path, data, LABELS_MAGIC, 1)
    if header_count != count:
        raise PrepError(f"{path}: header count {header_count} labels, "
                        f"but the images file holds {count} images")
    labels = _elements(path, data, 1, count)
    bad = np.flatnonzero(labels >= num_classes)
    if len(bad):
        raise PrepError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{num_classes - 1}")
    return labels


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise PrepError(f"{path}: not a readable gzip file ({err})") from err


def _header(path: Path, data: bytes, magic: int, ndim: int) -> tuple[int, ...]:
    """The dimensions after checking the magic number; every dimension must be at least 1."""
    header_len = 4 * (1 + ndim)
    if len(data) < header_len:
        raise PrepError(f"{path}: {len(data)} bytes, shorter than the {header_len}-byte IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise PrepError(f"{path}: magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x})")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    if 0 in dims:
        raise PrepError(f"{path}: header dims {list(dims)} include a zero")
    return dims


def _elements(path: Path, data: bytes, ndim: int, count: int) -> np.ndarray:
    offset = 4 * (1 + ndim)
    if len(data) != offset + count:
        raise PrepError(f"{path}: length {len(data)} bytes, the header declares {offset + count} "
                        f"({offset} header + {count} data)")
    return np.frombuffer(data, np.uint8, count, offset=offset)
