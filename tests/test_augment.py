"""Each camera augmentation of the training stream, checked against its definition."""

import math

import pytest
import torch

from ebsdnet.preprocess import gaussian_blur
from ebsdnet.projector import resample_to_pattern_centre
from ebsdnet.stream import (
    REALISTIC,
    DegradationConfig,
    PatternStream,
    correlated_noise,
    degrade,
    lens_distortion,
    residual_plane,
)

# Only the augmentation under test: no noise, contrast 1, flat background, no blur.
BARE = DegradationConfig(
    dose=None, contrast=(1.0, 1.0), blur=(0.0, 0.0), background_strength=(0.0, 0.0),
    pc_jitter=0.0, bad_pixel_fraction=0.0,
)  # fmt: skip


def _centred(h: int, w: int):
    """Centred pixel coordinates scaled to a unit half-diagonal (lens_distortion's ``u``)."""
    half = math.hypot(h - 1, w - 1) / 2
    yy = (torch.arange(h) - (h - 1) / 2)[:, None].expand(h, w) / half
    xx = (torch.arange(w) - (w - 1) / 2)[None, :].expand(h, w) / half
    return yy, xx


@pytest.mark.parametrize("k", [-0.06, 0.03])
def test_lens_distortion_reads_the_image_at_u_times_one_plus_k_u_squared(k):
    h, w = 40, 50  # non-square: the radius is over the half-diagonal, in pixels
    yy, xx = _centred(h, w)
    # Linear images: bilinear interpolation reads them exactly, so output = definition.
    image = torch.stack((xx, yy))  # (2, H, W): x and y coordinates themselves
    out = lens_distortion(image, torch.tensor([k, k]))
    factor = 1 + k * (xx**2 + yy**2)
    inside = ((xx * factor).abs() <= xx.abs().max()) & ((yy * factor).abs() <= yy.abs().max())
    assert inside.float().mean() > 0.8
    torch.testing.assert_close(out[0][inside], (xx * factor)[inside], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1][inside], (yy * factor)[inside], atol=1e-5, rtol=0)
    # k = 0 leaves the image alone.
    torch.testing.assert_close(lens_distortion(image, torch.zeros(2)), image, atol=1e-5, rtol=0)


def test_residual_plane_is_a_plane_whose_largest_magnitude_is_its_amplitude():
    g = torch.Generator().manual_seed(0)
    amplitude = torch.tensor([0.0, 0.1, 0.3])
    plane = residual_plane(3, (30, 40), amplitude, g)
    torch.testing.assert_close(plane.abs().amax((-2, -1)), amplitude)
    # A plane: every second difference along rows and columns vanishes.
    assert plane.diff(2, dim=-1).abs().max() < 1e-6
    assert plane.diff(2, dim=-2).abs().max() < 1e-6


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_correlated_noise_has_unit_std_and_the_blur_s_correlation(sigma):
    g = torch.Generator().manual_seed(1)
    field = correlated_noise(64, (64, 64), torch.full((64,), sigma), g)
    torch.testing.assert_close(field.std((-2, -1)), torch.ones(64), atol=1e-4, rtol=0)
    # White noise blurred by a Gaussian of σ correlates exp(-d²/4σ²) at d pixels.
    lag1 = (field[..., :, 1:] * field[..., :, :-1]).mean() / (field**2).mean()
    assert abs(lag1.item() - math.exp(-1 / (4 * sigma**2))) < 0.05


def test_gamma_raises_the_peak_normalised_signal_to_its_power():
    clean = torch.rand(4, 20, 20, generator=torch.Generator().manual_seed(2))
    config = DegradationConfig(**{**BARE.to_dict(), "gamma": (1.5, 1.5)})
    out = degrade(clean, config, torch.Generator().manual_seed(3))
    bands = (clean - clean.amin((-2, -1), keepdim=True)) / (
        clean.amax((-2, -1), keepdim=True) - clean.amin((-2, -1), keepdim=True)
    )
    signal = bands  # contrast 1 on a flat background: the bands themselves
    expected = (signal / signal.amax((-2, -1), keepdim=True)) ** 1.5
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_the_degradation_adds_correlated_noise_of_the_stated_strength():
    clean = torch.rand(32, 48, 48, generator=torch.Generator().manual_seed(4))
    clean = gaussian_blur(clean, 2.0)  # smooth "bands"
    config = DegradationConfig(
        **{**BARE.to_dict(), "correlated_noise": (0.5, 0.5), "noise_sigma": (1.5, 1.5)}
    )
    out = degrade(clean, config, torch.Generator().manual_seed(5))
    plain = degrade(clean, BARE, torch.Generator().manual_seed(5))
    noise = out - plain
    lo = clean.amin((-2, -1), keepdim=True)
    band_std = ((clean - lo) / (clean.amax((-2, -1), keepdim=True) - lo)).std((-2, -1))
    torch.testing.assert_close(noise.std((-2, -1)), 0.5 * band_std, rtol=1e-3, atol=1e-6)


def test_a_pc_error_resamples_from_a_pc_off_the_true_one_by_at_most_that(
    master_pattern, monkeypatch
):
    import ebsdnet.stream as stream_module

    stated = []

    def spy(patterns, pc, target):
        stated.append(pc)
        return resample_to_pattern_centre(patterns, pc, target)

    monkeypatch.setattr(stream_module, "resample_to_pattern_centre", spy)
    config = DegradationConfig(**{**BARE.to_dict(), "pc_jitter": 0.02, "pc_error": 0.005})
    batch = PatternStream(
        master_pattern, batch_size=256, degradation=config, seed=6, at_nominal_pc=True
    ).batch(0)
    error = stated[0] - batch["pc"]  # the batch's pc is the true one, simulated at
    assert error.abs().max() <= 0.005 + 1e-7
    assert error.abs().max() > 0.0045 and error.abs().mean() > 0.002  # uniform on ±0.005
    plain = PatternStream(
        master_pattern, batch_size=256, degradation=config, seed=6, at_nominal_pc=True
    )
    assert torch.equal(plain.batch(0)["patterns"], batch["patterns"])  # reproducible
    torch.testing.assert_close(stated[1], stated[0])
    with pytest.raises(ValueError, match="at_nominal_pc"):
        PatternStream(master_pattern, degradation=config)


def test_other_master_patterns_supply_their_share_of_the_patterns(master_pattern):
    from dataclasses import replace

    other = replace(master_pattern, texture=master_pattern.texture.flip(-1), sha256="flipped")
    stream = PatternStream(
        master_pattern, batch_size=400, degradation=BARE, seed=7, others=(other,),
        other_fraction=0.25,
    )  # fmt: skip
    source = stream._pick_sources(400, torch.Generator().manual_seed(0))
    assert 0.18 < (source == 1).float().mean() < 0.32
    assert set(source.unique().tolist()) <= {0, 1}
    wrong_group = replace(master_pattern, point_group="6/mmm")
    with pytest.raises(ValueError, match="point group"):
        PatternStream(master_pattern, others=(wrong_group,))


def test_the_realistic_camera_keeps_patterns_finite_and_standardised(master_pattern):
    batch = PatternStream(
        master_pattern, batch_size=64, degradation=REALISTIC, seed=8, at_nominal_pc=True
    ).batch(0)
    assert torch.isfinite(batch["patterns"]).all()
    assert "correlated noise" in REALISTIC.describe()
