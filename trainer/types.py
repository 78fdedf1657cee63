"""The contract's types, in one neutral module that methods, data and engines all import.

A `ViewSpec` says what one view of an image is (augmentation declared as data: each method lists its
views, each data backend compiles the list into its own ops); the loader yields `Batch`es; a method
returns a `MethodOutput`. Nothing here imports the rest of `trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SIMCLR_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue


@dataclass(frozen=True)
class ViewSpec:
    """One augmented view: random-resized crop -> flip -> colour jitter -> grayscale -> blur ->
    solarize -> rotation -> normalize (mean/std come from DataConfig).

    Probabilities are per image. `blur_sigma` is the range sigma is drawn from, in px of the output
    view; the kernel spans about 10% of the view (SimCLR). `rotation` is in degrees, a multiple of 90,
    applied last (RotNet). scale=(1, 1), ratio=(1, 1) and flip_prob=0 make a deterministic resize.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = SIMCLR_JITTER
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    rotation: int = 0


@dataclass
class Batch:
    """`views`: V tensors [B, 3, H_v, W_v] on the device, normalized; `labels`: [B] int64 or None."""

    views: list[torch.Tensor]
    labels: torch.Tensor | None = None


@dataclass
class MethodOutput:
    """`loss`: scalar with graph; `metrics`: detached scalars (loss terms, collapse metrics);
    `features`: detached backbone features of view 0, [B, feature_dim], for the online probe."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None
