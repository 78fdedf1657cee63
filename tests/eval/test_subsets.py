"""Label fractions are class-balanced, seeded, nested; class subsets resolve names and remap labels."""

import pytest
import torch

from trainer.eval.subsets import balanced_subset, holdout_split, resolve_classes, restrict_to_classes


def test_balanced_subset_counts_per_class():
    labels = torch.arange(1000) % 10  # 100 per class
    for fraction, per_class in ((0.01, 1), (0.1, 10), (1.0, 100)):
        idx = balanced_subset(labels, fraction, seed=0)
        assert torch.equal(torch.bincount(labels[idx], minlength=10), torch.full((10,), per_class))
        assert len(set(idx.tolist())) == len(idx)
    skewed = torch.cat([torch.zeros(300), torch.ones(30), torch.full((3,), 2)]).long()
    counts = torch.bincount(skewed[balanced_subset(skewed, 0.1, seed=0)])
    assert counts.tolist() == [30, 3, 1]  # the same share of each class, at least one


def test_balanced_subset_is_reproducible_and_nested():
    labels = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(0))
    small, large = balanced_subset(labels, 0.05, seed=3), balanced_subset(labels, 0.3, seed=3)
    assert torch.equal(small, balanced_subset(labels, 0.05, seed=3))
    assert not torch.equal(small, balanced_subset(labels, 0.05, seed=4))
    assert set(small.tolist()) <= set(large.tolist())
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0, seed=0)


def test_holdout_is_disjoint_and_covers():
    labels = torch.arange(200) % 4
    rest, held = holdout_split(labels, 0.1, seed=0)
    assert set(rest.tolist()).isdisjoint(held.tolist())
    assert sorted(rest.tolist() + held.tolist()) == list(range(200))
    assert torch.bincount(labels[held]).tolist() == [5, 5, 5, 5]


def test_resolve_classes_by_name_id_or_label():
    classes = ["n01443537", "n01855672", "n02085620"]
    names = {"n01443537": "goldfish", "n01855672": "goose", "n02085620": "Chihuahua"}
    assert resolve_classes("goldfish,goose", classes, names) == [0, 1]
    assert resolve_classes("n02085620, chihuahua ".replace("chihuahua", "0"), classes, names) == [2, 0]
    with pytest.raises(ValueError, match="'gooze'"):
        resolve_classes("goldfish,gooze", classes, names)
    with pytest.raises(ValueError, match="two distinct"):
        resolve_classes("goose,goose", classes, names)


def test_restrict_to_classes_remaps_labels():
    labels = torch.tensor([0, 3, 1, 3, 2, 0])
    idx, new = restrict_to_classes(labels, [3, 0])
    assert idx.tolist() == [0, 1, 3, 5]
    assert new.tolist() == [1, 0, 0, 1]
