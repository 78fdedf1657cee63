"""The DALI graph compiled from a list of ViewSpecs (its own file: conditionals need real source).

encoded bytes (external_source, our sample order) -> decode once -> per view: random-resized crop ->
flip -> colour jitter -> grayscale -> blur -> solarize -> rotation -> normalize. `op_device` is "gpu"
(decoder "mixed") when there is a GPU and "cpu" otherwise: the same graph either way, so CPU-only
CI runs the real DALI path. Per-sample probabilities are `if fn.random.coin_flip(...)` conditionals,
which run an op only on the samples that drew it. `fn.jitter` (pixel jitter, GPU-only) is not
used: no ViewSpec field asks for it. Conventions shared with the torch backend live in params.py.
"""

from __future__ import annotations

from nvidia.dali import fn, math, pipeline_def, types

from trainer.data.params import SOLARIZE_THRESHOLD, blur_kernel_size, jitter_ranges
from trainer.data.views import ViewSpec


def _on(node, device: str):
    """CPU-drawn random numbers used as tensor (not argument) inputs must live on the op device."""
    return node.gpu() if device == "gpu" else node


def _coin(p: float):
    return fn.random.coin_flip(probability=p, dtype=types.BOOL)


def _colour_jitter(images, spec: ViewSpec, device: str):
    r = jitter_ranges(spec)
    b = fn.random.uniform(range=r["brightness"])
    c = fn.random.uniform(range=r["contrast"])
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
    hue = [360.0 * h for h in r["hue"]]  # DALI's hue is in degrees, torchvision's a fraction of the circle
    return fn.hsv(images, saturation=fn.random.uniform(range=r["saturation"]), hue=fn.random.uniform(range=hue))


def _grayscale(images):
    grey = fn.color_space_conversion(images, image_type=types.RGB, output_type=types.GRAY)
    return fn.cat(grey, grey, grey, axis=2)


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
    if spec.jitter_prob > 0 and _coin(spec.jitter_prob):
        images = _colour_jitter(images, spec, device)
    if spec.gray_prob > 0 and _coin(spec.gray_prob):
        images = _grayscale(images)
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
