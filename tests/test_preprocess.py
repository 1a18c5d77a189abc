import pytest
import torch

from ebsdnet.preprocess import PreprocessConfig, gaussian_blur, preprocess, rebin


def test_output_is_standardised_per_pattern():
    x = torch.rand(5, 60, 60, generator=torch.Generator().manual_seed(0)) * 200 + 20
    out = preprocess(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out.mean((1, 2)), torch.zeros(5), atol=1e-5)
    assert torch.allclose(out.std((1, 2)), torch.ones(5), atol=1e-4)


def test_constant_pattern_gives_zeros_not_nan():
    out = preprocess(torch.full((2, 30, 30), 7.0))
    assert torch.equal(out, torch.zeros(2, 30, 30))


def test_blur_keeps_flat_patterns_flat_and_smooths_noise():
    flat = torch.full((1, 40, 40), 3.0)
    assert torch.allclose(gaussian_blur(flat, 4.0), flat)
    noise = torch.randn(3, 40, 40, generator=torch.Generator().manual_seed(1))
    assert gaussian_blur(noise, torch.tensor([0.0, 1.0, 3.0])).std((1, 2)).diff().lt(0).all()


def test_static_background_is_removed():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 60), torch.linspace(-1, 1, 60), indexing="ij")
    background = 100 * torch.exp(-(xx**2 + yy**2))
    bands = torch.sin(8 * xx)[None]
    with_bg = preprocess(bands + background[None], PreprocessConfig(dynamic_sigma=0),
                         static_background=background)  # fmt: skip
    alone = preprocess(bands, PreprocessConfig(dynamic_sigma=0))
    assert torch.allclose(with_bg, alone, atol=0.05)


def test_rebin_averages_and_refuses_odd_factors():
    x = torch.arange(16.0).reshape(1, 4, 4)
    assert torch.equal(rebin(x, (2, 2)), torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))
    assert preprocess(torch.rand(2, 120, 120), shape=(60, 60)).shape == (2, 60, 60)
    with pytest.raises(ValueError, match="80×80 but the target is 60×60"):
        rebin(torch.rand(1, 80, 80), (60, 60))


def test_hot_pixels_are_clipped():
    x = torch.randn(1, 60, 60, generator=torch.Generator().manual_seed(2))
    hot = x.clone()
    hot[0, 10, 10] = 1000.0
    assert preprocess(hot).max() < 6
    assert (
        torch.corrcoef(torch.stack((preprocess(hot).ravel(), preprocess(x).ravel())))[0, 1] > 0.99
    )
