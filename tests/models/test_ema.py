"""EMA: a float32 copy trained only by update(), target = m target + (1 - m) source, whatever the
source's dtype."""

import pytest
import torch
from tolerance import rounding_bound
from torch import nn

from trainer.models import EMA


def source_net(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_update_in_float32_against_float64_reference(dtype):
    source = source_net(dtype)
    ema = EMA(source)
    assert all(t.dtype == torch.float32 and not t.requires_grad for t in ema.parameters())
    ref = [p.detach().double() for p in source.parameters()]
    gen = torch.Generator().manual_seed(1)
    for step in range(50):
        with torch.no_grad():  # the source moves by a small amount, as training does
            for p in source.parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(dtype) * 1e-2)
        source(torch.randn(4, 6).to(dtype))  # BatchNorm running stats change
        m = 0.996 + 0.003 * step / 50
        ema.update(source, m)
        ref = [m * r + (1 - m) * p.detach().double() for r, p in zip(ref, source.parameters())]
    # 50 fp32 lerps, each t + w (p - t): three roundings (<= 1.5 eps32) of values of the reference's size,
    # and the source's own float32 rounding, which the float64 reference shares
    for t, r in zip(ema.parameters(), ref):
        torch.testing.assert_close(t.double(), r, rtol=0, atol=rounding_bound(torch.float32, r.abs().max().item(),
                                                                               2 * 50))
    # a half-precision target would have lost the (1 - m) increments: the reference moved measurably
    moved = max((r - p0.detach().double()).abs().max() for r, p0 in zip(ref, source_net(dtype).parameters()))
    assert moved > 1e-3
    for t, s in zip(ema.buffers(), source.buffers()):
        assert torch.equal(t, s.to(t.dtype))


def test_forward_runs_the_copy_and_update_leaves_the_source():
    source = source_net(torch.float32).eval()
    ema = EMA(source).eval()
    x = torch.randn(3, 6)
    torch.testing.assert_close(ema(x), source(x), rtol=0, atol=0)
    before = [p.detach().clone() for p in source.parameters()]
    with torch.no_grad():
        for p in ema.parameters():
            p.zero_()
    ema.update(source, 0.0)  # m = 0: the target becomes the source
    assert all(torch.equal(p, b) for p, b in zip(source.parameters(), before))
    torch.testing.assert_close(ema(x), source(x), rtol=0, atol=0)
