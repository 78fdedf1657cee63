"""The torch backend's batched augmentations against independent references: torchvision's own
RandomResizedCrop sampling and PIL crop path, torchvision's colour functions, DALI's hsv op, and a
float64 per-image re-derivation of the whole photometric chain written out below."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms.v2 import functional as F

import trainer.data.batch_augment as ba
from trainer.data.params import LUMA, colour_matrix
from trainer.types import ViewSpec

SPEC = ViewSpec(size=24, blur_prob=0.5, solarize_prob=0.3)


def random_views(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish uint8 [n, 3, size, size] images (a blur must have something to do)."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0, 255, (n, 3, 6, 6)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth + torch.from_numpy(rng.uniform(-20, 20, (n, 3, size, size)).astype(np.float32))).clamp(0, 255).round().to(torch.uint8)


def test_crop_boxes_follow_torchvision_random_resized_crop():
    width, height, n = 96, 72, 4000
    ours = ba.crop_boxes(np.random.default_rng(0), np.tile([width, height], (n, 1)), (0.08, 1.0), (3 / 4, 4 / 3))
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    theirs = np.array([transforms.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    w, h = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    assert (ours[:, :2] >= 0).all() and (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()
    assert (w > 0).all() and (h > 0).all()
    stats = {}
    for name, (ww, hh, left, top) in {"ours": (w, h, ours[:, 0], ours[:, 1]),
                                      "torchvision": (theirs[:, 3], theirs[:, 2], theirs[:, 1], theirs[:, 0])}.items():
        area = ww * hh / (width * height)
        stats[name] = np.array([area.mean(), *np.quantile(area, [0.25, 0.5, 0.75]), np.log(ww / hh).mean(),
                                np.log(ww / hh).std(), ((left + ww / 2) / width).mean(), ((top + hh / 2) / height).mean()])
    # n = 4000: standard errors ~0.005 (area), ~0.003 (log ratio), ~0.003 (centres); tolerances ~5 SE
    np.testing.assert_allclose(stats["ours"], stats["torchvision"], atol=0.025)


def test_crop_fallback_equals_torchvision():
    """No draw can fit a 200 x 10 strip at scale >= 0.9: torchvision's deterministic fallback."""
    ours = ba.crop_boxes(np.random.default_rng(0), np.array([[200, 10], [10, 200]]), (0.9, 1.0), (3 / 4, 4 / 3))
    for (width, height), box in zip([(200, 10), (10, 200)], ours):
        top, left, h, w = transforms.RandomResizedCrop.get_params(torch.zeros(3, height, width), [0.9, 1.0], [3 / 4, 4 / 3])
        assert box.tolist() == [left, top, left + w, top + h]


