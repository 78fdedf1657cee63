"""NT-Xent forward + backward: time and peak memory against the global batch size.

N images give 2N embeddings [2N, d] (two views); the loss compares each embedding with the other
2N - 1. Implementations, all on the same projector outputs z_a, z_b [N, d] (requires_grad):
  ours     trainer.losses.nt_xent.nt_xent_loss (Triton kernel on CUDA, blockwise PyTorch elsewhere)
  plain    the usual masked cross-entropy over the full [2N, 2N] logits (written below)
  lightly  lightly.loss.NTXentLoss (optional: pip install '.[bench]'), "not installed" otherwise
Plain and lightly need O(N^2) memory: a size whose logits would not fit is recorded as skipped, as is
a size whose estimated time (quadratic in N from the previous size) exceeds --time-budget-s.

    python -m benchmarks.loss                         # all sizes, every implementation
    python -m benchmarks.loss --sizes 256,1024 --repeats 2 --out-dir /tmp/bench   # smoke run
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import (
    PeakMemory,
    add_common_args,
    free_memory_mb,
    print_table,
    setup,
    summary,
    time_ms,
    write_results,
)
from trainer.losses.nt_xent import nt_xent_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def plain_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss as usually written: full [2N, 2N] cosine logits, self masked, cross-entropy."""
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    n = z_a.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(logits, target)


def lightly_loss(temperature: float):
    """lightly's NTXentLoss (no memory bank, one process), or None when lightly is not installed."""
    try:
        from lightly.loss import NTXentLoss
    except ImportError:
        return None
    loss = NTXentLoss(temperature=temperature, gather_distributed=False)
    return lambda z_a, z_b, _temperature: loss(z_a.float(), z_b.float())


def quadratic_mb(n_images: int) -> float:
    """Rough working set of a dense implementation: logits, softmax and their gradient, fp32."""
    return 3 * (2 * n_images) ** 2 * 4 / 2**20


def measure(fn, n: int, args, device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(n)
    dtype = DTYPES[args.dtype]
    z_a, z_b = (
        torch.randn(n, args.dim, device=device, generator=gen).to(dtype).requires_grad_() for _ in range(2)
    )

    def step():
        z_a.grad = z_b.grad = None
        fn(z_a, z_b, args.temperature).backward()

    step()  # first call: Triton compiles and autotunes, lightly builds its cached masks
    times = time_ms(step, device, args.repeats, warmup=0)
    z_a.grad = z_b.grad = None
    with PeakMemory(device) as mem:
        step()
    return {"status": "ok", **summary(times), "peak_mb": mem.peak_mb}


def run_impl(name: str, fn, args, device: torch.device) -> list[dict]:
    rows, last = [], None  # last: (n, seconds per step) of the previous size that ran
    for n in args.sizes:
        row = {"impl": name, "n_images": n, "n_embeddings": 2 * n, "dim": args.dim, "dtype": args.dtype}
        reason = None
        if fn is None:
            reason = "not installed"
        elif name != "ours" and quadratic_mb(n) > 0.8 * free_memory_mb(device):
            reason = f"skipped: needs ~{quadratic_mb(n) / 1024:.0f} GiB"
        elif last is not None:
            estimate = last[1] * (n / last[0]) ** 2 * (args.repeats + 2)
            if estimate > args.time_budget_s:
                reason = f"skipped: ~{estimate:.0f} s > --time-budget-s {args.time_budget_s:.0f}"
        if reason is None:
            try:
                row.update(measure(fn, n, args, device))
                last = (n, row["ms_median"] / 1e3)
            except torch.OutOfMemoryError:
                reason = "out of memory"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if reason is not None:
            row["status"] = reason
        rows.append(row)
        print(f"  {name:8s} N={n:6d}: {row['status']} {row.get('ms_median', '')}", flush=True)
    return rows


def compare_to_plain(rows: list[dict]) -> None:
    """Add time and memory ratios against the plain implementation at the same N (the targets)."""
    plain = {r["n_images"]: r for r in rows if r["impl"] == "plain" and r["status"] == "ok"}
    for r in rows:
        base = plain.get(r["n_images"])
        if r["status"] == "ok" and base is not None and r["impl"] != "plain":
            r["time_vs_plain"] = round(r["ms_median"] / base["ms_median"], 3)
            r["mem_vs_plain"] = round(r["peak_mb"] / max(base["peak_mb"], 0.1), 3)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", default="256,1024,4096,16384,65536", help="N images per global batch (2N embeddings)"
    )
    p.add_argument("--dim", type=int, default=128, help="embedding width d")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the projector outputs fed in"
    )
    p.add_argument(
        "--matmul-precision",
        choices=["highest", "high"],
        default="highest",
        help="torch.set_float32_matmul_precision; 'high' allows TF32 for every implementation",
    )
    p.add_argument("--impls", default="ours,plain,lightly")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per size, after one untimed")
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="skip a size whose estimated total time exceeds this (default 120 on CPU, 600 on GPU)",
    )
    add_common_args(p)
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    device = setup(args)
    if args.time_budget_s is None:
        args.time_budget_s = 600.0 if device.type == "cuda" else 120.0
    torch.set_float32_matmul_precision(args.matmul_precision)

    impls = {"ours": nt_xent_loss, "plain": plain_nt_xent, "lightly": lightly_loss(args.temperature)}
    unknown = set(args.impls.split(",")) - set(impls)
    if unknown:
        raise SystemExit(f"--impls: unknown {sorted(unknown)}; choose from {sorted(impls)}")
    rows = []
    for name in args.impls.split(","):
        rows += run_impl(name, impls[name], args, device)
    compare_to_plain(rows)

    meta = {
        "what": "NT-Xent forward+backward on projector outputs z_a, z_b [N, d]; 2N embeddings",
        "dim": args.dim,
        "temperature": args.temperature,
        "dtype": args.dtype,
        "matmul_precision": args.matmul_precision,
        "threads": torch.get_num_threads(),
        "peak_memory": PeakMemory.METHOD[device.type],
        "peak_excludes": "the inputs z_a, z_b",
        "ours_backend": "triton" if device.type == "cuda" else "blockwise pytorch (fused_ce_torch)",
    }
    columns = [
        "impl",
        "n_images",
        "status",
        "ms_median",
        "ms_min",
        "peak_mb",
        "time_vs_plain",
        "mem_vs_plain",
    ]
    print_table(rows, columns)
    write_results("loss", device, meta, rows, args.out_dir)


if __name__ == "__main__":
    main()
