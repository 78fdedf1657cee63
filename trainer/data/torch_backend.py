"""The torch backend: decode + torchvision.transforms.v2 in DataLoader workers, normalize on the device.

Each DataLoader item is one whole batch (epoch, step, sample indices) from sampling.Plan. The worker
seeds torch's RNG from (seed, global_rank, epoch, step) before augmenting it, so a batch's pixels do
not depend on the number of workers, and resuming at `start_step` costs nothing: skipped batches
are never produced. Workers return uint8 (a quarter of float32's bytes through shared and pinned
memory); the float conversion and normalization run on the target device.
"""

from __future__ import annotations

import atexit
import functools
import io
import multiprocessing
import signal
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from trainer.data.params import SOLARIZE_THRESHOLD, blur_kernel_size, jitter_ranges
from trainer.data.samples import SampleIndex
from trainer.data.sampling import epoch_seed
from trainer.data.views import ViewSpec


class FixedOrderJitter:
    """Colour jitter in the order brightness, contrast, saturation, hue (see params.py for why)."""

    def __init__(self, spec: ViewSpec):
        self.ranges = jitter_ranges(spec)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        b, c, s, h = (float(torch.empty(1).uniform_(*self.ranges[k])) for k in self.ranges)
        img = F.adjust_brightness(img, b)
        img = F.adjust_contrast(img, c)
        img = F.adjust_saturation(img, s)
        return F.adjust_hue(img, h)


def view_transform(spec: ViewSpec) -> v2.Compose:
    """The ViewSpec as torchvision v2 ops on a uint8 [3, H, W] tensor (order as in ViewSpec's docstring)."""
    ops = [v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True)]
    if spec.flip_prob > 0:
        ops.append(v2.RandomHorizontalFlip(spec.flip_prob))
    if spec.jitter_prob > 0:
        ops.append(v2.RandomApply([FixedOrderJitter(spec)], p=spec.jitter_prob))
    if spec.gray_prob > 0:
        ops.append(v2.RandomGrayscale(spec.gray_prob))
    if spec.blur_prob > 0:
        blur = v2.GaussianBlur(blur_kernel_size(spec.size), sigma=spec.blur_sigma)
        ops.append(v2.RandomApply([blur], p=spec.blur_prob))
    if spec.solarize_prob > 0:
        ops.append(v2.RandomSolarize(SOLARIZE_THRESHOLD, p=spec.solarize_prob))
    if spec.rotation % 360:
        # rot90 turns counter-clockwise for k > 0, like torchvision's rotate and DALI's
        ops.append(functools.partial(torch.rot90, k=spec.rotation // 90, dims=(-2, -1)))
    return v2.Compose(ops)


DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def decode_rgb(data: bytes) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 [3, H, W]; grayscale, CMYK and alpha images become RGB.

    PIL, not torchvision.io: torchvision 0.29 deprecates its decoders (in favour of torchcodec).
    """
    with Image.open(io.BytesIO(data)) as image:
        return F.pil_to_tensor(image.convert("RGB"))


class BatchViews(Dataset):
    """Item (epoch, step, indices) -> (views: V x uint8 [B, 3, H, W], labels int64 [B], corrupt count).

    An undecodable sample raises (on_corrupt="fail") or is skipped and counted, its place taken by the
    next decodable sample in manifest order, so every rank's batch keeps the same shape.
    """

    def __init__(self, samples: SampleIndex, views: list[ViewSpec], seed: int, global_rank: int, on_corrupt: str):
        self.samples, self.seed, self.global_rank, self.on_corrupt = samples, seed, global_rank, on_corrupt
        self.transforms = [view_transform(v) for v in views]

    def _decode(self, i: int) -> tuple[torch.Tensor, int, int]:
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
        views: list[list[torch.Tensor]] = [[] for _ in self.transforms]
        used, corrupt = [], 0
        with torch.random.fork_rng(devices=[]):  # num_workers=0 runs here in the main process
            torch.manual_seed(epoch_seed(self.seed, self.global_rank, epoch, step))
            for i in indices:
                image, j, skipped = self._decode(int(i))
                used.append(j)
                corrupt += skipped
                for out, transform in zip(views, self.transforms):
                    out.append(transform(image))
        labels = torch.from_numpy(self.samples.labels[used])
        return [torch.stack(v) for v in views], labels, corrupt

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
    for sig in (signal.SIGTERM, signal.SIGUSR1):
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
        self.loader = DataLoader(
            BatchViews(samples, views, seed, global_rank, on_corrupt),
            batch_size=None,  # items are whole batches
            sampler=self.schedule,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,  # no worker start-up (and re-import) every epoch
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=ignore_preemption_signals,
        )
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def run(self, batches: list[np.ndarray], epoch: int, start_step: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        self.schedule.items = [(epoch, s, batches[s]) for s in range(start_step, len(batches))]
        for views, labels, corrupt in self.loader:
            self.stats["corrupt_skipped"] += corrupt
            yield [self._normalize(v) for v in views], labels.to(self.device, non_blocking=True)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x.float() - self.mean) / self.std
