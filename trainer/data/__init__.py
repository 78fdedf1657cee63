"""The input pipeline: shards -> augmented multi-view batches on the device, two backends, one Loader.

    loader = build_loader(cfg.data, views, ctx, batch_size=per_device_batch, seed=cfg.train.seed)
    for step, batch in enumerate(loader.epoch(epoch, start_step), start=start_step): ...

Which samples a rank reads is decided in sampling.py (the same for both backends); `data.backend`
picks who decodes and augments: "torch" (DataLoader workers, PIL + batched tensor ops) or "dali" (on the GPU,
or the same graph on the CPU). The DALI backend is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_prep.manifest import load_manifest, manifest_path
from trainer.config import DataConfig
from trainer.data.samples import SampleIndex
from trainer.data.sampling import Plan
from trainer.data.torch_backend import TorchBackend
from trainer.dist import DistContext
from trainer.types import Batch, ViewSpec

__all__ = ["Batch", "Loader", "ViewSpec", "build_loader", "split_size"]


class Loader:
    """`epoch(e, start_step)` yields this rank's `steps_per_epoch - start_step` batches of epoch e.

    Deterministic for (seed, global_rank, epoch), whatever the number of workers. `num_samples` is the
    split's size over all ranks; `stats["corrupt_skipped"]` counts undecodable samples skipped so far.
    `labels` are the class ids (None for an unlabeled split); `class_names[k]` names class k.
    """

    def __init__(self, samples: SampleIndex, plan: Plan, backend):
        self.samples, self.plan, self.backend = samples, plan, backend
        self.num_samples = len(samples)
        self.steps_per_epoch = plan.steps_per_epoch
        self.class_names = samples.class_names

    @property
    def stats(self) -> dict[str, int]:
        return self.backend.stats

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside [0, {self.steps_per_epoch}]")
        for views, labels in self.backend.run(self.plan.batches(epoch), epoch, start_step):
            yield Batch(views=views, labels=labels if self.samples.labeled else None)


def split_size(data: DataConfig, split: str | None = None) -> int:
    """Images in `split` (default data.split) as the dataset's manifest records them: what the training
    plan is computed from before any loader exists."""
    split = split or data.split
    splits = load_manifest(data.shards)["splits"]
    if split not in splits:
        raise ValueError(f"{manifest_path(data.shards)}: no split {split!r}; it has {sorted(splits)}")
    return splits[split]["num_samples"]


def build_loader(data: DataConfig, views: list[ViewSpec], ctx: DistContext, batch_size: int, seed: int, *,
                 split: str | None = None, train: bool = True) -> Loader:
    """Loader over `split` (default data.split) of the dataset in data.shards; batch_size is per device."""
    if not views:
        raise ValueError("build_loader needs at least one ViewSpec")
    bad = [v.rotation for v in views if v.rotation % 90]
    if bad:
        raise ValueError(f"ViewSpec.rotation must be a multiple of 90 degrees, got {bad}")
    samples = SampleIndex(data.shards, split or data.split)
    plan = Plan(len(samples), batch_size, ctx.global_rank, ctx.world_size, seed, train)
    common = {"samples": samples, "views": views, "seed": seed, "global_rank": ctx.global_rank,
              "device": ctx.device, "mean": data.mean, "std": data.std, "workers": data.workers}
    if data.backend == "dali":
        from trainer.data.dali_backend import DaliBackend  # DALI is optional at import time

        backend = DaliBackend(**common, batch_size=batch_size)
    elif data.backend == "torch":
        backend = TorchBackend(**common, on_corrupt=data.on_corrupt)
    else:
        raise ValueError(f"data.backend = {data.backend!r}: choose torch or dali")
    return Loader(samples, plan, backend)
