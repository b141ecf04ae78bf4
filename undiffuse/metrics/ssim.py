"""Structural similarity (SSIM; Wang, Bovik, Sheikh & Simoncelli 2004, "Image Quality Assessment:
From Error Visibility to Structural Similarity", IEEE TIP 13(4)).

    SSIM(x, y) = (2 mu_x mu_y + C1) (2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (sigma_x^2 + sigma_y^2 + C2))

(eq. 13), with the local means, variances and covariance weighted by an 11 x 11 circular-symmetric
Gaussian window of standard deviation 1.5 (section III.C), C1 = (K1 L)^2, C2 = (K2 L)^2, K1 = 0.01,
K2 = 0.03, L the data range (1: images are mapped to [0, 1] first), and the map averaged over every position where the window fits
inside the image (the "valid" part, as scikit-image's ``structural_similarity(gaussian_weights=True)``
crops its borders) and over channels (MSSIM, eq. 17). Images smaller than the window use a window
of their own size. Cold Diffusion's tables (Bansal et al. 2022) report this SSIM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ssim", "rmse"]


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _local_mean(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian-weighted mean over each valid window position, per channel."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _to_unit(x: Tensor, value_range: tuple[float, float]) -> Tensor:
    lo, hi = value_range
    return (x.double() - lo) / (hi - lo)


def ssim(x: Tensor, y: Tensor, *, value_range: tuple[float, float] = (-1.0, 1.0), window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean SSIM of each pair of images, a (B,) tensor; ``x``, ``y`` are (B, C, H, W).

    ``value_range`` is the images' (black, white): (-1, 1) for undiffuse's images (the default),
    (0, 1) or (0, 255) for others. SSIM is not invariant to an offset (the luminance term compares
    means), so images are first mapped to [0, 1] (L = 1), the scale of the paper's and of the usual
    tables. Computed in float64.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    x, y = _to_unit(x, value_range), _to_unit(y, value_range)
    size = min(window, x.shape[-1], x.shape[-2])
    g = _gaussian_window(size, sigma, x.dtype, x.device)
    mu_x, mu_y = _local_mean(x, g), _local_mean(y, g)
    var_x = _local_mean(x * x, g) - mu_x ** 2
    var_y = _local_mean(y * y, g) - mu_y ** 2
    cov = _local_mean(x * y, g) - mu_x * mu_y
    c1, c2 = k1 ** 2, k2 ** 2
    s = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3))


def rmse(x: Tensor, y: Tensor, *, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Root-mean-square error of each pair, a (B,) tensor, of the images mapped to [0, 1] (the scale
    of the paper's tables)."""
    if x.shape != y.shape:
        raise ValueError(f"rmse needs tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    d = _to_unit(x, value_range) - _to_unit(y, value_range)
    return d.pow(2).flatten(1).mean(1).sqrt()
