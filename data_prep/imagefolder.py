"""Any `root/<split>/<class>/<image>` tree (torchvision ImageFolder layout, one tree per split).

Classes are the sorted union of class folder names over all splits, so a label means the same
class in every split. Class folders are walked recursively; hidden files are ignored; every other
file must be an image (JPEG and PNG bytes kept as they are, other formats re-encoded).
"""

from __future__ import annotations

import os
from pathlib import Path

from data_prep.source import Dataset, FileImages, PrepError, Split, select_splits


def read_imagefolder(src: Path, splits: list[str] | None = None, name: str | None = None) -> Dataset:
    if not src.is_dir():
        raise PrepError(f"{src}: missing folder")
    available = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not available:
        raise PrepError(f"{src}: no split folders (expected {src}/<split>/<class>/<image>)")
    chosen = select_splits(available, splits)
    class_dirs = {split: _class_dirs(src / split) for split in chosen}
    classes = sorted({c for dirs in class_dirs.values() for c in dirs})
    label_of = {c: k for k, c in enumerate(classes)}
    out = []
    for split in chosen:
        paths, labels = [], []
        for cls in class_dirs[split]:
            files = _files(src / split / cls)
            paths += files
            labels += [label_of[cls]] * len(files)
        out.append(Split(split, len(paths), True, FileImages(paths, labels)))
    return Dataset(name=name or src.resolve().name, classes=classes, class_names={c: c for c in classes},
                   splits=out, source={"format": "imagefolder", "path": str(src.resolve())})


def _class_dirs(split_dir: Path) -> list[str]:
    entries = sorted(p for p in split_dir.iterdir() if not p.name.startswith("."))
    stray = [p for p in entries if not p.is_dir()]
    if stray:
        raise PrepError(f"{stray[0]}: not in a class folder (expected {split_dir}/<class>/<image>)")
    if not entries:
        raise PrepError(f"{split_dir}: no class folders")
    return [p.name for p in entries]


def _files(class_dir: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(class_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / f for f in files if not f.startswith(".")]
    return sorted(found)
