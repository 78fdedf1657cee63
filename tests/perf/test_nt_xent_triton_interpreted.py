"""The Triton NT-Xent kernel run on the CPU by Triton's interpreter, against the formula in float64.

One subprocess (TRITON_INTERPRET=1) runs every case, so the interpreter never leaks into other tests.
Tile sizes of 16 on inputs of a few dozen rows exercise several row and column tiles, ragged edges,
an embedding width that is not a power of two, and the online log-sum-exp across tiles.
The interpreter computes bf16 dots wrongly (triton 3.8) and cannot autotune (no driver), so bf16
and the autotuned tiles are covered by the GPU tests (test_nt_xent_triton_gpu.py) only.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tolerance import rounding_bound

REPO = Path(__file__).resolve().parents[2]


def reference(q, k, pos, self_idx, inv_temp):
    """loss_i = logsumexp_{j != self_idx[i]}(q_i . k_j t) - q_i . k_pos[i] t, in float64, dense."""
    logits = q.double() @ k.double().T * inv_temp
    cols = torch.arange(k.shape[0])
    masked = logits.masked_fill(cols[None, :] == self_idx[:, None], float("-inf"))
    return torch.logsumexp(masked, dim=1) - logits.gather(1, pos[:, None]).squeeze(1)


def simclr_case(name, n, d, dtype, inv_temp, gen):
    """Both views of n images in one [2n, d] tensor used as q and k: row i's positive is its other view."""
    z = F.normalize(torch.randn(2 * n, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    rows = torch.arange(2 * n)
    return {
        "name": name,
        "q": z,
        "k": None,
        "shared": True,
        "pos": (rows + n) % (2 * n),
        "self_idx": rows,
        "inv_temp": inv_temp,
        "block_m": 16,
        "block_n": 16,
        "g": torch.randn(2 * n, generator=gen),
    }


def gathered_case(name, m, k_rows, d, dtype, inv_temp, gen, block_m=16, block_n=16, exclude_self=True):
    """One rank's m rows against K gathered rows (M != K), arbitrary positives and self columns."""
    q = F.normalize(torch.randn(m, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    k = F.normalize(torch.randn(k_rows, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    self_idx = torch.randperm(k_rows, generator=gen)[:m] if exclude_self else torch.full((m,), -1)
    return {
        "name": name,
        "q": q,
        "k": k,
        "shared": False,
        "pos": torch.randint(0, k_rows, (m,), generator=gen),
        "self_idx": self_idx,
        "inv_temp": inv_temp,
        "block_m": block_m,
        "block_n": block_n,
        "g": torch.randn(m, generator=gen),
    }


def make_cases():
    gen = torch.Generator().manual_seed(0)
    return [
        simclr_case("simclr_fp32_T0.1", 23, 32, torch.float32, 10.0, gen),
        simclr_case("simclr_fp32_T0.01_large_logits", 20, 16, torch.float32, 100.0, gen),
        simclr_case("simclr_fp16_T0.2", 23, 32, torch.float16, 5.0, gen),
        gathered_case("gathered_fp32_d24", 20, 61, 24, torch.float32, 10.0, gen),
        gathered_case(
            "gathered_fp32_no_self", 33, 40, 48, torch.float32, 3.0, gen, block_m=32, exclude_self=False
        ),
        gathered_case("gathered_fp16_d40", 17, 64, 40, torch.float16, 10.0, gen, block_m=16, block_n=32),
    ]


CASES = make_cases()


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton_interp")
    torch.save(CASES, tmp / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("_interpreted_kernel.py")),
            tmp / "cases.pt",
            tmp / "out.pt",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(zip([c["name"] for c in CASES], torch.load(tmp / "out.pt")))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_loss_and_grads_match_float64_formula(case, interpreted):
    got = interpreted[case["name"]]
    q = case["q"].double().requires_grad_()
    k = q if case["shared"] else case["k"].double().requires_grad_()
    want = reference(q, k, case["pos"], case["self_idx"], case["inv_temp"])
    (want * case["g"].double()).sum().backward()

    # Derived bounds (tests/tolerance.py). The kernel computes in float32 whatever its inputs (fp16
    # inputs are exact in the float64 reference): a row's loss is within the float32 NT-Xent bound of
    # test_nt_xent.py, logits up to inv_temp over d-long dots and a K-term log-sum-exp.
    d, m, n_keys, t = case["q"].shape[1], q.shape[0], k.shape[0], case["inv_temp"]
    loss_bound = rounding_bound(torch.float32, 2 * t + math.log(n_keys), 2 * d + n_keys + 4)
    assert got["loss"].dtype == torch.float32
    torch.testing.assert_close(got["loss"].double(), want.detach(), rtol=0, atol=loss_bound)
    # Gradients are t x (dS k, dS^T q), dS_ij = g_i (softmax_ij - onehot_ij): each softmax entry is off
    # by <= 2 loss_bound of itself, and each product sums <= M + K terms, so an element is within
    # t x mass x (2 loss_bound + eps32 (M + K)), mass the largest row plus column sum of |dS| (float64).
    # fp16 inputs: the kernel rounds dS to fp16 before the matmuls (u16 of the mass) and returns fp16.
    own = torch.arange(n_keys)[None, :] == case["self_idx"][:, None]
    logits = (q.detach() @ k.detach().T * t).masked_fill(own, float("-inf"))
    ds = (torch.softmax(logits, 1) - F.one_hot(case["pos"], n_keys).double()) * case["g"].double()[:, None]
    mass = ds.abs().sum(1).max().item() + ds.abs().sum(0).max().item()
    grad_bound = t * mass * (2 * loss_bound + torch.finfo(torch.float32).eps * (m + n_keys))
    half = case["q"].dtype == torch.float16
    if half:
        grad_bound += t * mass * torch.finfo(torch.float16).eps / 2
    for name, mine, ref in (("dq", got["dq"], q.grad), ("dk", got["dk"], None if case["shared"] else k.grad)):
        if ref is None:
            continue
        assert mine.dtype == case["q"].dtype
        bound = grad_bound + (torch.finfo(torch.float16).eps / 2 * ref.abs().max().item() if half else 0.0)
        torch.testing.assert_close(mine.double(), ref, rtol=0, atol=bound, msg=lambda msg, n=name: f"{n}: {msg}")
