"""Snow: a procedural snow layer whose density grows with t (Bansal et al. 2022, sec. 4,
"Snowification", which uses the ImageNet-C snow corruption of Hendrycks & Dietterich 2019).

Our own construction in the same spirit (thresholded noise streaked along a motion direction, plus
a whitening haze), written so that it is deterministic from a seed and monotone in t:

* a noise field ``n ~ N(0, 1)`` drawn on a grid ``flake_size`` times coarser than the image and
  upsampled bilinearly (flakes about ``flake_size`` pixels wide), one per image;
* at severity s = t / T the flakes are ``clamp(sharpness (n - thr(s)), 0, 1)`` with the threshold
  ``thr(s)`` falling linearly from ``threshold_start`` to ``threshold_end``: more and brighter
  flakes as t grows;
* the flakes are streaked by a normalised 1-D Gaussian of standard deviation ``streak`` pixels
  along a direction drawn per image within ``angle_spread`` degrees of vertical (falling snow), the
  role of ImageNet-C's motion blur; the streak is the same at every t, so the layer only grows;
* the image is hazed toward white, ``x + haze s (1 - x)``, then the flakes are added (2 x flakes in
  [-1, 1] units) and the sum capped at white (pixels already above 1 are not pulled down).

Every ingredient is non-decreasing in t pixel by pixel, so for images in [-1, 1] the distance
``|D(x0, t) - x0|`` grows with t everywhere. The layer is gray (the same on every channel). ``D`` is
differentiable in ``x0`` (a lerp, a min and a max). The state is ``{"field", "angle"}``; with no
generator it comes from the private seed, so the snow is then a fixed pattern (per batch position).
The official code's snow default is T = 50, which we keep.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Degradation, State, bcast


def line_kernels(angles: Tensor, streak: float) -> Tensor:
    """(B, 1, K, K) kernels: a Gaussian of std ``streak`` along the direction ``angles`` (radians
    from vertical), splatted bilinearly onto a K x K grid and normalised to sum 1."""
    b = angles.shape[0]
    if streak <= 0:
        return torch.ones(b, 1, 1, 1, dtype=angles.dtype, device=angles.device)
    r = max(1, math.ceil(3 * streak))
    size = 2 * r + 1
    steps = torch.linspace(-r, r, 8 * r + 1, dtype=angles.dtype, device=angles.device)
    weights = torch.exp(-steps**2 / (2 * streak**2))
    dy = steps[None, :] * torch.cos(angles)[:, None] + r  # (B, S) grid coordinates
    dx = steps[None, :] * torch.sin(angles)[:, None] + r
    kern = torch.zeros(b, size * size, dtype=angles.dtype, device=angles.device)
    y0, x0 = dy.floor(), dx.floor()
    for oy in (0, 1):
        for ox in (0, 1):
            yy, xx = y0 + oy, x0 + ox
            w = (1 - (dy - yy).abs()) * (1 - (dx - xx).abs()) * weights[None, :]
            ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
            idx = (yy.clamp(0, size - 1) * size + xx.clamp(0, size - 1)).long()
            kern.scatter_add_(1, idx, torch.where(ok, w, torch.zeros_like(w)))
    kern = kern / kern.sum(1, keepdim=True)
    return kern.view(b, 1, size, size)


class Snow(Degradation):
    """Procedural snow, denser with t (see the module docstring).

    Args:
        num_steps: T (official snow code default: 50).
        flake_size: coarseness of the noise field, pixels.
        threshold_start, threshold_end: the flake threshold at s = 0 and s = 1 (in noise stds).
        sharpness: how fast a flake goes from clear to white above the threshold.
        streak: std of the motion streak, pixels (0: round flakes).
        angle_spread: streak directions are uniform within this many degrees of vertical.
        haze: how far the image is whitened at t = T (0..1).
        seed: seed of the snow drawn when no generator is given.
    """

    name = "snow"

    def __init__(self, num_steps: int = 50, flake_size: float = 2.0, threshold_start: float = 2.5,
                 threshold_end: float = 0.5, sharpness: float = 2.0, streak: float = 1.5,
                 angle_spread: float = 30.0, haze: float = 0.3, seed: int = 0):
        super().__init__(num_steps, seed)
        if flake_size < 1:
            raise ValueError(f"snow: flake_size must be at least 1 pixel, got {flake_size}")
        if threshold_end > threshold_start:
            raise ValueError("snow: threshold_end must not exceed threshold_start (snow must grow)")
        if not 0 <= haze <= 1 or sharpness <= 0 or streak < 0:
            raise ValueError("snow: need 0 <= haze <= 1, sharpness > 0 and streak >= 0")
        self.flake_size, self.sharpness, self.streak = float(flake_size), float(sharpness), float(streak)
        self.threshold_start, self.threshold_end = float(threshold_start), float(threshold_end)
        self.angle_spread, self.haze = float(angle_spread), float(haze)

    @property
    def random(self) -> bool:
        return True

    def draw_state(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, Tensor]:
        b, _, h, w = shape
        dev = generator.device
        gh, gw = max(1, math.ceil(h / self.flake_size)), max(1, math.ceil(w / self.flake_size))
        coarse = torch.randn(b, 1, gh, gw, generator=generator, device=dev)
        field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        if h * w > 1:  # bilinear upsampling averages neighbours: bring the spread back to 1
            field = field / field.flatten(1).std(1).clamp_min(1e-6)[:, None, None, None]
        spread = math.radians(self.angle_spread)
        angle = (2 * torch.rand(b, generator=generator, device=dev) - 1) * spread
        return {"field": field, "angle": angle}

    def flakes(self, t: Tensor, state: State, shape: tuple[int, ...]) -> Tensor:
        """The streaked snow layer in [0, 1], (B, 1, H, W)."""
        field = state["field"]
        if tuple(field.shape[-2:]) != tuple(shape[-2:]) or field.shape[0] != shape[0]:
            raise ValueError(f"snow: the state was drawn for shape {tuple(field.shape)}, "
                             f"not for images of shape {tuple(shape)}")
        s = bcast(t.to(field.dtype) / self.num_steps, field)
        thr = self.threshold_start + (self.threshold_end - self.threshold_start) * s
        layer = (self.sharpness * (field - thr)).clamp(0, 1)
        kern = line_kernels(state["angle"].to(field.dtype), self.streak)
        r = kern.shape[-1] // 2
        b = layer.shape[0]
        out = F.conv2d(layer.reshape(1, b, *layer.shape[-2:]), kern, padding=r, groups=b)
        return out.reshape(b, 1, *layer.shape[-2:])

    def apply(self, x0: Tensor, t: Tensor, state: State) -> Tensor:
        s = bcast(t.to(x0.dtype) / self.num_steps, x0)
        hazy = x0 + self.haze * s * (1 - x0)
        snowy = hazy + 2 * self.flakes(t, state, x0.shape).to(x0.dtype)
        return torch.minimum(snowy, torch.clamp(hazy, min=1.0))
