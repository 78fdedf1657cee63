"""scikit-learn's bundled digits (UCI optdigits test set): 1797 greyscale 8x8 images, values 0..16.

The embedded default dataset: no download, a few seconds to shard. Each image is scaled to
0..255, upsampled to `size` x `size` with PIL bicubic and replicated to RGB. The train/test
split is 80/20, stratified by class, fixed by `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sklearn
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from data_prep.source import Dataset, Split, select_splits

TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DigitsImages:
    """images: uint8[N, 8, 8] greyscale 0..255; labels: N ints 0..9."""

    images: np.ndarray
    labels: list[int]
    size: int

    def __call__(self, i: int) -> tuple[np.ndarray, int]:
        grey = Image.fromarray(self.images[i], mode="L").resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.asarray(grey.convert("RGB")), self.labels[i]


def read_digits(size: int = 32, seed: int = 0, splits: list[str] | None = None) -> Dataset:
    bunch = load_digits()
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    train_idx, test_idx = train_test_split(np.arange(len(grey)), test_size=TEST_FRACTION,
                                           stratify=bunch.target, random_state=seed)
    indices = {"train": np.sort(train_idx), "test": np.sort(test_idx)}
    out = [Split(name, len(indices[name]), True,
                 DigitsImages(grey[indices[name]], bunch.target[indices[name]].tolist(), size))
           for name in select_splits(["train", "test"], splits)]
    classes = [str(d) for d in range(10)]
    return Dataset(name="digits", classes=classes, class_names={c: c for c in classes}, splits=out,
                   source={"format": "sklearn.datasets.load_digits", "sklearn": sklearn.__version__,
                           "size": size, "test_fraction": TEST_FRACTION, "split_seed": seed})
