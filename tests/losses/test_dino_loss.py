"""dino_loss against the paper's eq. 4 / the authors' DINOLoss, written out in float64."""

import math

import pytest
import torch
from tolerance import rounding_bound

from trainer.losses import dino_loss


def reference(student, teacher, center, ts, tt):
    """main_dino.py DINOLoss.forward: every (global g, crop v != g) pair, mean over images of
    sum_k -softmax((t_g - c) / tt)_k log softmax(s_v / ts)_k, averaged over the pairs; then the batch
    center = mean over both global crops' rows."""
    def softmax(x):
        top = max(x)
        e = [math.exp(v - top) for v in x]
        return [v / sum(e) for v in e]

    n, k = student[0].shape
    total, terms = 0.0, 0
    for g, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == g:
                continue
            pair = 0.0
            for i in range(n):
                p = softmax([(float(t[i, j]) - float(center[j])) / tt for j in range(k)])
                q = softmax([float(s[i, j]) / ts for j in range(k)])
                pair += -sum(p[j] * math.log(q[j]) for j in range(k))
            total += pair / n
            terms += 1
    mean = [sum(float(t[i, j]) for t in teacher for i in range(n)) / (2 * n) for j in range(k)]
    return total / terms, mean


@pytest.mark.parametrize("crops,n,k", [(2, 3, 5), (4, 2, 7)])
def test_loss_and_center_statistic_match_the_formula(crops, n, k):
    gen = torch.Generator().manual_seed(crops * n)
    student = [torch.randn(n, k, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(crops)]
    teacher = [torch.randn(n, k, generator=gen, dtype=torch.float64) for _ in range(2)]
    center = 0.3 * torch.randn(k, generator=gen, dtype=torch.float64)
    got = dino_loss(student, teacher, center, 0.1, 0.04)
    want_loss, want_mean = reference([s.detach() for s in student], teacher, center, 0.1, 0.04)
    # logits up to |x| / T ~ 4 / 0.04 = 100; each term a k-long softmax and log-softmax, averaged over n and
    # the pairs: scale 100 x k, chain 4k + n + pairs (float64)
    bound = rounding_bound(torch.float64, 100 * k, 4 * k + n + 2 * crops)
    torch.testing.assert_close(got.loss.item(), want_loss, rtol=0, atol=bound)
    torch.testing.assert_close(got.teacher_mean, torch.tensor(want_mean, dtype=torch.float64), rtol=0,
                               atol=rounding_bound(torch.float64, 4 * 2 * n, 2 * n))
    got.loss.backward()
    assert all(s.grad.abs().sum() > 0 for s in student)  # every crop learns, the global ones from each other


def test_teacher_and_center_carry_no_gradient_and_sharpening_lowers_entropy():
    teacher = [torch.randn(4, 6, requires_grad=True) for _ in range(2)]
    student = [torch.randn(4, 6, requires_grad=True) for _ in range(3)]
    center = torch.zeros(6, requires_grad=True)
    terms = dino_loss(student, teacher, center, 0.1, 0.07)
    terms.loss.backward()
    assert all(t.grad is None for t in teacher) and center.grad is None
    sharper = dino_loss(student, teacher, center.detach(), 0.1, 0.04)
    assert sharper.teacher_entropy < terms.teacher_entropy
