"""DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and sec. 4-5).

On ``D(x~, sigma)`` (``sigma.to_sigma``: x~ = x / alpha, sigma = sigma_t / alpha), with
lambda = -log sigma (half the log-SNR) and D(lambda) = x0_hat, the family of reverse-time processes
with marginals q_t

    dx~ = -(1 + eta) (x~ - D) dlambda + sigma sqrt(2 eta) dW      (eta = 0: the probability-flow ODE)

has the exact solution over a step lambda_i -> lambda_i + h, with h_eta = (1 + eta) h,

    x~_{i+1} = e^{-h_eta} x~_i + int_0^h (1 + eta) e^{(1 + eta)(u - h)} D(lambda_i + u) du
               + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z.

The solvers replace D by the polynomial through the last k denoiser outputs (k = 1, 2, 3) and
integrate it exactly (Lu et al. 2022, eq. 9 and the "2M" and "3M" multistep rules; Gonzalez et al.
2023 for the stochastic, eta > 0, weights). Each step costs one network evaluation.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, DenoiserLike, check_ts, noise_like
from .sigma import to_sigma


def _weights(h: float, eta: float) -> tuple[float, float, float]:
    """int_0^h (1 + eta) e^{(1 + eta)(u - h)} u^k du for k = 0, 1, 2 (closed forms)."""
    he = (1 + eta) * h
    em = math.expm1(-he)                  # e^{-he} - 1, accurate for small steps
    c0 = -em
    c1 = (he + em) / (1 + eta)
    c2 = (he * he - 2 * he - 2 * em) / (1 + eta) ** 2
    return c0, c1, c2


def step_orders(process, ts: Tensor, order: int, lower_order_final: bool) -> list[int]:
    """The order of each step from ts[i] to ts[i + 1]: ``order``, less on the first steps (a
    multistep method has only i + 1 x0_hat to fit there), and with ``lower_order_final`` less on the
    last steps of the solve: the last one first order, the one before at most second order (Lu et al.
    2022's ``lower_order_final``; diffusers' too). Where the solve ends:

    * when ``ts`` reaches the process's smallest level ``t_min`` and then 0 (linspace, leading, karras,
      logsnr), at t_min: the step to 0 is Lu et al.'s "denoise to zero", x0_hat. The step into t_min
      is the longest in log-SNR of a linspace or leading ladder (3.6 against 0.77 for the one before
      at 10 steps on a linear DDPM), and the multistep polynomial extrapolated over it diverges;
    * otherwise (trailing, a user ladder), at the last level of ``ts``: into 0 that step is x0_hat,
      first order already, as in diffusers with ``final_sigmas_type="zero"``, and the order cap falls on
      the step before it. A ladder that stops above 0 (a partial solve) is left at full order.

    diffusers lowers only below 15 steps; here it is done at every step count, because with the
    threshold 3M's error on linspace grows from 14 to 20 steps (docs/samplers.md)."""
    ts = check_ts(ts)
    n = len(ts) - 1
    orders = [min(order, i + 1) for i in range(n)]
    if float(ts[-1]) != 0:
        return orders
    orders[-1] = 1  # x0_hat: the first-order step into sigma = 0
    if not lower_order_final or n < 2:
        return orders
    at_t_min = float(ts[-2]) <= process.t_min * (1 + 1e-6)   # logsnr's bisection lands within 5e-8
    last = n - 2 if at_t_min else n - 1                       # index of the solve's last step
    for i in range(max(last - 1, 0), last + 1):
        orders[i] = min(orders[i], last - i + 1)
    return orders


