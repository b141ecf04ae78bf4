"""DDIM (Song, Meng & Ermon 2021) with stochasticity eta in [0, 1]."""
from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Prediction
from ..processes.gaussian import bcast
from .base import Callback, DenoiserLike, noise_like, run_steps


@torch.no_grad()
def ddim(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
         generator: torch.Generator | None = None, callback: Callback | None = None,
         eta: float = 0.0) -> Tensor:
    """DDIM update (Song et al. 2021, eq. 12), written for any alpha/sigma:

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,
    c = eta sqrt(sigma_{t|s}^2 sigma_s^2 / sigma_t^2)   (eq. 16: eta = 1 is DDPM's beta_tilde).

    eta = 0 is deterministic, and equals Euler's method on the probability-flow ODE in the
    variables (x / alpha, sigma / alpha) (Song et al. 2021, eq. 14; Karras et al. 2022, sec. 4).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM needs eta in [0, 1], got {eta}")
    process = denoiser.process

    def step(x: Tensor, t: Tensor, s: Tensor, pred: Prediction) -> Tensor:
        a_s, sig_s = process.alpha_sigma(s)
        c = eta * process.posterior_variance(t, s).sqrt()
        x = bcast(a_s, x) * pred.x0 + bcast((sig_s**2 - c**2).clamp_min(0).sqrt(), x) * pred.eps
        return x + bcast(c, x) * noise_like(x, generator) if eta > 0 else x

    return run_steps(denoiser, x, ts, cond, callback, step)
