"""The torch backend: PIL decode + batched augmentation (batch_augment.py) in DataLoader workers,
normalize on the device.

Each DataLoader item is one whole batch (epoch, step, sample indices) from sampling.Plan. Its random
parameters come from a generator seeded by (seed, global_rank, epoch, step), so a batch's pixels do
not depend on the number of workers, and resuming at `start_step` costs nothing: skipped batches
are never produced. For a GPU, workers return uint8 (a quarter of float32's bytes through shared and
pinned memory) and the GPU normalizes; for the CPU, the main process is the trainer, so the workers
normalize too.
"""

from __future__ import annotations

import atexit
import io
import multiprocessing
import signal
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from data_prep.shard_format import DECODE_ERRORS
from trainer.data.batch_augment import crop_views, draw_params, photometric
from trainer.data.samples import SampleIndex
from trainer.data.sampling import epoch_seed
from trainer.types import ViewSpec


def decode_rgb(data: bytes) -> Image.Image:
    """JPEG/PNG bytes -> a decoded RGB image; grayscale, CMYK and alpha images become RGB.

    PIL, not torchvision.io: torchvision 0.29 deprecates its decoders (in favour of torchcodec).
    """
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")  # convert decodes: a corrupt body raises here


class BatchViews(Dataset):
    """Item (epoch, step, indices) -> (views: V x [B, 3, H, W], labels int64 [B], corrupt count); views are
    uint8, or float32 normalized when `normalize` = (mean, std) shaped [1, 3, 1, 1] is given.

    An undecodable sample raises (on_corrupt="fail") or is skipped and counted, its place taken by the
    next decodable sample in manifest order, so every rank's batch keeps the same shape.
    """

    def __init__(self, samples: SampleIndex, views: list[ViewSpec], seed: int, global_rank: int, on_corrupt: str,
                 normalize: tuple[torch.Tensor, torch.Tensor] | None):
        self.samples, self.seed, self.global_rank, self.on_corrupt = samples, seed, global_rank, on_corrupt
        self.views, self.normalize = views, normalize

    def _decode(self, i: int) -> tuple[Image.Image, int, int]:
        """(image, index actually used, samples skipped)."""
        n = len(self.samples)
        for skipped in range(n):
            j = (i + skipped) % n
            try:
                return decode_rgb(self.samples.read(j)), j, skipped
            except DECODE_ERRORS as err:
                if self.on_corrupt == "fail":
                    ref = self.samples.ref(j)
                    raise ValueError(f"{ref.shard}: sample {ref.key!r} cannot be decoded ({err})") from err
        raise ValueError(f"{self.samples.root}: no sample of split {self.samples.split!r} can be decoded")

    def __getitem__(self, item: tuple[int, int, np.ndarray]) -> tuple[list[torch.Tensor], torch.Tensor, int]:
        epoch, step, indices = item
        images, used, corrupt = [], [], 0
        for i in indices:
            image, j, skipped = self._decode(int(i))
            images.append(image)
            used.append(j)
            corrupt += skipped
        rng = np.random.default_rng(epoch_seed(self.seed, self.global_rank, epoch, step))
        sizes = np.array([image.size for image in images])
        views = []
        for spec in self.views:
            params = draw_params(rng, spec, sizes)
            views.append(photometric(crop_views(images, params, spec.size), params, spec, self.normalize))
        labels = torch.from_numpy(self.samples.labels[used])
        return views, labels, corrupt

    def __len__(self) -> int:
        return len(self.samples)


class _Schedule(Sampler):
    """Yields the (epoch, step, indices) items of the epoch being read, from `start_step` on."""

    def __init__(self):
        self.items: list[tuple[int, int, np.ndarray]] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: Slurm signals a rank's whole process group, and a worker killed by
    SIGTERM takes the main process down with it (exit 1) before it can save and exit 75. The main
    process handles the signal; the workers end when it shuts the DataLoader down (`_kill_workers_at_exit`)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):  # SIGINT: Ctrl-C reaches the whole group
        signal.signal(sig, signal.SIG_IGN)


def _kill_workers_at_exit() -> None:
    """multiprocessing's exit hook SIGTERMs its daemonic children (DataLoader workers) and joins them;
    these workers ignore SIGTERM, so it would wait forever on any worker still alive at exit (a
    persistent iterator, or one kept by a traceback after its loader is gone). Registered after
    multiprocessing's hook, this one runs first and does what it means with SIGKILL; the DataLoader's
    SIGCHLD check is switched off first, since a worker killed at exit is no failure."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_kill_workers_at_exit)


class TorchBackend:
    def __init__(self, samples: SampleIndex, views: list[ViewSpec], seed: int, global_rank: int,
                 device: torch.device, mean: list[float], std: list[float], workers: int, on_corrupt: str):
        self.device = device
        self.stats = {"corrupt_skipped": 0}
        self.schedule = _Schedule()
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.loader = DataLoader(
            BatchViews(samples, views, seed, global_rank, on_corrupt,
                       None if device.type == "cuda" else (self.mean.cpu(), self.std.cpu())),
            batch_size=None,  # items are whole batches
            sampler=self.schedule,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,  # no worker start-up (and re-import) every epoch
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=ignore_preemption_signals,
            # each new iterator draws a base seed: from the global generator it would shift the model's random
            # stream (MAE's masks, dropout) by one draw on a mid-epoch resume, and the resume would not be exact
            generator=torch.Generator().manual_seed(seed),
        )

    def run(self, batches: list[np.ndarray], epoch: int, start_step: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        self.schedule.items = [(epoch, s, batches[s]) for s in range(start_step, len(batches))]
        for views, labels, corrupt in self.loader:
            self.stats["corrupt_skipped"] += corrupt
            yield [self._normalize(v) for v in views], labels.to(self.device, non_blocking=True)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():  # normalized by the workers
            return x.to(self.device, non_blocking=True)
        # channels_last on the CPU too: oneDNN's NHWC convolutions take 0.78x the step of NCHW inputs
        # (Fashion-MNIST SimCLR step, 28 px, 1 thread; benchmarks/README.md)
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return (x.float() / 255 - self.mean) / self.std
