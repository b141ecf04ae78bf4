"""Two-dimensional toy distributions, the quickest way to watch a diffusion model learn a density.

Every variant is seeded, centred near the origin and scaled to roughly unit spread. Scaling uses fixed
constants rather than each sample's own statistics, so every ``n`` and ``seed`` draws from one distribution.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .base import DataError, TensorData

DEFAULT_VARIANT = "swissroll"


def swissroll(n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """scikit-learn's swiss roll (noise 0.5) seen from above (its x and z axes), centred and divided by 7.

    The constants are the projection's mean (2.0, 0.2) and overall std (about 6.9) over a million points.
    """
    from sklearn.datasets import make_swiss_roll

    points, _ = make_swiss_roll(n, noise=0.5, random_state=seed)
    return (points[:, [0, 2]] - np.array([2.0, 0.2])) / 7.0, None


def eight_gaussians(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Eight isotropic Gaussians (std 0.1) evenly spaced on a circle of radius 2.

    Labels are the component ids 0-7 counter-clockwise from (2, 0), handy for class-conditional toys.
    """
    rng = np.random.default_rng(seed)
    component = rng.integers(0, 8, size=n)
    angle = component * (math.pi / 4)
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + 0.1 * rng.standard_normal((n, 2)), component


def moons(n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """scikit-learn's two moons (noise 0.05), standardised per axis with mean (0.5, 0.25), std (0.87, 0.5)."""
    from sklearn.datasets import make_moons

    points, _ = make_moons(n, noise=0.05, random_state=seed)
    return (points - np.array([0.5, 0.25])) / np.array([0.87, 0.5]), None


def checkerboard(n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Uniform on the 8 dark cells of a 4x4 board of unit squares covering [-2, 2]^2.

    A cell is dark when the sum of its integer corner coordinates is even, so (0, 0)-(1, 1) is dark.
    """
    rng = np.random.default_rng(seed)
    dark = np.array([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0], dtype=np.float64)
    corners = dark[rng.integers(0, len(dark), size=n)]
    return corners + rng.random((n, 2)), None


VARIANTS: dict[str, Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]] = {
    "swissroll": swissroll,
    "8gaussians": eight_gaussians,
    "moons": moons,
    "checkerboard": checkerboard,
}


def load_toy2d(variant: str = DEFAULT_VARIANT, n: int = 10000, seed: int = 0) -> TensorData:
    """``n`` points of a 2-D toy distribution as (n, 2) float32; labels only for ``8gaussians``."""
    if variant not in VARIANTS:
        raise DataError(f"unknown toy2d variant {variant!r}; choose one of: {', '.join(VARIANTS)} "
                        f"(e.g. 'toy2d:{DEFAULT_VARIANT}')")
    if n < 1:
        raise DataError(f"toy2d:{variant}: n must be at least 1, got {n}")
    points, component = VARIANTS[variant](n, seed)
    x = torch.from_numpy(points.astype(np.float32))
    if component is None:
        return TensorData(x, None, None, f"toy2d:{variant}")
    names = [str(c) for c in range(8)]
    return TensorData(x, torch.from_numpy(component.astype(np.int64)), 8, f"toy2d:{variant}", names)
