"""Run `fused_ce_triton` on CPU tensors under Triton's interpreter, in a process of its own.

The interpreter is chosen when `triton.jit` wraps the kernels, i.e. when the kernel module is first
imported; running here (started with TRITON_INTERPRET=1 by test_nt_xent_triton_interpreted.py) keeps
it out of every other test's process. argv: cases file in, results file out (torch.save lists).
"""

import sys

import torch

from trainer.losses.nt_xent_triton import fused_ce_triton


def run(case: dict) -> dict:
    q = case["q"].clone().requires_grad_()
    k = q if case["shared"] else case["k"].clone().requires_grad_()
    loss = fused_ce_triton(
        q,
        k,
        case["pos"],
        case["self_idx"],
        case["inv_temp"],
        block_m=case["block_m"],
        block_n=case["block_n"],
    )
    (loss * case["g"]).sum().backward()
    return {"loss": loss.detach(), "dq": q.grad, "dk": None if case["shared"] else k.grad}


if __name__ == "__main__":
    cases = torch.load(sys.argv[1])
    torch.save([run(c) for c in cases], sys.argv[2])
