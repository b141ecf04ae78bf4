"""A reference solution of the probability-flow ODE by an adaptive high-order integrator.

Tests and benchmarks measure every ODE sampler against this: scipy's ``solve_ivp`` (DOP853, an
8th-order Runge-Kutta method, by default) on dx~/ds = eps_hat(x~, s) in the scaled variables
x~ = x / alpha, s = sigma / alpha (Karras et al. 2022, eq. 4), with the tolerances as parameters.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from .base import Callback, DenoiserLike, check_ts, scaled


@torch.no_grad()
def reference_ode(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                  generator: torch.Generator | None = None, callback: Callback | None = None,
                  rtol: float = 1e-8, atol: float = 1e-8, method: str = "DOP853") -> Tensor:
    """Integrate the probability-flow ODE from ``ts[0]`` to the last positive level of ``ts``
    (intermediate levels are ignored); if ``ts`` ends at 0, return x0_hat there, as every sampler
    does. The state is integrated in float64; the denoiser sees the caller's dtype. The number of
    network evaluations is adaptive (count them with a wrapper, as the tests do).
    """
    ts = check_ts(ts)
    process = denoiser.process
    t_end = ts[ts > 0][-1]
    (a_0, s_0), (a_end, s_end) = scaled(process, ts[0]), scaled(process, t_end)
    shape, dtype = x.shape, x.dtype

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        t = process.t_from_sigma(torch.tensor(s, dtype=torch.float64))
        a = scaled(process, t)[0]
        x_t = (a * torch.from_numpy(y).reshape(shape)).to(dtype)
        return denoiser(x_t, t, cond).eps.to(torch.float64).numpy().ravel()

    y0 = (x.to(torch.float64) / a_0).numpy().ravel()
    sol = solve_ivp(rhs, (float(s_0), float(s_end)), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solver failed: {sol.message}")
    x_end = (a_end * torch.from_numpy(sol.y[:, -1]).reshape(shape)).to(dtype)
    if float(ts[-1]) == 0:
        return denoiser(x_end, t_end, cond).x0
    return x_end
