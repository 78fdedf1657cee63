"""On a GPU: batches arrive on the device, channels_last, and match the CPU path's pixels."""

from __future__ import annotations

import pytest
import torch
from shardkit import MEAN, STD, coded_dataset, decode_ids

from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.dist import DistContext
from trainer.types import ViewSpec

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_cuda_batches_are_channels_last_and_complete(tmp_path, backend):
    root = coded_dataset(tmp_path, 40, verified=True)
    views = [ViewSpec(size=8, scale=(1, 1), ratio=(1, 1), flip_prob=0, jitter_prob=0, gray_prob=0), ViewSpec(size=6)]
    data = DataConfig(shards=str(root), backend=backend, workers=2, mean=MEAN, std=STD)
    cuda = build_loader(data, views, DistContext(device=torch.device("cuda", 0)), 8, seed=1)
    cpu = build_loader(data, views, DistContext(), 8, seed=1)
    seen = []
    for gpu_batch, cpu_batch in zip(cuda.epoch(0), cpu.epoch(0)):
        for v in gpu_batch.views:
            assert v.is_cuda and v.dtype == torch.float32
            assert v.is_contiguous(memory_format=torch.channels_last)
        assert gpu_batch.labels.is_cuda
        ids = decode_ids(gpu_batch.views[0])
        assert ids == decode_ids(cpu_batch.views[0])  # same samples, same order on either device
        seen += ids
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 40
