"""DDIM (Song, Meng & Ermon 2021) with stochasticity eta in [0, 1]."""
from __future__ import annotations

import torch
from torch import Tensor

from ..processes.gaussian import bcast
from .base import Callback, DenoiserLike, check_ts, noise_like, report


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
    ts = check_ts(ts)
    process = denoiser.process
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        pred = denoiser(x, t, cond)
        report(callback, i, t, x, pred)
        if float(s) == 0:
            x = pred.x0
            break
        a_s, sig_s = process.alpha_sigma(s)
        _, var_ts = process.transition(t, s)
        _, sig_t = process.alpha_sigma(t)
        c = eta * (var_ts * sig_s**2 / sig_t**2).sqrt()
        x = (bcast(a_s, x) * pred.x0 + bcast((sig_s**2 - c**2).clamp_min(0).sqrt(), x) * pred.eps)
        if eta > 0:
            x = x + bcast(c, x) * noise_like(x, generator)
    return x
