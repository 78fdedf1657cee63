"""NT-Xent and its blockwise cross-entropy against the formula written out in float64."""

import math

import pytest
import torch
import torch.nn.functional as F
from tolerance import rounding_bound
from torch._C._profiler import _ExtraFields_Allocation
from torch.profiler import ProfilerActivity, profile

from trainer.losses import fused_ce_torch, nt_xent_loss


def reference_ce(q, k, pos, self_idx, inv_temp):
    """Per row: -log( exp(q_i.k_pos / T) / sum_{j != self} exp(q_i.k_j / T) ), float64."""
    s = (q.double() @ k.double().T) * inv_temp
    rows = torch.arange(q.shape[0])
    keep = torch.ones_like(s, dtype=torch.bool)
    keep[rows, self_idx] = False
    denominator = (s.exp() * keep).sum(1)
    return -(s[rows, pos].exp() / denominator).log()


def reference_nt_xent(z_a, z_b, temperature):
    """SimCLR eq. 1 in float64: 2n anchors, positive = the other view, self excluded, mean."""
    n = z_a.shape[0]
    z = torch.cat([z_a, z_b]).double()
    z = z / z.norm(dim=1, keepdim=True)
    rows = torch.arange(2 * n)
    return reference_ce(z, z, (rows + n) % (2 * n), rows, 1 / temperature).mean()


def nt_xent_bound(n, d, temperature):
    """float32 rounding bound on NT-Xent of n images (2n anchors, 2n keys) in d dims: each
    anchor's loss is at most 2/T + log 2n; it accumulates the normalization (d + 2 terms) of both
    sides of each logit, the log-sum-exp over 2n keys and the mean over 2n anchors."""
    return rounding_bound(torch.float32, 2 / temperature + math.log(2 * n), 2 * d + 4 * n + 4)


def nt_xent_grad_scale(z, n, temperature):
    """What one gradient element is measured against: the largest reference element plus one
    anchor's term, 2/T over the 2n anchors of the mean, through the 1/|z| of the normalization."""
    return 1 / (temperature * n * z.norm(dim=1).min().item())


def grads(fn, *inputs):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    value = fn(*inputs)
    value.backward()
    return value.detach(), [x.grad for x in inputs]


@pytest.mark.parametrize("n,d", [(1, 3), (5, 8), (33, 16), (64, 128)])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_nt_xent_matches_float64_formula(n, d, temperature):
    gen = torch.Generator().manual_seed(n * 1000 + d)
    z_a, z_b = torch.randn(n, d, generator=gen) * 3, torch.randn(n, d, generator=gen)
    value, (ga, gb) = grads(lambda a, b: nt_xent_loss(a, b, temperature), z_a, z_b)
    ref, (ra, rb) = grads(lambda a, b: reference_nt_xent(a, b, temperature), z_a.double(), z_b.double())
    assert value.dtype == torch.float32
    bound = nt_xent_bound(n, d, temperature)
    torch.testing.assert_close(value.double(), ref, rtol=0, atol=bound)
    for got, want, z in ((ga, ra, z_a), (gb, rb, z_b)):
        scale = want.abs().max().item() + nt_xent_grad_scale(z, n, temperature)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=bound * scale)


