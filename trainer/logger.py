"""Rank-0 monitoring: TensorBoard scalars and images, metrics.jsonl, progress, console lines.

Progress is a tqdm bar on a terminal; off one (a Slurm log, nohup, CI) or with train.progress=false,
one plain line per log window: step/total, epoch, loss, img/s, data-wait %, ETA.

`make_logger(ctx, ...)` returns a `Logger` on global rank 0 and a `NullLogger` (same methods, does
nothing) elsewhere, so the loop never asks which rank it is on (STYLE.md, principle 11).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
from pathlib import Path

import torch

from trainer.dist import DistContext


class NullLogger:
    def info(self, message: str) -> None: ...
    def write(self, name: str, text: str) -> None: ...
    def scalars(self, step: int, epoch: int, values: dict[str, float]) -> None: ...
    def images(self, tag: str, step: int, views: list[torch.Tensor], mean: list[float], std: list[float]) -> None: ...
    def progress(self, step: int, epoch: int, values: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def truncate_metrics(path: Path, start_step: int) -> None:
    """Keep only the metrics.jsonl records of steps <= start_step, the step the run resumes at: those
    after it came from a run that died before its next checkpoint, are trained again, and would be
    logged twice. A line the crash cut off is dropped too. Rewritten atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= start_step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def progress_line(step: int, total: int, epoch: int, values: dict[str, float]) -> str:
    """`step 40/200 (20%) | epoch 2 | loss 4.1234 | 812 img/s | data wait 3% | ETA 0:02:11`; the ETA
    assumes the rest runs at this window's time per step."""
    eta = datetime.timedelta(seconds=round(values["time/step"] * (total - step)))
    return (f"step {step}/{total} ({100 * step / total:.0f}%) | epoch {epoch + 1} | loss {values['loss']:.4f} | "
            f"{values['images_per_s']:.0f} img/s | data wait {100 * values['time/data_wait_fraction']:.0f}% | "
            f"ETA {eta}")


class Logger(NullLogger):
    """Writes to run_dir/tb (TensorBoard), run_dir/metrics.jsonl (one JSON object per log step)."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress: bool):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.total = run_dir, total_steps
        # purge_step: TensorBoard hides the dead run's events from start_step + 1 on, as metrics.jsonl drops them
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        truncate_metrics(run_dir / "metrics.jsonl", start_step)
        self.jsonl = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (open for the run, closed in close())
        # a bar only where it is drawn on a terminal; in a log file it is a wall of carriage returns
        self.bar = (tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)
                    if progress and sys.stderr.isatty() else None)

    def info(self, message: str) -> None:
        if self.bar is None:
            print(message, flush=True)
        else:
            self.bar.write(message, file=sys.stdout)

    def write(self, name: str, text: str) -> None:
        """A text file in the run directory (the resolved config.yaml)."""
        (self.run_dir / name).write_text(text)

    def scalars(self, step: int, epoch: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.tb.add_scalar(tag, value, step)
        self.jsonl.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")
        self.jsonl.flush()
        self.tb.flush()

    def images(self, tag: str, step: int, views: list[torch.Tensor], mean: list[float], std: list[float]) -> None:
        """The first 8 images of each view [B, 3, H, W] (normalized) as one grid per view in TensorBoard,
        and all views as the rows of run_dir/images/<tag>.png (the latest; the eval report shows it)."""
        from torchvision.utils import make_grid, save_image

        m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        grids = [make_grid((x[:8].detach().float().cpu() * s + m).clamp(0, 1), nrow=8) for x in views]
        for v, grid in enumerate(grids):
            self.tb.add_image(f"{tag}/view{v}", grid, step)
        width = max(g.shape[2] for g in grids)  # multi-crop: local views are smaller, pad their rows
        (self.run_dir / "images").mkdir(exist_ok=True)
        save_image(torch.cat([torch.nn.functional.pad(g, (0, width - g.shape[2])) for g in grids], dim=1),
                   self.run_dir / "images" / f"{tag}.png")

    def progress(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """Once per log window: the bar moves, or one plain line is printed."""
        if self.bar is None:
            self.info(progress_line(step, self.total, epoch, values))
            return
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({"loss": values["loss"], "img/s": values["images_per_s"]}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.tb.close()
        self.jsonl.close()


def make_logger(ctx: DistContext, run_dir: Path, total_steps: int, start_step: int, progress: bool) -> NullLogger:
    return Logger(run_dir, total_steps, start_step, progress) if ctx.is_main else NullLogger()


class Meter:
    """Averages over the log window, kept on the device and read with one host sync at log cadence.

    Device scalars (loss, metrics) are summed where finite; a non-finite loss is counted and the
    first step it happened at recorded, all without leaving the device. `read()` all-reduces the
    window over ranks (collective: every rank calls it at the same step); a key with no finite value
    in the window reads NaN (0.0 would read as a perfect loss). Counts set with `total` ride along in
    the same all-reduce and read as their sum over ranks.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.host: dict[str, list[float]] = {}
        self.totals: dict[str, float] = {}
        self.nonfinite = torch.zeros((), device=self.device)
        self.first_nonfinite = torch.full((), float("inf"), device=self.device)

    def add_loss(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.nonfinite += bad
        self.first_nonfinite = torch.where(bad, self.first_nonfinite.clamp(max=step), self.first_nonfinite)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, v in values.items():
            v = v.detach().float()
            ok = torch.isfinite(v)
            self.sums[key] = self.sums.get(key, 0) + torch.where(ok, v, 0)
            self.counts[key] = self.counts.get(key, 0) + ok

    def add_host(self, values: dict[str, float]) -> None:
        for key, v in values.items():
            self.host.setdefault(key, []).append(v)

    def total(self, key: str, value: float) -> None:
        """A count this rank keeps itself (e.g. samples skipped so far), summed over ranks by `read()`."""
        self.totals[key] = value

    def read(self) -> tuple[dict[str, float], int, int]:
        """(window means, non-finite steps, first non-finite step or -1), over all ranks; then reset."""
        keys, totals = sorted(self.sums), sorted(self.totals)
        packed = torch.cat([torch.stack([self.sums[k] for k in keys] + [self.counts[k].float() for k in keys]
                                        + [self.nonfinite]),
                            torch.tensor([self.totals[k] for k in totals], dtype=torch.float32, device=self.device)])
        first = self.first_nonfinite.clone()
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        values = packed.tolist()  # the host sync of the log cadence
        n = len(keys)
        means = {k: values[i] / values[n + i] if values[n + i] else math.nan for i, k in enumerate(keys)}
        means.update({k: sum(v) / len(v) for k, v in self.host.items()})
        means.update(zip(totals, values[2 * n + 1:]))
        first_step = first.item()
        self.reset()
        return means, int(values[2 * n]), -1 if first_step == float("inf") else int(first_step)
