"""The torch backend's augmentations: geometry per sample in PIL, photometric ops on the whole batch.

torchvision's transforms take one parameter per call, so per-sample random parameters mean a dozen
op dispatches per view, and on 96 px views that overhead, not the pixels, is where the time goes
(on 2 cores at 96 px, benchmarks/loader_throughput.py: torchvision v2 per sample 780 img/s, below
the plain PIL pipeline it should beat; this file 2,384). Every random number of a batch is drawn up front from one generator
seeded per (seed, rank, epoch, step); each image is decoded once and cropped and resized per view
by PIL (as torchvision's RandomResizedCrop does on PIL images); then brightness, contrast,
saturation, hue, grayscale, blur and solarize run as a handful of tensor ops over the batch, with
per-sample parameters (identity where a sample's coin did not come up).

Conventions shared with the DALI backend (fixed jitter order, hue as a rotation in YIQ) are in params.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import get_worker_info

from trainer.data.params import LUMA, SOLARIZE_THRESHOLD, blur_kernel_size, colour_matrix, jitter_ranges
from trainer.types import ViewSpec

CROP_TRIES = 10  # torchvision's RandomResizedCrop draws up to 10 boxes before its fallback
_LUMA = torch.tensor(LUMA)
CHUNK = 8  # images per block of the photometric ops: 8 x 3 x 96 x 96 float32 = 0.9 MB, about an L2 cache


def crop_boxes(rng: np.random.Generator, sizes: np.ndarray, scale: tuple[float, float],
               ratio: tuple[float, float]) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params for a batch: sizes [B, 2] (width, height) ->
    boxes [B, 4] (left, top, right, bottom) in source pixels. Each sample takes its first of
    CROP_TRIES draws that fits, else the central crop at the nearest allowed aspect ratio."""
    n = len(sizes)
    width, height = sizes[:, :1].astype(np.float64), sizes[:, 1:].astype(np.float64)
    area = width * height * rng.uniform(scale[0], scale[1], (n, CROP_TRIES))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (n, CROP_TRIES)))
    w = np.round(np.sqrt(area * aspect))
    h = np.round(np.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(1)
    rows = np.arange(n)
    w, h = w[rows, first], h[rows, first]
    position = rng.random((n, 2))
    left = np.floor(position[:, 0] * (width[:, 0] - w + 1))
    top = np.floor(position[:, 1] * (height[:, 0] - h + 1))
    # fallback where no draw fitted: the whole image, cut to the nearest allowed aspect ratio, centred
    none = ~fits.any(1)
    if none.any():
        fw, fh = width[none, 0], height[none, 0]
        aspect_in = fw / fh
        fw = np.where(aspect_in > ratio[1], np.round(fh * ratio[1]), fw)
        fh = np.where(aspect_in < ratio[0], np.round(fw / ratio[0]), fh)
        w[none], h[none] = fw, fh
        left[none] = (width[none, 0] - fw) // 2
        top[none] = (height[none, 0] - fh) // 2
    return np.stack([left, top, left + w, top + h], 1).astype(np.int64)


@dataclass
class ViewParams:
    """Every random parameter of one view of a batch of B images, drawn before any pixel is touched."""

    boxes: np.ndarray  # int64 [B, 4] crop box (left, top, right, bottom)
    flip: np.ndarray  # bool [B]
    brightness: torch.Tensor  # float32 [B], 1 = identity
    contrast: torch.Tensor  # float32 [B], 1 = identity
    colour: torch.Tensor  # float32 [B, 3, 3]: saturation, hue and grayscale as one matrix on RGB
    blur_sigma: torch.Tensor  # float32 [B], 0 = no blur
    solarize: torch.Tensor  # bool [B]


def draw_params(rng: np.random.Generator, spec: ViewSpec, sizes: np.ndarray) -> ViewParams:
    """Draws in a fixed order, so a batch's views depend only on the generator's seed."""
    n = len(sizes)
    boxes = crop_boxes(rng, sizes, spec.scale, spec.ratio)
    flip = rng.random(n) < spec.flip_prob
    r = jitter_ranges(spec)
    jitter = rng.random(n) < spec.jitter_prob
    b, c, s, h = (np.where(jitter, rng.uniform(*r[k], n), identity)
                  for k, identity in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.0)))
    grey = rng.random(n) < spec.gray_prob
    blur = rng.random(n) < spec.blur_prob
    sigma = np.where(blur, rng.uniform(*spec.blur_sigma, n), 0.0)
    solarize = rng.random(n) < spec.solarize_prob
    return ViewParams(boxes=boxes, flip=flip, brightness=_float32(b), contrast=_float32(c),
                      colour=_float32(colour_matrix(np.where(grey, 0.0, s), h)),
                      blur_sigma=_float32(sigma), solarize=torch.from_numpy(solarize))


