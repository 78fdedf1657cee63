"""CIFAR-10 python format (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html).

`cifar-10-batches-py/` holds pickles (load with encoding="bytes"): `data_batch_1..5` (train) and
`test_batch`, each {b"data": uint8[N, 3072] (R, G, B planes of 32x32, row-major), b"labels":
[N ints 0..9]}, and `batches.meta` with b"label_names".
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.source import ArrayImages, Dataset, PrepError, Split, find_root, require_file, select_splits

SIDE = 32
SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_cifar10(src: Path, splits: list[str] | None = None) -> Dataset:
    root = find_root(src, "cifar-10-batches-py", "batches.meta")
    meta_path = root / "batches.meta"
    label_names = [n.decode() for n in _require_key(_unpickle(meta_path), b"label_names", meta_path)]
    out = []
    for name in select_splits(list(SPLIT_FILES), splits):
        images, labels = [], []
        for batch in SPLIT_FILES[name]:
            pixels, batch_labels = _read_batch(root / batch, len(label_names))
            images.append(pixels)
            labels += batch_labels
        stacked = np.concatenate(images).reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)  # planes -> HWC
        out.append(Split(name, len(labels), True, ArrayImages(np.ascontiguousarray(stacked), labels)))
    return Dataset(name="cifar10", classes=label_names, class_names={c: c for c in label_names}, splits=out,
                   source={"format": "cifar-10-batches-py", "path": str(root.resolve())})


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(require_file(path), "rb") as f:
            content = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise PrepError(f"{path}: not a CIFAR pickle ({err or type(err).__name__})") from err
    if not isinstance(content, dict):
        raise PrepError(f"{path}: expected a dict, got {type(content).__name__}")
    return content


def _require_key(content: dict[bytes, Any], key: bytes, path: Path) -> Any:
    if key not in content:
        raise PrepError(f"{path}: missing key {key!r}")
    return content[key]


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, list[int]]:
    content = _unpickle(path)
    data = np.asarray(_require_key(content, b"data", path))
    labels = [int(v) for v in _require_key(content, b"labels", path)]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise PrepError(f"{path}: b'data' is {data.dtype}{list(data.shape)}, expected uint8[N, 3072]")
    if len(labels) != len(data):
        raise PrepError(f"{path}: {len(labels)} labels for {len(data)} images")
    if any(not 0 <= v < num_classes for v in labels):
        raise PrepError(f"{path}: a label is outside 0..{num_classes - 1}")
    return data, labels
