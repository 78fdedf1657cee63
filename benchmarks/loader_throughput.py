"""Input-pipeline throughput: two-view SimCLR batches per second, our backends vs a plain baseline.

    python -m benchmarks.loader_throughput [--images 3000] [--sizes 96 64] [--batch 64] [--workers 2] [--rounds 3]

Makes a synthetic dataset of JPEGs (STL-10-like, 96 px; synthetic_shards.py), written both as shards
(our loader) and as an ImageFolder tree (the baseline a user would otherwise write: torchvision
ImageFolder + PIL transforms in DataLoader workers). Each measurement starts a fresh loader, reads
`--warmup` batches, then times `--batches`; the implementations take turns for `--rounds` rounds, so
a slow spell of a shared machine hits all of them, and each row reports the median round. The DALI
row runs on the GPU when there is one, else the same graph on the CPU. Prints a table and writes
benchmarks/results/loader_<device>_<date>.json with the rows and ratio_vs_baseline per size (best
of our backends' medians over the baseline's, same run).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from benchmarks.common import add_common_args, device_label, print_table, setup, write_results
from benchmarks.synthetic_shards import make_dataset
from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.data.params import blur_kernel_size
from trainer.dist import DistContext
from trainer.types import ViewSpec


def simclr_view(size: int) -> ViewSpec:
    return ViewSpec(size=size, blur_prob=0.5)  # SimCLR defaults; blur on above 32 px


class TwoViews:
    """The baseline's transform: what a user writes with torchvision's classic PIL transforms."""

    def __init__(self, spec: ViewSpec):
        b, c, s, h = spec.jitter
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio),
            transforms.RandomHorizontalFlip(spec.flip_prob),
            transforms.RandomApply([transforms.ColorJitter(b, c, s, h)], p=spec.jitter_prob),
            transforms.RandomGrayscale(spec.gray_prob),
            transforms.RandomApply([transforms.GaussianBlur(blur_kernel_size(spec.size), spec.blur_sigma)],
                                   p=spec.blur_prob),
            transforms.ToTensor(),
            transforms.Normalize(DataConfig().mean, DataConfig().std),
        ])

    def __call__(self, image):
        return self.transform(image), self.transform(image)


def baseline_batches(folder: Path, spec: ViewSpec, batch: int, workers: int, device: torch.device):
    dataset = datasets.ImageFolder(str(folder), transform=TwoViews(spec))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    while True:
        for (v1, v2), labels in loader:
            yield v1.to(device, non_blocking=True), v2.to(device, non_blocking=True), labels


def our_batches(shards: Path, backend: str, spec: ViewSpec, batch: int, workers: int, device: torch.device):
    data = DataConfig(shards=str(shards), backend=backend, workers=workers)
    loader = build_loader(data, [spec, spec], DistContext(device=device), batch, seed=0)
    epoch = 0
    while True:
        for b in loader.epoch(epoch):
            yield b.views[0], b.views[1], b.labels
        epoch += 1


def measure(batches, batch: int, warmup: int, timed: int, device: torch.device) -> float:
    for _ in range(warmup):
        next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(timed):
        views = next(batches)
    if device.type == "cuda":
        views[0].sum().item()  # the last batch has really arrived
    return timed * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="synthetic dataset size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 64], help="view sizes (px)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads, all rows")
    parser.add_argument("--warmup", type=int, default=5, help="batches before timing")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per row, taken in turns; the median is kept")
    add_common_args(parser)
    args = parser.parse_args()
    device = setup(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shards, folder = make_dataset(Path(tmp), args.images)
        for size in args.sizes:
            spec = simclr_view(size)
            common = {"spec": spec, "batch": args.batch, "workers": args.workers, "device": device}
            impls = {
                f"dali-{device.type}": functools.partial(our_batches, shards, "dali", **common),
                "torch": functools.partial(our_batches, shards, "torch", **common),
                "baseline-imagefolder-pil": functools.partial(baseline_batches, folder, **common),
            }
            rounds = {impl: [] for impl in impls}
            for r in range(args.rounds):
                for impl, start in impls.items():
                    batches = start()
                    rounds[impl].append(round(measure(batches, args.batch, args.warmup, args.batches, device), 1))
                    batches.close()  # stop its workers before the next one is timed
                    print(f"round {r + 1}: {impl:>26} {size:>4}px batch {args.batch:>4}: "
                          f"{rounds[impl][-1]:8.1f} img/s", flush=True)
            rows += [{"impl": impl, "size": size, "batch": args.batch, "img_per_s": float(np.median(rates)),
                      "rounds": rates} for impl, rates in rounds.items()]

    ratios = {}
    for size in args.sizes:
        by_impl = {r["impl"]: r["img_per_s"] for r in rows if r["size"] == size}
        baseline = by_impl.pop("baseline-imagefolder-pil")
        ratios[str(size)] = round(max(by_impl.values()) / baseline, 2)
    print()
    print_table(rows, ["impl", "size", "batch", "img_per_s", "rounds"])
    print(f"best backend / baseline: {ratios}  ({device_label(device)}, {args.images} images, {args.workers} workers)")
    meta = {"what": "two-view SimCLR batches; img_per_s counts source images", "images": args.images,
            "workers": args.workers, "rounds": args.rounds, "views": 2}
    write_results("loader", device, meta, rows, args.out_dir, ratio_vs_baseline=ratios)


if __name__ == "__main__":
    main()