def _float32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def crop_views(images: list[Image.Image], params: ViewParams, size: int) -> torch.Tensor:
    """Per sample: crop, antialiased bilinear resize to size x size, flip where drawn (exactly
    torchvision's RandomResizedCrop + RandomHorizontalFlip on a PIL image) -> uint8 [B, 3, size, size]
    (channels-last in memory, which the batch ops do not mind)."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        view = np.asarray(image.crop(tuple(params.boxes[i].tolist())).resize((size, size), Image.BILINEAR))
        out[i] = view[:, ::-1] if params.flip[i] else view
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """[B] sigmas -> [B, size] normalized 1-D Gaussian kernels (torchvision's gaussian_blur's)."""
    x = torch.linspace(-(size // 2), size // 2, size, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (x[None] / sigma[:, None]) ** 2)
    return kernels / kernels.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Separable blur of float [B, C, H, W] with one sigma per image, reflect padding (as torchvision)."""
    b, c, h, w = x.shape
    kernels = gaussian_kernels(sigma, size).repeat_interleave(c, 0)  # [B*C, size]
    pad = size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernels.view(b * c, 1, 1, size), groups=b * c)
    y = F.conv2d(y, kernels.view(b * c, 1, size, 1), groups=b * c)
    return y.view(b, c, h, w)


def photometric(views: torch.Tensor, params: ViewParams, spec: ViewSpec,
                normalize: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> colour jitter (brightness and contrast towards the mean grey as one
    affine map, as DALI's brightness_contrast; then saturation and hue as one matrix, as DALI's hsv),
    grayscale, blur, solarize, rotation; in float32, clamped to [0, 255] after each step.

    Returns uint8 (rounded), or float32 (x / 255 - mean) / std when `normalize` = (mean, std) is given.
    Runs CHUNK images at a time: each step then reads and writes a cache-sized block instead of the
    whole batch, which halves the time on CPU.
    """
    out = torch.empty(views.shape, dtype=torch.uint8 if normalize is None else torch.float32)
    if get_worker_info() is not None:
        out.share_memory_()  # a DataLoader worker then hands it over without a copy
    if normalize is not None:
        mean, std = normalize
        scale, shift = 1 / (255 * std), -mean / std  # (x / 255 - mean) / std as one multiply-add
    for start in range(0, len(views), CHUNK):
        part = slice(start, start + CHUNK)
        x = _photometric_chunk(views[part].contiguous().float(), params, part, spec)
        if normalize is None:
            out[part] = x.round_()
        else:
            torch.addcmul(shift, x, scale, out=out[part])
    return out


def _photometric_chunk(x: torch.Tensor, params: ViewParams, part: slice, spec: ViewSpec) -> torch.Tensor:
    n, c, h, w = x.shape
    if spec.jitter_prob > 0:
        b = params.brightness[part].view(-1, 1, 1, 1)
        k = params.contrast[part].view(-1, 1, 1, 1)
        grey = (x.mean((2, 3)) @ _LUMA).view(-1, 1, 1, 1)
        x = (x * (b * k)).add_(b * (1 - k) * grey).clamp_(0, 255)  # b (grey + k (x - grey))
    if spec.jitter_prob > 0 or spec.gray_prob > 0:
        x = torch.bmm(params.colour[part], x.reshape(n, c, h * w)).view(n, c, h, w).clamp_(0, 255)
    sigma = params.blur_sigma[part]
    blurred = sigma.nonzero()[:, 0]
    if len(blurred):
        x[blurred] = gaussian_blur(x[blurred], sigma[blurred], blur_kernel_size(spec.size))
    solarize = params.solarize[part]
    if solarize.any():
        x = torch.where(solarize.view(-1, 1, 1, 1) & (x >= SOLARIZE_THRESHOLD), 255 - x, x)
    if spec.rotation % 360:
        # rot90 turns counter-clockwise for k > 0, like torchvision's rotate and DALI's
        x = torch.rot90(x, k=spec.rotation // 90, dims=(-2, -1))
    return x
