"""The one schedule every scheduled value uses (lr, EMA momentum, teacher temperature, weight decay):
linear warmup, then a half cosine from a start value to an end value (facebookresearch/dino's
`cosine_scheduler`, as a function of the step instead of a precomputed array).

A pure function of the optimizer step, so resuming at step k needs only k (nothing to checkpoint).
"""

from __future__ import annotations

import math


def cosine(step: int, *, start: float, end: float, total_steps: int, warmup_steps: int = 0,
           warmup_from: float = 0.0) -> float:
    """Value at optimizer step `step` (0-based).

    During warmup (step < warmup_steps): linear from `warmup_from`, reaching `start` at the last warmup
    step (warmup_from + (start - warmup_from) x (step+1)/warmup_steps). Then a half cosine from `start`
    to `end` over the remaining steps, and `end` from total_steps on. start == end gives a constant
    after warmup (DINO's teacher temperature).
    """
    if step < warmup_steps:
        return warmup_from + (start - warmup_from) * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_at(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, final_lr_ratio: float = 0.0) -> float:
    """lr for optimizer step `step`: peak x (step+1)/warmup during warmup, then cosine to final_lr_ratio x peak."""
    return cosine(step, start=peak_lr, end=peak_lr * final_lr_ratio, total_steps=total_steps,
                  warmup_steps=warmup_steps)