def _multistep(denoiser: DenoiserLike, x: Tensor, ts: Tensor, cond, generator, callback, *,
               order: int, eta: float, midpoint: bool, lower_order_final: bool) -> Tensor:
    """The multistep loop in (x~, sigma), lambda = -log sigma (Lu et al. 2022, Algorithm 2)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    D, sigmas, x = to_sigma(denoiser, x, ts, cond, callback)
    orders = step_orders(denoiser.process, D.ts, order, lower_order_final)
    history: list[tuple[float, Tensor]] = []  # (lambda_j, D_j = x0_hat), newest first
    for i, k in enumerate(orders):
        denoised = D(x, sigmas[i], i).x0
        if sigmas[i + 1] == 0:
            return denoised                           # "denoise to zero"
        lam, lam_next = -math.log(float(sigmas[i])), -math.log(float(sigmas[i + 1]))
        h = lam_next - lam
        history = [(lam, denoised)] + history[:order - 1]
        c = _weights(h, eta)
        x = math.exp(-(1 + eta) * h) * x + c[0] * denoised   # D constant: DPM-Solver++(1) = DDIM
        if k >= 2:
            x = x + _higher_order(history, k, h, c, midpoint)
        if eta > 0:
            x = x + float(sigmas[i + 1]) * math.sqrt(-math.expm1(-2 * eta * h)) * noise_like(x, generator)
    return D.to_x(x, sigmas[-1])


def _higher_order(history: list[tuple[float, Tensor]], k: int, h: float, c: tuple[float, float, float],
                  midpoint: bool) -> Tensor:
    """The integral of D's polynomial part through the last k x0_hat (k = 2 or 3), D_0 newest."""
    (lam_0, d0), (lam_1, d1) = history[0], history[1]
    h1 = lam_0 - lam_1
    f01 = (d0 - d1) / h1                      # divided difference D[lambda_0, lambda_1]
    if midpoint:
        # Lu et al. 2022, Algorithm 2: D = (1 + 1/(2r)) D_0 - 1/(2r) D_1, r = h_1 / h.
        return (0.5 * c[0] * h) * f01
    if k == 2:
        return c[1] * f01
    lam_2, d2 = history[2]
    h2 = lam_1 - lam_2
    f012 = (f01 - (d1 - d2) / h2) / (h1 + h2)
    # D(u) ~ D_0 + (f01 + h1 f012) u + f012 u^2, integrated exactly.
    return c[1] * (f01 + h1 * f012) + c[2] * f012


@torch.no_grad()
def dpmpp_2m(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
             generator: torch.Generator | None = None, callback: Callback | None = None,
             lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep on the
    probability-flow ODE, first order on the first step and (``lower_order_final``) on the solve's
    last step (``step_orders``); deterministic."""
    return _multistep(denoiser, x, ts, cond, generator, callback, order=2, eta=0.0, midpoint=True,
                      lower_order_final=lower_order_final)


@torch.no_grad()
def dpmpp_2m_sde(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 eta: float = 1.0, lower_order_final: bool = True) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, sec. 5 and appendix; k-diffusion
    ``sample_dpmpp_2m_sde`` with the midpoint rule): the 2M update on the reverse SDE family above,
    eta = 1 the reverse diffusion SDE, eta = 0 the ODE solver ``dpmpp_2m``."""
    return _multistep(denoiser, x, ts, cond, generator, callback, order=2, eta=eta, midpoint=True,
                      lower_order_final=lower_order_final)


@torch.no_grad()
def dpmpp_3m(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
             generator: torch.Generator | None = None, callback: Callback | None = None,
             lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(3M): third-order multistep on the probability-flow ODE (Lu et al. 2022,
    eq. 9 with a quadratic through the last three x0_hat, integrated exactly); orders 1 and 2 on the
    first two steps and (``lower_order_final``) 2 and 1 on the solve's last two (``step_orders``).
    Deterministic."""
    return _multistep(denoiser, x, ts, cond, generator, callback, order=3, eta=0.0, midpoint=False,
                      lower_order_final=lower_order_final)


@torch.no_grad()
def dpmpp_3m_sde(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 eta: float = 1.0, lower_order_final: bool = True) -> Tensor:
    """SDE-DPM-Solver++(3M) (k-diffusion ``sample_dpmpp_3m_sde``): the 3M quadrature on the
    reverse SDE family above with weight (1 + eta) e^{(1 + eta)(u - h)}; eta = 0 is ``dpmpp_3m``."""
    return _multistep(denoiser, x, ts, cond, generator, callback, order=3, eta=eta, midpoint=False,
                      lower_order_final=lower_order_final)