def test_crop_views_equal_torchvision_resized_crop_on_pil():
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(6)]
    sizes = np.array([image.size for image in images])
    params = ba.draw_params(rng, ViewSpec(size=16), sizes)
    views = ba.crop_views(images, params, 16)
    assert views.shape == (6, 3, 16, 16) and views.dtype == torch.uint8
    assert params.flip.any() and not params.flip.all()
    for i, image in enumerate(images):
        left, top, right, bottom = params.boxes[i].tolist()
        expected = F.resized_crop(image, top, left, bottom - top, right - left, [16, 16],
                                  interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        if params.flip[i]:
            expected = F.horizontal_flip(expected)
        assert torch.equal(views[i], F.pil_to_tensor(expected)), i


def reference_photometric(views: torch.Tensor, params: ba.ViewParams, spec: ViewSpec) -> np.ndarray:
    """The ViewSpec's photometric chain, one image at a time in float64 numpy."""
    out = []
    k = ba.blur_kernel_size(spec.size)
    for i, image in enumerate(views.numpy().astype(np.float64)):
        x = image
        b, c = float(params.brightness[i]), float(params.contrast[i])
        grey = np.tensordot(np.array(LUMA), x, axes=1).mean()
        x = np.clip(b * (grey + c * (x - grey)), 0, 255)
        x = np.clip(np.einsum("ij,jhw->ihw", params.colour[i].double().numpy(), x), 0, 255)
        sigma = float(params.blur_sigma[i])
        if sigma > 0:
            taps = np.arange(k) - k // 2
            kernel = np.exp(-0.5 * (taps / sigma) ** 2)
            kernel /= kernel.sum()
            padded = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2)), mode="reflect")
            rows = sum(kernel[t] * padded[:, :, t : t + x.shape[2]] for t in range(k))
            x = sum(kernel[t] * rows[:, t : t + x.shape[1], :] for t in range(k))
        if params.solarize[i]:
            x = np.where(x >= 128, 255 - x, x)
        out.append(np.rot90(x, k=spec.rotation // 90, axes=(1, 2)))
    return np.round(np.stack(out))


@pytest.mark.parametrize("spec", [SPEC, ViewSpec(size=24, rotation=90, jitter_prob=1.0, gray_prob=0.5)])
def test_photometric_matches_float64_reference(spec):
    views = random_views(19, spec.size)  # not a multiple of CHUNK: a short last chunk
    params = ba.draw_params(np.random.default_rng(2), spec, np.full((19, 2), spec.size))
    ours = ba.photometric(views, params, spec).numpy().astype(np.float64)
    expected = reference_photometric(views, params, spec)
    assert np.abs(ours - expected).max() <= 1  # float32 vs float64 on a rounding edge
    assert (ours != views.numpy()).mean() > 0.5  # the chain did change most pixels


def test_chunking_does_not_change_a_pixel(monkeypatch):
    views = random_views(21, 24)
    params = ba.draw_params(np.random.default_rng(3), SPEC, np.full((21, 2), 24))
    chunked = ba.photometric(views, params, SPEC)
    monkeypatch.setattr(ba, "CHUNK", 64)
    assert torch.equal(chunked, ba.photometric(views, params, SPEC))


def test_normalized_output_is_the_uint8_output_normalized():
    views = random_views(10, 24)
    params = ba.draw_params(np.random.default_rng(4), SPEC, np.full((10, 2), 24))
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    normalized = ba.photometric(views, params, SPEC, (mean, std))
    rounded = ba.photometric(views, params, SPEC).float()
    assert normalized.dtype == torch.float32
    assert ((normalized * std + mean) * 255 - rounded).abs().max() <= 0.5 + 1e-3


def test_brightness_contrast_saturation_match_torchvision_without_clipping():
    """Mid-range image, factors near 1: no pixel clips, so ours equals torchvision's float ops."""
    x = torch.from_numpy(np.random.default_rng(5).uniform(90, 160, (3, 16, 16)).astype(np.float32))
    b, c, s = 1.1, 0.9, 0.7
    params = ba.ViewParams(boxes=np.zeros((1, 4), np.int64), flip=np.zeros(1, bool),
                           brightness=torch.tensor([b]), contrast=torch.tensor([c]),
                           colour=torch.from_numpy(colour_matrix(np.array([s]), np.array([0.0])).astype(np.float32)),
                           blur_sigma=torch.zeros(1), solarize=torch.zeros(1, dtype=torch.bool))
    ours = ba._photometric_chunk(x[None].clone(), params, slice(0, 1), ViewSpec(size=16))[0]
    ref = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(x / 255, b), c), s) * 255
    assert (ours - ref).abs().max() < 0.1


def test_grayscale_is_bt601_grey():
    x = random_views(1, 16).float()[0]
    grey = torch.einsum("ij,jhw->ihw", torch.from_numpy(colour_matrix(np.zeros(1), np.zeros(1))[0]).float(), x)
    expected = F.rgb_to_grayscale(x / 255, num_output_channels=3) * 255
    assert (grey - expected).abs().max() < 0.1


def test_hue_turns_the_way_torchvision_does():
    red = torch.tensor([200.0, 40.0, 40.0])
    for hue in (0.05, -0.05):
        ours = torch.from_numpy(colour_matrix(np.ones(1), np.array([hue]))[0]).float() @ red
        theirs = F.adjust_hue((red / 255).view(3, 1, 1), hue).view(3) * 255
        # +hue: red towards yellow (green up), -hue: towards magenta (blue up), in both
        grew = 1 if hue > 0 else 2
        assert ours[grew] > red[grew] + 10 and theirs[grew] > red[grew] + 10


def test_colour_matrix_is_what_dali_hsv_computes():
    """The DALI backend uses fn.hsv with hue in degrees: the same matrix, so the backends agree."""
    from nvidia.dali import fn, pipeline_def, types

    image = np.ascontiguousarray(random_views(1, 16)[0].permute(1, 2, 0).numpy())
    cases = [(0.6, 0.08), (1.3, -0.1), (0.0, 0.0), (1.0, 0.25)]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe(saturation, hue):
        x = fn.external_source(source=lambda: [image], batch=True, layout="HWC", dtype=types.UINT8)
        return fn.hsv(x, saturation=saturation, hue=360 * hue)

    for saturation, hue in cases:
        p = pipe(saturation=saturation, hue=hue)
        p.build()
        dali = np.array(p.run()[0].as_tensor())[0].astype(np.float64)
        ours = np.clip(np.einsum("ij,hwj->hwi", colour_matrix(np.array([saturation]), np.array([hue]))[0],
                                 image.astype(np.float64)), 0, 255)
        assert np.abs(dali - ours).max() <= 2, (saturation, hue)  # DALI rounds its matrix to float32
