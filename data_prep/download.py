"""`--download`: fetch an official archive, check its MD5, extract it next to itself.

MD5s are the published ones (CIFAR-10: the authors' page; STL-10: as pinned by torchvision;
Tiny ImageNet: as pinned by common loaders). Nothing is extracted from an archive that fails.
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


def download(dataset: str, dest: Path) -> Path:
    """Download and extract into `dest` unless the extracted folder is already there."""
    url, md5, folder = ARCHIVES[dataset]
    if (dest / folder).is_dir():
        return dest / folder
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / url.rsplit("/", 1)[1]
    if not archive.is_file():
        partial = archive.with_name(archive.name + ".partial")
        print(f"downloading {url} -> {archive}")
        with urllib.request.urlopen(url) as response, open(partial, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        os.replace(partial, archive)
    digest = hashlib.md5(usedforsecurity=False)
    with open(archive, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != md5:
        raise PrepError(f"{archive}: md5 {digest.hexdigest()} != published {md5} (delete it and retry)")
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    return dest / folder
