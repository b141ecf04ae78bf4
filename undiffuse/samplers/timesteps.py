"""Step schedules: which levels t a sampler visits.

Every schedule returns ``steps + 1`` strictly decreasing levels ending at ``t = 0`` (the data), so
``steps`` is the number of network evaluations of a first-order sampler. For a discrete DDPM with
N steps, level ``t = n / N`` is the paper's step n (1-based; diffusers' 0-based timestep n - 1):

* "trailing" (Lin et al. 2023, Table 2): n = N, N - N/steps, ..., N/steps, rounded; starts at the
  last step, the only spacing that always does.
* "linspace": n = round(linspace(N - 1, 0, steps)) + 1, diffusers' "linspace" exactly (its
  0-based round(linspace(0, N - 1)), reversed; rounding half to even, as numpy does).
* "leading": n = (steps - 1 - i) * (N // steps) + 1 (diffusers' "leading" with steps_offset=0):
  never visits step N (e.g. 981 of 1000 for 50 steps). Stable Diffusion's steps_offset=1 is one
  step higher everywhere; pass those levels as a list if you need them.
* "karras": the EDM rho-ladder in s = sigma / alpha (Karras et al. 2022, eq. 5) from
  min(s(1), ``sigma_max``) down to the smallest trained level.
* "logsnr": evenly spaced in log-SNR lambda over the same range (Lu et al. 2022 recommend it for
  DPM-Solver).
  Both start at s = 80 (EDM's sigma_max) when the process reaches further: a cosine DDPM's last
  step has s = 2e4, and a ladder from there spends most steps where nothing changes (measured on
  the MNIST demo: FID-style 83 instead of 18 for DDIM at 10 steps). The sampler then starts at
  that level t < 1 from ``process.prior(shape, t=ts[0])``; pass ``sigma_max=None`` for the full range.
* a user list of levels in (0, 1] (0 is appended when missing).
For continuous processes "trailing" is uniform on [0, 1] and "linspace" uniform from 1 down to t_min.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..processes.gaussian import DDPM, GaussianProcess, karras_sigmas

SPACINGS = ("trailing", "linspace", "leading", "karras", "logsnr")


def timesteps(process: GaussianProcess, steps: int, spacing: str | Sequence[float] = "trailing",
              *, rho: float = 7.0, sigma_max: float | None = 80.0) -> Tensor:
    """Levels t_0 > t_1 > ... > t_steps = 0 (float64) for ``steps`` network evaluations."""
    if not isinstance(spacing, str):
        return _user_levels(spacing)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    discrete = isinstance(process, DDPM)
    if discrete and steps > process.num_steps:
        raise ValueError(f"{steps} steps asked of a DDPM with only {process.num_steps}; "
                         f"use steps <= {process.num_steps}")
    t_min = process.t_min
    if spacing == "trailing":
        t = 1 - torch.arange(steps, dtype=torch.float64) / steps
    elif spacing == "linspace" and discrete:
        n = np.linspace(0, process.num_steps - 1, steps).round()[::-1] + 1
        t = torch.tensor(n / process.num_steps, dtype=torch.float64)
    elif spacing == "linspace":
        t = torch.linspace(1, t_min, steps, dtype=torch.float64)
    elif spacing == "leading":
        if not discrete:
            raise ValueError("'leading' spacing is defined for discrete DDPM processes only")
        ratio = process.num_steps // steps
        t = ((steps - 1 - torch.arange(steps, dtype=torch.float64)) * ratio + 1) / process.num_steps
    elif spacing in ("karras", "logsnr"):
        full = sigma_max is None or sigma_max >= process.sigma_max()
        s_max = process.sigma_max() if full else sigma_max
        t_top = torch.tensor(1.0, dtype=torch.float64) if full else \
            process.t_from_sigma(torch.tensor(s_max, dtype=torch.float64))
        if spacing == "karras":
            t = process.t_from_sigma(karras_sigmas(steps, process.sigma_min(), s_max, rho)[:-1])
        else:
            lam = torch.linspace(float(process.log_snr(t_top)), float(process.log_snr(torch.tensor(t_min))),
                                 steps, dtype=torch.float64)
            t = process.t_from_log_snr(lam)
        t[0] = t_top  # exactly, not through the bisection
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS} or pass a list of levels")
    if discrete and spacing == "trailing":
        # Snap to the trained steps n / N, as diffusers does.
        t = torch.round(t * process.num_steps) / process.num_steps
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"{steps} steps with spacing {spacing!r} repeat a level on this process; "
                         "use fewer steps or another spacing")
    return t


def _user_levels(levels: Sequence[float]) -> Tensor:
    t = torch.as_tensor(list(levels), dtype=torch.float64)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError("a user step schedule must be a non-empty list of levels")
    if float(t[-1]) != 0.0:
        t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    if not bool((t[1:] < t[:-1]).all()) or float(t[0]) > 1 or float(t[-1]) < 0:
        raise ValueError(f"a user step schedule must decrease strictly within [0, 1], got {t.tolist()}")
    return t
