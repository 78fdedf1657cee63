"""Labeled subsets: class-balanced label fractions, a held-out validation part, and k-way class tasks.

A fraction f keeps round(f x n_c) samples of every class c (at least one), so every class keeps the
same share of its samples. Each class's samples are permuted once by `seed` and a prefix is taken,
so for one seed the 1% subset lies inside the 10% subset, which lies inside 100%.
"""

from __future__ import annotations

import numpy as np
import torch


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices (int64) of a class-balanced, seeded subset of `labels` [N]."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    labels_np = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels_np):
        members = rng.permutation(np.flatnonzero(labels_np == c))
        keep.append(members[:max(1, round(fraction * len(members)))])
    return torch.from_numpy(np.sort(np.concatenate(keep))).long()


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rest, held_out) indices: a class-balanced `fraction` of `labels` held out for early stopping."""
    held_out = balanced_subset(labels, fraction, seed)
    rest = torch.ones(labels.shape[0], dtype=torch.bool)
    rest[held_out] = False
    return rest.nonzero().squeeze(1), held_out


def resolve_classes(spec: str, classes: list[str], class_names: dict[str, str]) -> list[int]:
    """Label ids for a comma list of class names, class ids (e.g. wnids) or label integers.

    `classes` and `class_names` are the manifest's (label k is classes[k]; class_names maps id -> name).
    """
    by_key: dict[str, int] = {}
    for label, class_id in enumerate(classes):
        by_key[class_id.lower()] = label
        by_key.setdefault(class_names.get(class_id, class_id).lower(), label)
    for label in range(len(classes)):
        by_key.setdefault(str(label), label)
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tokens if t.lower() not in by_key]
    if unknown:
        sample = ", ".join(class_names.get(c, c) for c in classes[:10])
        raise ValueError(f"--classes: unknown class {unknown[0]!r}; classes are e.g. {sample}")
    labels = [by_key[t.lower()] for t in tokens]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"--classes {spec!r}: name at least two distinct classes")
    return labels


def restrict_to_classes(labels: torch.Tensor, keep: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of samples whose label is in `keep`, their labels remapped to 0..len(keep)-1)."""
    remap = torch.full((max(int(labels.max()), *keep) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(keep)] = torch.arange(len(keep))
    new = remap[labels]
    indices = (new >= 0).nonzero().squeeze(1)
    return indices, new[indices]
