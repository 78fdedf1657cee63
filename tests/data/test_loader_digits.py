"""The loader on real data_prep output (`python -m data_prep digits`), checked against the tars read
back with plain `tarfile` + PIL: same images, same labels, in manifest order, for both backends."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from tolerance import rounding_bound

from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.dist import DistContext
from trainer.types import ViewSpec

pytestmark = pytest.mark.slow
RESIZE = ViewSpec(size=32, scale=(1, 1), ratio=(1, 1), flip_prob=0, jitter_prob=0, gray_prob=0)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(out)], check=True, capture_output=True)
    # DALI reads only verified shards
    subprocess.run([sys.executable, "-m", "data_prep", "verify", "--out", str(out / "digits")], check=True,
                   capture_output=True)
    return out / "digits"


def read_back(root, split):
    manifest = json.loads((root / "manifest.json").read_text())
    images, labels = [], []
    for shard in manifest["splits"][split]["shards"]:
        with tarfile.open(root / shard["file"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # in tar order
        for name in (n for n in members if n.endswith(".png")):
            images.append(np.asarray(Image.open(io.BytesIO(members[name])).convert("RGB")))
            labels.append(int(members[name[: -len("png")] + "cls"]))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float(), torch.tensor(labels)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_digits_test_split_round_trips(digits, backend):
    want_images, want_labels = read_back(digits, "test")
    data = DataConfig(shards=str(digits), backend=backend, workers=1)
    loader = build_loader(data, [RESIZE], DistContext(global_rank=1, world_size=2), 64, seed=0, split="test",
                          train=False)
    batches = list(loader.epoch(0))
    images = torch.cat([b.views[0] for b in batches])
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    half = len(want_labels) // 2  # rank 1 of 2 reads the second half
    assert loader.num_samples == len(want_labels) == 360 and loader.class_names == [str(c) for c in range(10)]
    assert torch.equal(torch.cat([b.labels for b in batches]), want_labels[half:])
    # (x / 255 - mean) / std and back in float32: 7 roundings, each within eps32/2 of values <= 255 (1 + mean)
    bound = rounding_bound(torch.float32, 255 * 2, 4)
    torch.testing.assert_close(images * std * 255 + mean * 255, want_images[half:], rtol=0, atol=bound)


def test_dali_accepts_data_prep_verify(digits):
    assert json.loads((digits / "manifest.json").read_text())["verified"] is True
    data = DataConfig(shards=str(digits), backend="dali", workers=1)
    loader = build_loader(data, [ViewSpec(size=32)] * 2, DistContext(), 64, seed=0)
    batch = next(loader.epoch(0))
    assert loader.steps_per_epoch == 1437 // 64 and [v.shape for v in batch.views] == [(64, 3, 32, 32)] * 2
