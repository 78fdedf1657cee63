"""barlow_twins_loss against the paper's eq. 1, written out elementwise in float64."""

import pytest
import torch
from tolerance import rounding_bound

from trainer.losses import barlow_twins_loss


def reference(za, zb, lambd):
    """Zbontar et al. 2021, eq. 1 with the authors' BatchNorm1d(affine=False) standardization (biased
    variance, eps 1e-5): C_ij = sum_b a_bi b_bj / n; L = sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2."""
    n, d = za.shape

    def standardize(z):
        mean = z.sum(0) / n
        var = ((z - mean) ** 2).sum(0) / n
        return (z - mean) / torch.sqrt(var + 1e-5)

    a, b = standardize(za), standardize(zb)
    on, off = 0.0, 0.0
    for i in range(d):
        for j in range(d):
            c = (a[:, i] * b[:, j]).sum() / n
            if i == j:
                on = on + (1 - c) ** 2
            else:
                off = off + c**2
    return on + lambd * off, on, off


@pytest.mark.parametrize("n,d", [(2, 3), (8, 5), (16, 16)])
@pytest.mark.parametrize("lambd", [5e-3, 0.5])
def test_loss_and_gradients_match_the_formula_in_float64(n, d, lambd):
    gen = torch.Generator().manual_seed(n * d)
    za = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    zb = (za.detach() + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)).requires_grad_()
    got = barlow_twins_loss(za, zb, lambd)
    want = reference(za, zb, lambd)
    # standardized entries are O(sqrt(n)); each C_ij sums n products, the loss d^2 squares of O(1) terms,
    # so the scale is n x d^2 and the chain n + d^2 long (float64)
    bound = rounding_bound(torch.float64, n * d * d, n + d * d)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=bound)
    assert got.loss.item() > 0 and got.off_diagonal.item() > 0
    grads = torch.autograd.grad(got.loss, (za, zb))
    ref_grads = torch.autograd.grad(want[0], (za, zb))
    # the backward runs the chain again, and the standardization's backward divides by each column's std,
    # so the intermediate terms (not the small, cancelled gradient) grow by 1 / the smallest std
    std_min = min(z.detach().std(0, unbiased=False).min().item() for z in (za, zb))
    backward = rounding_bound(torch.float64, n * d * d / std_min, 2 * (n + d * d))
    for g, w in zip(grads, ref_grads):
        torch.testing.assert_close(g, w, rtol=0, atol=backward)


def test_perfectly_correlated_views_have_zero_invariance_term():
    za = torch.randn(64, 4, dtype=torch.float64)
    terms = barlow_twins_loss(za, za.clone(), 5e-3)
    # C_ii = var / (var + 1e-5) ~ 1 - 1e-5 / var: the on-diagonal term is ~d x (1e-5)^2
    assert terms.on_diagonal.item() < 1e-8
