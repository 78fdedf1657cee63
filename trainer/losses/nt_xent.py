"""NT-Xent (SimCLR's normalized temperature-scaled cross-entropy) over the all-gathered batch,
with a blockwise cross-entropy that never materializes the [2N, 2N] similarity matrix.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020, eq. 1.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from trainer.dist import all_gather_with_grad, rank
from trainer.losses.precision import full_precision

# Elements of one [rows, K] similarity block: 4 Mi float32 = 16 MiB. Large enough that each block's
# matmuls run at full BLAS speed, small enough to stay a few % of the plain [M, K] at K = 8192.
_BLOCK_ELEMENTS = 1 << 22


class _FusedCE(torch.autograd.Function):
    """Row blocks of q against all of k; the backward recomputes each block from the saved log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, pos, self_idx, inv_temp, block_rows):
        qs = q * inv_temp  # fold the temperature into the [M, d] side, not the [M, K] one
        lse = torch.empty(q.shape[0], dtype=q.dtype, device=q.device)
        buf = torch.empty(min(block_rows, q.shape[0]), k.shape[0], dtype=q.dtype, device=q.device)
        for start in range(0, q.shape[0], block_rows):
            stop = min(start + block_rows, q.shape[0])
            s = torch.mm(qs[start:stop], k.T, out=buf[: stop - start])
            s.scatter_(1, self_idx[start:stop, None], float("-inf"))
            row_max = s.amax(1, keepdim=True)
            lse[start:stop] = s.sub_(row_max).exp_().sum(1).log_().add_(row_max.squeeze(1))
        ctx.save_for_backward(q, k, pos, self_idx, lse)
        ctx.inv_temp, ctx.block_rows = inv_temp, block_rows
        return lse - (qs * k[pos]).sum(1)

    @staticmethod
    def backward(ctx, grad):
        q, k, pos, self_idx, lse = ctx.saved_tensors
        inv_temp, block_rows = ctx.inv_temp, ctx.block_rows
        qs = q * inv_temp
        gqs = qs * grad[:, None]  # row i of dS = grad_i * (softmax_i - onehot(pos_i)): scale the small side
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        buf = torch.empty(min(block_rows, q.shape[0]), k.shape[0], dtype=q.dtype, device=q.device)
        for start in range(0, q.shape[0], block_rows):
            stop = min(start + block_rows, q.shape[0])
            # softmax = exp(s - lse); the -lse rides in the matmul's accumulator (addmm) instead of a pass
            p = torch.addmm(-lse[start:stop, None], qs[start:stop], k.T, out=buf[: stop - start])
            p.scatter_(1, self_idx[start:stop, None], float("-inf")).exp_()
            torch.mm(p, k, out=dq[start:stop])
            dk.addmm_(p.T, gqs[start:stop])
        dq.sub_(k[pos]).mul_(grad[:, None] * inv_temp)
        dk.index_add_(0, pos, gqs, alpha=-1.0)
        return dq, dk, None, None, None, None


def fused_ce_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    pos: torch.Tensor,
    self_idx: torch.Tensor,
    inv_temp: float,
    *,
    block_rows: int | None = None,
) -> torch.Tensor:
    """Per-row cross-entropy of q against keys k, excluding each row's own key.

    q [M, d], k [K, d] (L2-normalized, float32 or float64), pos [M] and self_idx [M] int64 indices
    into k -> [M]: logsumexp_{j != self_idx[i]}(q_i . k_j * inv_temp) - q_i . k_{pos[i]} * inv_temp.
    Differentiable w.r.t. q and k. Works in blocks of `block_rows` rows (default: 16 MiB of
    similarities per block), so memory is O((M + K) d + block_rows K), never [M, K].
    """
    if block_rows is None:
        block_rows = max(1, _BLOCK_ELEMENTS // k.shape[0])
    return _FusedCE.apply(q, k, pos, self_idx, float(inv_temp), block_rows)


@functools.cache
def _fused_ce_triton():
    """The Triton kernel (same contract) when it imports; lazy so that a missing Triton costs nothing."""
    try:
        from trainer.losses.nt_xent_triton import fused_ce_triton
    except ImportError:
        return None
    return fused_ce_triton


def fused_ce(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, self_idx: torch.Tensor,
             inv_temp: float) -> torch.Tensor:
    """fused_ce_torch's contract, on the Triton kernel where it applies (CUDA, fp32/bf16/fp16 rows of
    width <= 256), in PyTorch otherwise."""
    fits_kernel = q.is_cuda and q.dtype != torch.float64 and q.shape[1] <= 256
    kernel = (_fused_ce_triton() if fits_kernel else None) or fused_ce_torch
    return kernel(q, k, pos, self_idx, inv_temp)


@full_precision
def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent for two views z_a, z_b [n, d] of this rank's n images -> scalar.

    Embeddings are L2-normalized in float32 (autocast off), then all-gathered with gradient into
    the 2N global keys (N = n x world size). Each local anchor's positive is the other view of its
    image; its negatives are the other 2N - 2 embeddings of the global batch. Returns the mean over
    this rank's 2n anchors: DDP's gradient averaging then yields the mean over all 2N anchors, i.e.
    the loss and gradients of one process on the concatenated batch. One process: gather = identity.
    """
    n = z_a.shape[0]
    q = F.normalize(torch.cat([z_a, z_b]), dim=1)  # [2n, d], this rank's anchors
    k = all_gather_with_grad(q)  # [2N, d], rank r's block at rows 2n*r ... 2n*(r+1)
    local = torch.arange(2 * n, device=q.device)
    self_idx = local + 2 * n * rank()
    pos = self_idx + torch.where(local < n, n, -n)
    return fused_ce(q, k, pos, self_idx, 1.0 / temperature).mean()
