"""The two backends draw views from the same distributions (geometry, flips, colour).

Geometry: a gradient image whose red channel is 4x the column and green 4x the row, so the crop box
of each view is read back from its pixels. Each test draws 8 views x 48 images = 384 samples per
backend. Tolerances are about 4 standard errors of the difference of two such means (stated per
check), and each is below the shift a wrong parameter would cause (e.g. scale (0.08, 1) vs
(0.2, 1) moves the mean area by 0.07; no flip vs p=0.5 moves the flip rate by 0.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from shardkit import MEAN, STD, encode, write_dataset

from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.dist import DistContext
from trainer.types import ViewSpec

IMAGES, VIEWS, SIZE, OUT = 48, 8, 64, 16  # n = 384 draws per backend
# where the DALI graph runs: its CPU mode everywhere, its GPU ops (a different colour path) on a GPU
DALI_DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


def draw(root, backend, spec, device="cpu"):
    data = DataConfig(shards=str(root), backend=backend, workers=1, mean=MEAN, std=STD)
    loader = build_loader(data, [spec] * VIEWS, DistContext(device=torch.device(device)), 16, seed=3)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return torch.cat([(v.cpu() * std + mean) * 255 for b in loader.epoch(0) for v in b.views]).double()


@pytest.fixture(scope="module")
def gradient(tmp_path_factory):
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    pixels = np.stack([x * 4, y * 4, np.full_like(x, 128)], -1).astype(np.uint8)
    blob = encode(Image.fromarray(pixels))
    return write_dataset(tmp_path_factory.mktemp("gradient"), [(blob, "png", 0)] * IMAGES, verified=True)


def geometry(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Crop width/height in source px from the slope between output columns/rows 2 and 13
    (away from the borders, where antialiasing filters are clipped)."""
    red, green = views[:, 0], views[:, 1]
    dx = (red[:, :, 13] - red[:, :, 2]).mean(1) / 4 * OUT / 11
    dy = (green[:, 13, :] - green[:, 2, :]).mean(1) / 4 * OUT / 11
    w, h = dx.abs(), dy
    return {"area": w * h / SIZE**2, "log_ratio": torch.log(w / h), "flipped": (dx < 0).double()}


@pytest.mark.parametrize("dali_device", DALI_DEVICES)
def test_crop_geometry_and_flips_match(gradient, dali_device):
    spec = ViewSpec(size=OUT, jitter_prob=0, gray_prob=0)
    g = {"torch": geometry(draw(gradient, "torch", spec)), "dali": geometry(draw(gradient, "dali", spec, dali_device))}
    for backend, stats in g.items():
        # sanity against the definition: area in [0.08, 1], ratio in [3/4, 4/3] (crops are whole pixels)
        assert stats["area"].min() > 0.06 and stats["area"].max() < 1.03, backend
        assert stats["log_ratio"].abs().max() < np.log(4 / 3) + 0.08, backend
    # area ~ U(0.08, 1) (std 0.27): SE of the difference 0.27 * sqrt(2 / n) = 0.019
    assert abs(g["torch"]["area"].mean() - g["dali"]["area"].mean()) < 0.075
    # log ratio ~ U(-0.288, 0.288) (std 0.166): SE 0.012
    assert abs(g["torch"]["log_ratio"].mean() - g["dali"]["log_ratio"].mean()) < 0.05
    assert abs(g["torch"]["log_ratio"].std() - g["dali"]["log_ratio"].std()) < 0.035
    # quartiles of the area: distribution shape, not only the mean
    q = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    assert (g["torch"]["area"].quantile(q) - g["dali"]["area"].quantile(q)).abs().max() < 0.1
    # flip rate 0.5: SE of the difference sqrt(2 * 0.25 / n) = 0.036
    for backend in g:
        assert abs(g[backend]["flipped"].mean() - 0.5) < 0.1, backend
    assert abs(g["torch"]["flipped"].mean() - g["dali"]["flipped"].mean()) < 0.145


@pytest.fixture(scope="module")
def colourful(tmp_path_factory):
    y, x = np.mgrid[0:OUT, 0:OUT]
    pixels = np.stack([40 + x * 12, 200 - y * 10, 60 + (x + y) * 4], -1).astype(np.uint8)
    blob = encode(Image.fromarray(pixels))
    return write_dataset(tmp_path_factory.mktemp("colourful"), [(blob, "png", 0)] * IMAGES, verified=True)


@pytest.mark.parametrize("dali_device", DALI_DEVICES)
def test_colour_statistics_match(colourful, dali_device):
    spec = ViewSpec(size=OUT, scale=(1, 1), ratio=(1, 1), flip_prob=0)  # SimCLR jitter p=0.8, grey p=0.2
    stats = {}
    for backend in ("torch", "dali"):
        views = draw(colourful, backend, spec, dali_device if backend == "dali" else "cpu")
        per_image = views.mean(dim=(2, 3))  # [n, 3] mean colour of each view
        grey = (views.amax(1) - views.amin(1)).amax(dim=(1, 2)) < 2  # R = G = B everywhere
        stats[backend] = {"mean": per_image.mean(0), "spread": per_image.std(0), "grey": grey.double().mean(),
                          "saturation": (views.amax(1) - views.amin(1)).mean(dim=(1, 2)).mean()}
    t, d = stats["torch"], stats["dali"]
    # per-image channel means spread ~25 levels: SE of the difference 25 * sqrt(2 / n) = 1.8
    assert (t["mean"] - d["mean"]).abs().max() < 7
    # brightness x U(0.6, 1.4) drives the spread across images (a missing jitter halves it);
    # relative SE of the difference of two sample stds is 1 / sqrt(n) = 0.05
    assert ((t["spread"] - d["spread"]).abs() / t["spread"]).max() < 0.2
    # grey fraction 0.2 (+ jittered images with saturation near 0): SE 0.029
    assert abs(t["grey"] - d["grey"]) < 0.1 and 0.12 < t["grey"] < 0.3
    # mean channel range: saturation jitter and the grey images set it; SE about 2
    assert abs(t["saturation"] - d["saturation"]) < 8
