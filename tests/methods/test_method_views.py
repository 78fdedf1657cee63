"""Each method's views (augmentation as data) and config defaults follow the papers."""

import pytest

from trainer.config import AugConfig, DataConfig
from trainer.methods import METHODS
from trainer.methods.byol import BYOLConfig
from trainer.methods.simclr import SimCLRConfig
from trainer.methods.vicreg import VICRegConfig
from trainer.registry import load_config


def views_of(name, image_size=96, **aug):
    cls = METHODS[name]
    return cls.views(cls.Config(), DataConfig(image_size=image_size), AugConfig(**aug))


@pytest.mark.parametrize(
    "image_size,blur,want",
    [(32, "auto", 0.0), (96, "auto", 0.5), (96, "never", 0.0), (32, "always", 0.5), (33, "auto", 0.5)],
)
def test_simclr_two_symmetric_views(image_size, blur, want):
    a, b = views_of(
        "simclr", image_size, blur=blur, min_scale=0.2, jitter_strength=0.5, jitter_prob=0.7, gray_prob=0.1
    )
    assert a == b
    assert (a.size, a.scale, a.flip_prob, a.blur_prob, a.solarize_prob) == (
        image_size,
        (0.2, 1.0),
        0.5,
        want,
        0.0,
    )
    assert a.jitter == pytest.approx((0.2, 0.2, 0.2, 0.05)) and (a.jitter_prob, a.gray_prob) == (0.7, 0.1)


@pytest.mark.parametrize("name", ["byol", "vicreg"])
@pytest.mark.parametrize("image_size,blurs", [(96, (1.0, 0.1)), (32, (0.0, 0.0))])
def test_byol_vicreg_asymmetric_views(name, image_size, blurs):
    a, b = views_of(name, image_size)
    assert (a.blur_prob, b.blur_prob) == blurs
    assert (a.solarize_prob, b.solarize_prob) == (0.0, 0.2)
    assert a.jitter == pytest.approx((0.4, 0.4, 0.2, 0.1)) and a.scale == (0.08, 1.0) and a.size == image_size


@pytest.mark.parametrize("name", ["simclr", "byol", "vicreg"])
@pytest.mark.parametrize("local_size,want", [(0, 41), (20, 20)])
def test_multicrop_local_views(name, local_size, want):
    views = views_of(name, 96, local_crops=3, local_size=local_size, local_scale=[0.1, 0.3])
    assert len(views) == 5 and views[0].size == 96
    assert all((v.size, v.scale) == (want, (0.1, 0.3)) for v in views[2:])


def test_local_scale_must_be_a_pair():
    with pytest.raises(ValueError, match="aug.local_scale"):
        views_of("simclr", 96, local_crops=2, local_scale=[0.1])


def test_rotnet_four_rotations_of_one_deterministic_resize():
    views = views_of("rotnet", 32, local_crops=2)
    assert [v.rotation for v in views] == [0, 90, 180, 270]
    for v in views:
        assert (v.size, v.scale, v.ratio, v.flip_prob) == (32, (1.0, 1.0), (1.0, 1.0), 0.0)
        assert (v.jitter_prob, v.gray_prob, v.blur_prob, v.solarize_prob) == (0.0, 0.0, 0.0, 0.0)


def test_paper_defaults_and_yaml_overrides():
    assert (SimCLRConfig().proj_output_dim, SimCLRConfig().temperature) == (128, 0.1)
    assert (BYOLConfig().proj_hidden_dim, BYOLConfig().proj_output_dim, BYOLConfig().tau_base) == (
        4096,
        256,
        0.996,
    )
    vicreg = VICRegConfig()
    assert (vicreg.proj_hidden_dim, vicreg.proj_output_dim) == (8192, 8192)
    assert (vicreg.sim_coeff, vicreg.std_coeff, vicreg.cov_coeff) == (25.0, 25.0, 1.0)
    cfg = load_config(overrides=["method.name=byol", "method.tau_base=0.99", "method.proj_output_dim=64"])
    assert isinstance(cfg.method, BYOLConfig) and (cfg.method.tau_base, cfg.method.proj_output_dim) == (
        0.99,
        64,
    )
    assert all(cls.Config().name == name for name, cls in METHODS.items())
