"""How a ViewSpec's numbers become op parameters; shared by both backends so they cannot drift.

Colour jitter is applied in the fixed order brightness, contrast, saturation, hue in both backends:
DALI cannot permute ops per sample, so torchvision's ColorJitter (random order) is not used.
Contrast blends towards the mean grey level of the image (torchvision's definition).
"""

from __future__ import annotations

from trainer.data.views import ViewSpec

SOLARIZE_THRESHOLD = 128  # uint8 pixels >= this are inverted (BYOL: x >= 0.5 -> 1 - x)


def blur_kernel_size(size: int) -> int:
    """Odd kernel spanning about 10% of the view (SimCLR: 23 px at 224), at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def jitter_ranges(spec: ViewSpec) -> dict[str, tuple[float, float]]:
    """Uniform ranges of the multiplicative factors, and of the hue shift as a fraction of the circle."""
    b, c, s, h = spec.jitter
    return {
        "brightness": (max(0.0, 1 - b), 1 + b),
        "contrast": (max(0.0, 1 - c), 1 + c),
        "saturation": (max(0.0, 1 - s), 1 + s),
        "hue": (-h, h),
    }
