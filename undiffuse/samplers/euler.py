"""Euler, Heun and Euler-ancestral steps on the probability-flow ODE (Karras et al. 2022).

All three work in the scaled variables x~ = x / alpha, s = sigma / alpha (``base.scaled``), where the
probability-flow ODE of any Gaussian process reads dx~/ds = eps_hat(x~, s) (Karras et al. 2022,
eq. 4 with s(t) = t, and sec. 4 for the change of variables).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Prediction
from ..processes.gaussian import bcast
from .base import Callback, DenoiserLike, check_ts, level_at, noise_like, report, run_steps, scaled


@torch.no_grad()
def euler(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
          generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """Euler's method on dx~/ds = eps_hat (Karras et al. 2022, eq. 4; Algorithm 1 without the
    correction). Identical to DDIM with eta = 0 (Song et al. 2021, eq. 14), written as an ODE step."""
    process = denoiser.process

    def step(x: Tensor, t: Tensor, s: Tensor, pred: Prediction) -> Tensor:
        (a_t, s_t), (a_s, s_s) = scaled(process, t), scaled(process, s)
        return bcast(a_s, x) * (x / bcast(a_t, x) + bcast(s_s - s_t, x) * pred.eps)

    return run_steps(denoiser, x, ts, cond, callback, step)


@torch.no_grad()
def euler_ancestral(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    eta: float = 1.0) -> Tensor:
    """Euler step down to s_down, then fresh noise up to s (k-diffusion's ``sample_euler_ancestral``).

    With s_up = min(s, eta sqrt(s^2 (s_t^2 - s^2) / s_t^2)) and s_down = sqrt(s^2 - s_up^2), eta = 1
    adds exactly the noise of DDPM's posterior q(x_s | x_t, x0) (Ho et al. 2020, eq. 7) in the
    scaled variables; eta = 0 is ``euler``.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"euler_ancestral needs eta in [0, 1], got {eta}")
    process = denoiser.process

    def step(x: Tensor, t: Tensor, s: Tensor, pred: Prediction) -> Tensor:
        (a_t, s_t), (a_s, s_s) = scaled(process, t), scaled(process, s)
        s_up = torch.minimum(s_s, eta * (s_s**2 * (s_t**2 - s_s**2) / s_t**2).sqrt())
        s_down = (s_s**2 - s_up**2).sqrt()
        x_scaled = x / bcast(a_t, x) + bcast(s_down - s_t, x) * pred.eps
        return bcast(a_s, x) * (x_scaled + bcast(s_up, x) * noise_like(x, generator))

    return run_steps(denoiser, x, ts, cond, callback, step)


@torch.no_grad()
def heun(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
         generator: torch.Generator | None = None, callback: Callback | None = None,
         s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
         s_noise: float = 1.0) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1); with ``s_churn > 0`` the
    stochastic sampler (Algorithm 2).

    Algorithm 2 first raises the noise level of x~ from s_i to s_hat = (1 + gamma) s_i by adding
    N(0, (s_hat^2 - s_i^2) S_noise^2) noise, gamma = min(S_churn / N, sqrt(2) - 1) for s_i in
    [S_tmin, S_tmax] (else 0), then takes the Heun step from s_hat to s_{i+1}. The step into s = 0
    is Euler's (Algorithm 1, line 8), which returns x0_hat. Network evaluations: 2 N - 1 for N steps.
    s_hat is capped at the process's largest noise level, where the network was trained.
    """
    ts = check_ts(ts)
    process, n = denoiser.process, len(ts) - 1
    gamma_max = min(s_churn / n, math.sqrt(2) - 1)
    for i in range(n):
        t, t_next = ts[i], ts[i + 1]
        (a_t, s_t), (a_next, s_next) = scaled(process, t), scaled(process, t_next)
        x_scaled = x / a_t
        gamma = gamma_max if s_churn > 0 and s_tmin <= float(s_t) <= s_tmax else 0.0
        if gamma > 0:
            t = level_at(process, s_t * (1 + gamma))
            a_hat, s_hat = scaled(process, t)
            x_scaled = x_scaled + float((s_hat**2 - s_t**2).sqrt() * s_noise) * noise_like(x, generator)
            a_t, s_t = a_hat, s_hat
        x_in = x_scaled * a_t
        pred = denoiser(x_in, t, cond)
        report(callback, i, t, x_in, pred)
        if float(t_next) == 0:
            return pred.x0
        x_euler = x_scaled + float(s_next - s_t) * pred.eps
        eps_next = denoiser(x_euler * a_next, t_next, cond).eps
        x = a_next * (x_scaled + float(s_next - s_t) * (pred.eps + eps_next) / 2)
    return x
