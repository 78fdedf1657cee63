"""The Triton NT-Xent kernel on a GPU against `fused_ce_torch` run in float64 on the same inputs.

Sizes are those of real batches (2N up to 131072 embeddings), with the autotuned tiles, in fp32
(3xTF32 and TF32) and bf16/fp16, and the memory bound that is the point of the kernel.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from tolerance import rounding_bound

from trainer.losses.nt_xent import fused_ce_torch, nt_xent_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def matmul_precision():
    """Restore torch's float32 matmul precision after a test changes it."""
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)


def simclr_inputs(n, d, dtype, seed=0):
    """Both views of n images stacked [2n, d]; row i's positive is its other view, self is i."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    z = F.normalize(torch.randn(2 * n, d, device="cuda", generator=gen), dim=1).to(dtype)
    rows = torch.arange(2 * n, device="cuda")
    return z, (rows + n) % (2 * n), rows


def run(fn, q, k, pos, self_idx, inv_temp, g):
    """loss [M] and the gradients of sum(g * loss) w.r.t. q and k (k may be q itself)."""
    q = q.detach().clone().requires_grad_()
    k = q if k is None else k.detach().clone().requires_grad_()
    loss = fn(q, k, pos, self_idx, inv_temp)
    (loss * g).sum().backward()
    return loss.detach().double(), q.grad.double(), (None if k is q else k.grad.double())


TF32_U = 2.0**-11  # unit roundoff of TF32's 10 explicit mantissa bits


def loss_bound(inv_temp, d, n_keys, operand_u=0.0):
    """A row's loss: the float32 NT-Xent bound of test_nt_xent.py (logits up to inv_temp, d-long dots, a
    K-term log-sum-exp), the dots counted twice for 3xTF32 (it drops the low x low product, ~2^-22 of
    each term); operands rounded to TF32 (unit roundoff u) move each logit of unit rows by <= 2 u inv_temp,
    and the loss, a log-sum-exp minus one logit, by twice that. Half inputs are exact in the reference."""
    return rounding_bound(torch.float32, 2 * inv_temp + math.log(n_keys), 4 * d + n_keys + 4) + 4 * operand_u * inv_temp


def grad_bound(q, k, pos, self_idx, inv_temp, g, loss_tol, operand_u):
    """Gradients are t x (dS k, dS^T q), dS_ij = g_i (softmax_ij - onehot_ij), as in
    test_nt_xent_triton_interpreted.py: each softmax entry is off by <= 2 loss_tol of itself and each
    product sums <= M + K float32 terms, so an element is within t x mass x (2 loss_tol + eps32 (M + K)),
    mass the largest row plus column sum of |dS| (float64); `operand_u` adds the rounding of dS (and k, q)
    to TF32 or 16 bits before the backward matmuls: t x mass x operand_u."""
    q, k = q.double(), q.double() if k is None else k.double()
    cols = torch.arange(k.shape[0], device=k.device)
    logits = (q @ k.T * inv_temp).masked_fill(cols[None, :] == self_idx[:, None], float("-inf"))
    ds = (torch.softmax(logits, 1) - F.one_hot(pos, k.shape[0]).double()) * g.double()[:, None]
    mass = ds.abs().sum(1).max().item() + ds.abs().sum(0).max().item()
    eps32 = torch.finfo(torch.float32).eps
    return inv_temp * mass * (2 * loss_tol + eps32 * (q.shape[0] + k.shape[0]) + operand_u)


def assert_matches_float64(q, k, pos, self_idx, inv_temp, loss_tol, operand_u=0.0):
    from trainer.losses.nt_xent_triton import fused_ce_triton

    g = torch.randn(q.shape[0], device="cuda")
    got = run(fused_ce_triton, q, k, pos, self_idx, inv_temp, g)
    want = run(
        fused_ce_torch, q.double(), None if k is None else k.double(), pos, self_idx, inv_temp, g.double()
    )
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=loss_tol)
    bound = grad_bound(q, k, pos, self_idx, inv_temp, g, loss_tol, operand_u)
    half_out = torch.finfo(q.dtype).eps / 2 if q.dtype in (torch.float16, torch.bfloat16) else 0.0
    for name, mine, ref in zip(("dq", "dk"), got[1:], want[1:]):
        if ref is not None:  # half gradients are returned rounded to their dtype: u16 of each element
            torch.testing.assert_close(mine, ref, rtol=0, atol=bound + half_out * ref.abs().max().item(),
                                       msg=lambda msg, n=name: f"{n}: {msg}")


@pytest.mark.parametrize("d", [64, 96, 128, 256])
def test_fp32_highest_precision_matches(d, matmul_precision):
    matmul_precision("highest")
    z, pos, self_idx = simclr_inputs(2048, d, torch.float32)
    assert_matches_float64(z, None, pos, self_idx, 10.0, loss_tol=loss_bound(10.0, d, len(z)))


def test_fp32_tf32_matches_loosely(matmul_precision):
    matmul_precision("high")
    z, pos, self_idx = simclr_inputs(4096, 128, torch.float32)
    # TF32 rounds each operand to 10 mantissa bits: loss_bound's operand term; in the backward, both
    # operands of each product (dS and the rows), 2 u
    assert_matches_float64(z, None, pos, self_idx, 10.0, loss_tol=loss_bound(10.0, 128, len(z), TF32_U),
                           operand_u=2 * TF32_U)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_match(dtype):
    z, pos, self_idx = simclr_inputs(4096, 128, dtype)
    # the kernel accumulates in fp32 (the loss: fp32's bound); dlogits are rounded to 16 bits before the
    # backward matmuls (the rows are exact: they are the inputs), u16 of the mass
    assert_matches_float64(z, None, pos, self_idx, 10.0, loss_tol=loss_bound(10.0, 128, len(z)),
                           operand_u=torch.finfo(dtype).eps / 2)


def test_local_rows_against_gathered_keys(matmul_precision):
    """One rank (rank 2 of 4) of a gathered batch: q is its 2n rows, k all 2N rows, M != K."""
    matmul_precision("highest")
    n, world, rank = 1000, 4, 2
    k, _, _ = simclr_inputs(n * world, 128, torch.float32, seed=1)
    local = torch.arange(2 * n, device="cuda")
    self_idx = local + 2 * n * rank
    pos = (self_idx + n * world) % (2 * n * world)
    q = k[self_idx].clone()
    assert_matches_float64(q, k, pos, self_idx, 5.0, loss_tol=loss_bound(5.0, 128, len(k)))


def test_backward_is_deterministic():
    from trainer.losses.nt_xent_triton import fused_ce_triton

    z, pos, self_idx = simclr_inputs(4096, 128, torch.bfloat16)
    g = torch.randn(z.shape[0], device="cuda")
    first, second = (run(fused_ce_triton, z, None, pos, self_idx, 10.0, g) for _ in range(2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_peak_memory_at_65536_images_is_linear():
    """2N = 131072 rows: the plain [2N, 2N] fp32 logits alone would take 64 GiB."""
    from trainer.losses.nt_xent_triton import fused_ce_triton

    z, pos, self_idx = simclr_inputs(65536, 128, torch.float32)
    z.requires_grad_()
    fused_ce_triton(z, z, pos, self_idx, 10.0)  # autotune outside the measured step
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = fused_ce_triton(z, z, pos, self_idx, 10.0).mean()
    loss.backward()
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert peak_mb < 1024, f"peak {peak_mb:.0f} MiB above the inputs"


def test_nt_xent_loss_on_cuda_matches_cpu_float64():
    """The dispatch in nt_xent_loss: CUDA takes the Triton kernel, the CPU the PyTorch one."""
    from trainer.losses import nt_xent

    assert nt_xent._fused_ce_triton() is not None, "Triton kernel failed to import"
    gen = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(2, 512, 128, generator=gen)
    got = nt_xent_loss(z_a.cuda(), z_b.cuda(), 0.2)
    want = nt_xent_loss(z_a.double(), z_b.double(), 0.2)
    # the mean of 1024 rows' losses: each within the 3xTF32 row bound at 1 / 0.2, plus the mean's own sum
    bound = loss_bound(5.0, 128, 1024) + rounding_bound(torch.float32, 2 * 5.0 + math.log(1024), 1024)
    torch.testing.assert_close(got.double().cpu(), want, rtol=0, atol=bound)
