"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on any decreasing subsequence of levels."""
from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Prediction
from ..processes.gaussian import GaussianProcess, bcast
from .base import Callback, DenoiserLike, noise_like, run_steps

VARIANCES = ("beta_tilde", "beta", "learned")


def reverse_step(process: GaussianProcess, pred: Prediction, xt: Tensor, t: Tensor, s: Tensor,
                 variance: str = "beta_tilde") -> tuple[Tensor, Tensor]:
    """Mean and log-variance of p(x_s | x_t) = N(mu_tilde(x_t, x0_hat), sigma^2 I).

    The mean is the posterior mean of q(x_s | x_t, x0) at x0 = x0_hat (Ho et al. 2020, eq. 7, 11).
    ``variance`` picks sigma^2: "beta_tilde" (the posterior variance, the lower bound),
    "beta" (sigma_{t|s}^2, the upper bound; both in Ho et al. sec. 3.2), or "learned": the log-space
    interpolation exp(f log beta + (1 - f) log beta_tilde), f = (v + 1) / 2
    (Nichol & Dhariwal 2021, eq. 15). Returns per-sample log-variance broadcastable to x_t.
    """
    mean, var_small = process.posterior(pred.x0, xt, t, s)
    _, var_large = process.transition(t, s)
    # beta_tilde_1 = 0: the decoder uses beta_tilde_2 instead ("posterior_log_variance_clipped"
    # in Ho et al.'s and Nichol & Dhariwal's code).
    var_small = torch.where(torch.as_tensor(s) == 0,
                            process.posterior_variance((2 * t - s).clamp(max=1), t), var_small)
    if variance == "beta_tilde":
        log_var = bcast(torch.log(var_small.clamp_min(1e-20)), xt)
    elif variance == "beta":
        log_var = bcast(torch.log(var_large.clamp_min(1e-20)), xt)
    elif variance == "learned":
        if pred.var_interp is None:
            raise ValueError("variance='learned' needs a denoiser built with learn_variance=True")
        lo = bcast(torch.log(var_small.clamp_min(1e-20)), xt)
        hi = bcast(torch.log(var_large.clamp_min(1e-20)), xt)
        frac = (pred.var_interp + 1) / 2
        log_var = frac * hi + (1 - frac) * lo
    else:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    return mean, log_var


@torch.no_grad()
def ddpm(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
         generator: torch.Generator | None = None, callback: Callback | None = None,
         variance: str = "beta_tilde") -> Tensor:
    """Ancestral sampling x_s ~ p(x_s | x_t) (Ho et al. 2020, Algorithm 2).

    With ``ts`` every step of a DDPM this is the paper's sampler; on a subsequence it is the
    same Gaussian step between non-adjacent levels (Kingma et al. 2021, eq. 13, 33). The last step
    to ``s = 0`` adds no noise and returns x0_hat, as in the paper (z = 0 at t = 1).
    ``variance``: "beta_tilde" (sigma_t^2 = beta_tilde_t), "beta" (sigma_t^2 = beta_t) or "learned".
    """
    def step(x: Tensor, t: Tensor, s: Tensor, pred: Prediction) -> Tensor:
        mean, log_var = reverse_step(denoiser.process, pred, x, t, s, variance)
        return mean + (0.5 * log_var).exp() * noise_like(x, generator)

    return run_steps(denoiser, x, ts, cond, callback, step)
