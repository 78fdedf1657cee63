"""The DALI graph compiled from a list of ViewSpecs (its own file: conditionals need real source).

encoded bytes (external_source, our sample order) -> decode once -> per view: random-resized crop ->
flip -> colour jitter -> grayscale -> blur -> solarize -> rotation -> normalize. `op_device` is "gpu"
(decoder "mixed") when there is a GPU and "cpu" otherwise: the same graph either way, so CPU-only
CI runs the real DALI path. Per-sample probabilities of blur and solarize are `if fn.random.coin_flip(...)`
conditionals, which run an op only on the samples that drew it; colour jitter and grayscale instead fold
the coin into per-sample op parameters (identity when not drawn), which is cheaper on small images. `fn.jitter` (pixel jitter, GPU-only) is not
used: no ViewSpec field asks for it. Conventions shared with the torch backend live in params.py.
"""

from __future__ import annotations

from nvidia.dali import fn, math, pipeline_def, types

from trainer.data.params import SOLARIZE_THRESHOLD, blur_kernel_size, jitter_ranges
from trainer.types import ViewSpec


def _on(node, device: str):
    """CPU-drawn random numbers used as tensor (not argument) inputs must live on the op device."""
    return node.gpu() if device == "gpu" else node


def _coin(p: float):
    return fn.random.coin_flip(probability=p, dtype=types.BOOL)


def _where(coin, value, identity: float):
    """Per sample: `value` where the coin came up, else the op's identity parameter. Folding the
    probability into the parameters runs the op on every sample but spares the batch split and
    merge of a conditional, which costs more than the op on small CPU images."""
    coin = fn.cast(coin, dtype=types.FLOAT)
    return coin * value + (1.0 - coin) * identity


def _colour(images, spec: ViewSpec, device: str):
    """Colour jitter (p = jitter_prob) then grayscale (p = gray_prob), as two ops with per-sample
    parameters. Grayscale is saturation 0 in the same hsv op: hsv works in YIQ, whose Y is the
    BT.601 luma that grayscale conversion (and torchvision's rgb_to_grayscale) produces."""
    r = jitter_ranges(spec)
    jitter = _coin(spec.jitter_prob)
    b = _where(jitter, fn.random.uniform(range=r["brightness"]), 1.0)
    c = _where(jitter, fn.random.uniform(range=r["contrast"]), 1.0)
    saturation = _where(jitter, fn.random.uniform(range=r["saturation"]), 1.0)
    if spec.gray_prob > 0:
        saturation = saturation * (1.0 - fn.cast(_coin(spec.gray_prob), dtype=types.FLOAT))
    hue = _where(jitter, fn.random.uniform(range=[360.0 * h for h in r["hue"]]), 0.0)  # degrees in DALI
    if device == "cpu":
        # torchvision: x -> b x, then a blend towards the mean grey m of b x: c b x + (1 - c) b m, which
        # is brightness_contrast's b (center + c (x - center)) with center = mean grey of x: one op
        grey = fn.reductions.mean(fn.color_space_conversion(images, image_type=types.RGB, output_type=types.GRAY))
        images = fn.brightness_contrast(images, brightness=b, contrast=c, contrast_center=grey)
    else:
        # contrast_center is an argument input, which must live on the CPU: on the GPU the blend
        # towards the mean grey is written out arithmetically
        images = fn.brightness_contrast(images, brightness=b)
        grey = fn.reductions.mean(fn.color_space_conversion(images, image_type=types.RGB, output_type=types.GRAY))
        c = _on(c, device)
        images = math.clamp(fn.cast(images, dtype=types.FLOAT) * c + grey * (1.0 - c), 0.0, 255.0)
        images = fn.cast(images, dtype=types.UINT8)
    return fn.hsv(images, saturation=saturation, hue=hue)


def _solarize(images):
    x = fn.cast(images, dtype=types.FLOAT)
    inverted = fn.cast(x >= SOLARIZE_THRESHOLD, dtype=types.FLOAT)
    return fn.cast(x + inverted * (255.0 - 2.0 * x), dtype=types.UINT8)  # x >= t -> 255 - x


def view_graph(images, spec: ViewSpec, device: str, mean: list[float], std: list[float], layout: str):
    """One view of decoded uint8 HWC images -> float `layout` ("CHW" or "HWC"), normalized."""
    images = fn.random_resized_crop(images, size=[spec.size, spec.size], random_area=list(spec.scale),
                                    random_aspect_ratio=list(spec.ratio), antialias=True)
    if spec.flip_prob > 0:
        images = fn.flip(images, horizontal=fn.random.coin_flip(probability=spec.flip_prob))
    # `p > 0` is decided while building the graph; the coin flip per sample, while running it
    if spec.jitter_prob > 0 or spec.gray_prob > 0:
        images = _colour(images, spec, device)
    if spec.blur_prob > 0 and _coin(spec.blur_prob):
        images = fn.gaussian_blur(images, window_size=blur_kernel_size(spec.size),
                                  sigma=fn.random.uniform(range=list(spec.blur_sigma)))
    if spec.solarize_prob > 0 and _coin(spec.solarize_prob):
        images = _solarize(images)
    if spec.rotation % 360:
        images = fn.rotate(images, angle=float(spec.rotation), keep_size=True, interp_type=types.INTERP_NN)
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout=layout,
                                    mean=[255 * m for m in mean], std=[255 * s for s in std])


@pipeline_def(enable_conditionals=True)
def augment_pipeline(source, views: list[ViewSpec], device: str, mean: list[float], std: list[float], layout: str):
    """`source(iteration)` returns one batch of encoded images (list of uint8 arrays)."""
    encoded = fn.external_source(source=source, batch=True, dtype=types.UINT8, ndim=1)
    images = fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
    return tuple(view_graph(images, v, device, mean, std, layout) for v in views)