@pytest.mark.parametrize("block_rows", [1, 7, 16, None])
def test_fused_ce_blocks_general_indices(block_rows):
    """Distinct q and k (K != M), arbitrary positives and excluded keys, a random upstream gradient,
    block sizes that do not divide M = 37."""
    gen = torch.Generator().manual_seed(block_rows or 0)
    m, num_keys, d = 37, 50, 12
    q = F.normalize(torch.randn(m, d, generator=gen), dim=1)
    k = F.normalize(torch.randn(num_keys, d, generator=gen), dim=1)
    pos = torch.randint(num_keys, (m,), generator=gen)
    self_idx = (pos + torch.randint(1, num_keys, (m,), generator=gen)) % num_keys  # never the positive
    weight = torch.randn(m, generator=gen)
    value, (gq, gk) = grads(
        lambda q, k: (fused_ce_torch(q, k, pos, self_idx, 7.0, block_rows=block_rows) * weight).sum(), q, k
    )
    ref, (rq, rk) = grads(
        lambda q, k: (reference_ce(q, k, pos, self_idx, 7.0) * weight.double()).sum(), q.double(), k.double()
    )
    # each row's loss is at most 2 x 7 + log K; it accumulates two length-d logits, the log-sum-exp
    # over K keys, and the weighted sum over M rows; the gradients are measured against their largest
    # element plus one row's 7 |w_i| (one softmax minus one-hot, times 1/T)
    bound = rounding_bound(torch.float32, 2 * 7.0 + math.log(num_keys), 2 * d + num_keys + m)
    torch.testing.assert_close(value.double(), ref, rtol=0, atol=bound * weight.abs().sum().item())
    for got, want in ((gq, rq), (gk, rk)):
        scale = want.abs().max().item() + 7.0 * weight.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=0, atol=bound * scale)


def test_float32_math_under_bf16_autocast():
    """bf16 inputs under autocast: the similarities and log-sum-exp still run in float32."""
    gen = torch.Generator().manual_seed(3)
    z_a, z_b = (torch.randn(48, 64, generator=gen).bfloat16() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = nt_xent_loss(z_a, z_b, 0.1)
    assert value.dtype == torch.float32
    # the bf16 values are exact in float64: what is left is the float32 arithmetic's rounding
    torch.testing.assert_close(value.double(), reference_nt_xent(z_a, z_b, 0.1), rtol=0,
                               atol=nt_xent_bound(48, 64, 0.1))


def forward_backward(loss_fn, q):
    loss = loss_fn(q)
    loss.backward()
    return loss.detach()


def peak_allocated_bytes(fn):
    """(peak of the CPU allocator's live bytes during fn() above those live when it started, fn()).

    With profile_memory the profiler records every allocation and free of torch's CPU allocator
    together with its running total (`total_allocated`); tracemalloc cannot see those allocations.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if isinstance(event.extra_fields, _ExtraFields_Allocation):
            events.append(
                (event.start_time_ns, event.extra_fields.total_allocated, event.extra_fields.alloc_size)
            )
    events.sort()
    start = events[0][1] - events[0][2]
    return max(total for _, total, _ in events) - start, result


@pytest.mark.slow
def test_fused_memory_is_a_tenth_of_plain_at_4096():
    """N = 4096 images, d = 128: the plain loss holds [8192, 8192] logits (and their softmax and
    gradient); the blockwise one a 16 MiB block. Same value and gradient."""
    n, d = 4096, 128
    z = F.normalize(torch.randn(2 * n, d, generator=torch.Generator().manual_seed(0)), dim=1)
    rows = torch.arange(2 * n)
    pos = (rows + n) % (2 * n)

    def plain(q):
        logits = (q @ q.T / 0.1).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        return F.cross_entropy(logits, pos)

    def fused(q):
        return fused_ce_torch(q, q, pos, rows, 10.0).mean()

    peak, loss, grad = {}, {}, {}
    for name, loss_fn in (("plain", plain), ("fused", fused)):
        q = z.clone().requires_grad_()
        peak[name], loss[name] = peak_allocated_bytes(lambda fn=loss_fn, q=q: forward_backward(fn, q))
        grad[name] = q.grad
    assert peak["fused"] < peak["plain"] / 10, peak
    assert peak["plain"] > (2 * n) ** 2 * 4  # the measurement sees at least the [2N, 2N] logits
    # two float32 computations of one value: each within the rounding bound of the exact one
    bound = 2 * nt_xent_bound(n, d, 0.1)
    torch.testing.assert_close(loss["fused"], loss["plain"], rtol=0, atol=bound)
    scale = grad["plain"].abs().max().item() + nt_xent_grad_scale(z, n, 0.1)
    torch.testing.assert_close(grad["fused"], grad["plain"], rtol=0, atol=bound * scale)
