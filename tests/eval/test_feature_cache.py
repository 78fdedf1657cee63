"""Eval's feature cache: keyed by what the features depend on (the weights and the shards' content),
never by a path; a damaged cache file is recomputed; nothing is written into the run folder."""

from pathlib import Path

import pytest
import torch
from torch import nn

from data_prep.digits import read_digits
from data_prep.writer import WriteOptions, write_dataset
from trainer.config import DataConfig
from trainer.dist import DistContext
from trainer.eval.features import cached_features, extract, feature_cache_path, split_batches

SIZE = 8


def prepare(folder: Path, seed: int) -> DataConfig:
    """data_prep's digits test split into `folder`; another seed shuffles other images into each shard."""
    write_dataset(read_digits(size=SIZE, seed=seed, splits=["test"]), folder, WriteOptions(seed=seed, workers=1))
    return DataConfig(shards=str(folder), split="test", image_size=SIZE, workers=0)


def backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 4))


def fresh(model: nn.Module, data: DataConfig) -> torch.Tensor:
    """Features extracted now, with no cache involved."""
    cpu = torch.device("cpu")
    return extract(split_batches(data, "test", DistContext(), 64), model, cpu, cpu)[0]


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SSLSCALE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    return tmp_path / "runs" / "tiny"


def test_shards_remade_in_the_same_folder_are_not_served_stale_features(run_dir, tmp_path):
    model = backbone()
    data = prepare(tmp_path / "shards", seed=0)
    first, _ = cached_features(run_dir, model, data, "test", DistContext(), 64)
    prepare(tmp_path / "shards", seed=1)  # re-run data_prep into the same folder: other order, same path
    second, labels = cached_features(run_dir, model, data, "test", DistContext(), 64)
    assert not torch.equal(first, second)
    assert torch.equal(second, fresh(model, data)) and len(labels) == 360
    with torch.no_grad():
        model[1].bias += 1  # another checkpoint of the same run
    assert torch.equal(cached_features(run_dir, model, data, "test", DistContext(), 64)[0], fresh(model, data))


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"not a torch file"])
def test_a_damaged_cache_file_is_recomputed(damage, run_dir, tmp_path, capsys):
    model, data = backbone(), prepare(tmp_path / "shards", seed=0)
    want, _ = cached_features(run_dir, model, data, "test", DistContext(), 64)
    path = feature_cache_path(run_dir, "test")
    path.write_bytes(damage(path.read_bytes()))
    got, _ = cached_features(run_dir, model, data, "test", DistContext(), 64)
    assert torch.equal(got, want)
    assert f"{path}: unreadable feature cache, recomputing" in capsys.readouterr().err
    assert torch.load(path, weights_only=True)["features"].shape == want.shape  # rewritten whole


def test_the_run_folder_is_left_untouched(run_dir, tmp_path):
    """A run folder may be read-only (tests run as root, so checked as: nothing in it changed)."""
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    cached_features(run_dir, backbone(), prepare(tmp_path / "shards", seed=0), "test", DistContext(), 64)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert feature_cache_path(run_dir, "test").is_file()
    assert not feature_cache_path(run_dir, "test").is_relative_to(run_dir)
