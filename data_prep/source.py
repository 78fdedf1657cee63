"""What every dataset source hands to the shared shard writer.

A source module reads one raw on-disk format and returns a `Dataset`: class names, and per
split a picklable `read(i)` that worker processes call to fetch image `i` and its label.
Images are either an array, RGB `uint8[H, W, 3]` or grayscale `uint8[H, W]` (encoded by the
writer), or the `Path` of an encoded file whose bytes go into the shard as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SourceImage = np.ndarray | Path
Reader = Callable[[int], tuple[SourceImage, int | None]]


class PrepError(ValueError):
    """A problem with the user's input; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Split:
    """One split of a dataset: `size` images fetched by `read(i)` for i in [0, size)."""

    name: str
    size: int
    labeled: bool
    read: Reader


@dataclass(frozen=True)
class Dataset:
    """A dataset ready to shard. `classes[k]` is the id of label k; `class_names` maps ids to
    human-readable names; `extra` holds format-specific manifest fields (STL-10 folds)."""

    name: str
    classes: list[str]
    class_names: dict[str, str]
    splits: list[Split]
    source: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArrayImages:
    """Reader over decoded pixels (CIFAR-10, the IDX datasets): images uint8[N, H, W, 3] or [N, H, W]."""

    images: np.ndarray
    labels: list[int]

    def __call__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], self.labels[i]


@dataclass(frozen=True)
class FileImages:
    """Reader over encoded image files (Tiny ImageNet, ImageFolder); labels None if unlabeled."""

    paths: list[Path]
    labels: list[int] | None

    def __call__(self, i: int) -> tuple[Path, int | None]:
        return self.paths[i], None if self.labels is None else self.labels[i]


def find_root(src: Path, folder: str, marker: str) -> Path:
    """Accept either the extracted `folder` or its parent; `marker` is a file the folder must hold."""
    for root in (src / folder, src):
        if (root / marker).exists():
            return root
    raise PrepError(f"{src / folder / marker}: missing (pass --src the extracted {folder} or its parent)")


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise PrepError(f"{path}: missing file")
    return path


def select_splits(available: list[str], wanted: list[str] | None) -> list[str]:
    """The splits to write, in the source's order; `wanted` None means all of them."""
    if wanted is None:
        return available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise PrepError(f"--splits: unknown split(s) {unknown}; this dataset has {available}")
    return [s for s in available if s in wanted]
