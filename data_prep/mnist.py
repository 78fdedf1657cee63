"""The MNIST family in IDX files: MNIST (LeCun, Cortes & Burges 1998, http://yann.lecun.com/exdb/mnist/)
and Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, https://github.com/zalandoresearch/fashion-mnist).

Both publish four files, `train-images-idx3-ubyte`, `train-labels-idx1-ubyte` (60,000) and
`t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (10,000; the `test` split), gzipped: 28x28
grayscale, 0 = background, one label 0..9 per image. Pixels are stored exactly as the files hold
them (one-channel PNG, lossless), in the files' orientation. Class names are the datasets' own:
Fashion-MNIST's README label table; MNIST's labels are the digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_prep.idx import find_idx, read_images, read_labels
from data_prep.source import ArrayImages, Dataset, Split, select_splits

SIDE = 28
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class IdxDataset:
    """One member of the family: its name under --out and label k's name (`names[k]`)."""

    name: str
    names: list[str]
    default_src: Path | None = None


FASHION_MNIST = IdxDataset(
    "fashion-mnist",
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
     "Ankle boot"],
    Path("/usr/share/datasets/fashion-mnist"),  # Debian/Ubuntu: apt-get install dataset-fashion-mnist
)
MNIST = IdxDataset("mnist", [str(d) for d in range(10)])
IDX_DATASETS = {d.name: d for d in (FASHION_MNIST, MNIST)}


def read_idx_dataset(dataset: IdxDataset, src: Path, splits: list[str] | None = None) -> Dataset:
    """`src` holds the four files, each gzipped (`.gz`) or raw."""
    classes = [str(k) for k in range(len(dataset.names))]
    out, files = [], {}
    for name in select_splits(list(SPLIT_FILES), splits):
        images_path, labels_path = (find_idx(src, f) for f in SPLIT_FILES[name])
        images = read_images(images_path, SIDE, SIDE)
        labels = read_labels(labels_path, len(images), len(classes))
        out.append(Split(name, len(images), True, ArrayImages(images, labels.tolist())))
        files[name] = [images_path.name, labels_path.name]
    return Dataset(name=dataset.name, classes=classes, class_names=dict(zip(classes, dataset.names)),
                   splits=out,
                   source={"format": "idx", "path": str(src.resolve()), "files": files})
