"""The learning-rate schedule: linear warmup, then a half cosine down to final_lr_ratio x peak.

A pure function of the optimizer step, so resuming at step k needs only k (nothing to checkpoint).
"""

from __future__ import annotations

import math


def lr_at(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, final_lr_ratio: float = 0.0) -> float:
    """lr for optimizer step `step` (0-based): peak x (step+1)/warmup during warmup, then cosine."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    final = peak_lr * final_lr_ratio
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (peak_lr - final) * 0.5 * (1 + math.cos(math.pi * progress))
