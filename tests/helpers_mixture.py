"""The 2-D, three-component Gaussian mixture every sampler test uses, and independent answers.

* ``reference_stats``: E_p[log p] and each component region's mass by quadrature on a grid;
* ``eps_hat_scaled``: E[eps | x~] written out in numpy, independent of undiffuse.testing, the
  right-hand side of the probability-flow ODE dx~/ds = eps_hat in x~ = x / alpha, s = sigma / alpha;
* ``solve_pf_ode``: that ODE solved by scipy (DOP853, tight tolerances), the ground truth for
  convergence orders;
* ``check_distribution``: samples against the mixture's log-likelihood and component masses.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp

from undiffuse.testing import GaussianMixture

F64 = torch.float64
Z = 5.0  # standard errors allowed in Monte-Carlo checks

MU = np.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]])
SD = np.array([0.3, 0.6, 0.45])
W = np.array([0.5, 0.3, 0.2])


def mixture() -> GaussianMixture:
    return GaussianMixture(torch.tensor(MU), torch.tensor(SD), torch.tensor(W))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_stats(gmm: GaussianMixture) -> tuple[float, torch.Tensor]:
    """E_p[log p] and the mass of each argmax-responsibility region, by the midpoint rule on a
    2-D grid (h = 0.02 is ~15 points per smallest std; the tails beyond +-8 are negligible)."""
    h = 0.02
    g = torch.arange(-8, 8, h, dtype=F64) + h / 2
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    logp = gmm.log_prob(pts)
    w = logp.exp() * h * h
    assert abs(float(w.sum()) - 1.0) < 1e-9
    region = gmm.responsibilities(pts).argmax(1)
    mass = torch.stack([w[region == k].sum() for k in range(3)])
    return float((w * logp).sum()), mass


def distribution_errors(gmm: GaussianMixture, reference, out: torch.Tensor) -> tuple[float, float, float]:
    """(|mean log p - reference| in nats, its standard error, the largest component-mass error in
    its own standard errors)."""
    ref_ll, ref_mass = reference
    m = out.shape[0]
    ll = gmm.log_prob(out)
    se = float(ll.std()) / math.sqrt(m)
    frac = torch.bincount(gmm.responsibilities(out).argmax(1), minlength=3).double() / m
    z_mass = float(((frac - ref_mass).abs() / (ref_mass * (1 - ref_mass) / m).sqrt()).max())
    return abs(float(ll.mean()) - ref_ll), se, z_mass


def eps_hat_scaled(x_scaled: np.ndarray, s: float) -> np.ndarray:
    """E[eps | x~] for x~ = x0 + s eps with x0 ~ the mixture (the PF-ODE's dx~/ds)."""
    var = SD[None, :, None] ** 2 + s**2                       # (1, K, 1)
    d = x_scaled[:, None, :] - MU[None]                       # (B, K, D)
    log_r = np.log(W)[None] - 0.5 * (d**2 / var + np.log(2 * np.pi * var)).sum(-1)
    log_r -= log_r.max(1, keepdims=True)
    r = np.exp(log_r)
    r /= r.sum(1, keepdims=True)
    x0 = (r[..., None] * (MU[None] + SD[None, :, None] ** 2 / var * d)).sum(1)
    return (x_scaled - x0) / s


def log_sigma_levels(process, n: int, t_end: float) -> torch.Tensor:
    """n + 1 levels from t = 1 to t_end, uniform in log(sigma / alpha)."""
    a1, s1 = process.alpha_sigma(torch.tensor(1.0, dtype=F64))
    ae, se = process.alpha_sigma(torch.tensor(t_end, dtype=F64))
    log_s = torch.linspace(math.log(float(s1 / a1)), math.log(float(se / ae)), n + 1, dtype=F64)
    ts = process.t_from_sigma(log_s.exp())
    ts[0], ts[-1] = 1.0, t_end
    return ts


def solve_pf_ode(x_scaled: np.ndarray, s_start: float, s_end: float, tol: float = 1e-10) -> np.ndarray:
    """x~ at s_end from x~ at s_start, by scipy's DOP853."""
    b = x_scaled.shape[0]
    sol = solve_ivp(lambda s, y: eps_hat_scaled(y.reshape(b, 2), s).ravel(), (s_start, s_end),
                    x_scaled.ravel(), method="DOP853", rtol=tol, atol=tol)
    assert sol.success
    return sol.y[:, -1].reshape(b, 2)
