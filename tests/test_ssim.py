"""SSIM against a direct transcription of Wang et al. 2004 (eq. 13, 11x11 Gaussian window, sigma 1.5),
evaluated window by window with numpy loops, and its defining properties."""
import numpy as np
import pytest
import torch

from undiffuse.metrics import rmse, ssim


def brute_force_ssim(x: np.ndarray, y: np.ndarray, L: float, size: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of two single-channel images: weighted statistics at every window that fits."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    r = np.arange(size) - (size - 1) / 2
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    w /= w.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_matches_the_windowed_definition():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 18, 20, generator=gen, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=gen, dtype=x.dtype)).clamp(-1, 1)
    ours = ssim(x, y)
    for k in range(2):
        assert ours[k].item() == pytest.approx(brute_force_ssim((x[k, 0].numpy() + 1) / 2, (y[k, 0].numpy() + 1) / 2, 1.0), abs=1e-10)


def test_channels_are_averaged_on_the_unit_scale():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 16, 16, generator=gen, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen, dtype=x.dtype)).clamp(0, 1)
    per_channel = [brute_force_ssim(x[0, c].numpy(), y[0, c].numpy(), 1.0) for c in range(3)]
    assert ssim(x, y, value_range=(0, 1)).item() == pytest.approx(np.mean(per_channel), abs=1e-10)
    # The same images in [-1, 1] (the default range) or in bytes give the same SSIM: both are mapped
    # to [0, 1] first. Without that mapping the luminance term would change (it is offset-dependent).
    assert ssim(2 * x - 1, 2 * y - 1).item() == pytest.approx(np.mean(per_channel), abs=1e-10)
    assert ssim(255 * x, 255 * y, value_range=(0, 255)).item() == pytest.approx(np.mean(per_channel), abs=1e-10)
    assert brute_force_ssim(2 * x[0, 0].numpy() - 1, 2 * y[0, 0].numpy() - 1, 2.0) != pytest.approx(per_channel[0])


def test_identity_symmetry_and_monotone_in_noise():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(4, 1, 32, 32, generator=gen) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=torch.float64))
    noise = torch.randn(x.shape, generator=gen)
    y = x + 0.1 * noise
    assert torch.allclose(ssim(x, y), ssim(y, x))
    scores = [ssim(x, x + s * noise).mean().item() for s in (0.05, 0.2, 0.5, 1.0)]
    assert all(a > b for a, b in zip(scores, scores[1:]))


def test_rmse_in_units_of_the_range():
    x = torch.full((2, 1, 4, 4), -1.0)
    y = x.clone()
    y[1] = 1.0  # black vs white: the whole range, RMSE 1
    assert rmse(x, y).tolist() == [0.0, 1.0]
    assert rmse(x + 1, y + 1, value_range=(0, 2)).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="one shape"):
        rmse(x, y[:, :, :2])
    with pytest.raises(ValueError, match="one shape"):
        ssim(x, y[:1])
