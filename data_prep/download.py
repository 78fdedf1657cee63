"""`--download`: fetch the official files, check their MD5, and only then put them in place.

MD5s are the published ones (CIFAR-10: the authors' page; Fashion-MNIST: its README's table;
STL-10 and MNIST: as pinned by torchvision, whose MNIST mirror is used because yann.lecun.com
refuses plain downloads; Tiny ImageNet: as pinned by common loaders). A file is downloaded under
`<name>.partial` and renamed only once its MD5 matches, so a failed or forged download leaves
nothing behind that a later run would read; nothing is extracted from an archive that fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from data_prep.source import PrepError

ARCHIVES = {  # dataset: (url, md5, folder the archive extracts to)
    "stl10": ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
              "91f7769df0f17e558f3565bffb0c7dfb", "stl10_binary"),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "tiny-imagenet": ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                      "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200"),
}
IDX_FILES = {  # dataset: (base url, {file: md5 of the .gz as published})
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
}
DOWNLOADABLE = {*ARCHIVES, *IDX_FILES}


def download(dataset: str, dest: Path) -> Path:
    """Fetch `dataset` into `dest` (what is already there is kept) and return the folder to read."""
    if dataset in IDX_FILES:
        return _download_files(dataset, dest)
    url, md5, folder = ARCHIVES[dataset]
    if (dest / folder).is_dir():
        return dest / folder
    archive = dest / url.rsplit("/", 1)[1]
    if not archive.is_file():
        _fetch(url, archive, md5)
    elif (got := _md5(archive)) != md5:
        raise PrepError(f"{archive}: md5 {got} != published {md5} (delete it and retry)")
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    return dest / folder


def _download_files(dataset: str, dest: Path) -> Path:
    """The four IDX files; one already in `dest`, gzipped or raw, is kept (the reader checks it)."""
    base_url, files = IDX_FILES[dataset]
    for name, md5 in files.items():
        if not (dest / name).is_file() and not (dest / name.removesuffix(".gz")).is_file():
            _fetch(base_url + name, dest / name, md5)
    return dest


def _fetch(url: str, path: Path, md5: str) -> None:
    partial = path.with_name(path.name + ".partial")
    print(f"downloading {url} -> {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url) as response, open(partial, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except OSError as err:  # urllib's URLError and HTTPError are OSErrors
        partial.unlink(missing_ok=True)
        raise PrepError(f"{url}: download to {path} failed ({err})") from err
    got = _md5(partial)
    if got != md5:
        partial.unlink()
        raise PrepError(f"{path}: md5 {got} != published {md5} (downloaded from {url}, not kept)")
    os.replace(partial, path)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
