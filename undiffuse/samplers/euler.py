"""Euler, Euler-ancestral and Heun on the probability-flow ODE in sigma (Karras et al. 2022).

Each works on ``D(x~, sigma)`` (``sigma.to_sigma``), where the ODE of any Gaussian process reads
dx~/dsigma = eps_hat(x~; sigma) = (x~ - D(x~; sigma)) / sigma (Karras et al. 2022, eq. 3 and 4 with
s(t) = 1, sigma(t) = t), as in k-diffusion's ``sample_euler``, ``sample_euler_ancestral`` and
``sample_heun``. The step into sigma = 0 returns D itself, x0_hat.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, DenoiserLike, noise_like
from .sigma import to_sigma


@torch.no_grad()
def euler(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
          generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """Euler's method on dx~/dsigma = eps_hat (Karras et al. 2022, eq. 4; Algorithm 1 without the
    correction). Identical to DDIM with eta = 0 (Song et al. 2021, eq. 14), written as an ODE step."""
    D, sigmas, x = to_sigma(denoiser, x, ts, cond, callback)
    for i in range(len(sigmas) - 1):
        pred = D(x, sigmas[i], i)
        if sigmas[i + 1] == 0:
            return pred.x0
        x = x + float(sigmas[i + 1] - sigmas[i]) * pred.eps
    return D.to_x(x, sigmas[-1])


@torch.no_grad()
def euler_ancestral(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    eta: float = 1.0) -> Tensor:
    """Euler step down to sigma_down, then fresh noise up to sigma_{i+1} (k-diffusion's
    ``sample_euler_ancestral``).

    With sigma_up = min(sigma_{i+1}, eta sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2))
    and sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2), eta = 1 adds exactly the noise of DDPM's
    posterior q(x_s | x_t, x0) (Ho et al. 2020, eq. 7) in the scaled variables; eta = 0 is ``euler``.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"euler_ancestral needs eta in [0, 1], got {eta}")
    D, sigmas, x = to_sigma(denoiser, x, ts, cond, callback)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        pred = D(x, sigma, i)
        if sigma_next == 0:
            return pred.x0
        sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
        sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
        x = x + float(sigma_down - sigma) * pred.eps
        x = x + float(sigma_up) * noise_like(x, generator)
    return D.to_x(x, sigmas[-1])


@torch.no_grad()
def heun(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
         generator: torch.Generator | None = None, callback: Callback | None = None,
         s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
         s_noise: float = 1.0) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1); with ``s_churn > 0`` the
    stochastic sampler (Algorithm 2).

    Algorithm 2 first raises the noise level from sigma_i to sigma_hat = (1 + gamma) sigma_i by adding
    N(0, (sigma_hat^2 - sigma_i^2) S_noise^2) noise (lines 4-6), gamma = min(S_churn / N, sqrt(2) - 1)
    for sigma_i in [S_tmin, S_tmax] (else 0), then takes the Heun step from sigma_hat to sigma_{i+1}
    (lines 7-10). The step into sigma = 0 is Euler's (Algorithm 1, line 8), which returns x0_hat.
    Network evaluations: 2 N - 1 for N steps. sigma_hat is capped at the process's largest noise
    level, where the network was trained (``SigmaDenoiser.reach``).
    """
    D, sigmas, x = to_sigma(denoiser, x, ts, cond, callback)
    n = len(sigmas) - 1
    gamma_max = min(s_churn / n, math.sqrt(2) - 1)
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = gamma_max if s_churn > 0 and s_tmin <= float(sigma) <= s_tmax else 0.0
        if gamma > 0:
            sigma_hat = D.reach(sigma * (1 + gamma))
            x = x + float((sigma_hat**2 - sigma**2).sqrt() * s_noise) * noise_like(x, generator)
            sigma = sigma_hat
        pred = D(x, sigma, i)
        if sigma_next == 0:
            return pred.x0
        dt = float(sigma_next - sigma)
        eps_next = D(x + dt * pred.eps, sigma_next).eps
        x = x + dt * (pred.eps + eps_next) / 2
    return D.to_x(x, sigmas[-1])
