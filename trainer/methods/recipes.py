"""The papers' augmentation recipes as ViewSpecs, shared by the methods that use them."""

from __future__ import annotations

from dataclasses import replace

from trainer.config import AugConfig, DataConfig
from trainer.types import SIMCLR_JITTER, ViewSpec

BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)  # BYOL (and VICReg) table 6: weaker saturation than SimCLR


def _blur_on(aug: AugConfig, size: int) -> bool:
    """aug.blur 'auto' drops blur for views of 32 px or less, where it erases the image (SimCLR, CIFAR)."""
    return aug.blur == "always" or (aug.blur == "auto" and size > 32)


def _colour(aug: AugConfig, size: int, scale: tuple[float, float], jitter: tuple[float, ...]) -> ViewSpec:
    return ViewSpec(
        size=size,
        scale=scale,
        flip_prob=aug.flip_prob,
        jitter=tuple(aug.jitter_strength * j for j in jitter),
        jitter_prob=aug.jitter_prob,
        gray_prob=aug.gray_prob,
        blur_prob=0.5 if _blur_on(aug, size) else 0.0,
    )


def symmetric_views(data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
    """SimCLR: two views from the same distribution (crop, flip, jitter, gray, blur p=0.5)."""
    view = _colour(aug, data.image_size, (aug.min_scale, 1.0), SIMCLR_JITTER)
    return [view, view]


def asymmetric_views(data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
    """BYOL / VICReg: blur p=1.0 and no solarize on the first view, blur p=0.1 and solarize p=0.2 on the second."""
    base = _colour(aug, data.image_size, (aug.min_scale, 1.0), BYOL_JITTER)
    blur = _blur_on(aug, data.image_size)
    return [
        replace(base, blur_prob=1.0 if blur else 0.0),
        replace(base, blur_prob=0.1 if blur else 0.0, solarize_prob=0.2),
    ]


def local_views(data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
    """Multi-crop: aug.local_crops small views (SwAV), aug.local_size px (0: image_size x 96/224)."""
    if len(aug.local_scale) != 2:
        raise ValueError(f"aug.local_scale must be [min, max], got {aug.local_scale}")
    size = aug.local_size or round(data.image_size * 96 / 224)
    return [_colour(aug, size, tuple(aug.local_scale), SIMCLR_JITTER)] * aug.local_crops


def rotation_views(data: DataConfig) -> list[ViewSpec]:
    """RotNet: the same deterministic resize, rotated by 0, 90, 180 and 270 degrees (view r by 90 r)."""
    still = ViewSpec(
        size=data.image_size,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_prob=0.0,
        jitter_prob=0.0,
        gray_prob=0.0,
    )
    return [replace(still, rotation=90 * r) for r in range(4)]
