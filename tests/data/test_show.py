"""`python -m trainer show`: the grid PNG has one row per image and one column per view + original."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from shardkit import encode, write_dataset

from trainer.__main__ import main
from trainer.config import DataConfig
from trainer.data.show import PAD, render_grid
from trainer.methods import METHODS
from trainer.types import ViewSpec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    blobs = [encode(Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)), "JPEG") for _ in range(6)]
    return write_dataset(tmp_path_factory.mktemp("show"), [(b, "jpg", 0) for b in blobs])


def expected_size(columns: int, rows: int, cell: int) -> tuple[int, int]:
    return columns * (cell + PAD) + PAD, rows * (cell + PAD) + PAD


def test_grid_png_has_one_cell_per_view(tmp_path, dataset):
    views = [ViewSpec(size=16), ViewSpec(size=16, rotation=180), ViewSpec(size=8, scale=(0.05, 0.14))]
    out = render_grid(DataConfig(shards=str(dataset), workers=0), views, tmp_path / "grid.png", rows=4)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == expected_size(4, 4, 16)
        pixels = np.asarray(image)
    first_cell = pixels[PAD : PAD + 16, PAD : PAD + 16]
    assert first_cell.std() > 20  # the noise image itself, not a blank tile


@pytest.mark.skipif(not METHODS, reason="trainer.methods.METHODS is empty (methods not registered yet)")
@pytest.mark.parametrize("method", sorted(METHODS))
def test_cli_writes_the_methods_views(tmp_path, dataset, method, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"method:\n  name: {method}\ndata:\n  shards: {dataset}\n  image_size: 16\n  workers: 0\n")
    assert main(["show", "--config", str(config), "--out", str(tmp_path / "g.png"), "--rows", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    from trainer.registry import load_config

    cfg = load_config(config)
    views = METHODS[method].views(cfg.method, cfg.data, cfg.aug)
    with Image.open(tmp_path / "g.png") as image:
        assert image.size == expected_size(1 + len(views), 3, max(v.size for v in views))


def test_cli_error_names_the_bad_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  shardz: x\n")
    assert main(["show", "--config", str(config), "--out", str(tmp_path / "g.png")]) == 2
    assert "shardz" in capsys.readouterr().err
