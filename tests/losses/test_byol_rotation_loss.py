"""byol_loss and rotation_loss against their formulas in float64."""

import math

import pytest
import torch
from tolerance import rounding_bound

from trainer.losses import byol_loss, rotation_loss


def byol_bound(n, d):
    """float32 rounding bound on mean(2 - 2 cos): each cosine accumulates a length-d dot product and
    two length-d norms; each term is at most 4; the mean runs over n images."""
    return rounding_bound(torch.float32, 4.0, 3 * d + n + 4)


@pytest.mark.parametrize("n,d", [(1, 4), (9, 32), (64, 256)])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_byol_loss_matches_normalized_mse(n, d, scale):
    gen = torch.Generator().manual_seed(n + d)
    p = (torch.randn(n, d, generator=gen) * scale).requires_grad_()
    z = torch.randn(n, d, generator=gen).requires_grad_()
    value = byol_loss(p, z)
    value.backward()
    p64 = p.detach().double().requires_grad_()
    z64 = z.detach().double()
    # ||p/|p| - z/|z| ||^2 per image, mean (BYOL eq. 2)
    want = ((p64 / p64.norm(dim=1, keepdim=True) - z64 / z64.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
    want.backward()
    torch.testing.assert_close(value.double(), want, rtol=0, atol=byol_bound(n, d))
    # a gradient row is (2/n)(z/|z| - cos p/|p|)/|p|: at most 4/(n|p|), to the cosine's relative bound
    grad_scale = 4 / (n * p64.norm(dim=1).min().item())
    torch.testing.assert_close(p.grad.double(), p64.grad, rtol=0, atol=byol_bound(n, d) / 4 * grad_scale)
    assert z.grad is None  # the target side is a stop-gradient


def test_byol_loss_bf16_inputs_are_upcast():
    gen = torch.Generator().manual_seed(0)
    p, z = (torch.randn(16, 64, generator=gen).bfloat16() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = byol_loss(p, z)
    p64, z64 = p.double(), z.double()
    want = (2 - 2 * (p64 * z64).sum(1) / (p64.norm(dim=1) * z64.norm(dim=1))).mean()
    assert value.dtype == torch.float32
    # the bf16 values are exact in float64: what is left is the float32 arithmetic's rounding
    torch.testing.assert_close(value.double(), want, rtol=0, atol=byol_bound(16, 64))


@pytest.mark.parametrize("n", [1, 8, 40])
def test_rotation_loss_is_four_way_cross_entropy(n):
    gen = torch.Generator().manual_seed(n)
    logits = (torch.randn(4 * n, 4, generator=gen) * 3).bfloat16().requires_grad_()
    labels = torch.arange(4).repeat_interleave(n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = rotation_loss(logits, labels)
    value.backward()
    x = logits.detach().double().requires_grad_()
    want = (x.exp().sum(1).log() - x[torch.arange(4 * n), labels]).mean()
    want.backward()
    assert value.dtype == torch.float32
    # float32 cross-entropy: each row at most 2 max|logit| + log 4, a length-4 log-sum-exp, a mean over 4n
    bound = rounding_bound(torch.float32, 2 * x.abs().max().item() + math.log(4), 4 * n + 8)
    torch.testing.assert_close(value.double(), want, rtol=0, atol=bound)
    # the float32 gradient (softmax - onehot) / 4n, rounded to the bf16 leaf: half a bf16 ulp (rtol),
    # on top of the float32 error of entries near zero (atol)
    torch.testing.assert_close(logits.grad.double(), x.grad, rtol=torch.finfo(torch.bfloat16).eps,
                               atol=bound / (4 * n))
