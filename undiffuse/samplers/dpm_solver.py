"""DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and sec. 4-5).

In the scaled variables x~ = x / alpha, s = sigma / alpha, with lambda = -log s (half the log-SNR)
and D(lambda) = x0_hat, the family of reverse-time processes with marginals q_t

    dx~ = -(1 + eta) (x~ - D) dlambda + s sqrt(2 eta) dW      (eta = 0: the probability-flow ODE)

has the exact solution over a step lambda_t -> lambda_t + h, with h_eta = (1 + eta) h,

    x~_s = e^{-h_eta} x~_t + int_0^h (1 + eta) e^{(1 + eta)(u - h)} D(lambda_t + u) du
           + s_s sqrt(1 - e^{-2 eta h}) z.

The solvers replace D by the polynomial through the last k denoiser outputs (k = 1, 2, 3) and
integrate it exactly (Lu et al. 2022, eq. 9 and the "2M" and "3M" multistep rules; Gonzalez et al.
2023 for the stochastic, eta > 0, weights). Each step costs one network evaluation.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Prediction
from ..processes.gaussian import bcast
from .base import Callback, DenoiserLike, noise_like, run_steps, scaled


def _weights(h: float, eta: float) -> tuple[float, float, float]:
    """int_0^h (1 + eta) e^{(1 + eta)(u - h)} u^k du for k = 0, 1, 2 (closed forms)."""
    he = (1 + eta) * h
    em = math.expm1(-he)                  # e^{-he} - 1, accurate for small steps
    c0 = -em
    c1 = (he + em) / (1 + eta)
    c2 = (he * he - 2 * he - 2 * em) / (1 + eta) ** 2
    return c0, c1, c2


def _multistep(denoiser: DenoiserLike, x: Tensor, ts: Tensor, cond, generator, callback, *,
               order: int, eta: float, midpoint: bool) -> Tensor:
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    process = denoiser.process
    history: list[tuple[float, Tensor]] = []  # (lambda, x0_hat), newest first

    def step(x: Tensor, t: Tensor, s: Tensor, pred: Prediction) -> Tensor:
        (a_t, s_t), (a_s, s_s) = scaled(process, t), scaled(process, s)
        lam_t, lam_s = -math.log(float(s_t)), -math.log(float(s_s))
        h = lam_s - lam_t
        history.insert(0, (lam_t, pred.x0))
        del history[order:]
        c0, c1, c2 = _weights(h, eta)
        x_scaled = math.exp(-(1 + eta) * h) * (x / bcast(a_t, x)) + c0 * pred.x0
        if len(history) >= 2:
            (_, d0), (lam_1, d1) = history[0], history[1]
            h1 = lam_t - lam_1
            f01 = (d0 - d1) / h1                      # divided difference D[lambda_t, lambda_1]
            if midpoint:
                # Lu et al. 2022, Algorithm 2: D = (1 + 1/(2r)) D_0 - 1/(2r) D_1, r = h_1 / h.
                x_scaled = x_scaled + (0.5 * c0 * h) * f01
            elif len(history) == 2:
                x_scaled = x_scaled + c1 * f01
            else:
                lam_2, d2 = history[2]
                h2 = lam_1 - lam_2
                f012 = (f01 - (d1 - d2) / h2) / (h1 + h2)
                # D(u) ~ D_0 + (f01 + h1 f012) u + f012 u^2, integrated exactly.
                x_scaled = x_scaled + c1 * (f01 + h1 * f012) + c2 * f012
        if eta > 0:
            x_scaled = x_scaled + float(s_s) * math.sqrt(-math.expm1(-2 * eta * h)) * noise_like(x, generator)
        return bcast(a_s, x) * x_scaled

    return run_steps(denoiser, x, ts, cond, callback, step)


@torch.no_grad()
def dpmpp_2m(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
             generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep on the
    probability-flow ODE, first order on the first step; deterministic."""
    return _multistep(denoiser, x, ts, cond, generator, callback, order=2, eta=0.0, midpoint=True)


@torch.no_grad()
def dpmpp_2m_sde(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 eta: float = 1.0) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, sec. 5 and appendix; k-diffusion
    ``sample_dpmpp_2m_sde`` with the midpoint rule): the 2M update on the reverse SDE family above,
    eta = 1 the reverse diffusion SDE, eta = 0 the ODE solver ``dpmpp_2m``."""
    return _multistep(denoiser, x, ts, cond, generator, callback, order=2, eta=eta, midpoint=True)


@torch.no_grad()
def dpmpp_3m(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
             generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(3M): third-order multistep on the probability-flow ODE (Lu et al. 2022,
    eq. 9 with a quadratic through the last three x0_hat, integrated exactly); orders 1 and 2 on the
    first two steps. Deterministic."""
    return _multistep(denoiser, x, ts, cond, generator, callback, order=3, eta=0.0, midpoint=False)


@torch.no_grad()
def dpmpp_3m_sde(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 eta: float = 1.0) -> Tensor:
    """SDE-DPM-Solver++(3M) (k-diffusion ``sample_dpmpp_3m_sde``): the 3M quadrature on the
    reverse SDE family above with weight (1 + eta) e^{(1 + eta)(u - h)}; eta = 0 is ``dpmpp_3m``."""
    return _multistep(denoiser, x, ts, cond, generator, callback, order=3, eta=eta, midpoint=False)
