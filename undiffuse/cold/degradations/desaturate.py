"""Desaturate (colorization): blend toward grayscale so that t / T of the colour is gone
(Bansal et al. 2022, sec. 4, "Colorization"; the official decolor code's "Linear" routine).

    D(x0, t) = (1 - t/T) x0 + (t/T) g(x0),

``g`` the gray image repeated over the channels: the plain channel mean (``weights="mean"``, what
the official code's decolouring kernel averages) or ITU-R 601 luma (``"luma"``, 3 channels only,
the weights ``undiffuse.data`` converts RGB with). ``D(x0, T)`` is exactly gray: every channel equal.
The official code's default is T = 50. For one-channel images ``D`` is the identity.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Degradation, State, bcast

LUMA = (0.299, 0.587, 0.114)


class Desaturate(Degradation):
    """Linear blend toward gray (see the module docstring).

    Args:
        num_steps: T (official decolor code default: 50).
        weights: "mean" (default) or "luma".
    """

    name = "desaturate"

    def __init__(self, num_steps: int = 50, weights: str = "mean"):
        super().__init__(num_steps)
        if weights not in ("mean", "luma"):
            raise ValueError(f"desaturate: weights must be 'mean' or 'luma', got {weights!r}")
        self.weights = weights

    def settings(self) -> dict:
        return {"num_steps": self.num_steps, "weights": self.weights}

    def gray(self, x0: Tensor) -> Tensor:
        if self.weights == "luma":
            if x0.shape[1] != 3:
                raise ValueError(f"desaturate: luma weights need 3 channels, got {x0.shape[1]}")
            w = torch.tensor(LUMA, dtype=x0.dtype, device=x0.device).view(1, 3, 1, 1)
            g = (x0 * w).sum(1, keepdim=True)
        else:
            g = x0.mean(1, keepdim=True)
        return g.expand_as(x0)

    def apply(self, x0: Tensor, t: Tensor, state: State) -> Tensor:
        frac = bcast(t.to(x0.dtype) / self.num_steps, x0)
        # lerp computes end - (end - start)(1 - w) for w >= 1/2: exactly gray at t = T.
        return torch.lerp(x0, self.gray(x0), frac.expand_as(x0))
