"""Tiny copies of each raw format, written the way their authors publish them."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from prep_helpers import idx_bytes, jpeg_bytes, stl10_bytes


@pytest.fixture
def stl10_src(tmp_path: Path) -> dict:
    """stl10_binary/ with 6 train, 4 test, 5 unlabeled random images; train labels in 1..10."""
    rng = np.random.default_rng(1)
    root = tmp_path / "raw" / "stl10_binary"
    root.mkdir(parents=True)
    images = {s: rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
              for s, n in [("train", 6), ("test", 4), ("unlabeled", 5)]}
    images["train"][0] = 0
    images["train"][0, :10, :40] = (255, 0, 0)  # a wide red bar in the top-left: flips if H and W swap
    labels = {"train": np.array([1, 10, 3, 3, 5, 2], np.uint8), "test": np.array([4, 4, 9, 1], np.uint8)}
    for split, pixels in images.items():
        (root / f"{split}_X.bin").write_bytes(stl10_bytes(pixels))
    for split, y in labels.items():
        (root / f"{split}_y.bin").write_bytes(y.tobytes())
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (root / "class_names.txt").write_text("\n".join(names) + "\n")
    folds = [[(k + j) % 6 for j in range(3)] for k in range(10)]
    (root / "fold_indices.txt").write_text("".join(" ".join(map(str, f)) + " \n" for f in folds))
    return {"root": root, "images": images, "labels": labels, "names": names, "folds": folds}


@pytest.fixture
def cifar_src(tmp_path: Path) -> dict:
    """cifar-10-batches-py/ with 5 train batches of 3 images and a test batch of 4."""
    rng = np.random.default_rng(2)
    root = tmp_path / "raw" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    batches = {}
    for name, n in [*((f"data_batch_{i}", 3) for i in range(1, 6)), ("test_batch", 4)]:
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        data = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane, each row-major
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f)
        batches[name] = (hwc, labels)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": 3, b"num_vis": 3072}, f)
    return {"root": root, "batches": batches, "names": [n.decode() for n in names]}


@pytest.fixture
def tiny_src(tmp_path: Path) -> dict:
    """tiny-imagenet-200/ with 3 classes (wnids.txt unsorted), 2 train images each (one greyscale),
    3 val images with annotations, 2 unlabeled test images."""
    rng = np.random.default_rng(3)
    root = tmp_path / "raw" / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "test" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tcat\nn03\tdog\n")
    files = {}
    for wnid in wnids:
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t10\t10\n")
        for i in range(2):
            path = root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            path.write_bytes(jpeg_bytes(rng, "L" if (wnid, i) == ("n02", 1) else "RGB"))
            files[path] = wnid
    val_lines = []
    for i, wnid in enumerate(["n02", "n03", "n01"]):
        path = root / "val" / "images" / f"val_{i}.JPEG"
        path.write_bytes(jpeg_bytes(rng))
        files[path] = wnid
        val_lines.append(f"val_{i}.JPEG\t{wnid}\t0\t1\t62\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(val_lines))
    for i in range(2):
        path = root / "test" / "images" / f"test_{i}.JPEG"
        path.write_bytes(jpeg_bytes(rng))
        files[path] = None
    return {"root": root, "files": files, "sorted_wnids": sorted(wnids)}


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@pytest.fixture(params=["gz", "raw"])
def idx_src(request, tmp_path: Path) -> dict:
    """The four MNIST-family files, gzipped as published or raw: 12 train, 5 test random 28x28
    images with labels 0..9; train image 0 has a bright bar in its top-left rows (flips if the
    reader transposes)."""
    rng = np.random.default_rng(4)
    root = tmp_path / "raw"
    root.mkdir()
    images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in [("train", 12), ("test", 5)]}
    images["train"][0] = 0
    images["train"][0, :3, :20] = 255
    labels = {s: rng.integers(0, 10, len(x), dtype=np.uint8) for s, x in images.items()}
    labels["train"][:2] = (0, 9)
    for split, (x_name, y_name) in IDX_FILES.items():
        for name, array in ((x_name, images[split]), (y_name, labels[split])):
            data = idx_bytes(array)
            if request.param == "gz":
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return {"root": root, "images": images, "labels": labels, "gz": request.param == "gz"}
