"""A PNG grid of images and their augmented views, to eyeball a recipe (`python -m trainer show`).

Row i is image i of the split: its deterministic resize first, then each view of the method's recipe
(un-normalized, resized to a common cell so local crops show at the same scale as global ones).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.dist import DistContext
from trainer.types import ViewSpec

PAD = 2


def render_grid(data: DataConfig, views: list[ViewSpec], out: str | Path, rows: int = 8, seed: int = 0) -> Path:
    """Write the grid to `out`: (1 + len(views)) columns of `cell` px, cell = largest view size."""
    cell = max(v.size for v in views)
    original = ViewSpec(size=cell, scale=(1, 1), ratio=(1, 1), flip_prob=0, jitter_prob=0, gray_prob=0)
    loader = build_loader(data, [original, *views], DistContext(), rows, seed, train=False)
    batch = next(loader.epoch(0))
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    cells = [F.interpolate((v.float().cpu() * std + mean).clamp(0, 1), size=(cell, cell), mode="nearest")
             for v in batch.views]
    tiles = torch.stack(cells, dim=1).flatten(0, 1)  # row-major: image, then its views
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(tiles, nrow=len(cells), padding=PAD), out)
    return out
