"""fashion-mnist / mnist: IDX files (gzipped or raw) -> one-channel PNG shards, pixels exact; every header
field checked."""

import functools
import gzip
import hashlib
import http.server
import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from prep_helpers import idx_bytes, load_json, read_shards, run_cli

from data_prep.download import IDX_FILES
from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.dist import DistContext
from trainer.types import ViewSpec

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]  # the label table of zalandoresearch/fashion-mnist's README


@pytest.mark.parametrize("dataset, names", [("fashion-mnist", FASHION_NAMES), ("mnist", [str(d) for d in range(10)])])
def test_pixels_and_labels_survive(idx_src, tmp_path: Path, dataset, names):
    assert run_cli(dataset, "--src", idx_src["root"], "--out", tmp_path / "shards", "--workers", 1) == 0
    for split in ("train", "test"):
        samples = read_shards(tmp_path / "shards" / dataset, split)
        assert len(samples) == len(idx_src["images"][split])
        for key, sample in samples.items():
            i = int(key.rsplit("_", 1)[1])
            stored = Image.open(io.BytesIO(sample["bytes"]))
            assert sample["ext"] == "png" and stored.mode == "L"  # one channel, as the IDX holds it
            np.testing.assert_array_equal(np.asarray(stored), idx_src["images"][split][i])
            assert sample["cls"] == idx_src["labels"][split][i]
    manifest = load_json(tmp_path / "shards" / dataset / "manifest.json")
    assert manifest["classes"] == [str(k) for k in range(10)]
    assert [manifest["class_names"][c] for c in manifest["classes"]] == names
    assert manifest["image_size"] == [28, 28] and manifest["format"] == "png"
    assert manifest["source"]["format"] == "idx"


@pytest.mark.parametrize("idx_src", ["gz"], indirect=True)
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_loaders_decode_the_stored_pixels(idx_src, tmp_path: Path, backend):
    """A one-channel PNG reaches the model as three equal channels holding the IDX pixels."""
    out = tmp_path / "shards"
    assert run_cli("fashion-mnist", "--src", idx_src["root"], "--out", out, "--workers", 1, "--splits", "test") == 0
    assert run_cli("verify", "--out", out / "fashion-mnist", "--workers", 1) == 0
    data = DataConfig(shards=str(out / "fashion-mnist"), split="test", backend=backend, workers=1,
                      mean=[0.0] * 3, std=[1.0] * 3)
    exact = ViewSpec(size=28, scale=(1, 1), ratio=(1, 1), flip_prob=0, jitter_prob=0, gray_prob=0)
    n = len(idx_src["images"]["test"])
    loader = build_loader(data, [exact], DistContext(), n, seed=0, train=False)
    views = torch.cat([b.views[0] for b in loader.epoch(0)]).cpu().float()
    assert views.shape == (n, 3, 28, 28)
    # x / 255 in float32 and back: |error| <= 255 * 2^-24 per pixel, far below the 0.5 rounding needs
    pixels = views * 255
    assert (pixels - pixels.round()).abs().max() < 1e-3
    got = pixels.round().to(torch.uint8).numpy()
    assert (got == got[:, :1]).all()  # channels equal
    assert sorted_bytes(got[:, 0]) == sorted_bytes(idx_src["images"]["test"])  # the loader shuffles


def sorted_bytes(images: np.ndarray) -> list[bytes]:
    return sorted(image.tobytes() for image in images)


def write(root: Path, name: str, data: bytes) -> None:
    """Replace one of the four files (gzipped or raw) by `data`, stored raw."""
    for old in (root / name, root / f"{name}.gz"):
        old.unlink(missing_ok=True)
    (root / name).write_bytes(data)


def images(n: int = 12, rows: int = 28, cols: int = 28) -> np.ndarray:
    return np.zeros((n, rows, cols), np.uint8)


TRAIN_X, TRAIN_Y, TEST_X, TEST_Y = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                    "t10k-labels-idx1-ubyte")


