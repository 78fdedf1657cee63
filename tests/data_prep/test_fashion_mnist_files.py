"""The real Fashion-MNIST files (Debian's dataset-fashion-mnist, installed by tests/install_system_deps.sh)
end to end, checked against the IDX arrays read here with gzip + numpy, independently of data_prep/idx.py.

Only the test split is sharded (10,000 images: ~25 s with the read-back on 2 cores); all 70,000 took 63 s
to shard alone, and the train split goes through the same writer code, so it is checked at the reader
(count, per-class counts, every pixel and label)."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from prep_helpers import load_json, read_shards, run_cli

from data_prep.mnist import FASHION_MNIST, read_idx_dataset

pytestmark = pytest.mark.slow
SRC = FASHION_MNIST.default_src
REPO = Path(__file__).resolve().parents[2]
# MD5 of each decompressed file, as loaders pin them for the published .gz files (e.g. torchvision-style
# FashionMNIST `raw_data`): Debian recompresses the .gz, so only the content can match the originals
CONTENT_MD5 = {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
               "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
               "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
               "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"}


def numpy_idx(name: str) -> np.ndarray:
    data = gzip.decompress((SRC / f"{name}.gz").read_bytes())
    assert hashlib.md5(data).hexdigest() == CONTENT_MD5[name]  # the original bytes
    if "images" in name:  # header: magic, count, rows, cols as big-endian uint32
        _, n, rows, cols = np.frombuffer(data[:16], ">u4")
        return np.frombuffer(data[16:], np.uint8).reshape(n, rows, cols)
    return np.frombuffer(data[8:], np.uint8)


@pytest.fixture(scope="module")
def originals() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not (SRC / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{SRC}: dataset-fashion-mnist not installed: run tests/install_system_deps.sh")
    return {split: (numpy_idx(f"{prefix}-images-idx3-ubyte"), numpy_idx(f"{prefix}-labels-idx1-ubyte"))
            for split, prefix in [("train", "train"), ("test", "t10k")]}


def test_test_split_shards_pixel_exact(originals, tmp_path: Path):
    images, labels = originals["test"]
    assert run_cli("fashion-mnist", "--out", tmp_path, "--splits", "test", "--workers", 2) == 0
    samples = read_shards(tmp_path / "fashion-mnist", "test")  # tarfile + PIL, not webdataset
    assert len(samples) == 10_000
    got_labels = []
    for key, sample in samples.items():
        i = int(key.rsplit("_", 1)[1])
        np.testing.assert_array_equal(sample["pixels"][..., 0], images[i])  # L decoded to RGB: equal channels
        np.testing.assert_array_equal(sample["pixels"][..., 2], images[i])
        assert sample["cls"] == labels[i]
        got_labels.append(sample["cls"])
    assert np.bincount(got_labels).tolist() == [1_000] * 10
    manifest = load_json(tmp_path / "fashion-mnist" / "manifest.json")
    assert manifest["splits"]["test"]["num_samples"] == 10_000 and manifest["image_size"] == [28, 28]
    assert manifest["class_names"]["0"] == "T-shirt/top" and manifest["class_names"]["9"] == "Ankle boot"


def test_train_split_reads_as_numpy_does(originals):
    images, labels = originals["train"]
    (train,) = read_idx_dataset(FASHION_MNIST, SRC, ["train"]).splits
    assert train.size == len(images) == 60_000
    assert np.bincount(train.read.labels).tolist() == [6_000] * 10
    np.testing.assert_array_equal(train.read.images, images)  # every pixel, as the writer's workers get them
    np.testing.assert_array_equal(train.read.labels, labels)


def test_dataset_config_mean_std_are_the_train_split_s(originals):
    data = yaml.safe_load((REPO / "configs" / "datasets" / "fashion_mnist.yaml").read_text())["data"]
    counts = np.bincount(originals["train"][0].ravel(), minlength=256)  # exact: a histogram of the 47M pixels
    values = np.arange(256) / 255
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    # the config rounds to 4 decimals: within 5e-5 of the float64 statistic
    assert np.allclose(data["mean"], mean, rtol=0, atol=5e-5) and np.allclose(data["std"], std, rtol=0, atol=5e-5)
