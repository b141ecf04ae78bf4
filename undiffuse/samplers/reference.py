"""A reference solution of the probability-flow ODE by an adaptive high-order integrator.

Tests and benchmarks measure every ODE sampler against this: scipy's ``solve_ivp`` (DOP853, an
8th-order Runge-Kutta method, by default) on dx~/dsigma = eps_hat(x~; sigma) in the scaled variables
x~ = x / alpha, sigma = sigma_t / alpha (Karras et al. 2022, eq. 4; ``sigma.to_sigma``), with the
tolerances as parameters.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from .base import Callback, DenoiserLike
from .sigma import to_sigma


@torch.no_grad()
def reference_ode(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                  generator: torch.Generator | None = None, callback: Callback | None = None,
                  rtol: float = 1e-8, atol: float = 1e-8, method: str = "DOP853") -> Tensor:
    """Integrate the probability-flow ODE from ``ts[0]`` to the last positive level of ``ts``
    (intermediate levels are ignored); if ``ts`` ends at 0, return x0_hat there, as every sampler
    does. The state is integrated in float64; the denoiser sees the caller's dtype. The number of
    network evaluations is adaptive (count them with a wrapper, as the tests do).
    """
    D, sigmas, _ = to_sigma(denoiser, x, ts, cond)
    sigma_end = sigmas[sigmas > 0][-1]
    shape = x.shape

    def rhs(sigma: float, y: np.ndarray) -> np.ndarray:
        # dx~/dsigma = eps_hat (Karras et al. 2022, eq. 4); D scales to x_t and casts to x's dtype
        eps = D(torch.from_numpy(y).reshape(shape), torch.tensor(sigma, dtype=torch.float64)).eps
        return eps.to(torch.float64).numpy().ravel()

    y0 = (x.to(torch.float64) / D.level(sigmas[0])[1]).numpy().ravel()
    sol = solve_ivp(rhs, (float(sigmas[0]), float(sigma_end)), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solver failed: {sol.message}")
    x_end = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    if float(sigmas[-1]) == 0:
        return D(x_end, sigma_end).x0
    return D.to_x(x_end, sigma_end)
