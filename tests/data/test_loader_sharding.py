"""Distributed correctness of the Loader, both backends: which samples each simulated rank reads.

Sample ids are read back from the pixels (shardkit.coded_png), through the production path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from shardkit import MEAN, STD, coded_dataset, decode_ids, encode, write_dataset

from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.dist import DistContext
from trainer.types import ViewSpec

N, B, W = 50, 4, 3
IDENTITY = ViewSpec(size=8, scale=(1, 1), ratio=(1, 1), flip_prob=0, jitter_prob=0, gray_prob=0)
BACKENDS = [("torch", 0), ("torch", 2), ("dali", 2)]


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    return coded_dataset(tmp_path_factory.mktemp("coded"), N, per_shard=16, verified=True)


def read_ids(root, backend, workers, rank, world, batch, epoch, train=True, seed=7):
    data = DataConfig(shards=str(root), backend=backend, workers=workers, mean=MEAN, std=STD)
    loader = build_loader(data, [IDENTITY], DistContext(global_rank=rank, world_size=world), batch, seed, train=train)
    steps = []
    for b in loader.epoch(epoch):
        ids = decode_ids(b.views[0])
        assert b.labels.tolist() == [i % 10 for i in ids]  # labels travel with their images
        steps.append(ids)
    assert len(steps) == loader.steps_per_epoch and loader.num_samples == N
    return steps


@pytest.mark.parametrize("backend,workers", BACKENDS)
def test_ranks_split_each_epoch_exactly(coded, backend, workers):
    epochs = []
    for epoch in (0, 1):
        per_rank = [read_ids(coded, backend, workers, r, W, B, epoch) for r in range(W)]
        steps = N // (W * B)
        assert all(len(s) == steps and all(len(b) == B for b in s) for s in per_rank)
        seen = [i for s in per_rank for b in s for i in b]
        assert len(seen) == len(set(seen)) == steps * W * B  # disjoint, nothing read twice
        assert set(seen) <= set(range(N))  # only the N mod (W*B) = 2 last ones are dropped
        # one process with the global batch reads the same global batches, in the same order
        single = read_ids(coded, "torch", 0, 0, 1, W * B, epoch)
        assert single == [[i for r in range(W) for i in per_rank[r][s]] for s in range(steps)]
        epochs.append(per_rank)
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    assert read_ids(coded, backend, workers, 1, W, B, 1) == epochs[1][1]  # reproducible from (seed, epoch)
    assert read_ids(coded, backend, workers, 1, W, B, 1, seed=8) != epochs[1][1]


@pytest.mark.parametrize("backend,workers", [("torch", 0), ("dali", 1)])
def test_eval_mode_keeps_order_and_every_sample(coded, backend, workers):
    per_rank = [read_ids(coded, backend, workers, r, W, B, epoch=0, train=False) for r in range(W)]
    assert [i for s in per_rank for b in s for i in b] == list(range(N))
    assert [sum(map(len, s)) for s in per_rank] == [17, 17, 16]


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = [encode(Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)), "JPEG", quality=90)
              for _ in range(24)]
    return write_dataset(tmp_path_factory.mktemp("textured"), [(b, "jpg", 1) for b in images], verified=True)


def epoch_tensors(root, backend, workers, start_step=0):
    views = [ViewSpec(size=12, blur_prob=0.5, solarize_prob=0.3), ViewSpec(size=8, rotation=270)]
    data = DataConfig(shards=str(root), backend=backend, workers=workers)
    loader = build_loader(data, views, DistContext(global_rank=1, world_size=2), 3, seed=5)
    return [torch.cat([v.flatten(1) for v in b.views], 1) for b in loader.epoch(2, start_step)]


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_resume_mid_epoch_is_exact(textured, backend):
    full = epoch_tensors(textured, backend, 2)
    resumed = epoch_tensors(textured, backend, 2, start_step=2)
    assert len(full) == 4 and len(resumed) == 2
    assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed))
    assert not torch.equal(full[0], full[1])


def test_torch_backend_pixels_do_not_depend_on_workers(textured):
    a, b = epoch_tensors(textured, "torch", 0), epoch_tensors(textured, "torch", 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
