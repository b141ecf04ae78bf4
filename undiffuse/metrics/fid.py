"""Distances between feature distributions: Fréchet distance (FID) and kernel inception distance (KID).

Both take features of real and generated samples (rows are samples) from whatever network stands
in for Inception (see :mod:`undiffuse.metrics.features`). Everything is computed in float64 NumPy:
the covariance square root in FID loses several digits in float32.
"""
from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

__all__ = ["frechet_distance", "feature_stats", "fid_from_features", "kid"]


def _as_f64(a: ArrayLike | torch.Tensor) -> NDArray[np.float64]:
    """A float64 NumPy copy of a tensor or array (tensors are detached and moved to the CPU)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _sqrt_psd(s: NDArray[np.float64]) -> NDArray[np.float64]:
    """Symmetric square root of a symmetric PSD matrix via its eigendecomposition.

    Eigenvalues a rounding error below zero are clamped to 0, since a sample covariance is PSD.
    """
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (Dowson & Landau 1982; Heusel et al.
    2017, eq. 6). ``S1 S2`` is not symmetric, so rather than ``scipy.linalg.sqrtm`` on it (which can
    return complex noise and fails on singular covariances) we use the similar matrix
    ``M = S1^{1/2} S2 S1^{1/2}``: it is symmetric PSD and ``Tr (S1 S2)^{1/2} = Tr M^{1/2}``, the sum
    of the square roots of its (clamped) eigenvalues.
    """
    mu1, mu2 = _as_f64(mu1).ravel(), _as_f64(mu2).ravel()
    s1, s2 = np.atleast_2d(_as_f64(sigma1)), np.atleast_2d(_as_f64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    # Symmetrise: sample covariances are symmetric only up to rounding.
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt
    # The exact value is >= 0; rounding can push a zero distance slightly negative.
    return float(max(d2, 0.0))


def feature_stats(feats: ArrayLike | torch.Tensor) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and unbiased covariance (ddof = 1) of features ``(N, D)``, in float64."""
    f = _as_f64(feats)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def fid_from_features(f1: ArrayLike | torch.Tensor, f2: ArrayLike | torch.Tensor) -> float:
    """FID between two feature sets: the Fréchet distance of their Gaussian fits (Heusel et al. 2017)."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def _poly_kernel(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cubic polynomial kernel ``k(x, y) = (x . y / d + 1)^3`` (Bińkowski et al. 2018, sec. 3)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Unbiased MMD^2 of two equal-size samples (Gretton et al. 2012, eq. 3; Bińkowski et al. 2018).

    The within-sample means drop the diagonal ``k(x_i, x_i)``; the cross term keeps all ``m^2``
    pairs, which is already unbiased because ``x`` and ``y`` are independent.
    """
    m = x.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def kid(
    f1: ArrayLike | torch.Tensor,
    f2: ArrayLike | torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel inception distance (Bińkowski et al. 2018): mean unbiased MMD^2 over random subsets.

    Each of ``num_subsets`` rounds draws ``subset_size`` rows (capped at the smaller set) from each
    set without replacement, using a generator seeded by ``seed``. Returns ``(mean, standard error)``
    where the standard error is the sample std over subsets / sqrt(num_subsets). Unlike FID the
    estimate is unbiased, so it fluctuates around 0 for two samples of one distribution.
    """
    x, y = _as_f64(f1), _as_f64(f2)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need features (N, D) with matching D, got {x.shape} and {y.shape}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    vals = np.array([
        _mmd2_unbiased(x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)])
        for _ in range(num_subsets)
    ])
    stderr = vals.std(ddof=1) / np.sqrt(num_subsets) if num_subsets > 1 else float("nan")
    return float(vals.mean()), float(stderr)
