"""SimSiam's negative cosine and MoCo v3's InfoNCE against their formulas written out in float64."""

import math

import pytest
import torch
from tolerance import rounding_bound

from trainer.losses import moco_v3_loss, negative_cosine


def test_negative_cosine_formula_and_stop_gradient():
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    got = negative_cosine(p, z)
    want = -sum((p[i] @ z[i]) / (p[i].norm() * z[i].norm()) for i in range(5)) / 5
    # 5 cosines of |cos| <= 1, each a 7-long dot and two norms, float64
    torch.testing.assert_close(got, want, rtol=0, atol=rounding_bound(torch.float64, 5, 3 * 7 + 5))
    got.backward()
    assert z.grad is None and p.grad.abs().sum() > 0  # the stop-gradient on z (eq. 2)
    assert negative_cosine(p.detach(), p.detach() * 3).item() == pytest.approx(-1.0, abs=1e-14)


def moco_reference(q, k, t):
    """Chen, Xie, He 2021, alg. 1: ctr(q, k) = CE(q_n @ k_n^T / T, arange(N)) x 2T, written out."""
    n = q.shape[0]
    qn = [q[i] / q[i].norm() for i in range(n)]
    kn = [k[j] / k[j].norm() for j in range(n)]
    total = 0.0
    for i in range(n):
        logits = [float(qn[i] @ kn[j]) / t for j in range(n)]
        top = max(logits)
        lse = top + math.log(sum(math.exp(x - top) for x in logits))
        total += lse - logits[i]
    return total / n * 2 * t


@pytest.mark.parametrize("n,t", [(1, 1.0), (4, 0.2), (9, 1.0), (16, 0.2)])
def test_moco_v3_loss_matches_the_formula(n, t):
    gen = torch.Generator().manual_seed(n)
    q = torch.randn(n, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    got = moco_v3_loss(q, k, t)
    # logits |x| <= 1/T; chain: two normalizations and a dot over d = 6, a log-sum-exp and a mean over n;
    # the result is scaled by 2T
    bound = rounding_bound(torch.float64, n / t, 3 * 6 + 2 * n) * 2 * t
    torch.testing.assert_close(got.item(), moco_reference(q.detach(), k, t), rtol=0, atol=bound)
    # the gradient against autograd through the plain formula (softmax over keys, the positive included)
    logits = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T / t
    plain = torch.nn.functional.cross_entropy(logits, torch.arange(n)) * 2 * t
    torch.testing.assert_close(torch.autograd.grad(got, q)[0], torch.autograd.grad(plain, q)[0], rtol=0,
                               atol=2 * bound)  # the backward runs the chain once more


def test_moco_v3_keys_carry_no_gradient():
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)
    moco_v3_loss(q, k, 0.2).backward()
    assert k.grad is None and q.grad.abs().sum() > 0
