"""vicreg_loss against facebookresearch/vicreg main_vicreg.py (VICReg.forward), re-derived in float64."""

import pytest
import torch
import torch.nn.functional as F
from tolerance import rounding_bound

from trainer.losses import vicreg_loss


def off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def authors_vicreg(x, y, sim_coeff, std_coeff, cov_coeff):
    """main_vicreg.py's VICReg.forward after the projector, one process (batch_size = rows)."""
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(num_features) + off_diagonal(cov_y).pow_(2).sum().div(
        num_features
    )
    loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
    return loss, repr_loss, std_loss, cov_loss


def vicreg_bounds(x, y, coeffs):
    """float32 rounding bounds on (loss, invariance, variance, covariance) of x, y [n, d], and the
    relative bound for the gradients (measured against their largest element).

    The longest reduction chain a term goes through is n*d + n + d + 4 (the invariance mean over n*d,
    centering over n, the Gram's inner length and square-sum, the diagonal over d). Centering
    cancels: relative to each column's spread its rounding grows by kappa = max x^2 / var. Scales:
    the invariance is a sum of squares (its own value); each std hinge is at most 1; the off-diagonal
    square-sum is a difference of ||C||_F^2 and the diagonal's, so its scale is ||C||_F^2 / d per branch.
    """
    n, d = x.shape
    x, y = x.double(), y.double()
    kappa = max([1.0] + [((v - v.mean(0)) ** 2 / v.var(0)).max().item() for v in (x, y)])
    relative = rounding_bound(torch.float32, kappa, n * d + n + d + 4)
    invariance = F.mse_loss(x, y).item()
    covariance = sum((torch.cov(v.T) ** 2).sum().item() / d for v in (x, y))
    terms = [invariance, 1.0, covariance]
    loss = sum(c * t for c, t in zip(coeffs, terms))
    return [relative * t for t in (loss, *terms)], relative


# (rows, dims) on both sides of rows == dims (the two Gram branches); scale < 1 and > 1 puts
# the std hinge on and off
@pytest.mark.parametrize("n,d", [(2, 2), (4, 16), (7, 33), (32, 8), (64, 64)])
@pytest.mark.parametrize("scale", [0.3, 3.0])
@pytest.mark.parametrize(
    "coeffs", [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (5.0, 2.0, 0.5)]
)
def test_vicreg_matches_authors_code(n, d, scale, coeffs):
    gen = torch.Generator().manual_seed(n * 100 + d)
    x = torch.randn(n, d, generator=gen) * scale
    y = x + 0.5 * torch.randn(n, d, generator=gen) * scale
    x, y = x.requires_grad_(), y.requires_grad_()
    terms = vicreg_loss(x, y, *coeffs)
    terms.loss.backward()
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    want = authors_vicreg(x64, y64, *coeffs)
    want[0].backward()
    bounds, relative = vicreg_bounds(x64, y64, coeffs)
    for got, ref, bound in zip(terms, want, bounds):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=bound)
    for got, ref in ((x.grad, x64.grad), (y.grad, y64.grad)):
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=relative * ref.abs().max().item())


def test_vicreg_in_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randn(64, 96, generator=gen).bfloat16() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = vicreg_loss(x, y)
    want = authors_vicreg(x.double(), y.double(), 25.0, 25.0, 1.0)
    # the bf16 values are exact in float64: what is left is the float32 arithmetic's rounding
    for got, ref, bound in zip(terms, want, vicreg_bounds(x, y, (25.0, 25.0, 1.0))[0]):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=bound)
