"""Any denoiser as Karras et al.'s D(x~; sigma), built once per solve.

Every Gaussian process ``x_t = alpha x0 + sigma_t eps`` is, in the scaled variables
``x~ = x_t / alpha`` and ``sigma = sigma_t / alpha``, the variance-exploding one
``x~ = x0 + sigma eps`` (Karras et al. 2022, eq. 4 and sec. 4), whose probability-flow ODE is

    dx~ / dsigma = (x~ - D(x~; sigma)) / sigma = eps_hat(x~; sigma)          (Karras et al., eq. 3).

``to_sigma(denoiser, x, ts)`` turns the x_t-space sampler inputs into ``(D, sigmas, x~)``, the
inputs of the ODE samplers of k-diffusion and NVlabs' edm: ``D(x~, sigma)`` returns the
``Prediction`` (x0_hat = D, and eps_hat, the ODE's slope, straight from the network rather than
(x~ - D) / sigma, which cancels at small sigma), ``D.to_x`` maps the final state back. The samplers
in ``euler.py``, ``dpm_solver.py`` and ``reference.py`` see nothing else; DDPM, DDIM and
predictor-corrector stay in x_t.

Levels: the network is called at the level t of ``ts`` itself for every sigma of the grid
(``sigmas = sigma(ts) / alpha(ts)``), so a sampler's evaluations are at exactly the levels it was
given; any other sigma (Heun's churn, an adaptive solver) goes through ``process.t_from_sigma``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Prediction
from ..processes.gaussian import bcast
from .base import Callback, DenoiserLike, check_ts, report


class SigmaDenoiser:
    """``D(x~, sigma, i=None) -> Prediction`` for an x_t-space ``denoiser`` (see the module).

    With ``i`` the call is step i's reported evaluation: the callback gets
    ``{"i", "t", "x", "x0_hat"}`` with x = alpha x~ in x_t space and t the level, as every sampler
    reports."""

    def __init__(self, denoiser: DenoiserLike, ts: Tensor, dtype: torch.dtype,
                 cond: Tensor | None = None, callback: Callback | None = None):
        self.denoiser, self.process, self.cond, self.callback = denoiser, denoiser.process, cond, callback
        self.ts, self.dtype = check_ts(ts), dtype
        alpha, sigma_t = self.process.alpha_sigma(self.ts)
        self.sigmas = sigma_t / alpha
        # sigma -> (level, alpha) for the grid; filled in reverse so that the noisier level wins a tie
        self._levels = {float(s): (t, a) for s, t, a in reversed(list(zip(self.sigmas, self.ts, alpha)))}

    def level(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The level t with sigma(t) / alpha(t) = ``sigma`` and alpha there (float64)."""
        hit = self._levels.get(float(sigma))
        if hit is not None:
            return hit
        t = self.process.t_from_sigma(torch.as_tensor(sigma, dtype=torch.float64))
        return t, self.process.alpha(t)

    def reach(self, sigma: Tensor | float) -> Tensor:
        """The noise level the process actually has at ``sigma``, capped at its largest (where the
        network was trained); remembered, so that ``D(x~, reached)`` runs at that level exactly."""
        s = torch.as_tensor(sigma, dtype=torch.float64).clamp(max=self.process.sigma_max())
        t = self.process.t_from_sigma(s)
        a, sigma_t = self.process.alpha_sigma(t)
        reached = sigma_t / a
        self._levels.setdefault(float(reached), (t, a))
        return reached

    def __call__(self, x: Tensor, sigma: Tensor, i: int | None = None) -> Prediction:
        t, a = self.level(sigma)
        xt = (x * bcast(a, x)).to(self.dtype)
        pred = self.denoiser(xt, t, self.cond)
        if i is not None:
            report(self.callback, i, t, xt, pred)
        return pred

    def to_x(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x_t = alpha x~ at ``sigma``, in the caller's dtype."""
        return (x * bcast(self.level(sigma)[1], x)).to(self.dtype)


def to_sigma(denoiser: DenoiserLike, x: Tensor, ts: Tensor, cond: Tensor | None = None,
             callback: Callback | None = None) -> tuple[SigmaDenoiser, Tensor, Tensor]:
    """``(D, sigmas, x~)``: the sigma-space denoiser, the grid ``sigma(ts) / alpha(ts)`` (float64,
    ending at 0 when ``ts`` does) and the starting state ``x / alpha(ts[0])``."""
    D = SigmaDenoiser(denoiser, ts, x.dtype, cond, callback)
    return D, D.sigmas, x / bcast(D.level(D.sigmas[0])[1], x)
