"""Mask (inpainting): a growing Gaussian-shaped hole (Bansal et al. 2022, sec. 4 "Inpainting";
sec. 5 for the generative variant).

Step i multiplies the image by ``1 - z_i(p)``, ``z_i(p) = exp(-|p - c|^2 / (2 beta_i^2))`` a Gaussian
bump of width ``beta_i`` centred at ``c``; after t steps the visible fraction of pixel p is
``M_t(p) = prod_{i<=t} (1 - z_i(p))`` and

    D(x0, t) = M_t x0 + (1 - M_t) fill,

so masked pixels go to ``fill``: 0 (mid-grey for images in [-1, 1], what multiplying by the mask
gives, as in the paper) or ``"random"``, one flat colour per image drawn uniformly in [-1, 1] (the
generative variant, where the fully masked image must carry some randomness). ``M_t`` only shrinks
with t, so the masked fraction ``mean(1 - M_t)`` grows with t.

Defaults follow the official code's MNIST inpainting run (T = 50, ``kernel_std = 0.1``,
``initial_mask = 11``, routine ``Random_Incremental``): beta_i = 0.1 (i - 1 + 11) pixels, i.e.
``beta_start = 1.1`` growing by ``beta_growth = 0.1`` per step, at a random centre per image. Widths
are in pixels whatever the image size; scale them for larger images. ``center="middle"`` puts the
hole at the image centre instead.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Degradation, State, bcast

CENTERS = ("random", "middle")


class Mask(Degradation):
    """A Gaussian-shaped hole that widens with t (see the module docstring).

    Args:
        num_steps: T (paper MNIST/CIFAR-10: 50).
        beta_start: width of the first step's bump, pixels (official MNIST: 1.1).
        beta_growth: added to the width at every step (official: 0.1).
        center: "random" (a centre drawn uniformly over the image per image; official MNIST) or
            "middle".
        fill: value of masked pixels, a float (default 0) or "random" (flat colour per image).
        seed: seed of the state drawn when no generator is given.
    """

    name = "mask"

    def __init__(self, num_steps: int = 50, beta_start: float = 1.1, beta_growth: float = 0.1,
                 center: str = "random", fill: float | str = 0.0, seed: int = 0):
        super().__init__(num_steps, seed)
        if center not in CENTERS:
            raise ValueError(f"mask: center must be one of {CENTERS}, got {center!r}")
        if isinstance(fill, str) and fill != "random":
            try:
                fill = float(fill)
            except ValueError:
                raise ValueError(f"mask: fill must be a number or 'random', got {fill!r}") from None
        if beta_start <= 0 or beta_growth < 0:
            raise ValueError("mask: need beta_start > 0 and beta_growth >= 0")
        self.beta_start, self.beta_growth = float(beta_start), float(beta_growth)
        self.center = center
        self.fill = fill if fill == "random" else float(fill)

    @property
    def random(self) -> bool:
        return self.center == "random" or self.fill == "random"

    def betas(self) -> list[float]:
        return [self.beta_start + self.beta_growth * i for i in range(self.num_steps)]

    def draw_state(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, Tensor]:
        b, c, h, w = shape
        dev = generator.device
        u = torch.rand(b, 2, generator=generator, device=dev, dtype=torch.float64)
        state = {"center": u * torch.tensor([h - 1, w - 1], dtype=torch.float64, device=dev)}
        if self.fill == "random":
            state["fill"] = 2 * torch.rand(b, c, generator=generator, device=dev, dtype=torch.float64) - 1
        return state

    def visible(self, shape: tuple[int, ...], t: Tensor, state: State, device=None) -> Tensor:
        """M_t: the visible fraction of each pixel, (B, 1, H, W) float64."""
        b, _, h, w = shape
        if self.center == "random":
            c = state["center"].to(device=device, dtype=torch.float64)
        else:
            c = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64, device=device).expand(b, 2)
        yy = torch.arange(h, dtype=torch.float64, device=device)
        xx = torch.arange(w, dtype=torch.float64, device=device)
        d2 = (yy[None, :, None] - c[:, 0, None, None]) ** 2 + (xx[None, None, :] - c[:, 1, None, None]) ** 2
        m = torch.ones_like(d2)
        t = t.to(device)
        for i, beta in enumerate(self.betas()[: int(t.max())], start=1):
            factor = 1 - torch.exp(-d2 / (2 * beta**2))
            m = torch.where(bcast(t, m) >= i, m * factor, m)
        return m.unsqueeze(1)

    def apply(self, x0: Tensor, t: Tensor, state: State) -> Tensor:
        m = self.visible(x0.shape, t, state, x0.device).to(x0.dtype)
        fill = state["fill"].to(x0)[:, :, None, None] if self.fill == "random" else self.fill
        return m * x0 + (1 - m) * fill

    def masked_fraction(self, shape: tuple[int, ...], t: int | Tensor, state: State = None) -> Tensor:
        """mean(1 - M_t) per image, (B,) float64: non-decreasing in t. ``state`` as for ``D``."""
        t = torch.as_tensor(t).long().expand(shape[0])
        if self.random and state is None:
            state = self.sample_state(shape)
        return (1 - self.visible(shape, t, state)).flatten(1).mean(1)
