"""Tiny ImageNet (CS231n, http://cs231n.stanford.edu/tiny-imagenet-200.zip): 200 classes of 64x64.

`tiny-imagenet-200/` holds `wnids.txt` (one WordNet id per line), `words.txt` (wnid TAB names,
for all of WordNet), `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` with
`val/val_annotations.txt` (file TAB wnid TAB 4 bbox ints) and `test/images/*.JPEG` (unlabeled).
Label = position of the wnid in the sorted wnid list. Some images are greyscale JPEGs; all JPEG
bytes are stored untouched.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.source import Dataset, FileImages, PrepError, Split, find_root, require_file, select_splits

SPLITS = ["train", "val", "test"]


def read_tiny_imagenet(src: Path, splits: list[str] | None = None) -> Dataset:
    root = find_root(src, "tiny-imagenet-200", "wnids.txt")
    wnids_path = root / "wnids.txt"
    wnids = sorted({line.strip() for line in wnids_path.read_text().splitlines() if line.strip()})
    if not wnids:
        raise PrepError(f"{wnids_path}: empty")
    names = _read_words(require_file(root / "words.txt"), wnids)
    label_of = {wnid: k for k, wnid in enumerate(wnids)}
    readers = {"train": _train, "val": _val, "test": _test}
    out = []
    for name in select_splits(SPLITS, splits):
        paths, labels = readers[name](root, label_of)
        out.append(Split(name, len(paths), labels is not None, FileImages(paths, labels)))
    return Dataset(name="tiny-imagenet", classes=wnids, class_names=names, splits=out,
                   source={"format": "tiny-imagenet-200", "path": str(root.resolve())})


def _read_words(path: Path, wnids: list[str]) -> dict[str, str]:
    words = {}
    for line in path.read_text().splitlines():
        wnid, _, name = line.partition("\t")
        words[wnid.strip()] = name.strip()
    missing = [w for w in wnids if w not in words]
    if missing:
        raise PrepError(f"{path}: no entry for wnid(s) {missing[:5]}")
    return {w: words[w] for w in wnids}


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise PrepError(f"{folder}: missing folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _train(root: Path, label_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for wnid, label in label_of.items():
        files = _image_files(root / "train" / wnid / "images")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def _val(root: Path, label_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    annotations = require_file(root / "val" / "val_annotations.txt")
    images = root / "val" / "images"
    paths, labels = [], []
    for lineno, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise PrepError(f"{annotations}:{lineno}: expected 'file<TAB>wnid<TAB>bbox', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise PrepError(f"{annotations}:{lineno}: unknown wnid {wnid!r} (not in wnids.txt)")
        if not (images / name).is_file():
            raise PrepError(f"{annotations}:{lineno}: names {images / name}, which is missing")
        paths.append(images / name)
        labels.append(label_of[wnid])
    return paths, labels


def _test(root: Path, label_of: dict[str, int]) -> tuple[list[Path], None]:
    return _image_files(root / "test" / "images"), None
