"""Multi-rank feature extraction with uneven counts (one rank empty) equals one process on all batches."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tolerance import rounding_bound
from torch import nn

from trainer.dist import init_distributed, shutdown
from trainer.eval.features import extract
from trainer.types import Batch

PARTS = [(0, 5), (5, 5), (5, 9)]  # rank r extracts samples [start, stop): 5, 0 and 4 samples


def all_batches():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(9, 3, 4, 4, generator=g), torch.arange(9) % 3
    return images, labels


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 6))


def rank_batches(rank):
    images, labels = all_batches()
    start, stop = PARTS[rank]
    return [Batch([images[i:min(i + 2, stop)]], labels[i:min(i + 2, stop)]) for i in range(start, stop, 2)]


def worker(rank, world, port, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = init_distributed()
    features, labels = extract(rank_batches(rank), model(), ctx.device, torch.device("cpu"))
    torch.save({"features": features, "labels": labels}, f"{out}/rank{rank}.pt")
    shutdown()


@pytest.mark.slow
def test_three_ranks_uneven_equal_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(len(PARTS), port, str(tmp_path)), nprocs=len(PARTS), join=True)
    images, labels = all_batches()
    with torch.no_grad():
        want = model().eval()(images)
    for rank in range(len(PARTS)):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["labels"], labels)
        # a Linear over 48 inputs on batches of 2 against one of all images: 48-term float32 dots that BLAS
        # may sum in another order, within eps32 x sum|terms| x 48 (sum|terms| <= 48 x max|w| x max|x|)
        scale = 48 * model()[1].weight.abs().max().item() * images.abs().max().item()
        torch.testing.assert_close(got["features"], want, rtol=0, atol=rounding_bound(torch.float32, scale, 48))


def test_one_process_extracts_images_when_no_model():
    images, labels = all_batches()
    batches = [Batch([images[i:i + 4]], labels[i:i + 4]) for i in range(0, 9, 4)]
    got_images, got_labels = extract(batches, None, torch.device("cpu"), torch.device("cpu"))
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels)