@pytest.mark.parametrize("idx_src", ["raw"], indirect=True)
@pytest.mark.parametrize("damage, message", [
    (lambda r: write(r, TRAIN_X, idx_bytes(images(), magic=2049)),
     f"{TRAIN_X}: magic number 2049 (0x00000801), expected 2051 (0x00000803)"),
    (lambda r: write(r, TEST_Y, idx_bytes(np.zeros(5, np.uint8), magic=2051)),
     f"{TEST_Y}: magic number 2051 (0x00000803), expected 2049 (0x00000801)"),
    (lambda r: write(r, TRAIN_X, idx_bytes(images(rows=27))), f"{TRAIN_X}: header dims 27x28, expected 28x28"),
    (lambda r: write(r, TEST_X, idx_bytes(images(n=0))), f"{TEST_X}: header dims [0, 28, 28] include a zero"),
    (lambda r: write(r, TRAIN_Y, idx_bytes(np.zeros(11, np.uint8))),
     f"{TRAIN_Y}: header count 11 labels, but the images file holds 12 images"),
    (lambda r: write(r, TRAIN_Y, idx_bytes(np.array([0, 1, 2, 10] + [0] * 8, np.uint8))),
     f"{TRAIN_Y}: label 10 at index 3 is outside 0..9"),
    (lambda r: write(r, TRAIN_X, idx_bytes(images())[:-1]),
     f"{TRAIN_X}: length {16 + 12 * 784 - 1} bytes, the header declares {16 + 12 * 784}"),
    (lambda r: write(r, TEST_Y, idx_bytes(np.zeros(5, np.uint8)) + b"\0"), f"{TEST_Y}: length 14 bytes, the header declares 13"),
    (lambda r: write(r, TEST_X, b"\0\0\x08\x03\0\0"), f"{TEST_X}: 6 bytes, shorter than the 16-byte IDX header"),
    (lambda r: write(r, TRAIN_X, gzip.compress(idx_bytes(images()))[:-9]), f"{TRAIN_X}: not a readable gzip file"),
    (lambda r: (r / TEST_Y).unlink(), f"{TEST_Y}[.gz]: missing file"),
])
def test_bad_input(idx_src, tmp_path: Path, capsys, damage, message):
    damage(idx_src["root"])
    assert run_cli("mnist", "--src", idx_src["root"], "--out", tmp_path / "shards", "--workers", 1) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "shards").rglob("*.*"))  # nothing published: no manifest, no shard


@pytest.fixture
def http_folder(tmp_path: Path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served; yields (folder, base url, requested paths)."""
    folder = tmp_path / "served"
    folder.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/files/", requested
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("idx_src", ["gz"], indirect=True)
def test_download_checks_each_md5_and_keeps_only_matching_files(idx_src, http_folder, tmp_path: Path, monkeypatch,
                                                                 capsys):
    folder, base_url, requested = http_folder
    shutil.copytree(idx_src["root"], folder / "files")
    names = list(IDX_FILES["mnist"][1])  # the order they are fetched in: train images, train labels, test ...
    md5 = {name: hashlib.md5((folder / "files" / name).read_bytes()).hexdigest() for name in names}
    dest, out = tmp_path / "downloads", tmp_path / "shards"
    forged = dict(md5, **{TEST_X + ".gz": "0" * 32})
    monkeypatch.setitem(IDX_FILES, "mnist", (base_url, forged))
    assert run_cli("mnist", "--src", dest, "--out", out, "--download", "--workers", 1) == 1
    err = capsys.readouterr().err
    assert f"{dest / TEST_X}.gz: md5 {md5[TEST_X + '.gz']} != published {'0' * 32}" in err, err
    assert sorted(p.name for p in dest.iterdir()) == sorted(names[:2])  # the forged one and no partial left
    assert not out.exists()  # nothing published

    monkeypatch.setitem(IDX_FILES, "mnist", (base_url, md5))
    requested.clear()
    assert run_cli("mnist", "--src", dest, "--out", out, "--download", "--workers", 1) == 0
    assert requested == [f"/files/{TEST_X}.gz", f"/files/{TEST_Y}.gz"]  # the two already checked are kept
    for name in names:
        assert (dest / name).read_bytes() == (folder / "files" / name).read_bytes()
    assert len(read_shards(out / "mnist", "test")) == len(idx_src["images"]["test"])


def test_download_failure_names_the_url(http_folder, tmp_path: Path, monkeypatch, capsys):
    _, base_url, _ = http_folder  # serves nothing: every file is a 404
    monkeypatch.setitem(IDX_FILES, "fashion-mnist", (base_url, IDX_FILES["fashion-mnist"][1]))
    assert run_cli("fashion-mnist", "--src", tmp_path / "d", "--out", tmp_path / "o", "--download") == 1
    err = capsys.readouterr().err
    assert f"{base_url}train-images-idx3-ubyte.gz: download to " in err and "404" in err, err
    assert list((tmp_path / "d").iterdir()) == [] and not (tmp_path / "o").exists()
