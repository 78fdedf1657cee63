"""Frozen-backbone features (or the images themselves) of a whole labeled split, on every rank.

Each rank runs the backbone over its part of the split (the eval loader gives ranks uneven counts),
then the parts are gathered in rank order: padded to the largest count for `all_gather`, then cut
back. Features are cached outside the run folder (which may be read-only), one file per run and
split under $SSLSCALE_CACHE_DIR (default ~/.cache/sslscale/features), keyed by a hash of the backbone
weights and of the content read (the manifest's sha256 of every shard of the split, checked against
the files by their start-up stamp), so a new checkpoint or shards re-made in the same folder never
reuse stale features. A cache file that cannot be read is recomputed. The eval loader hands ranks
contiguous chunks, so the gathered order is the manifest's for any number of ranks (and matches
`split_images`).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from data_prep.manifest import load_manifest, manifest_path
from data_prep.shard_format import check_stamp
from trainer.config import DataConfig
from trainer.dist import DistContext
from trainer.types import Batch, ViewSpec


def eval_view(size: int) -> ViewSpec:
    """The deterministic view of evaluation: a resize to `size`, nothing random."""
    return ViewSpec(size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
                    gray_prob=0.0)


def gather_uneven(x: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """[n_r, ...] on rank r -> [sum_r n_r, ...] in rank order on every rank; identity in one process.

    A rank with nothing to contribute passes None (its shape and dtype are then unknown locally).
    `device` is where the collective runs: the GPU under NCCL, the CPU under gloo.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    shapes: list = [None] * dist.get_world_size()
    dist.all_gather_object(shapes, None if x is None else (tuple(x.shape), x.dtype))
    shape, dtype = next(s for s in shapes if s is not None)
    counts = [0 if s is None else s[0][0] for s in shapes]
    padded = torch.zeros((max(counts), *shape[1:]), dtype=dtype, device=device)
    if x is not None:
        padded[:x.shape[0]] = x.to(device)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


@torch.no_grad()
def extract(batches: Iterable[Batch], model: nn.Module | None, device: torch.device,
            comm_device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs [N, ...] float32, labels [N] int64) on the CPU for every rank's batches, gathered.

    `model=None` returns the images of view 0. `comm_device`: see `gather_uneven`.
    """
    if model is not None:
        model.eval()
    outputs, labels = [], []
    for batch in batches:
        if batch.labels is None:
            raise ValueError("evaluation needs a labeled split; this split has no labels")
        x = batch.views[0].to(device)
        outputs.append((model(x) if model is not None else x).float().cpu())
        labels.append(batch.labels.cpu().long())
    local_x = torch.cat(outputs) if outputs else None
    local_y = torch.cat(labels) if labels else None
    if not dist.is_initialized() and local_x is None:
        raise ValueError("the split is empty")
    return gather_uneven(local_x, comm_device).cpu(), gather_uneven(local_y, comm_device).cpu()


def split_batches(data: DataConfig, split: str, ctx: DistContext, batch_size: int) -> Iterable[Batch]:
    """This rank's part of `split`, in fixed order, through the eval view."""
    from trainer.data import build_loader  # late import: the loader pulls in the data backends

    loader = build_loader(data, [eval_view(data.image_size)], ctx, batch_size, seed=0, split=split, train=False)
    return loader.epoch(0)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer, in state_dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_cache_path(run_dir: Path, split: str) -> Path:
    """Where the features of `split` for the run in `run_dir` are cached: outside the run folder."""
    root = Path(os.environ.get("SSLSCALE_CACHE_DIR") or Path.home() / ".cache" / "sslscale") / "features"
    run = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return root / f"{run}_{hashlib.sha256(split.encode()).hexdigest()[:8]}.pt"


def content_key(backbone: nn.Module, data: DataConfig, split: str) -> str:
    """What the features depend on: the weights, the split's shard contents (the manifest's sha256s,
    after checking the files are the ones it lists) and the eval view."""
    root = Path(data.shards)
    shards = load_manifest(root)["splits"][split]["shards"]
    for entry in shards:
        check_stamp(root, entry, manifest_path(root))
    return hashlib.sha256(repr((weights_fingerprint(backbone), [s["sha256"] for s in shards], split,
                                data.image_size, data.mean, data.std)).encode()).hexdigest()


def cached_features(run_dir: Path, backbone: nn.Module, data: DataConfig, split: str, ctx: DistContext,
                    batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features and labels of `split`, from the cache when its key matches, else extracted on
    all ranks and written by rank 0 (to a temporary name, then renamed)."""
    key = content_key(backbone, data, split)
    path = feature_cache_path(run_dir, split)
    cached = _read_cache(path) if path.is_file() else None
    hit = isinstance(cached, dict) and cached.get("key") == key
    comm = ctx.device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")
    # extraction is collective: every rank must take the same branch (a cache may be per node)
    if dist.is_initialized():
        agreed = torch.tensor(int(hit), device=comm)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        hit = bool(agreed.item())
    if hit:
        return cached["features"], cached["labels"]
    features, labels = extract(split_batches(data, split, ctx, batch_size), backbone, ctx.device, comm)
    if ctx.is_main:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
            torch.save({"key": key, "features": features, "labels": labels}, tmp)
            os.replace(tmp, path)
        except OSError as err:  # a read-only home: eval still works, it only recomputes next time
            print(f"warning: {path}: feature cache not written ({err}); set SSLSCALE_CACHE_DIR",
                  file=sys.stderr)
    return features, labels


def _read_cache(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=True)
    # a damaged file raises RuntimeError, KeyError, EOFError, UnpicklingError...; it is only a cache
    except Exception as err:  # noqa: BLE001
        print(f"warning: {path}: unreadable feature cache, recomputing ({type(err).__name__}: {err})",
              file=sys.stderr)
        return None


def split_images(data: DataConfig, split: str, ctx: DistContext, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images [N, 3, H, W] (normalized, through the eval view) and labels [N] of `split`, gathered."""
    comm = ctx.device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")
    return extract(split_batches(data, split, ctx, batch_size), None, ctx.device, comm)
