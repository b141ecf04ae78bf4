"""Exact measurements of a sampler on a step schedule, with the Gaussian-mixture oracle.

Two numbers, both against exact answers, no training:

* ``ode_error``: how far a deterministic sampler lands from where the probability-flow ODE takes
  the same starting points. The ODE is solved by scipy (DOP853, tolerance 1e-10) in the scaled
  variables x~ = x / alpha, s = sigma / alpha, down to s = 0 (the data), with the velocity
  dx~/ds = E[eps | x~] = sum_k r_k(x~) s (x~ - mu_k) / (s_k^2 + s^2), which stays finite at s = 0.
* ``likelihood_gap``: how far the mean exact log-density of a stochastic sampler's output is from
  the mixture's own E_p[log p] (Monte Carlo over 200,000 draws), in nats.

``sharp_mixture`` is the 16-dimensional problem the spacing defaults were chosen on
(bench/spacing_defaults.py, docs/samplers.md): component scales 0.03-0.3 against means of unit
spread, so the last few noise levels decide where each sample lands.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from ..processes.gaussian import GaussianProcess
from .oracle import GaussianMixture, OracleDenoiser

F64 = torch.float64


def sharp_mixture(dim: int = 16, components: int = 8, seed: int = 0, std_range: tuple[float, float] = (0.03, 0.3)
                  ) -> GaussianMixture:
    """Means ~ N(0, I), isotropic stds log-uniform in ``std_range``, weights uniform in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g, dtype=F64)
    lo, hi = (math.log(v) for v in std_range)
    stds = torch.exp(lo + (hi - lo) * torch.rand(components, generator=g, dtype=F64))
    weights = 0.5 + torch.rand(components, generator=g, dtype=F64)
    return GaussianMixture(means, stds, weights)


def flow_velocity(gmm: GaussianMixture, x_scaled: Tensor, s: float) -> Tensor:
    """dx~/ds of the probability-flow ODE, E[eps | x~] at x~ = x0 + s eps (float64)."""
    var = gmm.stds**2 + s * s                                   # (K, D)
    d = x_scaled[:, None, :] - gmm.means                        # (B, K, D)
    log_r = torch.log(gmm.weights) - 0.5 * (d**2 / var + torch.log(2 * math.pi * var)).sum(-1)
    return (torch.softmax(log_r, 1)[..., None] * d * s / var).sum(1)


def exact_flow(gmm: GaussianMixture, x_scaled: Tensor, s_start: float, s_end: float = 0.0,
               tol: float = 1e-10) -> Tensor:
    """x~ at ``s_end`` from x~ (B, D) at ``s_start``, by scipy's DOP853 at rtol = atol = ``tol``."""
    b, d = x_scaled.shape

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        return flow_velocity(gmm, torch.from_numpy(y).reshape(b, d), s).numpy().ravel()

    sol = solve_ivp(rhs, (s_start, s_end), x_scaled.to(F64).numpy().ravel(), method="DOP853", rtol=tol, atol=tol)
    if not sol.success:
        raise RuntimeError(f"exact_flow: scipy failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(b, d)


def _start(process: GaussianProcess, gmm: GaussianMixture, ts: Tensor, n: int, seed: int) -> Tensor:
    return process.prior((n, gmm.dim), torch.Generator().manual_seed(seed), dtype=F64, t=ts[0])


def ode_endpoints(sampler, process: GaussianProcess, gmm: GaussianMixture, ts: Tensor, n: int = 256,
                  seed: int = 0, **options) -> tuple[Tensor, Tensor]:
    """(the sampler's output, the exact ODE solution to s = 0) from the same n prior draws at ts[0]."""
    x = _start(process, gmm, ts, n, seed)
    a, s = process.alpha_sigma(ts[0])
    want = exact_flow(gmm, x / a, float(s / a))
    return sampler(OracleDenoiser(gmm, process), x, ts, **options), want


def ode_error(sampler, process: GaussianProcess, gmm: GaussianMixture, ts: Tensor, n: int = 256,
              seed: int = 0, **options) -> float:
    """Root-mean-square distance (over n points, Euclidean in D dimensions) between the sampler's
    output and the exact ODE solution (``ode_endpoints``). A point that lands on another component
    than the exact solution (a "flip") adds its distance, ~5.6 on sharp_mixture, so at a few flips
    per thousand points they dominate: ``flip_fraction`` counts them."""
    got, want = ode_endpoints(sampler, process, gmm, ts, n, seed, **options)
    return float(((got - want) ** 2).sum(1).mean().sqrt())


def flip_fraction(gmm: GaussianMixture, got: Tensor, want: Tensor) -> float:
    """The fraction of points whose most likely component differs between ``got`` and ``want``."""
    return float((gmm.responsibilities(got).argmax(1) != gmm.responsibilities(want).argmax(1)).double().mean())


def mixture_log_likelihood(gmm: GaussianMixture, n: int = 200_000, seed: int = 12345) -> float:
    """E_p[log p] by Monte Carlo (standard error ~ 0.01 nats at 200,000 draws on sharp_mixture)."""
    x, _ = gmm.sample(n, torch.Generator().manual_seed(seed))
    return float(torch.cat([gmm.log_prob(c) for c in x.split(50_000)]).mean())


def likelihood_gap(sampler, process: GaussianProcess, gmm: GaussianMixture, ts: Tensor, reference: float,
                   n: int = 2000, seed: int = 0, **options) -> tuple[float, float]:
    """(mean log p(samples) - ``reference``, its standard error), nats; negative: the samples sit
    where the mixture has less density than its own draws do (blurred or misplaced)."""
    x = _start(process, gmm, ts, n, seed)
    out = sampler(OracleDenoiser(gmm, process), x, ts, generator=torch.Generator().manual_seed(seed + 1), **options)
    ll = gmm.log_prob(out)
    if not bool(torch.isfinite(ll).all()):
        return -math.inf, 0.0
    return float(ll.mean()) - reference, float(ll.std()) / math.sqrt(n)


def mean_excess(cells: dict[object, dict[str, float]]) -> dict[str, float]:
    """How far each spacing is from the best, on average: ``cells`` maps a case (process, steps) to
    {spacing: badness, e.g. |likelihood gap|}; returns {spacing: mean over cases of badness - the
    case's best}, for the spacings present in every case ('leading' exists for DDPM only)."""
    excess: dict[str, list[float]] = {}
    for by_spacing in cells.values():
        best = min(by_spacing.values())
        for spacing, bad in by_spacing.items():
            excess.setdefault(spacing, []).append(bad - best)
    return {s: sum(v) / len(v) for s, v in excess.items() if len(v) == len(cells)}
