"""Barlow Twins: the cross-correlation of two views' batch-standardized embeddings driven to the identity.

Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
ICML 2021, eq. 1; the authors' facebookresearch/barlowtwins main.py (BatchNorm1d(affine=False) over the
global batch, c = bn(z_a).T @ bn(z_b) / N, lambda = 5e-3).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from trainer.dist import all_gather_with_grad
from trainer.losses.precision import full_precision


class BarlowTwinsTerms(NamedTuple):
    loss: torch.Tensor  # on_diagonal + lambd * off_diagonal
    on_diagonal: torch.Tensor  # sum_i (1 - c_ii)^2, invariance
    off_diagonal: torch.Tensor  # sum_{i != j} c_ij^2, redundancy reduction


def _standardize(z: torch.Tensor) -> torch.Tensor:
    """Per-dimension (z - mean) / sqrt(biased var + 1e-5) over the rows: BatchNorm1d(affine=False) in
    training mode, as the authors standardize."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)


@full_precision
def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = 5e-3) -> BarlowTwinsTerms:
    """z_a, z_b [n, d]: projector outputs of two views of this rank's n images -> BarlowTwinsTerms of scalars.

    Both are all-gathered with gradient into the N = n x W global rows, standardized per dimension over
    those rows, and c = z_a^T z_b / N [d, d] is the cross-correlation of the global batch. Every rank
    computes the same loss; the gather's backward and DDP's averaging give each rank its exact share, so
    loss and gradients equal one process on the concatenated batch (the authors instead all-reduce c,
    which carries no gradient, behind a SyncBatchNorm; here the gather carries it).
    """
    a = _standardize(all_gather_with_grad(z_a))
    b = _standardize(all_gather_with_grad(z_b))
    c = a.T @ b / a.shape[0]
    diagonal = torch.diagonal(c)
    on_diagonal = (1 - diagonal).pow(2).sum()
    off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
    return BarlowTwinsTerms(on_diagonal + lambd * off_diagonal, on_diagonal, off_diagonal)
