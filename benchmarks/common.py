"""What every benchmark shares: device naming, timing, peak memory, the table and the JSON file.

Results go to `benchmarks/results/<bench>_<device>_<YYYY-MM-DD>.json`:
{"bench", "device", "date", "torch", "meta": {...}, "rows": [{"impl", ..., "status", ...}]}.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import re
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import (
    TorchDispatchMode,
    is_traceable_wrapper_subclass,
    is_traceable_wrapper_subclass_type,
)

from trainer.atomic_json import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def trainer_launch(ranks: int) -> tuple[list[str], list[str]]:
    """The command starting `python -m trainer` as `ranks` processes on this machine (torchrun, gloo ranks,
    DDP where ranks > 1) and the overrides that keep one process's recipe: SyncBN, so BatchNorm still
    normalizes over the whole global batch."""
    if ranks == 1:
        return [sys.executable, "-m", "trainer"], []
    return ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
             "-m", "trainer"], ["engine.sync_bn=true"])


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--device, --threads and --out-dir, the same in every benchmark."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)


def setup(args: argparse.Namespace) -> torch.device:
    """The device the arguments name, with torch's CPU threads set as asked."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """`cpu-2core` or the GPU's name as a slug, e.g. `nvidia-h100-80gb-hbm3`."""
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{len(os.sched_getaffinity(0))}core"


def machine() -> dict:
    """The CPU model (/proc/cpuinfo) and the vector instructions torch's CPU kernels use (two machines here that
    both read "AMD EPYC" ran the same steps 1.4-2x apart), the cores this process may use, and the 1-minute
    load average now."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 "unknown")
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": len(os.sched_getaffinity(0)), "loadavg_1m": loadavg()}


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall time of `fn()` in ms, `repeats` times after `warmup` untimed calls (device synchronized)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def matmul_gflop_per_s(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """The yardstick a step's rate is read against: a square n x n x n matmul (2 n^3 FLOPs) on this device,
    dtype and thread count, the kernel its vendor library tunes best (n = 1024 on a CPU, 4096 on a GPU)."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    ms = statistics.median(time_ms(lambda: a @ b, device, repeats, warmup=2))
    return round(2 * n**3 / (ms / 1e3) / 1e9, 1)


def summary(times_ms: list[float]) -> dict:
    return {
        "ms_median": round(statistics.median(times_ms), 3),
        "ms_min": round(min(times_ms), 3),
        "repeats": len(times_ms),
    }


class PeakMemory:
    """Peak memory allocated inside the `with` block, above what was allocated on entry, in MiB.

    CUDA: torch.cuda.max_memory_allocated (the caching allocator's own count of live tensors).
    CPU: the same count taken op by op (`LiveTensors`, what was alive on entry left out). The
    process's peak resident set, read here before, moved with what the allocator kept from the work
    measured before (two engines measured in turn read in either order), and pinning glibc's mmap
    threshold to make it honest made every later step 2.5x slower.
    """

    METHOD: ClassVar[dict[str, str]] = {
        "cuda": "torch.cuda.max_memory_allocated",
        "cpu": "live tensor bytes created in the block (common.LiveTensors)",
    }

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.live = LiveTensors(self.device, above_entry=True).__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = round(torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base, 1)
        else:
            self.live.__exit__(*exc)
            self.peak_mb = self.live.peak_mb
        return False


class LiveTensors(TorchDispatchMode):
    """Live tensor bytes on `device` inside the `with` block: every storage an op creates there, counted
    from its first appearance until it is freed, plus the storages already alive in the modules
    (parameters, buffers, gradients) and optimizers (state) handed in; each storage once, the peak taken
    after every op. With `above_entry`, every storage alive on entry (found through the garbage collector)
    is left out even where an op writes it in place (an optimizer step on the parameters). Tensor subclasses (FSDP2's DTensor) are counted by their local shards, and a storage
    resized in place (FSDP2 frees its gathered parameters with `resize_(0)`) at its new size.

    `peak_mb` is the most alive at any moment (what a step needs), `state_mb` what is still alive on exit
    (what the run keeps between steps: parameters, optimizer state, gradient buffers). Unlike the resident
    set this does not depend on what the allocator kept from earlier work: measured one after the other in
    one process, FSDP2's peak RSS growth read above DDP's or below it depending on which engine ran first.
    On CUDA it counts what max_memory_allocated counts, less the caching allocator's rounding. (torch's own
    MemTracker does this too, but it hooks every parameter of a forward and fails on a frozen EMA teacher.)
    """

    def __init__(self, device: torch.device, *tracked, above_entry: bool = False):
        super().__init__()
        self.device, self.tracked, self.above_entry = device, tracked, above_entry
        self.live: dict[int, int] = {}
        self.existing: dict[int, weakref.ref] = {}
        self.current = self.peak_bytes = self.state_bytes = 0

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)

    @property
    def state_mb(self) -> float:
        return round(self.state_bytes / 2**20, 1)

    def _add(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        if is_traceable_wrapper_subclass(t):
            for name in t.__tensor_flatten__()[0]:
                self._add(getattr(t, name))
            return
        if t.device.type != self.device.type or t.is_meta:
            return
        storage = t.untyped_storage()
        known = self.existing.get(id(storage))
        if known is not None and known() is storage:
            return
        if id(storage) not in self.live:
            self.live[id(storage)] = 0
            weakref.finalize(storage, self._drop, id(storage))
        self._resized(storage)

    def _resized(self, storage) -> None:
        """A storage's bytes now (ops and FSDP2's resize_ to 0 and back change them in place)."""
        if id(storage) in self.live:
            self.current += storage.nbytes() - self.live[id(storage)]
            self.live[id(storage)] = storage.nbytes()

    def _drop(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def _resize_(self, storage, size):
        out = self._storage_resize(storage, size)
        self._resized(storage)
        self.peak_bytes = max(self.peak_bytes, self.current)
        return out

    def __enter__(self):
        if self.above_entry:
            gc.collect()
            for obj in gc.get_objects():
                # type(), not isinstance: isinstance reads __class__, which some lazy module objects warn on
                if issubclass(type(obj), torch.Tensor) and not obj.is_meta and not is_traceable_wrapper_subclass(obj):
                    for t in (obj, obj.grad if obj.is_leaf else None):
                        if t is not None:
                            storage = t.untyped_storage()
                            self.existing[id(storage)] = weakref.ref(storage)
        for obj in self.tracked:
            if isinstance(obj, torch.optim.Optimizer):
                for state in obj.state.values():
                    for value in state.values():
                        self._add(value)
            else:
                for tensor in [*obj.parameters(), *obj.buffers()]:
                    self._add(tensor)
                    self._add(tensor.grad)
        self.peak_bytes = self.current
        self._storage_resize = torch.UntypedStorage.resize_
        torch.UntypedStorage.resize_ = lambda storage, size: self._resize_(storage, size)
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        torch.UntypedStorage.resize_ = self._storage_resize
        gc.collect()
        self.state_bytes = self.current
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(is_traceable_wrapper_subclass_type(t) for t in types):
            return NotImplemented  # let the subclass run its local ops, then count those
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            self._add(t)
        self.peak_bytes = max(self.peak_bytes, self.current)
        return out


def free_memory_mb(device: torch.device) -> float:
    """Memory a new allocation could still get: free GPU memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**20
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE).group(1)) / 1024


def print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_results(
    bench: str, device: torch.device, meta: dict, rows: list[dict], out_dir: Path = RESULTS, **summary
) -> Path:
    """`summary`: top-level keys beside the rows (e.g. ratio_vs_baseline)."""
    date = datetime.date.today().isoformat()
    label = device_label(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{bench}_{label}_{date}.json"
    doc = {
        "bench": bench,
        "device": label,
        "date": date,
        "torch": torch.__version__,
        "meta": meta,
        **summary,
        "rows": rows,
    }
    write_json(path, doc, indent=1)
    print(f"wrote {path}")
    return path
