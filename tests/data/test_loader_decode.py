"""What comes out of both backends for odd inputs: grayscale/CMYK JPEGs, exact geometry, corrupt files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from shardkit import MEAN, STD, encode, write_dataset

from trainer.config import DataConfig
from trainer.data import build_loader
from trainer.dist import DistContext
from trainer.types import ViewSpec

S = 16
EXACT = ViewSpec(size=S, scale=(1, 1), ratio=(1, 1), flip_prob=0, jitter_prob=0, gray_prob=0)


def gradient(mode: str) -> Image.Image:
    y, x = np.mgrid[0:S, 0:S]
    planes = [(x * 15) % 256, (y * 15) % 256, (x * y) % 256, (x + y) * 7 % 256][: len(mode)]
    return Image.fromarray(np.stack(planes, -1).astype(np.uint8).squeeze(-1) if mode == "L" else
                           np.stack(planes, -1).astype(np.uint8), mode)


def rgb_views(root, backend, views, n, workers=1, on_corrupt="skip"):
    data = DataConfig(shards=str(root), backend=backend, workers=workers, mean=MEAN, std=STD, on_corrupt=on_corrupt)
    loader = build_loader(data, views, DistContext(), n, seed=0, train=False)
    batches = list(loader.epoch(0))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return [torch.cat([b.views[v] for b in batches]) * std * 255 + mean * 255 for v in range(len(views))], loader


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_grayscale_and_cmyk_jpegs_become_rgb(tmp_path, backend):
    images = [gradient("L"), gradient("CMYK"), gradient("RGB")]
    blobs = [encode(im, "JPEG", quality=95) for im in images]
    root = write_dataset(tmp_path, [(b, "jpg", 0) for b in blobs], verified=True)
    (out,), _ = rgb_views(root, backend, [EXACT], len(blobs))
    assert out.shape == (3, 3, S, S)
    for got, blob in zip(out, blobs):
        want = torch.from_numpy(np.array(Image.open(io.BytesIO(blob)).convert("RGB"))).permute(2, 0, 1).float()
        # JPEG decoders (libjpeg-turbo builds, IDCT variants) may differ by a few levels
        assert (got - want).abs().mean() < 1.5, (got - want).abs().mean()
    assert torch.allclose(out[0][0], out[0][1], atol=1e-3) and torch.allclose(out[0][0], out[0][2], atol=1e-3)


def test_rotation_and_flip_agree_exactly_across_backends(tmp_path):
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (S, S, 3), dtype=np.uint8) for _ in range(4)]
    root = write_dataset(tmp_path, [(encode(Image.fromarray(p)), "png", 0) for p in pixels], verified=True)
    views = [EXACT, ViewSpec(**{**EXACT.__dict__, "rotation": 90}), ViewSpec(**{**EXACT.__dict__, "flip_prob": 1.0})]
    reference = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float()
    for backend in ("torch", "dali"):
        (plain, turned, flipped), _ = rgb_views(root, backend, views, 4)
        assert torch.allclose(plain, reference, atol=0.01), backend
        # counter-clockwise: the top row becomes the left column, read bottom to top
        assert torch.allclose(turned, torch.rot90(reference, 1, dims=(2, 3)), atol=0.01), backend
        assert torch.allclose(turned[:, :, :, 0], reference[:, :, 0, :].flip(-1), atol=0.01), backend
        assert torch.allclose(flipped, reference.flip(-1), atol=0.01), backend


@pytest.fixture
def with_corrupt(tmp_path):
    good = [encode(Image.new("RGB", (S, S), (i * 20, 0, 0)), "JPEG") for i in range(8)]
    good[5] = good[5][: len(good[5]) // 2]  # truncated JPEG: header fine, data cut
    return write_dataset(tmp_path, [(b, "jpg", i) for i, b in enumerate(good)], per_shard=4)


def test_torch_backend_skips_and_counts_corrupt_samples(with_corrupt):
    (out,), loader = rgb_views(with_corrupt, "torch", [EXACT], 4, workers=2)
    assert loader.stats["corrupt_skipped"] == 1  # counted in a worker, summed in the main process
    reds = out[:, 0].mean(dim=(1, 2)).round().tolist()
    assert len(reds) == 8 and reds[5] == reds[6] == 120  # its place is taken by the next sample


def test_torch_backend_fail_mode_names_shard_and_key(with_corrupt):
    with pytest.raises(ValueError, match=r"train-000001\.tar: sample 's000005'"):
        rgb_views(with_corrupt, "torch", [EXACT], 4, on_corrupt="fail")


def test_dali_backend_refuses_unverified_shards(with_corrupt):
    """DALI cannot skip the truncated JPEG, so it runs only on what `data_prep verify` passed."""
    with pytest.raises(ValueError, match=r"manifest.json: shards not verified.*python -m data_prep verify"):
        rgb_views(with_corrupt, "dali", [EXACT], 4)
