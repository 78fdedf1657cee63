"""Fused NT-Xent cross-entropy in Triton: the `fused_ce` contract without materializing [M, K].

    loss_i = logsumexp_{j != self_idx[i]}(q_i . k_j * t) - q_i . k_{pos[i]} * t,   t = inv_temp

q [M, d], k [K, d] (L2-normalized, same dtype: fp32, bf16 or fp16), pos and self_idx [M] int64;
returns fp32 [M]. The flash-attention pattern (Dao et al. 2022, "FlashAttention"): each program owns
a block of q rows and streams k in column blocks, keeping a running max and sum (online log-sum-exp,
Milakov & Gimelshein 2018) in fp32, so memory is O((M + K) d) instead of O(M K). The backward pass
recomputes each [BLOCK_M, BLOCK_N] tile of logits from q, k and the saved per-row log-sum-exp:

    dlogit_ij = g_i (softmax_ij - [j == pos_i]),   dq = t dlogit @ k,   dk = t dlogit^T @ q

with one kernel for dq (rows outer, columns inner) and one for dk (columns outer, rows inner), so no
atomics and the result is deterministic. Same math as `fused_ce_torch` in trainer/losses/nt_xent.py.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MAX_DIM = 256  # one q tile and one k tile of width d live in registers/shared memory at once


@triton.jit
def _logits(q, k_ptr, cols, offs_d, K, D, stride_k, scale2, PRECISION: tl.constexpr):
    """Tile of logits in base 2: (q @ k[cols].T) * inv_temp * log2(e), and the k tile it used."""
    k_mask = (cols[:, None] < K) & (offs_d[None, :] < D)
    k = tl.load(k_ptr + cols[:, None].to(tl.int64) * stride_k + offs_d[None, :], mask=k_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale2
    return s, k


@triton.jit
def _fwd_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    self_ptr,
    loss_ptr,
    lse2_ptr,
    M,
    K,
    D,
    stride_q,
    stride_k,
    scale2,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    q = tl.load(
        q_ptr + rows[:, None].to(tl.int64) * stride_q + offs_d[None, :],
        mask=row_ok[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=-1)
    self_idx = tl.load(self_ptr + rows, mask=row_ok, other=-1)

    # A finite start for the running max keeps exp2(-inf - m) = 0 (not NaN) for masked logits.
    m = tl.full([BLOCK_M], -1e30, tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    pos_logit = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, K, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        s, _ = _logits(q, k_ptr, cols, offs_d, K, D, stride_k, scale2, PRECISION)
        pos_logit += tl.sum(tl.where(cols[None, :] == pos[:, None], s, 0.0), axis=1)
        s = tl.where((cols[None, :] < K) & (cols[None, :] != self_idx[:, None]), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        l = l * tl.exp2(m - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m = m_new
    lse2 = m + tl.log2(l)
    tl.store(lse2_ptr + rows, lse2, mask=row_ok)
    tl.store(loss_ptr + rows, (lse2 - pos_logit) / 1.4426950408889634, mask=row_ok)  # / log2(e): base 2 -> e


@triton.jit
def _dlogits(s, lse2, g, pos, self_idx, rows, cols, M, K):
    """g_i (softmax_ij - [j == pos_i]) for a tile; zero outside the valid rows/columns and at self."""
    keep = (rows[:, None] < M) & (cols[None, :] < K) & (cols[None, :] != self_idx[:, None])
    p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
    onehot = (cols[None, :] == pos[:, None]) & (rows[:, None] < M)
    return (p - tl.where(onehot, 1.0, 0.0)) * g[:, None]


@triton.jit
def _dq_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    self_ptr,
    lse2_ptr,
    g_ptr,
    dq_ptr,
    M,
    K,
    D,
    stride_q,
    stride_k,
    scale2,
    inv_temp,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    q_off = rows[:, None].to(tl.int64) * stride_q + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(q_ptr + q_off, mask=q_mask, other=0.0)
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=-1)
    self_idx = tl.load(self_ptr + rows, mask=row_ok, other=-1)
    lse2 = tl.load(lse2_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, K, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        s, k = _logits(q, k_ptr, cols, offs_d, K, D, stride_k, scale2, PRECISION)
        ds = _dlogits(s, lse2, g, pos, self_idx, rows, cols, M, K)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(dq_ptr + rows[:, None].to(tl.int64) * D + offs_d[None, :], dq * inv_temp, mask=q_mask)


@triton.jit
def _dk_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    self_ptr,
    lse2_ptr,
    g_ptr,
    dk_ptr,
    M,
    K,
    D,
    stride_q,
    stride_k,
    scale2,
    inv_temp,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_mask = (cols[:, None] < K) & (offs_d[None, :] < D)
    k = tl.load(k_ptr + cols[:, None].to(tl.int64) * stride_k + offs_d[None, :], mask=k_mask, other=0.0)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, M, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        q = tl.load(
            q_ptr + rows[:, None].to(tl.int64) * stride_q + offs_d[None, :],
            mask=row_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
        pos = tl.load(pos_ptr + rows, mask=row_ok, other=-1)
        self_idx = tl.load(self_ptr + rows, mask=row_ok, other=-1)
        lse2 = tl.load(lse2_ptr + rows, mask=row_ok, other=0.0)
        g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale2
        ds = _dlogits(s, lse2, g, pos, self_idx, rows, cols, M, K)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    tl.store(dk_ptr + cols[:, None].to(tl.int64) * D + offs_d[None, :], dk * inv_temp, mask=k_mask)


def _launch_config(d: int, dtype: torch.dtype) -> dict:
    """Padded width and matmul precision. fp32 inputs follow torch.set_float32_matmul_precision:
    "highest" (torch's default) runs 3xTF32 (operands split into high and low TF32 parts: about fp32
    accuracy on tensor cores), "high"/"medium" plain TF32 (~1e-3 relative error per product)."""
    highest = dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    return {
        "BLOCK_D": max(16, triton.next_power_of_2(d)),
        "PRECISION": "tf32x3" if highest else "tf32",  # Triton consults it for fp32 operands only
    }


# Tiles around the flash-attention ones for head dim 64-128; configs that exceed shared memory
# (fp32 at d = 256) fail to compile and the autotuner skips them. Tuned once per (M, K, d, dtype):
# fixed in training, so the cost (a few seconds) is paid on the first step.
_TILES = [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 2), (32, 32, 4, 2)]
_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in _TILES]
_KERNELS = {
    "fwd": (_fwd_kernel, triton.autotune(_CONFIGS, key=["M", "K", "D"])(_fwd_kernel)),
    "dq": (_dq_kernel, triton.autotune(_CONFIGS, key=["M", "K", "D"])(_dq_kernel)),
    "dk": (_dk_kernel, triton.autotune(_CONFIGS, key=["M", "K", "D"])(_dk_kernel)),
}


def _launch(
    name: str, blocks: tuple[int | None, int | None], grid_axis: str, size: int, *args, **cfg
) -> None:
    """Run kernel `name` with the given tiles, or the autotuned ones when `blocks` is (None, None)."""
    raw, tuned = _KERNELS[name]
    if blocks == (None, None):
        tuned[lambda meta: (triton.cdiv(size, meta[grid_axis]),)](*args, **cfg)
    else:
        block_m, block_n = blocks[0] or 64, blocks[1] or 64
        tile = block_m if grid_axis == "BLOCK_M" else block_n
        raw[(triton.cdiv(size, tile),)](*args, BLOCK_M=block_m, BLOCK_N=block_n, **cfg)


class _FusedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, pos, self_idx, inv_temp, blocks):
        (M, d), K = q.shape, k.shape[0]
        cfg = _launch_config(d, q.dtype)
        loss = torch.empty(M, device=q.device, dtype=torch.float32)
        lse2 = torch.empty(M, device=q.device, dtype=torch.float32)
        _launch(
            "fwd",
            blocks,
            "BLOCK_M",
            M,
            q,
            k,
            pos,
            self_idx,
            loss,
            lse2,
            M,
            K,
            d,
            q.stride(0),
            k.stride(0),
            inv_temp * LOG2E,
            **cfg,
        )
        ctx.save_for_backward(q, k, pos, self_idx, lse2)
        ctx.inv_temp, ctx.blocks, ctx.cfg = inv_temp, blocks, cfg
        return loss

    @staticmethod
    def backward(ctx, g):
        q, k, pos, self_idx, lse2 = ctx.saved_tensors
        (M, d), K = q.shape, k.shape[0]
        g = g.float().contiguous()
        args = (q, k, pos, self_idx, lse2, g)
        sizes = (M, K, d, q.stride(0), k.stride(0), ctx.inv_temp * LOG2E, ctx.inv_temp)
        dq = dk = None
        if ctx.needs_input_grad[0]:
            dq = torch.empty(M, d, device=q.device, dtype=torch.float32)
            _launch("dq", ctx.blocks, "BLOCK_M", M, *args, dq, *sizes, **ctx.cfg)
            dq = dq.to(q.dtype)
        if ctx.needs_input_grad[1]:
            dk = torch.empty(K, d, device=k.device, dtype=torch.float32)
            _launch("dk", ctx.blocks, "BLOCK_N", K, *args, dk, *sizes, **ctx.cfg)
            dk = dk.to(k.dtype)
        return dq, dk, None, None, None, None


def fused_ce_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    pos: torch.Tensor,
    self_idx: torch.Tensor,
    inv_temp: float,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Per-row NT-Xent cross-entropy [M] (fp32), differentiable w.r.t. q and k; see the module docstring.

    `self_idx[i]` is the column excluded from row i's denominator (-1 excludes none). Tiles are
    autotuned unless `block_m`/`block_n` fix them (powers of two >= 16; the other defaults to 64),
    e.g. for tests that need several tiles on tiny inputs.
    """
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(
            f"fused_ce_triton: q {tuple(q.shape)} and k {tuple(k.shape)} must be [M, d] and [K, d]"
        )
    if q.dtype != k.dtype or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"fused_ce_triton: q and k must share one of fp32/bf16/fp16, got {q.dtype} and {k.dtype}"
        )
    if q.shape[1] > MAX_DIM:
        raise ValueError(f"fused_ce_triton: embedding dim {q.shape[1]} > {MAX_DIM}; use fused_ce_torch")
    if pos.shape != (q.shape[0],) or self_idx.shape != (q.shape[0],):
        raise ValueError(
            f"fused_ce_triton: pos {tuple(pos.shape)} and self_idx {tuple(self_idx.shape)} must be [M]"
        )
    if not math.isfinite(inv_temp):
        raise ValueError(f"fused_ce_triton: inv_temp must be finite, got {inv_temp}")
    q, k = q.contiguous(), k.contiguous()
    pos, self_idx = pos.long().contiguous(), self_idx.long().contiguous()
    return _FusedCE.apply(q, k, pos, self_idx, float(inv_temp), (block_m, block_n))
