"""STL-10 binary format (Coates et al. 2011, https://cs.stanford.edu/~acoates/stl10/).

`stl10_binary/` holds `<split>_X.bin`: uint8 images of 3x96x96, channel-first and column-major
(Matlab order), so an image is read as (C, W, H) and transposed to (H, W, C); `<split>_y.bin`:
one uint8 label per image in 1..10; `class_names.txt`; `fold_indices.txt`: 10 lines of 0-based
train indices, the predefined folds kept in the manifest. Splits: train (5000), test (8000),
unlabeled (100000, no labels). Images are memory-mapped so 100k never sit in RAM.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.source import Dataset, PrepError, Split, find_root, require_file, select_splits

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
NUM_FOLDS = 10
SPLIT_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
               "unlabeled": ("unlabeled_X.bin", None)}


@functools.cache
def _images(path: str) -> np.memmap:
    """Opened once per process; (N, 3, W, H) view of the file."""
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, SIDE, SIDE)


@dataclass(frozen=True)
class Stl10Images:
    path: str
    labels: list[int] | None

    def __call__(self, i: int) -> tuple[np.ndarray, int | None]:
        pixels = _images(self.path)[i].transpose(2, 1, 0)  # (C, W, H) column-major -> (H, W, C)
        return pixels, None if self.labels is None else self.labels[i]


def read_stl10(src: Path, splits: list[str] | None = None) -> Dataset:
    root = find_root(src, "stl10_binary", "class_names.txt")
    class_names = _read_lines(root / "class_names.txt")
    out = []
    for name in select_splits(list(SPLIT_FILES), splits):
        x_name, y_name = SPLIT_FILES[name]
        count = _image_count(require_file(root / x_name))
        labels = None if y_name is None else _read_labels(require_file(root / y_name), count, len(class_names))
        out.append(Split(name, count, labels is not None, Stl10Images(str(root / x_name), labels)))
    extra = {}
    train = [s for s in out if s.name == "train"]
    if train:
        extra["folds"] = _read_folds(require_file(root / "fold_indices.txt"), train[0].size)
    return Dataset(name="stl10", classes=class_names, class_names={c: c for c in class_names}, splits=out,
                   source={"format": "stl10_binary", "path": str(root.resolve())}, extra=extra)


def _read_lines(path: Path) -> list[str]:
    lines = [line.strip() for line in require_file(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise PrepError(f"{path}: empty")
    return lines


def _image_count(path: Path) -> int:
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise PrepError(f"{path}: {size} bytes is not a whole number of 3x96x96 images ({IMAGE_BYTES} bytes each)")
    return size // IMAGE_BYTES


def _read_labels(path: Path, count: int, num_classes: int) -> list[int]:
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != count:
        raise PrepError(f"{path}: {len(labels)} labels for {count} images")
    bad = np.flatnonzero((labels < 1) | (labels > num_classes))
    if len(bad):
        raise PrepError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 1..{num_classes}")
    return (labels.astype(np.int64) - 1).tolist()  # files count from 1, shards from 0


def _read_folds(path: Path, num_train: int) -> list[list[int]]:
    try:
        folds = [[int(v) for v in line.split()] for line in path.read_text().splitlines() if line.strip()]
    except ValueError as err:
        raise PrepError(f"{path}: not whitespace-separated integers ({err})") from err
    if len(folds) != NUM_FOLDS:
        raise PrepError(f"{path}: {len(folds)} folds, expected {NUM_FOLDS} lines")
    for k, fold in enumerate(folds):
        if any(not 0 <= i < num_train for i in fold):
            raise PrepError(f"{path}: fold {k} has an index outside 0..{num_train - 1}")
    return folds
