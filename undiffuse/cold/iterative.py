"""Iterative denoising: denoise, add back a little less noise, denoise again, down to zero noise.

A denoiser that predicts x0 from severe noise, asked once, returns the posterior mean
``E[x0 | x_T]``: an average over every image that could hide behind the noise, hence blurry. The loop
below asks it k times instead, each time re-noising its answer to a lower level with *fresh* noise
(Bansal et al. 2022, "Cold Diffusion", Algorithm 1 applied to Gaussian noise with a new draw per
step; the multistep sampler of Song et al. 2023, "Consistency Models", Algorithm 1, is the same loop).
Each pass commits to a little more detail, and at zero noise the answer is sharp:

    x0_hat_i = R(x_{t_i}, t_i),    x_{t_{i+1}} = D(x0_hat_i, t_{i+1}; fresh state),    i = 0..k-1,

with ``t_0 = t_start > t_1 > ... > t_k = 0`` evenly spaced severities; the result is ``x0_hat_{k-1}``.
k = 1 is the one-shot restoration ``R(x_T, T)``. ``restore`` and ``degradation`` are as for the cold
samplers (``samplers.cold``): any ``restore(x, t) -> x0_hat`` and any random ``Degradation`` (the
``gaussian`` one: ``D(x0, t) = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .degradations import Degradation
from .samplers import report


def iterative_levels(t_start: int, k: int) -> list[int]:
    """``k + 1`` evenly spaced integer severities from ``t_start`` down to 0 (k <= t_start)."""
    if not 1 <= k <= t_start:
        raise ValueError(f"iterations k must be in [1, {t_start}] (one per severity at most), got {k}")
    return [round(t_start * (1 - i / k)) for i in range(k + 1)]


@torch.no_grad()
def iterative_denoise(restore: Callable[[Tensor, Tensor], Tensor], degradation: Degradation, x: Tensor,
                      k: int, *, t_start: int | None = None, generator: torch.Generator | None = None,
                      callback: Callable[[dict], None] | None = None) -> Tensor:
    """The loop of the module docstring from ``x`` at severity ``t_start`` (default T), k network
    calls; the fresh states are drawn from ``generator``. ``callback`` gets what the cold samplers
    report (``{"i", "t", "step", "x", "x0_hat"}``, ``t = step / T``) after each call."""
    if not degradation.random:
        raise ValueError(f"iterative denoising re-draws the degradation's randomness at every step; "
                         f"{degradation.name!r} is deterministic: use the cold samplers (naive, improved)")
    levels = iterative_levels(t_start or degradation.num_steps, k)
    for i, (t, t_next) in enumerate(zip(levels[:-1], levels[1:])):
        x0_hat = restore(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        report(callback, i, t, degradation, x, x0_hat)
        if t_next == 0:
            return x0_hat
        state = degradation.sample_state(tuple(x.shape), generator, x.device, x.dtype)
        x = degradation(x0_hat, t_next, state=state)
    raise AssertionError("unreachable: the last level is 0")
