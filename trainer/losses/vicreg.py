"""VICReg: variance-invariance-covariance regularization.

Bardes, Ponce, LeCun, "VICReg", ICLR 2022; the loss exactly as facebookresearch/vicreg main_vicreg.py
computes it (std with eps 1e-4 on the unbiased variance, covariance divided by N - 1, the squared
off-diagonal summed and divided by d for each branch).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from trainer.dist import all_gather_with_grad
from trainer.losses.precision import full_precision


class VICRegTerms(NamedTuple):
    loss: torch.Tensor  # sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def _off_diagonal_sq_sum(x: torch.Tensor) -> torch.Tensor:
    """sum_{i != j} (x^T x)_ij^2 for centered x [N, d], via the smaller Gram matrix.

    ||X^T X||_F^2 = ||X X^T||_F^2, so with N < d (2048 images, an 8192-wide expander) the [N, N]
    Gram costs a quarter of the flops and a sixteenth of the memory of the [d, d] covariance.
    """
    gram = x @ x.T if x.shape[0] < x.shape[1] else x.T @ x
    return gram.pow(2).sum() - x.pow(2).sum(0).pow(2).sum()


def _variance_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = x.shape
    x = x - x.mean(0)
    std = torch.sqrt(x.var(0) + 1e-4)
    return F.relu(1 - std).mean(), _off_diagonal_sq_sum(x) / (n - 1) ** 2 / d


@full_precision
def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
) -> VICRegTerms:
    """z_a, z_b [n, d]: expander outputs of two views of this rank's n images -> VICRegTerms of scalars.

    Invariance is the MSE over the local batch (DDP's averaging makes it the global mean). Variance
    (mean hinge on each dimension's std, target 1) and covariance (squared off-diagonal of the
    covariance / d) are statistics of the batch, so they are computed over the all-gathered N rows
    with gradient, as the authors do; every rank computes the same value, and the gather's backward
    with DDP's averaging gives each rank its exact share. variance = (v_a + v_b) / 2, covariance =
    c_a + c_b (main_vicreg.py).
    """
    invariance = F.mse_loss(z_a, z_b)
    var_a, cov_a = _variance_covariance(all_gather_with_grad(z_a))
    var_b, cov_b = _variance_covariance(all_gather_with_grad(z_b))
    variance = (var_a + var_b) / 2
    covariance = cov_a + cov_b
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return VICRegTerms(loss, invariance, variance, covariance)
