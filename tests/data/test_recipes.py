"""Every registered method's recipe (multi-crop and blur on) compiles and runs in both backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from shardkit import encode, write_dataset

from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.data.params import blur_kernel_size
from trainer.dist import DistContext
from trainer.methods import METHODS
from trainer.registry import load_config
from trainer.types import ViewSpec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    blobs = [encode(Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)), "JPEG") for _ in range(8)]
    return write_dataset(tmp_path_factory.mktemp("recipes"), [(b, "jpg", 3) for b in blobs], verified=True)


@pytest.mark.parametrize("backend", ["torch", "dali"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_views_run(dataset, method, backend):
    cfg = load_config(None, [f"method.name={method}", "data.image_size=16", "aug.local_crops=2", "aug.blur=always"])
    views = METHODS[method].views(cfg.method, cfg.data, cfg.aug)
    data = DataConfig(shards=str(dataset), backend=backend, workers=1)
    batch = next(build_loader(data, views, DistContext(), 4, seed=0).epoch(0))
    assert [tuple(v.shape) for v in batch.views] == [(4, 3, s.size, s.size) for s in views]
    assert all(torch.isfinite(v).all() for v in batch.views) and batch.labels.tolist() == [3] * 4


def test_blur_kernel_is_odd_and_about_a_tenth():
    assert [blur_kernel_size(s) for s in (7, 32, 64, 96, 224)] == [3, 3, 7, 9, 23]


def test_rotation_must_be_a_multiple_of_90(dataset):
    with pytest.raises(ValueError, match="multiple of 90"):
        build_loader(DataConfig(shards=str(dataset)), [ViewSpec(size=8, rotation=45)], DistContext(), 2, 0)
