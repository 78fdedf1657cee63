"""How a ViewSpec's numbers become op parameters; shared by both backends so they cannot drift.

Colour jitter is applied in the fixed order brightness, contrast, saturation, hue in both backends:
DALI cannot permute ops per sample, so torchvision's ColorJitter (random order) is not used.
Contrast blends towards the mean grey level of the image (torchvision's definition). Saturation and
hue act in YIQ, as DALI's hsv op does: saturation scales the chroma (I, Q), which is torchvision's
blend towards the BT.601 grey; hue rotates it about the grey axis, which approximates torchvision's
shift of H in HSV space (same direction, exact for grey-preserving shifts, and one 3x3 matrix per image).
"""

from __future__ import annotations

import numpy as np

from trainer.types import ViewSpec

SOLARIZE_THRESHOLD = 128  # uint8 pixels >= this are inverted (BYOL: x >= 0.5 -> 1 - x)
LUMA = (0.299, 0.587, 0.114)  # BT.601 grey, the Y of YIQ
RGB_TO_YIQ = np.array([LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312)])


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


def colour_matrix(saturation: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """[B] saturation factors and hue shifts (fractions of the circle) -> [B, 3, 3] matrices on RGB
    columns: to YIQ, scale the chroma by saturation and rotate it by the hue angle, back to RGB.
    Saturation 0 is grayscale. A positive hue turns red towards yellow, as in torchvision."""
    angle = -2 * np.pi * np.asarray(hue, dtype=np.float64)  # I, Q turn clockwise as H grows
    scale = np.asarray(saturation, dtype=np.float64)
    chroma = np.zeros((len(angle), 3, 3))
    chroma[:, 0, 0] = 1.0
    chroma[:, 1, 1] = chroma[:, 2, 2] = scale * np.cos(angle)
    chroma[:, 1, 2], chroma[:, 2, 1] = -scale * np.sin(angle), scale * np.sin(angle)
    return np.linalg.inv(RGB_TO_YIQ) @ chroma @ RGB_TO_YIQ
